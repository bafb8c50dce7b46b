"""Tests for dpq_jax.search.adc against the NumPy oracles in dpq_jax.search.reference."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh

from dpq_jax import parallel
from dpq_jax.search import adc, kernels, topk
from dpq_jax.search import reference as ref


def _rng(seed=0):
    return np.random.default_rng(seed)


def _dyadic_lut(rng, q, m, k):
    """Multiples of 1/4 in [-2, 2]: every sum is exact in float32, and many scores tie."""
    return (rng.integers(-8, 9, size=(q, m, k)) / 4).astype(np.float32)


def _codes(rng, n, m, k, distinct=None):
    """uint8 codes; `distinct` limits the values used per codebook (heavy ties)."""
    return rng.integers(0, distinct or k, size=(n, m)).astype(np.uint8)


# ---------------------------------------------------------------------------------------------
# Lookup tables.
# ---------------------------------------------------------------------------------------------


def test_lut_inner_product_matches_reference():
    rng = _rng(1)
    query = rng.standard_normal((3, 6)).astype(np.float32)
    codebooks = rng.standard_normal((2, 4, 3)).astype(np.float32)
    expected = ref.lut_inner_product(query, codebooks)
    np.testing.assert_allclose(adc.lut_inner_product(query, codebooks), expected, rtol=1e-5)
    # Pre-split [Q, M, d] queries give the same table.
    np.testing.assert_allclose(
        adc.lut_inner_product(query.reshape(3, 2, 3), codebooks), expected, rtol=1e-5
    )


def test_lut_soft_quantized_matches_reference_and_is_probs_for_orthonormal_codebooks():
    rng = _rng(2)
    m, k, d = 2, 4, 6
    probs = np.asarray(jax.nn.softmax(rng.standard_normal((3, m, k)), axis=-1), np.float32)
    codebooks = rng.standard_normal((m, k, d)).astype(np.float32)
    np.testing.assert_allclose(
        adc.lut_soft_quantized(probs, codebooks),
        ref.lut_soft_quantized(probs, codebooks),
        rtol=1e-5,
        atol=1e-6,
    )
    # Orthonormal codewords within each codebook (OPQN): <sum_j p_j c_j, c_k> = p_k.
    ortho = np.stack([np.linalg.qr(rng.standard_normal((d, d)))[0][:, :k].T for _ in range(m)])
    np.testing.assert_allclose(adc.lut_soft_quantized(probs, ortho), probs, atol=1e-6)


def test_soft_quantized_vectors_match_reference_and_give_the_soft_table():
    rng = _rng(12)
    m, k, d = 3, 4, 2
    probs = np.asarray(jax.nn.softmax(rng.standard_normal((5, m, k)), axis=-1), np.float32)
    codebooks = rng.standard_normal((m, k, d)).astype(np.float32)
    soft = adc.soft_quantized_vectors(probs, codebooks)
    assert soft.shape == (5, m * d)
    np.testing.assert_allclose(soft, ref.soft_quantized_vectors(probs, codebooks), atol=1e-6)
    # The inner-product table of s is the soft-quantized table (what FAISS computes from s).
    np.testing.assert_allclose(
        adc.lut_inner_product(soft, codebooks),
        ref.lut_soft_quantized(probs, codebooks),
        rtol=1e-5,
        atol=1e-6,
    )
    with pytest.raises(ValueError, match="must agree"):
        adc.soft_quantized_vectors(probs[:, :2], codebooks)


def test_lut_l2_matches_reference_for_raw_and_split_queries():
    rng = _rng(3)
    query = rng.standard_normal((3, 6)).astype(np.float32)
    codebooks = rng.standard_normal((2, 5, 3)).astype(np.float32)
    expected = ref.lut_l2(query, codebooks)
    np.testing.assert_allclose(adc.lut_l2(query, codebooks), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        adc.lut_l2(query.reshape(3, 2, 3), codebooks), expected, rtol=1e-5, atol=1e-5
    )


def test_lut_progressive_scores_equal_partial_reconstruction():
    rng = _rng(4)
    num_l, k, dim = 3, 4, 5
    query = rng.standard_normal((2, dim)).astype(np.float32)
    codebooks = rng.standard_normal((num_l, k, dim)).astype(np.float32)
    codes = _codes(rng, 7, num_l, k)
    for levels in (1, 2, 3):
        lut = adc.lut_progressive(query, codebooks, levels)
        np.testing.assert_allclose(lut, ref.lut_progressive(query, codebooks, levels), rtol=1e-5)
        # The l-level score equals the inner product with the partial reconstruction.
        recon = np.stack(
            [
                sum(codebooks[i, codes[n, i]].astype(np.float64) for i in range(levels))
                for n in range(7)
            ]
        )
        np.testing.assert_allclose(
            kernels.adc_scores(lut, codes), query.astype(np.float64) @ recon.T, rtol=1e-5, atol=1e-5
        )
    with pytest.raises(ValueError, match="levels"):
        adc.lut_progressive(query, codebooks, 4)


# ---------------------------------------------------------------------------------------------
# Top-k.
# ---------------------------------------------------------------------------------------------


_TOPK_CASES = [
    ("gather", True, 600, 64, 10, 5, 2, 2),  # heavy ties, chunk does not divide N, Q % 2 != 0
    ("onehot", True, 101, 16, 101, 3, 8, 2),  # k = N, query chunk larger than Q
    ("gather", False, 97, 32, 97, 4, 3, None),  # ascending (L2-style), k = N
    ("onehot", False, 250, 1000, 7, 2, 1, 3),  # one chunk larger than N
    ("gather", True, 5, 2, 5, 1, 1, 1),  # every item identical: pure index order
]


@pytest.mark.parametrize("kernel,larger,n,chunk,k,q,qchunk,distinct", _TOPK_CASES)
def test_adc_topk_equals_bruteforce(kernel, larger, n, chunk, k, q, qchunk, distinct):
    rng = _rng(n)
    lut = _dyadic_lut(rng, q, 3, 8)
    codes = _codes(rng, n, 3, 8, distinct)
    scores, ids = adc.adc_topk(
        lut,
        codes,
        k,
        chunk_size=chunk,
        query_chunk=qchunk,
        larger_is_better=larger,
        kernel=kernel,
    )
    ref_scores, ref_ids = ref.adc_topk(lut, codes, k, larger_is_better=larger)
    assert scores.dtype == jnp.float32 and ids.dtype == jnp.int32
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_array_equal(scores, ref_scores)


def test_adc_topk_float_lut_matches_bruteforce():
    rng = _rng(7)
    lut = rng.standard_normal((4, 4, 16)).astype(np.float32)
    codes = _codes(rng, 300, 4, 16)
    scores, ids = adc.adc_topk(lut, codes, 20, chunk_size=64)
    ref_scores, ref_ids = ref.adc_topk(lut, codes, 20)
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_allclose(scores, ref_scores, rtol=1e-5)


def test_negative_zero_ties_by_index():
    # lax.top_k orders -0.0 below +0.0; the search must treat them as one value.
    lut = np.array([[[0.0, -0.0]]], np.float32)
    codes = np.array([[1], [0], [1], [0]], np.uint8)
    for larger in (True, False):
        _, ids = adc.adc_topk(lut, codes, 4, larger_is_better=larger)
        np.testing.assert_array_equal(ids, [[0, 1, 2, 3]])


def test_random_ties_follow_seeded_permutation():
    rng = _rng(8)
    lut = _dyadic_lut(rng, 3, 2, 4)
    codes = _codes(rng, 40, 2, 4, distinct=2)
    _, stable = adc.adc_topk(lut, codes, 15)
    _, shuffled = adc.adc_topk(lut, codes, 15, ties="random", seed=3)
    _, again = adc.adc_topk(lut, codes, 15, ties="random", seed=3)
    perm = topk.tie_permutation(40, 3)
    np.testing.assert_array_equal(np.sort(perm), np.arange(40))
    _, ref_ids = ref.adc_topk(lut, codes, 15, priority=np.argsort(perm))
    np.testing.assert_array_equal(shuffled, ref_ids)
    np.testing.assert_array_equal(shuffled, again)
    assert not np.array_equal(shuffled, stable)  # with this many ties the order must change


def test_one_compiled_kernel_serves_all_chunks():
    rng = _rng(9)
    lut = _dyadic_lut(rng, 2, 2, 4)
    codes = _codes(rng, 500, 2, 4)  # 8 chunks of 64, the last one padded
    # Two traces in all: the chunk scan, and the re-scoring of the selected blocks.
    kernel = chex.assert_max_traces(kernels.scores_gather, n=2)
    first = adc.adc_topk(lut, codes, 9, chunk_size=64, kernel=kernel)
    second = adc.adc_topk(lut + 1.0, codes, 9, chunk_size=64, kernel=kernel)  # no retrace
    np.testing.assert_array_equal(first[1], ref.adc_topk(lut, codes, 9)[1])
    np.testing.assert_array_equal(second[1], first[1])


def test_decode_topk_equals_bruteforce():
    rng = _rng(10)
    query = rng.standard_normal((3, 4)).astype(np.float32)
    codebooks = rng.standard_normal((2, 4, 2)).astype(np.float32)
    codes = _codes(rng, 90, 2, 4)
    scores, ids = adc.decode_topk(query, codebooks, codes, 12, chunk_size=16)
    ref_scores, ref_ids = ref.topk(ref.decode_scores(query, codebooks, codes), 12)
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_allclose(scores, ref_scores, rtol=1e-5)


def test_adc_topk_runs_inside_jit():
    rng = _rng(11)
    lut = _dyadic_lut(rng, 2, 2, 4)
    codes = _codes(rng, 30, 2, 4)
    scores, ids = jax.jit(lambda t, c: adc.adc_topk(t, c, 5, chunk_size=8))(lut, codes)
    np.testing.assert_array_equal(ids, ref.adc_topk(lut, codes, 5)[1])


# ---------------------------------------------------------------------------------------------
# Sharded search.
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n,k,ties", [(63, 63, "stable"), (65, 10, "stable"), (65, 20, "random")])
def test_sharded_equals_unsharded(cpu_devices, n, k, ties):
    mesh = parallel.make_mesh(devices=cpu_devices)
    rng = _rng(n + k)
    lut = _dyadic_lut(rng, 3, 2, 4)
    codes = _codes(rng, n, 2, 4, distinct=2)  # heavy ties across device boundaries
    options = dict(chunk_size=4, query_chunk=2, ties=ties, seed=5)
    scores, ids = adc.adc_topk(lut, codes, k, mesh=mesh, **options)
    ref_scores, ref_ids = adc.adc_topk(lut, codes, k, **options)
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_array_equal(scores, ref_scores)
    if ties == "stable":
        np.testing.assert_array_equal(ids, ref.adc_topk(lut, codes, k)[1])


def test_sharded_accepts_device_arrays_and_ascending(cpu_devices):
    mesh = parallel.make_mesh(devices=cpu_devices)
    rng = _rng(12)
    lut = _dyadic_lut(rng, 2, 2, 4)
    codes = jnp.asarray(_codes(rng, 17, 2, 4))
    _, ids = adc.adc_topk(lut, codes, 17, mesh=mesh, chunk_size=2, larger_is_better=False)
    np.testing.assert_array_equal(ids, ref.adc_topk(lut, codes, 17, larger_is_better=False)[1])


def test_database_already_split_over_devices_is_searched_in_place(cpu_devices):
    mesh = parallel.make_mesh(devices=cpu_devices)
    rng = _rng(14)
    lut = _dyadic_lut(rng, 2, 2, 4)
    codes = _codes(rng, 64, 2, 4, distinct=2)
    placed = jax.device_put(codes, parallel.data_sharding(mesh))  # explicit-mode sharded
    _, ids = adc.adc_topk(lut, placed, 12, chunk_size=4)
    np.testing.assert_array_equal(ids, ref.adc_topk(lut, codes, 12)[1])
    query = rng.standard_normal((2, 4)).astype(np.float32)
    codebooks = rng.standard_normal((2, 4, 2)).astype(np.float32)
    _, ids = adc.decode_topk(query, codebooks, placed, 5)
    np.testing.assert_array_equal(ids, ref.topk(ref.decode_scores(query, codebooks, codes), 5)[1])


# ---------------------------------------------------------------------------------------------
# Bad input.
# ---------------------------------------------------------------------------------------------


def test_bad_inputs_raise(cpu_devices):
    rng = _rng(13)
    lut = _dyadic_lut(rng, 2, 2, 4)
    codes = _codes(rng, 6, 2, 4)
    with pytest.raises(ValueError, match="N = 6"):
        adc.adc_topk(lut, codes, 7)
    with pytest.raises(ValueError, match="k = 0"):
        adc.adc_topk(lut, codes, 0)
    with pytest.raises(ValueError, match="empty"):
        adc.adc_topk(lut, codes[:0], 1)
    with pytest.raises(ValueError, match=r"\[0, K\)"):
        adc.adc_topk(lut, np.array([[0, 4]], np.uint8), 1)
    with pytest.raises(ValueError, match="columns"):
        adc.adc_topk(lut, codes[:, :1], 1)
    with pytest.raises(ValueError, match="integer"):
        adc.adc_topk(lut, codes.astype(np.float32), 1)
    with pytest.raises(ValueError, match=r"\[Q, M, K\]"):
        adc.adc_topk(lut[0], codes, 1)
    with pytest.raises(ValueError, match="NaN"):
        adc.adc_topk(np.full_like(lut, np.nan), codes, 1)
    with pytest.raises(ValueError, match="kernel"):
        adc.adc_topk(lut, codes, 1, kernel="decode")
    with pytest.raises(ValueError, match="ties"):
        adc.adc_topk(lut, codes, 1, ties="shuffle")
    with pytest.raises(ValueError, match="chunk_size"):
        adc.adc_topk(lut, codes, 1, chunk_size=0)
    with pytest.raises(ValueError, match="D = 5"):
        adc.lut_inner_product(np.zeros((1, 5), np.float32), np.zeros((2, 4, 3), np.float32))
    with pytest.raises(ValueError, match="probs"):
        adc.lut_soft_quantized(np.zeros((1, 2, 3), np.float32), np.zeros((2, 4, 3), np.float32))
    other_mesh = Mesh(np.asarray(cpu_devices), ("model",))
    with pytest.raises(ValueError, match="data"):
        adc.adc_topk(lut, codes, 1, mesh=other_mesh)
