"""Slow, obviously-correct NumPy twins of the search functions (test oracles only).

Everything here uses explicit Python loops, float64 sums and Python's stable `sorted` with an
explicit `(score, tie priority)` key, so each function can be checked by reading it. Never use
these on real data sizes.
"""

import numpy as np


def lut_inner_product(query: np.ndarray, codebooks: np.ndarray) -> np.ndarray:
    """`LUT[q, m, k] = <query[q, m*d:(m+1)*d], codebooks[m, k]>`; `[Q, D] -> [Q, M, K]`."""
    query = np.asarray(query, np.float64)
    codebooks = np.asarray(codebooks, np.float64)
    num_m, num_k, d = codebooks.shape
    out = np.zeros((query.shape[0], num_m, num_k))
    for q in range(query.shape[0]):
        for m in range(num_m):
            sub = query[q, m * d : (m + 1) * d]
            for k in range(num_k):
                out[q, m, k] = sum(sub[j] * codebooks[m, k, j] for j in range(d))
    return out


def lut_soft_quantized(probs: np.ndarray, codebooks: np.ndarray) -> np.ndarray:
    """`LUT[q, m, k] = <sum_j probs[q, m, j] c_mj, c_mk>`; `[Q, M, K] -> [Q, M, K]`."""
    probs = np.asarray(probs, np.float64)
    codebooks = np.asarray(codebooks, np.float64)
    num_q, num_m, num_k = probs.shape
    out = np.zeros((num_q, num_m, num_k))
    for q in range(num_q):
        for m in range(num_m):
            soft = np.zeros(codebooks.shape[2])
            for j in range(num_k):
                soft = soft + probs[q, m, j] * codebooks[m, j]
            for k in range(num_k):
                out[q, m, k] = float(np.dot(soft, codebooks[m, k]))
    return out


def soft_quantized_vectors(probs: np.ndarray, codebooks: np.ndarray) -> np.ndarray:
    """`s[q] = concat_m sum_j probs[q, m, j] c_mj`; `[Q, M, K] -> [Q, M * d]`, float64."""
    probs = np.asarray(probs, np.float64)
    codebooks = np.asarray(codebooks, np.float64)
    num_q, num_m, num_k = probs.shape
    d = codebooks.shape[2]
    out = np.zeros((num_q, num_m * d))
    for q in range(num_q):
        for m in range(num_m):
            for j in range(num_k):
                out[q, m * d : (m + 1) * d] += probs[q, m, j] * codebooks[m, j]
    return out


def faiss_binary_bytes(bits: np.ndarray) -> np.ndarray:
    """FAISS binary layout: bit `j` (value > 0) sets bit `j % 8` of byte `j // 8`.

    This is FAISS's `fvec2bitvec` order (least significant bit first within each byte);
    the code is zero-padded to a whole number of bytes. Returns uint8 `[N, ceil(b / 8)]`.
    """
    bits = np.asarray(bits)
    num_n, num_b = bits.shape
    out = np.zeros((num_n, (num_b + 7) // 8), np.uint8)
    for n in range(num_n):
        for j in range(num_b):
            if bits[n, j] > 0:
                out[n, j // 8] |= np.uint8(1 << (j % 8))
    return out


def lut_l2(query: np.ndarray, codebooks: np.ndarray) -> np.ndarray:
    """`LUT[q, m, k] = ||x_qm - c_mk||^2` by direct differences; query `[Q, D]` or `[Q, M, d]`."""
    codebooks = np.asarray(codebooks, np.float64)
    num_m, num_k, d = codebooks.shape
    query = np.asarray(query, np.float64).reshape(-1, num_m, d)
    out = np.zeros((query.shape[0], num_m, num_k))
    for q in range(query.shape[0]):
        for m in range(num_m):
            for k in range(num_k):
                diff = query[q, m] - codebooks[m, k]
                out[q, m, k] = float(np.sum(diff * diff))
    return out


def lut_progressive(query: np.ndarray, codebooks: np.ndarray, levels: int) -> np.ndarray:
    """`LUT[q, l, k] = <query_q, c_lk>` for `l < levels`, else 0; `[Q, D] -> [Q, L, K]`."""
    query = np.asarray(query, np.float64)
    codebooks = np.asarray(codebooks, np.float64)
    num_l, num_k, _ = codebooks.shape
    out = np.zeros((query.shape[0], num_l, num_k))
    for q in range(query.shape[0]):
        for lvl in range(levels):
            for k in range(num_k):
                out[q, lvl, k] = float(np.dot(query[q], codebooks[lvl, k]))
    return out


def adc_scores(lut: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """`scores[q, n] = sum_m lut[q, m, codes[n, m]]`, float64."""
    lut = np.asarray(lut, np.float64)
    codes = np.asarray(codes).astype(np.int64)
    out = np.zeros((lut.shape[0], codes.shape[0]))
    for q in range(lut.shape[0]):
        for n in range(codes.shape[0]):
            out[q, n] = sum(lut[q, m, codes[n, m]] for m in range(codes.shape[1]))
    return out


def decode_scores(query: np.ndarray, codebooks: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """`scores[q, n] = <query_q, concat_m codebooks[m, codes[n, m]]>`, float64."""
    codebooks = np.asarray(codebooks, np.float64)
    query = np.asarray(query, np.float64).reshape(np.shape(query)[0], -1)
    codes = np.asarray(codes).astype(np.int64)
    out = np.zeros((query.shape[0], codes.shape[0]))
    for n in range(codes.shape[0]):
        recon = np.concatenate([codebooks[m, codes[n, m]] for m in range(codes.shape[1])])
        for q in range(query.shape[0]):
            out[q, n] = float(np.dot(query[q], recon))
    return out


def topk(
    scores: np.ndarray, k: int, larger_is_better: bool = True, priority: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k per row, sorted by (score, tie priority); priority defaults to the index.

    Args:
      scores: `[Q, N]` scores.
      k: results per row.
      larger_is_better: descending (True) or ascending (False) scores.
      priority: `[N]` tie priority (lower wins); `None` means the database index.

    Returns:
      `(scores [Q, k], ids [Q, k] int64)`.
    """
    scores = np.asarray(scores, np.float64)
    num_q, num_n = scores.shape
    priority = np.arange(num_n) if priority is None else np.asarray(priority)
    sign = -1.0 if larger_is_better else 1.0
    out_scores = np.zeros((num_q, k))
    out_ids = np.zeros((num_q, k), np.int64)
    for q in range(num_q):
        order = sorted(range(num_n), key=lambda i: (sign * scores[q, i], priority[i]))
        out_ids[q] = order[:k]
        out_scores[q] = scores[q, order[:k]]
    return out_scores, out_ids


def adc_topk(
    lut: np.ndarray,
    codes: np.ndarray,
    k: int,
    larger_is_better: bool = True,
    priority: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force ADC search: `topk(adc_scores(lut, codes), k, ...)`."""
    return topk(adc_scores(lut, codes), k, larger_is_better, priority)


def pack_bits(bits: np.ndarray) -> np.ndarray:
    """Bit `j` of row `n` (value > 0) sets bit `j % 32` of word `j // 32`; uint32 `[N, W]`."""
    bits = np.asarray(bits)
    num_n, num_b = bits.shape
    words = (num_b + 31) // 32
    out = np.zeros((num_n, words), np.uint32)
    for n in range(num_n):
        for j in range(num_b):
            if bits[n, j] > 0:
                out[n, j // 32] |= np.uint32(1 << (j % 32))
    return out


def unpack_bits(packed: np.ndarray, num_bits: int) -> np.ndarray:
    """Inverse of `pack_bits`: uint8 `[N, num_bits]` in {0, 1}."""
    packed = np.asarray(packed)
    out = np.zeros((packed.shape[0], num_bits), np.uint8)
    for n in range(packed.shape[0]):
        for j in range(num_bits):
            out[n, j] = (int(packed[n, j // 32]) >> (j % 32)) & 1
    return out


def hamming_distances(q_bits: np.ndarray, db_bits: np.ndarray) -> np.ndarray:
    """Number of differing bits of `[Q, b]` and `[N, b]` codes (read as value > 0); int64."""
    q_bits = np.asarray(q_bits) > 0
    db_bits = np.asarray(db_bits) > 0
    out = np.zeros((q_bits.shape[0], db_bits.shape[0]), np.int64)
    for q in range(q_bits.shape[0]):
        for n in range(db_bits.shape[0]):
            out[q, n] = sum(int(q_bits[q, j] != db_bits[n, j]) for j in range(q_bits.shape[1]))
    return out


def hamming_topk(
    q_bits: np.ndarray, db_bits: np.ndarray, k: int, priority: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force Hamming ranking on unpacked bits; `(distances [Q, k], ids [Q, k])`."""
    dist, ids = topk(hamming_distances(q_bits, db_bits), k, False, priority)
    return dist.astype(np.int64), ids


def radius_search(
    q_bits: np.ndarray, db_bits: np.ndarray, radius: int, max_results: int
) -> tuple[np.ndarray, np.ndarray]:
    """Items within `radius`: exact counts and the `max_results` nearest (by distance, index).

    Returns:
      `(counts [Q], ids [Q, max_results])` padded with -1.
    """
    dist = hamming_distances(q_bits, db_bits)
    counts = np.zeros(dist.shape[0], np.int64)
    ids = -np.ones((dist.shape[0], max_results), np.int64)
    for q in range(dist.shape[0]):
        inside = [n for n in range(dist.shape[1]) if dist[q, n] <= radius]
        counts[q] = len(inside)
        inside = sorted(inside, key=lambda n: (dist[q, n], n))[:max_results]
        ids[q, : len(inside)] = inside
    return counts, ids


def legacy_compactbit_pack(signs: np.ndarray) -> np.ndarray:
    """The DDH / DCBH `compactbit` on `sign(x)`: byte `w = sum_i s_{8w+i} 2^i mod 256`."""
    signs = np.sign(np.asarray(signs))
    num_n, num_b = signs.shape
    out = np.zeros((num_n, (num_b + 7) // 8), np.uint8)
    for n in range(num_n):
        for w in range(out.shape[1]):
            value = 0
            for i, j in enumerate(range(8 * w, min(8 * w + 8, num_b))):
                value += int(signs[n, j]) * 2**i
            out[n, w] = value % 256
    return out


def pack_nibbles(codes: np.ndarray) -> np.ndarray:
    """Two 4-bit codes per byte: column `2j` in the low nibble, `2j + 1` in the high nibble."""
    codes = np.asarray(codes)
    num_n, num_m = codes.shape
    out = np.zeros((num_n, (num_m + 1) // 2), np.uint8)
    for n in range(num_n):
        for m in range(num_m):
            out[n, m // 2] |= np.uint8(int(codes[n, m]) << (4 * (m % 2)))
    return out


def unpack_nibbles(packed: np.ndarray, num_codebooks: int) -> np.ndarray:
    """Inverse of `pack_nibbles`: uint8 `[N, num_codebooks]`."""
    packed = np.asarray(packed)
    out = np.zeros((packed.shape[0], num_codebooks), np.uint8)
    for n in range(packed.shape[0]):
        for m in range(num_codebooks):
            out[n, m] = (int(packed[n, m // 2]) >> (4 * (m % 2))) & 0xF
    return out
