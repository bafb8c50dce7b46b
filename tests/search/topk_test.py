"""Tests for dpq_jax.search.topk, the chunked / sharded exact top-k engine."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dpq_jax import parallel
from dpq_jax.metrics import reference as metrics_ref
from dpq_jax.search import kernels, topk
from dpq_jax.search import reference as ref


def _rng(seed=0):
    return np.random.default_rng(seed)


def _dyadic_lut(rng, q, m, k):
    """Multiples of 1/4 in [-2, 2]: every sum is exact in float32, and many scores tie."""
    return (rng.integers(-8, 9, size=(q, m, k)) / 4).astype(np.float32)


def _codes(rng, n, m, k):
    return rng.integers(0, k, size=(n, m)).astype(np.uint8)


def _neg_distances(q_packed, db_packed):  # a module-level key function: compiled once
    return -kernels.popcount_distances(q_packed, db_packed)


@pytest.mark.parametrize("block_size", [1, 3, 7, 64])
def test_block_selection_is_exact_with_heavy_ties(block_size):
    # Few distinct scores, so many blocks share their maximum and the k-th score: the selected
    # blocks must still hold the lowest-index items among ties.
    rng = _rng(20 + block_size)
    lut = _dyadic_lut(rng, 5, 2, 3)
    codes = _codes(rng, 101, 2, 3)  # 101 rows: chunk and block padding both masked
    for k in (1, 12, 40):
        keys, ids = jax.jit(
            lambda lut, codes, k=k: topk.chunked_topk(
                kernels.scores_gather,
                lut,
                codes,
                k,
                chunk_size=21,
                query_chunk=2,
                block_size=block_size,
            )
        )(lut, codes)
        ref_scores, ref_ids = ref.adc_topk(lut, codes, k)
        np.testing.assert_array_equal(ids, ref_ids)
        np.testing.assert_array_equal(keys, ref_scores)


def test_selection_block_balances_maxima_and_candidates():
    assert topk.selection_block(1_000_000, 100, 16384) == 128  # sqrt(10^4) = 100 -> 128
    assert topk.selection_block(40, 5, 40) == 4
    assert topk.selection_block(10, 10, 10) == 1
    assert topk.selection_block(10**8, 1, 4096) == 4096  # never more than a chunk


@pytest.mark.parametrize("ties", ["stable", "random"])
@pytest.mark.parametrize("n,k", [(61, 61), (67, 9)])
def test_mesh_and_single_device_give_identical_ids(cpu_devices, ties, n, k):
    # Heavy ties across device boundaries; N not divisible by the 8 devices or the chunk.
    mesh = parallel.make_mesh(devices=cpu_devices)
    rng = _rng(n + k)
    lut = _dyadic_lut(rng, 5, 2, 3)
    codes = _codes(rng, n, 2, 3)
    options = dict(k=k, chunk_size=4, query_chunk=2, ties=ties, seed=7)
    keys, ids = topk.topk(kernels.scores_gather, lut, codes, **options)
    keys_mesh, ids_mesh = topk.topk(kernels.scores_gather, lut, codes, mesh=mesh, **options)
    np.testing.assert_array_equal(ids_mesh, ids)
    np.testing.assert_array_equal(keys_mesh, keys)
    priority = None if ties == "stable" else np.argsort(topk.tie_permutation(n, 7))
    ref_keys, ref_ids = ref.adc_topk(lut, codes, k, priority=priority)
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_array_equal(keys, ref_keys)


def test_integer_keys_are_ranked_exactly(cpu_devices):
    # Hamming keys are int32; the engine ranks them as (exact) float32.
    rng = _rng(3)
    q_bits, db_bits = rng.integers(0, 2, (3, 6)), rng.integers(0, 2, (45, 6))
    qp, dbp = kernels.pack_bits(q_bits), kernels.pack_bits(db_bits)
    mesh = parallel.make_mesh(devices=cpu_devices)
    for m in (None, mesh):
        keys, ids = topk.topk(_neg_distances, qp, dbp, k=20, chunk_size=8, mesh=m)
        ref_dist, ref_ids = ref.hamming_topk(q_bits, db_bits, 20)
        np.testing.assert_array_equal(ids, ref_ids)
        np.testing.assert_array_equal(-np.asarray(keys), ref_dist)


def test_tie_permutation_is_the_metrics_oracle_order():
    # The metrics oracle ranks random ties by position in np.random.default_rng(seed).
    for n, seed in ((1, 0), (10, 3), (257, 12345)):
        perm = topk.tie_permutation(n, seed)
        assert perm.dtype == np.int32
        np.testing.assert_array_equal(np.sort(perm), np.arange(n))
        keys = metrics_ref.tie_keys(n, "random", seed)
        np.testing.assert_array_equal(np.argsort(keys), perm)


def test_key_function_must_be_database_major():
    lut = jnp.zeros((2, 1, 2))
    codes = jnp.zeros((5, 1), jnp.uint8)
    query_major = jax.tree_util.Partial(lambda q, c: kernels.scores_gather(q, c).T)
    with pytest.raises(ValueError, match=r"\[c, q\]"):
        topk.topk(query_major, lut, codes, k=1)


def test_bad_options_raise():
    lut, codes = jnp.zeros((1, 1, 2)), jnp.zeros((4, 1), jnp.uint8)
    with pytest.raises(ValueError, match="N = 4"):
        topk.topk(kernels.scores_gather, lut, codes, k=5)
    with pytest.raises(ValueError, match="ties"):
        topk.topk(kernels.scores_gather, lut, codes, k=1, ties="expected")
    with pytest.raises(ValueError, match="seed"):
        topk.tie_permutation(4, -1)
    with pytest.raises(ValueError, match="query_chunk"):
        topk.topk(kernels.scores_gather, lut, codes, k=1, query_chunk=0)
