"""How a database's codes use the code space: codeword usage and entropy per codebook (PQ),
the balance of each bit (hashing) and the sizes of groups of identical codes.

Pure NumPy on host codes; each function states its shapes. Collapse shows here first: a PQ
codebook whose usage entropy is far below log2(K) bits wastes its codewords, a bit that is
almost always 0 or 1 carries no information, and a few large groups of identical codes mean
many database items cannot be told apart by the search.
"""

import numpy as np


def codeword_counts(codes, codebook_size: int) -> np.ndarray:
    """How many database items use each codeword of each codebook.

    Args:
      codes: `[N, M]` integer PQ codes in `[0, K)`.
      codebook_size: K.

    Returns:
      `[M, K]` int64 counts; each row sums to N.

    Raises:
      ValueError: codes not `[N, M]` or outside `[0, K)`.

    Example:
      >>> codeword_counts(np.array([[0, 1], [0, 2], [1, 2]]), 3).tolist()
      [[2, 1, 0], [0, 1, 2]]
    """
    codes = np.asarray(codes)
    if codes.ndim != 2:
        raise ValueError(f"PQ codes must be [N, M], got shape {codes.shape}.")
    if codes.size and (codes.min() < 0 or codes.max() >= codebook_size):
        raise ValueError(
            f"PQ codes must lie in [0, {codebook_size}), got range "
            f"[{codes.min()}, {codes.max()}]; pass the codebook size K of these codes."
        )
    counts = np.zeros((codes.shape[1], codebook_size), np.int64)
    for m in range(codes.shape[1]):
        counts[m] = np.bincount(codes[:, m].astype(np.int64), minlength=codebook_size)
    return counts


def usage_entropy(counts) -> np.ndarray:
    """Entropy in bits of each codebook's codeword distribution.

    Args:
      counts: `[M, K]` codeword counts (`codeword_counts`).

    Returns:
      `[M]` float64 entropies in `[0, log2 K]` (log2 K: every codeword used equally often;
      0: a single codeword; 0 for an empty database).

    Example:
      >>> usage_entropy(np.array([[1, 1, 1, 1], [4, 0, 0, 0]])).tolist()
      [2.0, 0.0]
    """
    counts = np.asarray(counts, np.float64)
    totals = counts.sum(axis=1, keepdims=True)
    p = np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)
    logs = np.log2(p, out=np.zeros_like(p), where=p > 0)
    return -(p * logs).sum(axis=1) + 0.0  # + 0.0 turns -0.0 into 0.0


def bit_balance(bits) -> np.ndarray:
    """The fraction of database items with each bit set.

    Args:
      bits: `[N, b]` 0/1 codes.

    Returns:
      `[b]` float64 fractions of ones (0.5 is balanced); zeros for an empty database.

    Example:
      >>> bit_balance(np.array([[1, 0], [1, 1], [1, 0], [1, 0]])).tolist()
      [1.0, 0.25]
    """
    bits = np.asarray(bits)
    if bits.ndim != 2:
        raise ValueError(f"Binary codes must be [N, b], got shape {bits.shape}.")
    if bits.shape[0] == 0:
        return np.zeros(bits.shape[1])
    return (bits != 0).mean(axis=0, dtype=np.float64)


def code_group_sizes(codes) -> np.ndarray:
    """Sizes of the groups of identical codes, largest first.

    Args:
      codes: `[N, ...]` codes of one head (PQ codes `[N, M]`, 0/1 bits `[N, b]`).

    Returns:
      `[G]` int64 group sizes in descending order: G distinct codes, summing to N; the first
      is the largest group (`dpq_jax.evaluators.retrieval.code_group_stats` gives G and it).

    Example:
      >>> code_group_sizes(np.array([[0, 1], [2, 3], [0, 1], [0, 1]])).tolist()
      [3, 1]
    """
    codes = np.asarray(codes)
    if codes.shape[0] == 0:
        return np.zeros(0, np.int64)
    rows = codes.reshape(codes.shape[0], -1)
    _, counts = np.unique(rows, axis=0, return_counts=True)
    return np.sort(counts.astype(np.int64))[::-1]
