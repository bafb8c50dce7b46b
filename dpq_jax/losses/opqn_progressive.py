"""Progressive OPQN's loss: OPQN's subspace CosFace on the raw feature and on every prefix.

With x_m the raw sub-vectors `[B, M, d]`, Q_l the soft quantization by the first l levels
(`[B, M, d]` per prefix, `quantizers.opqn_progressive`), p_l the soft assignments of level l
and W `[M, C, d]` one classifier shared by all of them:

    L = 1/2 (CosFace(x) + (1/L) sum_l CosFace(Q_l)) + mu (1/L) sum_l H(p_l)

CosFace is `losses.margin.subspace_cosface` (mean over subspaces and batch) and H the mean
assignment entropy (`losses.quantization.assignment_entropy`). With L = 1 this is OPQN's loss
exactly; for L > 1 every prefix's quantized feature must classify, as DPQ's losses act on every
level, and averaging over the prefixes keeps OPQN's equal weight of the raw and the quantized
branch (ours: DPQ sums its distortions over the levels, OPQN has a single level).

References:
  Zhang, Zhe & Yan, "Orthonormal Product Quantization Network", PR 2023, Sec. 3.3 (subspace
  CosFace on x and s, entropy regulariser; METHODS.md §1.2). Gao et al., "Deep Progressive
  Quantization", IJCAI 2019, Sec. 3.3 (losses on every level's partial sum; METHODS.md §2.2).
"""

import jax.numpy as jnp

from dpq_jax.losses.margin import subspace_cosface
from dpq_jax.losses.quantization import assignment_entropy
from dpq_jax.typing import Array, Float, Int


def prefix_margin_loss(
    feats_sub: Float[Array, "B M d"],
    soft_prefixes: Float[Array, "B L M d"],
    probs: Float[Array, "B L M K"],
    weights: Float[Array, "M C d"],
    labels: Int[Array, " B"],
    *,
    scale: float,
    margin: float,
    entropy_weight: float,
) -> tuple[Float[Array, ""], dict[str, Array]]:
    """`1/2 (CosFace(x) + mean_l CosFace(Q_l)) + mu mean_l H(p_l)` (module docstring).

    Args:
      feats_sub: `[B, M, d]` raw sub-vectors x_m.
      soft_prefixes: `[B, L, M, d]` soft partial sums Q_l (prefix l = index l-1).
      probs: `[B, L, M, K]` soft assignments of every level.
      weights: `[M, C, d]` per-subspace class weights, shared by x and every Q_l.
      labels: `[B]` integer classes in `[0, C)`.
      scale: CosFace s.
      margin: CosFace m.
      entropy_weight: mu.

    Returns:
      `(loss, parts)`: the scalar float32 total and `parts` with `raw` (CosFace of x),
      `prefixes` (`[L]`, CosFace of each Q_l) and `entropy` (mean over levels).

    Raises:
      ValueError: shapes disagree, or labels are not integer `[B]` / (when concrete) outside
        `[0, C)`.

    Examples:
      >>> w = jnp.eye(2)[None]  # M = 1, C = 2, d = 2
      >>> x = jnp.array([[[1.0, 0.0]]])  # [B, M, d], the class-0 direction
      >>> q = jnp.array([[[[1.0, 0.0]]]])  # [B, L, M, d], L = 1
      >>> p = jnp.array([[[[1.0, 0.0]]]])  # one-hot: no entropy
      >>> y = jnp.array([0])
      >>> loss, _ = prefix_margin_loss(x, q, p, w, y, scale=1.0, margin=0.0, entropy_weight=1.0)
      >>> round(float(loss), 4)  # log(1 + e^-1)
      0.3133
    """
    if soft_prefixes.ndim != 4 or probs.ndim != 4 or probs.shape[:3] != soft_prefixes.shape[:3]:
        raise ValueError(
            f"Expected soft prefixes [B, L, M, d] and probabilities [B, L, M, K] with the same "
            f"B, L, M, got {tuple(soft_prefixes.shape)} and {tuple(probs.shape)}."
        )
    batch, levels, num_codebooks, size = probs.shape
    raw = subspace_cosface(feats_sub, weights, labels, scale=scale, margin=margin)
    prefixes = jnp.stack(
        [
            subspace_cosface(soft_prefixes[:, level], weights, labels, scale=scale, margin=margin)
            for level in range(levels)
        ]
    )  # [L]
    # The mean over (B, M) per level, then over levels, is the mean over (B, L·M).
    entropy = assignment_entropy(probs.reshape(batch, levels * num_codebooks, size))
    total = 0.5 * (raw + jnp.mean(prefixes)) + entropy_weight * entropy
    return total, dict(raw=raw, prefixes=prefixes, entropy=entropy)
