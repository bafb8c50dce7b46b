"""The retrieval evaluator's code-group statistics and its `legacy_compactbit` packing option.

The evaluator runs on handmade codes (its encoder is replaced by a lookup, so no network is
involved). Oracles: `np.unique(..., axis=0)` for the code groups, and the NumPy metrics of
`metrics/reference.py` on brute-force Hamming distances (correct and legacy) for the mAP.
"""

import ml_collections
import numpy as np
import pytest

from dpq_jax import config_lib, report
from dpq_jax.evaluators import retrieval
from dpq_jax.methods import dpq, dsh, kw, opqn
from dpq_jax.metrics import reference as metrics_ref

BITS = (12, 48)
NUM_QUERY, NUM_DB, NUM_CLASSES = 40, 200, 8


def unique_oracle(codes):
    _, counts = np.unique(np.asarray(codes), axis=0, return_counts=True)
    return len(counts), int(counts.max())


def test_code_group_stats_on_handmade_codes():
    pq = np.array([[1, 2], [1, 2], [3, 4], [1, 2], [3, 4], [2, 1], [1, 3]], np.uint8)
    assert retrieval.code_group_stats(pq) == (4, 3)  # {12: 3, 34: 2, 21: 1, 13: 1}
    bits = np.array([[0, 1, 1], [0, 1, 1], [1, 1, 0], [0, 1, 1], [1, 1, 0], [0, 0, 0]])
    assert retrieval.code_group_stats(bits.astype(np.uint8)) == (3, 3)
    assert retrieval.code_group_stats(bits.astype(np.int32)) == (3, 3)
    assert retrieval.code_group_stats(np.zeros((5, 4), np.uint8)) == (1, 5)
    assert retrieval.code_group_stats(np.eye(6, dtype=np.uint8)) == (6, 1)
    assert retrieval.code_group_stats(np.zeros((0, 4), np.uint8)) == (0, 0)
    rng = np.random.default_rng(0)
    for shape in [(500, 4), (500, 12), (300, 48)]:
        protos = rng.integers(0, 2 if shape[1] > 4 else 5, (37, shape[1]), dtype=np.uint8)
        codes = protos[rng.integers(0, 37, shape[0])]
        assert retrieval.code_group_stats(codes) == unique_oracle(codes)


def _data(seed=0):
    """Labels of the 240 items and their 0/1 codes per head: a noisy prototype per class for
    most database items (so identical codes form groups), random codes for the rest."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, NUM_CLASSES, NUM_QUERY + NUM_DB)
    codes = []
    for bits in BITS:
        protos = rng.integers(0, 2, (NUM_CLASSES, bits), dtype=np.uint8)
        own = protos[labels]
        flip = rng.random(own.shape) < 0.3
        noisy = np.where(flip, 1 - own, own).astype(np.uint8)
        keep = (np.arange(len(labels)) % 3 == 0)[:, None]  # exact prototypes form groups
        codes.append(np.where(keep, own, noisy).astype(np.uint8))
    return labels, codes


def make_evaluator(lookup_evaluator, method, code_lengths, *, hamming_packing="bits", seed=0):
    """An evaluator (the `lookup_evaluator` fixture) whose "encoding" looks `_data`'s codes up."""
    labels, codes = _data(seed)
    cfg = config_lib.retrieval_eval(
        "query", "database", log_steps=0, final=True, hamming_packing=hamming_packing
    )
    ev, splits = lookup_evaluator(
        method,
        code_lengths,
        cfg,
        labels,
        NUM_QUERY,
        lambda indices: {"codes": tuple(c[indices] for c in codes[: len(code_lengths)])},
    )
    return ev, labels, codes, splits


def reference_compactbit(bits01):
    """The references' `compactbit` loop on the signs 2 * bits - 1, mod 256."""
    signs = 2 * bits01.astype(np.int64) - 1
    out = np.zeros((signs.shape[0], -(-signs.shape[1] // 8)), np.uint8)
    for i in range(signs.shape[0]):
        for w in range(out.shape[1]):
            chunk = signs[i, 8 * w : 8 * w + 8]
            out[i, w] = sum(int(s) * 2**k for k, s in enumerate(chunk)) % 256
    return out


def brute_force(dist, ql, dl):
    want = metrics_ref.retrieval_metrics(-dist.astype(np.float64), ql, dl, precision_ks=(5,))
    rel = ql[:, None] == dl[None, :]
    want["p@r2"], want["r@r2"] = metrics_ref.hamming_radius_pr(dist, rel, 2)
    return want


@pytest.mark.parametrize("packing", ["bits", "legacy_compactbit"])
def test_evaluator_scores_each_packing_like_numpy(packing, lookup_evaluator):
    ev, labels, codes, splits = make_evaluator(
        lookup_evaluator, dsh.METHOD, BITS, hamming_packing=packing
    )
    assert ev.conventions["hamming_packing"] == packing
    assert ("legacy_compactbit" in ev.conventions["search"]) == (packing != "bits")
    metrics = ev.run(state=None)
    ql, dl = labels[splits.query], labels[splits.database]
    for head, bits in enumerate(BITS):
        q, db = codes[head][splits.query], codes[head][splits.database]
        true = (q[:, None, :] != db[None, :, :]).sum(-1)
        lq, ldb = reference_compactbit(q), reference_compactbit(db)
        legacy = np.unpackbits(lq[:, None, :] ^ ldb[None, :, :], axis=-1).sum(-1)
        want = brute_force(legacy if packing != "bits" else true, ql, dl)
        other = brute_force(true if packing != "bits" else legacy, ql, dl)
        for key in ("map@all", "p@5", "p@r2", "r@r2"):
            np.testing.assert_allclose(metrics[f"test/{bits}bit/{key}"], want[key], rtol=1e-6)
        # The packings rank differently: the legacy numbers are not the correct ones.
        assert abs(want["map@all"] - other["map@all"]) > 1e-3
        distinct, largest = unique_oracle(db)
        assert metrics[f"test/{bits}bit/distinct_codes"] == distinct
        assert metrics[f"test/{bits}bit/largest_code_group"] == largest
        assert 1 < largest < distinct < NUM_DB  # groups exist: the test means something
    # The mean over code lengths covers the metrics, not the code-group numbers.
    np.testing.assert_allclose(
        metrics["test/map@all"], np.mean([metrics[f"test/{b}bit/map@all"] for b in BITS])
    )
    assert "test/distinct_codes" not in metrics and "test/largest_code_group" not in metrics


def test_single_head_keys_and_report_rows_carry_code_stats(lookup_evaluator):
    ev, _, codes, splits = make_evaluator(lookup_evaluator, dsh.METHOD, (12,))
    metrics = ev.run(state=None)
    distinct, largest = unique_oracle(codes[0][splits.database])
    assert metrics["test/distinct_codes"] == distinct
    assert metrics["test/largest_code_group"] == largest
    config = ml_collections.ConfigDict(
        {"method": "dsh", "protocol": "toy", "input": {"dataset": "toy"}}
    )
    rep = report.build_report(
        config,
        code_lengths=(12,),
        step=4,
        selected_on="test/map@all",
        metrics=metrics,
        baseline={},
        evaluators={"test": ev},
        splits=splits,
    )
    (row,) = rep["results"]
    assert row["code_stats"] == {"distinct_codes": distinct, "largest_code_group": largest}
    assert "distinct_codes" not in row["metrics"] and "map@all" in row["metrics"]
    assert row["conventions"]["hamming_packing"] == "bits"
    text = report.format_report(rep)
    header, _, values = text.splitlines()[3:6]
    assert "distinct codes" in header and "largest group" in header
    cells = dict(
        zip(
            [c.strip() for c in header.split(" | ")],
            [c.strip() for c in values.split(" | ")],
            strict=True,
        )
    )
    assert int(cells["distinct codes"]) == distinct and int(cells["largest group"]) == largest
    assert "hamming_packing=bits" in text


def test_legacy_packing_is_refused_for_pq_methods_and_unknown_values(lookup_evaluator):
    with pytest.raises(ValueError, match="applies to binary codes only.*'opqn'"):
        make_evaluator(lookup_evaluator, opqn.METHOD, (32,), hamming_packing="legacy_compactbit")
    with pytest.raises(ValueError, match="hamming_packing must be one of"):
        config_lib.retrieval_eval("q", "d", log_steps=0, final=True, hamming_packing="signs")
    ev, *_ = make_evaluator(lookup_evaluator, opqn.METHOD, (32,))
    assert "hamming_packing" not in ev.conventions  # PQ codes are not packed bits


def _usage_oracle(codes, code_type, codebook_size=None):
    """NumPy oracle of one head's `code_usage`: np.unique per codebook, column means per bit."""
    if code_type == "binary":
        return {"ones_fraction": codes.astype(np.float64).mean(axis=0).tolist()}
    used, entropy = [], []
    for column in codes.T:
        _, counts = np.unique(column, return_counts=True)
        p = counts / counts.sum()
        used.append(len(counts))
        entropy.append(-(p * np.log2(p)).sum())
    return {"K": codebook_size, "used": used, "entropy": entropy}


def _check_usage(got, want):
    if "ones_fraction" in want:
        np.testing.assert_allclose(got["ones_fraction"], want["ones_fraction"], atol=1e-12)
        return
    assert got["codebook_size"] == want["K"]
    assert got["max_entropy_bits"] == pytest.approx(np.log2(want["K"]))
    assert got["used_codewords"] == want["used"]
    np.testing.assert_allclose(got["usage_entropy_bits"], want["entropy"], atol=1e-12)


# (method, code lengths, M or levels, K): OPQN and KW store one [N, M] code; DPQ one [N, L]
# code whose first l columns are the l-level prefix (head l - 1).
PQ_CASES = {
    "opqn": (opqn.METHOD, (12,), 3, 16),
    "kw": (kw.METHOD, (12,), 3, 16),
    "dpq": (dpq.METHOD, (4, 8, 12), 3, 16),
}


@pytest.mark.parametrize("name", sorted(PQ_CASES))
def test_pq_code_usage_reaches_the_report(name, lookup_evaluator):
    method, lengths, m, k = PQ_CASES[name]
    rng = np.random.default_rng(5)
    n = NUM_QUERY + NUM_DB
    # Skewed usage: book 0 uses 3 words, book 1 a geometric spread, book 2 every word.
    codes = np.stack(
        [
            rng.choice([1, 4, 9], n, p=[0.6, 0.3, 0.1]),
            np.minimum(rng.geometric(0.4, n) - 1, k - 1),
            rng.integers(0, k, n),
        ],
        axis=1,
    ).astype(np.uint8)
    ev, labels, _, splits = make_evaluator(lookup_evaluator, method, lengths)
    ev._encode_split = lambda fn, state, indices: {"codes": (codes[np.asarray(indices)],)}
    books = np.zeros((m, k, 4), np.float32)
    heads = len(lengths)
    ev._code_params = lambda state: tuple(books[: m - heads + 1 + h] for h in range(heads))
    ev._source = lambda *args: None  # no search: the scores are other tests' business
    ev._score = lambda source, *, prefix, bits: {f"{prefix}/map@all": 0.5}
    metrics = ev.run(state=None)
    db = codes[splits.database]
    for head, bits in enumerate(lengths):
        stored = db[:, : db.shape[1] - heads + 1 + head]  # DPQ: the prefix of head l
        _check_usage(ev.last_code_usage[bits], _usage_oracle(stored, "pq", k))
        assert metrics[f"{ev.metric_prefix(bits)}/distinct_codes"] == unique_oracle(stored)[0]
    rep = _report(ev, method.name, lengths, metrics, splits)
    for row, bits in zip(rep["results"], lengths, strict=True):
        assert row["code_usage"] == ev.last_code_usage[bits]
    text = report.format_report(rep)
    cells = _last_row_cells(text)
    want = _usage_oracle(db, "pq", k)
    assert cells["words used"] == f"{min(want['used'])}-{max(want['used'])}/{k}"
    assert cells["usage entropy"] == (
        f"{min(want['entropy']):.2f}-{max(want['entropy']):.2f}/{np.log2(k):.2f} b"
    )


def test_binary_code_usage_reaches_the_report(lookup_evaluator):
    ev, _, codes, splits = make_evaluator(lookup_evaluator, dsh.METHOD, BITS)
    metrics = ev.run(state=None)
    for head, bits in enumerate(BITS):
        want = _usage_oracle(codes[head][splits.database], "binary")
        _check_usage(ev.last_code_usage[bits], want)
    rep = _report(ev, "dsh", BITS, metrics, splits)
    assert [row["code_usage"] for row in rep["results"]] == [ev.last_code_usage[b] for b in BITS]
    ones = ev.last_code_usage[BITS[-1]]["ones_fraction"]
    assert _last_row_cells(report.format_report(rep))["ones fraction"] == (
        f"{min(ones):.2f}-{max(ones):.2f}"
    )


def _report(ev, method_name, lengths, metrics, splits):
    config = ml_collections.ConfigDict(
        {"method": method_name, "protocol": "toy", "input": {"dataset": "toy"}}
    )
    return report.build_report(
        config,
        code_lengths=lengths,
        step=4,
        selected_on="test/map@all",
        metrics=metrics,
        baseline={},
        evaluators={"test": ev},
        splits=splits,
    )


def _last_row_cells(text):
    lines = text.splitlines()
    header = lines[3]
    values = [line for line in lines if line.startswith("toy ")][-1]
    return dict(
        zip(
            [c.strip() for c in header.split(" | ")],
            [c.strip() for c in values.split(" | ")],
            strict=True,
        )
    )
