r"""TQL on DeepFashion In-shop (`inshop` protocol): query vs gallery, 12- and 48-bit codes.

TQL (Zhou, Huang, Zhang & Wang, VCIP 2017; METHODS §4, **our formulation**, see docs/tql.md):
per code length k a head f = tanh(Dense(k)) on a small CNN; loss L_trip(f, margin 0.5k) +
λ·L_quant (λ = 1) with batch-all mining on the global batch; `quant` = triplet_a | triplet_b |
pointwise | none as in configs/fmnist_tql.py. Codes = sgn(f), Hamming ranking.

The `inshop` protocol (DeepFashion's `list_eval_partition.txt`): train on the `train` images
(25,882 of 3,997 items, 300 items held out for validation: one query image each against their
other images), queries = the 14,218 `query` images, database = the 12,612 `gallery` images; the
test items are never seen in training; relevant = same item. Reported: Hamming mAP@all (what
the TQL paper reports for In-shop), P@10, recall@1/10/20 (`r@K` = relevant gallery images in
the top K / relevant gallery images) and P/R within Hamming radius 2; the test evaluator also
ranks f by Euclidean distance (`real_map@all`, `real_r@1`, ...). Note: the In-shop literature's
"Recall@K" is the share of queries with at least one relevant image in the top K (a hit rate),
which is not our `r@K`. The release must be on disk (`--config.input.source_dir=` the folder
with `Eval/list_eval_partition.txt` and `img/`); images are read lazily at 256×256.

Batches are class-balanced (Hermans et al.'s PK batches): 32 items × 4 images = 128, since a
uniform batch of 128 from 3,700 items holds almost no positive pair. Recipe (ours): AdamW (lr
1e-3, cosine, 200 warmup steps, weight decay 4e-3), images resized to 72×72, random 64×64 crops
and flips (centre crop for evaluation), ImageNet mean/std normalisation, 4,000 steps (about 20
epochs of images); `cnn_small` (32-64-128-256 channels, 256 features). `backbone=dsh_net` uses
the DSH net at 64×64 instead.

Run:

  dpq-train --config=configs/inshop_tql.py:quant=triplet_a --workdir=workdirs/inshop_tql_a \
      --config.input.source_dir=/data/deepfashion/inshop
  dpq-train --config=configs/inshop_tql.py:quant=triplet_b --workdir=workdirs/inshop_tql_b
  dpq-train --config=configs/inshop_tql.py:quant=pointwise --workdir=workdirs/inshop_tql_pw

Arguments: `quant`, `mining` (batch_hard | batch_all | semi_hard), `bits` (0 = 12 and 48),
`steps`, `classes` (P, items per batch; K = 128 / P), `backbone` (cnn_small | dsh_net),
`runlocal`.

Expected: not measured yet.
"""

import ml_collections

from dpq_jax import config_lib
from dpq_jax.methods import tql

_NORM = "value_range(0,1)|normalize((0.485,0.456,0.406),(0.229,0.224,0.225))"
BACKBONES = {
    "cnn_small": (
        {"name": "cnn_small", "widths": (32, 64, 128, 256)},
        256,
        ({"name": "cnn_small", "widths": (4, 8)}, 16),
    ),
    "dsh_net": (
        {"name": "dsh_net", "input_hw": (64, 64)},
        500,
        ({"name": "dsh_net", "input_hw": (32, 32), "widths": (4, 4, 8)}, 16),
    ),
}


def get_config(arg=None):
    arg = config_lib.parse_arg(
        arg,
        quant="triplet_a",
        mining="batch_all",
        bits=0,
        steps=4000,
        classes=32,
        backbone="cnn_small",
        runlocal=False,
    )
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.protocol = "inshop"
    size, crop = (36, 32) if arg.runlocal else (72, 64)
    # source_dir: the release folder; "" = <data_dir>/downloads/manual/inshop.
    config.input = config_lib.image_input(
        "inshop",
        batch_size=128,
        eval_batch_size=512,
        pp_train=f"resize({size},{size})|random_crop({crop},{crop})|flip_lr|{_NORM}",
        pp_eval=f"resize({size},{size})|center_crop({crop},{crop})|{_NORM}",
    )
    config.input.sampler = "class_balanced"
    config.input.classes_per_batch = arg.classes  # P items x K = 128 / P images

    config.method = "tql"
    config.model = tql.model_config(BACKBONES, arg.backbone, arg.bits, runlocal=arg.runlocal)
    config.loss = tql.loss_config(arg.quant, arg.mining)  # α = α_q = 0.5k, λ = 1
    # runlocal: 16 = 4 items x 4 images.
    tql.recipe(
        config,
        steps=arg.steps,
        evaluations=8,
        warmup_steps=200,
        precision_ks=(10,),
        runlocal=arg.runlocal,
    )
    for evaluator in config.evals.values():
        evaluator.recall_ks = (1, 10, 20)
    return config.lock()
