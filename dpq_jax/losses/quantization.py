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
