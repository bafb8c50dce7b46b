r"""The losses of Klein & Wolf's supervised product quantization (DPQ-KW), as pure functions.

With s the soft and h the hard quantization `[B, D]` of a batch, p the soft assignments
`[B, M, K]`, y the labels, W `[C, D]` one bias-free classifier shared by s and h and c `[C, D]`
learned class centres (METHODS.md §5.6, the OPQN repository's `dpq.py` / `dpq_layer.py`):

    L = CE(s Wᵀ, y) + CE(h Wᵀ, y)                                 classification, both paths
      + α · (1/B) Σ_b ½ (‖s_b − c_{y_b}‖² + ‖h_b − c_{y_b}‖²)       joint central loss, α = 0.25
      + β1 · Σ_m Σ_k ((1/B) Σ_b p_bmk)²                             Gini batch diversity, β1 = 1
      − β2 · (1/B) Σ_b Σ_m Σ_k p_bmk²                               Gini sharpness, β2 = 0.01

CE is the softmax cross-entropy averaged over the batch. The diversity term is smallest when
the batch spreads evenly over the K codewords of every book; the sharpness term, subtracted,
rewards peaked (near one-hot) assignments. The reference divides the sharpness by B only (not
by M), and so do we.

The batch-mean assignment couples the items of a batch; under `jit` over a batch sharded on
the `"data"` mesh the mean is over the global batch, so 1 and 8 devices agree.

References:
  B. Klein & L. Wolf, "End-to-End Supervised Product Quantization for Image Search and
  Retrieval", CVPR 2019 (arXiv 1711.08589): joint central loss, Gini batch diversity and
  sample sparsity. METHODS.md §5.6.
"""

import jax
import jax.numpy as jnp
import optax

from dpq_jax.losses.center import center_loss
from dpq_jax.losses.margin import check_labels
from dpq_jax.typing import Array, Float, Int

_HIGHEST = jax.lax.Precision.HIGHEST


def _check_probs(probs) -> None:
    if probs.ndim != 3:
        raise ValueError(f"Expected probabilities [B, M, K], got shape {tuple(probs.shape)}.")


def gini_batch_diversity(probs: Float[Array, "B M K"]) -> Float[Array, ""]:
    """`Σ_m Σ_k (p̄_mk)²` with `p̄_mk = (1/B) Σ_b p_bmk`, the batch-mean assignment.

    Between M/K (every book used evenly by the batch) and M (the whole batch on one codeword
    per book); minimising it spreads the batch over the codewords.

    Args:
      probs: `[B, M, K]` soft assignments.

    Returns:
      Scalar float32.

    Raises:
      ValueError: probs is not 3-D.

    Example:
      >>> float(gini_batch_diversity(jnp.asarray([[[1.0, 0.0]], [[0.0, 1.0]]])))
      0.5

    References:
      Klein & Wolf, CVPR 2019 (Gini batch diversity); METHODS.md §5.6 (β1 = 1).
    """
    _check_probs(probs)
    mean = jnp.mean(probs.astype(jnp.float32), axis=0)  # [M, K], over the (global) batch
    return jnp.sum(jnp.square(mean))


def gini_sharpness(probs: Float[Array, "B M K"]) -> Float[Array, ""]:
    """`(1/B) Σ_b Σ_m Σ_k p_bmk²`: M for one-hot assignments, M/K for uniform ones.

    The loss *subtracts* β2 times this (peaked assignments are rewarded).

    Args:
      probs: `[B, M, K]` soft assignments.

    Returns:
      Scalar float32.

    Raises:
      ValueError: probs is not 3-D.

    Example:
      >>> float(gini_sharpness(jnp.asarray([[[1.0, 0.0]], [[0.5, 0.5]]])))
      0.75

    References:
      Klein & Wolf, CVPR 2019 (Gini sample sparsity); METHODS.md §5.6 (β2 = 0.01, divided by
      B only).
    """
    _check_probs(probs)
    per_item = jnp.sum(jnp.square(probs.astype(jnp.float32)), axis=(1, 2))  # [B]
    return jnp.mean(per_item)


def joint_central_loss(
    soft: Float[Array, "B D"],
    hard: Float[Array, "B D"],
    labels: Int[Array, " B"],
    centers: Float[Array, "C D"],
) -> Float[Array, ""]:
    """`(1/B) Σ_b ½ (‖s_b − c_{y_b}‖² + ‖h_b − c_{y_b}‖²)`: both quantizations pulled to one
    learned centre per class, which also pulls s and h together.

    Args:
      soft: `[B, D]` soft quantizations s.
      hard: `[B, D]` hard quantizations h.
      labels: `[B]` class ids in `[0, C)`.
      centers: `[C, D]` class centres c.

    Returns:
      Scalar float32.

    Raises:
      ValueError: mismatched shapes.

    References:
      Klein & Wolf, CVPR 2019 (joint central loss); METHODS.md §5.6 (α = 0.25).
    """
    if soft.shape != hard.shape:
        raise ValueError(
            f"soft {tuple(soft.shape)} and hard {tuple(hard.shape)} quantizations must have "
            f"the same [B, D] shape."
        )
    return center_loss(soft, labels, centers, reduction="mean") + center_loss(
        hard, labels, centers, reduction="mean"
    )


def shared_classifier_losses(
    soft: Float[Array, "B D"],
    hard: Float[Array, "B D"],
    weights: Float[Array, "C D"],
    labels: Int[Array, " B"],
) -> tuple[Float[Array, ""], Float[Array, ""]]:
    """`(CE(s Wᵀ, y), CE(h Wᵀ, y))`: one bias-free linear classifier W on both quantizations,
    softmax cross-entropy averaged over the batch.

    Args:
      soft: `[B, D]` soft quantizations.
      hard: `[B, D]` hard quantizations.
      weights: `[C, D]` classifier rows.
      labels: `[B]` class ids in `[0, C)` (checked when concrete).

    Returns:
      The two scalar float32 losses (soft, hard).

    Raises:
      ValueError: mismatched shapes or labels outside `[0, C)`.

    References:
      METHODS.md §5.6 (`CE(W s) + CE(W h)`, one shared bias-free classifier).
    """
    if soft.shape != hard.shape or soft.ndim != 2 or weights.shape[1:] != soft.shape[1:]:
        raise ValueError(
            f"Expected soft and hard [B, D] and classifier weights [C, D] of the same D, got "
            f"{tuple(soft.shape)}, {tuple(hard.shape)} and {tuple(weights.shape)}."
        )
    check_labels(labels, soft.shape[0], weights.shape[0])
    w = weights.astype(jnp.float32)

    def ce(x):
        logits = jnp.einsum("bd,cd->bc", x.astype(jnp.float32), w, precision=_HIGHEST)  # [B, C]
        return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))

    return ce(soft), ce(hard)


def kw_loss(
    soft: Float[Array, "B D"],
    hard: Float[Array, "B D"],
    probs: Float[Array, "B M K"],
    labels: Int[Array, " B"],
    weights: Float[Array, "C D"],
    centers: Float[Array, "C D"],
    *,
    central_weight: float = 0.25,
    diversity_weight: float = 1.0,
    sharpness_weight: float = 0.01,
) -> tuple[Float[Array, ""], dict[str, Float[Array, ""]]]:
    """DPQ-KW's total loss (the module docstring's L) and its terms.

    Args:
      soft, hard: `[B, D]` soft and hard quantizations.
      probs: `[B, M, K]` soft assignments.
      labels: `[B]` class ids.
      weights: `[C, D]` shared classifier.
      centers: `[C, D]` class centres.
      central_weight: α (0.25).
      diversity_weight: β1 (1).
      sharpness_weight: β2 (0.01), subtracted.

    Returns:
      `(total, terms)`, terms a dict of scalars `loss_clf_soft`, `loss_clf_hard`,
      `loss_central`, `gini_diversity` and `gini_sharpness` (unweighted).

    Raises:
      ValueError: mismatched shapes or labels outside `[0, C)`.

    References:
      METHODS.md §5.6; the OPQN repository's `dpq.py` (`loss_clf + loss_gini`).
    """
    if probs.shape[0] != soft.shape[0]:
        raise ValueError(
            f"probs {tuple(probs.shape)} and the quantizations {tuple(soft.shape)} must have "
            f"the same batch size."
        )
    ce_soft, ce_hard = shared_classifier_losses(soft, hard, weights, labels)
    central = joint_central_loss(soft, hard, labels, centers)
    diversity = gini_batch_diversity(probs)
    sharpness = gini_sharpness(probs)
    total = (
        ce_soft
        + ce_hard
        + central_weight * central
        + diversity_weight * diversity
        - sharpness_weight * sharpness
    )
    terms = dict(
        loss_clf_soft=ce_soft,
        loss_clf_hard=ce_hard,
        loss_central=central,
        gini_diversity=diversity,
        gini_sharpness=sharpness,
    )
    return total, terms
