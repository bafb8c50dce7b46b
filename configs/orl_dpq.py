r"""DPQ-G (Deep Progressive Quantization) on the ORL / AT&T faces (40 identities, 112×92 grey),
the embedded default data: one model, codes of 8, 16, 24 and 32 bits.

DPQ recipe (Gao et al., IJCAI 2019; METHODS §2): embedding x = tanh(fc8) with D = 300, L = 4
progressive levels of K = 256 full-dimension codewords (cosine-softmax soft assignment, hard
residual), DVSQ adaptive-margin loss against label embeddings plus 0.1 × softmax CE, soft and
hard distortion plus 0.1 × JCL on the codebooks. The database is encoded once; the report has
one row per prefix (8, 16, 24, 32 bits), scored with the first l codebooks against the raw
query embedding (AQD), mAP@all, stable ties, AP 0 for zero-hit queries.

Where ours differs from the paper: the backbone is cnn_small on faces resized to 35×29 and
cropped to 32×26 (as orl_opqn), from scratch, instead of a pretrained AlexNet; the label
embeddings are learned class vectors (identities have no word vectors); one AdamW chain
(lr 3e-3, cosine) trains everything jointly (`schedule=two_stage`: encoder from step 0, codebooks
on Adam from half way, as the reference's two optimizers; it needs a trainer that builds the
optimizer through `Method.make_optimizer`). `stop_grad_features=True` (default) is the released
code, `false` the end-to-end model the paper describes. In `orl_unseen` the classifier and the
label vectors cover the 24 training identities only (6 others are held out for validation).

Run (about 1–2 minutes on 2 CPU cores):

  dpq-train --config=configs/orl_dpq.py --workdir=workdirs/orl_dpq
  dpq-train --config=configs/orl_dpq.py:protocol=orl_unseen --workdir=workdirs/orl_dpq_unseen
  dpq-train --config=configs/orl_dpq.py:protocol=orl_unseen,split_seed=1 \
    --workdir=workdirs/orl_dpq_unseen_s1

Arguments: `protocol` (orl_seen | orl_unseen), `split_seed` (0; sets `config.seed`, which draws
the split and also seeds the initialisation and the data order, as `--config.seed` does),
`levels` (L, 4), `codebook_size` (K, 256),
`assign` (cosine | l2), `gamma` (1), `stop_grad_features` (true), `schedule` (joint |
two_stage), `size` (32 | 112: the input height, as orl_opqn; 112 crops the native 112×92),
`runlocal` (tiny).

Expected (measured 2026-12-02, README `orl_unseen` table, five split seeds, fixed orthogonal
label vectors via `--config.model.label_embeddings=orthogonal`): `protocol=orl_unseen` with the
defaults (L = 4, size 32) gives mAP@all 0.572 / 0.665 / 0.729 / 0.775 at 8 / 16 / 24 / 32 bits;
`levels=8,size=112` gives 0.877 ± 0.033 at 64 bits (raw pixels on the same splits:
0.866 ± 0.030), 1–4 minutes per run. On `orl_seen` orl_opqn reaches ≈ 0.97 at 32 bits (raw
pixels 0.73).
The model is selected on the validation mAP averaged over the code lengths, never on the query
set.
"""

import ml_collections

from dpq_jax import config_lib
from dpq_jax.methods import dpq


def get_config(arg=None):
    arg = config_lib.parse_arg(
        arg,
        protocol="orl_seen",
        split_seed=0,
        levels=4,
        codebook_size=256,
        assign="cosine",
        gamma=1.0,
        stop_grad_features=True,
        schedule="joint",
        size=32,
        runlocal=False,
    )
    if arg.schedule not in ("joint", "two_stage"):
        raise ValueError(f"schedule must be 'joint' or 'two_stage', got {arg.schedule!r}.")
    config = ml_collections.ConfigDict()
    config.seed = arg.split_seed  # draws the split, the initialisation and the data order
    config.protocol = arg.protocol
    config.input, trunk = config_lib.orl_input_and_trunk(arg.size, tiny=arg.runlocal)

    config.method = "dpq"
    config.model = dpq.model_config(
        trunk,
        features=512,
        levels=arg.levels,
        codebook_size=arg.codebook_size,
        assign=arg.assign,
        gamma=arg.gamma,
        label_embeddings="",  # learned class vectors
        runlocal=arg.runlocal,
    )
    config.loss = dpq.loss_config(arg.stop_grad_features)

    config.optim = config_lib.optimizer(
        "adamw", lr=3e-3, weight_decay=1e-2, schedule="cosine", warmup_steps=20
    )
    config_lib.training(config, total_steps=300, ckpt_steps=50, log_training_steps=10)
    config.evals = config_lib.validation_and_test(50)

    if arg.runlocal:
        config_lib.run_locally(config)
    config.optim = dpq.schedule_optim(arg.schedule, config.optim, total_steps=config.total_steps)
    return config.lock()
