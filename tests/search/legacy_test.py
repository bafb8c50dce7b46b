"""`legacy_compactbit`: the DDH / DCBH `compactbit` packing bug, against a literal twin of the
reference loops, and the distance mismatch rates of METHODS.md Sec. 3.5."""

from collections import Counter
from fractions import Fraction

import numpy as np
import pytest

from dpq_jax.search import legacy

# METHODS.md Sec. 3.5 (a simulation): share of random pairs whose legacy distance is wrong.
METHODS_RATES = {12: 0.74, 36: 0.84, 48: 0.986}
# Exact values (derived below from the per-byte distortion).
EXACT_RATES = {12: Fraction(3, 4), 36: Fraction(27, 32), 48: 1 - Fraction(1, 64)}


def reference_compactbit(b):
    """Literal twin of `compactbit` + `convert` (xjcvip007/DDH `utils/compactbit.py`, the same
    code in youngkyunJang/DCBH `utils/RetrievalTest.py`), called as they call it, on +-1 signs.

    The references store the float sum `value` into the uint8 array, which wraps modulo 256
    (NumPy float-to-uint8 assignment on x86-64); here the sum is an exact int, taken mod 256.
    """
    n_samples, n_bits = b.shape
    n_words = int(np.ceil(float(n_bits) / 8))
    cb = np.zeros((n_samples, n_words), dtype=np.uint8)
    for i in range(n_samples):
        for j in range(n_words):
            temp = b[i, j * 8 : (j + 1) * 8]
            value = 0
            for k in range(len(temp)):
                value = value + (2**k) * int(temp[k])
            cb[i, j] = value % 256
    return cb


BIT_IN_CHAR = np.array([bin(v).count("1") for v in range(256)], np.uint16)


def reference_hamming_dist(b1, b2):
    """Twin of the references' `hammingDist` (byte lookup table of popcounts)."""
    dh = np.zeros((b1.shape[0], b2.shape[0]), dtype=np.uint16)
    for i in range(b1.shape[0]):
        for j in range(b2.shape[1]):
            dh[i, :] = dh[i, :] + BIT_IN_CHAR[b1[i, j] ^ b2[:, j]]
    return dh


def signs(bits):
    return 2 * bits.astype(np.int64) - 1


@pytest.mark.parametrize("num_bits", [1, 4, 7, 8, 12, 24, 36, 48, 50])
def test_matches_the_reference_loop(num_bits):
    bits = np.random.default_rng(num_bits).integers(0, 2, (40, num_bits), dtype=np.uint8)
    got = legacy.legacy_compactbit(bits)
    assert got.dtype == np.uint8 and got.shape == (40, -(-num_bits // 8))
    np.testing.assert_array_equal(got, reference_compactbit(signs(bits)))
    np.testing.assert_array_equal(legacy.legacy_compactbit(bits.astype(bool)), got)
    dist = legacy.legacy_hamming_distances(bits[:7], bits)
    np.testing.assert_array_equal(dist, reference_hamming_dist(got[:7], got))
    assert dist.max() <= legacy.legacy_num_bits(num_bits)


def test_full_bytes_store_2b_plus_1_and_partial_bytes_borrow():
    byte = np.arange(256)
    bits = ((byte[:, None] >> np.arange(8)) & 1).astype(np.uint8)  # LSB first
    np.testing.assert_array_equal(legacy.legacy_compactbit(bits)[:, 0], (2 * byte + 1) % 256)
    for n in range(1, 8):
        value = np.arange(2**n)
        bits = ((value[:, None] >> np.arange(n)) & 1).astype(np.uint8)
        want = (2 * value - (2**n - 1)) % 256
        np.testing.assert_array_equal(legacy.legacy_compactbit(bits)[:, 0], want)


def _byte_pairs(n):
    """All pairs of n-bit bytes: (true distance, legacy distance), each [4^n]."""
    value = np.arange(2**n)
    bits = ((value[:, None] >> np.arange(n)) & 1).astype(np.uint8)
    true = (bits[:, None, :] != bits[None, :, :]).sum(-1).ravel()
    return true, legacy.legacy_hamming_distances(bits, bits).ravel()


def test_a_full_byte_loses_exactly_its_bit_7():
    true, got = _byte_pairs(8)
    a, b = np.divmod(np.arange(256 * 256), 256)
    np.testing.assert_array_equal(got, true - ((a ^ b) >> 7))


def _exact_mismatch_rate(num_bits):
    """P(legacy != true distance) for uniform random codes: bytes are independent, so the
    per-byte distortions (legacy - true) add up; the distance is right iff the sum is 0."""
    total = Counter({0: Fraction(1)})
    sizes = [8] * (num_bits // 8) + ([num_bits % 8] if num_bits % 8 else [])
    for n in sizes:
        true, got = _byte_pairs(n)
        per_byte = Counter((got - true).tolist())
        step = Counter()
        for s, p in total.items():
            for d, c in per_byte.items():
                step[s + d] += p * Fraction(c, 4**n)
        total = step
    return 1 - total[0]


@pytest.mark.parametrize("num_bits", [12, 36, 48])
def test_mismatch_rates_of_methods_sec_3_5(num_bits):
    assert _exact_mismatch_rate(num_bits) == EXACT_RATES[num_bits]
    rng = np.random.default_rng(2024)
    x, y = (rng.integers(0, 2, (4000, num_bits), dtype=np.uint8) for _ in range(2))
    true = (x != y).sum(1)
    lx, ly = legacy.legacy_compactbit(x), legacy.legacy_compactbit(y)
    dist = np.unpackbits(lx ^ ly, axis=1).sum(1)  # legacy distance of each pair
    np.testing.assert_array_equal(
        dist[:200], np.diag(legacy.legacy_hamming_distances(x[:200], y[:200]))
    )
    np.testing.assert_array_equal(dist[:200], np.diag(reference_hamming_dist(lx[:200], ly[:200])))
    rate = float(np.mean(dist != true))
    # 4000 pairs: one standard error is <= 0.008, so 0.025 is about three of them.
    assert abs(rate - float(EXACT_RATES[num_bits])) < 0.025, rate
    assert abs(rate - METHODS_RATES[num_bits]) < 0.025, rate


def test_bad_input():
    with pytest.raises(ValueError, match=r"\[N, b\] 0/1 bits"):
        legacy.legacy_compactbit(np.ones(8))
    with pytest.raises(ValueError, match=r"\[N, b\] 0/1 bits"):
        legacy.legacy_compactbit(np.ones((3, 0)))
    with pytest.raises(ValueError, match="only 0 and 1"):
        legacy.legacy_compactbit(np.array([[1, -1, 1]]))
    with pytest.raises(ValueError, match="b = 8 bits but db_bits01 has 9"):
        legacy.legacy_hamming_distances(np.ones((1, 8)), np.ones((1, 9)))
