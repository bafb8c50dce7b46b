r"""DPQ-G (Deep Progressive Quantization) on Fashion-MNIST (`fmnist`): ONE model, codes of 8, 16,
24 and 32 bits.

The `fmnist` protocol: database = the 60,000 training images, queries = 1,000 test images (100
per class), validation (1,000 queries, 10,000-image database) carved from the training images;
ADC mAP over the whole database, P@100, stable ties, AP 0 for zero-hit queries. The model is
selected on the validation mAP averaged over the four code lengths, never on the query set.

DPQ recipe (Gao et al., IJCAI 2019; METHODS §2): embedding x = tanh(fc8) with D = 300, L = 4
progressive levels of K = 256 full-dimension codewords (cosine-softmax soft assignment, hard
residual), DVSQ adaptive-margin loss against label embeddings plus 0.1 × softmax CE, soft and
hard distortion over the four levels plus 0.1 × JCL on the codebooks. The database is encoded
once (`[N, 4]` codes); the report has one row per prefix: 8, 16, 24 and 32 bits, each scored
with the first l codebooks against the raw query embedding (AQD).

Where ours differs from the paper:
- Backbone: cnn_small (the fmnist OPQN net: 32/64/128 channels, flatten, Dense 512 + BN) on
  28×28 grey images, trained from scratch, in place of the ImageNet-pretrained AlexNet fc7.
- Label embeddings: learned class vectors (no word2vec for Fashion-MNIST classes); the margins
  δ_ij = 1 − cos(v_i, v_j) are constants of each step.
- Optimizer: one AdamW chain for everything (lr 3e-3, cosine, 100 warmup steps), batch 256,
  1,800 steps, the CPU-sized schedule of fmnist_opqn. `schedule=two_stage` instead trains the
  encoder with that chain from step 0 and the codebooks with Adam (lr 1e-3) from half way, as
  the reference's two optimizers do (it needs a trainer that builds the optimizer through
  `Method.make_optimizer`).
- `stop_grad_features=True` (default) is the released code: the backbone never sees the
  quantization loss. `stop_grad_features=false` is the end-to-end model the paper describes.

Run (CPU; not timed yet: fmnist_opqn, same backbone and steps, takes 23 CPU-minutes):

  dpq-train --config=configs/fmnist_dpq.py --workdir=workdirs/fmnist_dpq
  dpq-train --config=configs/fmnist_dpq.py:stop_grad_features=false \
      --workdir=workdirs/fmnist_dpq_e2e
  dpq-train --config=configs/fmnist_dpq.py:assign=l2,gamma=10 --workdir=workdirs/fmnist_dpq_l2

Arguments: `levels` (L, default 4), `codebook_size` (K, default 256), `assign` (cosine | l2),
`gamma` (softmax sharpness, default 1), `stop_grad_features` (default true), `schedule`
(joint | two_stage), `labels` (learned | orthogonal: fixed orthonormal class vectors, every
DVSQ margin 1), `runlocal` (tiny).

Expected: not yet measured. The goal (issue 11): every prefix at least the separately trained
OPQN at the same length (0.8946 / 0.8982 / 0.9026 mAP@all at 16 / 24 / 32 bits) and >= 0.85
at 8 bits.
"""

import ml_collections

from dpq_jax import config_lib
from dpq_jax.methods import dpq


def get_config(arg=None):
    arg = config_lib.parse_arg(
        arg,
        levels=4,
        codebook_size=256,
        assign="cosine",
        gamma=1.0,
        stop_grad_features=True,
        schedule="joint",
        labels="learned",
        runlocal=False,
    )
    if arg.schedule not in ("joint", "two_stage"):
        raise ValueError(f"schedule must be 'joint' or 'two_stage', got {arg.schedule!r}.")
    if arg.labels not in ("learned", "orthogonal"):
        raise ValueError(f"labels must be 'learned' or 'orthogonal', got {arg.labels!r}.")
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.protocol = "fmnist"
    config.input = config_lib.input_config("fmnist", batch_size=256, eval_batch_size=512)

    config.method = "dpq"
    config.model = ml_collections.ConfigDict()
    config.model.backbone = ml_collections.ConfigDict(
        {"name": "cnn_small", "widths": (32, 64, 128), "pool": "flatten", "input_hw": (28, 28)}
    )
    config.model.features = 512  # trunk width F (AlexNet fc7: 4096)
    config.model.embedding_dim = 300  # D of x = tanh(fc8), as the word2vec vectors
    config.model.quantizer = ml_collections.ConfigDict()
    config.model.quantizer.num_levels = arg.levels  # L: codes of l·log2(K) bits, l = 1..L
    config.model.quantizer.codebook_size = arg.codebook_size  # K
    config.model.quantizer.assign = arg.assign  # "cosine" (the code) or "l2" (the paper)
    config.model.quantizer.gamma = arg.gamma
    config.model.quantizer.init_std = 0.01
    # "" = learned, "orthogonal" = fixed with every margin 1, or a .npy / .txt of [C, D] vectors
    config.model.label_embeddings = "" if arg.labels == "learned" else arg.labels
    config.model.dtype = "float32"

    config.loss = ml_collections.ConfigDict()
    config.loss.semantic_weight = 1.0  # DVSQ adaptive margin
    config.loss.classification_weight = 0.1  # λ
    config.loss.tau = 1.0
    config.loss.mu = 1.0  # hard distortion
    config.loss.nu = 0.1  # joint central loss
    config.loss.stop_grad_features = arg.stop_grad_features

    config.optim = config_lib.optimizer(
        "adamw", lr=3e-3, weight_decay=1e-2, schedule="cosine", warmup_steps=100
    )
    config_lib.training(config, total_steps=1800, ckpt_steps=300)
    config.evals = config_lib.validation_and_test(300, precision_ks=(100,))

    if arg.runlocal:
        config_lib.run_locally(config)
        config.model.backbone.widths = (4, 8)
        config.model.features = 16
        config.model.embedding_dim = 8
        config.model.quantizer.codebook_size = min(arg.codebook_size, 16)
    if arg.schedule == "two_stage":
        config.optim = dpq.two_stage_optim(
            config.optim,
            config_lib.optimizer("adam", lr=1e-3, schedule="constant"),
            codebook_start_step=config.total_steps // 2,
        )
    return config.lock()
