"""Process-0 metric writers: a JSONL file and TensorBoard event files (tensorboardX, no TF).

Only this module, the checkpointer and the exporter write into the workdir.
"""

import json
import math
import os
import time
from typing import Any

import jax


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
            with open(path, "w", encoding="utf-8") as f:
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
