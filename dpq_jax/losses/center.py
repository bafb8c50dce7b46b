r"""The centre-clustering loss and the explicit centre-loss update (Wen et al.'s centre loss,
as DCBH uses it on its descriptors).

Loss (DCBH, Jang et al., ACCV 2018, Sec. 3.3; METHODS.md §3.2):

    L_c = ½ Σ_b ‖f_b − c_{y_b}‖²                       (reduction="sum", the reference's
                                                        `tf.nn.l2_loss`, a sum over the batch)
    L_c = (1/B) · ½ Σ_b ‖f_b − c_{y_b}‖²               (reduction="mean")

Explicit update (Wen, Zhang, Li & Qiao, ECCV 2016, Eq. 4; the reference's `C_loss`), with
n_j the number of items of class j in the batch:

    Δc_j = Σ_{i: y_i = j} (c_j − f_i) / (1 + n_j),     c_j ← c_j − α·Δc_j   (DCBH: α = 1)

Classes absent from the batch do not move. The reference scatters `(c_{y_i} − f_i)/(1 + n_{y_i})`
into the centres with `tf.scatter_sub`, which sums duplicate rows: the same Δc.

On a batch sharded over the `"data"` mesh, Δc needs the counts and sums of the whole batch: the
features and labels are gathered first (`parallel.gather_batch`), so 1 and 8 devices give the
same update. The loss itself is a plain sum (or mean) over the batch, global under `jit`.
"""

import jax
import jax.numpy as jnp

from dpq_jax import parallel
from dpq_jax.typing import Array, Float, Int

REDUCTIONS = ("sum", "mean")


def _check(features, labels, centers) -> None:
    if features.ndim != 2 or centers.ndim != 2 or features.shape[1] != centers.shape[1]:
        raise ValueError(
            f"Expected features [B, D] and centres [C, D] of the same D, got "
            f"{tuple(features.shape)} and {tuple(centers.shape)}."
        )
    if labels.ndim != 1 or labels.shape[0] != features.shape[0]:
        raise ValueError(
            f"Expected integer class ids [B] = [{features.shape[0]}], got labels of shape "
            f"{tuple(labels.shape)}; the centre loss needs single-label data."
        )


def center_loss(
    features: Float[Array, "B D"],
    labels: Int[Array, " B"],
    centers: Float[Array, "C D"],
    *,
    reduction: str = "sum",
) -> Float[Array, ""]:
    """`½ Σ_b ‖f_b − c_{y_b}‖²`, summed (the reference) or averaged over the batch.

    Args:
      features: `[B, D]` descriptors f.
      labels: `[B]` class ids in `[0, C)`.
      centers: `[C, D]` class centres.
      reduction: `"sum"` (DCBH's `tf.nn.l2_loss`) or `"mean"` (divided by B).

    Returns:
      Scalar float32.

    Raises:
      ValueError: mismatched shapes or an unknown reduction.

    Example:
      >>> f = jnp.asarray([[1.0, 0.0], [0.0, 2.0]])
      >>> float(center_loss(f, jnp.asarray([0, 0]), jnp.zeros((3, 2))))
      2.5

    References:
      Jang et al., ACCV 2018, Sec. 3.3; METHODS.md §3.2.
    """
    _check(features, labels, centers)
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}.")
    features = features.astype(jnp.float32)
    # c_{y_b} as a one-hot product: [B, C] @ [C, D] -> [B, D], sharded like the batch.
    onehot = jax.nn.one_hot(labels, centers.shape[0], dtype=jnp.float32)
    diff = features - onehot @ centers.astype(jnp.float32)  # [B, D]
    per_item = 0.5 * jnp.sum(jnp.square(diff), axis=1)  # [B]
    return jnp.sum(per_item) if reduction == "sum" else jnp.mean(per_item)


def center_delta(
    features: Float[Array, "B D"],
    labels: Int[Array, " B"],
    centers: Float[Array, "C D"],
) -> Float[Array, "C D"]:
    """`Δc_j = Σ_{i: y_i=j} (c_j − f_i) / (1 + n_j)` over the whole (gathered) batch.

    Args:
      features: `[B, D]` descriptors f (sharded or not).
      labels: `[B]` class ids in `[0, C)`.
      centers: `[C, D]` centres before the step.

    Returns:
      `[C, D]` float32 Δc; rows of classes absent from the batch are 0.

    Raises:
      ValueError: mismatched shapes.

    Example:
      >>> f = jnp.asarray([[1.0], [3.0], [5.0]])
      >>> center_delta(f, jnp.asarray([0, 0, 1]), jnp.zeros((3, 1)))[:, 0].tolist()
      [-1.3333333730697632, -2.5, 0.0]

    References:
      Wen et al., ECCV 2016, Eq. 4; METHODS.md §3.2 (DCBH's α = 1).
    """
    _check(features, labels, centers)
    features = parallel.gather_batch(features.astype(jnp.float32))
    labels = parallel.gather_batch(labels)
    num_classes = centers.shape[0]
    sums = jax.ops.segment_sum(features, labels, num_segments=num_classes)  # [C, D] Σ f_i
    counts = jax.ops.segment_sum(
        jnp.ones(labels.shape, jnp.float32), labels, num_segments=num_classes
    )  # [C] n_j
    centers = centers.astype(jnp.float32)
    return (counts[:, None] * centers - sums) / (1.0 + counts[:, None])


def update_centers(
    centers: Float[Array, "C D"], delta: Float[Array, "C D"], alpha: float = 1.0
) -> Float[Array, "C D"]:
    """`c ← c − α·Δc` (DCBH: α = 1).

    Example:
      >>> update_centers(jnp.ones((1, 2)), jnp.full((1, 2), 0.5), alpha=1.0).tolist()
      [[0.5, 0.5]]
    """
    if not alpha >= 0:
        raise ValueError(f"The centre update rate alpha must be >= 0, got {alpha}.")
    return centers - alpha * delta
