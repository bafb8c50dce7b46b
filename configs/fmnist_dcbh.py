r"""DCBH on Fashion-MNIST (`fmnist` protocol): 12/24/36/48-bit Hamming codes.

DCBH (Jang, Jeong, Lee & Cho, ACCV 2018; METHODS §3): the VGG-like DCBH net with two GAP
branches (`dcbh_net`), per code length k a descriptor f = ReLU(BN(Dense(6k))), block hashing
h_i = tanh(max softmax(f_block_i) − ½), a hash classifier on h and a descriptor classifier on f;
loss CE(h) + CE(f) + 0.1·mean||h| − 0.5| + 1e-4·½Σ‖f − c_y‖² (centres also moved by the
explicit centre-loss update, α = 1) + 2e-4·½Σw² on the kernels. Codes = h > 0 as 0/1 bits,
Hamming ranking.

The `fmnist` protocol: database = the 60,000 training images, queries = 1,000 test images (100
per class), validation (1,000 queries, 10,000-image database) carved from the training images;
Hamming mAP@all, ties by database index, AP 0 for zero-hit queries, P@100, P/R within Hamming
radius 2.

Paper / reference recipe (faces, 32×32): Adam lr 1e-3, batch 256, 2000 epochs, batches in file
order (no shuffling), no augmentation, `deprocess_image` normalisation, checkpoint on the lowest
training loss. Ours (CPU): Adam lr 1e-3 with 200 warmup steps and cosine decay (no optimizer
weight decay: the reference's L2 is in the loss), batch 256, shuffled, horizontal flips and the
data set's mean/std normalisation (the shared `fmnist` input), 5,600 steps = 24 epochs (the
budget of configs/fmnist_dsh.py, so the two compare), checkpoint on validation mAP (the training
loss is not the retrieval objective; never the query set). The net runs at **width 0.25**
(16/32/64/128 channels, 192 trunk features, about 15M multiply-adds per 28×28 image): full
width costs ~16× the FLOPs (240M), past a CPU budget; `width=1.0` restores the paper's net.
28×28 maps pool with SAME (ceil) 2×2 pools: 28 → 14 → 7 → 4 → 2.

Run (`apt-get install dataset-fashion-mnist` first):

  dpq-train --config=configs/fmnist_dcbh.py:bits=12 --workdir=workdirs/fmnist_dcbh_12
  dpq-train --config=configs/fmnist_dcbh.py:multihead --workdir=workdirs/fmnist_dcbh_multi
  dpq-train --config=configs/fmnist_dcbh.py:multihead,width=1.0 --workdir=workdirs/fmnist_dcbh_w1

Arguments: `bits` (one code length), `multihead` (12/24/36/48 from one run, one head each on a
shared trunk, the sum of the per-head losses; selected on the mean validation mAP), `steps`,
`width` (the trunk's channel multiplier), `runlocal` (tiny).
`trunk=dcbh_net` or `trunk=dsh_net` runs this method's heads and loss on a trunk every
method can share (`config_lib.SHARED_TRUNKS`), for same-backbone comparisons.

Expected: not yet measured here (see the README results table). For scale: the reference DSH
code reports mAP@all 0.81–0.85 on this protocol and budget (configs/fmnist_dsh.py). At
initialisation nearly every bit is 0 (a block's softmax peak starts below ½), so the first
validation logs show one distinct code; the bits turn on as training sharpens the blocks.
"""

import ml_collections

from dpq_jax import config_lib


def get_config(arg=None):
    arg = config_lib.parse_arg(
        arg, bits=12, multihead=False, steps=5600, width=0.25, runlocal=False, trunk=""
    )
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.protocol = "fmnist"
    config.input = config_lib.input_config("fmnist", batch_size=256, eval_batch_size=1024)

    config.method = "dcbh"
    config.model = ml_collections.ConfigDict()
    config.model.backbone = ml_collections.ConfigDict({"name": "dcbh_net", "width": arg.width})
    config.model.features = 0  # the backbone's concat width (768 · width)
    config.model.bits = (12, 24, 36, 48) if arg.multihead else arg.bits
    config.model.block_size = 6  # L: the descriptor has bits · L entries
    config.model.dtype = "float32"

    config.loss = ml_collections.ConfigDict()
    config.loss.quant_weight = 0.1
    config.loss.quant_target = 0.5  # the code's |h| target (the paper: 1)
    config.loss.center_weight = 1e-4
    config.loss.center_reduction = "sum"  # tf.nn.l2_loss: a sum over the batch
    config.loss.center_update = True  # the explicit centre-loss update, besides Adam
    config.loss.center_alpha = 1.0
    config.loss.weight_decay = 2e-4  # TF1 λ·l2_loss = λ/2 Σ w² on conv/dense kernels

    config.optim = config_lib.optimizer("adam", lr=1e-3, schedule="cosine", warmup_steps=200)
    config_lib.training(config, total_steps=arg.steps, ckpt_steps=arg.steps // 4)
    config.evals = config_lib.validation_and_test(arg.steps // 4, precision_ks=(100,))
    if arg.runlocal:
        config_lib.run_locally(config)
        config.model.backbone.width = 1 / 32  # 2/4/8/16 channels, 24 trunk features
    if arg.trunk:  # a same-backbone comparison: this method's heads and loss on a shared trunk
        config_lib.shared_trunk(config.model, arg.trunk, tiny=arg.runlocal)
    return config.lock()
