"""Tests for dpq_jax.search.hamming against the NumPy oracles in dpq_jax.search.reference."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dpq_jax import parallel
from dpq_jax.search import adc, hamming
from dpq_jax.search import reference as ref


def _bits(rng, n, b, p_one=0.5):
    return (rng.random((n, b)) < p_one).astype(np.uint8)


@pytest.mark.parametrize("num_bits", [1, 31, 32, 33, 70])
def test_pack_unpack_round_trip_and_input_forms(num_bits):
    rng = np.random.default_rng(num_bits)
    bits = _bits(rng, 9, num_bits)
    packed = hamming.pack_bits(bits)
    assert packed.dtype == jnp.uint32 and packed.shape == (9, -(-num_bits // 32))
    np.testing.assert_array_equal(packed, ref.pack_bits(bits))
    # Booleans and +-1 signs pack to the same words.
    np.testing.assert_array_equal(hamming.pack_bits(bits.astype(bool)), packed)
    np.testing.assert_array_equal(hamming.pack_bits(2 * bits.astype(np.int8) - 1), packed)
    np.testing.assert_array_equal(hamming.unpack_bits(packed, num_bits), bits)
    np.testing.assert_array_equal(ref.unpack_bits(ref.pack_bits(bits), num_bits), bits)


def test_pack_bits_is_little_endian_within_words():
    bits = np.zeros((2, 40), np.uint8)
    bits[0, [0, 2]] = 1  # word 0 = 0b101
    bits[1, [31, 32]] = 1  # top bit of word 0, lowest bit of word 1
    np.testing.assert_array_equal(hamming.pack_bits(bits), [[5, 0], [2**31, 1]])


def test_hamming_packed_equals_sign_matmul_equals_reference():
    rng = np.random.default_rng(1)
    q_bits, db_bits = _bits(rng, 5, 45), _bits(rng, 37, 45)
    expected = ref.hamming_distances(q_bits, db_bits)
    packed = hamming.hamming_distances(hamming.pack_bits(q_bits), hamming.pack_bits(db_bits))
    signs = hamming.hamming_from_signs(2.0 * q_bits - 1, 2.0 * db_bits - 1)
    assert packed.dtype == jnp.int32 and signs.dtype == jnp.int32
    np.testing.assert_array_equal(packed, expected)
    np.testing.assert_array_equal(signs, expected)


def test_legacy_compactbit_differs_from_correct_packing_on_a_hand_case():
    x = -np.ones((1, 8), np.int8)
    x[0, 7] = 1  # correct byte 0b10000000
    y = -np.ones((1, 8), np.int8)  # correct byte 0
    # sum_i s_i 2^i: 128 - 127 = 1 and -255 = 1 (mod 256): the differing bit 7 vanishes.
    np.testing.assert_array_equal(hamming.legacy_compactbit_pack(x), [[1]])
    np.testing.assert_array_equal(hamming.legacy_compactbit_pack(y), [[1]])
    legacy = hamming.hamming_distances(
        hamming.legacy_compactbit_pack(x), hamming.legacy_compactbit_pack(y)
    )
    correct = hamming.hamming_distances(hamming.pack_bits(x), hamming.pack_bits(y))
    np.testing.assert_array_equal(legacy, [[0]])
    np.testing.assert_array_equal(correct, [[1]])


def test_legacy_compactbit_matches_reference_and_full_bytes_are_2b_plus_1():
    rng = np.random.default_rng(2)
    signs = 2 * _bits(rng, 20, 36).astype(np.int8) - 1  # 36 bits: a partial last byte
    legacy = np.asarray(hamming.legacy_compactbit_pack(signs))
    np.testing.assert_array_equal(legacy, ref.legacy_compactbit_pack(signs))
    # Raw real-valued outputs are read through sign(), as the references did.
    np.testing.assert_array_equal(hamming.legacy_compactbit_pack(0.3 * signs), legacy)
    correct_bytes = np.packbits(signs[:, :32] > 0, axis=1, bitorder="little").astype(int)
    np.testing.assert_array_equal(legacy[:, :4], (2 * correct_bytes + 1) % 256)


# (N, chunk_size, k, Q, query_chunk, bits)
_TOPK_CASES = [
    (600, 64, 25, 5, 2, 6),  # 7 distinct distances: heavy ties; chunk does not divide N
    (97, 16, 97, 3, 8, 40),  # k = N
    (130, 1000, 4, 2, 1, 33),  # one chunk larger than N, two words
]


@pytest.mark.parametrize("n,chunk,k,q,qchunk,num_bits", _TOPK_CASES)
def test_hamming_topk_equals_bruteforce(n, chunk, k, q, qchunk, num_bits):
    rng = np.random.default_rng(n)
    q_bits, db_bits = _bits(rng, q, num_bits), _bits(rng, n, num_bits)
    dist, ids = hamming.hamming_topk(
        hamming.pack_bits(q_bits),
        hamming.pack_bits(db_bits),
        k,
        chunk_size=chunk,
        query_chunk=qchunk,
    )
    ref_dist, ref_ids = ref.hamming_topk(q_bits, db_bits, k)
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_array_equal(dist, ref_dist)


def test_random_ties_follow_seeded_permutation():
    rng = np.random.default_rng(3)
    q_bits, db_bits = _bits(rng, 3, 4), _bits(rng, 50, 4)
    qp, dbp = hamming.pack_bits(q_bits), hamming.pack_bits(db_bits)
    _, stable = hamming.hamming_topk(qp, dbp, 20, chunk_size=16)
    _, shuffled = hamming.hamming_topk(qp, dbp, 20, chunk_size=16, ties="random", seed=11)
    _, again = hamming.hamming_topk(qp, dbp, 20, chunk_size=16, ties="random", seed=11)
    priority = np.argsort(np.asarray(adc.tie_permutation(50, 11)))
    np.testing.assert_array_equal(shuffled, ref.hamming_topk(q_bits, db_bits, 20, priority)[1])
    np.testing.assert_array_equal(shuffled, again)
    assert not np.array_equal(shuffled, stable)


@pytest.mark.parametrize("max_results", [None, 3])
def test_radius_search_equals_bruteforce(max_results):
    rng = np.random.default_rng(4)
    q_bits, db_bits = _bits(rng, 4, 10), _bits(rng, 70, 10)
    db_bits[5] = q_bits[0]  # at least one exact match
    counts, ids = hamming.radius_search(
        hamming.pack_bits(q_bits),
        hamming.pack_bits(db_bits),
        3,
        max_results=max_results,
        chunk_size=16,
    )
    width = 70 if max_results is None else max_results
    ref_counts, ref_ids = ref.radius_search(q_bits, db_bits, 3, width)
    np.testing.assert_array_equal(counts, ref_counts)
    np.testing.assert_array_equal(ids, ref_ids)
    assert counts[0] >= 1


@pytest.mark.parametrize("n,ties", [(63, "stable"), (65, "stable"), (65, "random")])
def test_sharded_equals_unsharded(cpu_devices, n, ties):
    mesh = parallel.make_mesh(devices=cpu_devices)
    rng = np.random.default_rng(n)
    q_bits, db_bits = _bits(rng, 3, 5), _bits(rng, n, 5)  # few bits: ties across devices
    qp, dbp = hamming.pack_bits(q_bits), hamming.pack_bits(db_bits)
    options = dict(chunk_size=4, query_chunk=2, ties=ties, seed=2)
    dist, ids = hamming.hamming_topk_sharded(qp, np.asarray(dbp), 30, mesh, **options)
    ref_dist, ref_ids = hamming.hamming_topk(qp, dbp, 30, **options)
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_array_equal(dist, ref_dist)
    if ties == "stable":
        np.testing.assert_array_equal(ids, ref.hamming_topk(q_bits, db_bits, 30)[1])


def test_database_already_split_over_devices_is_searched_in_place(cpu_devices):
    mesh = parallel.make_mesh(devices=cpu_devices)
    rng = np.random.default_rng(9)
    q_bits, db_bits = _bits(rng, 3, 5), _bits(rng, 64, 5)
    qp = hamming.pack_bits(q_bits)
    placed = jax.device_put(np.asarray(hamming.pack_bits(db_bits)), parallel.data_sharding(mesh))
    _, ids = hamming.hamming_topk(qp, placed, 30, chunk_size=4, query_chunk=2)
    np.testing.assert_array_equal(ids, ref.hamming_topk(q_bits, db_bits, 30)[1])
    counts, within = hamming.radius_search(qp, placed, 1, max_results=5, chunk_size=16)
    ref_counts, ref_within = ref.radius_search(q_bits, db_bits, 1, 5)
    np.testing.assert_array_equal(counts, ref_counts)
    np.testing.assert_array_equal(within, ref_within)


def test_bad_inputs_raise():
    packed = hamming.pack_bits(np.ones((4, 40), np.uint8))
    with pytest.raises(ValueError, match="unsigned"):
        hamming.hamming_distances(packed.astype(jnp.int32), packed)
    with pytest.raises(ValueError, match="same dtype and number of words"):
        hamming.hamming_distances(packed[:, :1], packed)
    with pytest.raises(ValueError, match="N = 4"):
        hamming.hamming_topk(packed, packed, 5)
    with pytest.raises(ValueError, match="empty"):
        hamming.hamming_topk(packed, packed[:0], 1)
    with pytest.raises(ValueError, match="radius"):
        hamming.radius_search(packed, packed, -1)
    with pytest.raises(ValueError, match="max_results"):
        hamming.radius_search(packed, packed, 1, max_results=0)
    with pytest.raises(ValueError, match="-1 and \\+1"):
        hamming.hamming_from_signs(np.zeros((1, 3)), np.ones((1, 3)))
    with pytest.raises(ValueError, match="num_bits"):
        hamming.unpack_bits(packed, 70)
    with pytest.raises(ValueError, match="2-D"):
        hamming.pack_bits(np.ones(3))
    with pytest.raises(ValueError, match="2-D"):
        hamming.legacy_compactbit_pack(np.ones(8))
