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

import os

from dpq_jax import config_lib


def get_config(arg=None):
    """`configs/orl_ddh.py` (same arguments, net, loss and recipe) with the DDQH method."""
    config = config_lib.load_config(os.path.join(os.path.dirname(__file__), "orl_ddh.py"), arg)
    config.method = "ddqh"  # the one difference: a dense hash layer instead of divide-and-encode
    return config
