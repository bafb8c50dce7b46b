"""Tests for dpq_jax.search.kernels against the NumPy oracles in dpq_jax.search.reference."""

import jax.numpy as jnp
import numpy as np
import pytest

from dpq_jax.metrics import reference as metrics_ref
from dpq_jax.search import kernels
from dpq_jax.search import reference as ref


def _rng(seed=0):
    return np.random.default_rng(seed)


def _dyadic_lut(rng, q, m, k):
    """Multiples of 1/4 in [-2, 2]: every sum is exact in float32, and many scores tie."""
    return (rng.integers(-8, 9, size=(q, m, k)) / 4).astype(np.float32)


def _codes(rng, n, m, k):
    return rng.integers(0, k, size=(n, m)).astype(np.uint8)


def _bits(rng, n, b, p_one=0.5):
    return (rng.random((n, b)) < p_one).astype(np.uint8)


# ---------------------------------------------------------------------------------------------
# ADC kernels.
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kernel", ["gather", "onehot", "auto"])
def test_kernels_equal_bruteforce(kernel):
    rng = _rng(5)
    lut = _dyadic_lut(rng, 3, 4, 8)
    codes = _codes(rng, 37, 4, 8)
    np.testing.assert_array_equal(
        kernels.adc_scores(lut, codes, kernel=kernel), ref.adc_scores(lut, codes)
    )


def test_scores_decode_equals_bruteforce():
    rng = _rng(6)
    query = rng.standard_normal((3, 6)).astype(np.float32)
    codebooks = rng.standard_normal((2, 4, 3)).astype(np.float32)
    codes = _codes(rng, 11, 2, 4)
    np.testing.assert_allclose(
        kernels.scores_decode(query, codebooks, codes).T,  # database-major [C, Q]
        ref.decode_scores(query, codebooks, codes),
        rtol=1e-5,
        atol=1e-5,
    )


# (kernel, larger_is_better, N, chunk_size, k, Q, query_chunk, distinct codes per book)
@pytest.mark.parametrize("kernel", [kernels.scores_gather, kernels.scores_onehot])
def test_kernels_are_database_major(kernel):
    rng = _rng(7)
    lut = _dyadic_lut(rng, 3, 2, 5)
    codes = _codes(rng, 11, 2, 5)
    scores = kernel(jnp.asarray(lut), jnp.asarray(codes))
    assert scores.shape == (11, 3)
    np.testing.assert_array_equal(scores, ref.adc_scores(lut, codes).T)


def test_gather_sums_codebooks_in_order_like_the_metrics_oracle():
    # Large and small terms: the float32 sum depends on the order, which must be m = 0, 1, ...
    rng = _rng(8)
    lut = (rng.standard_normal((4, 6, 16)) * 10.0 ** rng.integers(-4, 5, (4, 6, 16))).astype(
        np.float32
    )
    codes = _codes(rng, 50, 6, 16)
    np.testing.assert_array_equal(
        kernels.adc_scores(lut, codes, kernel="gather"), metrics_ref.adc_scores(lut, codes)
    )


def test_unknown_kernel_raises():
    with pytest.raises(ValueError, match="kernel"):
        kernels.resolve_kernel("decode")


# ---------------------------------------------------------------------------------------------
# Bit packing and Hamming distances.
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("num_bits", [1, 31, 32, 33, 70])
def test_pack_unpack_round_trip_and_input_forms(num_bits):
    rng = np.random.default_rng(num_bits)
    bits = _bits(rng, 9, num_bits)
    packed = kernels.pack_bits(bits)
    assert packed.dtype == jnp.uint32 and packed.shape == (9, -(-num_bits // 32))
    np.testing.assert_array_equal(packed, ref.pack_bits(bits))
    # Booleans and +-1 signs pack to the same words.
    np.testing.assert_array_equal(kernels.pack_bits(bits.astype(bool)), packed)
    np.testing.assert_array_equal(kernels.pack_bits(2 * bits.astype(np.int8) - 1), packed)
    np.testing.assert_array_equal(kernels.unpack_bits(packed, num_bits), bits)
    np.testing.assert_array_equal(ref.unpack_bits(ref.pack_bits(bits), num_bits), bits)


def test_pack_bits_is_little_endian_within_words():
    bits = np.zeros((2, 40), np.uint8)
    bits[0, [0, 2]] = 1  # word 0 = 0b101
    bits[1, [31, 32]] = 1  # top bit of word 0, lowest bit of word 1
    np.testing.assert_array_equal(kernels.pack_bits(bits), [[5, 0], [2**31, 1]])


def test_hamming_packed_equals_sign_matmul_equals_reference():
    rng = np.random.default_rng(1)
    q_bits, db_bits = _bits(rng, 5, 45), _bits(rng, 37, 45)
    expected = ref.hamming_distances(q_bits, db_bits)
    packed = kernels.hamming_distances(kernels.pack_bits(q_bits), kernels.pack_bits(db_bits))
    signs = kernels.hamming_from_signs(2.0 * q_bits - 1, 2.0 * db_bits - 1)
    assert packed.dtype == jnp.int32 and signs.dtype == jnp.int32
    np.testing.assert_array_equal(packed, expected)
    np.testing.assert_array_equal(signs, expected)


def test_legacy_compactbit_differs_from_correct_packing_on_a_hand_case():
    x = -np.ones((1, 8), np.int8)
    x[0, 7] = 1  # correct byte 0b10000000
    y = -np.ones((1, 8), np.int8)  # correct byte 0
    # sum_i s_i 2^i: 128 - 127 = 1 and -255 = 1 (mod 256): the differing bit 7 vanishes.
    np.testing.assert_array_equal(kernels.legacy_compactbit_pack(x), [[1]])
    np.testing.assert_array_equal(kernels.legacy_compactbit_pack(y), [[1]])
    legacy = kernels.hamming_distances(
        kernels.legacy_compactbit_pack(x), kernels.legacy_compactbit_pack(y)
    )
    correct = kernels.hamming_distances(kernels.pack_bits(x), kernels.pack_bits(y))
    np.testing.assert_array_equal(legacy, [[0]])
    np.testing.assert_array_equal(correct, [[1]])


def test_legacy_compactbit_matches_reference_and_full_bytes_are_2b_plus_1():
    rng = np.random.default_rng(2)
    signs = 2 * _bits(rng, 20, 36).astype(np.int8) - 1  # 36 bits: a partial last byte
    legacy = np.asarray(kernels.legacy_compactbit_pack(signs))
    np.testing.assert_array_equal(legacy, ref.legacy_compactbit_pack(signs))
    # Raw real-valued outputs are read through sign(), as the references did.
    np.testing.assert_array_equal(kernels.legacy_compactbit_pack(0.3 * signs), legacy)
    correct_bytes = np.packbits(signs[:, :32] > 0, axis=1, bitorder="little").astype(int)
    np.testing.assert_array_equal(legacy[:, :4], (2 * correct_bytes + 1) % 256)


@pytest.mark.parametrize("num_bits", [3, 32, 45])
def test_signs_and_bits_pack_alike_in_search_and_metrics_oracles(num_bits):
    # Bit set iff value > 0: +1 and 1 set it, -1 and 0 do not; both oracles agree.
    bits = _bits(_rng(num_bits), 6, num_bits)
    signs = 2 * bits.astype(np.int8) - 1
    want = ref.pack_bits(bits)
    for x in (bits, signs, bits.astype(bool), signs.astype(np.float32)):
        np.testing.assert_array_equal(kernels.pack_bits(x), want)
        np.testing.assert_array_equal(ref.pack_bits(x), want)
        np.testing.assert_array_equal(metrics_ref.pack_bits(x), want)


def test_popcount_distances_are_database_major():
    rng = _rng(3)
    q_bits, db_bits = _bits(rng, 4, 70), _bits(rng, 9, 70)
    dist = kernels.popcount_distances(kernels.pack_bits(q_bits), kernels.pack_bits(db_bits))
    assert dist.shape == (9, 4)
    np.testing.assert_array_equal(dist, ref.hamming_distances(q_bits, db_bits).T)


def test_bad_inputs_raise():
    packed = kernels.pack_bits(np.ones((4, 40), np.uint8))
    with pytest.raises(ValueError, match="unsigned"):
        kernels.hamming_distances(packed.astype(jnp.int32), packed)
    with pytest.raises(ValueError, match="same dtype and number of words"):
        kernels.hamming_distances(packed[:, :1], packed)
    with pytest.raises(ValueError, match="-1 and \\+1"):
        kernels.hamming_from_signs(np.zeros((1, 3)), np.ones((1, 3)))
    with pytest.raises(ValueError, match="num_bits"):
        kernels.unpack_bits(packed, 70)
    with pytest.raises(ValueError, match="2-D"):
        kernels.pack_bits(np.ones(3))
    with pytest.raises(ValueError, match="2-D"):
        kernels.legacy_compactbit_pack(np.ones(8))
