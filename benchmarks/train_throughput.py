"""Images/s of the jitted train step of any experiment config, beside the input pipeline.

For each config the script builds the model and optimizer exactly as `dpq-train` does
(`train.build_state`, the method's loss and `after_update` hook), places the state replicated
and the batch sharded over all devices of the current backend, times `--steps` jitted train
steps after a warm-up (compile) step, then times the input pipeline (the config's `pp_train`
with augmentation) producing the same batches, and prints both rates and their ratio
(pipeline / train step; above 1 means the input pipeline is not the bottleneck).

The images are synthetic, at the stored size of the config's dataset, so no data is needed;
the batch size is the config's unless `--batch_size` is given.

Run (the CPU table in BENCHMARKS.md):
  python benchmarks/train_throughput.py --steps 5 \
      --configs configs/fmnist_dsh.py:multihead configs/fmnist_dcbh.py:multihead,width=1
  python benchmarks/train_throughput.py --batch_size 256 --steps 20 --dtype bfloat16  # a GPU
"""

import argparse
import itertools
import time

import jax
import numpy as np

from dpq_jax import config_lib, parallel, registry, train
from dpq_jax.data.pipeline import TrainPipeline
from dpq_jax.data.sources import SyntheticSource

# Stored image size (H, W, C) and number of classes of each dataset the configs name.
DATASETS = {
    "fashion_mnist": ((28, 28, 1), 10),
    "orl_faces": ((112, 92, 1), 40),
    "facescrub": ((32, 32, 3), 530),
    "youtube_faces": ((32, 32, 3), 1595),
    "vggface2": ((120, 120, 3), 8631),
}
DEFAULT_CONFIGS = (
    "configs/orl_opqn.py",
    "configs/fmnist_dsh.py:multihead",
    "configs/fmnist_ddh.py:multihead",
    "configs/fmnist_ddqh.py:multihead",
    "configs/fmnist_dcbh.py:multihead",
    "configs/fmnist_dcdh.py:multihead",
    "configs/faces_seen_opqn.py:bits=48",
)


def bench(spec: str, args, mesh) -> dict:
    """Times one config's train step and input pipeline, prints a line, returns the figures."""
    path, _, arg = spec.partition(":")
    config = config_lib.load_config(path, arg or None)
    with config.unlocked():
        if args.batch_size:
            config.input.batch_size = args.batch_size
        if args.dtype and "dtype" in config.model:
            config.model.dtype = args.dtype
    if config.input.dataset not in DATASETS:
        raise ValueError(f"{spec}: no stored image size for dataset {config.input.dataset!r}.")
    shape, num_classes = DATASETS[config.input.dataset]
    batch_size = int(config.input.batch_size)
    source = SyntheticSource(
        num_classes=num_classes, per_class=max(2, -(-2 * batch_size // num_classes)), shape=shape
    )
    pipe = TrainPipeline(source, np.arange(len(source)), config.input.pp_train, batch_size, seed=0)
    method = registry.get("method", config.method)
    graphdef, state, schedule = train.build_state(
        config, num_classes=num_classes, in_channels=shape[-1]
    )
    state = jax.device_put(state, parallel.replicated(mesh))
    step_fn = jax.jit(
        train.make_train_step(
            graphdef, method.loss_fn, config.loss, schedule, after_update=method.after_update
        ),
        donate_argnums=(0,),
    )
    batches = [
        parallel.put_batch({key: b[key] for key in ("image", "label")}, mesh)
        for b in (pipe.batch(s) for s in range(2))
    ]
    start = time.perf_counter()
    state, metrics = step_fn(state, batches[0])  # compile
    jax.block_until_ready(metrics)
    compile_s = time.perf_counter() - start
    start = time.perf_counter()
    for i in range(args.steps):
        state, metrics = step_fn(state, batches[i % 2])
    jax.block_until_ready(metrics)
    train_rate = args.steps * batch_size / (time.perf_counter() - start)

    pipe_steps = max(args.steps, 5)
    start = time.perf_counter()
    for _ in itertools.islice(pipe.iterate(0), pipe_steps):
        pass
    pipe_rate = pipe_steps * batch_size / (time.perf_counter() - start)
    backbone = dict(config.model.backbone)
    name = backbone.pop("name")
    extra = ",".join(f"{k}={v}" for k, v in backbone.items() if k != "input_hw")
    label = f"{name}({extra})" if extra else name
    print(
        f"{spec:40s} {config.method:5s} {label:34s} "
        f"bits {method.code_lengths(config.model)} batch {batch_size} | compile {compile_s:5.1f} s"
        f" | train step {train_rate:8.1f} img/s | input pipeline {pipe_rate:8.1f} img/s | "
        f"pipeline/train {pipe_rate / train_rate:6.1f}x",
        flush=True,
    )
    return {
        "spec": spec,
        "method": config.method,
        "backbone": label,
        "batch_size": batch_size,
        "compile_s": compile_s,
        "train_img_per_s": train_rate,
        "pipeline_img_per_s": pipe_rate,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--configs", nargs="+", default=DEFAULT_CONFIGS, help="config[:args] ...")
    parser.add_argument("--batch_size", type=int, default=0, help="0: the config's")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--dtype", default="", choices=("", "float32", "bfloat16"))
    args = parser.parse_args()
    mesh = parallel.make_mesh()
    print(
        f"backend {jax.default_backend()} | {jax.device_count()} device(s): "
        f"{jax.devices()[0].device_kind} | jax {jax.__version__}"
    )
    with jax.set_mesh(mesh):
        for spec in args.configs:
            bench(spec, args, mesh)


if __name__ == "__main__":
    main()
