"""DSH's pairwise contrastive hashing loss with the binary-like regulariser.

For relaxed codes b_i `[B, k]` and labels, over the unordered pairs i < j of the batch:

    L = 1/(N(N-1)) * sum_{i<j} [ s_ij |b_i - b_j|^2 + (1 - s_ij) max(0, m - |b_i - b_j|^2) ]
        + alpha * 1/N * sum_i || |b_i| - 1 ||_1

with s_ij = 1 for similar pairs (same label; multi-label: at least one shared label),
margin m = 2k and alpha = 0.01 (Liu et al., CVPR 2016, Eq. (3)-(5); the Caffe reference's
`hashing_loss_layer` normalisation, METHODS.md §5.1). The regulariser is the *correct* one,
`||(|b| - 1)||_1` with gradient `alpha/N sign(b) sign(|b| - 1)`; one public port writes it as
`|1 - sign(b)|`, whose gradient is zero, and uses alpha = 0.1 (METHODS.md §5.1, trap).

On a batch sharded over the `"data"` mesh the all-pairs term needs the whole batch: the codes
and labels are gathered explicitly (`parallel.gather_batch`), so 1 and 8 devices give the same
loss and gradients.
"""

import jax.numpy as jnp

from dpq_jax import parallel
from dpq_jax.typing import Array, Float, Shaped


def similarity(labels: Shaped[Array, "B ..."]) -> Float[Array, "B B"]:
    """`s_ij` = 1 for pairs with the same label (`[B]` ids) or a shared one (`[B, C]` multi-hot).

    Example:
      >>> import numpy as np
      >>> similarity(jnp.asarray([0, 1, 0])).astype(int).tolist()
      [[1, 0, 1], [0, 1, 0], [1, 0, 1]]
    """
    if labels.ndim == 1:
        return (labels[:, None] == labels[None, :]).astype(jnp.float32)
    multi_hot = (labels > 0).astype(jnp.float32)
    return (multi_hot @ multi_hot.T > 0).astype(jnp.float32)


def pairwise_hashing_loss(
    codes: Float[Array, "B k"],
    labels: Shaped[Array, "B ..."],
    *,
    margin: float,
    alpha: float,
) -> tuple[Float[Array, ""], dict[str, Float[Array, ""]]]:
    """DSH's loss of one batch (see the module docstring).

    Args:
      codes: `[B, k]` relaxed (real-valued) codes, B >= 2.
      labels: `[B]` integer class ids or `[B, C]` multi-hot labels.
      margin: m, the dissimilar-pair margin on the squared distance (DSH: 2k).
      alpha: weight of the regulariser `|| |b| - 1 ||_1` (DSH: 0.01).

    Returns:
      `(loss, parts)`: the float32 scalar total, and `pairs` (the pair term) and `regularizer`
      (the unweighted mean L1 distance of |b| to 1).

    Raises:
      ValueError: codes are not 2-D, fewer than 2 items, or labels of another batch size.
    """
    if codes.ndim != 2 or codes.shape[0] < 2:
        raise ValueError(f"codes must be [B, k] with B >= 2, got shape {tuple(codes.shape)}.")
    if labels.shape[0] != codes.shape[0]:
        raise ValueError(
            f"labels have {labels.shape[0]} rows for a batch of {codes.shape[0]} codes."
        )
    codes = parallel.gather_batch(codes.astype(jnp.float32))
    labels = parallel.gather_batch(labels)
    n = codes.shape[0]
    sq_norms = jnp.sum(jnp.square(codes), axis=1)
    # |b_i - b_j|^2; clamped at 0 against cancellation.
    dist = jnp.maximum(sq_norms[:, None] + sq_norms[None, :] - 2.0 * codes @ codes.T, 0.0)
    sim = similarity(labels)
    per_pair = sim * dist + (1.0 - sim) * jnp.maximum(margin - dist, 0.0)
    upper = jnp.triu(jnp.ones((n, n), jnp.float32), k=1)  # unordered pairs i < j
    pairs = jnp.sum(per_pair * upper) / (n * (n - 1))
    regularizer = jnp.mean(jnp.sum(jnp.abs(jnp.abs(codes) - 1.0), axis=1))
    return pairs + alpha * regularizer, {"pairs": pairs, "regularizer": regularizer}
