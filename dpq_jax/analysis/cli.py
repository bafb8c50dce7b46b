"""`dpq-report`: figures and one HTML page comparing training runs.

    dpq-report workdirs/orl_opqn workdirs/orl_dsh --output reports/orl
    dpq-report workdirs/fmnist_* --output reports/fmnist --queries 4 --k 10
    dpq-report workdirs/orl_opqn --output reports/quick --no_recompute   # files only

Writes into `--output`:

- `map_vs_bits.png`: the report's mAP@all per method and code length;
- `training.png`: training loss and validation mAP over steps (`metrics.jsonl`);
- `pr_rank.png`, `precision_at_k.png` and, for binary codes, `pr_radius.png`: precision-recall
  curves by rank cut-off and by Hamming radius, and precision@K, of all runs on one axis;
- `code_groups.png`: sizes of the groups of identical database codes of every run;
- `codes_<run>.png`: codeword usage and entropy per codebook (PQ) or the balance of each bit
  (hashing);
- `retrieved_<run>.png`: query images with their top-k results, bordered green (relevant) or
  red;
- `tables.json`: the tables every figure is drawn from;
- `report.html`: one self-contained page (figures embedded) with the results table: every
  number next to its protocol, split sizes, search and metric conventions.

The curves, code statistics and retrieved images are not stored in a workdir: they are
recomputed from the checkpoint the report was made with, on the report's query and database
splits (`dpq_jax.analysis.evaluation`; a progress bar shows the encoding), and the report's
numbers are recomputed alongside as a check. `--no_recompute` draws only what the workdir files
hold (results table, mAP vs code length, training curves).

The workdirs and `--output` may be local or URIs such as `gs://bucket/run`; every file is
written atomically (`dpq_jax.io_utils.atomic_write`).

Exit status: 0 done; 2 bad input (one line `dpq-report: error: ...` naming the problem and
the fix).
"""

from __future__ import annotations

import argparse
import base64
import datetime
import html
import json
import math
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from dpq_jax import io_utils

PROG = "dpq-report"
EXIT_ERROR = 2
RECOMPUTE_TOLERANCE = 1e-6  # report vs recomputed metrics (same checkpoint, data, software)


def _figure_spec(name: str, title: str, caption: str) -> dict:
    return {"file": f"{name}.png", "title": title, "caption": caption}


def build(
    runs,
    output: str,
    *,
    recompute: bool = True,
    eval_name: str | None = None,
    num_queries: int = 6,
    k: int = 8,
    progress: bool = True,
    data_dir: str | None = None,
    encoded: Mapping[str, Any] | None = None,
) -> dict:
    """Draws every figure of `runs` into `output` and writes `tables.json` and `report.html`.

    Args:
      runs: `runs.load_runs(...)` output; each run needs a report.
      output: folder to write into (created).
      recompute: restore checkpoints for curves, code statistics and retrieved images.
      eval_name: the final evaluator to analyse (default each run's first).
      num_queries: query rows of the retrieved-image grids.
      k: results per query in the grids.
      progress: progress bars while encoding.
      data_dir: TFDS data_dir of the data sets (default: each run's config).
      encoded: `{run name: evaluation.EncodedRun}` already at hand (e.g. in a notebook),
        used instead of restoring and encoding those runs again.

    Returns:
      `{"figures": [{"file", "title", "caption"}, ...], "tables": {...}, "checks": [...]}`,
      as written to `tables.json` (arrays as lists).

    Raises:
      dpq_jax.analysis.runs.RunError: a run without a report or splits; other `ValueError`s
        and `FileNotFoundError` for unusable checkpoints or data.
    """
    from dpq_jax.analysis import plots
    from dpq_jax.analysis import runs as runs_lib

    io_utils.as_path(output).mkdir(parents=True, exist_ok=True)
    results = runs_lib.results_table(runs)  # fails early on a run without a report
    tables: dict[str, Any] = {"results": results}
    figures: list[dict] = []

    def save(fig, spec):
        with io_utils.atomic_write(os.path.join(output, spec["file"])) as f:
            fig.savefig(f, format="png")
        figures.append(spec)

    tables["map_vs_bits"] = runs_lib.metric_vs_bits(runs, "map@all", eval_name)
    save(
        plots.metric_vs_bits_figure(tables["map_vs_bits"], "map@all"),
        _figure_spec(
            "map_vs_bits",
            "mAP@all vs code length",
            "From report.json: each method's mAP@all on its report's query and database "
            "splits at each code length (a multi-length model gives one point per length).",
        ),
    )
    tables["training"] = runs_lib.training_table(runs)
    save(
        plots.training_figure(tables["training"]),
        _figure_spec(
            "training",
            "Training loss and validation mAP",
            "From metrics.jsonl: the training loss at each logged step and the validation "
            "split's mAP@all (the checkpoint-selection metric first).",
        ),
    )
    checks: list[dict] = []
    if recompute:
        _recomputed_figures(
            runs,
            output,
            tables,
            save,
            checks,
            eval_name=eval_name,
            num_queries=num_queries,
            k=k,
            progress=progress,
            data_dir=data_dir,
            encoded=encoded or {},
        )
    document = {"figures": figures, "tables": tables, "checks": checks}
    with io_utils.atomic_write(os.path.join(output, "tables.json"), "w", encoding="utf-8") as f:
        json.dump(_jsonable(document), f, indent=1)
    with io_utils.atomic_write(os.path.join(output, "report.html"), "w", encoding="utf-8") as f:
        f.write(render_html(runs, document, output))
    return document


def _stage(bar, name: str, fn, *args, **kwargs):
    """Runs one scoring stage under the progress bar."""
    bar.set_postfix_str(name)
    out = fn(*args, **kwargs)
    bar.update()
    return out


def _recomputed_figures(
    runs, output, tables, save, checks, *, eval_name, num_queries, k, progress, data_dir, encoded
):
    from tqdm import tqdm

    from dpq_jax.analysis import evaluation, plots

    pr_rows, radius_rows, usage_rows, recomputed = [], [], [], []
    tables["top_k"] = []
    given = encoded
    for run in runs:
        encoded = given.get(run.name)
        if encoded is None or (eval_name and encoded.eval_name != eval_name):
            encoded = evaluation.encode_run(
                run, eval_name=eval_name, progress=progress, data_dir=data_dir
            )
        with tqdm(total=4, desc=f"search {run.name}", disable=not progress) as bar:
            rows = _stage(bar, "metrics", evaluation.recomputed_metrics, encoded)
            pr_rows += _stage(bar, "PR by rank", evaluation.pr_table, encoded, by="rank")
            radius_rows += _stage(bar, "PR by radius", evaluation.pr_table, encoded, by="radius")
            top = _stage(
                bar, "top-k", evaluation.top_k_table, encoded, num_queries=num_queries, k=k
            )
        usage = evaluation.code_usage_table(encoded)
        recomputed += rows
        usage_rows += usage
        checks += _compare(run, encoded.eval_name, rows, usage)
        save(
            plots.code_usage_figure(usage),
            _figure_spec(
                f"codes_{run.file_stem}",
                f"{run.name}: code usage",
                "The fraction of database items on each codeword of each codebook (PQ codes), "
                "and each codebook's usage entropy against its maximum log2 K."
                if usage[0]["code_type"] == "pq"
                else "The fraction of database items with each bit set (0.5 is balanced).",
            ),
        )
        tables["top_k"] += top
        relevance = next(
            r["conventions"].get("relevance", "same label")
            for r in run.require_report()["results"]
            if r["eval"] == encoded.eval_name
        )
        save(
            plots.retrieval_grid_figure(
                top, encoded.source.images, title=f"{run.name} ({top[0]['bits']}-bit)"
            ),
            _figure_spec(
                f"retrieved_{run.file_stem}",
                f"{run.name}: retrieved images",
                f"Queries spread evenly over the {encoded.eval_cfg['query']} split (left) and "
                f"their top {k} of the {encoded.eval_cfg['database']} split by the run's "
                f"index ({top[0]['bits']}-bit codes); green frame: relevant ({relevance}), "
                "red: not.",
            ),
        )
    tables.update(
        recomputed=recomputed,
        pr_rank=pr_rows,
        pr_radius=radius_rows,
        precision_at_k=evaluation.precision_at_k_table(pr_rows),
        code_usage=usage_rows,
    )
    save(
        plots.pr_figure(pr_rows, "rank"),
        _figure_spec(
            "pr_rank",
            "Precision-recall by rank",
            "Mean precision and recall over the query split at rank cut-offs K = 1..N of "
            "the database (ties and queries without relevant items as in the report).",
        ),
    )
    if radius_rows:
        save(
            plots.pr_figure(radius_rows, "radius"),
            _figure_spec(
                "pr_radius",
                "Precision-recall by Hamming radius",
                "Binary codes: mean precision and recall of the items within Hamming distance "
                "r = 0..b (precision 0 when nothing is within r); circles mark r = 2.",
            ),
        )
    save(
        plots.precision_at_k_figure(pr_rows),
        _figure_spec(
            "precision_at_k",
            "Precision@K",
            "Mean precision of the top K retrieved items over the query split.",
        ),
    )
    save(
        plots.code_groups_figure(usage_rows),
        _figure_spec(
            "code_groups",
            "Groups of identical codes",
            "Database items sharing one code, group by group (largest first); the search "
            "cannot tell the items of a group apart.",
        ),
    )


def _compare(run, eval_name: str, recomputed: list[dict], usage: list[dict]) -> list[dict]:
    """Report numbers against their recomputation, one row per code length: the retrieval
    metrics (within `RECOMPUTE_TOLERANCE`) and the code statistics (exactly)."""
    report_rows = {r["bits"]: r for r in run.require_report()["results"] if r["eval"] == eval_name}
    stats = {row["bits"]: row for row in usage}
    checks = []
    for row in recomputed:
        reported = report_rows.get(row["bits"], {})
        diffs = {
            key: (reported["metrics"][key], value)
            for key, value in row["metrics"].items()
            if key in reported.get("metrics", {})
            and not math.isclose(reported["metrics"][key], value, abs_tol=RECOMPUTE_TOLERANCE)
        }
        diffs.update(
            {
                key: (value, stats[row["bits"]][key])
                for key, value in reported.get("code_stats", {}).items()
                if value != stats[row["bits"]][key]
            }
        )
        checks.append(
            {"run": run.name, "eval": eval_name, "bits": row["bits"], "differences": diffs}
        )
        if diffs:
            print(
                f"{PROG}: warning: {run.name} {row['bits']}-bit: recomputed numbers differ from "
                f"report.json {diffs} (other data, software or checkpoint?).",
                file=sys.stderr,
            )
    return checks


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


# ------------------------------------------------------------------------------------------------
# HTML.
# ------------------------------------------------------------------------------------------------
_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; max-width: 1200px; }
table { border-collapse: collapse; font-size: 13px; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 3px 6px; text-align: left; vertical-align: top; }
th { background: #f0f0f0; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.conv { font-size: 11px; color: #555; }
figure { margin: 1.5em 0; }
figcaption { font-size: 13px; color: #444; max-width: 900px; }
img { max-width: 100%; }
.warn { color: #b00; }
"""


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def render_html(runs, document: dict, output: str) -> str:
    """One self-contained page: runs, results table (numbers next to their protocol and
    conventions), the recomputation check, and every figure embedded as base64 PNG."""
    import dpq_jax
    from dpq_jax.analysis import runs as runs_lib

    e = html.escape
    results = document["tables"]["results"]
    metric_keys = list(dict.fromkeys(k for r in results for k in r["metrics"]))
    stat_keys = list(dict.fromkeys(k for r in results for k in r["code_stats"]))
    raw_keys = list(dict.fromkeys(k for r in results for k in r["raw_pixels"]))
    now = datetime.datetime.now().isoformat(timespec="seconds")
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<title>dpq-report: {e(', '.join(r.name for r in runs))}</title>",
        f"<style>{_STYLE}</style></head><body>",
        "<h1>Retrieval report</h1>",
        f"<p>Written by dpq_jax {e(dpq_jax.__version__)} on {e(now)}.</p>",
        "<h2>Runs</h2><table><tr><th>run</th><th>workdir</th><th>method</th><th>data set</th>"
        "<th>protocol and splits</th><th>checkpoint</th></tr>",
    ]
    for run in runs:
        report = run.require_report()
        parts.append(
            f"<tr><td>{e(run.name)}</td><td>{e(run.workdir)}</td><td>{e(run.method)}</td>"
            f"<td>{e(run.dataset)}</td><td>{e(report['splits'])}</td>"
            f"<td>step {report['selected_step']} (selected on {e(report['selected_on'])})</td>"
            "</tr>"
        )
    parts.append("</table>")

    parts.append(
        "<h2>Results</h2><p>From each run's report.json: the final evaluator on its query and "
        "database splits. Each row states the protocol, split sizes, search and metric "
        "conventions its numbers were measured under; <i>raw pixels</i> is the Euclidean "
        "baseline on the same splits.</p><table><tr>"
    )
    header = ["run", "method", "protocol", "eval: queries × database", "bits", "search"]
    header += metric_keys + [k.replace("_", " ") for k in stat_keys]
    header += [f"raw pixels {k}" for k in raw_keys] + ["conventions"]
    parts.append("".join(f"<th>{e(h)}</th>" for h in header) + "</tr>")
    for r in results:
        cells = [
            e(r["run"]),
            e(r["method"]),
            e(r["protocol"]),
            e(
                f"{r['eval']}: {r['query_split']} ({r['num_queries']}) × {r['database_split']} "
                f"({r['num_database']})"
            ),
            str(r["bits"]),
            e(r["search"]),
        ]
        row = "".join(f"<td>{c}</td>" for c in cells)
        for group, keys in (("metrics", metric_keys), ("code_stats", stat_keys)):
            row += "".join(
                f"<td class='num'>{e(_fmt(r[group][k])) if k in r[group] else '–'}</td>"
                for k in keys
            )
        row += "".join(
            f"<td class='num'>{e(_fmt(r['raw_pixels'][k])) if k in r['raw_pixels'] else '–'}</td>"
            for k in raw_keys
        )
        row += f"<td class='conv'>{e(runs_lib.format_conventions(r['conventions']))}</td>"
        parts.append(f"<tr>{row}</tr>")
    parts.append("</table>")

    checks = document.get("checks") or []
    if checks:
        bad = [c for c in checks if c["differences"]]
        if bad:
            parts.append(
                "<p class='warn'>Recomputed from the checkpoints, these differ from "
                "report.json (other data, software or checkpoint?):</p><ul>"
            )
            for c in bad:
                parts.append(
                    f"<li class='warn'>{e(c['run'])} {c['bits']}-bit: "
                    f"{e(str(c['differences']))}</li>"
                )
            parts.append("</ul>")
        else:
            parts.append(
                "<p>Check: the retrieval metrics and code statistics above were recomputed "
                "from each report's checkpoint and splits and agree (metrics within "
                f"{RECOMPUTE_TOLERANCE:g}); the raw-pixel baseline is not recomputed.</p>"
            )

    parts.append("<h2>Figures</h2>")
    for spec in document["figures"]:
        data = base64.b64encode(io_utils.read_bytes(os.path.join(output, spec["file"])))
        data = data.decode("ascii")
        parts.append(
            f"<figure><h3>{e(spec['title'])}</h3>"
            f"<img alt='{e(spec['title'])}' src='data:image/png;base64,{data}'>"
            f"<figcaption>{e(spec['caption'])} ({e(spec['file'])})</figcaption></figure>"
        )
    parts.append("</body></html>\n")
    return "\n".join(parts)


# ------------------------------------------------------------------------------------------------
# Command line.
# ------------------------------------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("workdirs", nargs="+", metavar="WORKDIR", help="dpq-train workdirs")
    parser.add_argument("--output", required=True, help="folder for the figures and the page")
    parser.add_argument(
        "--names", default=None, help="comma-separated run labels (default: folder names)"
    )
    parser.add_argument(
        "--eval", default=None, help="final evaluator to analyse (default: each run's first)"
    )
    parser.add_argument("--queries", type=int, default=6, help="query rows in the image grids")
    parser.add_argument("--k", type=int, default=8, help="results per query in the image grids")
    parser.add_argument(
        "--data_dir", default=None, help="TFDS data_dir of the data (default: the run's config)"
    )
    parser.add_argument(
        "--no_recompute",
        action="store_true",
        help="draw only from the workdir files; do not restore checkpoints",
    )
    parser.add_argument("--no_progress", action="store_true", help="hide the progress bars")
    return parser


def error_line(message: str) -> int:
    """Prints `dpq-report: error: <message>` (one line) and returns the error status."""
    sys.stdout.flush()
    message = " ".join(str(message).split())
    print(f"{PROG}: error: {message}", file=sys.stderr, flush=True)
    return EXIT_ERROR


def main(argv: Sequence[str] | None = None) -> int:
    """Runs `dpq-report`; returns the exit status (see the module docstring)."""
    args = _parser().parse_args(argv)
    from dpq_jax.analysis import runs as runs_lib

    try:
        if args.queries < 1 or args.k < 1:
            raise ValueError(f"--queries and --k must be >= 1, got {args.queries} and {args.k}.")
        if io_utils.as_path(args.output).is_file():
            raise ValueError(f"--output {args.output} is a file; give a folder.")
        names = None if args.names is None else [n.strip() for n in args.names.split(",")]
        runs = runs_lib.load_runs(args.workdirs, names)
        for run in runs:
            run.require_report()
            if args.eval is not None and args.eval not in run.final_evals():
                raise ValueError(
                    f"{run.workdir}: the report has no evaluator {args.eval!r}; it has "
                    f"{run.final_evals()}. Pick one of those with --eval."
                )
        build(
            runs,
            args.output,
            recompute=not args.no_recompute,
            eval_name=args.eval,
            num_queries=args.queries,
            k=args.k,
            progress=not args.no_progress,
            data_dir=args.data_dir,
        )
    except (ValueError, FileNotFoundError) as e:  # RunError, CheckpointError are ValueErrors
        return error_line(str(e))
    print(f"Wrote {os.path.join(args.output, 'report.html')}.", file=sys.stderr)
    return 0


def run() -> None:
    """Console-script entry point (`dpq-report`)."""
    sys.exit(main())


if __name__ == "__main__":
    run()
