r"""Progressive OPQN on Fashion-MNIST (`fmnist`): ONE model, codes of 8, 16, 24 and 32 bits.

The `fmnist` protocol: database = the 60,000 training images, queries = 1,000 test images (100
per class), validation (1,000 queries, 10,000-image database) carved from the training images;
ADC mAP over the whole database, P@100, stable ties, AP 0 for zero-hit queries. The model is
selected on the validation mAP averaged over the four code lengths, never on the query set.

Recipe (`dpq_jax/methods/opqn_progressive.py` says what comes from OPQN, from DPQ-G and what
is ours): L = 4 residual levels of M = 1 book of K = 256 fixed orthonormal codewords in
D = M·K = 256 dimensions (level 1 OPQN's DCT book, levels 2-4 random orthonormal bases), one
learned gain per level (init 1, 0.5, 0.25, 0.125), 8 bits per level; subspace CosFace (s = 20,
m = 0.5) on the raw embedding and on every prefix's soft quantization, entropy regulariser
μ = 0.1. The database is encoded once (`[N, 4, 1]` codes); the report has one row per prefix
(8, 16, 24, 32 bits), each scored by progressive ADC with the first l levels against the
query's l-level soft quantization (OPQN's table at l = 1). Backbone, data and optimizer as
fmnist_opqn: cnn_small (32/64/128 channels, flatten) on 28×28 grey images with horizontal flips,
AdamW (lr 3e-3, cosine, 100 warmup steps), batch 256, 1,800 steps.

Run (CPU; not timed yet: fmnist_opqn, same backbone and steps, takes 23 CPU-minutes):

  dpq-train --config=configs/fmnist_opqn_progressive.py --workdir=workdirs/fmnist_opqn_prog
  dpq-train --config=configs/fmnist_opqn_progressive.py:learn_gains=false \
      --workdir=workdirs/fmnist_opqn_prog_fixed_gains

Arguments: `levels` (L, 4), `num_codebooks` (M, 1), `codebook_size` (K, 256; D = M·K),
`codebook_init` (dct | qr), `gain_decay` (0.5), `learn_gains` (true), `runlocal` (tiny).

Expected: not measured yet; compare with separately trained OPQN 0.8946 / 0.8982 / 0.9026
mAP@all at 16 / 24 / 32 bits (configs/fmnist_opqn.py).
"""

import ml_collections

from dpq_jax import config_lib
from dpq_jax.methods import opqn, opqn_progressive


def get_config(arg=None):
    arg = config_lib.parse_arg(
        arg,
        levels=4,
        num_codebooks=1,
        codebook_size=256,
        codebook_init="dct",
        gain_decay=0.5,
        learn_gains=True,
        runlocal=False,
    )
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.protocol = "fmnist"
    config.input = config_lib.input_config("fmnist", batch_size=256, eval_batch_size=512)

    config.method = "opqn_progressive"
    config.model = opqn_progressive.model_config(
        config_lib.cnn_small_trunk((28, 28), tiny=arg.runlocal),
        levels=arg.levels,
        num_codebooks=arg.num_codebooks,
        codebook_size=arg.codebook_size,
        codebook_init=arg.codebook_init,
        gain_decay=arg.gain_decay,
        learn_gains=arg.learn_gains,
        runlocal=arg.runlocal,
    )
    config.loss = opqn.loss_config(scale=20.0)  # CosFace s (small images), m = 0.5, μ = 0.1

    config.optim = config_lib.optimizer(
        "adamw", lr=3e-3, weight_decay=1e-2, schedule="cosine", warmup_steps=100
    )
    config_lib.training(config, total_steps=1800, ckpt_steps=600)
    config.evals = config_lib.validation_and_test(600, precision_ks=(100,))

    if arg.runlocal:
        config_lib.run_locally(config)
    return config.lock()
