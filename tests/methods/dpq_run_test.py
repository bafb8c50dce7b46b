"""A tiny DPQ-G run on ORL faces through the whole spine: one model, trained a few steps, its
database encoded once and evaluated at every prefix of the levels (one report row per code
length), then served by the retriever at each length.

Oracles: NumPy brute force of the inner product between the raw query embedding and the
reconstruction from the first l codebooks, and the NumPy mAP of `metrics/reference.py`.
"""

import json
import os

import jax
import numpy as np
import pytest
from flax import nnx

from dpq_jax import config_lib, inference, train
from dpq_jax.data import orl, protocols
from dpq_jax.metrics import reference as metrics_ref
from dpq_jax.quantizers import reference as quant_ref
from dpq_jax.search import index
from dpq_jax.search.retriever import Retriever

CONFIG = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "orl_dpq.py")
BITS = (4, 8, 12, 16)  # runlocal: K = 16 codewords (4 bits) per level, L = 4 levels


@pytest.fixture(scope="module")
def run(tmp_path_factory, orl_runs):
    """(workdir, ORL source, TrainResult) of a 4-step DPQ run."""
    yield from orl_runs.tiny_orl_run(tmp_path_factory, "orl_dpq.py", "runlocal")


def test_report_has_one_row_per_prefix(run):
    workdir, _, result = run
    report = json.load(open(os.path.join(workdir, "report.json")))
    assert report == json.loads(json.dumps(result.report))
    assert report["bits"] == list(BITS)
    rows = report["results"]
    assert [row["bits"] for row in rows] == list(BITS)
    for row in rows:
        assert row["search"].startswith("progressive ADC")
        assert row["conventions"]["query_side"] == "raw"
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
    train_logs = [m for m in metrics if "train/loss_semantic" in m]
    assert train_logs and all(np.isfinite(m["train/loss_quantization"]) for m in train_logs)


def test_prefix_scores_equal_numpy_brute_force_of_the_first_levels(run):
    workdir, source, result = run
    config, method, model, meta = inference.restore_model(workdir)
    sp = protocols.get_splits(
        config.protocol, source.labels, config.seed, split_dir=os.path.join(workdir, "splits")
    )
    labels = np.asarray(source.labels)
    books = np.asarray(model.quantizer.codebooks[...], np.float64)  # [L, K, D]
    full = Retriever(config, method, model, meta, code_length=BITS[-1])
    all_codes = full.encode(source.images[sp.database])  # [N, L], encoded once
    assert all_codes.shape == (len(sp.database), len(BITS))
    queries = np.asarray(full.query_outputs(source.images[sp.query])["feats"], np.float64)
    query_outputs = full.query_outputs(source.images[sp.query])
    params = jax.device_get(method.code_params(model))
    for level, bits in enumerate(BITS, start=1):
        head = level - 1
        codes = all_codes[:, :level]
        brute = queries @ quant_ref.reconstruct_progressive(codes, books).T  # [Q, N]
        lut = method.search_queries(query_outputs, head=head, params=params[head], query_side="raw")
        prefix_index = method.index(codes, params=params[head], query_side="raw")
        assert prefix_index.progressive and prefix_index.code_bits == bits
        scores, ids = prefix_index.search(lut, 20)
        np.testing.assert_allclose(scores, np.take_along_axis(brute, ids, 1), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(scores, -np.sort(-brute, axis=1)[:, :20], rtol=1e-5, atol=1e-5)
        want = metrics_ref.retrieval_metrics(
            brute, labels[sp.query], labels[sp.database], map_ks=(-1,), precision_ks=(5,)
        )
        row = [row for row in result.report["results"] if row["bits"] == bits][0]
        np.testing.assert_allclose(row["metrics"]["map@all"], want["map@all"], rtol=1e-5)
        np.testing.assert_allclose(row["metrics"]["p@5"], want["p@5"], rtol=1e-5)


def test_retriever_saves_and_reloads_a_prefix_index(run, tmp_path):
    workdir, source, _ = run
    r = Retriever.from_workdir(workdir, code_length=8)
    r.add(source.images[:30])
    # The 8-bit retriever stores the first two levels' codes of the query-side embedding.
    feats = r.query_outputs(source.images[:30])["feats"]
    books = np.asarray(r.code_params)  # [2, K, D]: the first two codebooks
    np.testing.assert_array_equal(
        r.encode(source.images[:30]), quant_ref.progressive_quantize(feats, books)["codes"]
    )
    path = r.save(tmp_path / "db8.npz")
    loaded = index.load_index(path)
    assert loaded.progressive and loaded.levels == 2 and loaded.code_bits == 8
    back = Retriever.load(path, workdir)
    assert back.code_length == 8
    for a, b in zip(back.search(source.images[:3], 5), r.search(source.images[:3], 5)):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="code lengths"):
        Retriever.from_workdir(workdir, code_length=32)


def test_two_stage_schedule_trains_the_codebooks_only_from_their_start_step(tmp_path):
    """The reference's recipe through the trainer: `Method.make_optimizer` builds the encoder
    and codebook optimizers, the codebooks stay at their initial values until
    `codebook_start_step`, and `restore_model` rebuilds the same optimizer tree."""
    jax.config.update("jax_disable_most_optimizations", True)
    try:
        data_dir = str(tmp_path / "tfds")
        orl.load_orl_faces(data_dir=data_dir)
        config = config_lib.load_config(CONFIG, "runlocal,schedule=two_stage")
        start = int(config.optim.codebook_start_step)
        assert 0 < start < config.total_steps
        with config.unlocked():
            config.input.data_dir = data_dir
            config.ckpt_steps = 1
            config.keep_ckpts = config.total_steps + 1
            config.evals.val.log_steps = config.total_steps
        workdir = str(tmp_path / "workdir")
        train.train_and_evaluate(config, workdir)

        def codebooks(step):
            _, _, model, _ = inference.restore_model(workdir, step=step)
            leaves = [
                np.asarray(v)
                for path, v in nnx.to_flat_state(nnx.state(model, nnx.Param))
                if "codebook" in "/".join(map(str, path))
            ]
            assert leaves, "no codebook parameter found"
            return leaves

        first, at_start, last = codebooks(1), codebooks(start), codebooks(config.total_steps)
        for a, b in zip(first, at_start, strict=True):
            np.testing.assert_array_equal(a, b)  # frozen before the codebook stage
        assert any(not np.array_equal(a, b) for a, b in zip(at_start, last, strict=True))
    finally:
        jax.config.update("jax_disable_most_optimizations", False)
