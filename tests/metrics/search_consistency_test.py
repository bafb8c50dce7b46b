"""The metrics rank exactly as the search does: same packing, same random ties, any class ids."""

import numpy as np
import pytest

from dpq_jax.metrics import engine
from dpq_jax.metrics import reference as ref
from dpq_jax.metrics import retrieval as rm
from dpq_jax.search import adc, hamming, kernels
from dpq_jax.search import reference as search_ref


def _dyadic_lut(rng, q, m, k):
    """Multiples of 1/4: float32 sums are exact, and many scores tie."""
    return (rng.integers(-4, 5, size=(q, m, k)) / 4).astype(np.float32)


def test_signs_and_bits_give_the_same_metrics_and_search():
    rng = np.random.default_rng(0)
    q_bits, db_bits = rng.integers(0, 2, (4, 13)), rng.integers(0, 2, (50, 13))
    ql, dl = rng.integers(0, 3, 4), rng.integers(0, 3, 50)
    dist = ref.hamming_distances(ref.pack_bits(q_bits), ref.pack_bits(db_bits))
    want = ref.retrieval_metrics(-dist.astype(np.float64), ql, dl, map_ks=(-1, 10))
    results = []
    for q_codes, db_codes in ((q_bits, db_bits), (2 * q_bits - 1, 2 * db_bits - 1)):
        qp, dbp = kernels.pack_bits(q_codes), kernels.pack_bits(db_codes)
        got = rm.retrieval_metrics(rm.hamming_source(qp, dbp, num_bits=13), ql, dl, map_ks=(-1, 10))
        for key, value in want.items():
            assert got[key] == pytest.approx(value, abs=1e-6), key
        results.append(np.asarray(hamming.hamming_topk(qp, dbp, 50)[1]))
    np.testing.assert_array_equal(results[0], results[1])
    np.testing.assert_array_equal(results[0], search_ref.hamming_topk(q_bits, db_bits, 50)[1])


@pytest.mark.parametrize("seed", [0, 5])
def test_random_ties_rank_identically_in_search_and_metrics(seed):
    rng = np.random.default_rng(10 + seed)
    num_q, n = 3, 40
    luts = _dyadic_lut(rng, num_q, 2, 3)
    codes = rng.integers(0, 3, (n, 2)).astype(np.uint8)
    ql, dl = rng.integers(0, 2, num_q), rng.integers(0, 2, n)
    # Search: the full ranking under ties="random".
    _, ids = adc.adc_topk(luts, codes, n, ties="random", seed=seed)
    ids = np.asarray(ids)
    # The metrics oracle's ranking with the same seed is the same list of items.
    scores = ref.adc_scores(luts, codes)
    keys = ref.tie_keys(n, "random", seed)
    for q in range(num_q):
        assert ref.ranking(scores[q], keys) == ids[q].tolist()
    # And the device metrics score that ranking.
    rel = ref.relevance_matrix(ql, dl)
    ranked = [rel[q, ids[q]] for q in range(num_q)]
    want = np.mean([ref.ranked_average_precision(r, -1, "relevant_in_topk") for r in ranked])
    want_p7 = np.mean([r[:7].sum() / 7 for r in ranked])
    got = rm.retrieval_metrics(
        rm.adc_source(luts, codes), ql, dl, precision_ks=(7,), ties="random", seed=seed
    )
    assert got["map@all"] == pytest.approx(want, abs=1e-6)
    assert got["p@7"] == pytest.approx(want_p7, abs=1e-12)
    stable = rm.retrieval_metrics(rm.adc_source(luts, codes), ql, dl, precision_ks=(7,))
    assert (stable["map@all"], stable["p@7"]) != (got["map@all"], got["p@7"])  # ties matter


@pytest.mark.parametrize(
    "dtype,classes",
    [
        (np.int64, [-(2**40), -1, 0, 2**32, 2**40]),  # 0 and 2**32 collided as int32
        (np.uint64, [0, 2**32, 2**40, 2**63, 2**64 - 1]),
        (np.int8, [-128, -1, 0, 1, 127]),
    ],
)
@pytest.mark.parametrize("ties", ["stable", "expected"])
def test_class_ids_of_any_dtype_and_range(dtype, classes, ties):
    rng = np.random.default_rng(len(classes))
    q, n = 6, 60
    scores = rng.integers(0, 4, (q, n)).astype(np.float32)
    q_dense, db_dense = rng.integers(0, 5, q), rng.integers(0, 5, n)
    table = np.array(classes, dtype)
    ql, dl = table[q_dense], table[db_dense]
    kw = dict(map_ks=(-1, 9), precision_ks=(5,), ties=ties)
    got = rm.retrieval_metrics(rm.scores_source(scores), ql, dl, **kw)
    dense = rm.retrieval_metrics(rm.scores_source(scores), q_dense, db_dense, **kw)
    want = ref.retrieval_metrics(scores.astype(np.float64), q_dense, db_dense, **kw)
    for key, value in want.items():
        assert got[key] == pytest.approx(value, abs=1e-6), key
        assert got[key] == dense[key], key


def test_dense_class_ids_keep_distinct_ids_apart():
    q_ids, db_ids = engine.dense_class_ids(
        np.array([2**32, 0], np.int64), np.array([0, 2**32, -5], np.int64)
    )
    assert q_ids.dtype == np.int32
    assert q_ids.tolist() == [2, 1] and db_ids.tolist() == [1, 2, 0]
    # Mixed signed and unsigned 64-bit ids are compared exactly, not through float64.
    q_ids, db_ids = engine.dense_class_ids(
        np.array([2**63 - 1], np.int64), np.array([2**63, 2**63 - 1], np.uint64)
    )
    assert q_ids.tolist() == [0] and db_ids.tolist() == [1, 0]
