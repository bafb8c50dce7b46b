"""Slow, obviously-correct NumPy twins of `dpq_jax.losses.kw` (test oracles; float64 loops)."""

import math

import numpy as np


def gini_batch_diversity(probs: np.ndarray) -> float:
    """`sum_{m,k} (mean_b p[b, m, k])^2`."""
    probs = np.asarray(probs, np.float64)
    batch, num_codebooks, size = probs.shape
    total = 0.0
    for m in range(num_codebooks):
        for k in range(size):
            mean = sum(probs[b, m, k] for b in range(batch)) / batch
            total += mean * mean
    return total


def gini_sharpness(probs: np.ndarray) -> float:
    """`(1/B) sum_{b,m,k} p[b, m, k]^2`."""
    probs = np.asarray(probs, np.float64)
    return float(sum(float(v) ** 2 for v in probs.ravel())) / probs.shape[0]


def joint_central_loss(soft, hard, labels, centers) -> float:
    """Per class present in the batch: ½ Σ ‖s − c_y‖² + ½ Σ ‖h − c_y‖² over its items; / B."""
    soft, hard, centers = (np.asarray(a, np.float64) for a in (soft, hard, centers))
    labels = [int(y) for y in labels]
    total = 0.0
    for label in sorted(set(labels)):
        for b, y in enumerate(labels):
            if y == label:
                total += 0.5 * float(np.sum((soft[b] - centers[label]) ** 2))
                total += 0.5 * float(np.sum((hard[b] - centers[label]) ** 2))
    return total / len(labels)


def _cross_entropy(x: np.ndarray, weights: np.ndarray, labels) -> float:
    total = 0.0
    for b, y in enumerate(labels):
        logits = [float(np.dot(x[b], weights[c])) for c in range(weights.shape[0])]
        top = max(logits)
        total += top + math.log(sum(math.exp(z - top) for z in logits)) - logits[int(y)]
    return total / len(labels)


def shared_classifier_losses(soft, hard, weights, labels) -> tuple[float, float]:
    """Mean softmax cross-entropy of `x W^T` for x = soft and x = hard."""
    soft, hard, weights = (np.asarray(a, np.float64) for a in (soft, hard, weights))
    return _cross_entropy(soft, weights, labels), _cross_entropy(hard, weights, labels)


def kw_loss(
    soft,
    hard,
    probs,
    labels,
    weights,
    centers,
    *,
    central_weight: float = 0.25,
    diversity_weight: float = 1.0,
    sharpness_weight: float = 0.01,
) -> float:
    """CE(s) + CE(h) + α JCL + β1 diversity − β2 sharpness."""
    ce_soft, ce_hard = shared_classifier_losses(soft, hard, weights, labels)
    return (
        ce_soft
        + ce_hard
        + central_weight * joint_central_loss(soft, hard, labels, centers)
        + diversity_weight * gini_batch_diversity(probs)
        - sharpness_weight * gini_sharpness(probs)
    )
