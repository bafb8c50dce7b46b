"""`train_and_evaluate(config, workdir)`: the data-parallel training loop with resume,
preemption handling, non-finite checks, periodic validation, and the final retrieval report.
Before anything is written, the config is checked (`validate_config`, `check_input_shape`), the
workdir is locked, and a resumed workdir's config is compared (`dpq_jax.workdir`).

Data parallelism is `jax.jit` on a `"data"` mesh (STYLE §1.2): the batch is sharded `P("data")`,
the `(model, optimizer)` NNX state is replicated, and the compiler inserts the gradient all-reduce.
The train step follows the functional NNX pattern: split once, merge inside the jitted step,
return the new state (flax `docs_nnx/guides/performance.md`).
"""

import contextlib
import dataclasses
import functools
import json
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from flax import nnx

import dpq_jax
from dpq_jax import checkpointing, inference, metric_writers, parallel, registry
from dpq_jax import workdir as workdir_lib
from dpq_jax.data import pipeline, pp, protocols
from dpq_jax.evaluators import retrieval as retrieval_eval


class NonFiniteLossError(FloatingPointError):
    """The loss or gradients became NaN or Inf; the checkpoints saved before that are kept."""


@dataclasses.dataclass
class TrainResult:
    """What a run returns to tests and notebooks."""

    step: int  # last trained step
    stopped_early: bool  # preempted (SIGTERM) before total_steps
    metrics: dict[str, float]  # last training metrics
    report: dict | None  # final retrieval report (None when stopped early)
    workdir: str
    state: Any = None  # the NNX state of (model, optimizer) after the last trained step


# ----------------------------------------------------------------------------------------------
# Train step
# ----------------------------------------------------------------------------------------------
def make_train_step(
    graphdef: Any, loss_fn, loss_cfg: ml_collections.ConfigDict, schedule, after_update=None
):
    """Returns `train_step(state, batch) -> (state, metrics)`, to be jitted with donation.

    `after_update(model)`, when given, runs after the optimizer update (the method's
    non-gradient parameter updates, e.g. DCBH's explicit centre update).
    """

    def train_step(state, batch):
        model, optimizer = nnx.merge(graphdef, state)
        step = optimizer.step[...]

        def compute_loss(model):
            return loss_fn(model, batch, loss_cfg)

        (loss, aux), grads = nnx.value_and_grad(compute_loss, has_aux=True)(model)
        params_before = jax.tree.map(lambda x: x, nnx.state(model, nnx.Param))  # a snapshot
        optimizer.update(model, grads)
        if after_update is not None:
            after_update(model)
        params_after = nnx.state(model, nnx.Param)
        updates = jax.tree.map(lambda a, b: a - b, params_after, params_before)
        grad_norm = optax.tree.norm(grads)
        metrics = {
            "train/loss": loss,
            **{f"train/{k}": v for k, v in aux.items()},
            "train/l2_grads": grad_norm,
            "train/l2_params": optax.tree.norm(params_after),
            "train/l2_updates": optax.tree.norm(updates),
            "train/lr": schedule(step),
            "finite": jnp.isfinite(loss) & jnp.isfinite(grad_norm),
        }
        return nnx.state((model, optimizer)), metrics

    return train_step


# ----------------------------------------------------------------------------------------------
# Setup helpers
# ----------------------------------------------------------------------------------------------
def training_subset(source, train_indices: np.ndarray):
    """The train split as its own source, identities relabelled to 0..C_train-1.

    The classifier only knows training identities (e.g. 24 of 40 in `orl_unseen`).

    Returns:
      `(subset_source, num_classes)`; item i of the subset is `source[train_indices[i]]`.
    """
    labels = np.asarray(source.labels)[train_indices]
    if labels.ndim != 1:
        return dataclasses.replace(source, images=source.images[train_indices], labels=labels), (
            source.num_classes
        )
    classes, relabelled = np.unique(labels, return_inverse=True)
    subset = dataclasses.replace(
        source,
        images=source.images[train_indices],
        labels=relabelled.astype(np.int32),
        num_classes=len(classes),
    )
    return subset, len(classes)


def model_signature(config: ml_collections.ConfigDict, num_classes: int, in_channels: int) -> dict:
    """What must match between a checkpoint and the current run for a resume to be valid
    (also what `inference.restore_model` needs to rebuild the model)."""
    return {
        "method": config.method,
        "model": json.loads(config.model.to_json()),
        "num_classes": int(num_classes),
        "in_channels": int(in_channels),
        "protocol": config.protocol,
        "seed": int(config.seed),
        "batch_size": int(config.input.batch_size),
    }


def _build_evaluators(config, *, method, graphdef, source, splits, mesh):
    evaluators = {}
    for name, cfg in config.get("evals", {}).items():
        cls = registry.get("evaluator", cfg.type)
        evaluators[name] = cls(
            name,
            cfg,
            method=method,
            code_lengths=method.code_lengths(config.model),
            graphdef=graphdef,
            source=source,
            splits=splits,
            mesh=mesh,
            pp_spec=config.input.pp_eval,
            batch_size=config.input.get("eval_batch_size", config.input.batch_size),
        )
    return evaluators


@dataclasses.dataclass
class _LossWindow:
    """The training losses since the previous checkpoint, for `select_on = TRAIN_LOSS`.

    Summed on the host in float64, one step after another; the open sum goes into every
    checkpoint's meta, so a resumed run adds the same numbers in the same order as one that
    was never stopped. The device scalars are fetched only at checkpoints.
    """

    META_KEY = "train_loss_window"
    total: float = 0.0
    count: int = 0
    pending: list = dataclasses.field(default_factory=list)

    @classmethod
    def from_meta(cls, meta: dict) -> "_LossWindow":
        saved = meta.get(cls.META_KEY) or {}  # none: a checkpoint of another select_on
        return cls(float(saved.get("sum", 0.0)), int(saved.get("count", 0)))

    def add(self, loss) -> None:
        self.pending.append(loss)

    def to_meta(self) -> dict:
        for loss in jax.device_get(self.pending):
            self.total += float(loss)
            self.count += 1
        self.pending = []
        return {"sum": self.total, "count": self.count}

    def close(self) -> float:
        """The mean loss of the window, which then starts afresh."""
        record = self.to_meta()
        self.total, self.count = 0.0, 0
        return record["sum"] / record["count"]


def _check_finite(finite_flags: list, first_step: int, last_step: int, ckpt) -> None:
    if not finite_flags:
        return
    ok = bool(jax.device_get(functools.reduce(jnp.logical_and, finite_flags)))
    if not ok:
        last = ckpt.latest_step()
        kept = (
            f"the latest checkpoint (step {last}, saved before the non-finite values) in "
            f"{ckpt.directory} is kept"
            if last is not None
            else "no checkpoint had been saved yet"
        )
        raise NonFiniteLossError(
            f"The loss or gradient norm became NaN/Inf between steps {first_step} and "
            f"{last_step}. Training stopped; {kept}. Lower --config.optim.lr, set "
            "--config.optim.grad_clip_norm, or check the input data."
        )


# ----------------------------------------------------------------------------------------------
# Config checks: all before anything is written to the workdir
# ----------------------------------------------------------------------------------------------
def _registered(kind: str, name: str, field: str) -> Any:
    try:
        return registry.get(kind, name)
    except KeyError as e:  # the registry lists the names; say which field to fix
        raise ValueError(f"{field}: {e.args[0]}") from None


def selectable_metrics(config: ml_collections.ConfigDict, eval_name: str) -> tuple[str, ...]:
    """The metric names `config.evals.<eval_name>` logs that `select_on` may name: the
    retrieval evaluator's `metric_names` (`evaluators.retrieval`: `map@K`, `p@K`, `r@K`, the
    Hamming-radius and `real_*` metrics, per code length and their mean). Code-group counts are
    not selectable.

    Raises:
      ValueError: the evaluator's type is not "retrieval" (its names are unknown before it
        runs).
    """
    cfg = config.evals[eval_name]
    if cfg.type != "retrieval":
        raise ValueError(
            f"select_on: evaluator {eval_name!r} has type {cfg.type!r}, whose metric names are "
            "not known before training; select on a retrieval evaluator."
        )
    method = _registered("method", config.method, "config.method")
    return retrieval_eval.metric_names(
        eval_name, cfg, method.code_type, method.code_lengths(config.model)
    )


# `select_on = TRAIN_LOSS` is the reference OPQN code's rule, not recommended: it never looks at
# held-out data. The checkpoint with the lowest mean training loss over its steps since the
# previous checkpoint (the reference: the epoch with the lowest training loss) is reported.
TRAIN_LOSS = "train/loss"


def check_select_on(config: ml_collections.ConfigDict) -> str | None:
    """The checkpoint-selection metric, checked: `"<evaluator>/<metric>"` of an evaluator in
    `config.evals` that scores validation splits only (`val_*`, never the test queries), and a
    metric that evaluator logs (the highest wins). `""` means no selection: the report uses the
    last step. `TRAIN_LOSS` (`"train/loss"`) selects the lowest mean training loss between
    checkpoints, the reference's rule (not recommended: it never looks at held-out data).

    Returns:
      `config.select_on`, or None when it is empty.

    Raises:
      ValueError: any other `select_on`, with the valid choices.
    """
    select_on = config.get("select_on", "") or None
    if select_on is None or select_on == TRAIN_LOSS:
        return select_on
    evals = config.get("evals") or {}
    validation = [
        name
        for name, cfg in evals.items()
        if str(cfg.get("query", "")).startswith("val_")
        and str(cfg.get("database", "")).startswith("val_")
    ]
    choices = [
        m
        for n in validation
        if evals[n].get("type") == "retrieval"
        for m in selectable_metrics(config, n)
    ]
    others = (
        f"'{TRAIN_LOSS}' (lowest training loss, the reference's rule; not recommended: it never "
        "looks at held-out data) or '' (report the last step)"
    )
    hint = (
        f"Set --config.select_on to one of {sorted(choices)}, {others}."
        if choices
        else "Add an evaluator on the val_query/val_database splits to config.evals, or set "
        f"--config.select_on to {others}."
    )
    eval_name, _, metric = str(select_on).partition("/")
    if not metric:
        raise ValueError(f"select_on={select_on!r} must read '<evaluator>/<metric>'. {hint}")
    if eval_name not in evals:
        raise ValueError(f"select_on={select_on!r} names no evaluator in config.evals. {hint}")
    if eval_name not in validation:
        cfg = evals[eval_name]
        raise ValueError(
            f"select_on={select_on!r} would select the checkpoint on the {cfg.get('query')}/"
            f"{cfg.get('database')} splits; selection must use validation splits (val_*), "
            f"never the test queries. {hint}"
        )
    names = selectable_metrics(config, eval_name)
    if select_on not in names:
        raise ValueError(
            f"select_on={select_on!r}: evaluator {eval_name!r} logs no metric {metric!r}; "
            f"choose one of {sorted(names)}, {others}."
        )
    return select_on


def validate_config(config: ml_collections.ConfigDict, *, num_devices: int) -> None:
    """Checks what can be checked from the config alone, before the workdir is touched.

    Args:
      config: a training config.
      num_devices: devices of the mesh (the batch sizes must split over them).

    Raises:
      ValueError: one message naming the field and the fix.
    """
    for field in ("total_steps", "ckpt_steps", "log_training_steps", "keep_ckpts"):
        # ckpt_steps and log_training_steps are moduli of the step: 0 would divide by zero.
        value = config.get(field)
        if not isinstance(value, int | np.integer) or isinstance(value, bool) or value < 1:
            raise ValueError(
                f"config.{field} must be an integer >= 1, got {value!r}; set "
                f"--config.{field} to a positive integer."
            )
    for field in ("batch_size", "eval_batch_size"):
        value = config.input.get(field, config.input.batch_size)
        if not isinstance(value, int | np.integer) or value < 1 or value % num_devices:
            raise ValueError(
                f"config.input.{field}={value!r} is not divisible by the {num_devices} devices "
                f"of the mesh; set --config.input.{field} to a positive multiple of "
                f"{num_devices}."
            )
    method = _registered("method", config.method, "config.method")
    _registered("dataset", config.input.dataset, "config.input.dataset")
    backbone = config.model.get("backbone")
    if backbone is not None and backbone.get("name"):
        _registered("backbone", backbone.name, "config.model.backbone.name")
    if config.protocol not in protocols.PROTOCOLS:
        raise ValueError(
            f"config.protocol={config.protocol!r} is unknown; known: {sorted(protocols.PROTOCOLS)}."
        )
    for name, cfg in (config.get("evals") or {}).items():
        _registered("evaluator", cfg.type, f"config.evals.{name}.type")
        for side in ("query", "database"):
            split = cfg.get(side)
            if split is not None and split not in protocols.SPLIT_NAMES:
                raise ValueError(
                    f"config.evals.{name}.{side}={split!r} is not a split; choose one of "
                    f"{protocols.SPLIT_NAMES}."
                )
        if cfg.get("query_side"):
            method.check_query_side(cfg.query_side)
    check_select_on(config)


def check_input_shape(config, method, graphdef, state, images: np.ndarray) -> None:
    """Checks that the model accepts the images the preprocessing gives (abstractly: nothing is
    compiled or run), so a wrong `input_hw` stops the run before the workdir is written.

    Args:
      images: `[N >= 1, H, W, C]` source images; the first one is preprocessed.

    Raises:
      ValueError: the model cannot take the preprocessed shape (names both and the fields).
    """
    rng = np.random.default_rng(0)
    shapes = {}
    for field in ("pp_train", "pp_eval"):
        shapes.setdefault(pp.build(config.input[field])(images[0], rng).shape, field)

    def forward(state, batch):
        model, _ = nnx.merge(graphdef, state)
        model.eval()
        return method.encode_fn(model, batch)

    for shape, field in shapes.items():
        try:
            jax.eval_shape(forward, state, jax.ShapeDtypeStruct((2, *shape), jnp.float32))
        except (TypeError, ValueError) as e:
            first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ValueError(
                f"The model does not take the {'x'.join(map(str, shape))} images that "
                f"config.input.{field} makes of the {'x'.join(map(str, images.shape[1:]))} "
                f"data ({first_line}). Set the backbone's input size (config.model.backbone: "
                f"{dict(config.model.get('backbone', {}))}) to the preprocessed size, or change "
                f"the crop/resize in config.input.{field}."
            ) from e


def build_state(config, *, num_classes: int, in_channels: int):
    """Builds `(graphdef, state, schedule)` of the `(model, optimizer)` pair in train mode."""
    model = inference.build_model(config, num_classes=num_classes, in_channels=in_channels)
    method = registry.get("method", config.method)
    optimizer, schedule = method.make_optimizer(model, config.optim, int(config.total_steps))
    model.train()
    graphdef, state = nnx.split((model, optimizer))
    return graphdef, state, schedule


# ----------------------------------------------------------------------------------------------
# Main entry
# ----------------------------------------------------------------------------------------------
def train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str, *, allow_config_change: bool = False
) -> TrainResult:
    """Trains `config.method`, resuming from `workdir` if it holds a checkpoint, then evaluates.

    Before anything is written, the config is checked (`validate_config`, then the model
    against the data's preprocessed shape), the workdir is locked for the run's life (process
    0; a second run on it stops at once), and a workdir that already holds a run is compared
    with its `config.json` (`workdir.check_config_change`).

    Args:
      config: a config from `configs/` (locked ConfigDict).
      workdir: output directory: `config.json`, `metrics.jsonl`, `tensorboard/`, `splits/`,
        `checkpoints/`, `report.json`, `pr_curve.png`. Local, or a URI such as
        `gs://bucket/run` (docs/cloud.md: such a workdir is not locked).
      allow_config_change: resume although fields of `workdir.COMPATIBLE_FIELDS` (learning
        rate, step counts, intervals) differ from the workdir's run; the changes are logged.

    Returns:
      A `TrainResult` (`stopped_early` after SIGTERM: rerun to resume).

    Raises:
      ValueError: a config problem (the message names the field and the fix).
      workdir.WorkdirError: the workdir is a file, is in use by another run, or holds a run
        with an incompatible config (or a compatible change without `allow_config_change`).
      NonFiniteLossError: NaN/Inf loss; the checkpoints saved before it stay in place.
      checkpointing.CheckpointError: the workdir holds a checkpoint of another model.
    """
    mesh = parallel.make_mesh(config.get("mesh_num_devices", -1), config.mesh_axis_types)
    validate_config(config, num_devices=mesh.devices.size)
    workdir = workdir_lib.prepare(workdir)
    with _guard_workdir(workdir, config, allow_config_change) as changes, jax.set_mesh(mesh):
        return _train_and_evaluate(config, workdir, mesh, changes)


@contextlib.contextmanager
def _guard_workdir(workdir: str, config, allow_config_change: bool):
    """Process 0 locks the workdir and compares the config with its `config.json`; on a
    multi-host run the others learn the outcome, so no process trains alone. Yields the
    allowed config changes."""
    lock = workdir_lib.WorkdirLock(workdir) if jax.process_index() == 0 else None
    changes, error = [], None
    if lock is not None:
        try:
            lock.acquire()
            changes = workdir_lib.check_config_change(
                workdir,
                config,
                allow=allow_config_change,
                flag="--allow_config_change (allow_config_change=True in Python)",
            )
        except workdir_lib.WorkdirError as e:
            error = e
    try:
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            refused = multihost_utils.broadcast_one_to_all(np.int32(error is not None))
            if refused and error is None:
                raise workdir_lib.WorkdirError(
                    f"Process 0 refused workdir {workdir} (in use, or another config); see its "
                    "log for the reason."
                )
        if error is not None:
            raise error
        yield changes
    finally:
        if lock is not None:
            lock.release()


def _train_and_evaluate(config, workdir, mesh, config_changes) -> TrainResult:
    # ---------------------------------------------------------------------------- Setup
    logging.info(
        "dpq_jax %s | jax %s | %d process(es), %d device(s) (%s)",
        dpq_jax.__version__,
        jax.__version__,
        jax.process_count(),
        jax.device_count(),
        jax.devices()[0].platform,
    )

    # ---------------------------------------------------------------------------- Data
    source = registry.get("dataset", config.input.dataset)(
        data_dir=config.input.data_dir or None,
        # A folder with the release files (e.g. users' own image folder or CSV); optional.
        source_dir=config.input.get("source_dir") or None,
    )
    splits = protocols.get_splits(
        config.protocol, source.labels, config.seed, split_dir=os.path.join(workdir, "splits")
    )
    metric_writers.say(f"Protocol {config.protocol}: {splits.summary()}")
    train_source, num_classes = training_subset(source, splits.train)

    # ---------------------------------------------------------------------------- Model
    method = registry.get("method", config.method)
    total_steps = int(config.total_steps)
    in_channels = int(source.images.shape[-1])
    graphdef, state, schedule = build_state(
        config, num_classes=num_classes, in_channels=in_channels
    )
    check_input_shape(config, method, graphdef, state, source.images)
    state = jax.device_put(state, parallel.replicated(mesh))
    select_on = check_select_on(config)
    evaluators = _build_evaluators(
        config, method=method, graphdef=graphdef, source=source, splits=splits, mesh=mesh
    )

    # ---------------------------------------------------------------------------- Checkpoint
    signature = model_signature(config, num_classes, in_channels)
    ckpt = checkpointing.Checkpointer(
        os.path.join(workdir, "checkpoints"),
        save_interval_steps=int(config.ckpt_steps),
        max_to_keep=int(config.keep_ckpts),
        best_metric=select_on,
    )
    writer = None
    try:
        start_step = 0
        restored = ckpt.restore_or_none(checkpointing.abstract_like(state))
        if restored is not None:
            state, meta = restored
            if meta.get("signature") != signature:
                raise checkpointing.CheckpointError(
                    f"The checkpoint in {ckpt.directory} (step {meta.get('step')}) was written "
                    f"for another model or protocol: {meta.get('signature')} != {signature}. "
                    "Use a new --workdir."
                )
            start_step = int(meta["step"])

        # Every check has passed: only now is the run's record written.
        writer = metric_writers.MetricWriter(workdir, tensorboard=config.get("tensorboard", True))
        if config_changes:
            changed = workdir_lib.format_differences(config_changes)
            metric_writers.say(f"Resuming with a changed config (allowed): {changed}.")
            writer.write(
                start_step,
                {"config_changes": {f: {"old": a, "new": b} for f, a, b in config_changes}},
            )
        writer.write_json(workdir_lib.CONFIG_NAME, json.loads(config.to_json()))
        if restored is not None:
            metric_writers.say(f"Resumed from step {start_step} in {ckpt.directory}.")
        num_params = sum(
            x.size for x in jax.tree.leaves(nnx.state(nnx.merge(graphdef, state)[0], nnx.Param))
        )
        metric_writers.say(
            f"Model {config.method}: {num_params / 1e6:.2f}M parameters; {jax.device_count()} "
            f"device(s) ({jax.devices()[0].platform}), global batch {config.input.batch_size}."
        )
        train_data = pipeline.TrainPipeline(
            train_source,
            np.arange(len(splits.train)),
            config.input.pp_train,
            config.input.batch_size,
            seed=config.seed,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
            prefetch=config.input.get("prefetch", 2),
            sampler=config.input.get("sampler", "uniform"),
            classes_per_batch=config.input.get("classes_per_batch", 0),
        )
        meta_base = {
            "signature": signature,
            "split_checksum": splits.checksum(),
            "config": json.loads(config.to_json()),
            "versions": {"dpq_jax": dpq_jax.__version__, "jax": jax.__version__},
        }
        # Every number the evaluators log is tagged with its protocol and metric conventions.
        writer.write(
            start_step,
            {
                f"{name}/conventions": {
                    "protocol": config.protocol,
                    "query": ev.cfg.query,
                    "database": ev.cfg.database,
                    **ev.conventions,
                }
                for name, ev in evaluators.items()
            },
        )
        train_step = jax.jit(
            make_train_step(
                graphdef, method.loss_fn, config.loss, schedule, after_update=method.after_update
            ),
            donate_argnums=(0,),
        )
        step, stopped_early, last_metrics, state = _train_loop(
            config,
            state=state,
            start_step=start_step,
            total_steps=total_steps,
            train_step=train_step,
            train_data=train_data,
            evaluators=evaluators,
            select_on=select_on,
            ckpt=ckpt,
            meta_base=meta_base,
            epoch_size=len(splits.train),
            mesh=mesh,
            writer=writer,
            resumed_meta=restored[1] if restored is not None else {},
        )
        report = None
        if not stopped_early:
            report = _final_report(
                config, workdir, ckpt, state, evaluators, select_on, source, splits, mesh, writer
            )
    finally:
        # Close the checkpointer on every exit, errors included: an open orbax manager prints
        # background-thread noise at interpreter exit that would bury the error message.
        try:
            ckpt.close()
        finally:
            if writer is not None:
                writer.close()
    return TrainResult(step, stopped_early, last_metrics, report, workdir, state)


def _train_loop(
    config,
    *,
    state,
    start_step,
    total_steps,
    train_step,
    train_data,
    evaluators,
    select_on,
    ckpt,
    meta_base,
    epoch_size,
    mesh,
    writer,
    resumed_meta=None,
):
    """Steps `start_step + 1 .. total_steps` (or until preempted), with logging, periodic
    evaluation and checkpoints. Returns `(step, stopped_early, last_metrics, state)`."""
    on_loss = select_on == TRAIN_LOSS
    select_eval = select_on.split("/")[0] if select_on and not on_loss else None
    loss_window = _LossWindow.from_meta(resumed_meta or {}) if on_loss else None
    ckpt.preemption.install()
    last_metrics: dict[str, float] = {}
    finite_flags, window_start = [], start_step + 1
    stopped_early = False
    progress = metric_writers.progress_bar(total_steps, start_step)
    t0, steps_in_window = time.perf_counter(), 0
    step = start_step
    try:
        for step, host_batch in zip(
            range(start_step + 1, total_steps + 1), train_data.iterate(start_step), strict=False
        ):
            batch = parallel.put_batch({k: host_batch[k] for k in ("image", "label")}, mesh)
            state, metrics = train_step(state, batch)
            if on_loss:
                loss_window.add(metrics["train/loss"])
            finite_flags.append(metrics.pop("finite"))
            steps_in_window += 1
            progress.update(1)

            is_last = step == total_steps
            log_now = step % config.log_training_steps == 0 or is_last
            ckpt_now = step % config.ckpt_steps == 0 or is_last
            preempted = ckpt.should_stop(step)
            if log_now or ckpt_now or preempted:
                _check_finite(finite_flags, window_start, step, ckpt)
                finite_flags, window_start = [], step + 1
            if log_now:
                host_metrics = jax.device_get(metrics)
                dt = time.perf_counter() - t0
                host_metrics["z/steps_per_sec"] = steps_in_window / dt
                host_metrics["z/images_per_sec"] = steps_in_window * config.input.batch_size / dt
                t0, steps_in_window = time.perf_counter(), 0
                last_metrics = {k: float(v) for k, v in host_metrics.items()}
                writer.write(step, last_metrics)
                progress.set_postfix(loss=f"{last_metrics['train/loss']:.4f}")
            eval_metrics = {}
            for name, evaluator in evaluators.items():
                if evaluator.due(step, total_steps) or (ckpt_now and name == select_eval):
                    eval_metrics.update(evaluator.run(state))
            if eval_metrics:
                writer.write(step, eval_metrics)
                metric_writers.say(f"step {step}: {metric_writers.format_scalars(eval_metrics)}")
            if ckpt_now or preempted:
                selection = (
                    {select_on: eval_metrics[select_on]} if select_on in eval_metrics else None
                )
                window_meta = {}
                if on_loss:  # a preemption save carries the open window, not a selection
                    selection = {TRAIN_LOSS: loss_window.close()} if ckpt_now else None
                    window_meta = {_LossWindow.META_KEY: loss_window.to_meta()}
                    if selection:
                        writer.write(step, {"train/window_loss": selection[TRAIN_LOSS]})
                ckpt.save(
                    step,
                    state,
                    {
                        **meta_base,
                        "epoch": step * config.input.batch_size / epoch_size,
                        **window_meta,
                    },
                    metrics=selection,
                    force=True,
                )
            if preempted and not is_last:
                logging.warning("Preempted at step %d: checkpoint saved, exiting.", step)
                stopped_early = True
                break
    finally:
        progress.close()
        ckpt.preemption.uninstall()
        ckpt.wait()
    return step, stopped_early, last_metrics, state


def _final_report(
    config, workdir, ckpt, state, evaluators, select_on, source, splits, mesh, writer
):
    """Restores the selected checkpoint (best `select_on`, else the last step) and writes the
    retrieval report, saying which step it is and why."""
    from dpq_jax import report as report_lib

    latest = ckpt.latest_step()
    best = ckpt.best_step() if select_on else None
    step, selected_on = latest, None
    if best is None:
        why = f"no kept checkpoint has a {select_on} value" if select_on else "select_on is ''"
        metric_writers.say(f"Reporting the last step {latest} ({why}).")
    elif select_on == TRAIN_LOSS:
        step, selected_on = best, select_on
        metric_writers.say(
            f"Reporting step {best}: the lowest mean training loss since the previous "
            f"checkpoint of the kept steps {sorted(ckpt.all_steps())} (select_on={TRAIN_LOSS!r}, "
            "the reference's rule; not recommended: it never looks at held-out data)."
        )
    else:
        step, selected_on = best, select_on
        cfg = evaluators[select_on.split("/")[0]].cfg
        metric_writers.say(
            f"Reporting step {best}: the best {select_on} ({cfg.query} against "
            f"{cfg.database}) of the kept steps {sorted(ckpt.all_steps())}."
        )
    if step != latest:
        state, _ = ckpt.restore(checkpointing.abstract_like(state), step=step)
    final = {}
    curves = {}
    for name, evaluator in evaluators.items():
        if evaluator.final:
            final.update(evaluator.run(state))
            for bits, curve in evaluator.last_curves.items():
                label = f"{name} {bits}-bit" if evaluator.multi_head else name
                curves[label] = curve
    baseline = {}
    if config.get("raw_pixel_baseline", True):
        for evaluator in evaluators.values():
            if evaluator.final:
                baseline.update(evaluator.run_raw_pixels())
    writer.write(step, {**final, **baseline})
    rep = report_lib.build_report(
        config,
        code_lengths=registry.get("method", config.method).code_lengths(config.model),
        step=step,
        selected_on=selected_on,
        metrics=final,
        baseline=baseline,
        evaluators={n: e for n, e in evaluators.items() if e.final},
        splits=splits,
    )
    writer.write_json("report.json", rep)
    if jax.process_index() == 0:
        report_lib.plot_pr_curves(
            curves, os.path.join(workdir, "pr_curve.png"), title=config.protocol
        )
        print(report_lib.format_report(rep), flush=True)
    return rep
