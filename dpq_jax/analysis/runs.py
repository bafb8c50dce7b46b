"""Training workdirs as tidy tables: what a run wrote, read back without JAX.

A workdir of `dpq_jax.train.train_and_evaluate` holds `config.json`, `metrics.jsonl` (one JSON
record per write: `{"step", "time", <name>: value, ...}`), `splits/<protocol>_seed<seed>.npz`,
`checkpoints/` and, once training finished, `report.json` (`dpq_jax.report.build_report`).
`load_runs` reads one or many of them; the table functions turn them into lists of flat dicts
(one dict per row), the form the figures of `dpq_jax.analysis.plots` are drawn from:

    runs = load_runs(["workdirs/orl_opqn", "workdirs/orl_dsh"])
    results_table(runs)            # one row per (run, evaluator, code length): report numbers
    metric_vs_bits(runs)           # mAP per method and code length
    history(runs[0], "train/loss") # (steps, values) from metrics.jsonl

Every row of a results table carries its protocol, split sizes and metric conventions, so a
number is never separated from how it was measured. Lists of dicts load into pandas with
`pandas.DataFrame(rows)` when wanted; this module does not need it. Workdirs may be local or
URIs such as `gs://bucket/run` (`dpq_jax.io_utils.as_path`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from dpq_jax import io_utils

REPORT_FILE = "report.json"
CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"

# Report entries shown as code statistics, not as retrieval metrics.
_CODE_STATS = ("distinct_codes", "largest_code_group")


class RunError(ValueError):
    """A workdir that cannot be analysed; the message names the file and the fix."""


@dataclasses.dataclass
class Run:
    """One training workdir, as written by `train_and_evaluate`.

    Attributes:
      workdir: absolute path.
      name: short label for legends and tables (unique among the runs loaded together).
      config: the run's config (`config.json`) as a plain dict.
      report: `report.json` as a dict, or None when training has not finished.
      history: `metrics.jsonl` merged per step: `{step: {name: value}}`, steps ascending. A
        step logged twice (a resumed run) keeps the later value of each name.
      splits: the protocol's `dpq_jax.data.protocols.Splits`, or None when the file is absent.
    """

    workdir: str
    name: str
    config: dict
    report: dict | None
    history: dict[int, dict[str, Any]]
    splits: Any = None

    @property
    def method(self) -> str:
        return str(self.config.get("method", "?"))

    @property
    def dataset(self) -> str:
        return str(self.config.get("input", {}).get("dataset", "?"))

    @property
    def protocol(self) -> str:
        return str(self.config.get("protocol", "?"))

    @property
    def file_stem(self) -> str:
        """The name, safe as part of a file name."""
        return re.sub(r"[^A-Za-z0-9_.-]+", "_", self.name).strip("_") or "run"

    def require_report(self) -> dict:
        """The report, or a `RunError` saying how to get one."""
        if self.report is None:
            raise RunError(
                f"{os.path.join(self.workdir, REPORT_FILE)} not found: the run has not finished "
                "its final evaluation. Rerun the same dpq-train command with this --workdir to "
                "finish it (training resumes from the last checkpoint)."
            )
        return self.report

    def final_evals(self) -> list[str]:
        """Names of the evaluators in the report (`final=True` in the config), in order."""
        names: list[str] = []
        for row in (self.report or {}).get("results", []):
            if row["eval"] not in names:
                names.append(row["eval"])
        return names


def _read_json(path: str, what: str) -> Any:
    try:
        with io_utils.as_path(path).open(encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise RunError(
            f"{path} is not valid JSON ({e.msg}, line {e.lineno}): the {what} is damaged. "
            "Rerun training into a new --workdir."
        ) from None


def _number(value: Any) -> Any:
    """metrics.jsonl writes non-finite floats as strings ("nan", "inf")."""
    if isinstance(value, str) and value.lower() in ("nan", "inf", "-inf", "+inf"):
        return float(value)
    return value


def read_history(path: str) -> dict[int, dict[str, Any]]:
    """`metrics.jsonl` merged per step: `{step: {name: value}}`, steps ascending.

    Records of one step are merged in file order, so a step logged again after a resume keeps
    the later values. The `time` field is dropped; a torn last line (a crash while writing)
    is skipped.

    Raises:
      RunError: a damaged line other than the last.
    """
    merged: dict[int, dict[str, Any]] = {}
    with io_utils.as_path(path).open(encoding="utf-8") as f:
        lines = [line for line in f if line.strip()]
    for number, line in enumerate(lines, start=1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):
                continue  # torn last write
            raise RunError(
                f"{path}, line {number}, is not valid JSON: the metrics log is damaged. "
                "Delete that line or rerun training into a new --workdir."
            ) from None
        step = int(record.pop("step"))
        record.pop("time", None)
        merged.setdefault(step, {}).update({k: _number(v) for k, v in record.items()})
    return dict(sorted(merged.items()))


def load_run(workdir: str, name: str | None = None, *, load_splits: bool = True) -> Run:
    """Reads one training workdir.

    Args:
      workdir: the `--workdir` of a `dpq-train` run.
      name: label for tables and legends (default: the folder name).
      load_splits: also read (and verify) the protocol's split file.

    Returns:
      A `Run`; `report` is None when the run has not finished.

    Raises:
      RunError: no such folder, no `config.json` (not a training workdir), damaged JSON.
    """
    workdir = io_utils.abspath(os.fspath(workdir))
    if not io_utils.as_path(workdir).is_dir():
        raise RunError(f"{workdir} is not a folder; pass the --workdir of a dpq-train run.")
    config_path = os.path.join(workdir, CONFIG_FILE)
    if not io_utils.as_path(config_path).exists():
        raise RunError(
            f"{workdir} holds no {CONFIG_FILE}: it is not a dpq_jax training workdir. Pass the "
            "--workdir of a dpq-train run."
        )
    config = _read_json(config_path, "config")
    report_path = os.path.join(workdir, REPORT_FILE)
    report = _read_json(report_path, "report") if io_utils.as_path(report_path).exists() else None
    metrics_path = os.path.join(workdir, METRICS_FILE)
    history = read_history(metrics_path) if io_utils.as_path(metrics_path).exists() else {}
    splits = None
    if load_splits:
        from dpq_jax.data import protocols

        path = protocols.split_path(
            os.path.join(workdir, "splits"), config.get("protocol", ""), config.get("seed", 0)
        )
        if path.exists():
            try:
                splits = protocols.Splits.load(path)
            except ValueError as e:
                raise RunError(str(e)) from None
    return Run(workdir, name or os.path.basename(workdir), config, report, history, splits)


def unique_names(workdirs: Sequence[str]) -> list[str]:
    """Short distinct labels for workdirs: the folder name, with parents added until unique.

    Example:
      >>> unique_names(["a/x/run", "b/x/run", "c/other"])
      ['a/x/run', 'b/x/run', 'other']
    """
    parts = [
        io_utils.abspath(w).split("/")
        if io_utils.is_remote(w)
        else os.path.normpath(os.path.abspath(w)).split(os.sep)
        for w in workdirs
    ]
    depth = [1] * len(parts)
    while True:
        names = ["/".join(p[-d:]) for p, d in zip(parts, depth, strict=True)]
        grow = [
            i
            for i, name in enumerate(names)
            if depth[i] < len(parts[i])
            and any(names[j] == name and parts[j] != parts[i] for j in range(len(names)))
        ]
        if not grow:
            break
        for i in grow:
            depth[i] += 1
    seen: dict[str, int] = {}
    out = []
    for n in names:  # identical paths: number them
        seen[n] = seen.get(n, 0) + 1
        out.append(n if seen[n] == 1 else f"{n}#{seen[n]}")
    return out


def load_runs(
    workdirs: Sequence[str], names: Sequence[str] | None = None, *, load_splits: bool = True
) -> list[Run]:
    """Reads several workdirs (see `load_run`), each with a distinct name.

    Raises:
      RunError: as `load_run`, or a name count that does not match the workdirs.
    """
    workdirs = [os.fspath(w) for w in workdirs]
    if not workdirs:
        raise RunError("No workdir given; pass one or more --workdir folders of dpq-train runs.")
    if names is not None and len(names) != len(workdirs):
        raise RunError(f"Got {len(names)} names for {len(workdirs)} workdirs; give one per run.")
    names = list(names) if names is not None else unique_names(workdirs)
    if len(set(names)) != len(names):
        raise RunError(f"Run names must be distinct, got {names}.")
    return [load_run(w, n, load_splits=load_splits) for w, n in zip(workdirs, names, strict=True)]


# ------------------------------------------------------------------------------------------------
# Tables.
# ------------------------------------------------------------------------------------------------
def format_conventions(conventions: dict) -> str:
    """`"k=v, ..."` of a result row's conventions, without the search (shown on its own).

    Example:
      >>> format_conventions({"map_k": ["all"], "ties": "stable", "search": "ADC"})
      'map_k=all, ties=stable'
    """
    items = []
    for key, value in conventions.items():
        if key == "search":
            continue
        if isinstance(value, list | tuple):
            value = "/".join(str(v) for v in value)
        items.append(f"{key}={value}")
    return ", ".join(items)


def results_table(runs: Iterable[Run]) -> list[dict]:
    """The report numbers of every run: one row per (run, final evaluator, code length).

    Each row holds `run`, `method`, `dataset`, `protocol`, `eval`, `query_split`,
    `database_split`, `num_queries`, `num_database`, `bits`, `search`, `selected_step`,
    `selected_on`, `metrics` (e.g. `{"map@all": ..., "p@5": ...}`), `code_stats`,
    `raw_pixels` (the raw-pixel baseline's metrics on the same split) and `conventions`, all
    copied from `report.json`.

    Raises:
      RunError: a run without a report.
    """
    rows = []
    for run in runs:
        report = run.require_report()
        for result in report["results"]:
            rows.append(
                {
                    "run": run.name,
                    "method": report["method"],
                    "dataset": report["dataset"],
                    "protocol": result["protocol"],
                    "eval": result["eval"],
                    "query_split": result["query_split"],
                    "database_split": result["database_split"],
                    "num_queries": result["num_queries"],
                    "num_database": result["num_database"],
                    "bits": int(result["bits"]),
                    "search": result["search"],
                    "selected_step": int(report["selected_step"]),
                    "selected_on": report["selected_on"],
                    "metrics": dict(result["metrics"]),
                    "code_stats": dict(result.get("code_stats", {})),
                    "raw_pixels": dict(result.get("raw_pixels", {})),
                    "conventions": dict(result["conventions"]),
                }
            )
    return rows


def metric_vs_bits(
    runs: Iterable[Run], metric: str = "map@all", eval_name: str | None = None
) -> list[dict]:
    """One metric of the report per method and code length, for mAP-vs-bits plots.

    Args:
      runs: loaded runs (each with a report).
      metric: a report metric name (`map@all`, `p@5`, `p@r2`, ...).
      eval_name: which final evaluator; default each run's first.

    Returns:
      Rows `{"series", "run", "method", "protocol", "eval", "bits", "value"}` sorted by series
      and bits; `series` is the method name, with the protocol added when the runs span
      several protocols. Runs without that metric contribute no row.
    """
    runs = list(runs)
    rows = [r for r in results_table(runs) if metric in r["metrics"]]
    if eval_name is not None:
        rows = [r for r in rows if r["eval"] == eval_name]
    else:
        first = {run.name: (run.final_evals() or [None])[0] for run in runs}
        rows = [r for r in rows if r["eval"] == first[r["run"]]]
    several = len({r["protocol"] for r in rows}) > 1
    out = [
        {
            "series": f"{r['method']} ({r['protocol']})" if several else r["method"],
            "run": r["run"],
            "method": r["method"],
            "protocol": r["protocol"],
            "eval": r["eval"],
            "bits": r["bits"],
            "value": float(r["metrics"][metric]),
        }
        for r in rows
    ]
    return sorted(out, key=lambda r: (r["series"], r["bits"], r["run"]))


def history(run: Run, key: str) -> tuple[np.ndarray, np.ndarray]:
    """`(steps [T] int64, values [T] float64)` of one logged scalar, in step order."""
    steps = [s for s, rec in run.history.items() if isinstance(rec.get(key), int | float)]
    values = [float(run.history[s][key]) for s in steps]
    return np.asarray(steps, np.int64), np.asarray(values, np.float64)


def validation_keys(run: Run) -> list[str]:
    """The validation mAP names logged during training: the checkpoint-selection metric
    (`config.select_on`) first, then `<eval>/map@all` of other evaluators that ran on a
    schedule (`log_steps > 0`), per code length for multi-length models."""
    keys = []
    select_on = run.config.get("select_on") or ""
    if select_on and not select_on.startswith("train/"):  # `train/loss`: not a validation name
        keys.append(select_on)
    scheduled = [
        name for name, cfg in (run.config.get("evals") or {}).items() if cfg.get("log_steps")
    ]
    logged = {k for rec in run.history.values() for k in rec}
    for name in scheduled:
        for key in sorted(logged):
            if key.startswith(name + "/") and key.endswith("/map@all") and key not in keys:
                if "raw_pixels" not in key:
                    keys.append(key)
    return [k for k in keys if k in logged]


def training_table(runs: Iterable[Run], keys: Sequence[str] | None = None) -> list[dict]:
    """Logged scalars over steps: rows `{"run", "key", "step", "value"}`.

    Args:
      runs: loaded runs.
      keys: names to take (default: `train/loss` and each run's `validation_keys`).
    """
    rows = []
    for run in runs:
        names = list(keys) if keys is not None else ["train/loss", *validation_keys(run)]
        for key in names:
            steps, values = history(run, key)
            rows += [
                {"run": run.name, "key": key, "step": int(s), "value": float(v)}
                for s, v in zip(steps, values, strict=True)
            ]
    return rows
