"""The end-of-training retrieval report: a table, `report.json`, and a precision-recall PNG.

Every number is written next to its protocol, code length, K and metric conventions. Each row
also carries the code groups of its database codes (`code_stats`: distinct codes and the
largest group of identical codes), when its evaluator logs them, and how they use the code
space (`code_usage`, `dpq_jax.analysis.code_stats.code_usage`: PQ codes give the codewords used
and the usage entropy in bits of each codebook, binary codes the fraction of ones of each bit).
"""

import numpy as np

from dpq_jax import io_utils

_STAT_NAMES = {"distinct_codes": "distinct codes", "largest_code_group": "largest group"}


def _span(values, fmt) -> str:
    lo, hi = min(values), max(values)
    return fmt(lo) if fmt(lo) == fmt(hi) else f"{fmt(lo)}-{fmt(hi)}"


def _usage_cells(usage: dict) -> dict[str, str]:
    """Table cells of a row's `code_usage`: the range over codebooks (or bits)."""
    cells = {}
    if usage.get("used_codewords"):
        cells["words used"] = f"{_span(usage['used_codewords'], str)}/{usage['codebook_size']}"
        entropy = _span(usage["usage_entropy_bits"], "{:.2f}".format)
        cells["usage entropy"] = f"{entropy}/{usage['max_entropy_bits']:.2f} b"
    if usage.get("ones_fraction"):
        cells["ones fraction"] = _span(usage["ones_fraction"], "{:.2f}".format)
    return cells


def build_report(
    config, *, code_lengths, step, selected_on, metrics, baseline, evaluators, splits
) -> dict:
    """Collects the final numbers of each final evaluator and code length, with their protocol
    and conventions: one row per (evaluator, code length)."""
    rows = []
    for name, evaluator in evaluators.items():
        stats = tuple(getattr(evaluator, "code_stats", ()))  # not retrieval metrics
        raw_pixels = {
            k.split("/", 2)[2]: v
            for k, v in baseline.items()
            if k.startswith(name + "/raw_pixels/")
        }
        for bits in code_lengths:
            prefix = evaluator.metric_prefix(bits) + "/"
            row_metrics = {
                k.removeprefix(prefix): v
                for k, v in metrics.items()
                if k.startswith(prefix) and "/" not in k.removeprefix(prefix)
            }
            code_stats = {k: int(row_metrics.pop(k)) for k in stats if k in row_metrics}
            code_usage = getattr(evaluator, "last_code_usage", {}).get(bits, {})
            rows.append(
                {
                    "eval": name,
                    "protocol": config.protocol,
                    "query_split": evaluator.cfg.query,
                    "database_split": evaluator.cfg.database,
                    "num_queries": int(len(getattr(splits, evaluator.cfg.query))),
                    "num_database": int(len(getattr(splits, evaluator.cfg.database))),
                    "bits": int(bits),
                    "search": evaluator.conventions["search"],
                    "metrics": row_metrics,
                    "code_stats": code_stats,
                    "code_usage": code_usage,
                    "raw_pixels": raw_pixels,
                    "conventions": evaluator.conventions,
                }
            )
    return {
        "method": config.method,
        "dataset": config.input.dataset,
        "protocol": config.protocol,
        "bits": list(code_lengths),
        "selected_step": int(step),
        "selected_on": selected_on or "last step",
        "splits": splits.summary(),
        "results": rows,
    }


def format_report(report: dict) -> str:
    """A plain-text table of the report: per final evaluator, one line per code length."""
    bits = "/".join(str(b) for b in report["bits"])
    lines = [
        f"Retrieval report: {report['method']} on {report['dataset']}, protocol "
        f"{report['protocol']}, {bits}-bit codes, checkpoint step "
        f"{report['selected_step']} (selected on {report['selected_on']})",
        f"splits: {report['splits']}",
    ]
    by_eval: dict[str, list[dict]] = {}
    for row in report["results"]:
        by_eval.setdefault(row["eval"], []).append(row)
    for name, rows in by_eval.items():
        first = rows[0]
        keys = list(first["metrics"])
        stats = list(first.get("code_stats", {}))
        usage = list(_usage_cells(first.get("code_usage", {})))
        header = ["protocol", "bits"] + keys + [_STAT_NAMES.get(k, k) for k in stats] + usage
        header += [f"raw pixels {k}" for k in first["raw_pixels"]]
        table = []
        for row in rows:
            values = [row["protocol"], str(row["bits"])]
            values += [f"{row['metrics'][k]:.4f}" for k in keys]
            values += [str(row["code_stats"][k]) for k in stats]
            cells = _usage_cells(row.get("code_usage", {}))
            values += [cells.get(k, "-") for k in usage]
            values += [f"{v:.4f}" for v in row["raw_pixels"].values()]
            table.append(values)
        widths = [max(len(h), *(len(v[i]) for v in table)) for i, h in enumerate(header)]
        lines.append(
            f"[{name}] {first['num_queries']} queries × {first['num_database']} database "
            f"items, {first['search']}"
        )
        lines.append(" | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
        lines.append("-+-".join("-" * w for w in widths))
        for values in table:
            lines.append(" | ".join(v.ljust(w) for v, w in zip(values, widths, strict=True)))
        conv = ", ".join(f"{k}={v}" for k, v in first["conventions"].items() if k != "search")
        lines.append(f"conventions: {conv}")
    return "\n".join(lines)


def plot_pr_curves(curves: dict, path: str, title: str = "") -> None:
    """Saves precision-recall curves `{name: (precision [T], recall [T])}` as a PNG at `path`
    (local or a URI such as `gs://bucket/run/pr_curve.png`; written atomically)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4), dpi=120)
    for name, curve in curves.items():
        if curve is None:
            continue
        precision, recall = (np.asarray(c) for c in curve)
        ax.plot(recall, precision, label=name)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.set_title(f"Precision-recall {title}".strip())
    if ax.get_legend_handles_labels()[0]:
        ax.legend()
    fig.tight_layout()
    with io_utils.atomic_write(path) as f:
        fig.savefig(f, format="png")
    plt.close(fig)
