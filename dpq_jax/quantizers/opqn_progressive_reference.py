"""Slow, obviously-correct NumPy twin of `dpq_jax.quantizers.opqn_progressive` (test oracle only).

Float64 with explicit loops; the codebook twins come from `quantizers/reference.py`.
"""

import math

import numpy as np

from dpq_jax.quantizers import reference as ref


def level_codebooks(
    kind: str, num_levels: int, num_codebooks: int, codebook_size: int, dim: int, seed: int = 0
) -> np.ndarray:
    """`[L, M, K, d]`: level 1 is OPQN's books (DCT powers or Gram-Schmidt of the seed's draw);
    levels 2..L are Gram-Schmidt of the Gaussian draw of seed + 1, `(L-1) M` books in order."""
    books = np.zeros((num_levels, num_codebooks, codebook_size, dim))
    if kind == "dct":
        books[0] = ref.dct_orthonormal_codebooks(num_codebooks, codebook_size, dim)
    else:
        books[0] = ref.random_orthonormal_codebooks(num_codebooks, codebook_size, dim, seed)
    if num_levels > 1:
        rest = ref.random_orthonormal_codebooks(
            (num_levels - 1) * num_codebooks, codebook_size, dim, seed + 1
        )
        for level in range(1, num_levels):
            for m in range(num_codebooks):
                books[level, m] = rest[(level - 1) * num_codebooks + m]
    return books


def _unit(v: np.ndarray) -> np.ndarray:
    """`v / max(|v|, 1e-12)`."""
    return v / max(math.sqrt(float(np.dot(v, v))), 1e-12)


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max())
    return e / e.sum()


def progressive_ortho_quantize(
    x: np.ndarray,
    assign: np.ndarray,
    codebooks: np.ndarray,
    gains: np.ndarray,
    scale_by_norm: bool = True,
) -> dict:
    """One item, one subspace, one level at a time:

    u_1 = x_m/|x_m|; logits_l[k] = t (u_l/|u_l|) . A_lm[:, k] with t = |x_m| (or 1);
    p_l = softmax(logits_l); soft_l = g_l sum_k p_lk c_lmk; code_l = first argmax;
    hard_l = g_l c_{lm, code_l}; u_{l+1} = u_l - hard_l.

    Returns:
      dict(target [B, D], soft [B, L, D] and hard [B, L, D] partial sums, codes [B, L, M]
      uint8, probs [B, L, M, K], residuals [B, L, D] (the input u_l of each level)).
    """
    x = np.asarray(x, np.float64)
    assign = np.asarray(assign, np.float64)
    codebooks = np.asarray(codebooks, np.float64)
    gains = np.asarray(gains, np.float64)
    batch = x.shape[0]
    levels, num_codebooks, dim, size = assign.shape
    width = num_codebooks * dim
    target = np.zeros((batch, width))
    soft = np.zeros((batch, levels, width))
    hard = np.zeros((batch, levels, width))
    codes = np.zeros((batch, levels, num_codebooks), np.uint8)
    probs = np.zeros((batch, levels, num_codebooks, size))
    residuals = np.zeros((batch, levels, width))
    for b in range(batch):
        for m in range(num_codebooks):
            cols = slice(m * dim, (m + 1) * dim)
            x_m = x[b, cols]
            t = max(math.sqrt(float(np.dot(x_m, x_m))), 1e-12) if scale_by_norm else 1.0
            u = _unit(x_m)
            target[b, cols] = u
            soft_sum, hard_sum = np.zeros(dim), np.zeros(dim)
            for level in range(levels):
                residuals[b, level, cols] = u
                direction = _unit(u)
                logits = np.array(
                    [t * float(np.dot(direction, assign[level, m, :, k])) for k in range(size)]
                )
                p = _softmax(logits)
                best = 0
                for k in range(size):
                    if logits[k] > logits[best]:
                        best = k
                soft_level = np.zeros(dim)
                for k in range(size):
                    soft_level += p[k] * codebooks[level, m, k]
                soft_sum = soft_sum + gains[level] * soft_level
                hard_level = gains[level] * codebooks[level, m, best]
                hard_sum = hard_sum + hard_level
                soft[b, level, cols], hard[b, level, cols] = soft_sum, hard_sum
                codes[b, level, m], probs[b, level, m] = best, p
                u = u - hard_level
    return dict(target=target, soft=soft, hard=hard, codes=codes, probs=probs, residuals=residuals)


def full_dim_codebooks(codebooks: np.ndarray, gains: np.ndarray) -> np.ndarray:
    """`[L·M, K, D]`: book `l·M + m` is `gains[l] * codebooks[l, m]` in columns `m·d:(m+1)·d`."""
    levels, num_codebooks, size, dim = codebooks.shape
    out = np.zeros((levels * num_codebooks, size, num_codebooks * dim))
    for level in range(levels):
        for m in range(num_codebooks):
            for k in range(size):
                for j in range(dim):
                    out[level * num_codebooks + m, k, m * dim + j] = (
                        float(gains[level]) * codebooks[level, m, k, j]
                    )
    return out


def reconstruct(codes: np.ndarray, codebooks: np.ndarray, gains: np.ndarray) -> np.ndarray:
    """`[B, D]`: `sum_{l < codes.shape[1]} gains[l] * concat_m codebooks[l, m, codes[b, l, m]]`."""
    batch, levels, num_codebooks = codes.shape
    dim = codebooks.shape[-1]
    out = np.zeros((batch, num_codebooks * dim))
    for b in range(batch):
        for level in range(levels):
            for m in range(num_codebooks):
                word = codebooks[level, m, int(codes[b, level, m])]
                out[b, m * dim : (m + 1) * dim] += float(gains[level]) * np.asarray(
                    word, np.float64
                )
    return out
