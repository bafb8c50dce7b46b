"""Recomputed curves, code statistics and top-k lists of the tiny trained runs, checked against
their report.json, hand-derived values and brute-force NumPy rankings."""

import dataclasses

import numpy as np
import pytest

from dpq_jax.analysis import evaluation

pytestmark = pytest.mark.usefixtures("fast_compile")  # the trained runs' numerics

RELEVANT_PER_QUERY = 7  # orl_seen: 7 database images of each query's identity


def _report_rows(encoded):
    report = encoded.run.require_report()
    return {r["bits"]: r for r in report["results"] if r["eval"] == encoded.eval_name}


def test_encoded_splits_are_the_reports(encoded_runs):
    for encoded in encoded_runs.values():
        row = next(iter(_report_rows(encoded).values()))
        assert encoded.step == encoded.run.report["selected_step"]
        assert len(encoded.query_indices) == row["num_queries"] == 120
        assert len(encoded.db_indices) == row["num_database"] == 280
        assert encoded.method.describe_search(encoded.query_side) == row["search"]


def test_recomputed_metrics_equal_the_report(encoded_runs):
    for encoded in encoded_runs.values():
        reported = _report_rows(encoded)
        rows = evaluation.recomputed_metrics(encoded)
        assert [r["bits"] for r in rows] == sorted(reported) == list(encoded.code_lengths)
        for row in rows:
            expected = reported[row["bits"]]["metrics"]
            assert set(row["metrics"]) == set(expected)
            for key, value in expected.items():
                assert row["metrics"][key] == pytest.approx(value, abs=1e-12), key


def test_rank_curves_agree_with_report_and_hand_values(encoded_runs):
    for encoded in encoded_runs.values():
        reported = _report_rows(encoded)
        rows = evaluation.pr_table(encoded, by="rank")
        assert [r["bits"] for r in rows] == list(encoded.code_lengths)
        for row in rows:
            x = row["x"].tolist()
            assert x[0] == 1 and x[-1] == 280 and x == sorted(set(x))
            assert row["precision"][x.index(5)] == pytest.approx(
                reported[row["bits"]]["metrics"]["p@5"], abs=1e-12
            )
            # Retrieving the whole database finds every relevant item: recall 1, precision 7/280.
            assert row["recall"][-1] == pytest.approx(1.0)
            assert row["precision"][-1] == pytest.approx(RELEVANT_PER_QUERY / 280)
            assert np.all(np.diff(row["recall"]) >= -1e-12)  # recall never falls with K
        table = evaluation.precision_at_k_table(rows)
        assert len(table) == sum(len(r["x"]) for r in rows)
        first = [t for t in table if t["bits"] == rows[0]["bits"]]
        np.testing.assert_array_equal([t["k"] for t in first], rows[0]["x"])
        np.testing.assert_array_equal([t["precision"] for t in first], rows[0]["precision"])


def test_radius_curves_agree_with_report(encoded_runs):
    assert evaluation.pr_table(encoded_runs["orl_opqn"], by="radius") == []  # PQ codes
    encoded = encoded_runs["orl_dsh"]
    reported = _report_rows(encoded)
    rows = evaluation.pr_table(encoded, by="radius")
    assert [r["bits"] for r in rows] == [16, 32]
    for row in rows:
        metrics = reported[row["bits"]]["metrics"]
        np.testing.assert_array_equal(row["x"], np.arange(row["bits"] + 1))
        assert row["precision"][2] == pytest.approx(metrics["p@r2"], abs=1e-12)
        assert row["recall"][2] == pytest.approx(metrics["r@r2"], abs=1e-12)
        assert row["recall"][-1] == pytest.approx(1.0)  # radius b holds the whole database


def test_code_usage_matches_report_code_stats(encoded_runs):
    for encoded in encoded_runs.values():
        reported = _report_rows(encoded)
        for row in evaluation.code_usage_table(encoded):
            stats = reported[row["bits"]]["code_stats"]
            assert row["distinct_codes"] == stats["distinct_codes"]
            assert row["largest_code_group"] == stats["largest_code_group"]
            assert row["group_sizes"].sum() == 280
            codes = encoded.codes(encoded.code_lengths.index(row["bits"]))
            if row["code_type"] == "pq":
                assert row["codeword_counts"].shape == (4, 256)  # M = 4 codebooks of K = 256
                np.testing.assert_array_equal(row["codeword_counts"].sum(axis=1), 280)
                assert row["codeword_counts"][1, codes[0, 1]] >= 1
                assert np.all((row["entropy"] > 0) & (row["entropy"] <= row["max_entropy"]))
                assert row["max_entropy"] == 8.0
            else:
                np.testing.assert_allclose(row["ones_fraction"], codes.mean(axis=0))
                assert row["ones_fraction"].shape == (row["bits"],)


def _brute_force_scores(encoded, head, positions):
    """Scores of every database item for some queries, best = largest, in NumPy."""
    sub = {
        k: (tuple(np.asarray(x)[positions] for x in v) if isinstance(v, tuple) else v[positions])
        for k, v in encoded.queries.items()
    }
    lookup = encoded.method.search_queries(
        sub, head=head, params=encoded.head_params(head), query_side=encoded.query_side
    )
    codes = encoded.codes(head)
    if encoded.code_type == "binary":
        query_bits = np.asarray(sub["codes"][head], np.int64)
        return -(query_bits[:, None, :] != codes[None].astype(np.int64)).sum(-1)
    lut = np.asarray(lookup, np.float64)  # [q, M, K]
    scores = sum(lut[:, m, codes[:, m]] for m in range(codes.shape[1]))
    return scores if encoded.method.metric(encoded.query_side) == "ip" else -scores


@pytest.mark.parametrize("name", ["orl_opqn", "orl_dsh"])
def test_top_k_is_a_brute_force_top_k(encoded_runs, name):
    encoded = encoded_runs[name]
    rows = evaluation.top_k_table(encoded, num_queries=5, k=6)
    positions = np.array([0, 30, 60, 89, 119])  # spread evenly over 120 queries
    assert [r["query_index"] for r in rows] == encoded.query_indices[positions].tolist()
    head = len(encoded.code_lengths) - 1  # the longest code by default
    brute = _brute_force_scores(encoded, head, positions)
    labels = np.asarray(encoded.source.labels)
    position_of = {int(i): p for p, i in enumerate(encoded.db_indices)}
    for row, scores in zip(rows, brute, strict=True):
        assert row["bits"] == encoded.code_lengths[head]
        got = np.array([scores[position_of[int(i)]] for i in row["result_indices"]])
        best = np.sort(scores)[::-1][:6]
        np.testing.assert_allclose(got, best, rtol=1e-5, atol=1e-5)  # the 6 best, in order
        if encoded.code_type == "binary":  # integer distances: ties by database position
            order = np.argsort(-scores, kind="stable")[:6]
            np.testing.assert_array_equal(row["result_indices"], encoded.db_indices[order])
        np.testing.assert_array_equal(
            row["relevant"], labels[row["result_indices"]] == labels[row["query_index"]]
        )


def test_relevance_rule():
    np.testing.assert_array_equal(
        evaluation.relevant(np.array([3]), np.array([[3, 1, 3]])), [[True, False, True]]
    )
    multi_q = np.array([[1, 0, 1]])
    multi_db = np.array([[[0, 0, 1], [0, 1, 0], [1, 1, 1]]])
    np.testing.assert_array_equal(evaluation.relevant(multi_q, multi_db), [[True, False, True]])


def test_rank_cutoffs():
    ks = evaluation.rank_cutoffs(5000, extra=(7, 9999))
    assert ks[0] == 1 and ks[-1] == 5000 and 7 in ks and 9999 not in ks
    assert np.all(np.diff(ks) > 0) and 100 <= ks.size <= 160


def test_encode_run_refuses_bad_requests(encoded_runs):
    run = encoded_runs["orl_opqn"].run
    with pytest.raises(evaluation.RunError, match="no evaluator 'val'.*\\['test'\\]"):
        evaluation.encode_run(run, eval_name="val")
    with pytest.raises(evaluation.RunError, match="splits/ folder"):
        evaluation.encode_run(dataclasses.replace(run, splits=None))


def test_encode_run_refuses_splits_the_checkpoint_was_not_trained_on(encoded_runs):
    from dpq_jax.data import protocols

    run = encoded_runs["orl_opqn"].run
    arrays = run.splits.arrays()
    arrays["database"] = arrays["database"][1:]  # one database item fewer
    other = protocols.Splits(run.splits.protocol, run.splits.seed, **arrays)
    with pytest.raises(evaluation.RunError, match="differs from the splits the checkpoint"):
        evaluation.encode_run(dataclasses.replace(run, splits=other), progress=False)
