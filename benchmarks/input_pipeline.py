"""Throughput of the training input pipeline (images/s), with augmentation.

Two settings on synthetic uint8 data, each timed over `--steps` batches of `--batch_size`:

* 32x32: 35x35x3 images -> random_crop(32,32) | flip_lr | value_range(0,1) | normalize;
* 112x112: 120x120x3 images -> random_crop(112,112) | flip_lr | value_range(0,1) | normalize.

`batch(step)` is timed directly (one thread), then `iterate()` with its prefetch thread.

Run:
  python benchmarks/input_pipeline.py --steps 20
"""

import argparse
import itertools
import time

import numpy as np

from dpq_jax.data.pipeline import TrainPipeline
from dpq_jax.data.sources import SyntheticSource

SETTINGS = {
    "32x32": ((35, 35, 3), "random_crop(32,32)|flip_lr|value_range(0,1)|normalize(0.5,0.5)"),
    "112x112": (
        (120, 120, 3),
        "random_crop(112,112)|flip_lr|value_range(0,1)|normalize(0.5,0.5)",
    ),
}


def _rate(batches, batch_size: int, steps: int) -> float:
    start = time.perf_counter()
    for _ in itertools.islice(batches, steps):
        pass
    return steps * batch_size / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--num_examples", type=int, default=1000)
    parser.add_argument("--prefetch", type=int, default=2)
    parser.add_argument("--num_threads", type=int, default=1)
    parser.add_argument("--settings", default=",".join(SETTINGS))
    args = parser.parse_args()

    for name in args.settings.split(","):
        shape, spec = SETTINGS[name]
        source = SyntheticSource(num_classes=10, per_class=args.num_examples // 10, shape=shape)
        pipe = TrainPipeline(
            source,
            np.arange(len(source)),
            spec,
            args.batch_size,
            seed=0,
            prefetch=args.prefetch,
            num_threads=args.num_threads,
        )
        pipe.batch(0)  # Warm-up (epoch permutation, first allocations).
        direct = _rate((pipe.batch(s) for s in itertools.count(1)), args.batch_size, args.steps)
        iterator = pipe.iterate(1)
        next(iterator)
        threaded = _rate(iterator, args.batch_size, args.steps)
        iterator.close()
        print(
            f"{name}: input {shape}, batch {args.batch_size}, {args.steps} steps, "
            f"{args.num_threads} thread(s): "
            f"batch() {direct:,.0f} images/s, iterate(prefetch={args.prefetch}) "
            f"{threaded:,.0f} images/s"
        )


if __name__ == "__main__":
    main()
