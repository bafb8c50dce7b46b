r"""DDH on the ORL / AT&T faces (40 identities, 112×92 grey), Hamming codes.

DDH (Lin, Li & Tang, IJCAI 2017; METHODS §5.2): the DDH trunk on faces resized to 35×29 and
cropped to 32×26 (the third pool's 3×2×60 map and the locally-connected 2×1×80 map,
concatenated: 520), then per code length k a face feature layer Dense(4k) → BN → ReLU,
divide-and-encode (k slices of 4, each → Dense(1)) → BN → tanh = h, and a softmax classifier on
h. Loss: CE + 0.01·mean||h| − 1| per head, plus Keras' L2 1e-4·Σw² on the kernels; codes =
sign(h) as 0/1 bits, Hamming ranking (mAP@all, P@5, P/R within Hamming radius 2).

Paper/code recipe (32×32 faces): Adam lr 1e-3, batch 256, 200 epochs. Ours: Adam lr 1e-3
(no optimizer weight decay: the L2 is in the loss), cosine after 50 warmup steps, batch 64
(ORL's training split is 240 images), 600 steps, random crops and flips; the model
is selected on the validation split, never on the query set.

Run (a few minutes on 2 CPU cores):

  dpq-train --config=configs/orl_ddh.py --workdir=workdirs/orl_ddh
  dpq-train --config=configs/orl_ddh.py:protocol=orl_unseen,bits=48 --workdir=workdirs/orl_ddh_u

Arguments: `protocol` (orl_seen | orl_unseen), `bits` (one code length), `multihead`
(12/24/36/48 from one run), `steps`, `runlocal` (tiny).

Expected: no published number (a small sanity set); measured here: see the README.
"""

import ml_collections

from dpq_jax import config_lib
from dpq_jax.methods import ddh


def get_config(arg=None):
    arg = config_lib.parse_arg(
        arg, protocol="orl_seen", bits=48, multihead=False, steps=600, runlocal=False
    )
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.protocol = arg.protocol
    config.input = config_lib.input_config("orl", batch_size=64, eval_batch_size=64)

    config.method = "ddh"
    # ddh_net's features: its concatenation, 520 at 32×26.
    config.model = ddh.model_config((32, 26), (12, 24, 36, 48) if arg.multihead else arg.bits)
    config.loss = ddh.loss_config()

    config.optim = config_lib.optimizer("adam", lr=1e-3, schedule="cosine", warmup_steps=50)
    config_lib.training(
        config, total_steps=arg.steps, ckpt_steps=arg.steps // 6, log_training_steps=10
    )
    config.evals = config_lib.validation_and_test(arg.steps // 6)
    if arg.runlocal:
        config_lib.run_locally(config)
        config.model.backbone.widths = (4, 4, 4, 4)
    return config.lock()
