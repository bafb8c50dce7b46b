r"""DPQ-KW (Klein & Wolf supervised PQ) on Fashion-MNIST (`fmnist` protocol), beside OPQN.

The learned-codebook baseline OPQN argues against (METHODS §5.6), on exactly the network,
code shapes and budget of `configs/fmnist_opqn.py`, so the rows compare: cnn_small with a
flatten head on 28×28 inputs and horizontal flips, K = 256 and D = M·K, AdamW (lr 3e-3, cosine,
100 warmup steps), batch 256, 1,800 steps (7.7 epochs). The database = the 60,000 training
images, queries = 1,000 test images, validation carved from the training images.

DPQ-KW: learned assignment maps A and learned codebooks (N(0, 1) initialisation as the
reference), soft s = [C_m p_m] and hard h = [c_{m, argmax}] quantizations with a working
straight-through path, one shared bias-free classifier on both (CE(s) + CE(h)), joint central
loss α = 0.25, Gini batch diversity β1 = 1 and Gini sharpness β2 = 0.01. Search as the
reference: the soft-quantized raw query against the codewords, squared L2, ascending.

Run (the CPU cost of the OPQN run, about 23 CPU-minutes):

  dpq-train --config=configs/fmnist_kw.py:bits=32 --workdir=workdirs/fmnist_kw_32
  dpq-train --config=configs/fmnist_kw.py:bits=16 --workdir=workdirs/fmnist_kw_16

Arguments: `bits` (16, 24, 32, 48, 64), `init` ("normal", the reference; or
"xavier_uniform"), `straight_through` (default true; false is the reference's hard path, which
gives the assignment and the backbone no gradient), `runlocal` (tiny).

Expected: not measured yet. With the reference's N(0, 1) maps and D/M = 256, the assignment
logits start with a standard deviation of about 16 (√d), so the softmax starts nearly one-hot;
`init=xavier_uniform` starts at about 1. The model is selected on the validation split, never
on the query set.
"""

import ml_collections

from dpq_jax import config_lib
from dpq_jax.methods import opqn


def get_config(arg=None):
    arg = config_lib.parse_arg(arg, bits=32, init="normal", straight_through=True, runlocal=False)
    num_codebooks, codebook_size = opqn.pq_shape(arg.bits)  # OPQN's shapes: the rows compare
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.protocol = "fmnist"
    config.input = config_lib.input_config("fmnist", batch_size=256, eval_batch_size=512)

    config.method = "kw"
    config.model = ml_collections.ConfigDict()
    config.model.backbone = config_lib.cnn_small_trunk((28, 28), tiny=arg.runlocal)
    config.model.embedding_dim = num_codebooks * codebook_size  # D = M·K, as OPQN's config
    config.model.head = ml_collections.ConfigDict()
    config.model.head.num_codebooks = num_codebooks
    config.model.head.codebook_size = codebook_size
    config.model.head.temperature = 1.0  # the reference's softmax has none
    config.model.head.init = arg.init  # "normal" (reference) or "xavier_uniform"
    config.model.head.straight_through = arg.straight_through
    config.model.dtype = "float32"  # "bfloat16" computes the backbone in bf16, params stay fp32

    config.loss = ml_collections.ConfigDict()
    config.loss.central_weight = 0.25  # α, joint central loss
    config.loss.diversity_weight = 1.0  # β1, Gini batch diversity
    config.loss.sharpness_weight = 0.01  # β2, Gini sharpness (subtracted)

    # OPQN's fmnist budget (the paper's SGD needs more epochs than a CPU allows).
    config.optim = config_lib.optimizer(
        "adamw", lr=3e-3, weight_decay=1e-2, schedule="cosine", warmup_steps=100
    )
    config_lib.training(config, total_steps=1800, ckpt_steps=600)
    config.evals = config_lib.validation_and_test(600, precision_ks=(100,))

    if arg.runlocal:
        config_lib.run_locally(config)
    return config.lock()
