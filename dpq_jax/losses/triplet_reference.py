"""Slow, obviously-correct NumPy twins of `dpq_jax.losses.triplet` (test oracles; float64 loops).

Mining is a brute-force search over the anchors, positives and negatives in index order;
a later candidate replaces the current pick only when strictly better, so ties go to the lowest
index. Gradients of the JAX losses are checked against finite differences of these functions
with the mined triplets held fixed (`loss_of_triplets`): the picks are piecewise constant.
"""

import numpy as np


def similar(labels, i: int, j: int) -> bool:
    """Same class id (`[B]`), or at least one shared label (`[B, C]` multi-hot)."""
    labels = np.asarray(labels)
    if labels.ndim == 1:
        return bool(labels[i] == labels[j])
    return any(labels[i, c] > 0 and labels[j, c] > 0 for c in range(labels.shape[1]))


def sign(f) -> np.ndarray:
    """+1 where f > 0, else -1."""
    f = np.asarray(f, np.float64)
    out = np.empty_like(f)
    for idx in np.ndindex(f.shape):
        out[idx] = 1.0 if f[idx] > 0 else -1.0
    return out


def squared_distances(x, y) -> np.ndarray:
    """`[A, B]` of ‖x_i − y_j‖², one pair at a time."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    out = np.zeros((x.shape[0], y.shape[0]))
    for i in range(x.shape[0]):
        for j in range(y.shape[0]):
            out[i, j] = sum((x[i, c] - y[j, c]) ** 2 for c in range(x.shape[1]))
    return out


def mine(dist, labels, *, margin: float, mining: str) -> list[tuple[int, int, int]]:
    """The triplets (a, p, n) the loss averages over, by brute force.

    batch_all: every valid triplet with d[a,p] − d[a,n] + margin > 0. batch_hard: per anchor
    with a positive and a negative, the farthest positive and the nearest negative.
    semi_hard: per positive pair whose anchor has a negative, the nearest negative with
    d[a,n] > d[a,p], else the farthest negative.
    """
    dist = np.asarray(dist, np.float64)
    n_items = dist.shape[0]
    out = []
    for a in range(n_items):
        positives = [p for p in range(n_items) if p != a and similar(labels, a, p)]
        negatives = [n for n in range(n_items) if n != a and not similar(labels, a, n)]
        if mining == "batch_all":
            for p in positives:
                for n in negatives:
                    if dist[a, p] - dist[a, n] + margin > 0:
                        out.append((a, p, n))
        elif mining == "batch_hard":
            if not positives or not negatives:
                continue
            p_best = positives[0]
            for p in positives:
                if dist[a, p] > dist[a, p_best]:
                    p_best = p
            n_best = negatives[0]
            for n in negatives:
                if dist[a, n] < dist[a, n_best]:
                    n_best = n
            out.append((a, p_best, n_best))
        elif mining == "semi_hard":
            if not negatives:
                continue
            for p in positives:
                outside = [n for n in negatives if dist[a, n] > dist[a, p]]
                if outside:
                    n_best = outside[0]
                    for n in outside:
                        if dist[a, n] < dist[a, n_best]:
                            n_best = n
                else:
                    n_best = negatives[0]
                    for n in negatives:
                        if dist[a, n] > dist[a, n_best]:
                            n_best = n
                out.append((a, p, n_best))
        else:
            raise ValueError(mining)
    return out


def loss_of_triplets(dist, triplets, *, margin: float) -> float:
    """Mean of max(0, d[a,p] − d[a,n] + margin) over `triplets` (0 if there are none)."""
    dist = np.asarray(dist, np.float64)
    if not triplets:
        return 0.0
    total = sum(max(0.0, dist[a, p] - dist[a, n] + margin) for a, p, n in triplets)
    return total / len(triplets)


def triplet_loss(dist, labels, *, margin: float, mining: str) -> float:
    """The mined triplets' mean hinge."""
    triplets = mine(dist, labels, margin=margin, mining=mining)
    return loss_of_triplets(dist, triplets, margin=margin)


def quantization_distances(codes, variant: str, binary=None) -> np.ndarray:
    """d(b_a, b_j) (`"triplet_a"`) or d(f_a, b_j) (`"triplet_b"`); `binary` overrides sgn(f)."""
    b = sign(codes) if binary is None else np.asarray(binary, np.float64)
    if variant == "triplet_a":
        return squared_distances(b, b)
    if variant == "triplet_b":
        return squared_distances(codes, b)
    raise ValueError(variant)


def pointwise_quantization_loss(codes) -> float:
    """(1/B) Σ_i Σ_c (f_ic − sgn f_ic)²."""
    codes = np.asarray(codes, np.float64)
    b = sign(codes)
    total = 0.0
    for i in range(codes.shape[0]):
        for c in range(codes.shape[1]):
            total += (codes[i, c] - b[i, c]) ** 2
    return total / codes.shape[0]


def tql_loss(
    codes,
    labels,
    *,
    margin: float,
    quant_margin: float,
    quant_weight: float,
    quantization: str,
    mining: str,
) -> tuple[float, float, float]:
    """`(total, triplet, quantization)`: L_trip + λ · L_quant."""
    codes = np.asarray(codes, np.float64)
    trip = triplet_loss(squared_distances(codes, codes), labels, margin=margin, mining=mining)
    if quantization in ("triplet_a", "triplet_b"):
        dist = quantization_distances(codes, quantization)
        quant = triplet_loss(dist, labels, margin=quant_margin, mining=mining)
    elif quantization == "pointwise":
        quant = pointwise_quantization_loss(codes)
    elif quantization == "none":
        quant = 0.0
    else:
        raise ValueError(quantization)
    return trip + quant_weight * quant, trip, quant
