r"""DDQH on Fashion-MNIST (`fmnist` protocol): 12/24/36/48-bit Hamming codes.

DDQH (Tang, Lin, Li & Yang, IEEE TNNLS 2018; METHODS §5.3, **unverified**: no public code, the
formulation is ours from the published descriptions, see `dpq_jax/methods/ddqh.py`): DDH's
network and loss (`configs/fmnist_ddh.py`) with the divide-and-encode module replaced by a dense
hash layer: per code length k, face feature layer Dense(4k) → BN → ReLU, then Dense(4k → k) →
BN → tanh = h, a softmax classifier on h. Loss: CE + 0.01·mean||h| − 1| per head, plus Keras'
L2 1e-4·Σw² on the kernels; codes = sign(h), 0/1 bits, Hamming ranking. The trunk is the DDH
trunk (320 at 28×28).

The `fmnist` protocol: database = the 60,000 training images, queries = 1,000 test images (100
per class), validation (1,000 queries, 10,000-image database) carved from the training images;
Hamming mAP@all, ties by database index, AP 0 for zero-hit queries, P@100, P/R within Hamming
radius 2.

Recipe: as `configs/fmnist_ddh.py` (DDH's Adam lr 1e-3 and batch 256, cosine after 200 warmup
steps, 5,600 steps = 24 epochs, the reference DSH budget on this protocol; selected on
validation mAP), so the two differ only in the hash layer.

Run (`apt-get install dataset-fashion-mnist` first):

  dpq-train --config=configs/fmnist_ddqh.py:bits=12 --workdir=workdirs/fmnist_ddqh_12
  dpq-train --config=configs/fmnist_ddqh.py:multihead --workdir=workdirs/fmnist_ddqh_multi

Arguments: `bits` (one code length), `multihead` (12/24/36/48 from one run, one head each on a
shared trunk, the sum of the per-head losses; selected on the mean validation mAP), `steps`,
`runlocal` (tiny).
`trunk=dcbh_net` or `trunk=dsh_net` runs this method's heads and loss on a trunk every
method can share (`config_lib.SHARED_TRUNKS`), for same-backbone comparisons.

Expected: no published number on this protocol; measured here: see the README results table.
"""

import os

from dpq_jax import config_lib


def get_config(arg=None):
    """`configs/fmnist_ddh.py` (same arguments, net, loss and recipe) with the DDQH method."""
    config = config_lib.load_config(os.path.join(os.path.dirname(__file__), "fmnist_ddh.py"), arg)
    config.method = "ddqh"  # the one difference: a dense hash layer instead of divide-and-encode
    return config
