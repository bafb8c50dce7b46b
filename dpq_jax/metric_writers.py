"""Process-0 metric writers: a JSONL file and TensorBoard event files (tensorboardX, no TF),
plus the console: status lines, the training progress bar and one-line metric summaries.

Only this module, the checkpointer and the exporter write into the workdir.
"""

import json
import math
import os
import time
from typing import Any

import jax
from absl import logging

from dpq_jax import io_utils


def _to_python(value: Any) -> Any:
    if hasattr(value, "item") and getattr(value, "size", 2) == 1:
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


class MetricWriter:
    """Writes scalars to `<workdir>/metrics.jsonl` and `<workdir>/tensorboard/` on process 0.

    Every process may call it; only process 0 writes (big_vision's `BigVisionMetricWriter`).
    """

    def __init__(self, workdir: str, *, tensorboard: bool = True):
        self.active = jax.process_index() == 0
        self.path = os.path.join(workdir, "metrics.jsonl")
        self._tb = None
        if self.active:
            os.makedirs(workdir, exist_ok=True)
            self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (closed in close())
            if tensorboard:
                from tensorboardX import SummaryWriter

                self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

    def write(self, step: int, metrics: dict[str, Any]) -> None:
        """Appends one JSON line `{"step": step, "time": ..., **metrics}` and the TB scalars."""
        if not self.active:
            return
        record = {"step": int(step), "time": time.time()}
        record.update({k: _to_python(v) for k, v in metrics.items()})
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._tb is not None:
            for key, value in record.items():
                if key not in ("step", "time") and isinstance(value, int | float):
                    self._tb.add_scalar(key, value, global_step=int(step))

    def write_json(self, name: str, obj: Any) -> str:
        """Writes `obj` as `<workdir>/<name>` (process 0) and returns the path."""
        path = os.path.join(os.path.dirname(self.path), name)
        if self.active:
            with io_utils.atomic_write(path, "w", encoding="utf-8") as f:
                json.dump(obj, f, indent=2, default=_to_python)
        return path

    def close(self) -> None:
        if self.active:
            self._file.close()
            if self._tb is not None:
                self._tb.close()


def read_jsonl(path: str) -> list[dict]:
    """Reads a metrics.jsonl file back (for notebooks and tests)."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def say(message: str) -> None:
    """A status line on the console of process 0 (above the progress bar) and in the log."""
    logging.info(message)
    if jax.process_index() == 0:
        from tqdm.auto import tqdm

        tqdm.write(message)


def format_scalars(metrics: dict[str, Any]) -> str:
    """`"a=0.1000, b=2.0000"`: the float entries of `metrics`, sorted by name.

    Examples:
      >>> format_scalars({"val/map@all": 0.51234, "val/p@5": 0.75, "step": 3})
      'val/map@all=0.5123, val/p@5=0.7500'
    """
    return ", ".join(f"{k}={v:.4f}" for k, v in sorted(metrics.items()) if isinstance(v, float))


def progress_bar(total: int, initial: int):
    """A tqdm bar of `total` steps starting at `initial`, shown on process 0 only."""
    from tqdm.auto import tqdm

    return tqdm(
        total=total,
        initial=initial,
        desc="train",
        unit="step",
        disable=jax.process_index() != 0,
        dynamic_ncols=True,
    )
