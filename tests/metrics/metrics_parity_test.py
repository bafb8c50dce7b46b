"""Tests for dpq_jax.metrics.parity: published evaluation codes' behaviour, quirks included."""

import numpy as np
from absl.testing import absltest

from dpq_jax.metrics import parity
from dpq_jax.metrics import reference as ref
from dpq_jax.metrics import retrieval as rm
from dpq_jax.search import kernels


def _one_hot(ids, c):
    return np.eye(c, dtype=np.int64)[ids]


def _argsort_oracle(order_rows, rel, k):
    """Mean AP@k (hits-in-top-k denominator, 0 without hits) over given ranked orders."""
    return float(
        np.mean(
            [
                ref.ranked_average_precision(
                    [int(rel[i, n]) for n in order_rows[i]], k, "relevant_in_topk"
                )
                for i in range(rel.shape[0])
            ]
        )
    )


class DeepHashTest(absltest.TestCase):
    def test_topk_minus_one_drops_last_ranked_item(self):
        # Query 11; items at distances 0, 1, 2; only the farthest one is relevant.
        qB = np.array([[1.0, 1.0]], np.float32)
        rB = np.array([[1, 1], [1, -1], [-1, -1]], np.float32)
        queryL, retrievalL = _one_hot([0], 2), _one_hot([1, 1, 0], 2)
        self.assertEqual(parity.deephash_calc_topmap(rB, qB, retrievalL, queryL, -1), 0.0)
        self.assertAlmostEqual(parity.deephash_calc_topmap(rB, qB, retrievalL, queryL, 3), 1 / 3)
        self.assertAlmostEqual(parity.deephash_calc_topmap(rB, qB, retrievalL, queryL, 10), 1 / 3)
        # The library's mAP@all keeps the whole database.
        src = rm.hamming_source(kernels.pack_bits(qB > 0), kernels.pack_bits(rB > 0), num_bits=2)
        got = rm.retrieval_metrics(src, np.array([0]), np.array([1, 1, 0]))
        self.assertAlmostEqual(got["map@all"], 1 / 3, places=6)

    def test_zero_hit_queries_count_as_zero(self):
        qB = np.array([[1.0, 1.0], [1.0, 1.0]], np.float32)
        rB = np.array([[1, 1], [-1, -1]], np.float32)
        queryL, retrievalL = _one_hot([0, 2], 3), _one_hot([0, 1], 3)
        # Query 0: relevant item first, AP 1; query 1 has no relevant item: (1 + 0) / 2.
        self.assertAlmostEqual(parity.deephash_calc_topmap(rB, qB, retrievalL, queryL, 2), 0.5)

    def test_tie_free_equals_library(self):
        # One query code repeated; item d differs from it in its first d bits: distances are
        # all distinct, so rankings agree and only the conventions matter.
        b = 8
        q_bits = np.ones(b)
        items = np.array([np.where(np.arange(b) < d, -1.0, 1.0) for d in range(b + 1)])
        rng = np.random.default_rng(0)
        perm = rng.permutation(b + 1)
        rB = items[perm]
        qB = np.tile(q_bits, (4, 1))
        q_ids, r_ids = rng.integers(0, 3, 4), rng.integers(0, 3, b + 1)
        src = rm.hamming_source(kernels.pack_bits(qB > 0), kernels.pack_bits(rB > 0), num_bits=b)
        lib = rm.retrieval_metrics(src, q_ids, r_ids, map_ks=(3, 8), precision_ks=())
        args = (rB, qB, _one_hot(r_ids, 3), _one_hot(q_ids, 3))
        self.assertAlmostEqual(parity.deephash_calc_topmap(*args, 3), lib["map@3"], places=6)
        # topk = -1 is mAP@(N-1) = mAP@8 here.
        self.assertAlmostEqual(parity.deephash_calc_topmap(*args, -1), lib["map@8"], places=6)

    def test_heavy_ties_follow_numpy_argsort(self):
        rng = np.random.default_rng(1)
        q, n, b = 6, 40, 3  # 40 items over 4 distances: heavy ties
        qB = rng.choice([-1.0, 1.0], (q, b)).astype(np.float32)
        rB = rng.choice([-1.0, 1.0], (n, b)).astype(np.float32)
        queryL = rng.integers(0, 2, (q, 3))
        retrievalL = rng.integers(0, 2, (n, 3))
        rel = ref.relevance_matrix(queryL, retrievalL)
        order = [np.argsort(0.5 * (b - qB[i] @ rB.T)) for i in range(q)]
        for topk in (5, 17):
            self.assertAlmostEqual(
                parity.deephash_calc_topmap(rB, qB, retrievalL, queryL, topk),
                _argsort_oracle(order, rel, topk),
                places=12,
            )
        want = _argsort_oracle([o[:-1] for o in order], rel, -1)
        self.assertAlmostEqual(
            parity.deephash_calc_topmap(rB, qB, retrievalL, queryL, -1), want, places=12
        )

    def test_shape_errors(self):
        with self.assertRaisesRegex(ValueError, "share b"):
            parity.deephash_calc_topmap(
                np.ones((3, 4)), np.ones((1, 5)), np.ones((3, 2)), np.ones((1, 2)), 2
            )


class ThulabTest(absltest.TestCase):
    def test_hand_worked(self):
        q = np.array([[1.0, 0.0]])
        rec = np.array([[3.0, 0.0], [2.0, 0.0], [1.0, 0.0]])
        ql, dl = np.array([[1, 0]]), np.array([[0, 1], [1, 0], [1, 0]])
        # Ranked relevance [0, 1, 1]. R = 2: one hit at rank 2 -> 1/2; R = 3: (1/2 + 2/3)/2.
        self.assertAlmostEqual(parity.thulab_aqd_map(q, rec, ql, dl, 2), 0.5)
        self.assertAlmostEqual(parity.thulab_aqd_map(q, rec, ql, dl, 3), 7 / 12)
        self.assertEqual(parity.thulab_aqd_map(q, rec, ql, dl, 1), 0.0)  # no hit in top 1
        np.testing.assert_array_equal(ql, [[1, 0]])  # the caller's labels are left alone
        with self.assertRaisesRegex(ValueError, "original crashes"):
            parity.thulab_aqd_map(q, rec, ql, dl, 4)

    def test_quantize_levels(self):
        codebook = np.arange(2 * 3 * 2, dtype=np.float32).reshape(2, 3, 2)  # [M=2, K=3, D=2]
        codes = np.array([[2, 0], [1, 2]])
        np.testing.assert_array_equal(parity.thulab_quantize(codes, codebook, 1), [[4, 5], [2, 3]])
        np.testing.assert_array_equal(
            parity.thulab_quantize(codes, codebook), [[4 + 6, 5 + 7], [2 + 10, 3 + 11]]
        )
        self.assertEqual(parity.thulab_quantize(codes, codebook).dtype, np.float64)
        with self.assertRaisesRegex(ValueError, "level"):
            parity.thulab_quantize(codes, codebook, 3)

    def test_tie_free_equals_library(self):
        rng = np.random.default_rng(2)
        q, n, d = 8, 60, 5
        feats = rng.normal(size=(q, d))
        rec = parity.thulab_quantize(rng.integers(0, 4, (n, 2)), rng.normal(size=(2, 4, d)))
        rec += rng.normal(scale=1e-3, size=rec.shape)  # continuous: no ties
        ql, dl = rng.integers(0, 2, (q, 3)), rng.integers(0, 2, (n, 3))
        ql[0] = 0  # no labels: never relevant, counts as 0
        for r in (10, n):
            lib = rm.retrieval_metrics(
                rm.dense_source(feats.astype(np.float32), rec.astype(np.float32)),
                ql,
                dl,
                map_ks=(r,),
                precision_ks=(),
            )
            self.assertAlmostEqual(
                parity.thulab_aqd_map(feats, rec, ql, dl, r), lib[f"map@{r}"], places=5
            )

    def test_heavy_ties_follow_numpy_argsort(self):
        rng = np.random.default_rng(3)
        q, n = 5, 50
        feats = rng.integers(-1, 2, (q, 2)).astype(np.float64)
        rec = rng.integers(-1, 2, (n, 2)).astype(np.float64)  # few distinct scores
        ql, dl = rng.integers(0, 2, (q, 4)), rng.integers(0, 2, (n, 4))
        order = np.argsort(-feats.dot(rec.T), 1)
        rel = ref.relevance_matrix(ql, dl)
        for r in (7, 50):
            self.assertAlmostEqual(
                parity.thulab_aqd_map(feats, rec, ql, dl, r),
                _argsort_oracle(order, rel, r),
                places=12,
            )


if __name__ == "__main__":
    absltest.main()
