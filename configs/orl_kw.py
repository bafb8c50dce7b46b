r"""DPQ-KW (Klein & Wolf supervised PQ) on the ORL / AT&T faces (40 identities, 112×92 grey).

The learned-codebook baseline of OPQN (METHODS §5.6) on the network, code shapes and budget of
`configs/orl_opqn.py`: cnn_small with a flatten head, faces resized to 35×29 and randomly
cropped to 32×26, K = 256 and D = M·K, batch 64, 300 steps with the learning rate halved every
100. DPQ-KW's own recipe otherwise: SGD + momentum 0.9, L2 weight decay 5e-4, lr 0.01 (the
reference's; OPQN uses 0.1); learned assignment maps and codebooks (N(0, 1) as the reference),
a working straight-through hard path, CE(s) + CE(h) with one shared bias-free classifier,
joint central loss α = 0.25, Gini batch diversity β1 = 1, Gini sharpness β2 = 0.01. Search: the
soft-quantized raw query against the codewords, squared L2, ascending.

Run (about 1–2 minutes on 2 CPU cores, as the OPQN config):

  dpq-train --config=configs/orl_kw.py --workdir=workdirs/orl_kw_seen
  dpq-train --config=configs/orl_kw.py:protocol=orl_unseen --workdir=workdirs/orl_kw_unseen

Arguments: `protocol` (orl_seen | orl_unseen), `bits` (16, 24, 32, 48, 64), `init`
("normal" | "xavier_uniform"), `straight_through` (default true; false is the reference's
gradient-free hard path), `runlocal` (tiny).

Expected: not measured yet (32-bit ADC codes, L2 soft-quantized query table, mAP@all, stable
ties, AP 0 for zero-hit queries; OPQN ≈ 0.97 and raw pixels 0.73 on orl_seen). The model is
selected on the validation split, never on the query set.
"""

import ml_collections

from dpq_jax import config_lib
from dpq_jax.methods import opqn


def get_config(arg=None):
    arg = config_lib.parse_arg(
        arg,
        protocol="orl_seen",
        bits=32,
        init="normal",
        straight_through=True,
        runlocal=False,
    )
    num_codebooks, codebook_size = opqn.pq_shape(arg.bits)  # OPQN's shapes: the rows compare
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.protocol = arg.protocol
    config.input = config_lib.input_config("orl", batch_size=64, eval_batch_size=64)

    config.method = "kw"
    config.model = ml_collections.ConfigDict()
    config.model.backbone = config_lib.cnn_small_trunk((32, 26), tiny=arg.runlocal)
    config.model.embedding_dim = num_codebooks * codebook_size  # D = M·K, as OPQN's config
    config.model.head = ml_collections.ConfigDict()
    config.model.head.num_codebooks = num_codebooks
    config.model.head.codebook_size = codebook_size
    config.model.head.temperature = 1.0  # the reference's softmax has none
    config.model.head.init = arg.init  # "normal" (reference) or "xavier_uniform"
    config.model.head.straight_through = arg.straight_through
    config.model.dtype = "float32"

    config.loss = ml_collections.ConfigDict()
    config.loss.central_weight = 0.25  # α, joint central loss
    config.loss.diversity_weight = 1.0  # β1, Gini batch diversity
    config.loss.sharpness_weight = 0.01  # β2, Gini sharpness (subtracted)

    # The reference's SGD recipe at lr 0.01, on the OPQN config's schedule (halve every 100).
    config.optim = opqn.optim_config(decay_steps=100, lr=0.01)
    config_lib.training(config, total_steps=300, ckpt_steps=50, log_training_steps=10)
    config.evals = config_lib.validation_and_test(50)

    if arg.runlocal:
        config_lib.run_locally(config)
    return config.lock()
