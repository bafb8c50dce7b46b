"""A tiny DPQ-KW run on ORL faces through the whole spine: trainer, evaluator, report,
retriever, index files, `dpq-search` and the FAISS export, all of them asking the method.

`configs/orl_kw.py:runlocal` shrunk to M = 2, K = 16, D = 32 (8-bit codes). Oracles: float64
NumPy re-computations from the restored model's embeddings (`quantizers/kw_reference.py`):
soft-quantized queries against the hard reconstructions of the database codes, brute-force
squared L2, and the NumPy mAP of `metrics/reference.py`.
"""

import json
import os

import numpy as np
import pytest

from dpq_jax import inference
from dpq_jax.data import pp as pp_lib
from dpq_jax.data import protocols
from dpq_jax.metrics import reference as metrics_ref
from dpq_jax.quantizers import kw_reference as ref
from dpq_jax.search import cli, index
from dpq_jax.search.retriever import Retriever

M, K, D = 2, 16, 32
BITS = M * 4


@pytest.fixture(scope="module")
def run(tmp_path_factory, orl_runs):
    """(workdir, ORL source, TrainResult) of a 4-step DPQ-KW run."""
    yield from orl_runs.tiny_orl_run(
        tmp_path_factory,
        "orl_kw.py",
        "runlocal",
        {
            "model.embedding_dim": D,
            "model.head.num_codebooks": M,
            "model.head.codebook_size": K,
        },
    )


@pytest.fixture(scope="module")
def oracle(run):
    """`search(images_q, codes_db) -> [Q, N]` float64 squared distances, and the model."""
    workdir, _, _ = run
    config, _, model, _ = inference.restore_model(workdir)
    fn = pp_lib.build(config.input.pp_eval)
    assign = np.asarray(model.head.assign[...], np.float64)
    books = np.asarray(model.head.codebooks[...], np.float64)

    def distances(query_images, db_codes):
        x = np.stack([fn(img, None) for img in query_images]).astype(np.float32)
        feats = np.asarray(model.backbone(x), np.float64)
        soft = ref.kw_layer(feats, assign, books)["soft"]  # [Q, D]
        hard = ref.combine(ref.one_hot(db_codes, K), books).reshape(len(db_codes), -1)
        return ((soft[:, None, :] - hard[None, :, :]) ** 2).sum(-1)

    return distances


def test_report_row(run):
    workdir, _, result = run
    report = json.load(open(os.path.join(workdir, "report.json")))
    assert report == json.loads(json.dumps(result.report))
    assert report["method"] == "kw"
    assert report["bits"] == [BITS]
    (row,) = report["results"]
    assert row["bits"] == BITS
    assert row["search"] == "ADC, query side 'l2'"
    assert row["conventions"]["query_side"] == "l2"
    assert {"map@all", "p@5"} <= set(row["metrics"])
    metrics = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    train_logs = [m for m in metrics if "train/loss_clf_hard" in m]
    assert train_logs, "the trainer logs the method's aux terms"
    assert all(np.isfinite(m["train/loss_clf_hard"]) for m in train_logs)


def test_test_map_equals_the_numpy_oracle(run, oracle):
    workdir, source, result = run
    config, method, model, meta = inference.restore_model(workdir)
    r = Retriever(config, method, model, meta)
    sp = protocols.get_splits(
        config.protocol, source.labels, config.seed, split_dir=os.path.join(workdir, "splits")
    )
    db_codes = r.encode(source.images[sp.database])
    dist = oracle(source.images[sp.query], db_codes)
    labels = np.asarray(source.labels)
    want = metrics_ref.retrieval_metrics(
        -dist, labels[sp.query], labels[sp.database], map_ks=(-1,), precision_ks=(5,)
    )
    (row,) = result.report["results"]
    np.testing.assert_allclose(row["metrics"]["map@all"], want["map@all"], rtol=1e-3)
    np.testing.assert_allclose(row["metrics"]["p@5"], want["p@5"], rtol=1e-3)


def test_retriever_search_is_brute_force_and_reloads(run, oracle, tmp_path):
    workdir, source, _ = run
    r = Retriever.from_workdir(workdir)
    assert r.query_side == "l2"
    r.add(source.images[:30])
    codes = r.encode(source.images[:30])
    assert codes.shape == (30, M) and codes.dtype == np.uint8
    ids, scores = r.search(source.images[:3], 30)
    dist = oracle(source.images[:3], codes)
    np.testing.assert_allclose(np.take_along_axis(dist, ids, 1), scores, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(np.sort(dist, axis=1), scores, rtol=1e-4, atol=1e-4)
    path = r.save(tmp_path / "db.npz")
    back = Retriever.load(path, workdir)
    assert isinstance(back.index, index.PQIndex) and back.index.metric == "l2"
    for a, b in zip(back.search(source.images[:3], 5), r.search(source.images[:3], 5)):
        np.testing.assert_array_equal(a, b)


def test_cli_and_faiss_export_on_pq_codes(run, tmp_path, capsys):
    workdir, source, _ = run
    out = tmp_path / "orl.npz"
    args = ["index", "--workdir", workdir, "--database", "dataset:orl_faces:database"]
    assert cli.main([*args, "--output", str(out)]) == 0
    assert f"{BITS}-bit codes" in capsys.readouterr().err
    r = Retriever.load(out, workdir)
    faiss = pytest.importorskip("faiss")
    from dpq_jax.search import faiss_export

    fidx = faiss_export.to_faiss_pq(r.index)
    fdist, _ = fidx.search(r.query_vectors(source.images[:5]), 10)
    dist, _ = r.index.search(r.search_queries(source.images[:5]), 10)
    np.testing.assert_allclose(fdist, dist, rtol=1e-4, atol=1e-4)
    del faiss
