r"""DSH on Fashion-MNIST (`fmnist` protocol): 12/24/36/48-bit Hamming codes.

DSH (Liu et al., CVPR 2016; METHODS §5.1): the DSH net (conv-pool-LRN ×3, FC 500), a linear
FC k head per code length, the pairwise contrastive loss with margin m = 2k and the regulariser
α·‖|b| − 1‖₁ with α = 0.01; codes = sign, 0/1 bits, Hamming ranking.

The `fmnist` protocol: database = the 60,000 training images, queries = 1,000 test images (100
per class), validation (1,000 queries, 10,000-image database) carved from the training images;
Hamming mAP@all, ties by database index, AP 0 for zero-hit queries, P@100, P/R within Hamming
radius 2.

Recipe: AdamW (lr 1e-3, cosine, 200 warmup steps, weight decay 4e-3 as the reference's
0.004), batch 256, horizontal flips, 5,600 steps = 24 epochs of the 59,000 training images, the
reference code's budget. The paper's SGD (lr 1e-3, 70k iterations of 200) is past a CPU budget.

Run (`apt-get install dataset-fashion-mnist` first):

  dpq-train --config=configs/fmnist_dsh.py:bits=12 --workdir=workdirs/fmnist_dsh_12
  dpq-train --config=configs/fmnist_dsh.py:bits=48 --workdir=workdirs/fmnist_dsh_48
  dpq-train --config=configs/fmnist_dsh.py:multihead --workdir=workdirs/fmnist_dsh_multi

Arguments: `bits` (one code length), `multihead` (12/24/36/48 from one run, one head each on a
shared trunk, the sum of the per-head losses; selected on the mean validation mAP),
`steps`, `runlocal` (tiny).
`trunk=dcbh_net` or `trunk=dsh_net` runs this method's heads and loss on a trunk every
method can share (`config_lib.SHARED_TRUNKS`), for same-backbone comparisons.

Reference (the reference DSH code, 24 epochs, same protocol): mAP@all 0.811 / 0.841 / 0.844 /
0.854 at 12 / 24 / 36 / 48 bits. Measured here: see the README results table.
"""

import ml_collections

from dpq_jax import config_lib


def get_config(arg=None):
    arg = config_lib.parse_arg(arg, bits=12, multihead=False, steps=5600, trunk="", runlocal=False)
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.protocol = "fmnist"
    config.input = config_lib.input_config("fmnist", batch_size=256, eval_batch_size=1024)

    config.method = "dsh"
    config.model = ml_collections.ConfigDict()
    config.model.backbone = ml_collections.ConfigDict({"name": "dsh_net", "input_hw": (28, 28)})
    config.model.features = 500
    config.model.bits = (12, 24, 36, 48) if arg.multihead else arg.bits
    config.model.dtype = "float32"

    config.loss = ml_collections.ConfigDict()
    config.loss.alpha = 0.01  # weight of || |b| - 1 ||_1
    config.loss.margin_per_bit = 2.0  # m = 2k

    config.optim = config_lib.optimizer(
        "adamw", lr=1e-3, weight_decay=4e-3, schedule="cosine", warmup_steps=200
    )
    config_lib.training(config, total_steps=arg.steps, ckpt_steps=arg.steps // 4)
    config.evals = config_lib.validation_and_test(arg.steps // 4, precision_ks=(100,))
    if arg.runlocal:
        config_lib.run_locally(config)
        config.model.backbone.widths = (4, 4, 8)
        config.model.features = 16
    if arg.trunk:  # a same-backbone comparison: this method's heads and loss on a shared trunk
        config_lib.shared_trunk(config.model, arg.trunk, tiny=arg.runlocal)
    return config.lock()
