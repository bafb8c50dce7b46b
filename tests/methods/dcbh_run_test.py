"""A tiny four-length DCBH run on ORL faces through the trainer, evaluator and report.

Oracles: brute-force Hamming ranking of the sign bits of the restored model's relaxed codes
with the NumPy mAP of `metrics/reference.py`, and the restored centre variables.
"""

import json
import os

import numpy as np
import pytest

from dpq_jax import inference

BITS = (12, 48)  # two heads: multi-head coverage at half the compile time of four


@pytest.fixture(scope="module")
def run(tmp_path_factory, orl_runs):
    """(workdir, ORL source, TrainResult) of a 4-step DCBH run with four code lengths."""
    yield from orl_runs.tiny_orl_run(
        tmp_path_factory, "orl_dcbh.py", "runlocal,multihead", {"model.bits": BITS}
    )


def test_report_has_one_hamming_row_per_code_length(run):
    workdir, _, result = run
    report = json.load(open(os.path.join(workdir, "report.json")))
    assert report["bits"] == list(BITS)
    assert [row["bits"] for row in report["results"]] == list(BITS)
    for row in report["results"]:
        assert row["search"].startswith("Hamming")
        assert set(row["metrics"]) == {"map@all", "p@5", "p@r2", "r@r2"}
    assert np.isfinite(result.metrics["train/loss"])


def test_test_map_equals_the_numpy_oracle(run, orl_runs):
    orl_runs.check_hamming_row_against_numpy(*run, bits=48)


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
