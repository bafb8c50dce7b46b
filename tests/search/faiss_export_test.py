"""Tests for dpq_jax.search.faiss_export: FAISS indexes built from our codes rank like dpq_jax.

Data are tie-free on purpose (distinct code rows, Gaussian codebooks, and a checked gap between
consecutive scores of the reference ranking), because FAISS and dpq_jax order exact ties
differently; float32 table sums may differ in the last bits, so scores are compared with a
tolerance and ids exactly. FastScan quantizes its lookup tables to 8 bits, so it is compared
by recall, not rank by rank.
"""

import sys

import numpy as np
import pytest

from dpq_jax.search import adc, faiss_export, index, kernels
from dpq_jax.search import reference as ref

try:
    import faiss
except ImportError:  # the optional extra is not installed
    faiss = None

requires_faiss = pytest.mark.skipif(faiss is None, reason="faiss is not installed")


def _distinct_codes(rng, n, m, k):
    codes = rng.integers(0, k, size=(4 * n, m)).astype(np.uint8)
    _, first = np.unique(codes, axis=0, return_index=True)
    codes = codes[np.sort(first)[:n]]
    assert codes.shape == (n, m)
    return codes


def _pq_index(seed, *, n=600, m=4, k=256, d=3, metric="ip", ids=None):
    rng = np.random.default_rng(seed)
    codebooks = rng.standard_normal((m, k, d)).astype(np.float32)
    codes = _distinct_codes(rng, n, m, k)
    queries = rng.standard_normal((5, m * d)).astype(np.float32)
    return index.PQIndex(codebooks, codes, ids, method="opqn", metric=metric), queries


def _assert_tie_free(scores, k, larger_is_better):
    """Precondition on the test data: the k+1 best scores of each row are well separated."""
    best = np.sort(scores, axis=1)
    best = best[:, ::-1] if larger_is_better else best
    gaps = np.abs(np.diff(best[:, : k + 1], axis=1))
    assert gaps.min() > 2e-5, "test data has near-ties; pick another seed"


def _decode(codebooks, codes):
    return np.concatenate([codebooks[m, codes[:, m]] for m in range(codes.shape[1])], axis=1)


# ---------------------------------------------------------------------------------------------
# Layouts (NumPy only).
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("num_bits", [8, 37, 64, 128])
def test_binary_codes_follow_faiss_bit_order(num_bits):
    bits = np.random.default_rng(num_bits).integers(0, 2, size=(9, num_bits))
    packed = np.asarray(kernels.pack_bits(bits))
    np.testing.assert_array_equal(
        faiss_export.faiss_binary_codes(packed, num_bits), ref.faiss_binary_bytes(bits)
    )
    with pytest.raises(ValueError, match="words"):
        faiss_export.faiss_binary_codes(packed, num_bits + 32)


@pytest.mark.parametrize(("k", "nbits"), [(16, 4), (10, 4), (256, 8), (100, 8)])
def test_pq_layout_pads_codebooks_and_packs_codes(k, nbits):
    idx, _ = _pq_index(k, n=20, m=3, k=k)
    got_nbits, centroids, code_bytes = faiss_export.faiss_pq_layout(idx)
    assert got_nbits == nbits and centroids.shape == (3, 2**nbits, 3)
    np.testing.assert_array_equal(centroids[:, :k], idx.codebooks)
    assert not centroids[:, k:].any()
    if nbits == 4:  # LSB first: code m in the low nibble of byte m // 2 when m is even
        expected = ref.pack_nibbles(idx.codes)
    else:
        expected = idx.codes
    np.testing.assert_array_equal(code_bytes, expected)


def test_missing_faiss_and_unsupported_indexes_give_clear_errors(monkeypatch):
    rng = np.random.default_rng(0)
    progressive = index.PQIndex(
        rng.standard_normal((2, 4, 6)).astype(np.float32),
        rng.integers(0, 4, (5, 2)).astype(np.uint8),
        progressive=True,
    )
    with pytest.raises(ValueError, match="progressive"):
        faiss_export.faiss_pq_layout(progressive)
    monkeypatch.setitem(sys.modules, "faiss", None)  # `import faiss` now fails
    with pytest.raises(ImportError, match=r"dpq_jax\[faiss\]"):
        faiss_export.to_faiss_pq(_pq_index(0, n=10)[0])


# ---------------------------------------------------------------------------------------------
# With FAISS.
# ---------------------------------------------------------------------------------------------


@pytest.mark.faiss
@requires_faiss
@pytest.mark.parametrize("k", [16, 256])
@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_faiss_reads_our_codebooks_and_codes(k, metric):
    idx, _ = _pq_index(7, n=30, k=k, metric=metric)
    fidx = faiss_export.to_faiss_pq(idx)
    assert fidx.ntotal == 30 and fidx.is_trained
    _, _, code_bytes = faiss_export.faiss_pq_layout(idx)
    # FAISS decodes our codes to exactly our reconstructions: same centroids, same packing.
    np.testing.assert_array_equal(fidx.sa_decode(code_bytes), _decode(idx.codebooks, idx.codes))
    assert fidx.metric_type == (faiss.METRIC_L2 if metric == "l2" else faiss.METRIC_INNER_PRODUCT)


@pytest.mark.faiss
@requires_faiss
@pytest.mark.parametrize(("metric", "k", "seed"), [("ip", 256, 1), ("l2", 256, 2), ("ip", 16, 3)])
def test_index_pq_returns_the_same_topk_as_dpq_jax(metric, k, seed):
    ids = 10_000 + 7 * np.arange(600)[::-1]
    idx, queries = _pq_index(seed, k=k, metric=metric, ids=ids)
    topk = 10
    larger = metric == "ip"
    lut = (
        ref.lut_inner_product(queries, idx.codebooks)
        if larger
        else ref.lut_l2(queries, idx.codebooks)
    )
    exact = ref.adc_scores(lut, idx.codes)  # [Q, N] float64
    _assert_tie_free(exact, topk, larger)

    ours_scores, ours_ids = idx.search(queries, topk)
    f_scores, f_ids = faiss_export.to_faiss_pq(idx).search(queries, topk)
    np.testing.assert_array_equal(f_ids, ours_ids)
    np.testing.assert_allclose(f_scores, ours_scores, rtol=1e-5, atol=1e-5)
    # Positional labels without the id map.
    _, f_pos = faiss_export.to_faiss_pq(idx, with_ids=False).search(queries, topk)
    np.testing.assert_array_equal(ids[f_pos], ours_ids)


@pytest.mark.faiss
@requires_faiss
@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_soft_quantized_query_vector_reproduces_the_opqn_tables(metric):
    rng = np.random.default_rng(11)
    m, k, n = 3, 8, 400
    # Orthonormal codewords per book, as OPQN's: then the IP table equals the probabilities.
    codebooks = np.stack([np.linalg.qr(rng.standard_normal((k, k)))[0].T for _ in range(m)]).astype(
        np.float32
    )
    logits = 3.0 * rng.standard_normal((4, m, k))
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    probs = probs.astype(np.float32)
    idx = index.PQIndex(codebooks, _distinct_codes(rng, n, m, k), metric=metric)
    soft = np.asarray(adc.soft_quantized_vectors(probs, codebooks))
    np.testing.assert_allclose(soft, ref.soft_quantized_vectors(probs, codebooks), atol=1e-6)
    if metric == "ip":
        lut = adc.lut_soft_quantized(probs, codebooks)
        np.testing.assert_allclose(lut, probs, atol=1e-6)  # OPQN's probability table
    else:
        lut = adc.lut_l2(soft, codebooks)
    _assert_tie_free(ref.adc_scores(np.asarray(lut), idx.codes), 10, metric == "ip")
    ours_scores, ours_ids = idx.search(lut, 10)
    f_scores, f_ids = faiss_export.to_faiss_pq(idx).search(soft, 10)
    np.testing.assert_array_equal(f_ids, ours_ids)
    np.testing.assert_allclose(f_scores, ours_scores, rtol=1e-5, atol=1e-5)


@pytest.mark.faiss
@requires_faiss
@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_fastscan_has_high_recall_and_maps_ids(metric):
    ids = 5 + 2 * np.arange(2000)
    idx, queries = _pq_index(5, n=2000, m=8, k=16, d=2, metric=metric, ids=ids)
    topk = 10
    _, ours_ids = idx.search(queries, topk)
    fast = faiss_export.to_faiss_pq_fastscan(idx)
    assert fast.ntotal == 2000
    f_scores, f_ids = fast.search(queries, topk)
    # 8-bit lookup tables make the ranking approximate: demand high recall, not equality.
    recall = np.mean([len(set(a) & set(b)) / topk for a, b in zip(f_ids, ours_ids, strict=True)])
    assert recall >= 0.8, recall
    # Its scores approximate the exact scores of the ids it returns.
    lut = (
        ref.lut_inner_product(queries, idx.codebooks)
        if metric == "ip"
        else ref.lut_l2(queries, idx.codebooks)
    )
    exact = ref.adc_scores(lut, idx.codes)
    position = {int(i): p for p, i in enumerate(ids)}
    got = np.array([[exact[q, position[int(i)]] for i in row] for q, row in enumerate(f_ids)])
    span = lut.max(-1).sum(-1) - lut.min(-1).sum(-1)  # [Q] score range
    assert np.all(np.abs(f_scores - got) <= 0.02 * span[:, None])
    # Without the id map: the same hits as positions.
    _, f_pos = faiss_export.to_faiss_pq_fastscan(idx, with_ids=False).search(queries, topk)
    np.testing.assert_array_equal(ids[f_pos], f_ids)
    # A written and re-read index (how it is served) answers the same.
    again = faiss.deserialize_index(faiss.serialize_index(fast))
    np.testing.assert_array_equal(again.search(queries, topk)[1], f_ids)
    with pytest.raises(ValueError, match="K <= 16"):
        faiss_export.to_faiss_pq_fastscan(_pq_index(0, n=10)[0])


@pytest.mark.faiss
@requires_faiss
@pytest.mark.parametrize("num_bits", [37, 64, 128])
def test_binary_flat_returns_the_same_hamming_neighbours(num_bits):
    rng = np.random.default_rng(num_bits)
    bits = rng.integers(0, 2, size=(300, num_bits))
    ids = 100 + np.arange(300)[::-1]
    bidx = index.BinaryIndex.from_bits(bits, ids=ids)
    q_bits = rng.integers(0, 2, size=(6, num_bits))
    topk = 8
    ours_dist, ours_ids = bidx.search(q_bits, topk)
    fidx = faiss_export.to_faiss_binary(bidx)
    assert fidx.d == 8 * -(-num_bits // 8)
    f_dist, f_ids = fidx.search(faiss_export.faiss_binary_queries(bidx, q_bits), topk)
    np.testing.assert_array_equal(f_dist, ours_dist)  # identical Hamming distances
    exact = ref.hamming_distances(q_bits, bits)
    position = {int(i): p for p, i in enumerate(ids)}
    for q in range(len(q_bits)):
        # Every FAISS hit has the distance FAISS reports; strictly closer items are all there
        # (ties at the k-th distance may be different items).
        np.testing.assert_array_equal([exact[q, position[int(i)]] for i in f_ids[q]], f_dist[q])
        kth = ours_dist[q, -1]
        inside = set(ours_ids[q][ours_dist[q] < kth].tolist())
        assert inside <= set(f_ids[q].tolist())
    # Our packing is FAISS's own bit order: fvecs2bitvecs of the +-1 codes gives the same bytes.
    signs = np.where(bits > 0, 1.0, -1.0).astype(np.float32)
    padded = np.pad(signs, ((0, 0), (0, fidx.d - num_bits)), constant_values=-1.0)
    theirs = np.zeros((300, fidx.d // 8), np.uint8)
    faiss.fvecs2bitvecs(faiss.swig_ptr(padded), faiss.swig_ptr(theirs), fidx.d, 300)
    np.testing.assert_array_equal(faiss_export.faiss_binary_codes(bidx.packed, num_bits), theirs)
