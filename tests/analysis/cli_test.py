"""`dpq-report` on the two tiny trained workdirs: the figures, `tables.json` (values equal
each report.json) and the self-contained HTML page; one clear error line for bad input."""

import base64
import copy
import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys

import pytest
from PIL import Image

from dpq_jax.analysis import cli, evaluation

pytestmark = pytest.mark.usefixtures("fast_compile")  # the trained runs' numerics

FIGURES = {
    "map_vs_bits.png",
    "training.png",
    "pr_rank.png",
    "pr_radius.png",
    "precision_at_k.png",
    "code_groups.png",
    "codes_orl_opqn.png",
    "codes_orl_dsh.png",
    "retrieved_orl_opqn.png",
    "retrieved_orl_dsh.png",
}


@pytest.fixture(scope="module")
def report_dir(trained_runs, encoded_runs, tmp_path_factory):
    """`dpq-report` on both workdirs. `encode_run` (tested in evaluation_test) is replaced by
    the session's encodings of the same runs, so the checkpoints are restored once."""
    calls = []

    def encode_run(run, *, eval_name, progress, data_dir):
        calls.append((run.name, run.workdir, eval_name, progress, data_dir))
        return encoded_runs[run.name]

    output = tmp_path_factory.mktemp("report")
    original = evaluation.encode_run
    evaluation.encode_run = encode_run
    try:
        args = [*trained_runs.values(), "--output", str(output), "--no_progress", "--k", "5"]
        status = cli.main(args)
    finally:
        evaluation.encode_run = original
    assert status == 0
    assert calls == [(n, w, None, False, None) for n, w in trained_runs.items()]
    return output


def _reports(trained_runs):
    out = {}
    for name, workdir in trained_runs.items():
        with open(os.path.join(workdir, "report.json")) as f:
            out[name] = json.load(f)
    return out


def test_writes_every_figure_as_png(report_dir):
    names = set(os.listdir(report_dir))
    assert FIGURES | {"tables.json", "report.html"} == names
    for name in FIGURES:
        with Image.open(report_dir / name) as image:
            assert image.format == "PNG" and min(image.size) > 100


def test_tables_equal_the_reports(report_dir, trained_runs):
    reports = _reports(trained_runs)
    document = json.loads((report_dir / "tables.json").read_text())
    tables = document["tables"]
    expected = {(name, r["bits"]): r for name, rep in reports.items() for r in rep["results"]}
    assert {(r["run"], r["bits"]) for r in tables["results"]} == set(expected)
    for row in tables["results"]:
        source = expected[(row["run"], row["bits"])]
        assert row["metrics"] == source["metrics"]
        assert row["conventions"] == source["conventions"]
    assert {(r["run"], r["bits"]): r["value"] for r in tables["map_vs_bits"]} == {
        key: r["metrics"]["map@all"] for key, r in expected.items()
    }
    p5 = {(r["run"], r["bits"]): r["precision"] for r in tables["precision_at_k"] if r["k"] == 5}
    for key, value in p5.items():
        assert value == pytest.approx(expected[key]["metrics"]["p@5"], abs=1e-12)
    assert len(p5) == len(expected)
    radius = {(r["run"], r["bits"]): r for r in tables["pr_radius"]}
    assert set(radius) == {("orl_dsh", 16), ("orl_dsh", 32)}
    for key, row in radius.items():
        assert row["precision"][2] == pytest.approx(expected[key]["metrics"]["p@r2"], abs=1e-12)
        assert row["recall"][2] == pytest.approx(expected[key]["metrics"]["r@r2"], abs=1e-12)
    for row in tables["code_usage"]:
        stats = expected[(row["run"], row["bits"])]["code_stats"]
        assert row["distinct_codes"] == stats["distinct_codes"]
        assert row["largest_code_group"] == stats["largest_code_group"]
    assert [c["differences"] for c in document["checks"]] == [{}, {}, {}]  # 1 + 2 lengths
    top = [r for r in tables["top_k"] if r["run"] == "orl_dsh"]
    assert len(top) == 6 and all(len(r["result_indices"]) == 5 for r in top)
    assert top[0]["bits"] == 32  # the longest code, as dpq-search serves


def test_html_is_self_contained_with_conventions_next_to_numbers(report_dir, trained_runs):
    page = (report_dir / "report.html").read_text()
    embedded = re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", page)
    assert len(embedded) == len(FIGURES)
    on_disk = {(report_dir / f).read_bytes() for f in FIGURES}
    assert {base64.b64decode(e) for e in embedded} == on_disk
    assert not re.search(r"(src|href)=['\"](?!data:)", page)  # nothing outside the page
    reports = _reports(trained_runs)
    rows = re.findall(r"<tr>(.*?)</tr>", page, flags=re.S)
    for name, report in reports.items():
        for result in report["results"]:
            (row,) = [
                r for r in rows if f"<td>{name}</td>" in r and f"<td>{result['bits']}</td>" in r
            ]
            assert f"{result['metrics']['map@all']:.4f}" in row
            assert "<td>orl_seen</td>" in row and "query (120) × database (280)" in row
            assert "denominator=relevant_in_topk, empty=zero, ties=stable" in row
    assert "code statistics above were recomputed" in page  # the recomputation check


def test_a_report_that_disagrees_with_its_checkpoint_is_flagged(encoded_runs, tmp_path, capsys):
    encoded = encoded_runs["orl_dsh"]
    report = copy.deepcopy(encoded.run.report)
    report["results"][0]["metrics"]["map@all"] += 0.01
    report["results"][1]["code_stats"]["distinct_codes"] += 1
    run = dataclasses.replace(encoded.run, report=report)
    document = cli.build([run], str(tmp_path), encoded={run.name: encoded}, progress=False)
    diffs = [c["differences"] for c in document["checks"]]
    assert [set(d) for d in diffs] == [{"map@all"}, {"distinct_codes"}]
    assert capsys.readouterr().err.count("dpq-report: warning: orl_dsh") == 2
    assert "these differ from report.json" in (tmp_path / "report.html").read_text()


def test_no_recompute_draws_from_files_only(trained_runs, tmp_path, monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("--no_recompute must not restore a checkpoint")

    monkeypatch.setattr(evaluation, "encode_run", fail)
    args = [*trained_runs.values(), "--output", str(tmp_path), "--no_recompute", "--names", "a,b"]
    assert cli.main(args) == 0
    assert set(os.listdir(tmp_path)) == {
        "map_vs_bits.png",
        "training.png",
        "tables.json",
        "report.html",
    }
    tables = json.loads((tmp_path / "tables.json").read_text())["tables"]
    assert {r["run"] for r in tables["results"]} == {"a", "b"}


def _unfinished(trained_runs, tmp_path):
    path = tmp_path / "unfinished"
    path.mkdir()
    shutil.copy(os.path.join(trained_runs["orl_opqn"], "config.json"), path)
    return str(path)


@pytest.mark.parametrize(
    ("make_args", "message"),
    [
        (lambda runs, tmp: [str(tmp / "nowhere"), "--output", str(tmp)], "is not a folder"),
        (lambda runs, tmp: [str(tmp), "--output", str(tmp / "o")], "not a dpq_jax training"),
        (
            lambda runs, tmp: [_unfinished(runs, tmp), "--output", str(tmp / "o")],
            "has not finished its final evaluation",
        ),
        (
            lambda runs, tmp: [runs["orl_opqn"], "--output", str(tmp / "o"), "--names", "a,b"],
            "2 names for 1 workdirs",
        ),
        (
            lambda runs, tmp: [runs["orl_opqn"], "--output", runs["orl_opqn"] + "/config.json"],
            "is a file",
        ),
        (
            lambda runs, tmp: [runs["orl_opqn"], "--output", str(tmp / "o"), "--eval", "val"],
            "no evaluator 'val'",
        ),
    ],
)
def test_bad_input_gives_one_error_line(trained_runs, tmp_path, capsys, make_args, message):
    assert cli.main(make_args(trained_runs, tmp_path)) == cli.EXIT_ERROR
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("dpq-report: error: ") and message in err[0]


def test_module_entry_point_exits_with_one_line(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "dpq_jax.analysis.cli", str(tmp_path / "x"), "--output", "o"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"dpq-report: error: {tmp_path / 'x'} is not a folder; pass the --workdir of a "
        "dpq-train run."
    ]
