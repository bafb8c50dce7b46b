"""Slow, obviously-correct NumPy twin of `dpq_jax.quantizers.kw` (test oracle only).

Float64 with explicit loops. The straight-through estimator has no NumPy "value" of its own
(its value is the one-hot); its gradient is checked by finite differences of the surrogate
`hard assignment = e0 + p(θ) − p0`, with the one-hot e0 and the probabilities p0 frozen at the
point θ0 where the gradient is taken: the surrogate equals e0 at θ0 and its derivative there is
the estimator's, `∂h/∂p = C`.
"""

import math

import numpy as np


def assignment_logits(x_sub: np.ndarray, assign: np.ndarray) -> np.ndarray:
    """`[B, M, K]` scores `x_m . A_m[:, k]` of raw sub-vectors `[B, M, d]`, A `[M, d, K]`."""
    x_sub = np.asarray(x_sub, np.float64)
    assign = np.asarray(assign, np.float64)
    batch, num_codebooks, dim = x_sub.shape
    size = assign.shape[-1]
    out = np.zeros((batch, num_codebooks, size))
    for b in range(batch):
        for m in range(num_codebooks):
            for k in range(size):
                out[b, m, k] = sum(x_sub[b, m, j] * assign[m, j, k] for j in range(dim))
    return out


def soft_assign(x_sub: np.ndarray, assign: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """`[B, M, K]` `softmax_k(x_m A_m / T)`."""
    logits = assignment_logits(x_sub, assign) / temperature
    out = np.zeros_like(logits)
    for b in range(logits.shape[0]):
        for m in range(logits.shape[1]):
            top = max(logits[b, m])
            e = [math.exp(z - top) for z in logits[b, m]]
            total = sum(e)
            out[b, m] = [v / total for v in e]
    return out


def hard_codes(x_sub: np.ndarray, assign: np.ndarray) -> np.ndarray:
    """`[B, M]` uint8 first argmax of the raw scores."""
    logits = assignment_logits(x_sub, assign)
    out = np.zeros(logits.shape[:2], np.uint8)
    for b in range(logits.shape[0]):
        for m in range(logits.shape[1]):
            best = 0
            for k in range(logits.shape[2]):
                if logits[b, m, k] > logits[b, m, best]:
                    best = k
            out[b, m] = best
    return out


def one_hot(codes: np.ndarray, size: int) -> np.ndarray:
    """`[B, M, K]` float64 one-hot of `[B, M]` codes."""
    out = np.zeros((*codes.shape, size))
    for b in range(codes.shape[0]):
        for m in range(codes.shape[1]):
            out[b, m, int(codes[b, m])] = 1.0
    return out


def combine(weights: np.ndarray, codebooks: np.ndarray) -> np.ndarray:
    """`[B, M, d]`: `sum_k weights[b, m, k] * codebooks[m, k]`."""
    codebooks = np.asarray(codebooks, np.float64)
    batch, num_codebooks, size = weights.shape
    out = np.zeros((batch, num_codebooks, codebooks.shape[-1]))
    for b in range(batch):
        for m in range(num_codebooks):
            for k in range(size):
                out[b, m] += weights[b, m, k] * codebooks[m, k]
    return out


def kw_layer(
    feats: np.ndarray,
    assign: np.ndarray,
    codebooks: np.ndarray,
    temperature: float = 1.0,
    frozen: tuple[np.ndarray, np.ndarray] | None = None,
) -> dict:
    """The layer's forward pass on `feats [B, D]`; A `[M, d, K]`, codebooks `[M, K, d]`.

    Args:
      feats, assign, codebooks, temperature: as `dpq_jax.quantizers.kw.quantize`.
      frozen: `(onehot0, probs0)` of a base point: the hard path then uses the straight-through
        surrogate `onehot0 + probs − probs0` (for finite differences); None uses the one-hot
        of the current argmax.

    Returns:
      dict(soft `[B, D]`, hard `[B, D]`, probs `[B, M, K]`, codes `[B, M]` uint8,
      onehot `[B, M, K]`), float64.
    """
    feats = np.asarray(feats, np.float64)
    num_codebooks, dim, size = np.shape(assign)
    batch = feats.shape[0]
    x_sub = np.zeros((batch, num_codebooks, dim))
    for b in range(batch):
        for m in range(num_codebooks):
            x_sub[b, m] = feats[b, m * dim : (m + 1) * dim]
    probs = soft_assign(x_sub, assign, temperature)
    codes = hard_codes(x_sub, assign)
    onehot = one_hot(codes, size)
    hard_weights = onehot if frozen is None else frozen[0] + probs - frozen[1]
    return dict(
        soft=combine(probs, codebooks).reshape(batch, -1),
        hard=combine(hard_weights, codebooks).reshape(batch, -1),
        probs=probs,
        codes=codes,
        onehot=onehot,
    )
