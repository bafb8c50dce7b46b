"""The only module that imports orbax: periodic async saves, keep-N plus best-on-validation,
automatic resume, and preemption (SIGTERM) handling.

Contract (STYLE §7.4): `Checkpointer(directory, ...)` with `restore_or_none(abstract_state)`,
`save(step, state, meta, metrics=None, force=False)`, `should_stop(step)`, `wait()`, `close()`.
What is saved: the NNX state of `(model, optimizer)` (parameters, optimizer state, RNG state,
batch statistics) plus a JSON `meta` dict. orbax writes each step to a temporary directory and
renames it when complete, so a crash or SIGKILL mid-save never replaces the last good checkpoint;
an incomplete step is ignored on restore.

Integrity: `save` records a SHA-256 digest of the arrays it saves (`state_digest`, computed on
the host from the state handed to it, before the asynchronous write) in the step's JSON meta;
`restore` recomputes it from the restored arrays. A step whose arrays differ, or whose files
orbax cannot read, is damaged: `restore` raises `DamagedCheckpointError`, while
`restore_or_none` (resume) moves damaged steps into `<directory>_damaged/` and resumes from the
newest intact step, with a warning naming each damaged one. Steps written before digests
existed restore "unverified", with a warning.

`directory` may be local or a URI (`gs://bucket/run/checkpoints`): orbax and tensorstore write
object storage themselves, and the damaged-step move goes through `io_utils.move_tree`.
"""

import contextlib
import hashlib
import logging as pylogging
import os
import signal
import threading
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils
from orbax.checkpoint import checkpoint_managers

from dpq_jax import io_utils

CHECKPOINT_FORMAT = "dpq_jax.checkpoint/1"
# How `state_digest` hashes a state; recorded next to the digest, so it can change later.
DIGEST_ALGORITHM = "sha256/leaves-v1"
_LEAF_DIGEST_CHARS = 16  # per-array digests kept to name the damaged arrays


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: corrupt, foreign, or from another config."""


class DamagedCheckpointError(CheckpointError):
    """A step whose arrays differ from the digest recorded at save time, or that cannot be read."""

    def __init__(self, problem: str, step: int, fix: str):
        super().__init__(f"{problem} {fix}")
        self.problem, self.step = problem, step


# --------------------------------------------------------------------------------------------
# Digests.
# --------------------------------------------------------------------------------------------


def _host_array(leaf) -> np.ndarray:
    """The full value of a leaf on the host (typed PRNG keys as their raw key data)."""
    if isinstance(leaf, jax.Array):
        if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            leaf = jax.random.key_data(leaf)
        if leaf.is_fully_replicated:  # any local copy holds the whole value (also multi-host)
            return np.asarray(leaf.addressable_data(0))
        if leaf.is_fully_addressable:
            return np.asarray(leaf)
        return np.asarray(multihost_utils.process_allgather(leaf, tiled=True))
    return np.asarray(leaf)


def _leaf_digests(state: Any) -> list[str]:
    """SHA-256 of dtype, shape and C-order bytes of every leaf, in tree-flattening order."""
    digests = []
    for leaf in jax.tree.leaves(state):
        array = np.ascontiguousarray(_host_array(leaf))
        h = hashlib.sha256(f"{array.dtype.str}{list(array.shape)}".encode())
        h.update(array.tobytes())
        digests.append(h.hexdigest())
    return digests


def _combine(leaf_digests: list[str]) -> str:
    return hashlib.sha256("\n".join(leaf_digests).encode()).hexdigest()


def state_digest(state: Any) -> str:
    """SHA-256 hex digest of the values of every array leaf of a pytree.

    Covers each leaf's dtype, shape and bytes in tree-flattening order, not the leaf paths (whose
    spelling changes between flax versions) nor the placement: a state and its copy restored
    onto other shardings have the same digest. Sharded arrays are gathered to the host.

    Args:
      state: a pytree of arrays (e.g. an NNX state).

    Returns:
      64 hex characters.
    """
    return _combine(_leaf_digests(state))


def _integrity_record(state: Any) -> dict:
    leaves = _leaf_digests(state)
    return {
        "algorithm": DIGEST_ALGORITHM,
        "sha256": _combine(leaves),
        "leaves": [d[:_LEAF_DIGEST_CHARS] for d in leaves],
    }


class PreemptionFlag:
    """Set by SIGTERM (single host) so the train loop can save and exit cleanly."""

    def __init__(self):
        self._event = threading.Event()
        self._previous = None

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set from the main thread
        self._previous = signal.signal(signal.SIGTERM, self._handle)

    def uninstall(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None

    def _handle(self, signum, frame):
        del frame
        logging.warning("Received signal %d: saving a checkpoint and stopping.", signum)
        self._event.set()

    def set(self) -> None:
        self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()


def metric_mode(metric: str) -> str:
    """`"min"` for a loss (a name whose last part is `loss`, e.g. `"train/loss"`), else `"max"`
    (retrieval metrics: mAP, precision, recall).

    >>> metric_mode("train/loss"), metric_mode("val/map@all")
    ('min', 'max')
    """
    return "min" if metric.rsplit("/", 1)[-1] == "loss" else "max"


def abstract_like(state: Any) -> Any:
    """ShapeDtypeStructs (with shardings) for every array leaf of `state`, for restore."""

    def to_struct(x):
        if isinstance(x, jax.Array):
            return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
        return x

    return jax.tree.map(to_struct, state)


class Checkpointer:
    """Thin wrapper over `orbax.checkpoint.CheckpointManager`.

    Args:
      directory: where step folders are written (created if missing).
      save_interval_steps: periodic save interval (a `force=True` save ignores it).
      max_to_keep: how many of the latest checkpoints to keep.
      best_metric: a metrics key (e.g. `"val/map@all"`); when set, the best checkpoint by it is
        kept as well, whatever its age. Select on validation metrics, never on the query split.
      best_mode: `"max"` or `"min"` for `best_metric`; default `metric_mode(best_metric)`.
      async_save: write in a background thread (call `wait()` before reading back or exiting).
      read_only: for inference: never create, write or delete anything.
    """

    def __init__(
        self,
        directory: str,
        *,
        save_interval_steps: int,
        max_to_keep: int = 3,
        best_metric: str | None = None,
        best_mode: str | None = None,
        async_save: bool = True,
        read_only: bool = False,
    ):
        self.directory = io_utils.abspath(directory)
        self.best_metric = best_metric
        # Inferred from the name, so a reader of the workdir (inference) needs only select_on.
        best_mode = best_mode or metric_mode(best_metric or "")
        if best_mode not in ("max", "min"):
            raise ValueError(f"best_mode must be 'max' or 'min', got {best_mode!r}.")
        self.best_mode = best_mode
        policies = [checkpoint_managers.LatestN(max_to_keep)]
        if best_metric:
            policies.append(
                checkpoint_managers.BestN(
                    get_metric_fn=lambda metrics: metrics[best_metric],
                    reverse=best_mode == "min",
                    n=1,
                    keep_checkpoints_without_metrics=False,
                )
            )
        options = ocp.CheckpointManagerOptions(
            save_interval_steps=0 if read_only else save_interval_steps,
            # best_fn makes orbax write each step's metrics to disk, so the best step is still
            # known after a restart; which steps are kept is decided by the policies above.
            best_fn=(lambda metrics: metrics[best_metric]) if best_metric else None,
            best_mode=best_mode,
            preservation_policy=checkpoint_managers.AnyPreservationPolicy(policies),
            enable_async_checkpointing=async_save,
            cleanup_tmp_directories=not read_only,
            read_only=read_only,
            create=not read_only,
        )
        with _without_read_only_notice():
            self._manager = ocp.CheckpointManager(self.directory, options=options)
        self.preemption = PreemptionFlag()

    # -- queries ---------------------------------------------------------------------------
    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def best_step(self) -> int | None:
        """The kept step with the best `best_metric` (ties: the later step); None without one."""
        if not self.best_metric:
            return None
        best_step, best_value = None, None
        for step in sorted(self.all_steps()):
            try:
                metrics = self._manager.metrics(step) or {}
            except Exception as e:  # a damaged metrics file: that step cannot be the best
                logging.warning("Cannot read the metrics of checkpoint step %d: %s", step, e)
                continue
            value = metrics.get(self.best_metric)
            if value is None:
                continue
            if best_value is None or (
                value <= best_value if self.best_mode == "min" else value >= best_value
            ):
                best_step, best_value = step, value
        return best_step

    # -- restore ---------------------------------------------------------------------------
    def restore(self, abstract_state: Any, step: int | None = None) -> tuple[Any, dict]:
        """Restores `step` (default: latest) onto the shardings of `abstract_state`, verified.

        The restored arrays are checked against the digest recorded when the step was saved; a
        step saved without one (older dpq_jax) is restored with an "unverified" warning.

        Raises:
          DamagedCheckpointError: the step's files cannot be read, or its arrays differ from
            the recorded digest.
          CheckpointError: no checkpoint, no such step, or a foreign checkpoint.
        """
        step = self._check_step(step)
        path = os.path.join(self.directory, str(step))
        try:
            restored = self._manager.restore(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract_state),
                    meta=ocp.args.JsonRestore(),
                ),
            )
        except Exception as e:  # orbax raises many types; name the step and the fix
            raise DamagedCheckpointError(
                f"Cannot read checkpoint step {step} at {path} ({type(e).__name__}: "
                f"{_first_line(e)}): it is damaged (corrupt or truncated files), or was "
                "written by another program or model configuration.",
                step,
                self._other_steps_hint(step),
            ) from e
        meta = dict(restored["meta"] or {})
        if meta.get("format") != CHECKPOINT_FORMAT:
            raise CheckpointError(
                f"{path} is not a dpq_jax checkpoint (format {meta.get('format')!r}, expected "
                f"{CHECKPOINT_FORMAT!r}). Use a new --workdir."
            )
        self._verify(step, restored["state"], meta)
        return restored["state"], meta

    def _check_step(self, step: int | None) -> int:
        steps = self.all_steps()
        if step is None:
            step = self.latest_step()
        if step is None:
            raise CheckpointError(
                f"No checkpoint found in {self.directory}: the run has not saved one yet. Train "
                "first (dpq-train), or pass the workdir of a run that saved a checkpoint."
            )
        if step not in steps:
            raise CheckpointError(
                f"No checkpoint step {step} in {self.directory}; it holds steps "
                f"{sorted(steps)}. Pass one of those."
            )
        return int(step)

    def _other_steps_hint(self, step: int) -> str:
        others = sorted(s for s in self.all_steps() if s != step)
        path = os.path.join(self.directory, str(step))
        if not others:
            return f"No other step is kept: move {path} away and retrain, or use a new --workdir."
        return (
            f"Load another kept step ({others}; dpq-search --step=N, restore_model(step=N)) or "
            f"move {path} away."
        )

    def _verify(self, step: int, state: Any, meta: dict) -> None:
        record = meta.get("integrity")
        path = os.path.join(self.directory, str(step))
        if not isinstance(record, dict) or record.get("algorithm") != DIGEST_ALGORITHM:
            logging.warning(
                "Checkpoint step %d at %s has no integrity digest this dpq_jax can check (saved "
                "by an older or newer version): restored unverified.",
                step,
                path,
            )
            return
        leaves = _leaf_digests(state)
        if _combine(leaves) == record.get("sha256"):
            return
        saved = record.get("leaves") or []
        names = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(state)[0]]
        bad = [
            name
            for i, (name, digest) in enumerate(zip(names, leaves, strict=True))
            if i >= len(saved) or digest[:_LEAF_DIGEST_CHARS] != saved[i]
        ]
        which = f"{len(bad)} of {len(leaves)} arrays differ, e.g. {', '.join(bad[:3])}"
        if not bad:
            which = "the arrays differ"
        raise DamagedCheckpointError(
            f"Checkpoint step {step} at {path} is damaged: its arrays do not match the digest "
            f"recorded when it was saved ({which}).",
            step,
            self._other_steps_hint(step),
        )

    def restore_meta(self, step: int | None = None) -> dict:
        """Only the JSON metadata of `step` (default: latest); no arrays are read or verified."""
        step = self._check_step(step)
        path = os.path.join(self.directory, str(step))
        try:
            restored = self._manager.restore(
                step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())
            )
        except Exception as e:
            raise DamagedCheckpointError(
                f"Cannot read the metadata of checkpoint step {step} at {path} "
                f"({type(e).__name__}: {_first_line(e)}): it is damaged (corrupt or truncated "
                "files) or not a dpq_jax checkpoint.",
                step,
                self._other_steps_hint(step),
            ) from e
        meta = dict(restored["meta"] or {})
        if meta.get("format") != CHECKPOINT_FORMAT:
            raise CheckpointError(
                f"{path} is not a dpq_jax checkpoint (format {meta.get('format')!r}, expected "
                f"{CHECKPOINT_FORMAT!r}). Use a new --workdir."
            )
        return meta

    def restore_or_none(self, abstract_state: Any) -> tuple[Any, dict] | None:
        """The newest intact checkpoint (for resuming), or None when the directory holds none.

        Damaged steps newer than it are moved to `<directory>_damaged/<step>` (kept for
        inspection, out of orbax's way so the run can save those step numbers again), each
        with a warning.

        Raises:
          CheckpointError: a foreign checkpoint, or no step restores (then nothing is moved;
            the message is the newest step's).
        """
        steps = sorted(self.all_steps(), reverse=True)
        if not steps:
            return None
        damaged: list[DamagedCheckpointError] = []
        for step in steps:
            try:
                restored = self.restore(abstract_state, step=step)
            except DamagedCheckpointError as e:
                damaged.append(e)
                continue
            for error in damaged:
                self._set_aside(error, resume_step=step)
            return restored
        raise damaged[0]

    def _set_aside(self, error: DamagedCheckpointError, resume_step: int) -> None:
        """Moves a damaged step out of the checkpoint directory (process 0), with a warning."""
        source = os.path.join(self.directory, str(error.step))
        target_dir = io_utils.as_path(self.directory.rstrip("/") + "_damaged")
        target = target_dir / str(error.step)
        suffix = 1
        while target.exists():
            target = target_dir / f"{error.step}.{suffix}"
            suffix += 1
        if jax.process_index() == 0:
            io_utils.move_tree(source, target)
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices(f"dpq_jax:set_aside:{error.step}")
        self._manager.reload()
        logging.warning(
            "%s Moved it to %s; resuming from step %d, the newest intact one.",
            error.problem,
            target,
            resume_step,
        )

    # -- save ------------------------------------------------------------------------------
    def save(
        self,
        step: int,
        state: Any,
        meta: dict,
        metrics: dict[str, float] | None = None,
        force: bool = False,
    ) -> bool:
        """Saves asynchronously when the interval (or `force`) says so; returns whether it did.

        The integrity digest is computed here, before the write starts in the background, from
        the very arrays handed to orbax (callers may donate `state` right after this returns).
        """
        if not force and not self._manager.should_save(step):
            return False
        meta = {
            **meta,
            "format": CHECKPOINT_FORMAT,
            "step": int(step),
            "integrity": _integrity_record(state),
        }
        return self._manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)
            ),
            metrics=metrics,
            force=force,
        )

    def should_stop(self, step: int) -> bool:
        """True on SIGTERM, or when JAX's distributed preemption sync point is reached."""
        return self.preemption.is_set() or self._manager.reached_preemption(step)

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()


class _ReadOnlyNotice(pylogging.Filter):
    def filter(self, record: pylogging.LogRecord) -> bool:
        return not str(record.msg).startswith("Given directory is read only")


@contextlib.contextmanager
def _without_read_only_notice():
    """Drops orbax's warning that a read-only manager is read-only (inference asks for it)."""
    logger, notice = pylogging.getLogger("absl"), _ReadOnlyNotice()
    logger.addFilter(notice)
    try:
        yield
    finally:
        logger.removeFilter(notice)


def _first_line(error: Exception, limit: int = 200) -> str:
    """The first line of an exception's message, cut to `limit` characters (orbax's are long)."""
    text = (str(error).strip().splitlines() or [""])[0]
    return text if len(text) <= limit else text[: limit - 3] + "..."
