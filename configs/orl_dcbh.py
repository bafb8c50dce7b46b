r"""DCBH on the ORL / AT&T faces (40 identities, 112×92 grey), Hamming codes.

DCBH (Jang, Jeong, Lee & Cho, ACCV 2018; METHODS §3): the VGG-like DCBH net (`dcbh_net`) on
faces resized to 35×29 and cropped to 32×26 (SAME 2×2 pools: 32×26 → 16×13 → 8×7 → 4×4 → 2×2),
per code length k a descriptor f = ReLU(BN(Dense(6k))) and block hashing h_i = tanh(max
softmax(f_block_i) − ½); loss CE(h) + CE(f) + 0.1·mean||h| − 0.5| + 1e-4·½Σ‖f − c_y‖² (centres
also moved by the explicit centre-loss update, α = 1) + 2e-4·½Σw² on the kernels. Codes = h > 0
as 0/1 bits, Hamming ranking (mAP@all, P@5, P/R within Hamming radius 2).

Paper / reference recipe (32×32 faces): Adam lr 1e-3, batch 256, 2000 epochs, no shuffling, no
augmentation, `deprocess_image` normalisation, checkpoint on the lowest training loss. Ours: Adam
lr 1e-3, 50 warmup steps then cosine, batch 64 (ORL's train split is small), shuffled, random
crops and flips, 600 steps, trunk width 0.25 (16/32/64/128 channels; `width=1.0` is the paper's
net at ~16× the FLOPs); the model is selected on the validation split, never on the query set.

Run (a few minutes on 2 CPU cores at width 0.25):

  dpq-train --config=configs/orl_dcbh.py --workdir=workdirs/orl_dcbh
  dpq-train --config=configs/orl_dcbh.py:protocol=orl_unseen,multihead --workdir=workdirs/orl_dcbh_u

Arguments: `protocol` (orl_seen | orl_unseen), `bits` (one code length), `multihead`
(12/24/36/48 from one run), `steps`, `width`, `runlocal` (tiny).

Expected: not yet measured here (see the README results table).
"""

import ml_collections

from dpq_jax import config_lib


def get_config(arg=None):
    arg = config_lib.parse_arg(
        arg,
        protocol="orl_seen",
        bits=48,
        multihead=False,
        steps=600,
        width=0.25,
        runlocal=False,
    )
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.protocol = arg.protocol
    config.input = config_lib.input_config("orl", batch_size=64, eval_batch_size=64)

    config.method = "dcbh"
    config.model = ml_collections.ConfigDict()
    config.model.backbone = ml_collections.ConfigDict({"name": "dcbh_net", "width": arg.width})
    config.model.features = 0  # the backbone's concat width (768 · width)
    config.model.bits = (12, 24, 36, 48) if arg.multihead else arg.bits
    config.model.block_size = 6
    config.model.dtype = "float32"

    config.loss = ml_collections.ConfigDict()
    config.loss.quant_weight = 0.1
    config.loss.quant_target = 0.5  # the code's |h| target (the paper: 1)
    config.loss.center_weight = 1e-4
    config.loss.center_reduction = "sum"  # tf.nn.l2_loss: a sum over the batch
    config.loss.center_update = True
    config.loss.center_alpha = 1.0
    config.loss.weight_decay = 2e-4  # TF1 λ·l2_loss = λ/2 Σ w² on conv/dense kernels

    config.optim = config_lib.optimizer("adam", lr=1e-3, schedule="cosine", warmup_steps=50)
    config_lib.training(
        config, total_steps=arg.steps, ckpt_steps=arg.steps // 6, log_training_steps=10
    )
    config.evals = config_lib.validation_and_test(arg.steps // 6)
    if arg.runlocal:
        config_lib.run_locally(config)
        config.model.backbone.width = 1 / 32  # 2/4/8/16 channels, 24 trunk features
    return config.lock()
