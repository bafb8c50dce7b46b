r"""TQL on CIFAR-10 with the DSH protocol (`cifar10_dsh`): 12- and 48-bit Hamming codes.

TQL (Zhou, Huang, Zhang & Wang, VCIP 2017; METHODS §4, **our formulation**, see docs/tql.md):
per code length k a head f = tanh(Dense(k)) on the DSH net (conv-pool-LRN ×3, FC 500, 32×32);
loss L_trip(f, margin 0.5k) + λ·L_quant (λ = 1) with batch-all mining on the global batch;
`quant` = triplet_a | triplet_b | pointwise | none as in configs/fmnist_tql.py. Codes = sgn(f),
Hamming ranking; the test evaluator also ranks f by Euclidean distance (`real_map@all`).

The `cifar10_dsh` protocol (DSH, and the comparison table TQL's reference list suggests):
database = the 50,000 training images, queries = the 10,000 test images; validation carved
from the training file (1,000 queries, 5,000-image database); Hamming mAP@all, stable ties,
AP 0 for zero-hit queries, P@100, P/R within Hamming radius 2. CIFAR-10 must be on disk
(`cifar-10-batches-py`; `--config.input.source_dir=...` on first use).

Recipe (ours): AdamW (lr 1e-3, cosine, 500 warmup steps, weight decay 4e-3), batch 256 drawn
uniformly (10 classes: about 25 images of each), flips and the data set's per-channel
normalisation, 10,000 steps (about 52 epochs of the 49,000 training images; DSH's Caffe recipe
is 70,000 iterations of 200). `backbone=cnn_small` swaps in the small CPU CNN.

Run (a GPU is advisable for the full budget):

  dpq-train --config=configs/cifar10_tql.py:quant=triplet_a --workdir=workdirs/cifar10_tql_a \
      --config.input.source_dir=/data/cifar-10-batches-py
  dpq-train --config=configs/cifar10_tql.py:quant=triplet_b --workdir=workdirs/cifar10_tql_b
  dpq-train --config=configs/cifar10_tql.py:quant=pointwise --workdir=workdirs/cifar10_tql_pw

Arguments: `quant`, `mining` (batch_hard | batch_all | semi_hard), `bits` (0 = 12 and 48),
`steps`, `sampler` (uniform | class_balanced: 8 classes × 32 images), `backbone`
(dsh_net | cnn_small), `runlocal`.

Expected: not measured yet. The DSH paper reports CIFAR-10 mAP 0.616 / 0.651 / 0.661 / 0.676 at
12 / 24 / 36 / 48 bits; TQL's abstract claims it is better, with a small drop from real-valued
to binary descriptors.
"""

from dpq_jax import config_lib
from dpq_jax.methods import tql


def get_config(arg=None):
    arg = config_lib.parse_arg(
        arg,
        quant="triplet_a",
        mining="batch_all",
        bits=0,
        steps=10000,
        sampler="uniform",
        backbone="dsh_net",
        runlocal=False,
    )
    # source_dir: the cifar-10-batches-py folder; "" = the manual dir.
    config = tql.small_image_config(
        arg,
        protocol="cifar10_dsh",
        data="cifar10",
        input_hw=(32, 32),
        evaluations=10,
        warmup_steps=500,
    )
    return config.lock()
