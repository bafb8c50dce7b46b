"""Reading workdirs into tables: values equal the files' (hand-written workdirs), resumed
logs, damaged files, and the tables of the tiny trained runs against their report.json."""

import json
import os

import numpy as np
import pytest

from dpq_jax.analysis import runs
from dpq_jax.data import protocols


def _report(method, bits_metrics, *, protocol="orl_seen", code_stats=None):
    conventions = {
        "map_k": ["all"],
        "denominator": "relevant_in_topk",
        "empty": "zero",
        "ties": "stable",
        "relevance": "same label",
        "search": f"{method} search",
        "query_side": "x",
    }
    return {
        "method": method,
        "dataset": "orl_faces",
        "protocol": protocol,
        "bits": sorted(bits_metrics),
        "selected_step": 6,
        "selected_on": "val/map@all",
        "splits": f"{protocol} seed=0: ...",
        "results": [
            {
                "eval": "test",
                "protocol": protocol,
                "query_split": "query",
                "database_split": "database",
                "num_queries": 3,
                "num_database": 5,
                "bits": bits,
                "search": conventions["search"],
                "metrics": metrics,
                "code_stats": code_stats or {"distinct_codes": 4, "largest_code_group": 2},
                "raw_pixels": {"map@all": 0.25},
                "conventions": conventions,
            }
            for bits, metrics in sorted(bits_metrics.items())
        ],
    }


def write_workdir(
    path, method="opqn", bits_metrics=None, records=(), *, report=True, select_on="val/map@all"
):
    """A workdir with the files `train_and_evaluate` writes (no checkpoint)."""
    os.makedirs(path, exist_ok=True)
    config = {
        "method": method,
        "protocol": "orl_seen",
        "seed": 0,
        "input": {"dataset": "orl_faces"},
        "select_on": select_on,
        "evals": {"val": {"log_steps": 2, "final": False}, "test": {"log_steps": 0}},
    }
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(config, f)
    if report:
        with open(os.path.join(path, "report.json"), "w") as f:
            json.dump(_report(method, bits_metrics or {32: {"map@all": 0.5, "p@5": 0.6}}), f)
    with open(os.path.join(path, "metrics.jsonl"), "w") as f:
        for record in records:
            f.write(json.dumps(record) + "\n")
    return str(path)


def test_a_run_selected_on_the_training_loss_lists_each_key_once(tmp_path):
    records = [
        {"step": 2, "time": 1.0, "train/loss": 3.0},
        {"step": 2, "time": 1.1, "val/map@all": 0.2},
    ]
    run = runs.load_run(write_workdir(tmp_path / "r", records=records, select_on="train/loss"))
    assert runs.validation_keys(run) == ["val/map@all"]
    keys = [row["key"] for row in runs.training_table([run])]
    assert keys == ["train/loss", "val/map@all"]


def test_results_table_copies_report_rows(tmp_path):
    metrics = {16: {"map@all": 0.41, "p@5": 0.5}, 48: {"map@all": 0.62, "p@5": 0.7}}
    run = runs.load_run(write_workdir(tmp_path / "a", "dsh", metrics))
    rows = runs.results_table([run])
    assert [(r["bits"], r["metrics"]) for r in rows] == sorted(metrics.items())
    for row in rows:
        assert row["run"] == "a" and row["method"] == "dsh" and row["protocol"] == "orl_seen"
        assert row["code_stats"] == {"distinct_codes": 4, "largest_code_group": 2}
        assert row["raw_pixels"] == {"map@all": 0.25}
        assert row["conventions"]["ties"] == "stable"
        assert (row["num_queries"], row["num_database"], row["selected_step"]) == (3, 5, 6)


def test_metric_vs_bits_one_series_per_method(tmp_path):
    a = write_workdir(tmp_path / "a", "dsh", {12: {"map@all": 0.3}, 48: {"map@all": 0.6}})
    b = write_workdir(tmp_path / "b", "opqn", {32: {"map@all": 0.8}})
    c = write_workdir(tmp_path / "c", "opqn", {32: {"map@all": 0.7}})  # a second seed
    rows = runs.metric_vs_bits(runs.load_runs([a, b, c]))
    got = [(r["series"], r["bits"], r["value"], r["run"]) for r in rows]
    assert got == [
        ("dsh", 12, 0.3, "a"),
        ("dsh", 48, 0.6, "a"),
        ("opqn", 32, 0.8, "b"),
        ("opqn", 32, 0.7, "c"),
    ]
    assert runs.metric_vs_bits(runs.load_runs([a, b]), "p@r2") == []  # no such metric


def test_history_merges_steps_and_keeps_resumed_values(tmp_path):
    records = [
        {"step": 0, "time": 1.0, "val/conventions": {"protocol": "orl_seen"}},
        {"step": 2, "time": 2.0, "train/loss": 3.0},
        {"step": 2, "time": 2.1, "val/map@all": 0.2},
        {"step": 4, "time": 3.0, "train/loss": "nan"},  # logged, then the run was resumed
        {"step": 4, "time": 4.0, "train/loss": 1.5},
        {"step": 4, "time": 4.1, "val/map@all": 0.4},
    ]
    path = write_workdir(tmp_path / "r", records=records)
    with open(os.path.join(path, "metrics.jsonl"), "a") as f:
        f.write('{"step": 6, "train/lo')  # torn by a crash
    run = runs.load_run(path)
    steps, values = runs.history(run, "train/loss")
    assert steps.tolist() == [2, 4] and values.tolist() == [3.0, 1.5]
    assert runs.validation_keys(run) == ["val/map@all"]
    table = runs.training_table([run])
    assert [(r["key"], r["step"], r["value"]) for r in table] == [
        ("train/loss", 2, 3.0),
        ("train/loss", 4, 1.5),
        ("val/map@all", 2, 0.2),
        ("val/map@all", 4, 0.4),
    ]


def test_nan_strings_become_floats(tmp_path):
    path = write_workdir(tmp_path / "r", records=[{"step": 1, "train/loss": "nan"}])
    _, values = runs.history(runs.load_run(path), "train/loss")
    assert np.isnan(values).all() and values.size == 1


def test_splits_are_loaded_and_verified(tmp_path):
    path = write_workdir(tmp_path / "r")
    arrays = dict(train=[0, 1], val_query=[2], val_database=[0, 1], query=[3], database=[0, 4])
    splits = protocols.Splits("orl_seen", 0, **arrays)
    splits.save(protocols.split_path(os.path.join(path, "splits"), "orl_seen", 0))
    run = runs.load_run(path)
    assert run.splits.checksum() == splits.checksum()


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda p: None, "is not a folder"),
        (lambda p: os.makedirs(p), "not a dpq_jax training workdir"),
        (lambda p: write_workdir(p, report=False) and None, "has not finished"),
        (
            lambda p: write_workdir(p) and open(os.path.join(p, "report.json"), "w").write("{"),
            "report.json is not valid JSON",
        ),
        (
            lambda p: (
                write_workdir(p) and open(os.path.join(p, "metrics.jsonl"), "w").write("x\n{}\n")
            ),
            "line 1, is not valid JSON",
        ),
    ],
)
def test_bad_workdirs_name_the_problem(tmp_path, setup, message):
    path = str(tmp_path / "w")
    setup(path)
    with pytest.raises(runs.RunError, match=message):
        runs.results_table([runs.load_run(path)])


def test_names_are_unique(tmp_path):
    assert runs.unique_names(["x/a/run", "y/a/run", "z/b"]) == ["x/a/run", "y/a/run", "b"]
    assert runs.unique_names(["a", "a"]) == ["a", "a#2"]
    a = write_workdir(tmp_path / "a")
    with pytest.raises(runs.RunError, match="2 names for 1 workdirs"):
        runs.load_runs([a], ["x", "y"])
    with pytest.raises(runs.RunError, match="No workdir"):
        runs.load_runs([])


def test_tables_of_trained_runs_equal_their_reports(trained_runs):
    loaded = runs.load_runs(list(trained_runs.values()), list(trained_runs))
    for run in loaded:
        with open(os.path.join(run.workdir, "report.json")) as f:
            report = json.load(f)
        expected = {(r["eval"], r["bits"]): r["metrics"]["map@all"] for r in report["results"]}
        got = {(r["eval"], r["bits"]): r["value"] for r in runs.metric_vs_bits([run])}
        assert got == expected
        assert run.splits is not None and report["splits"] == run.splits.summary()
    bits = [r["bits"] for r in runs.metric_vs_bits(loaded) if r["method"] == "dsh"]
    assert bits == [16, 32]
    # The validation curve is what metrics.jsonl logged at the validation steps.
    dsh = loaded[1]
    with open(os.path.join(dsh.workdir, "metrics.jsonl")) as f:
        logged = [json.loads(line) for line in f]
    val = {r["step"]: r["val/map@all"] for r in logged if "val/map@all" in r}
    table = runs.training_table([dsh], ["val/map@all"])
    assert {r["step"]: r["value"] for r in table} == val and len(val) == 2
