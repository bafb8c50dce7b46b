"""Tests for dpq_jax.metrics.retrieval against the NumPy oracles and hand-worked cases."""

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest, parameterized

from dpq_jax.metrics import engine, finish, rank_stats
from dpq_jax.metrics import reference as ref
from dpq_jax.metrics import retrieval as rm
from dpq_jax.parallel import make_mesh
from dpq_jax.search import kernels, topk

_SAVED_FLAGS = {}


def setUpModule():
    # Tiny inputs: compile time dominates, so skip XLA's optimization passes in this module
    # only (restored below). Results are exact integer/rational comparisons either way.
    _SAVED_FLAGS["opt"] = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)


def tearDownModule():
    jax.config.update("jax_disable_most_optimizations", _SAVED_FLAGS["opt"])


# One set of cut-offs for the randomized tests, so compiled kernels are shared between them.
MAP_KS = (-1, 1, 5, 17, 1000)  # 1000 > N: clipped to N
P_KS = (1, 5, 60)
R_KS = (3, 20)


def _tied_scores(rng, q, n, levels=4):
    """Few distinct scores: heavy ties."""
    return rng.integers(0, levels, size=(q, n)).astype(np.float32)


def _assert_close(test, got, want, keys, tol=1e-5):
    for k in keys:
        test.assertAlmostEqual(got[k], want[k], delta=tol, msg=f"{k}: {got[k]} vs {want[k]}")


class OracleTest(parameterized.TestCase):
    """Random data with heavy ties, zero-hit queries, K > N, N not a multiple of the chunk."""

    @parameterized.parameters(itertools.product(rm.TIE_RULES, rm.DENOMINATORS, rm.EMPTY_RULES))
    def test_scores_match_oracle(self, ties, denominator, empty):
        rng = np.random.default_rng(0)
        q, n = 7, 53
        scores = _tied_scores(rng, q, n)
        ql, dl = rng.integers(0, 3, q), rng.integers(0, 3, n)
        ql[0] = 9  # a query with no relevant item
        kw = dict(
            map_ks=MAP_KS,
            precision_ks=P_KS,
            recall_ks=R_KS,
            denominator=denominator,
            empty=empty,
            ties=ties,
            seed=3,
        )
        got = rm.retrieval_metrics(
            rm.scores_source(scores), ql, dl, query_chunk=3, db_chunk=16, **kw
        )
        want = ref.retrieval_metrics(scores, ql, dl, **kw)
        self.assertSetEqual(set(want), set(got) - {"conventions"})
        _assert_close(self, got, want, want)
        self.assertEqual(got["conventions"]["ties"], ties)
        self.assertEqual(got["conventions"]["denominator"], denominator)

    @parameterized.parameters(*[(t,) for t in rm.TIE_RULES])
    def test_hamming_multilabel_matches_oracle(self, ties):
        # b = 5 bits over 300 items: tie groups of ~60 items, so ranks above 64 use the
        # asymptotic harmonic-number branch; multi-hot labels; one query without labels.
        rng = np.random.default_rng(1)
        q, n, b = 9, 301, 5
        qp = np.asarray(kernels.pack_bits(rng.integers(0, 2, (q, b))))
        dp = np.asarray(kernels.pack_bits(rng.integers(0, 2, (n, b))))
        ql, dl = rng.integers(0, 2, (q, 4)), rng.integers(0, 2, (n, 4))
        ql[2] = 0
        dist = ref.hamming_distances(qp, dp)
        kw = dict(
            map_ks=(-1, 1, 50, 123, 1000),
            precision_ks=(1, 77),
            recall_ks=(100,),
            denominator="relevant_in_topk",
            ties=ties,
            seed=5,
        )
        got = rm.retrieval_metrics(
            rm.hamming_source(qp, dp, num_bits=b), ql, dl, radius=2, db_chunk=64, **kw
        )
        want = ref.retrieval_metrics(-dist.astype(np.float64), ql, dl, **kw)
        _assert_close(self, got, want, want)
        prec, rec = ref.hamming_radius_pr(dist, ref.relevance_matrix(ql, dl), 2)
        self.assertAlmostEqual(got["p@r2"], prec, delta=1e-12)
        self.assertAlmostEqual(got["r@r2"], rec, delta=1e-12)

    def test_min_relevant_k_expected_hamming(self):
        rng = np.random.default_rng(2)
        q, n, b = 6, 120, 4
        qp = np.asarray(kernels.pack_bits(rng.integers(0, 2, (q, b))))
        dp = np.asarray(kernels.pack_bits(rng.integers(0, 2, (n, b))))
        ql, dl = rng.integers(0, 3, q), rng.integers(0, 3, n)
        dist = ref.hamming_distances(qp, dp)
        kw = dict(
            map_ks=(-1, 7, 40),
            precision_ks=(),
            denominator="min_relevant_k",
            ties="expected",
            empty="skip",
        )
        got = rm.retrieval_metrics(rm.hamming_source(qp, dp, num_bits=b), ql, dl, **kw)
        want = ref.retrieval_metrics(-dist.astype(np.float64), ql, dl, **kw)
        _assert_close(self, got, want, want)

    def test_adc_and_dense_sources(self):
        # Integer-valued LUTs and features keep float32 sums exact, so ties are identical.
        rng = np.random.default_rng(3)
        q, n, m, k = 5, 90, 3, 5
        luts = rng.integers(-3, 4, (q, m, k)).astype(np.float32)
        codes = rng.integers(0, k, (n, m)).astype(np.uint8)
        ql, dl = rng.integers(0, 4, q), rng.integers(0, 4, n)
        adc = ref.adc_scores(luts, codes)
        np.testing.assert_array_equal(np.asarray(kernels.adc_scores(luts, codes)), adc)
        qf = rng.integers(-2, 3, (q, 4)).astype(np.float32)
        xf = rng.integers(-2, 3, (n, 4)).astype(np.float32)
        cases = (
            (rm.adc_source(luts, codes), adc, "expected"),
            (rm.adc_source(luts, codes, lut_is_distance=True), -adc, "stable"),
            (rm.dense_source(qf, xf, metric="ip"), ref.dense_scores(qf, xf, "ip"), "expected"),
            (
                rm.dense_source(qf, xf, metric="neg_l2"),
                ref.dense_scores(qf, xf, "neg_l2"),
                "stable",
            ),
        )
        for src, scores, ties in cases:
            kw = dict(map_ks=(-1, 10), precision_ks=(5,), ties=ties)
            want = ref.retrieval_metrics(scores, ql, dl, **kw)
            _assert_close(self, rm.retrieval_metrics(src, ql, dl, **kw), want, want)

    def test_pr_curves_match_oracle(self):
        rng = np.random.default_rng(4)
        q, n, b = 6, 70, 6
        qp = np.asarray(kernels.pack_bits(rng.integers(0, 2, (q, b))))
        dp = np.asarray(kernels.pack_bits(rng.integers(0, 2, (n, b))))
        ql, dl = rng.integers(0, 3, q), rng.integers(0, 3, n)
        dist = ref.hamming_distances(qp, dp)
        rel = ref.relevance_matrix(ql, dl)
        src = rm.hamming_source(qp, dp, num_bits=b)
        cut = (1, 9, 35, 70, 200)
        for ties in ("stable", "expected"):
            got = rm.pr_curve(src, ql, dl, by="rank", cutoffs=cut, ties=ties)
            prec, rec = ref.pr_curve_rank(-dist, rel, cut, ties=ties)
            np.testing.assert_allclose(got["precision"], prec, atol=1e-9)
            np.testing.assert_allclose(got["recall"], rec, atol=1e-9)
        got = rm.pr_curve(src, ql, dl, by="radius", empty="skip")
        for r in range(b + 1):
            prec, rec = ref.hamming_radius_pr(dist, rel, r, empty="skip")
            self.assertAlmostEqual(got["precision"][r], prec, delta=1e-12)
            self.assertAlmostEqual(got["recall"][r], rec, delta=1e-12)
        self.assertEqual(got["recall"][-1], 1.0)  # radius b retrieves everything


class ShardingTest(parameterized.TestCase):
    def test_sharded_equals_unsharded(self):
        # Sort path (ties="stable") and histogram path (radius) on 8 devices.
        # Q = 13 and N = 101 are multiples of neither the 8 devices nor the chunk sizes.
        rng = np.random.default_rng(5)
        q, n, b = 13, 101, 5
        qp = np.asarray(kernels.pack_bits(rng.integers(0, 2, (q, b))))
        dp = np.asarray(kernels.pack_bits(rng.integers(0, 2, (n, b))))
        ql, dl = rng.integers(0, 3, q), rng.integers(0, 3, n)
        mesh = make_mesh(8, devices=jax.devices("cpu"))
        src = rm.hamming_source(qp, dp, num_bits=b)
        ties = "stable"
        kw = dict(map_ks=(-1, 10), precision_ks=(5,), ties=ties, radius=1)
        plain = rm.retrieval_metrics(src, ql, dl, **kw)
        sharded = rm.retrieval_metrics(src, ql, dl, mesh=mesh, query_chunk=1, db_chunk=24, **kw)
        want = ref.retrieval_metrics(
            -ref.hamming_distances(qp, dp), ql, dl, map_ks=(-1, 10), precision_ks=(5,), ties=ties
        )
        _assert_close(self, plain, want, want)
        _assert_close(self, sharded, plain, ("map@all", "map@10", "p@5", "p@r1", "r@r1"), 1e-7)

    def test_sharded_scores_source(self):
        rng = np.random.default_rng(6)
        scores = _tied_scores(rng, 11, 37)
        ql, dl = rng.integers(0, 2, 11), rng.integers(0, 2, 37)
        mesh = make_mesh(8, devices=jax.devices("cpu"))
        # Float keys on the rank path, tie-aware (stable ties run sharded in the test above).
        got = rm.map_from_scores(scores, ql, dl, k=10, mesh=mesh, ties="expected")
        want = ref.retrieval_metrics(scores, ql, dl, map_ks=(10,), precision_ks=(), ties="expected")
        self.assertAlmostEqual(got, want["map@10"], delta=1e-6)


class HandWorkedTest(parameterized.TestCase):
    """Small cases computed by hand."""

    def test_stable_ties_by_index(self):
        # Items 0 and 1 tie; the relevant item 1 ranks 2nd, item 2 ranks 3rd:
        # AP = (1/2 + 2/3) / 2 = 7/12.
        got = rm.map_from_scores(jnp.array([[1.0, 1.0, 0.0]]), np.array([1]), np.array([0, 1, 1]))
        self.assertAlmostEqual(got, 7 / 12, places=6)

    def test_expected_ties(self):
        # Tie order [0, 1] gives 7/12, order [1, 0] gives (1 + 2/3) / 2 = 5/6: mean 17/24.
        got = rm.map_from_scores(
            jnp.array([[1.0, 1.0, 0.0]]), np.array([1]), np.array([0, 1, 1]), ties="expected"
        )
        self.assertAlmostEqual(got, 17 / 24, places=6)

    def test_random_ties_follow_seeded_permutation(self):
        outcomes = set()
        for seed in range(8):
            perm = topk.tie_permutation(3, seed)
            first = [i for i in perm if i in (0, 1)][0]  # which tied item ranks first
            want = 7 / 12 if first == 0 else 5 / 6
            got = rm.map_from_scores(
                jnp.array([[1.0, 1.0, 0.0]]),
                np.array([1]),
                np.array([0, 1, 1]),
                ties="random",
                seed=seed,
            )
            self.assertAlmostEqual(got, want, places=6)
            outcomes.add(round(got, 6))
        self.assertLen(outcomes, 2)  # the seed really changes the tie order

    def test_denominators(self):
        # Ranked relevance [1, 0, 0, 1], K = 2: one hit.
        scores, ql, dl = jnp.array([[4.0, 3.0, 2.0, 1.0]]), np.array([1]), np.array([1, 0, 0, 1])
        src, kw = rm.scores_source(scores), dict(map_ks=(-1, 2), precision_ks=())
        rik = rm.retrieval_metrics(src, ql, dl, **kw)
        mrk = rm.retrieval_metrics(src, ql, dl, denominator="min_relevant_k", **kw)
        self.assertAlmostEqual(rik["map@2"], 1.0, places=6)  # 1 / (1 hit)
        self.assertAlmostEqual(mrk["map@2"], 0.5, places=6)  # 1 / min(2 relevant, K = 2)
        # All: (1 + 2/4) / 2 under both denominators.
        self.assertAlmostEqual(rik["map@all"], 0.75, places=6)
        self.assertAlmostEqual(mrk["map@all"], 0.75, places=6)

    def test_expected_cut_inside_tie_group(self):
        # Item 0 (relevant) first, then a 3-way tie holding 2 relevant items; K = 2.
        # relevant_in_topk: both cases give AP 1. min_relevant_k: (1 + 2/3) / min(3, 2) = 5/6.
        scores, ql, dl = jnp.array([[2.0, 1.0, 1.0, 1.0]]), np.array([1]), np.array([1, 1, 1, 0])
        self.assertAlmostEqual(
            rm.map_from_scores(scores, ql, dl, k=2, ties="expected"), 1.0, places=6
        )
        self.assertAlmostEqual(
            rm.map_from_scores(scores, ql, dl, k=2, ties="expected", denominator="min_relevant_k"),
            5 / 6,
            places=6,
        )
        # Three-way tie with one relevant item, K = 1: it is first with probability 1/3.
        self.assertAlmostEqual(
            rm.map_from_scores(
                jnp.ones((1, 3)), np.array([1]), np.array([0, 1, 0]), k=1, ties="expected"
            ),
            1 / 3,
            places=6,
        )

    def test_empty_queries_zero_or_skip(self):
        # Query 0: its only relevant item ranks first (AP 1); query 1 has no relevant item.
        scores, ql, dl = jnp.array([[2.0, 1.0], [2.0, 1.0]]), np.array([0, 5]), np.array([0, 1])
        self.assertAlmostEqual(rm.map_from_scores(scores, ql, dl), 0.5, places=6)
        self.assertAlmostEqual(rm.map_from_scores(scores, ql, dl, empty="skip"), 1.0, places=6)
        res = rm.retrieval_metrics(
            rm.scores_source(scores), np.array([5, 6]), dl, precision_ks=(), empty="skip"
        )
        self.assertTrue(np.isnan(res["map@all"]))  # no query has a relevant item: nothing left

    def test_k_larger_than_n_is_clipped(self):
        scores, ql, dl = jnp.array([[3.0, 2.0, 1.0]]), np.array([1]), np.array([0, 1, 1])
        res = rm.retrieval_metrics(
            rm.scores_source(scores), ql, dl, map_ks=(-1, 10), precision_ks=(10,), recall_ks=(10,)
        )
        self.assertAlmostEqual(res["map@10"], res["map@all"], places=7)
        self.assertAlmostEqual(res["map@all"], (1 / 2 + 2 / 3) / 2, places=6)
        self.assertAlmostEqual(res["p@10"], 2 / 3, places=7)  # hits / min(K, N)
        self.assertEqual(res["r@10"], 1.0)
        self.assertIn("clipped", res["conventions"]["k_rule"])

    def test_multilabel_relevance_rule(self):
        # Query has labels {0, 2}; items: {1} (no), {2} (yes), {0, 1} (yes).
        ql = np.array([[1, 0, 1]])
        dl = np.array([[0, 1, 0], [0, 0, 1], [1, 1, 0]])
        np.testing.assert_array_equal(
            np.asarray(
                engine.relevance(jnp.asarray(ql, jnp.bfloat16), jnp.asarray(dl, jnp.bfloat16))
            ),
            [[False, True, True]],
        )
        # Ranked [yes, no, yes]: AP = (1 + 2/3) / 2.
        got = rm.map_from_scores(jnp.array([[2.0, 3.0, 1.0]]), ql, dl)
        self.assertAlmostEqual(got, (1 + 2 / 3) / 2, places=6)

    def test_hamming_radius(self):
        # b = 4, query 0000; items 0000 (rel), 0001 (not), 0111 (rel), 1111 (rel).
        bits = np.array([[0, 0, 0, 0], [1, 0, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1]])
        src = rm.hamming_source(
            kernels.pack_bits(np.zeros((2, 4))), kernels.pack_bits(bits), num_bits=4
        )
        ql, dl = np.array([1, 2]), np.array([1, 0, 1, 1])
        res = rm.hamming_radius_pr(src, ql, dl, radius=2)
        # Query 0: within radius 2 are items 0, 1 -> precision 1/2, recall 1/3.
        # Query 1 (label 2) has no relevant item: counts 0 under empty="zero".
        self.assertAlmostEqual(res["precision"], (1 / 2 + 0) / 2)
        self.assertAlmostEqual(res["recall"], (1 / 3 + 0) / 2)
        skip = rm.hamming_radius_pr(src, ql, dl, radius=2, empty="skip")
        self.assertAlmostEqual(skip["precision"], 1 / 2)
        # Nothing within radius 0 for a query 1111 against 0000 etc.: precision 0, stated.
        far = rm.hamming_source(
            kernels.pack_bits(np.ones((1, 4))), kernels.pack_bits(bits[:2]), num_bits=4
        )
        res = rm.hamming_radius_pr(far, np.array([1]), np.array([1, 1]), radius=0)
        self.assertEqual(res["precision"], 0.0)
        self.assertEqual(res["conventions"]["precision_when_nothing_retrieved"], 0.0)

    def test_expected_matches_all_permutations(self):
        # 12 tiny rows with heavy ties; query i is relevant to item n iff rel[i, n] (multi-hot
        # labels: query i has label i), so one call checks every row.
        rng = np.random.default_rng(7)
        q, n = 12, 6
        scores = rng.integers(0, 3, (q, n)).astype(np.float32)
        rel = rng.integers(0, 2, (q, n))
        ql, dl = np.eye(q, dtype=int), rel.T
        ks = (-1, 1, 2, 4)
        for den in rm.DENOMINATORS:
            got = rm.retrieval_metrics(
                rm.scores_source(scores),
                ql,
                dl,
                map_ks=ks,
                precision_ks=ks[1:],
                denominator=den,
                ties="expected",
            )
            for k in ks:
                brute = [
                    ref.brute_force_expected(
                        scores[i],
                        rel[i],
                        lambda ranked, k=k, den=den: ref.ranked_average_precision(ranked, k, den),
                    )
                    for i in range(q)
                ]
                for i in range(q):
                    self.assertAlmostEqual(
                        ref.expected_average_precision(scores[i], rel[i], k, den),
                        brute[i],
                        places=12,
                    )
                key = "map@all" if k == -1 else f"map@{k}"
                self.assertAlmostEqual(got[key], np.mean(brute), places=6)
                if k != -1:
                    hits = [
                        ref.brute_force_expected(
                            scores[i], rel[i], lambda ranked, k=k: sum(ranked[:k])
                        )
                        for i in range(q)
                    ]
                    self.assertAlmostEqual(got[f"p@{k}"], np.mean(hits) / k, places=6)

    def test_harmonic_diff_accuracy(self):
        start = np.array([0, 3, 63, 64, 1000, 10**6, 10**7])
        for m in (1, 2, 17, 5000):
            want = [sum(1.0 / (a + p) for p in range(1, m + 1)) for a in start]
            np.testing.assert_allclose(finish.harmonic_diff(start, m), want, rtol=1e-12)


class RankStatsTest(parameterized.TestCase):
    """The pure functions of the rank path against their NumPy twins."""

    def test_order_keys_follow_float_order(self):
        vals = np.array(
            [-np.inf, -3e38, -2.0, -1e-38, -1e-45, -0.0, 0.0, 1e-45, 1e-38, 1.0, 1.5, np.inf],
            np.float32,
        )
        keys = np.asarray(jax.jit(rank_stats.order_keys)(vals))
        np.testing.assert_array_equal(keys, ref.order_keys(vals))
        for a, b in itertools.product(range(len(vals)), repeat=2):
            self.assertEqual(vals[a] < vals[b], keys[a] < keys[b])
            self.assertEqual(vals[a] == vals[b], keys[a] == keys[b])  # -0.0 == 0.0
        self.assertLess(keys.max(), np.iinfo(np.int32).max)  # int32 max is left for padding

    @staticmethod
    def _rank_case(rng, keys):
        """Relevant index lists for 5 rows of 40 items, the last 3 of them padding."""
        q, n, r = 5, 40, 16
        keys[:, -3:] = np.iinfo(np.int32).max
        num_rel = np.array([0, 3, 16, 9, 12], np.int32)
        rel_idx = np.full((q, r), n, np.int32)
        for i in range(q):
            rel_idx[i, : num_rel[i]] = np.sort(rng.choice(n - 3, num_rel[i], replace=False))
        return keys, rel_idx, num_rel

    @parameterized.parameters(False, True)
    def test_relevant_rank_stats_match_twin(self, expected):
        # Float keys with heavy ties, padding (int32 max keys), a row without relevant items.
        # A single search cell holds up to 16 relevant items: the bisection loop after the
        # lifted steps runs (the other tests use many cells).
        rng = np.random.default_rng(8)
        keys = np.array(rank_stats.order_keys(rng.integers(-3, 3, (5, 40)).astype(np.float32) / 2))
        keys, rel_idx, num_rel = self._rank_case(rng, keys)
        cuts = (1, 5, 17, 37)
        stats = jax.jit(
            functools.partial(
                rank_stats.relevant_rank_stats, cuts=cuts, expected=expected, num_cells=1
            )
        )
        got = stats(jnp.asarray(keys), jnp.asarray(rel_idx), jnp.asarray(num_rel))
        want = ref.relevant_rank_stats(keys, rel_idx, num_rel, cuts, expected)
        self.assertSetEqual(set(want), set(got))
        for k, v in want.items():
            np.testing.assert_allclose(np.asarray(got[k], np.float64), v, atol=1e-5, err_msg=k)

    def test_distance_rank_stats_match_twin(self):
        # Distances 0..3 (heavy ties), blocks of 8 items; the twin ranks by (distance, index).
        rng = np.random.default_rng(11)
        keys, rel_idx, num_rel = self._rank_case(rng, rng.integers(0, 4, (5, 40)).astype(np.int32))
        cuts = (1, 5, 17, 37)
        stats = jax.jit(
            functools.partial(rank_stats.distance_rank_stats, num_levels=4, block=8, cuts=cuts)
        )
        got = stats(jnp.asarray(keys), jnp.asarray(rel_idx), jnp.asarray(num_rel))
        want = ref.relevant_rank_stats(keys, rel_idx, num_rel, cuts, False)
        self.assertSetEqual(set(want), set(got))
        for k, v in want.items():
            np.testing.assert_allclose(np.asarray(got[k], np.float64), v, atol=1e-5, err_msg=k)
        with self.assertRaisesRegex(ValueError, "must divide"):
            rank_stats.distance_rank_stats(keys, rel_idx, num_rel, num_levels=4, block=16, cuts=())

    def test_expected_group_share_and_histograms(self):
        # Groups past the 8 summed head ranks use the harmonic tail, at small and large A
        # (far down the ranking the float32 tail is exact to ~1e-8 absolute, not relative).
        cases = [(0, 1, 0, 1), (3, 5, 2, 2), (0, 40, 0, 7), (10**6, 30, 400, 30), (70, 9, 3, 1)]
        got = jax.jit(rank_stats.expected_group_share)(*(jnp.asarray(c) for c in zip(*cases)))
        want = [ref.expected_group_share(*c) for c in cases]
        np.testing.assert_allclose(np.asarray(got), want, rtol=2e-6, atol=5e-8)
        rng = np.random.default_rng(9)
        dist, rel = rng.integers(0, 6, (3, 50)), rng.integers(0, 2, (3, 50)) > 0
        valid = np.arange(50) < 47
        tot, hit = jax.jit(rank_stats.distance_histograms, static_argnums=3)(
            jnp.asarray(dist, jnp.int32), jnp.asarray(rel), jnp.asarray(valid), 5
        )
        want_tot, want_hit = ref.distance_histograms(dist, rel, valid, 5)
        np.testing.assert_array_equal(np.asarray(tot), want_tot)
        np.testing.assert_array_equal(np.asarray(hit), want_hit)

    def test_multilabel_scores_match_oracle(self):
        # Multi-hot relevance on the rank path (relevant items compacted on device), heavy
        # ties, a query without labels, N = 61 not a multiple of the chunk of 16. (Stable and
        # random ties with multi-hot labels run in test_hamming_multilabel_matches_oracle.)
        ties = "expected"
        rng = np.random.default_rng(10)
        q, n = 6, 61
        scores = _tied_scores(rng, q, n, levels=5)
        ql, dl = rng.integers(0, 2, (q, 3)), rng.integers(0, 2, (n, 3))
        ql[4] = 0
        kw = dict(map_ks=(-1, 7), precision_ks=(3,), recall_ks=(30,), ties=ties, seed=2)
        got = rm.retrieval_metrics(
            rm.scores_source(scores), ql, dl, query_chunk=4, db_chunk=16, **kw
        )
        want = ref.retrieval_metrics(scores, ql, dl, **kw)
        _assert_close(self, got, want, want)


class ValidationTest(parameterized.TestCase):
    def test_errors(self):
        s = rm.scores_source(np.zeros((2, 3), np.float32))
        ql, dl = np.array([0, 1]), np.array([0, 1, 1])
        with self.assertRaisesRegex(ValueError, "database is empty"):
            rm.retrieval_metrics(rm.scores_source(np.zeros((2, 0))), ql, np.zeros(0, int))
        with self.assertRaisesRegex(ValueError, "map_ks"):
            rm.retrieval_metrics(s, ql, dl, map_ks=(0,))
        with self.assertRaisesRegex(ValueError, "Label kinds"):
            rm.retrieval_metrics(s, ql, np.eye(3, dtype=int))
        with self.assertRaisesRegex(ValueError, "integer class ids"):
            rm.retrieval_metrics(s, ql, dl.astype(float))
        with self.assertRaisesRegex(ValueError, "ties"):
            rm.retrieval_metrics(s, ql, dl, ties="average")
        with self.assertRaisesRegex(ValueError, "hamming_source"):
            rm.retrieval_metrics(s, ql, dl, radius=2)
        with self.assertRaisesRegex(ValueError, "NaN or Inf"):
            rm.map_from_scores(np.array([[1.0, np.nan, 0.0], [0, 0, 0]]), ql, dl)
        with self.assertRaisesRegex(ValueError, "NaN or Inf"):
            rm.dense_source(np.full((1, 2), np.inf), np.zeros((3, 2)))
        with self.assertRaisesRegex(ValueError, r"codes must lie in \[0, K=4\)"):
            rm.adc_source(np.zeros((1, 2, 4)), np.full((3, 2), 4, np.uint8))
        with self.assertRaisesRegex(ValueError, "bits set beyond"):
            rm.hamming_source(np.array([[8]], np.uint32), np.array([[0]], np.uint32), num_bits=3)
        with self.assertRaisesRegex(ValueError, "unsigned"):
            rm.hamming_source(np.array([[1]]), np.array([[0]]), num_bits=3)

    def test_format_metrics_states_conventions(self):
        # The inputs of HandWorkedTest.test_expected_ties (mAP 17/24), whose kernel is reused.
        res = rm.retrieval_metrics(
            rm.scores_source(jnp.array([[1.0, 1.0, 0.0]])),
            np.array([1]),
            np.array([0, 1, 1]),
            precision_ks=(),
            ties="expected",
        )
        line = rm.format_metrics(res)
        self.assertIn("map@all=0.7083", line)
        self.assertIn("ties=expected", line)
        self.assertIn("empty=zero", line)


if __name__ == "__main__":
    absltest.main()
