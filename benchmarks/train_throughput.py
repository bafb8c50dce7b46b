"""Images/s of the jitted OPQN train step on the current backend, beside the input pipeline.

For each setting the script builds the model and optimizer exactly as training does, places the
state replicated and the batch sharded over all devices of the current backend, times `--steps`
jitted train steps after a warm-up (compile) step, then times the input pipeline producing the
same batches with augmentation, and prints both rates and their ratio (pipeline / train step;
above 1 means the input pipeline is not the bottleneck).

Settings:
  orl_cnn_small    the CPU default: cnn_small on 32×26 grey faces (configs/orl_opqn.py)
  sphereface20_32  SphereFace-20 at 32×32×3 (FaceScrub/YouTube regime: D = 512, M = 8, K = 64, 48 bits)
  sphereface20_112 SphereFace-20 at 112×112×3 (VGGFace2 regime: D = M·K = 1024, 32 bits)

Run:
  python benchmarks/train_throughput.py                     # all settings, batch 32
  python benchmarks/train_throughput.py --batch_size 256 --settings sphereface20_112
"""

import argparse
import itertools
import time

import jax
import ml_collections
import numpy as np
from flax import nnx

from dpq_jax import optim, parallel, registry, train
from dpq_jax.data.pipeline import TrainPipeline
from dpq_jax.data.sources import SyntheticSource

NORM = "value_range(0,1)|normalize((0.5,),(0.5,))"
SETTINGS = {
    # name: (backbone cfg, stored image shape, pp spec, D, M, K)
    "orl_cnn_small": (
        {"name": "cnn_small", "widths": (32, 64, 128)},
        (35, 29, 1),
        f"random_crop(32,26)|flip_lr|{NORM}",
        1024,
        4,
        256,
    ),
    "sphereface20_32": (
        {"name": "sphereface20", "input_size": 32},
        (35, 35, 3),
        f"random_crop(32,32)|flip_lr|{NORM}",
        512,
        8,
        64,
    ),
    "sphereface20_112": (
        {"name": "sphereface20", "input_size": 112},
        (120, 120, 3),
        f"random_crop(112,112)|flip_lr|{NORM}",
        1024,
        4,
        256,
    ),
}


def _model_config(backbone, dim, m, k, dtype):
    cfg = ml_collections.ConfigDict()
    cfg.backbone = ml_collections.ConfigDict(backbone)
    cfg.embedding_dim = dim
    cfg.head = ml_collections.ConfigDict(
        {"name": "opqn", "num_codebooks": m, "codebook_size": k, "codebook_init": "dct", "seed": 0}
    )
    cfg.dtype = dtype
    return cfg


def bench(name, args, mesh):
    backbone, shape, spec, dim, m, k = SETTINGS[name]
    num_classes = 100
    source = SyntheticSource(num_classes=num_classes, per_class=8, shape=shape)
    pipe = TrainPipeline(source, np.arange(len(source)), spec, args.batch_size, seed=0)
    method = registry.get("method", "opqn")
    model = method.build(
        _model_config(backbone, dim, m, k, args.dtype),
        num_classes=num_classes,
        in_channels=shape[-1],
        rngs=nnx.Rngs(0),
    )
    optim_cfg = ml_collections.ConfigDict(
        {"name": "sgd", "lr": 0.01, "momentum": 0.9, "weight_decay": 5e-4, "schedule": "constant"}
    )
    optimizer, schedule = optim.make_nnx_optimizer(model, optim_cfg, 1000)
    model.train()
    graphdef, state = nnx.split((model, optimizer))
    state = jax.device_put(state, parallel.replicated(mesh))
    loss_cfg = ml_collections.ConfigDict({"scale": 20.0, "margin": 0.5, "entropy_weight": 0.1})
    step_fn = jax.jit(
        train.make_train_step(graphdef, method.loss_fn, loss_cfg, schedule), donate_argnums=(0,)
    )
    batches = [
        parallel.put_batch({key: b[key] for key in ("image", "label")}, mesh)
        for b in (pipe.batch(s) for s in range(2))
    ]
    state, metrics = step_fn(state, batches[0])  # compile
    jax.block_until_ready(metrics)
    start = time.perf_counter()
    for i in range(args.steps):
        state, metrics = step_fn(state, batches[i % 2])
    jax.block_until_ready(metrics)
    train_rate = args.steps * args.batch_size / (time.perf_counter() - start)

    pipe_steps = max(args.steps, 5)
    start = time.perf_counter()
    for _ in itertools.islice(pipe.iterate(0), pipe_steps):
        pass
    pipe_rate = pipe_steps * args.batch_size / (time.perf_counter() - start)
    print(
        f"{name:18s} batch {args.batch_size:4d} {args.dtype:8s} | train step "
        f"{train_rate:9.1f} img/s | input pipeline {pipe_rate:9.1f} img/s | "
        f"pipeline/train {pipe_rate / train_rate:7.1f}x",
        flush=True,
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--settings", default=",".join(SETTINGS))
    args = parser.parse_args()
    mesh = parallel.make_mesh()
    print(
        f"backend {jax.default_backend()} | {jax.device_count()} device(s): "
        f"{jax.devices()[0].device_kind} | jax {jax.__version__}"
    )
    with jax.set_mesh(mesh):
        for name in args.settings.split(","):
            bench(name, args, mesh)


if __name__ == "__main__":
    main()
