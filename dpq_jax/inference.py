"""A trained model outside the trainer: build a method's model from a config, restore a workdir.

Notebooks, the retriever and `dpq-search` rebuild a run's model here, without importing the
training loop:

    config, method, model, meta = inference.restore_model("workdirs/orl_seen")
    codes = method.encode_fn(model, images)  # images: [B, H, W, C], after config.input.pp_eval

`train.build_state` builds its model with `build_model` too, so both sides agree on the
model a config describes.
"""

import json
import os

import ml_collections
import numpy as np
from flax import nnx

from dpq_jax import checkpointing, io_utils, registry


def build_model(config: ml_collections.ConfigDict, *, num_classes: int, in_channels: int):
    """Builds `config.method`'s NNX model from `config.model`, seeded with `config.seed`.

    Args:
      config: a run's config (`configs/*.py`, or a workdir's `config.json`).
      num_classes: training classes, for the method's classifier.
      in_channels: image channels C of `[B, H, W, C]` inputs.

    Returns:
      The model, freshly initialized (in NNX's default train mode).

    Raises:
      KeyError: unknown `config.method` (the message lists the methods).
    """
    method = registry.get("method", config.method)
    return method.build(
        config.model, num_classes=num_classes, in_channels=in_channels, rngs=nnx.Rngs(config.seed)
    )


def restore_model(workdir: str, step: int | str = "best"):
    """Rebuilds the trained model of a workdir for inference (notebooks, the retriever).

    Args:
      workdir: a training workdir (holds `config.json` and `checkpoints/`), local or a URI
        (`gs://bucket/run`).
      step: `"best"` (best on validation, else latest), `"latest"`, or a step number.

    Returns:
      `(config, method, model, meta)`: the run's config (unlocked ConfigDict), its
      `Method`, the NNX model in eval mode, and the checkpoint's JSON metadata.

    Raises:
      FileNotFoundError: no `config.json` in `workdir`.
      checkpointing.CheckpointError: no checkpoint, no such step, or a foreign one.
      checkpointing.DamagedCheckpointError: the step is damaged (its arrays differ from the
        digest recorded when it was saved, or its files cannot be read).
    """
    config = load_workdir_config(workdir)
    ckpt = _checkpointer(workdir, config)
    try:
        if step == "best":
            step = ckpt.best_step() or ckpt.latest_step()
        elif step == "latest":
            step = ckpt.latest_step()
        elif isinstance(step, bool) or not isinstance(step, (int, np.integer)):
            raise ValueError(
                f"step must be 'best', 'latest' or a checkpoint step number, got {step!r}."
            )
        # Raises for no checkpoint at all or a missing step, naming the steps there are.
        meta = ckpt.restore_meta(step)
        step, signature = int(meta["step"]), meta["signature"]
        model = build_model(
            config, num_classes=signature["num_classes"], in_channels=signature["in_channels"]
        )
        # Checkpoints hold the state of (model, optimizer) and orbax restores whole trees, so
        # the optimizer is rebuilt for its structure and dropped after the restore.
        method = registry.get("method", config.method)
        optimizer, _ = method.make_optimizer(model, config.optim, int(config.total_steps))
        graphdef, state = nnx.split((model, optimizer))
        # Verified against the digest recorded at save time: a damaged step is refused.
        state, meta = ckpt.restore(checkpointing.abstract_like(state), step=step)
    finally:
        ckpt.close()
    model, _ = nnx.merge(graphdef, state)
    model.eval()
    return config, registry.get("method", config.method), model, meta


def load_workdir_config(workdir: str) -> ml_collections.ConfigDict:
    """A training workdir's `config.json` as a ConfigDict (tuples restored).

    Raises:
      FileNotFoundError: `workdir` holds no `config.json`.
      ValueError: the file is not a JSON config.
    """
    path = os.path.join(workdir, "config.json")
    if not io_utils.as_path(path).is_file():
        raise FileNotFoundError(
            f"{path} not found: {workdir} is not a dpq_jax training workdir. Pass the "
            "--workdir of a training run."
        )
    try:
        with io_utils.as_path(path).open(encoding="utf-8") as f:
            data = json.load(f)
        if not isinstance(data, dict):
            raise ValueError(f"a JSON {type(data).__name__}, not an object")
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(
            f"{path} is not a dpq_jax config ({e}); the workdir is damaged or not a training "
            "workdir."
        ) from None
    return _tuples(ml_collections.ConfigDict(data))


def checkpoint_steps(workdir: str) -> list[int]:
    """The checkpoint steps a training workdir holds, ascending (empty when none)."""
    config = load_workdir_config(workdir)
    ckpt = _checkpointer(workdir, config)
    try:
        return sorted(ckpt.all_steps())
    finally:
        ckpt.close()


def model_digest(model) -> str:
    """SHA-256 of the values of a model's variables (parameters, batch statistics, ...).

    RNG state is left out: it does not change what the model computes in eval mode. Two models
    share a digest exactly when they compute the same codes, whatever their run or workdir.
    """
    return checkpointing.state_digest(nnx.state(model, nnx.Not(nnx.RngState)))


def _checkpointer(workdir: str, config) -> checkpointing.Checkpointer:
    # Read-only: inference never creates, writes or deletes anything in a workdir.
    return checkpointing.Checkpointer(
        os.path.join(workdir, "checkpoints"),
        save_interval_steps=1,
        best_metric=config.get("select_on") or None,
        read_only=True,
    )


def _tuples(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """JSON turns tuples into lists; configs use tuples."""

    def convert(x):
        if isinstance(x, dict):
            return {k: convert(v) for k, v in x.items()}
        if isinstance(x, list):
            return tuple(convert(v) for v in x)
        return x

    return ml_collections.ConfigDict(convert(config.to_dict()))
