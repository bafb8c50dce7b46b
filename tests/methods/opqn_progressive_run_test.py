"""A tiny Progressive OPQN run on ORL faces through the whole spine: one model, trained a few
steps, its database encoded once and evaluated at every prefix of the levels (one report row
per code length), then served by the retriever at each length.

Oracles: the NumPy twin of the quantizer (`quantizers/opqn_progressive_reference.py`), brute
force of the inner product between the query's l-level soft quantization and the database's
l-level reconstruction, and the NumPy mAP of `metrics/reference.py`.
"""

import json
import os

import jax
import numpy as np
import pytest

from dpq_jax import inference
from dpq_jax.data import protocols
from dpq_jax.metrics import reference as metrics_ref
from dpq_jax.quantizers import opqn_progressive_reference as quant_ref
from dpq_jax.search import index
from dpq_jax.search.retriever import Retriever

BITS = (4, 8, 12, 16)  # runlocal: M = 1 book of K = 16 codewords (4 bits) per level, L = 4


@pytest.fixture(scope="module")
def run(tmp_path_factory, orl_runs):
    """(workdir, ORL source, TrainResult) of a 4-step run."""
    yield from orl_runs.tiny_orl_run(tmp_path_factory, "orl_opqn_progressive.py", "runlocal")


def test_report_has_one_row_per_prefix(run):
    workdir, _, result = run
    report = json.load(open(os.path.join(workdir, "report.json")))
    assert report == json.loads(json.dumps(result.report))
    assert report["bits"] == list(BITS)
    rows = report["results"]
    assert [row["bits"] for row in rows] == list(BITS)
    for row in rows:
        assert row["search"].startswith("progressive ADC")
        assert row["conventions"]["query_side"] == "soft_quantized"
        assert set(row["metrics"]) == {"map@all", "p@5"}
    # A longer prefix refines the grouping of the same items: never fewer distinct codes.
    distinct = [row["code_stats"]["distinct_codes"] for row in rows]
    assert distinct == sorted(distinct) and distinct[0] <= 16
    metrics = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    val = [m for m in metrics if "val/4bit/map@all" in m]
    assert val, "validation logs each prefix"
    for m in val:  # checkpoint selection: the mean over the prefixes
        np.testing.assert_allclose(
            m["val/map@all"], np.mean([m[f"val/{b}bit/map@all"] for b in BITS])
        )
    train_logs = [m for m in metrics if "train/loss_clf_quantized" in m]
    assert train_logs and all(np.isfinite(m["train/gain_4level"]) for m in train_logs)


def test_prefix_scores_equal_numpy_brute_force_of_the_first_levels(run):
    workdir, source, result = run
    config, method, model, meta = inference.restore_model(workdir)
    sp = protocols.get_splits(
        config.protocol, source.labels, config.seed, split_dir=os.path.join(workdir, "splits")
    )
    labels = np.asarray(source.labels)
    head = model.head
    assign, books, gains = (
        np.asarray(a, np.float64) for a in (head.assign[...], head.codebooks[...], head.gains())
    )
    full = Retriever(config, method, model, meta, code_length=BITS[-1])
    all_codes = full.encode(source.images[sp.database])  # [N, L·M], encoded once
    assert all_codes.shape == (len(sp.database), len(BITS))
    query_outputs = full.query_outputs(source.images[sp.query])
    want_queries = quant_ref.progressive_ortho_quantize(
        query_outputs["feats"], assign, books, gains, scale_by_norm=False
    )
    np.testing.assert_allclose(query_outputs["soft"], want_queries["soft"], rtol=1e-4, atol=1e-5)
    params = jax.device_get(method.code_params(model))
    for level, bits in enumerate(BITS, start=1):
        codes = all_codes[:, :level]
        recon = quant_ref.reconstruct(codes[:, :, None], books, gains)  # M = 1
        brute = np.asarray(want_queries["soft"][:, level - 1]) @ recon.T  # [Q, N]
        lut = method.search_queries(
            query_outputs, head=level - 1, params=params[level - 1], query_side="soft_quantized"
        )
        prefix_index = method.index(codes, params=params[level - 1], query_side="soft_quantized")
        assert prefix_index.progressive and prefix_index.code_bits == bits
        scores, ids = prefix_index.search(lut, 20)
        np.testing.assert_allclose(scores, np.take_along_axis(brute, ids, 1), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(scores, -np.sort(-brute, axis=1)[:, :20], rtol=1e-4, atol=1e-5)
        want = metrics_ref.retrieval_metrics(
            brute, labels[sp.query], labels[sp.database], map_ks=(-1,), precision_ks=(5,)
        )
        row = [row for row in result.report["results"] if row["bits"] == bits][0]
        np.testing.assert_allclose(row["metrics"]["map@all"], want["map@all"], rtol=1e-4)
        np.testing.assert_allclose(row["metrics"]["p@5"], want["p@5"], rtol=1e-4)


def test_retriever_saves_and_reloads_a_prefix_index(run, tmp_path):
    workdir, source, _ = run
    r = Retriever.from_workdir(workdir, code_length=8)
    r.add(source.images[:30])
    # The 8-bit retriever stores the first two levels' codes, as the twin encodes them.
    feats = np.asarray(r.query_outputs(source.images[:30])["feats"], np.float64)
    _, _, model, _ = inference.restore_model(workdir)
    head = model.head
    want = quant_ref.progressive_ortho_quantize(
        feats, *(np.asarray(a) for a in (head.assign[...], head.codebooks[...], head.gains()))
    )["codes"][:, :2, :]
    np.testing.assert_array_equal(r.encode(source.images[:30]), want.reshape(30, -1))
    path = r.save(tmp_path / "db8.npz")
    loaded = index.load_index(path)
    assert loaded.progressive and loaded.code_bits == 8
    back = Retriever.load(path, workdir)
    assert back.code_length == 8
    for a, b in zip(back.search(source.images[:3], 5), r.search(source.images[:3], 5)):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="code lengths"):
        Retriever.from_workdir(workdir, code_length=32)
