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


# --- DPQ-G: DVSQ adaptive margin, classification, progressive distortions ---------------------


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    na = max(math.sqrt(float(np.dot(a, a))), 1e-12)
    nb = max(math.sqrt(float(np.dot(b, b))), 1e-12)
    return float(np.dot(a, b)) / (na * nb)


def _multi_hot(labels, num_classes: int) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim == 2:
        return labels.astype(np.float64)
    out = np.zeros((labels.shape[0], num_classes))
    for b, y in enumerate(labels):
        out[b, int(y)] = 1.0
    return out


def label_margins(label_embeddings: np.ndarray) -> np.ndarray:
    """`[C, C]`: `delta_ij = 1 - cos(v_i, v_j)`, 0 on the diagonal."""
    v = np.asarray(label_embeddings, np.float64)
    num_classes = v.shape[0]
    out = np.zeros((num_classes, num_classes))
    for i in range(num_classes):
        for j in range(num_classes):
            out[i, j] = 0.0 if i == j else 1.0 - _cos(v[i], v[j])
    return out


def adaptive_margin_loss(x, label_embeddings, labels, margins=None) -> float:
    """`sum_n sum_{i in Y_n} sum_j max(0, delta_ij - cos(x_n, v_i) + cos(x_n, v_j))`, divided
    by C times the number of positive labels."""
    x = np.asarray(x, np.float64)
    v = np.asarray(label_embeddings, np.float64)
    num_classes = v.shape[0]
    delta = label_margins(v) if margins is None else np.asarray(margins, np.float64)
    positives = _multi_hot(labels, num_classes)
    total, count = 0.0, 0.0
    for n in range(x.shape[0]):
        for i in range(num_classes):
            if positives[n, i] == 0:
                continue
            count += positives[n, i]
            for j in range(num_classes):
                term = delta[i, j] - _cos(x[n], v[i]) + _cos(x[n], v[j])
                total += positives[n, i] * max(0.0, term)
    return total / (num_classes * max(count, 1.0))


def classification_loss(logits, labels) -> float:
    """Softmax CE averaged over the batch (class ids) or sigmoid CE averaged over B and C
    (multi-hot)."""
    logits = np.asarray(logits, np.float64)
    labels = np.asarray(labels)
    batch, num_classes = logits.shape
    total = 0.0
    if labels.ndim == 1:
        for b in range(batch):
            top = max(logits[b])
            log_norm = top + math.log(sum(math.exp(z - top) for z in logits[b]))
            total += log_norm - logits[b, int(labels[b])]
        return total / batch
    for b in range(batch):
        for c in range(num_classes):
            z, y = logits[b, c], float(labels[b, c])
            p = 1.0 / (1.0 + math.exp(-z))
            total -= y * math.log(p) + (1.0 - y) * math.log(1.0 - p)
    return total / (batch * num_classes)


def progressive_distortions(x, soft, hard) -> dict:
    """dict(soft = sum_l mean((x - soft_l)^2), hard = the same with hard, jcl =
    mean((soft_L - hard_L)^2))."""
    x = np.asarray(x, np.float64)
    soft = np.asarray(soft, np.float64)
    hard = np.asarray(hard, np.float64)
    batch, levels, dim = soft.shape
    out = dict(soft=0.0, hard=0.0, jcl=0.0)
    for level in range(levels):
        for name, q in (("soft", soft), ("hard", hard)):
            acc = 0.0
            for b in range(batch):
                for d in range(dim):
                    acc += (x[b, d] - q[b, level, d]) ** 2
            out[name] += acc / (batch * dim)
    acc = 0.0
    for b in range(batch):
        for d in range(dim):
            acc += (soft[b, -1, d] - hard[b, -1, d]) ** 2
    out["jcl"] = acc / (batch * dim)
    return out
