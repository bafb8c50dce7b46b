r"""DSH on the ORL / AT&T faces (40 identities, 112×92 grey), Hamming codes.

DSH (Liu et al., CVPR 2016; METHODS §5.1): the DSH net (conv-pool-LRN ×3, FC 500) on faces
resized to 35×29 and cropped to 32×26, a linear FC k head per code length, the pairwise
contrastive loss with margin m = 2k and the regulariser α·‖|b| − 1‖₁ with α = 0.01; codes =
sign as 0/1 bits, Hamming ranking (mAP@all, P@5, P/R within Hamming radius 2).

Run (a few minutes on 2 CPU cores):

  dpq-train --config=configs/orl_dsh.py --workdir=workdirs/orl_dsh
  dpq-train --config=configs/orl_dsh.py:protocol=orl_unseen,bits=48 --workdir=workdirs/orl_dsh_u

Arguments: `protocol` (orl_seen | orl_unseen), `bits` (one code length), `multihead`
(12/24/36/48 from one run), `runlocal` (tiny). The model is selected on the validation split,
never on the query set.
"""

import ml_collections

from dpq_jax import config_lib


def get_config(arg=None):
    arg = config_lib.parse_arg(
        arg, protocol="orl_seen", bits=48, multihead=False, steps=600, runlocal=False
    )
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.protocol = arg.protocol
    config.input = config_lib.input_config("orl", batch_size=64, eval_batch_size=64)

    config.method = "dsh"
    config.model = ml_collections.ConfigDict()
    config.model.backbone = ml_collections.ConfigDict({"name": "dsh_net", "input_hw": (32, 26)})
    config.model.features = 500
    config.model.bits = (12, 24, 36, 48) if arg.multihead else arg.bits
    config.model.dtype = "float32"

    config.loss = ml_collections.ConfigDict()
    config.loss.alpha = 0.01  # weight of || |b| - 1 ||_1
    config.loss.margin_per_bit = 2.0  # m = 2k

    config.optim = config_lib.optimizer(
        "adamw", lr=1e-3, weight_decay=4e-3, schedule="cosine", warmup_steps=50
    )
    config_lib.training(
        config, total_steps=arg.steps, ckpt_steps=arg.steps // 6, log_training_steps=10
    )
    config.evals = config_lib.validation_and_test(arg.steps // 6)
    if arg.runlocal:
        config_lib.run_locally(config)
        config.model.backbone.widths = (4, 4, 8)
        config.model.features = 16
    return config.lock()
