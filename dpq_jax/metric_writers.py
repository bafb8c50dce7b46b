"""Process-0 metric writers: a JSONL file and TensorBoard event files (tensorboardX, no TF),
plus the console: status lines, the training progress bar and one-line metric summaries.

Only this module, the checkpointer and the exporter write into the workdir. A workdir in object
storage (`gs://...`) works too. Objects cannot be appended to, so there `metrics.jsonl` is kept
in memory and TensorBoard writes its event file into a local temporary folder; both are
uploaded whole (atomically, `io_utils.atomic_write`) at most every `REMOTE_FLUSH_SECONDS`, when
a write comes, and on `close`. A crash loses at most that much of the log: the checkpoints,
written by orbax, are not affected.
"""

import json
import math
import os
import shutil
import tempfile
import time
from typing import Any

import jax
from absl import logging

from dpq_jax import io_utils

# How often a remote metrics.jsonl (and TensorBoard file) is uploaded.
REMOTE_FLUSH_SECONDS = 30.0


def _to_python(value: Any) -> Any:
    if hasattr(value, "item") and getattr(value, "size", 2) == 1:
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


class MetricWriter:
    """Writes scalars to `<workdir>/metrics.jsonl` and `<workdir>/tensorboard/` on process 0.

    Every process may call it; only process 0 writes (big_vision's `BigVisionMetricWriter`).
    `workdir` may be local or a URI (see the module docstring).
    """

    def __init__(self, workdir: str, *, tensorboard: bool = True):
        self.active = jax.process_index() == 0
        self.path = os.path.join(workdir, "metrics.jsonl")
        self._tb = None
        self._remote = io_utils.is_remote(workdir)
        self._lines: list[str] = []  # remote: the whole log, rewritten by _upload
        self._tb_local: str | None = None  # remote: where TensorBoard writes before upload
        self._uploaded_at = time.monotonic()
        if self.active:
            io_utils.as_path(workdir).mkdir(parents=True, exist_ok=True)
            if self._remote:
                log = io_utils.as_path(self.path)
                if log.exists():  # a resumed run appends to the log it left
                    self._lines = log.read_text(encoding="utf-8").splitlines(keepends=True)
                    if self._lines and not self._lines[-1].endswith("\n"):
                        self._lines[-1] += "\n"  # a torn last line stays one line
            else:
                self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (close())
            if tensorboard:
                from tensorboardX import SummaryWriter

                tb_dir = os.path.join(workdir, "tensorboard")
                if self._remote:
                    self._tb_local = tb_dir = tempfile.mkdtemp(prefix="dpq_jax_tensorboard_")
                self._tb = SummaryWriter(tb_dir)

    def write(self, step: int, metrics: dict[str, Any]) -> None:
        """Appends one JSON line `{"step": step, "time": ..., **metrics}` and the TB scalars."""
        if not self.active:
            return
        record = {"step": int(step), "time": time.time()}
        record.update({k: _to_python(v) for k, v in metrics.items()})
        if self._remote:
            self._lines.append(json.dumps(record) + "\n")
        else:
            self._file.write(json.dumps(record) + "\n")
            self._file.flush()
        if self._tb is not None:
            for key, value in record.items():
                if key not in ("step", "time") and isinstance(value, int | float):
                    self._tb.add_scalar(key, value, global_step=int(step))
        if self._remote and time.monotonic() - self._uploaded_at >= REMOTE_FLUSH_SECONDS:
            self._upload()

    def write_json(self, name: str, obj: Any) -> str:
        """Writes `obj` as `<workdir>/<name>` (process 0) and returns the path."""
        path = os.path.join(os.path.dirname(self.path), name)
        if self.active:
            with io_utils.atomic_write(path, "w", encoding="utf-8") as f:
                json.dump(obj, f, indent=2, default=_to_python)
        return path

    def _upload(self) -> None:
        """Remote workdir: rewrites metrics.jsonl and the TensorBoard event files whole."""
        with io_utils.atomic_write(self.path, "w", encoding="utf-8") as f:
            f.writelines(self._lines)
        if self._tb_local is not None:
            if self._tb is not None:
                self._tb.flush()
            remote = os.path.join(os.path.dirname(self.path), "tensorboard")
            for name in sorted(os.listdir(self._tb_local)):
                with open(os.path.join(self._tb_local, name), "rb") as src:
                    with io_utils.atomic_write(os.path.join(remote, name)) as dst:
                        shutil.copyfileobj(src, dst)
        self._uploaded_at = time.monotonic()

    def close(self) -> None:
        if self.active:
            if self._tb is not None:
                self._tb.close()
                self._tb = None
            if self._remote:
                self._upload()
                if self._tb_local is not None:
                    shutil.rmtree(self._tb_local, ignore_errors=True)
                    self._tb_local = None
            else:
                self._file.close()


def read_jsonl(path: str) -> list[dict]:
    """Reads a metrics.jsonl file back (for notebooks and tests); local or a URI."""
    with io_utils.as_path(path).open(encoding="utf-8") as f:
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
