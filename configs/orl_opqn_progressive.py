r"""Progressive OPQN on the ORL / AT&T faces (40 identities, 112×92 grey), the embedded default
data: one model, codes of 8, 16, 24 and 32 bits.

Recipe (`dpq_jax/methods/opqn_progressive.py`): L = 4 residual levels of M = 1 book of K = 256
fixed orthonormal codewords (D = 256; level 1 OPQN's DCT book, levels 2-4 random orthonormal
bases), one learned gain per level, subspace CosFace (s = 20, m = 0.5) on the raw embedding and
every prefix's soft quantization, entropy regulariser μ = 0.1. Backbone, input and optimizer as
orl_opqn: cnn_small on faces resized to 35×29 and cropped to 32×26, SGD + momentum (lr 0.1,
halved every 100 steps), 300 steps of 64. The report has one row per prefix, scored by
progressive ADC against the query's l-level soft quantization; mAP@all, stable ties, AP 0 for
zero-hit queries.

Run (about 1–2 minutes on 2 CPU cores):

  dpq-train --config=configs/orl_opqn_progressive.py --workdir=workdirs/orl_opqn_prog
  dpq-train --config=configs/orl_opqn_progressive.py:protocol=orl_unseen \
      --workdir=workdirs/orl_opqn_prog_unseen

Arguments: `protocol` (orl_seen | orl_unseen), `levels` (4), `num_codebooks` (M, 1),
`codebook_size` (K, 256), `codebook_init` (dct | qr), `gain_decay` (0.5), `learn_gains` (true),
`runlocal` (tiny: K = 16, 4-bit levels).

Expected: not measured yet (orl_opqn reaches ≈ 0.97 on orl_seen at 32 bits; raw pixels 0.73).
The model is selected on the validation mAP averaged over the code lengths, never on the query
set.
"""

import ml_collections

from dpq_jax import config_lib
from dpq_jax.methods import opqn, opqn_progressive


def get_config(arg=None):
    arg = config_lib.parse_arg(
        arg,
        protocol="orl_seen",
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
    config.protocol = arg.protocol
    config.input = config_lib.input_config("orl", batch_size=64, eval_batch_size=64)

    config.method = "opqn_progressive"
    config.model = opqn_progressive.model_config(
        config_lib.cnn_small_trunk((32, 26), tiny=arg.runlocal),
        levels=arg.levels,
        num_codebooks=arg.num_codebooks,
        codebook_size=arg.codebook_size,
        codebook_init=arg.codebook_init,
        gain_decay=arg.gain_decay,
        learn_gains=arg.learn_gains,
        runlocal=arg.runlocal,
    )
    config.loss = opqn.loss_config(scale=20.0)  # CosFace s (32×32 models), m = 0.5, μ = 0.1

    # orl_opqn's recipe: SGD + momentum, L2 weight decay, halve the lr every 100 steps.
    config.optim = opqn.optim_config(decay_steps=100)
    config_lib.training(config, total_steps=300, ckpt_steps=50, log_training_steps=10)
    config.evals = config_lib.validation_and_test(50)

    if arg.runlocal:
        config_lib.run_locally(config)
    return config.lock()
