"""A tiny four-length DDH run on ORL faces through the trainer, evaluator and report.

Oracles: brute-force Hamming ranking of the sign bits of the restored model's relaxed codes,
and the NumPy mAP of `metrics/reference.py`.
"""

import json
import os

import jax
import numpy as np
import pytest

from dpq_jax import config_lib, inference, train
from dpq_jax.data import orl, protocols
from dpq_jax.metrics import reference as metrics_ref
from dpq_jax.search.retriever import Retriever

CONFIG = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "orl_ddh.py")
BITS = (12, 48)  # two heads: multi-head coverage at half the compile time of four


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """(workdir, ORL source, TrainResult) of a 4-step DDH run with four code lengths."""
    jax.config.update("jax_disable_most_optimizations", True)  # compile faster, as flax does
    try:
        data_dir = str(tmp_path_factory.mktemp("tfds"))
        source = orl.load_orl_faces(data_dir=data_dir)
        config = config_lib.load_config(CONFIG, "runlocal,multihead")
        with config.unlocked():
            config.model.bits = BITS
            config.input.data_dir = data_dir
        workdir = str(tmp_path_factory.mktemp("workdir"))
        result = train.train_and_evaluate(config, workdir)
        yield workdir, source, result
    finally:
        jax.config.update("jax_disable_most_optimizations", False)


def test_report_has_one_hamming_row_per_code_length(run):
    workdir, _, result = run
    report = json.load(open(os.path.join(workdir, "report.json")))
    assert report["method"] == "ddh" and report == json.loads(json.dumps(result.report))
    assert [row["bits"] for row in report["results"]] == list(BITS)
    assert all(row["search"].startswith("Hamming") for row in report["results"])
    metrics = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    assert any("train/loss_ce_48bit" in m and "train/kernel_l2" in m for m in metrics)


def test_test_map_equals_the_numpy_oracle_on_the_restored_codes(run):
    workdir, source, result = run
    config, method, model, meta = inference.restore_model(workdir)
    sp = protocols.get_splits(
        config.protocol, source.labels, config.seed, split_dir=os.path.join(workdir, "splits")
    )
    r = Retriever(config, method, model, meta, code_length=48)
    db_bits, q_bits = r.encode(source.images[sp.database]), r.encode(source.images[sp.query])
    dist = (q_bits[:, None, :] != db_bits[None, :, :]).sum(-1)
    labels = np.asarray(source.labels)
    want = metrics_ref.retrieval_metrics(
        -dist.astype(np.float64),
        labels[sp.query],
        labels[sp.database],
        map_ks=(-1,),
        precision_ks=(5,),
    )
    row = [row for row in result.report["results"] if row["bits"] == 48][0]
    np.testing.assert_allclose(row["metrics"]["map@all"], want["map@all"], rtol=1e-6)
    np.testing.assert_allclose(row["metrics"]["p@5"], want["p@5"], rtol=1e-6)
