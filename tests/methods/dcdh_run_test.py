"""A tiny four-length DCDH run on ORL faces through the trainer, evaluator and report.

Oracle: brute-force Hamming ranking of the sign bits of the restored model's relaxed codes,
scored by the NumPy mAP of `metrics/reference.py`.
"""

import json
import os

import jax
import numpy as np
import pytest

from dpq_jax import inference
from dpq_jax.data import pp, protocols
from dpq_jax.metrics import reference as metrics_ref

BITS = (12, 48)  # two heads: multi-head coverage at half the compile time of four


@pytest.fixture(scope="module")
def run(tmp_path_factory, orl_runs):
    """(workdir, ORL source, TrainResult) of a 4-step DCDH run with four code lengths."""
    yield from orl_runs.tiny_orl_run(
        tmp_path_factory, "orl_dcdh.py", "runlocal,multihead", {"model.bits": BITS}
    )


def test_report_and_training_logs_per_code_length(run):
    workdir, _, result = run
    report = json.load(open(os.path.join(workdir, "report.json")))
    assert report == json.loads(json.dumps(result.report))
    assert [row["bits"] for row in report["results"]] == list(BITS)
    assert all(row["search"].startswith("Hamming") for row in report["results"])
    logged = set().union(
        *(json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl")))
    )
    for bits in BITS:  # each head logs its three loss terms
        assert {f"train/{t}_{bits}bit" for t in ("center", "separation", "quantization")} <= logged


def test_test_map_equals_the_numpy_oracle(run):
    workdir, source, result = run
    config, method, model, _ = inference.restore_model(workdir)
    model.eval()
    sp = protocols.get_splits(
        config.protocol, source.labels, config.seed, split_dir=os.path.join(workdir, "splits")
    )
    labels = np.asarray(source.labels)
    prep = pp.build(config.input.pp_eval)
    images = np.stack([prep(image, None) for image in source.images])
    relaxed = [np.asarray(r) for r in jax.jit(method.relaxed_codes)(model, images)]
    for head, bits in enumerate(BITS):
        db, q = (relaxed[head][idx] > 0 for idx in (sp.database, sp.query))
        dist = (q[:, None, :] != db[None, :, :]).sum(-1)
        want = metrics_ref.retrieval_metrics(
            -dist.astype(np.float64),
            labels[sp.query],
            labels[sp.database],
            map_ks=(-1,),
            precision_ks=(5,),
        )
        row = [row for row in result.report["results"] if row["bits"] == bits][0]
        np.testing.assert_allclose(row["metrics"]["map@all"], want["map@all"], rtol=1e-6)
