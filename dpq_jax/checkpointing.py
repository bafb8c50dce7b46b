"""The only module that imports orbax: periodic async saves, keep-N plus best-on-validation,
automatic resume, and preemption (SIGTERM) handling.

Contract (STYLE §7.4): `Checkpointer(directory, ...)` with `restore_or_none(abstract_state)`,
`save(step, state, meta, metrics=None, force=False)`, `should_stop(step)`, `wait()`, `close()`.
What is saved: the NNX state of `(model, optimizer)` (parameters, optimizer state, RNG state,
batch statistics) plus a JSON `meta` dict. orbax writes each step to a temporary directory and
renames it when complete, so a crash or SIGKILL mid-save never replaces the last good checkpoint;
an incomplete step is ignored on restore.
"""

import os
import signal
import threading
from typing import Any

import jax
import orbax.checkpoint as ocp
from absl import logging
from orbax.checkpoint import checkpoint_managers

CHECKPOINT_FORMAT = "dpq_jax.checkpoint/1"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: corrupt, foreign, or from another config."""


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
      best_mode: `"max"` or `"min"` for `best_metric`.
      async_save: write in a background thread (call `wait()` before reading back or exiting).
    """

    def __init__(
        self,
        directory: str,
        *,
        save_interval_steps: int,
        max_to_keep: int = 3,
        best_metric: str | None = None,
        best_mode: str = "max",
        async_save: bool = True,
    ):
        self.directory = os.path.abspath(directory)
        self.best_metric = best_metric
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
            save_interval_steps=save_interval_steps,
            # best_fn makes orbax write each step's metrics to disk, so the best step is still
            # known after a restart; which steps are kept is decided by the policies above.
            best_fn=(lambda metrics: metrics[best_metric]) if best_metric else None,
            best_mode=best_mode,
            preservation_policy=checkpoint_managers.AnyPreservationPolicy(policies),
            enable_async_checkpointing=async_save,
            cleanup_tmp_directories=True,
        )
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
            metrics = self._manager.metrics(step) or {}
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
        """Restores `step` (default: latest) onto the shardings of `abstract_state`.

        Raises:
          CheckpointError: no checkpoint, or it is corrupt, foreign, or from another model.
        """
        step = self.latest_step() if step is None else step
        if step is None:
            raise CheckpointError(f"No checkpoint found in {self.directory}.")
        path = os.path.join(self.directory, str(step))
        try:
            restored = self._manager.restore(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract_state),
                    meta=ocp.args.JsonRestore(),
                ),
            )
        except Exception as e:  # orbax raises many types; name the file and the fix
            raise CheckpointError(
                f"Cannot restore the checkpoint at {path}: {type(e).__name__}: {e}. It is corrupt, "
                "or was written by another program or another model configuration. Use a new "
                "--workdir, or move that step folder away to resume from an earlier one."
            ) from e
        meta = dict(restored["meta"] or {})
        if meta.get("format") != CHECKPOINT_FORMAT:
            raise CheckpointError(
                f"{path} is not a dpq_jax checkpoint (format {meta.get('format')!r}, expected "
                f"{CHECKPOINT_FORMAT!r}). Use a new --workdir."
            )
        return restored["state"], meta

    def restore_meta(self, step: int | None = None) -> dict:
        """Only the JSON metadata of `step` (default: latest); no arrays are read."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise CheckpointError(f"No checkpoint found in {self.directory}.")
        try:
            restored = self._manager.restore(
                step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())
            )
        except Exception as e:
            raise CheckpointError(
                f"Cannot read the metadata of {os.path.join(self.directory, str(step))}: {e}"
            ) from e
        meta = dict(restored["meta"] or {})
        if meta.get("format") != CHECKPOINT_FORMAT:
            raise CheckpointError(
                f"{self.directory}/{step} is not a dpq_jax checkpoint (format "
                f"{meta.get('format')!r}, expected {CHECKPOINT_FORMAT!r})."
            )
        return meta

    def restore_or_none(self, abstract_state: Any) -> tuple[Any, dict] | None:
        """The latest checkpoint, or None when the directory holds none."""
        if self.latest_step() is None:
            return None
        return self.restore(abstract_state)

    # -- save ------------------------------------------------------------------------------
    def save(
        self,
        step: int,
        state: Any,
        meta: dict,
        metrics: dict[str, float] | None = None,
        force: bool = False,
    ) -> bool:
        """Saves asynchronously when the interval (or `force`) says so; returns whether it did."""
        meta = {**meta, "format": CHECKPOINT_FORMAT, "step": int(step)}
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
