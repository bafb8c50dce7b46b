"""The `compactbit` packing of the DDH and DCBH reference codes, emulated for parity only.

Both references (xjcvip007/DDH `utils/compactbit.py`, youngkyunJang/DCBH
`utils/RetrievalTest.py`) pack their sign codes with a `compactbit` written for {0, 1} bits:
byte `w` of a code is `sum_j value[8w + j] * 2^j` over its (at most 8) bits, least significant
bit first, stored in a uint8. They call it on {-1, +1} signs, so the sum lies in [-255, 255]
and the store wraps modulo 256 (a NumPy float-to-uint8 assignment, checked on x86-64). For a
full byte with correct 0/1 value `B` the stored byte is `2B - 255 = 2B + 1 (mod 256)`: bit 7
of `B` is lost, bit 0 is always set. A partial byte of `n < 8` bits stores
`2B - (2^n - 1) (mod 256)`, whose borrows set the high bits when the top bit is 0. Their
Hamming distance is the popcount of the XOR of these bytes, which is wrong for most pairs of
random codes: 75 % at 12 bits, 84.4 % at 36 and 98.4 % at 48 (exactly `3/4`, `27/32` and
`1 - 2^-6`; METHODS.md Sec. 3.5).

Use it only to reproduce published DDH / DCBH numbers: `config_lib.retrieval_eval(...,
hamming_packing="legacy_compactbit")`, recorded in the evaluator's conventions. The correct
packing is `kernels.pack_bits`. The packing kernel itself is `kernels.legacy_compactbit_pack`
(which takes signs); this module adapts it to the 0/1 bits `HashingMethod` stores.
"""

import numpy as np

from dpq_jax.search import kernels

HAMMING_PACKINGS = ("bits", "legacy_compactbit")  # "bits": the correct 0/1 packing (default)


def _check_bits(bits01, name: str = "bits01") -> np.ndarray:
    bits = np.asarray(bits01)
    if bits.ndim != 2 or bits.shape[1] == 0:
        raise ValueError(f"{name} must be [N, b] 0/1 bits with b >= 1, got shape {bits.shape}.")
    if not np.all((bits == 0) | (bits == 1)):
        raise ValueError(f"{name} must hold only 0 and 1 (map signs s to s > 0 first).")
    return bits


def legacy_compactbit(bits01) -> np.ndarray:
    """The bytes DDH / DCBH store for `bits01`: `compactbit` applied to `2 * bits01 - 1`.

    Args:
      bits01: `[N, b]` 0/1 bits (any integer or bool dtype), as `HashingMethod` stores them;
        bit `j` is +1 in the reference codes when it is 1 and -1 when it is 0.

    Returns:
      `[N, ceil(b / 8)]` uint8; byte `w` is `sum_j (2 bits01[:, 8w + j] - 1) 2^j mod 256`
      over the bits `j < 8` with `8w + j < b`. Compare them with the popcount of their XOR
      (`legacy_hamming_distances`, `kernels.hamming_distances` or
      `metrics.retrieval.hamming_source` with `num_bits = legacy_num_bits(b)`).

    Raises:
      ValueError: not 2-D, no columns, or a value other than 0 and 1.

    Examples:
      >>> legacy_compactbit(np.array([[1, 0, 1, 1, 0, 0, 0, 0]]))  # B = 13: 2B + 1 = 27
      array([[27]], dtype=uint8)
      >>> legacy_compactbit(np.array([[0, 0, 0, 0], [1, 1, 1, 1]]))  # -15 mod 256 and 15
      array([[241],
             [ 15]], dtype=uint8)
    """
    bits = _check_bits(bits01)
    return np.asarray(kernels.legacy_compactbit_pack(2 * bits.astype(np.int32) - 1))


def legacy_num_bits(num_bits: int) -> int:
    """Distances between legacy bytes lie in `0..8 * ceil(b / 8)` (borrows set padding bits).

    Example:
      >>> legacy_num_bits(12), legacy_num_bits(48)
      (16, 48)
    """
    return 8 * -(-int(num_bits) // 8)


def legacy_hamming_distances(q_bits01, db_bits01) -> np.ndarray:
    """`[Q, N]` int32 Hamming distances as DDH / DCBH computed them (popcount of XOR of bytes).

    Args:
      q_bits01: `[Q, b]` 0/1 query bits.
      db_bits01: `[N, b]` 0/1 database bits.

    Returns:
      `[Q, N]` int32 legacy distances, in `0..legacy_num_bits(b)`.

    Raises:
      ValueError: bad bits, or different code lengths.

    Example:
      >>> legacy_hamming_distances(np.array([[0] * 8]), np.array([[0] * 7 + [1]])).tolist()
      [[0]]
    """
    q, db = _check_bits(q_bits01, "q_bits01"), _check_bits(db_bits01, "db_bits01")
    if q.shape[1] != db.shape[1]:
        raise ValueError(f"q_bits01 has b = {q.shape[1]} bits but db_bits01 has {db.shape[1]}.")
    return np.asarray(kernels.hamming_distances(legacy_compactbit(q), legacy_compactbit(db)))
