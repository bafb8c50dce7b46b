"""How a database's codes use the code space: codeword usage and entropy per codebook (PQ),
the balance of each bit (hashing) and the sizes of groups of identical codes.

Pure NumPy on host codes; each function states its shapes. This is the one copy of these
computations: the retrieval evaluator (so `report.json`) and `analysis.evaluation` call it.
Collapse shows here first: a PQ codebook whose usage entropy is far below log2(K) bits wastes
its codewords, a bit that is almost always 0 or 1 carries no information, and a few large
groups of identical codes mean many database items cannot be told apart by the search.
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
      is the largest group (`code_group_stats` gives G and it).

    Example:
      >>> code_group_sizes(np.array([[0, 1], [2, 3], [0, 1], [0, 1]])).tolist()
      [3, 1]
    """
    codes = np.asarray(codes)
    if codes.shape[0] == 0:
        return np.zeros(0, np.int64)
    rows = np.ascontiguousarray(codes.reshape(codes.shape[0], -1))
    if rows.shape[1] == 0:
        return np.array([rows.shape[0]], np.int64)
    # One opaque item per row: np.unique then sorts the rows' bytes (faster than axis=0).
    keys = rows.view(np.dtype((np.void, rows.dtype.itemsize * rows.shape[1]))).ravel()
    _, counts = np.unique(keys, return_counts=True)
    return np.sort(counts.astype(np.int64))[::-1]


def code_group_stats(codes) -> tuple[int, int]:
    """Groups of identical codes: how many distinct codes, and the size of the largest group.

    Args:
      codes: `[N, ...]` stored codes of one head (PQ codes `[N, M]`, 0/1 bits `[N, b]`).

    Returns:
      `(distinct, largest)`: the number of distinct rows and the largest number of identical
      rows; `(0, 0)` for an empty database.

    Example:
      >>> code_group_stats(np.array([[0, 1], [2, 3], [0, 1]], np.uint8))
      (2, 2)
    """
    sizes = code_group_sizes(codes)
    return int(sizes.size), int(sizes[0]) if sizes.size else 0


def code_usage(codes, code_type: str, codebook_size: int | None = None) -> dict:
    """How one head's database codes use the code space, as JSON-ready per-codebook lists.

    Args:
      codes: `[N, M]` PQ codes in `[0, K)` (`code_type="pq"`) or `[N, b]` 0/1 bits
        (`code_type="binary"`).
      code_type: `"pq"` or `"binary"`.
      codebook_size: K of PQ codes (None: the largest code + 1, a lower bound).

    Returns:
      PQ: `codebook_size` K, `used_codewords` (`[M]` ints: codewords used by at least one
      item), `usage_entropy_bits` (`[M]` floats, `usage_entropy`, at most
      `max_entropy_bits` = log2 K). Binary: `ones_fraction` (`[b]` floats, `bit_balance`).

    Raises:
      ValueError: an unknown code type, or codes of the wrong shape or range.

    Example:
      >>> usage = code_usage(np.array([[0, 1], [0, 3], [1, 3], [0, 3]]), "pq", 4)
      >>> usage["used_codewords"], [round(h, 4) for h in usage["usage_entropy_bits"]]
      ([2, 2], [0.8113, 0.8113])
      >>> code_usage(np.array([[1, 0], [1, 1]]), "binary")
      {'ones_fraction': [1.0, 0.5]}
    """
    if code_type == "binary":
        return {"ones_fraction": [float(f) for f in bit_balance(codes)]}
    if code_type != "pq":
        raise ValueError(f"code_type must be 'pq' or 'binary', got {code_type!r}.")
    codes = np.asarray(codes)
    if codebook_size is None:
        codebook_size = int(codes.max()) + 1 if codes.size else 1
    counts = codeword_counts(codes, codebook_size)
    return {
        "codebook_size": int(codebook_size),
        "max_entropy_bits": float(np.log2(codebook_size)),
        "used_codewords": [int(n) for n in (counts > 0).sum(axis=1)],
        "usage_entropy_bits": [float(h) for h in usage_entropy(counts)],
    }
