"""Guards of a training workdir: one run at a time, and a resume only with a compatible config.

* `prepare(workdir)`: the absolute path (a URI such as `gs://bucket/run` as given), created if
  missing; a file in its place is an error.
* `WorkdirLock`: an exclusive `fcntl.flock` on `<workdir>/.lock` for the life of a run. The
  kernel drops the lock when its process ends, however it ends, so a lock file left behind by
  a killed run never blocks the next one. The holder writes its pid, host, start time and
  command into the file, so a second run stops at once with a message naming the first.
  On a multi-host run only process 0 takes it (`train.train_and_evaluate`).
* `check_config_change(workdir, config, allow=...)`: compares a config with the `config.json`
  of the run that started the workdir. Fields of `COMPATIBLE_FIELDS` (learning rate, step
  counts, intervals, logging) may change on resume when the caller allows it; any other
  difference (model, method, protocol, data set, seed, batch, preprocessing, selection,
  evaluation splits and metrics...) stops the run with one message listing the fields.
  Nothing is written here.

POSIX only (`fcntl`). On NFS, Linux emulates `flock` with POSIX byte-range locks, which the
NFS lock manager shares between clients; on object-store mounts (gcsfuse) locks are local.
A workdir in object storage (`gs://...`) has no lock at all: `WorkdirLock` logs one warning
and takes none (docs/reliability.md, "Workdir lock").
"""

import datetime
import fcntl
import fnmatch
import json
import os
import socket
import sys
import time
from typing import Any

import ml_collections
from absl import logging

from dpq_jax import io_utils

LOCK_NAME = ".lock"
CONFIG_NAME = "config.json"

# Config fields a resumed run may change (fnmatch patterns of dotted paths): they leave every
# array shape, the data, the splits and the selection metric as they were. Everything else is
# incompatible. Optimizer fields that add or remove optax state (name, momentum, weight decay,
# clipping, schedule kind) are not here: the saved optimizer state would no longer fit.
COMPATIBLE_FIELDS = (
    "total_steps",
    "log_training_steps",
    "ckpt_steps",
    "keep_ckpts",
    "tensorboard",
    "raw_pixel_baseline",
    "mesh_num_devices",
    "mesh_axis_types",
    "optim.lr",
    "optim.warmup_steps",
    "optim.decay_steps",
    "optim.decay_rate",
    "input.eval_batch_size",
    "input.prefetch",
    "input.data_dir",  # where the same data set is stored
    "input.source_dir",
    "evals.*.log_steps",
    "evals.*.final",
)
_ABSENT = "<absent>"
_UNSET = (_ABSENT, None, "")
_MAX_LISTED = 12  # differences named in one message


class WorkdirError(ValueError):
    """A workdir that cannot be used as asked (the message names the fix)."""


class WorkdirBusyError(WorkdirError):
    """Another run holds the workdir's lock."""


class ConfigChangeError(WorkdirError):
    """The config differs from the one the workdir was started with."""


def prepare(workdir: str) -> str:
    """The absolute path of `workdir`, created if missing.

    Raises:
      WorkdirError: `workdir` (or a parent) is a file.
    """
    if io_utils.is_remote(workdir):
        remote = io_utils.as_path(workdir)
        if remote.is_file():
            raise WorkdirError(
                f"--workdir {workdir} is an object (a file), not a folder; pass a folder path."
            )
        remote.mkdir(parents=True, exist_ok=True)  # nothing to create in a bucket
        return io_utils.abspath(workdir)
    path = os.path.abspath(workdir)
    if os.path.exists(path) and not os.path.isdir(path):
        raise WorkdirError(
            f"--workdir {workdir} is a file, not a directory; pass a directory path (it is "
            "created if missing)."
        )
    try:
        os.makedirs(path, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as e:
        raise WorkdirError(
            f"Cannot create --workdir {workdir}: a part of its path is a file ({e.strerror}); "
            "pass a directory path."
        ) from e
    return path


# ----------------------------------------------------------------------------------------------
# Lock
# ----------------------------------------------------------------------------------------------
def _describe_holder(info: dict[str, Any] | None) -> str:
    if not info:
        return "another run (it has not written its details yet)"
    since = info.get("since")
    if isinstance(since, int | float):
        since = datetime.datetime.fromtimestamp(since).isoformat(sep=" ", timespec="seconds")
    text = f"pid {info.get('pid', '?')} on host {info.get('host', '?')} since {since or '?'}"
    if info.get("command"):
        text += f" ({info['command']})"
    return text


class WorkdirLock:
    """An exclusive, process-safe lock on a workdir (`<workdir>/.lock`).

    Object storage (`gs://...`) has neither `flock` nor a lock that a killed holder drops, so a
    remote workdir is not locked: `acquire` logs one warning and succeeds. Cloud jobs get one
    writer per workdir by construction (one job, one `--workdir`); see docs/reliability.md.

    Args:
      workdir: an existing directory.
      command: what the holder runs, written into the lock file (default: `sys.argv`).

    Example:
      >>> with WorkdirLock(workdir):  # doctest: +SKIP
      ...     train(...)
    """

    def __init__(self, workdir: str, command: str | None = None):
        self.remote = io_utils.is_remote(workdir)
        self.workdir = io_utils.abspath(workdir)
        self.path = os.path.join(self.workdir, LOCK_NAME)
        self.command = command if command is not None else " ".join(sys.argv)
        self._fd: int | None = None
        self._unlocked = False  # a remote workdir "held" without a lock

    @property
    def held(self) -> bool:
        return self._fd is not None or self._unlocked

    def acquire(self) -> None:
        """Takes the lock without waiting.

        Raises:
          WorkdirBusyError: another process (or another handle in this one) holds it.
        """
        if self.held:
            return
        if self.remote:
            logging.warning(
                "Workdir %s is in object storage, which has no file locks: it is not locked. "
                "Run one job at a time on it (docs/reliability.md, Workdir lock).",
                self.workdir,
            )
            self._unlocked = True
            return
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise WorkdirBusyError(
                f"Workdir {self.workdir} is in use by {_describe_holder(self._read_holder())}. "
                "Wait for that run to finish or stop it, or pass another --workdir."
            ) from None
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "since": time.time(),
            "command": self.command,
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
        self._fd = fd

    def release(self) -> None:
        """Drops the lock (the file stays; its content only means something while locked)."""
        self._unlocked = False
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.ftruncate(fd, 0)
        finally:
            os.close(fd)  # closing the descriptor releases the flock

    def _read_holder(self) -> dict[str, Any] | None:
        # The holder writes its details just after locking: give it a moment.
        for _ in range(20):
            try:
                with open(self.path, encoding="utf-8") as f:
                    text = f.read().strip()
                if text:
                    return json.loads(text)
            except (OSError, ValueError):
                pass
            time.sleep(0.05)
        return None

    def __enter__(self) -> "WorkdirLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


# ----------------------------------------------------------------------------------------------
# Config comparison
# ----------------------------------------------------------------------------------------------
def _freeze(value: Any) -> Any:
    if isinstance(value, list | tuple):
        return tuple(_freeze(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, _freeze(v)) for k, v in value.items()))
    return value


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """`{"a": {"b": 1}}` -> `{"a.b": 1}`; lists become tuples (JSON has no tuples).

    Example:
      >>> flatten({"a": {"b": [1, 2]}, "c": 3})
      {'a.b': (1, 2), 'c': 3}
    """
    if isinstance(tree, dict) and (tree or not prefix):
        out = {}
        for key, value in tree.items():
            out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: _freeze(tree)}


def is_compatible(field: str) -> bool:
    """Whether `field` (a dotted path) may change on resume: it matches `COMPATIBLE_FIELDS`."""
    return any(fnmatch.fnmatchcase(field, pattern) for pattern in COMPATIBLE_FIELDS)


def config_differences(
    old: dict[str, Any], new: dict[str, Any]
) -> tuple[list[tuple[str, Any, Any]], list[tuple[str, Any, Any]]]:
    """`(incompatible, compatible)` differences between two configs as JSON dicts.

    Each difference is `(field, old_value, new_value)`, sorted by field; a field only one
    side has shows `"<absent>"` on the other. Absent, `None` and `""` count as the same
    "unset" value, so a field added to the configs later with an empty default (e.g.
    `input.source_dir`) does not make older workdirs differ.

    Example:
      >>> config_differences({"optim": {"lr": 0.1}, "seed": 0}, {"optim": {"lr": 0.2}, "seed": 1})
      ([('seed', 0, 1)], [('optim.lr', 0.1, 0.2)])
    """
    old_flat, new_flat = flatten(old), flatten(new)
    incompatible, compatible = [], []
    for field in sorted(old_flat.keys() | new_flat.keys()):
        a, b = old_flat.get(field, _ABSENT), new_flat.get(field, _ABSENT)
        if a == b or (a in _UNSET and b in _UNSET):
            continue
        (compatible if is_compatible(field) else incompatible).append((field, a, b))
    return incompatible, compatible


def format_differences(differences: list[tuple[str, Any, Any]]) -> str:
    """`"optim.lr: 0.1 -> 0.2; seed: 0 -> 1"` (at most `_MAX_LISTED`, then a count)."""
    shown = [f"{field}: {a!r} -> {b!r}" for field, a, b in differences[:_MAX_LISTED]]
    if len(differences) > _MAX_LISTED:
        shown.append(f"and {len(differences) - _MAX_LISTED} more")
    return "; ".join(shown)


def saved_config(workdir: str) -> dict[str, Any] | None:
    """The workdir's `config.json` as a dict, or None when there is none.

    Raises:
      WorkdirError: the file is not a JSON object.
    """
    path = os.path.join(workdir, CONFIG_NAME)
    if not io_utils.as_path(path).exists():
        return None
    try:
        with io_utils.as_path(path).open(encoding="utf-8") as f:
            saved = json.load(f)
    except (OSError, ValueError) as e:
        raise WorkdirError(
            f"{path} cannot be read ({e}); the workdir's run is unknown. Use a new --workdir."
        ) from e
    if not isinstance(saved, dict):
        raise WorkdirError(f"{path} is not a config (a JSON object); use a new --workdir.")
    return saved


def check_config_change(
    workdir: str,
    config: ml_collections.ConfigDict,
    *,
    allow: bool = False,
    flag: str = "--allow_config_change",
) -> list[tuple[str, Any, Any]]:
    """Compares `config` with the workdir's `config.json` before anything is written.

    Args:
      workdir: the run's directory.
      config: the new run's config.
      allow: accept differences in `COMPATIBLE_FIELDS`.
      flag: how the caller names `allow` in messages.

    Returns:
      The accepted (compatible) differences, `[]` for a new workdir or an identical config.

    Raises:
      ConfigChangeError: an incompatible difference, or a compatible one without `allow`.
    """
    old = saved_config(workdir)
    if old is None:
        return []
    incompatible, compatible = config_differences(old, json.loads(config.to_json()))
    if incompatible:
        raise ConfigChangeError(
            f"Workdir {workdir} holds a run with another config, and these fields cannot change "
            f"when resuming: {format_differences(incompatible)}. Use a new --workdir (or "
            "restore those values to resume)."
        )
    if compatible and not allow:
        raise ConfigChangeError(
            f"The config differs from the run in {workdir}: {format_differences(compatible)}. "
            f"Pass {flag} to resume with these changes (they are logged), or use a new "
            "--workdir."
        )
    return compatible
