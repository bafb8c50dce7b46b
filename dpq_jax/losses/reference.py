"""Slow, obviously-correct NumPy twins of `dpq_jax.losses` (test oracles only; float64 loops)."""

import math

import numpy as np


def cosine_logits(x_sub: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """`[B, M, C]` clamped cosines between x_sub[b, m] and weights[m, c]."""
    x_sub = np.asarray(x_sub, np.float64)
    weights = np.asarray(weights, np.float64)
    batch, num_codebooks, _ = x_sub.shape
    num_classes = weights.shape[1]
    out = np.zeros((batch, num_codebooks, num_classes))
    for b in range(batch):
        for m in range(num_codebooks):
            x = x_sub[b, m]
            x = x / max(math.sqrt(float(np.dot(x, x))), 1e-12)
            for c in range(num_classes):
                w = weights[m, c]
                w = w / max(math.sqrt(float(np.dot(w, w))), 1e-12)
                out[b, m, c] = min(1.0, max(-1.0, float(np.dot(x, w))))
    return out


def subspace_cosface(x_sub, weights, labels, *, scale: float, margin: float) -> float:
    """Mean over m and b of `-log softmax(scale * (cos - margin * [c == y]))[y]`."""
    cos = cosine_logits(x_sub, weights)
    batch, num_codebooks, num_classes = cos.shape
    total = 0.0
    for m in range(num_codebooks):
        per_m = 0.0
        for b in range(batch):
            y = int(labels[b])
            logits = [
                scale * (cos[b, m, c] - (margin if c == y else 0.0)) for c in range(num_classes)
            ]
            top = max(logits)
            log_norm = top + math.log(sum(math.exp(z - top) for z in logits))
            per_m += log_norm - logits[y]
        total += per_m / batch
    return total / num_codebooks


def assignment_entropy(probs: np.ndarray) -> float:
    """`(1/(M B)) sum_{b,m} -sum_k p log p` with 0 log 0 = 0."""
    probs = np.asarray(probs, np.float64)
    batch, num_codebooks, size = probs.shape
    total = 0.0
    for b in range(batch):
        for m in range(num_codebooks):
            for k in range(size):
                p = probs[b, m, k]
                if p > 0:
                    total -= p * math.log(p)
    return total / (batch * num_codebooks)
