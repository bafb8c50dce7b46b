"""A tiny four-length DCBH run on ORL faces through the trainer, evaluator and report.

Oracles: brute-force Hamming ranking of the sign bits of the restored model's relaxed codes
with the NumPy mAP of `metrics/reference.py`, and the restored centre variables.
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

CONFIG = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "orl_dcbh.py")
BITS = (12, 48)  # two heads: multi-head coverage at half the compile time of four


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """(workdir, ORL source, TrainResult) of a 4-step DCBH run with four code lengths."""
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
    assert report["bits"] == list(BITS)
    assert [row["bits"] for row in report["results"]] == list(BITS)
    for row in report["results"]:
        assert row["search"].startswith("Hamming")
        assert set(row["metrics"]) == {"map@all", "p@5", "p@r2", "r@r2"}
    assert np.isfinite(result.metrics["train/loss"])


def test_test_map_equals_the_numpy_oracle(run):
    workdir, source, result = run
    config, method, model, meta = inference.restore_model(workdir)
    r = Retriever(config, method, model, meta, code_length=48)
    sp = protocols.get_splits(
        config.protocol, source.labels, config.seed, split_dir=os.path.join(workdir, "splits")
    )
    db_bits = r.encode(source.images[sp.database])
    q_bits = r.encode(source.images[sp.query])
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


def test_trainer_applied_the_explicit_centre_update(run):
    workdir, _, _ = run
    config, _, model, meta = inference.restore_model(workdir)
    signature = meta["signature"]
    init = inference.build_model(
        config, num_classes=signature["num_classes"], in_channels=signature["in_channels"]
    )
    for head, head0 in zip(model.heads, init.heads, strict=True):
        # loss_fn stashes α·Δc every step; after_update (run by the trainer) applies and clears it.
        assert np.all(np.asarray(head.center_step[...]) == 0.0)
        assert np.abs(np.asarray(head.centers[...]) - np.asarray(head0.centers[...])).max() > 0
