"""Encode a split in padded, masked, data-parallel batches: every item exactly once, for any N
and any number of devices or hosts (big_vision's pad-shard-unpad, STYLE habit 11).
"""

import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils

from dpq_jax import parallel
from dpq_jax.data import pipeline


def make_predict_fn(graphdef: Any, fn: Callable[[nnx.Module, jax.Array], dict]) -> Callable:
    """Jits `fn(model, images)` on the eval-mode model rebuilt from `(graphdef, state)`.

    The state is the `(model, optimizer)` state of training; only the model is used. BatchNorm
    uses running statistics and dropout is off (`model.eval()`).
    """

    @jax.jit
    def predict(state, images):
        model, _ = nnx.merge(graphdef, state)
        model.eval()
        return fn(model, images)

    return predict


def encode_split(
    predict_fn: Callable,
    state: Any,
    source: Any,
    indices: Sequence[int] | np.ndarray,
    *,
    pp_spec: str,
    batch_size: int,
    mesh: jax.sharding.Mesh,
) -> dict[str, np.ndarray]:
    """Runs `predict_fn(state, images)` over `source[indices]` and returns host arrays.

    Args:
      predict_fn: from `make_predict_fn`; returns a dict of `[B, ...]` arrays (or of tuples of
        them, e.g. one code array per code length).
      state: the replicated train state.
      source: a data source (`ArraySource`).
      indices: `[N]` item indices, N >= 1.
      pp_spec: evaluation preprocessing spec (deterministic ops only).
      batch_size: global batch; must divide by the device count.
      mesh: the `"data"` mesh.

    Returns:
      The outputs of `predict_fn` with each array as NumPy `[N, ...]`, rows in the order of
      `indices`.

    Raises:
      ValueError: empty `indices`, a batch size that does not split over the devices, or
        items with NaN or infinite values after preprocessing (they would be ranked as garbage).
    """
    indices = np.asarray(indices)
    if indices.size == 0:
        raise ValueError("encode_split got no items: the split is empty. Check the protocol.")
    parallel.check_batch_size(batch_size, mesh)
    batches = pipeline.eval_batches(
        source,
        indices,
        pp_spec,
        batch_size,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )
    outputs, masks = [], []
    for batch in batches:
        _check_finite(batch, pp_spec)
        images = parallel.put_batch({"image": batch["image"]}, mesh)["image"]
        outputs.append(predict_fn(state, images))
        masks.append(batch["mask"])
    # One transfer at the end keeps the device loop asynchronous.
    gathered = [_to_host(out) for out in outputs]
    mask = np.concatenate([_to_host_mask(m) for m in masks])
    result = jax.tree.map(lambda *parts: np.concatenate(parts)[mask], *gathered)
    count = mask.sum()
    if count != len(indices):
        raise RuntimeError(f"encode_split returned {count} items for {len(indices)} indices.")
    return result


def _check_finite(batch: dict, pp_spec: str) -> None:
    """Refuses a host batch whose real rows hold NaN or Inf (this process's rows only)."""
    images = batch["image"]
    finite = np.isfinite(images.reshape(images.shape[0], -1)).all(axis=1) | ~batch["mask"]
    if not finite.all():
        bad = np.asarray(batch["index"])[~finite]
        raise ValueError(
            f"Items {bad[:10].tolist()} of the data source have NaN or infinite pixel values "
            f"after preprocessing {pp_spec!r}; fix or drop those images in the data."
        )


def _to_host(tree: dict) -> dict:
    if jax.process_count() == 1:
        return jax.tree.map(np.asarray, jax.device_get(tree))
    return multihost_utils.process_allgather(tree, tiled=True)


@functools.cache
def _single_process() -> bool:
    return jax.process_count() == 1


def _to_host_mask(mask: np.ndarray) -> np.ndarray:
    if _single_process():
        return np.asarray(mask, bool)
    return np.asarray(multihost_utils.process_allgather(np.asarray(mask), tiled=True), bool)
