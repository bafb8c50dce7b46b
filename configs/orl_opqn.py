r"""OPQN on the ORL / AT&T faces (40 identities, 112×92 grey), the embedded default data.

Reproduces the OPQN recipe (Zhang, Zhe & Yan, Pattern Recognition 2023; METHODS §1) at CPU scale:
fixed orthonormal DCT codebooks with K = 256 and D = M·K, subspace CosFace on raw and
soft-quantized sub-vectors, entropy regulariser μ = 0.1, SGD + momentum with step decay. By
default (`size=32`) faces are resized to 35×29 and randomly cropped to 32×26 (the 32×32 recipe,
keeping ORL's aspect); `size=112` resizes to 120×98 and crops the native 112×92 (OPQN's
Resize(120) + crop(112)), with one more conv block.

Run (about 1–2 minutes on 2 CPU cores at size 32, about 3 at size 112):

  dpq-train --config=configs/orl_opqn.py --workdir=workdirs/orl_seen
  dpq-train --config=configs/orl_opqn.py:protocol=orl_unseen,bits=64,size=112 \
    --workdir=workdirs/orl_unseen
  dpq-train --config=configs/orl_opqn.py:protocol=orl_unseen,bits=64,size=112,split_seed=1 \
    --workdir=workdirs/orl_unseen_s1

Arguments: `protocol` (orl_seen | orl_unseen), `bits` (16, 24, 32, 48, 64), `size` (32 | 112:
the input height), `split_seed` (0; sets `config.seed`, which draws the split and also seeds
the initialisation and the data order, as `--config.seed` does), `runlocal` (tiny).

Expected (ADC codes, soft-quantized query LUT, mAP@all, stable ties, AP 0 for zero-hit queries;
the model selected on the validation split, never on the query set):
- orl_seen, 32 bits, size 32: 0.99 (raw pixels 0.73 on the same split).
- orl_unseen (validation on 6 held-out identities, training on the other 24, test on 10 more),
  mean ± std over split seeds 0–4, raw pixels 0.866 ± 0.030 on the same test splits:
  32 bits at size 32: 0.795 ± 0.100; 64 bits at size 32: 0.847 ± 0.018; 64 bits at size 112:
  0.879 ± 0.022 (above raw pixels on 4 of the 5 seeds).
`--config.select_on=train/loss` selects on the training loss as the reference code does (not
recommended: it never looks at held-out data).
"""

import ml_collections

from dpq_jax import config_lib
from dpq_jax.methods import opqn


def get_config(arg=None):
    arg = config_lib.parse_arg(
        arg, protocol="orl_seen", bits=32, split_seed=0, size=32, runlocal=False
    )
    config = ml_collections.ConfigDict()
    config.seed = arg.split_seed  # draws the split, the initialisation and the data order
    config.protocol = arg.protocol
    config.input, trunk = config_lib.orl_input_and_trunk(arg.size, tiny=arg.runlocal)

    config.method = "opqn"
    config.model = opqn.model_config(trunk, *opqn.pq_shape(arg.bits))  # D = M·K, so d = K
    config.loss = opqn.loss_config(scale=20.0)  # CosFace s (32×32 models), m = 0.5, μ = 0.1

    # The reference's recipe: SGD + momentum, L2 weight decay, halve the lr every 100 steps.
    config.optim = opqn.optim_config(decay_steps=100)
    config_lib.training(config, total_steps=300, ckpt_steps=50, log_training_steps=10)
    config.evals = config_lib.validation_and_test(50)

    if arg.runlocal:
        config_lib.run_locally(config)
    return config.lock()
