"""A tiny four-length DDH run on ORL faces through the trainer, evaluator and report.

Oracles: brute-force Hamming ranking of the sign bits of the restored model's relaxed codes,
and the NumPy mAP of `metrics/reference.py`.
"""

import json
import os

import pytest

BITS = (12, 48)  # two heads: multi-head coverage at half the compile time of four


@pytest.fixture(scope="module")
def run(tmp_path_factory, orl_runs):
    """(workdir, ORL source, TrainResult) of a 4-step DDH run with four code lengths."""
    yield from orl_runs.tiny_orl_run(
        tmp_path_factory, "orl_ddh.py", "runlocal,multihead", {"model.bits": BITS}
    )


def test_report_has_one_hamming_row_per_code_length(run):
    workdir, _, result = run
    report = json.load(open(os.path.join(workdir, "report.json")))
    assert report["method"] == "ddh" and report == json.loads(json.dumps(result.report))
    assert [row["bits"] for row in report["results"]] == list(BITS)
    assert all(row["search"].startswith("Hamming") for row in report["results"])
    metrics = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    assert any("train/loss_ce_48bit" in m and "train/kernel_l2" in m for m in metrics)


def test_test_map_equals_the_numpy_oracle_on_the_restored_codes(run, orl_runs):
    orl_runs.check_hamming_row_against_numpy(*run, bits=48)
