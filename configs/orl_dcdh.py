r"""DCDH on the ORL / AT&T faces (40 identities, 112×92 grey), Hamming codes.

DCDH (Zhang, Zhe, Chen & Yan, Pattern Recognition 2021; METHODS §5.5): the DFHNet attention
trunk (FC 1024 → BN → ReLU) on faces resized to 35×29 and cropped to 32×26 (the attention
branch sees them zero-padded to 32×32; the FC input is 1280 wide), per code length a hash
layer FC k → BN and learnable class centres; loss L1 (Gaussian-softmax centre loss, σ = 0.25)
+ 0.1·L2 (centre separation) + 0.01·Lq (regression quantization, η = 0.01); codes = sign as
0/1 bits, Hamming ranking (mAP@all, P@5, P/R within Hamming radius 2).

Paper / reference recipe (32×32 faces): Adam lr 0.005 (AMSGrad on the net), weight decay 1e-4
added to the gradient, batch 256, 600 epochs (the released code: 700), ×0.5 every 100 epochs,
early stop after a quarter of the epochs without a lower epoch loss. Ours: AMSGrad lr 0.005,
coupled weight decay 1e-4, cosine decay, batch 64 (ORL's 240 training images), 600 steps (160
epochs); selected on validation mAP.

Run (a few minutes on 2 CPU cores):

  dpq-train --config=configs/orl_dcdh.py --workdir=workdirs/orl_dcdh
  dpq-train --config=configs/orl_dcdh.py:protocol=orl_unseen,bits=48 --workdir=workdirs/orl_dcdh_u

Arguments: `protocol` (orl_seen | orl_unseen), `bits` (one code length), `multihead`
(12/24/36/48 from one run), `steps`, `runlocal` (tiny). The model is selected on the
validation split, never on the query set. `width` (default 0.25: the DFHNet at a quarter of
the paper's channels and FC 256, for CPU runs; `width=1` is the paper's net). Expected: not yet
measured (see the README table).
"""

import ml_collections

from dpq_jax import config_lib
from dpq_jax.models.backbones import dfh_net


def get_config(arg=None):
    arg = config_lib.parse_arg(
        arg, protocol="orl_seen", bits=48, multihead=False, steps=600, runlocal=False, width=0.25
    )
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.protocol = arg.protocol
    config.input = config_lib.input_config("orl", batch_size=64, eval_batch_size=64)

    config.method = "dcdh"
    config.model = ml_collections.ConfigDict()
    # The DFHNet at `width` × the paper's channels (32/64/128/256) and FC 1024: the full net
    # costs ~16× the FLOPs of width 1/4 (9.5 s per 256-image step on 2 CPU cores).
    config.model.backbone = ml_collections.ConfigDict(
        {"name": "dfh_net", "input_hw": (32, 26), "widths": dfh_net.scaled_widths(arg.width)}
    )
    config.model.features = int(1024 * arg.width)
    config.model.bits = (12, 24, 36, 48) if arg.multihead else arg.bits
    config.model.dtype = "float32"
    config.model.encode = "sign"  # "nearest_center": the reference evaluation.py's codes

    config.loss = ml_collections.ConfigDict()
    config.loss.sigma = 0.25
    config.loss.separation_weight = 0.1
    config.loss.quantization_weight = 0.01
    config.loss.eta = 0.01
    config.loss.ridge = 0.0  # pinv(YᵀY); the reference code inverts YᵀY + 1·I

    config.optim = config_lib.optimizer(
        "amsgrad", lr=0.005, weight_decay=1e-4, decoupled_weight_decay=False, schedule="cosine"
    )
    config_lib.training(
        config, total_steps=arg.steps, ckpt_steps=arg.steps // 6, log_training_steps=10
    )
    config.evals = config_lib.validation_and_test(arg.steps // 6)
    if arg.runlocal:
        config_lib.run_locally(config)
        config.model.backbone.widths = (4, 4, 8, 8)
        config.model.features = 16
    return config.lock()
