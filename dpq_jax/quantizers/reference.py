"""Slow, obviously-correct NumPy twins of `dpq_jax.quantizers` (test oracles only).

Everything runs in float64 with explicit Python loops; nothing here is meant to be fast.
"""

import math

import numpy as np


def dct_basis(dim: int) -> np.ndarray:
    """`T[j, k] = sqrt(2/d) cos((j + 1/2) k pi / d)`, column 0 scaled by 1/sqrt(2); `[d, d]`."""
    basis = np.zeros((dim, dim))
    for j in range(dim):
        for k in range(dim):
            value = math.cos((j + 0.5) * k * math.pi / dim) / math.sqrt(dim / 2.0)
            if k == 0:
                value /= math.sqrt(2.0)
            basis[j, k] = value
    return basis


def _matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    out = np.zeros((a.shape[0], b.shape[1]))
    for i in range(a.shape[0]):
        for j in range(b.shape[1]):
            out[i, j] = sum(a[i, t] * b[t, j] for t in range(a.shape[1]))
    return out


def dct_orthonormal_codebooks(num_codebooks: int, codebook_size: int, dim: int) -> np.ndarray:
    """`[M, K, d]`: book m holds the columns of `T^m C_1` (m from 0), `C_1 = T[:, :K]`."""
    if codebook_size > dim:
        raise ValueError("K > d")
    basis = dct_basis(dim)
    books = np.zeros((num_codebooks, codebook_size, dim))
    book = basis[:, :codebook_size].copy()  # [d, K]
    for m in range(num_codebooks):
        for k in range(codebook_size):
            books[m, k] = book[:, k]
        book = _matmul(basis, book)
    return books


def random_orthonormal_codebooks(
    num_codebooks: int, codebook_size: int, dim: int, seed: int = 0
) -> np.ndarray:
    """Gram-Schmidt on the columns of the same Gaussian draw as the library: `[M, K, d]`."""
    gauss = np.random.default_rng(seed).standard_normal((num_codebooks, dim, codebook_size))
    books = np.zeros((num_codebooks, codebook_size, dim))
    for m in range(num_codebooks):
        for k in range(codebook_size):
            v = gauss[m, :, k].copy()
            for prev in range(k):  # modified Gram-Schmidt
                v = v - np.dot(books[m, prev], v) * books[m, prev]
            books[m, k] = v / np.linalg.norm(v)
    return books


def split_subvectors(x: np.ndarray, num_codebooks: int) -> np.ndarray:
    """`[B, D] -> [B, M, d]`, `out[b, m, j] = x[b, m*d + j]`."""
    batch, width = x.shape
    dim = width // num_codebooks
    out = np.zeros((batch, num_codebooks, dim))
    for b in range(batch):
        for m in range(num_codebooks):
            for j in range(dim):
                out[b, m, j] = x[b, m * dim + j]
    return out


def _softmax(z: np.ndarray) -> np.ndarray:
    z = np.asarray(z, np.float64)
    e = np.exp(z - z.max())
    return e / e.sum()


def assignment_logits(x_sub: np.ndarray, assign: np.ndarray, normalize: bool = False):
    """`[B, M, K]` scores `x_m . A_m[:, k]`, x_m optionally divided by max(|x_m|, 1e-12)."""
    x_sub = np.asarray(x_sub, np.float64)
    assign = np.asarray(assign, np.float64)
    batch, num_codebooks, _ = x_sub.shape
    size = assign.shape[-1]
    out = np.zeros((batch, num_codebooks, size))
    for b in range(batch):
        for m in range(num_codebooks):
            x = x_sub[b, m]
            if normalize:
                x = x / max(math.sqrt(float(np.sum(x * x))), 1e-12)
            for k in range(size):
                out[b, m, k] = float(np.dot(x, assign[m, :, k]))
    return out


def soft_assign(x_sub: np.ndarray, assign: np.ndarray, normalize: bool = False) -> np.ndarray:
    """`[B, M, K]` softmax over k of the assignment scores."""
    logits = assignment_logits(x_sub, assign, normalize)
    out = np.zeros_like(logits)
    for b in range(logits.shape[0]):
        for m in range(logits.shape[1]):
            out[b, m] = _softmax(logits[b, m])
    return out


def soft_quantize(probs: np.ndarray, codebooks: np.ndarray) -> np.ndarray:
    """`[B, M, d]`: `sum_k probs[b, m, k] * codebooks[m, k]`."""
    batch, num_codebooks, size = probs.shape
    out = np.zeros((batch, num_codebooks, codebooks.shape[-1]))
    for b in range(batch):
        for m in range(num_codebooks):
            for k in range(size):
                out[b, m] += float(probs[b, m, k]) * np.asarray(codebooks[m, k], np.float64)
    return out


def hard_codes(x_sub: np.ndarray, assign: np.ndarray) -> np.ndarray:
    """`[B, M]` uint8 argmax of the raw assignment scores (first maximum)."""
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


def reconstruct(codes: np.ndarray, codebooks: np.ndarray) -> np.ndarray:
    """`[B, M, d]`: `codebooks[m, codes[b, m]]`."""
    batch, num_codebooks = codes.shape
    out = np.zeros((batch, num_codebooks, codebooks.shape[-1]))
    for b in range(batch):
        for m in range(num_codebooks):
            out[b, m] = codebooks[m, int(codes[b, m])]
    return out


def probability_lut(q_sub: np.ndarray, assign: np.ndarray) -> np.ndarray:
    """`[Q, M, K]` softmax of the normalised query scores."""
    return soft_assign(q_sub, assign, normalize=True)


def ortho_pq_head(feats: np.ndarray, assign: np.ndarray, codebooks: np.ndarray) -> dict:
    """The head's forward pass: `feats [B, D]` -> dict(feats, soft [B, D], probs, codes)."""
    num_codebooks = assign.shape[0]
    x_sub = split_subvectors(feats, num_codebooks)
    probs = soft_assign(x_sub, assign)
    soft = soft_quantize(probs, codebooks).reshape(feats.shape)
    return dict(
        feats=np.asarray(feats, np.float64),
        soft=soft,
        probs=probs,
        codes=hard_codes(x_sub, assign),
    )


# --- DPQ-G progressive (residual) quantizer ---------------------------------------------------


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    """`<a, b> / (max(|a|, 1e-12) max(|b|, 1e-12))`."""
    na = max(math.sqrt(float(np.dot(a, a))), 1e-12)
    nb = max(math.sqrt(float(np.dot(b, b))), 1e-12)
    return float(np.dot(a, b)) / (na * nb)


def progressive_scores(
    residual: np.ndarray, codebook: np.ndarray, assign: str = "cosine", gamma: float = 1.0
) -> np.ndarray:
    """`[B, K]`: `gamma cos(r_b, c_k)` or `-gamma ||r_b - c_k||^2`."""
    residual = np.asarray(residual, np.float64)
    codebook = np.asarray(codebook, np.float64)
    out = np.zeros((residual.shape[0], codebook.shape[0]))
    for b in range(residual.shape[0]):
        for k in range(codebook.shape[0]):
            if assign == "cosine":
                out[b, k] = gamma * _cosine(residual[b], codebook[k])
            else:
                diff = residual[b] - codebook[k]
                out[b, k] = -gamma * float(np.dot(diff, diff))
    return out


def progressive_quantize(
    x: np.ndarray, codebooks: np.ndarray, assign: str = "cosine", gamma: float = 1.0
) -> dict:
    """DPQ-G's levels one by one: r_1 = x; a_l = softmax(score(r_l, C_l)); soft_l = a_l C_l;
    code_l = first argmax; hard_l = C_l[code_l]; r_{l+1} = r_l - hard_l.

    Returns:
      dict(soft [B, L, D] and hard [B, L, D] partial sums over the levels, codes [B, L] uint8,
      probs [B, L, K], residuals [B, L, D] (the input of each level)).
    """
    x = np.asarray(x, np.float64)
    codebooks = np.asarray(codebooks, np.float64)
    batch, dim = x.shape
    levels, size, _ = codebooks.shape
    soft = np.zeros((batch, levels, dim))
    hard = np.zeros((batch, levels, dim))
    codes = np.zeros((batch, levels), np.uint8)
    probs = np.zeros((batch, levels, size))
    residuals = np.zeros((batch, levels, dim))
    for b in range(batch):
        residual = x[b].copy()
        soft_sum = np.zeros(dim)
        hard_sum = np.zeros(dim)
        for level in range(levels):
            residuals[b, level] = residual
            scores = progressive_scores(residual[None], codebooks[level], assign, gamma)[0]
            p = _softmax(scores)
            best = 0
            for k in range(size):
                if scores[k] > scores[best]:
                    best = k
            soft_level = np.zeros(dim)
            for k in range(size):
                soft_level += p[k] * codebooks[level, k]
            soft_sum = soft_sum + soft_level
            hard_sum = hard_sum + codebooks[level, best]
            soft[b, level], hard[b, level] = soft_sum, hard_sum
            codes[b, level], probs[b, level] = best, p
            residual = residual - codebooks[level, best]
    return dict(soft=soft, hard=hard, codes=codes, probs=probs, residuals=residuals)


def reconstruct_progressive(codes: np.ndarray, codebooks: np.ndarray) -> np.ndarray:
    """`[B, D]`: `sum_{i < l} codebooks[i, codes[b, i]]` with l = codes.shape[1]."""
    batch, levels = codes.shape
    out = np.zeros((batch, codebooks.shape[-1]))
    for b in range(batch):
        for i in range(levels):
            out[b] += np.asarray(codebooks[i, int(codes[b, i])], np.float64)
    return out
