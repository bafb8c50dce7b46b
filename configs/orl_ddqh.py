r"""DDQH on the ORL / AT&T faces (40 identities, 112×92 grey), Hamming codes.

DDQH (Tang, Lin, Li & Yang, IEEE TNNLS 2018; METHODS §5.3, **unverified**: no public code, the
formulation is ours from the published descriptions, see `dpq_jax/methods/ddqh.py`): DDH's
network and loss (`configs/orl_ddh.py`) with the divide-and-encode module replaced by a dense
hash layer: per code length k, face feature layer Dense(4k) → BN → ReLU, then Dense(4k → k) →
BN → tanh = h, a softmax classifier on h. Loss: CE + 0.01·mean||h| − 1| per head, plus Keras'
L2 1e-4·Σw² on the kernels. Faces resized to 35×29 and cropped to 32×26 (the DDH trunk: 520);
codes = sign(h) as 0/1 bits, Hamming ranking (mAP@all, P@5, P/R within Hamming radius 2).

Recipe: as `configs/orl_ddh.py` (Adam lr 1e-3, cosine after 50 warmup steps, batch 64, 600
steps, random crops and flips; selected on the validation split, never on the query set).

Run (a few minutes on 2 CPU cores):

  dpq-train --config=configs/orl_ddqh.py --workdir=workdirs/orl_ddqh
  dpq-train --config=configs/orl_ddqh.py:protocol=orl_unseen,bits=48 --workdir=workdirs/orl_ddqh_u

Arguments: `protocol` (orl_seen | orl_unseen), `bits` (one code length), `multihead`
(12/24/36/48 from one run), `steps`, `runlocal` (tiny).

Expected: no published number (a small sanity set); measured here: see the README.
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

    config.method = "ddqh"
    config.model = ml_collections.ConfigDict()
    config.model.backbone = ml_collections.ConfigDict({"name": "ddh_net", "input_hw": (32, 26)})
    config.model.features = 0  # ddh_net: its concatenation (520 at 32×26); other backbones: D
    config.model.bits = (12, 24, 36, 48) if arg.multihead else arg.bits
    config.model.slice_size = 4  # face feature layer = 4k, as DDH
    config.model.dtype = "float32"

    config.loss = ml_collections.ConfigDict()
    config.loss.quant_weight = 0.01  # weight of mean || |h| - 1 ||_1
    config.loss.magnitude_target = 1.0
    config.loss.kernel_l2 = 1e-4  # Keras l2(1e-4): 1e-4 * sum w^2 over the kernels

    config.optim = config_lib.optimizer("adam", lr=1e-3, schedule="cosine", warmup_steps=50)
    config_lib.training(
        config, total_steps=arg.steps, ckpt_steps=arg.steps // 6, log_training_steps=10
    )
    config.evals = ml_collections.ConfigDict()
    config.evals.val = config_lib.retrieval_eval(
        "val_query", "val_database", log_steps=arg.steps // 6, final=False
    )
    config.evals.test = config_lib.retrieval_eval("query", "database", log_steps=0, final=True)
    if arg.runlocal:
        config_lib.run_locally(config)
        config.model.backbone.widths = (4, 4, 4, 4)
    return config.lock()
