"""`train_and_evaluate(config, workdir)`: the data-parallel training loop with resume,
preemption handling, non-finite checks, periodic validation, and the final retrieval report.

Data parallelism is `jax.jit` on a `"data"` mesh (STYLE §1.2): the batch is sharded `P("data")`,
the `(model, optimizer)` NNX state is replicated, and the compiler inserts the gradient all-reduce.
The train step follows the functional NNX pattern: split once, merge inside the jitted step,
return the new state (flax `docs_nnx/guides/performance.md`).
"""

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
from dpq_jax import checkpointing, inference, metric_writers, optim, parallel, registry
from dpq_jax.data import pipeline, protocols


class NonFiniteLossError(FloatingPointError):
    """The loss or gradients became NaN or Inf; the last good checkpoint is kept."""


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

    The classifier only knows training identities (e.g. 30 of 40 in `orl_unseen`).

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


def _check_finite(finite_flags: list, first_step: int, last_step: int, ckpt) -> None:
    if not finite_flags:
        return
    ok = bool(jax.device_get(functools.reduce(jnp.logical_and, finite_flags)))
    if not ok:
        last = ckpt.latest_step()
        raise NonFiniteLossError(
            f"The loss or gradient norm became NaN/Inf between steps {first_step} and "
            f"{last_step}. Training stopped; the last good checkpoint (step {last}) in "
            f"{ckpt.directory} is kept. Lower --config.optim.lr, set "
            "--config.optim.grad_clip_norm, or check the input data."
        )


def build_state(config, *, num_classes: int, in_channels: int):
    """Builds `(graphdef, state, schedule)` of the `(model, optimizer)` pair in train mode."""
    model = inference.build_model(config, num_classes=num_classes, in_channels=in_channels)
    optimizer, schedule = optim.make_nnx_optimizer(model, config.optim, int(config.total_steps))
    model.train()
    graphdef, state = nnx.split((model, optimizer))
    return graphdef, state, schedule


# ----------------------------------------------------------------------------------------------
# Main entry
# ----------------------------------------------------------------------------------------------
def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> TrainResult:
    """Trains `config.method`, resuming from `workdir` if it holds a checkpoint, then evaluates.

    Args:
      config: a config from `configs/` (locked ConfigDict).
      workdir: output directory: `config.json`, `metrics.jsonl`, `tensorboard/`, `splits/`,
        `checkpoints/`, `report.json`, `pr_curve.png`.

    Returns:
      A `TrainResult`.

    Raises:
      NonFiniteLossError: NaN/Inf loss; the last good checkpoint stays in place.
      checkpointing.CheckpointError: the workdir holds a checkpoint of another model.
    """
    workdir = os.path.abspath(workdir)
    os.makedirs(workdir, exist_ok=True)
    mesh = parallel.make_mesh(config.get("mesh_num_devices", -1), config.mesh_axis_types)
    with jax.set_mesh(mesh):
        return _train_and_evaluate(config, workdir, mesh)


def _train_and_evaluate(config, workdir, mesh) -> TrainResult:
    # ---------------------------------------------------------------------------- Setup
    logging.info(
        "dpq_jax %s | jax %s | %d process(es), %d device(s) (%s)",
        dpq_jax.__version__,
        jax.__version__,
        jax.process_count(),
        jax.device_count(),
        jax.devices()[0].platform,
    )
    local_batch = parallel.check_batch_size(config.input.batch_size, mesh)
    writer = metric_writers.MetricWriter(workdir, tensorboard=config.get("tensorboard", True))
    writer.write_json("config.json", json.loads(config.to_json()))

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
    train_data = pipeline.TrainPipeline(
        train_source,
        np.arange(len(splits.train)),
        config.input.pp_train,
        config.input.batch_size,
        seed=config.seed,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        prefetch=config.input.get("prefetch", 2),
    )
    del local_batch

    # ---------------------------------------------------------------------------- Model
    method = registry.get("method", config.method)
    total_steps = int(config.total_steps)
    graphdef, state, schedule = build_state(
        config, num_classes=num_classes, in_channels=int(source.images.shape[-1])
    )
    state = jax.device_put(state, parallel.replicated(mesh))
    num_params = sum(
        x.size for x in jax.tree.leaves(nnx.state(nnx.merge(graphdef, state)[0], nnx.Param))
    )
    metric_writers.say(
        f"Model {config.method}: {num_params / 1e6:.2f}M parameters; {jax.device_count()} "
        f"device(s) ({jax.devices()[0].platform}), global batch {config.input.batch_size}."
    )

    # ---------------------------------------------------------------------------- Checkpoint
    signature = model_signature(config, num_classes, int(source.images.shape[-1]))
    select_on = config.get("select_on", "") or None
    ckpt = checkpointing.Checkpointer(
        os.path.join(workdir, "checkpoints"),
        save_interval_steps=int(config.ckpt_steps),
        max_to_keep=int(config.keep_ckpts),
        best_metric=select_on,
    )
    start_step = 0
    restored = ckpt.restore_or_none(checkpointing.abstract_like(state))
    if restored is not None:
        state, meta = restored
        if meta.get("signature") != signature:
            raise checkpointing.CheckpointError(
                f"The checkpoint in {ckpt.directory} (step {meta.get('step')}) was written for "
                f"another model or protocol: {meta.get('signature')} != {signature}. Use a new "
                "--workdir."
            )
        start_step = int(meta["step"])
        metric_writers.say(f"Resumed from step {start_step} in {ckpt.directory}.")
    meta_base = {
        "signature": signature,
        "split_checksum": splits.checksum(),
        "config": json.loads(config.to_json()),
        "versions": {"dpq_jax": dpq_jax.__version__, "jax": jax.__version__},
    }

    evaluators = _build_evaluators(
        config, method=method, graphdef=graphdef, source=source, splits=splits, mesh=mesh
    )
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
    select_eval = select_on.split("/")[0] if select_on else None
    if select_eval and select_eval not in evaluators:
        raise ValueError(f"select_on={select_on!r} names no evaluator in config.evals.")

    # ---------------------------------------------------------------------------- Train loop
    train_step = jax.jit(
        make_train_step(
            graphdef, method.loss_fn, config.loss, schedule, after_update=method.after_update
        ),
        donate_argnums=(0,),
    )
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
                ckpt.save(
                    step,
                    state,
                    {**meta_base, "epoch": step * config.input.batch_size / len(splits.train)},
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

    report = None
    if not stopped_early:
        report = _final_report(
            config, workdir, ckpt, state, evaluators, select_on, source, splits, mesh, writer
        )
    ckpt.close()
    writer.close()
    return TrainResult(step, stopped_early, last_metrics, report, workdir, state)


def _final_report(
    config, workdir, ckpt, state, evaluators, select_on, source, splits, mesh, writer
):
    """Restores the best-on-validation checkpoint and writes the retrieval report."""
    from dpq_jax import report as report_lib

    best = ckpt.best_step()
    step = ckpt.latest_step()
    if best is not None and best != step:
        state, _ = ckpt.restore(checkpointing.abstract_like(state), step=best)
        metric_writers.say(
            f"Selected the checkpoint of step {best} on {select_on} (validation split)."
        )
        step = best
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
        selected_on=select_on,
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
