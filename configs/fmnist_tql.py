r"""TQL on Fashion-MNIST (`fmnist` protocol): 12- and 48-bit Hamming codes from one model.

TQL (Zhou, Huang, Zhang & Wang, VCIP 2017; METHODS §4, **our formulation**: the paper has no
public code and only its abstract was read, see docs/tql.md): per code length k a head
f = tanh(Dense(k)) on a shared trunk; loss L_trip(f, margin 0.5k) + λ·L_quant with λ = 1 and
batch-all mining on the global batch. `quant` picks L_quant:
`triplet_a` (the triplet loss on straight-through binary codes, margin 0.5k), `triplet_b`
(real anchor against binary positive and negative), `pointwise` (‖f − sgn f‖², the ablation
the paper argues against) or `none`. Codes = sgn(f) as 0/1 bits, Hamming ranking; the test
evaluator also ranks f itself by Euclidean distance (`real_map@all`, `real_p@100`).

The `fmnist` protocol: database = the 60,000 training images, queries = 1,000 test images (100
per class), validation (1,000 queries, 10,000-image database) carved from the training images;
Hamming mAP@all, ties by database index, AP 0 for zero-hit queries, P@100, P/R within Hamming
radius 2.

Recipe (ours): AdamW (lr 1e-3, cosine, 200 warmup steps, weight decay 4e-3: the DSH config's),
batch 256 drawn uniformly (10 classes, about 25 images each per batch; `sampler=class_balanced`
draws 8 classes × 32 images instead), horizontal flips, 5,600 steps = 24 epochs, the DSH net
(conv-pool-LRN ×3, FC 500). `backbone=cnn_small` uses the small CPU CNN instead;
`trunk=dcbh_net` or `trunk=dsh_net` the shared trunks of the same-backbone rows
(`config_lib.SHARED_TRUNKS`).

Run (`apt-get install dataset-fashion-mnist` first); the comparison at the same-backbone rows'
budget (DCBH's net ×¼, 1,000 steps). Batch-all mining is the default: with batch-hard mining
(`mining=batch_hard`) at this margin and learning rate every code collapses to one point within
the first 250 steps (loss = the margins, one distinct code, mAP 0.10):

  dpq-train --config=configs/fmnist_tql.py:quant=triplet_a,steps=1000,trunk=dcbh_net \
      --workdir=workdirs/fmnist_tql_a_same
  dpq-train --config=configs/fmnist_tql.py:quant=triplet_b,steps=1000,trunk=dcbh_net \
      --workdir=workdirs/fmnist_tql_b_same
  dpq-train --config=configs/fmnist_tql.py:quant=pointwise,steps=1000,trunk=dcbh_net \
      --workdir=workdirs/fmnist_tql_pointwise_same

report.json: the `test` rows (bits 12 and 48) hold `metrics["map@all"]` (binary codes,
Hamming) and `metrics["real_map@all"]` (the real-valued f, Euclidean).

Arguments: `quant` (triplet_a | triplet_b | pointwise | none), `mining` (batch_hard |
batch_all | semi_hard), `bits` (0 = the two heads 12 and 48; k = one k-bit head), `steps`,
`sampler` (uniform | class_balanced), `backbone` (dsh_net | cnn_small), `trunk`, `runlocal`.

Expected: not measured yet. For scale, on the same trunk and budget DSH reaches mAP@all
0.848 / 0.873 at 12 / 48 bits (README, same-backbone rows).
"""

from dpq_jax import config_lib
from dpq_jax.methods import tql


def get_config(arg=None):
    arg = config_lib.parse_arg(
        arg,
        quant="triplet_a",
        mining="batch_all",
        bits=0,
        steps=5600,
        sampler="uniform",
        backbone="dsh_net",
        trunk="",
        runlocal=False,
    )
    config = tql.small_image_config(
        arg, protocol="fmnist", data="fmnist", input_hw=(28, 28), evaluations=4, warmup_steps=200
    )
    if arg.trunk:  # a same-backbone comparison: this method's heads and loss on a shared trunk
        config_lib.shared_trunk(config.model, arg.trunk, tiny=arg.runlocal)
    return config.lock()
