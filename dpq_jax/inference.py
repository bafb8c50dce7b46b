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
from flax import nnx

from dpq_jax import checkpointing, optim, registry


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
      workdir: a training workdir (holds `config.json` and `checkpoints/`).
      step: `"best"` (best on validation, else latest), `"latest"`, or a step number.

    Returns:
      `(config, method, model, meta)`: the run's config (unlocked ConfigDict), its
      `Method`, the NNX model in eval mode, and the checkpoint's JSON metadata.

    Raises:
      FileNotFoundError: no `config.json` in `workdir`.
      checkpointing.CheckpointError: no usable checkpoint.
    """
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found: {workdir} is not a dpq_jax training workdir.")
    with open(path, encoding="utf-8") as f:
        config = _tuples(ml_collections.ConfigDict(json.load(f)))
    ckpt = checkpointing.Checkpointer(
        os.path.join(workdir, "checkpoints"),
        save_interval_steps=1,
        best_metric=config.get("select_on") or None,
    )
    try:
        if step == "best":
            step = ckpt.best_step() or ckpt.latest_step()
        elif step == "latest":
            step = ckpt.latest_step()
        if step is None:
            raise checkpointing.CheckpointError(f"No checkpoint in {ckpt.directory}.")
        signature = ckpt.restore_meta(step)["signature"]
        model = build_model(
            config, num_classes=signature["num_classes"], in_channels=signature["in_channels"]
        )
        # Checkpoints hold the state of (model, optimizer) and orbax restores whole trees, so
        # the optimizer is rebuilt for its structure and dropped after the restore.
        optimizer, _ = optim.make_nnx_optimizer(model, config.optim, int(config.total_steps))
        graphdef, state = nnx.split((model, optimizer))
        state, meta = ckpt.restore(checkpointing.abstract_like(state), step=step)
    finally:
        ckpt.close()
    model, _ = nnx.merge(graphdef, state)
    model.eval()
    return config, registry.get("method", config.method), model, meta


def _tuples(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """JSON turns tuples into lists; configs use tuples."""

    def convert(x):
        if isinstance(x, dict):
            return {k: convert(v) for k, v in x.items()}
        if isinstance(x, list):
            return tuple(convert(v) for v in x)
        return x

    return ml_collections.ConfigDict(convert(config.to_dict()))
