"""Additive-cosine-margin (CosFace) classification losses, per subspace (OPQN).

References:
  Wang et al., "CosFace: Large Margin Cosine Loss for Deep Face Recognition", CVPR 2018, Eq. (4).
  Zhang, Zhe & Yan, "Orthonormal Product Quantization Network", PR 2023, Sec. 3.3;
  METHODS.md Sec. 1.2.
"""

import jax
import jax.numpy as jnp
import numpy as np

from dpq_jax.typing import Array, Float, Int

_HIGHEST = jax.lax.Precision.HIGHEST
_NORM_EPS = 1e-12  # as torch.nn.functional.normalize


def _l2_normalize(x: Float[Array, "... d"]) -> Float[Array, "... d"]:
    # x / max(|x|, eps), written with rsqrt of the clamped square so that a zero vector gets a
    # finite gradient (the derivative of sqrt at 0 is infinite).
    sumsq = jnp.sum(jnp.square(x), axis=-1, keepdims=True)
    return x * jax.lax.rsqrt(jnp.maximum(sumsq, _NORM_EPS**2))


def _check_shapes(x_sub, weights) -> None:
    if x_sub.ndim != 3 or weights.ndim != 3:
        raise ValueError(
            f"Expected sub-vectors [B, M, d] and classifier weights [M, C, d], got shapes "
            f"{tuple(x_sub.shape)} and {tuple(weights.shape)}."
        )
    if x_sub.shape[1] != weights.shape[0] or x_sub.shape[2] != weights.shape[2]:
        raise ValueError(
            f"Sub-vectors [B, M, d] {tuple(x_sub.shape)} do not match classifier weights "
            f"[M, C, d] {tuple(weights.shape)}: M and d must agree (build the classifier "
            f"with the head's num_codebooks and D/M)."
        )


def _concrete_or_none(x):
    """`x` as NumPy if it is concrete and local; None if it is traced or spans other hosts."""
    try:
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return None
    except (jax.errors.ConcretizationTypeError, AttributeError):  # tracers refuse it
        return None
    # An explicit transfer (allowed under jax_transfer_guard="disallow"); a tracer would come
    # back unchanged, so only real host values pass the isinstance check.
    value = jax.device_get(x)
    return value if isinstance(value, np.ndarray | np.generic) else None


def check_labels(labels, batch: int, num_classes: int) -> None:
    """Validates class labels: integer `[B]` and, when concrete, inside `[0, C)`.

    Traced labels (under `jax.jit`) are checked for shape and dtype only.

    Args:
      labels: `[B]` integer array (JAX or NumPy).
      batch: B, the expected length.
      num_classes: C.

    Raises:
      ValueError: wrong shape or dtype, or a concrete label outside `[0, C)`.
    """
    if tuple(labels.shape) != (batch,):
        raise ValueError(
            f"labels must have shape [B] = ({batch},) (one integer class per example), got "
            f"{tuple(labels.shape)}."
        )
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise ValueError(f"labels must be integers, got dtype {labels.dtype}; cast to int32.")
    value = _concrete_or_none(labels)
    if value is not None and value.size and (value.min() < 0 or value.max() >= num_classes):
        raise ValueError(
            f"labels must lie in [0, {num_classes}) (C = {num_classes} classes), got values "
            f"in [{value.min()}, {value.max()}]; remap the labels or build the classifier "
            f"with more classes."
        )


def cosine_logits(
    x_sub: Float[Array, "B M d"], weights: Float[Array, "M C d"]
) -> Float[Array, "B M C"]:
    """Cosine similarity of each sub-vector with each class weight of its subspace.

    `out[b, m, c] = <x_bm/|x_bm|, W_mc/|W_mc|>`, clamped to [-1, 1], computed in float32.

    Args:
      x_sub: `[B, M, d]` sub-vectors.
      weights: `[M, C, d]` per-subspace class weights (rows are classes).

    Returns:
      `[B, M, C]` float32 cosines.

    Raises:
      ValueError: the shapes do not match.

    References:
      OPQN Sec. 3.3; METHODS.md Sec. 1.2 (`cos_x[m, c]`).
    """
    _check_shapes(x_sub, weights)
    x_hat = _l2_normalize(x_sub.astype(jnp.float32))
    w_hat = _l2_normalize(weights.astype(jnp.float32))
    cos = jnp.einsum("bmd,mcd->bmc", x_hat, w_hat, precision=_HIGHEST)
    return jnp.clip(cos, -1.0, 1.0)


def subspace_cosface(
    x_sub: Float[Array, "B M d"],
    weights: Float[Array, "M C d"],
    labels: Int[Array, " B"],
    *,
    scale: float,
    margin: float,
) -> Float[Array, ""]:
    """Mean over subspaces of the batch-mean CosFace cross-entropy.

    `L = (1/M) sum_m (1/B) sum_b CE(scale * (cos[b, m] - margin * onehot(y_b)), y_b)`.

    Labels are validated when they are concrete (eager calls); under `jax.jit` they are not,
    and an out-of-range label then gives a meaningless (but finite) loss.

    Args:
      x_sub: `[B, M, d]` sub-vectors (raw x_m or soft-quantized s_m).
      weights: `[M, C, d]` per-subspace class weights.
      labels: `[B]` integer classes in `[0, C)`.
      scale: s (20 for 32x32 OPQN models, 40 for 112x112).
      margin: the additive cosine margin (0.5 in OPQN).

    Returns:
      Scalar float32 loss.

    Raises:
      ValueError: shapes do not match, labels are not integer `[B]`, or concrete labels fall
        outside `[0, C)`.

    References:
      CosFace (CVPR 2018), Eq. (4); OPQN Sec. 3.3; METHODS.md Sec. 1.2.
    """
    _check_shapes(x_sub, weights)
    num_classes = weights.shape[1]
    check_labels(labels, x_sub.shape[0], num_classes)
    onehot = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)  # [B, C]
    cos = cosine_logits(x_sub, weights)  # [B, M, C]
    logits = scale * (cos - margin * onehot[:, None, :])  # [B, M, C]
    target = jnp.sum(logits * onehot[:, None, :], axis=-1)  # [B, M]
    ce = jax.nn.logsumexp(logits, axis=-1) - target  # [B, M]
    return jnp.mean(ce)
