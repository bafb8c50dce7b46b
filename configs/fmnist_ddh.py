r"""DDH on Fashion-MNIST (`fmnist` protocol): 12/24/36/48-bit Hamming codes.

DDH (Lin, Li & Tang, IJCAI 2017; METHODS §5.2): the DDH trunk (conv 20@3×3, 40@2×2, 60@2×2,
each BN-ReLU-pool, and a locally-connected 80@2×2 layer; the third pool and the
locally-connected map concatenated, 240 + 80 = 320 at 28×28), then per code length k a face
feature layer Dense(4k) → BN → ReLU, divide-and-encode (k slices of 4, each → Dense(1)) → BN →
tanh = h, and a softmax classifier on h. Loss: CE + 0.01·mean||h| − 1| per head, plus Keras'
L2 1e-4·Σw² on the kernels; codes = sign(h), 0/1 bits, Hamming ranking.

The `fmnist` protocol: database = the 60,000 training images, queries = 1,000 test images (100
per class), validation (1,000 queries, 10,000-image database) carved from the training images;
Hamming mAP@all, ties by database index, AP 0 for zero-hit queries, P@100, P/R within Hamming
radius 2.

Paper/code recipe (faces, 3×32×32, `deprocess_image` normalisation): Adam lr 1e-3, batch 256,
200 epochs, best training loss. Ours: the same Adam (lr 1e-3, no optimizer weight decay: the
L2 is in the loss) with a cosine schedule after 200 warmup steps, batch 256, horizontal flips
and the data set's mean/std normalisation, 5,600 steps = 24 epochs of the 59,000 training
images, the reference DSH budget on this protocol (200 epochs is past a CPU budget); the model
is selected on validation mAP.

Run (`apt-get install dataset-fashion-mnist` first):

  dpq-train --config=configs/fmnist_ddh.py:bits=12 --workdir=workdirs/fmnist_ddh_12
  dpq-train --config=configs/fmnist_ddh.py:multihead --workdir=workdirs/fmnist_ddh_multi

Arguments: `bits` (one code length), `multihead` (12/24/36/48 from one run, one head each on a
shared trunk, the sum of the per-head losses; selected on the mean validation mAP), `steps`,
`runlocal` (tiny).
`trunk=dcbh_net` or `trunk=dsh_net` runs this method's heads and loss on a trunk every
method can share (`config_lib.SHARED_TRUNKS`), for same-backbone comparisons.

Expected: DDH publishes no number on this protocol (its tables are on YouTube Faces and
FaceScrub, `configs/faces_seen_ddh.py`); measured here: see the README results table.
"""

import ml_collections

from dpq_jax import config_lib
from dpq_jax.methods import ddh


def get_config(arg=None):
    arg = config_lib.parse_arg(arg, bits=12, multihead=False, steps=5600, trunk="", runlocal=False)
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.protocol = "fmnist"
    config.input = config_lib.input_config("fmnist", batch_size=256, eval_batch_size=1024)

    config.method = "ddh"
    # ddh_net's features: its concatenation, 320 at 28×28.
    config.model = ddh.model_config((28, 28), (12, 24, 36, 48) if arg.multihead else arg.bits)
    config.loss = ddh.loss_config()

    config.optim = config_lib.optimizer("adam", lr=1e-3, schedule="cosine", warmup_steps=200)
    config_lib.training(config, total_steps=arg.steps, ckpt_steps=arg.steps // 4)
    config.evals = config_lib.validation_and_test(arg.steps // 4, precision_ks=(100,))
    if arg.runlocal:
        config_lib.run_locally(config)
        config.model.backbone.widths = (4, 4, 4, 4)
    if arg.trunk:  # a same-backbone comparison: this method's heads and loss on a shared trunk
        config_lib.shared_trunk(config.model, arg.trunk, tiny=arg.runlocal)
    return config.lock()
