"""Quantization regularisers on soft assignments.

References:
  Zhang, Zhe & Yan, "Orthonormal Product Quantization Network", PR 2023, Sec. 3.3 (entropy
  regulariser); METHODS.md Sec. 1.2.
"""

import jax.numpy as jnp

from dpq_jax.typing import Array, Float


def assignment_entropy(probs: Float[Array, "B M K"]) -> Float[Array, ""]:
    """Mean Shannon entropy of the soft assignments: `(1/(M B)) sum_{b,m} H(p_bm)`.

    `H(p) = -sum_k p_k log p_k` (nats), with `0 log 0 = 0`. Entries with `p_k = 0` contribute
    nothing to the value and a zero (not NaN) gradient. Minimising it pushes the assignments
    toward one-hot, closing the gap between soft and hard quantization.

    Args:
      probs: `[B, M, K]` probabilities (each `[K]` row sums to 1).

    Returns:
      Scalar float32 entropy.

    Raises:
      ValueError: probs is not 3-D.

    References:
      OPQN Sec. 3.3; METHODS.md Sec. 1.2 (`L_ent`).
    """
    if probs.ndim != 3:
        raise ValueError(f"Expected probabilities [B, M, K], got shape {tuple(probs.shape)}.")
    probs = probs.astype(jnp.float32)
    positive = probs > 0
    # The inner where keeps log finite at p = 0, so the gradient there is 0 instead of NaN.
    safe = jnp.where(positive, probs, 1.0)
    plogp = jnp.where(positive, probs * jnp.log(safe), 0.0)  # [B, M, K]
    return -jnp.mean(jnp.sum(plogp, axis=-1))


def magnitude_l1(codes: Float[Array, "B k"], target: float) -> Float[Array, ""]:
    """Mean L1 distance of the code magnitudes to a target: `(1/(B k)) sum_{b,i} ||h_bi| - t|`.

    DDH (Lin et al., IJCAI 2017, Eq. 6; METHODS.md §5.2) pulls tanh codes toward ±1 (t = 1);
    DCBH's code (METHODS.md §3.2) pulls its block-hash outputs toward magnitude 0.5, the
    paper toward 1. The gradient at `|h| = t` and at `h = 0` is 0 (JAX's `sign(0) = 0`).

    Args:
      codes: `[B, k]` relaxed codes.
      target: t > 0.

    Returns:
      Scalar float32.

    Example:
      >>> float(magnitude_l1(jnp.asarray([[0.5, -1.0], [0.0, 2.0]]), 1.0))
      0.625
    """
    if codes.ndim != 2:
        raise ValueError(f"Expected relaxed codes [B, k], got shape {tuple(codes.shape)}.")
    if not target > 0:
        raise ValueError(f"The magnitude target must be positive, got {target}.")
    return jnp.mean(jnp.abs(jnp.abs(codes.astype(jnp.float32)) - target))
