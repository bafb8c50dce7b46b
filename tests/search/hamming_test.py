"""Tests for dpq_jax.search.hamming against the NumPy oracles in dpq_jax.search.reference."""

import jax
import numpy as np
import pytest
from jax.sharding import Mesh

from dpq_jax import parallel
from dpq_jax.search import hamming, kernels, topk
from dpq_jax.search import reference as ref


def _bits(rng, n, b, p_one=0.5):
    return (rng.random((n, b)) < p_one).astype(np.uint8)


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
        kernels.pack_bits(q_bits),
        kernels.pack_bits(db_bits),
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
    qp, dbp = kernels.pack_bits(q_bits), kernels.pack_bits(db_bits)
    _, stable = hamming.hamming_topk(qp, dbp, 20, chunk_size=16)
    _, shuffled = hamming.hamming_topk(qp, dbp, 20, chunk_size=16, ties="random", seed=11)
    _, again = hamming.hamming_topk(qp, dbp, 20, chunk_size=16, ties="random", seed=11)
    priority = np.argsort(topk.tie_permutation(50, 11))
    np.testing.assert_array_equal(shuffled, ref.hamming_topk(q_bits, db_bits, 20, priority)[1])
    np.testing.assert_array_equal(shuffled, again)
    assert not np.array_equal(shuffled, stable)


@pytest.mark.parametrize("max_results", [None, 3])
def test_radius_search_equals_bruteforce(max_results):
    rng = np.random.default_rng(4)
    q_bits, db_bits = _bits(rng, 4, 10), _bits(rng, 70, 10)
    db_bits[5] = q_bits[0]  # at least one exact match
    counts, ids = hamming.radius_search(
        kernels.pack_bits(q_bits),
        kernels.pack_bits(db_bits),
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
    qp, dbp = kernels.pack_bits(q_bits), kernels.pack_bits(db_bits)
    options = dict(chunk_size=4, query_chunk=2, ties=ties, seed=2)
    dist, ids = hamming.hamming_topk(qp, np.asarray(dbp), 30, mesh=mesh, **options)
    ref_dist, ref_ids = hamming.hamming_topk(qp, dbp, 30, **options)
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_array_equal(dist, ref_dist)
    if ties == "stable":
        np.testing.assert_array_equal(ids, ref.hamming_topk(q_bits, db_bits, 30)[1])


def test_database_already_split_over_devices_is_searched_in_place(cpu_devices):
    mesh = parallel.make_mesh(devices=cpu_devices)
    rng = np.random.default_rng(9)
    q_bits, db_bits = _bits(rng, 3, 5), _bits(rng, 64, 5)
    qp = kernels.pack_bits(q_bits)
    placed = jax.device_put(np.asarray(kernels.pack_bits(db_bits)), parallel.data_sharding(mesh))
    _, ids = hamming.hamming_topk(qp, placed, 30, chunk_size=4, query_chunk=2)
    np.testing.assert_array_equal(ids, ref.hamming_topk(q_bits, db_bits, 30)[1])
    counts, within = hamming.radius_search(qp, placed, 1, max_results=5, chunk_size=16)
    ref_counts, ref_within = ref.radius_search(q_bits, db_bits, 1, 5)
    np.testing.assert_array_equal(counts, ref_counts)
    np.testing.assert_array_equal(within, ref_within)


def test_bad_inputs_raise():
    packed = kernels.pack_bits(np.ones((4, 40), np.uint8))
    with pytest.raises(ValueError, match="N = 4"):
        hamming.hamming_topk(packed, packed, 5)
    with pytest.raises(ValueError, match="empty"):
        hamming.hamming_topk(packed, packed[:0], 1)
    with pytest.raises(ValueError, match="radius"):
        hamming.radius_search(packed, packed, -1)
    with pytest.raises(ValueError, match="max_results"):
        hamming.radius_search(packed, packed, 1, max_results=0)
    with pytest.raises(ValueError, match="data"):
        hamming.hamming_topk(packed, packed, 1, mesh=Mesh(np.asarray(jax.devices()), ("model",)))
