"""Figures of the analysis tables, drawn with matplotlib's object API on the Agg canvas.

Every function takes the rows of a table from `dpq_jax.analysis.runs` or
`dpq_jax.analysis.evaluation` and returns a `matplotlib.figure.Figure`; nothing touches
pyplot's global state, so the figures work in scripts, servers and notebooks alike (in a
notebook, a figure as a cell's last expression is shown). `save_png` writes one.

| Function | Table | Shows |
|---|---|---|
| `metric_vs_bits_figure` | `runs.metric_vs_bits` | mAP (or any report metric) vs code length, one line per method |
| `pr_figure` | `evaluation.pr_table` | precision-recall curves by rank or by Hamming radius, all runs on one axis |
| `precision_at_k_figure` | `evaluation.pr_table` (by rank) | precision@K over K |
| `training_figure` | `runs.training_table` | training loss and validation mAP over steps |
| `code_usage_figure` | `evaluation.code_usage_table` | PQ: codeword usage per codebook and its entropy; hashing: balance of each bit |
| `code_groups_figure` | `evaluation.code_usage_table` | sizes of the groups of identical database codes |
| `retrieval_grid_figure` | `evaluation.top_k_table` | query images and their top-k results, bordered green (relevant) or red |
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence

import numpy as np

RELEVANT_COLOR = "#1a9850"  # green
IRRELEVANT_COLOR = "#d73027"  # red


def new_figure(width: float, height: float, dpi: int = 110):
    """A pyplot-free figure on the Agg canvas."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=dpi)
    FigureCanvasAgg(fig)
    return fig


def save_png(fig, path: str) -> str:
    """Writes `fig` as a PNG (the folder is created); returns the path."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, format="png")
    return path


def png_bytes(fig) -> bytes:
    """The figure as PNG bytes (for embedding)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _grouped(rows: Sequence[dict], key) -> dict:
    groups: dict = {}
    for row in rows:
        groups.setdefault(key(row), []).append(row)
    return groups


def _curve_label(row: dict, multi_bits: bool) -> str:
    return f"{row['run']} {row['bits']}-bit" if multi_bits else row["run"]


def _finish(ax, title: str, legend: bool = True) -> None:
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    if legend and ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)


def metric_vs_bits_figure(rows: Sequence[dict], metric: str = "map@all"):
    """One line per series (method): the metric at each code length.

    Several runs of a series at one code length (seeds) are drawn as dots and the line goes
    through their mean.

    Args:
      rows: `runs.metric_vs_bits` rows (`series`, `bits`, `value`).
      metric: the metric's name, for the axis label.
    """
    fig = new_figure(5.2, 3.8)
    ax = fig.add_subplot()
    for series, group in _grouped(rows, lambda r: r["series"]).items():
        bits = sorted({r["bits"] for r in group})
        means = [np.mean([r["value"] for r in group if r["bits"] == b]) for b in bits]
        (line,) = ax.plot(bits, means, marker="o", label=series)
        if len(group) > len(bits):  # repeated runs: show each one
            ax.scatter(
                [r["bits"] for r in group],
                [r["value"] for r in group],
                color=line.get_color(),
                s=10,
                alpha=0.6,
            )
    all_bits = sorted({r["bits"] for r in rows})
    if all_bits:
        ax.set_xticks(all_bits)
    ax.set_xlabel("code length (bits)")
    ax.set_ylabel(metric)
    ax.set_ylim(0, 1.02)
    protocols = sorted({r["protocol"] for r in rows})
    _finish(ax, f"{metric} vs code length ({', '.join(protocols)})")
    fig.tight_layout()
    return fig


def pr_figure(rows: Sequence[dict], by: str = "rank"):
    """Precision-recall curves of all rows on one axis.

    Args:
      rows: `evaluation.pr_table` rows (`run`, `bits`, `by`, `x`, `precision`, `recall`).
      by: which curves to draw: `"rank"` (cut-off K over the ranking) or `"radius"` (items
        within Hamming radius r; marked at every radius, r = 2 circled).
    """
    rows = [r for r in rows if r["by"] == by]
    multi_bits = len({(r["run"], r["bits"]) for r in rows}) > len({r["run"] for r in rows})
    fig = new_figure(5.2, 4.0)
    ax = fig.add_subplot()
    for row in rows:
        label = _curve_label(row, multi_bits)
        if by == "radius":
            (line,) = ax.plot(row["recall"], row["precision"], marker=".", label=label)
            if len(row["x"]) > 2:
                ax.scatter(
                    row["recall"][2],
                    row["precision"][2],
                    s=60,
                    facecolors="none",
                    edgecolors=line.get_color(),
                )
        else:
            ax.plot(row["recall"], row["precision"], label=label)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 1.02)
    title = (
        "Precision-recall by rank cut-off"
        if by == "rank"
        else "Precision-recall by Hamming radius (○: r = 2)"
    )
    _finish(ax, title)
    fig.tight_layout()
    return fig


def precision_at_k_figure(rows: Sequence[dict]):
    """Precision@K over K (log axis) from `evaluation.pr_table` rank rows."""
    rows = [r for r in rows if r["by"] == "rank"]
    multi_bits = len({(r["run"], r["bits"]) for r in rows}) > len({r["run"] for r in rows})
    fig = new_figure(5.2, 3.8)
    ax = fig.add_subplot()
    for row in rows:
        ax.plot(row["x"], row["precision"], label=_curve_label(row, multi_bits))
    ax.set_xscale("log")
    ax.set_xlabel("K (top-K retrieved)")
    ax.set_ylabel("precision@K")
    ax.set_ylim(0, 1.02)
    _finish(ax, "Precision@K")
    fig.tight_layout()
    return fig


def training_figure(rows: Sequence[dict], loss_key: str = "train/loss"):
    """Training loss (left) and validation metrics (right) over steps, one line per run and
    metric, from `runs.training_table` rows (`run`, `key`, `step`, `value`)."""
    fig = new_figure(9.0, 3.6)
    left, right = fig.subplots(1, 2)
    runs = list(dict.fromkeys(r["run"] for r in rows))
    for (run, key), group in _grouped(rows, lambda r: (r["run"], r["key"])).items():
        steps = [r["step"] for r in group]
        values = [r["value"] for r in group]
        if key == loss_key:
            left.plot(steps, values, label=run)
        else:
            label = key if len(runs) == 1 else f"{run}: {key}"
            right.plot(steps, values, marker="o", markersize=3, label=label)
    from matplotlib.ticker import MaxNLocator

    losses = [r["value"] for r in rows if r["key"] == loss_key]
    if losses and min(losses) > 0 and max(losses) / min(losses) > 20:
        left.set_yscale("log")  # methods' losses differ in scale
    for ax in (left, right):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    left.set_xlabel("step")
    left.set_ylabel(loss_key)
    _finish(left, "Training loss")
    right.set_xlabel("step")
    right.set_ylabel("mAP")
    right.set_ylim(0, 1.02)
    _finish(right, "Validation mAP (never the query split)")
    if not right.get_lines():
        right.text(0.5, 0.5, "no validation logged", ha="center", va="center", fontsize=9)
    fig.tight_layout()
    return fig


def code_usage_figure(rows: Sequence[dict]):
    """How one run's database codes use the code space, one panel row per code length.

    PQ codes: the fraction of items on each codeword of each codebook (heat map, M rows × K
    codewords) and the usage entropy of each codebook against its maximum log2 K.
    Binary codes: the fraction of items with each bit set (0.5 is balanced).

    Args:
      rows: one run's `evaluation.code_usage_table` rows.
    """
    rows = list(rows)
    pq = rows[0]["code_type"] == "pq"
    if pq:
        fig = new_figure(10.0, 2.4 * len(rows) + 0.6)
        axes = np.asarray(fig.subplots(len(rows), 2, width_ratios=(3, 1), squeeze=False))
        for (heat, bars), row in zip(axes, rows, strict=True):
            counts = np.asarray(row["codeword_counts"], np.float64)
            freq = counts / max(counts.sum(axis=1).max(), 1)
            image = heat.imshow(freq, aspect="auto", interpolation="nearest", cmap="viridis")
            fig.colorbar(image, ax=heat, label="fraction of items")
            heat.set_xlabel(f"codeword (K = {counts.shape[1]})")
            heat.set_ylabel("codebook")
            heat.set_yticks(range(counts.shape[0]))
            used = (counts > 0).sum(axis=1)
            heat.set_title(
                f"{row['run']} {row['bits']}-bit: codeword usage (codewords used per codebook: "
                f"{', '.join(str(u) for u in used)})",
                fontsize=9,
            )
            m = np.arange(len(row["entropy"]))
            bars.barh(m, row["entropy"], color="#4575b4")
            bars.axvline(row["max_entropy"], color="k", linestyle="--", linewidth=1)
            bars.set_xlim(0, row["max_entropy"] * 1.05)
            bars.set_yticks(m)
            bars.invert_yaxis()  # codebook 0 on top, as in the heat map
            bars.set_xlabel("entropy (bits)")
            bars.set_title(f"usage entropy (max log2 K = {row['max_entropy']:g})", fontsize=9)
    else:
        fig = new_figure(8.0, 2.2 * len(rows) + 0.6)
        axes = np.asarray(fig.subplots(len(rows), 1, squeeze=False))[:, 0]
        for ax, row in zip(axes, rows, strict=True):
            ones = np.asarray(row["ones_fraction"])
            ax.bar(np.arange(ones.size), ones, color="#4575b4", width=0.8)
            ax.axhline(0.5, color="k", linestyle="--", linewidth=1)
            ax.set_ylim(0, 1)
            ax.set_xlim(-0.6, ones.size - 0.4)
            ax.set_xlabel("bit")
            ax.set_ylabel("fraction of 1s")
            ax.set_title(
                f"{row['run']} {row['bits']}-bit: bit balance (mean |p − 0.5| = "
                f"{np.abs(ones - 0.5).mean():.3f})",
                fontsize=9,
            )
    fig.tight_layout()
    return fig


def code_groups_figure(rows: Sequence[dict]):
    """Sizes of the groups of identical database codes (largest first) of every run and code
    length on one log-log axis, from `evaluation.code_usage_table` rows. A flat line at 1 is
    a database where every item has its own code; a steep head means collapsed codes."""
    multi_bits = len({(r["run"], r["bits"]) for r in rows}) > len({r["run"] for r in rows})
    fig = new_figure(5.2, 3.8)
    ax = fig.add_subplot()
    for row in rows:
        sizes = np.asarray(row["group_sizes"])
        label = (
            f"{_curve_label(row, multi_bits)}: {row['distinct_codes']} codes, "
            f"largest {row['largest_code_group']} of {int(sizes.sum())}"
        )
        ax.step(np.arange(1, sizes.size + 1), sizes, where="post", label=label)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("group rank (1 = largest)")
    ax.set_ylabel("database items sharing one code")
    _finish(ax, "Groups of identical codes")
    fig.tight_layout()
    return fig


def _rgb(image) -> np.ndarray:
    """`[H, W, 3]` uint8 of a `[H, W]`, `[H, W, 1]` or `[H, W, 3]` image."""
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[..., None]
    if image.shape[-1] == 1:
        image = np.repeat(image, 3, axis=-1)
    if image.dtype != np.uint8:
        image = np.clip(image, 0, 255).astype(np.uint8)
    return image


def _hex_rgb(color: str) -> np.ndarray:
    return np.array([int(color[i : i + 2], 16) for i in (1, 3, 5)], np.uint8)


def _query_image(row: dict, images):
    """A row's own `query_image` (a custom query), else its query in the data source."""
    image = row.get("query_image")
    return images[row["query_index"]] if image is None else image


def grid_mosaic(rows: Sequence[dict], images) -> tuple[np.ndarray, int, int]:
    """The image grid as one RGB array: per row the query, a gap, then its results, each
    result framed green (relevant) or red (not).

    Returns:
      `(mosaic [H', W', 3] uint8, tile_height, tile_width)`, tiles including their frame.
    """
    first = _rgb(_query_image(rows[0], images))
    h, w = first.shape[:2]
    frame = max(2, round(min(h, w) / 14))
    gap = frame
    tile_h, tile_w = h + 2 * frame, w + 2 * frame
    k = max(len(r["result_indices"]) for r in rows)
    width = (k + 1) * tile_w + k * gap + 2 * gap  # a wider gap after the query
    height = len(rows) * tile_h + (len(rows) - 1) * gap
    mosaic = np.full((height, width, 3), 255, np.uint8)

    def put(image, top, left, color):
        if color is not None:
            mosaic[top : top + tile_h, left : left + tile_w] = _hex_rgb(color)
        mosaic[top + frame : top + frame + h, left + frame : left + frame + w] = _rgb(image)

    for r, row in enumerate(rows):
        top = r * (tile_h + gap)
        put(_query_image(row, images), top, 0, None)
        for j, (idx, rel) in enumerate(zip(row["result_indices"], row["relevant"], strict=True)):
            left = (j + 1) * (tile_w + gap) + 2 * gap
            put(images[idx], top, left, RELEVANT_COLOR if rel else IRRELEVANT_COLOR)
    return mosaic, tile_h, tile_w


def _label_text(label) -> str:
    label = np.asarray(label)
    if label.ndim == 0:
        return str(label.item())
    return ",".join(str(i) for i in np.flatnonzero(label))  # multi-hot: its positive classes


def retrieval_grid_figure(rows: Sequence[dict], images, title: str = ""):
    """Query images (left column) and their top-k results, each result framed green when
    relevant to the query and red when not.

    Args:
      rows: `evaluation.top_k_table` rows of one run (`query_index`, `query_label`,
        `result_indices`, `relevant`); a row may carry its own `query_image` `[H, W, C]`
        (a query that is not in the data source) and `query_name` (its label on the left).
      images: the data source's images, indexable by `query_index` / `result_indices`
        (`[N, H, W, C]` uint8).
      title: figure title.
    """
    mosaic, tile_h, tile_w = grid_mosaic(rows, images)
    k = max(len(r["result_indices"]) for r in rows)
    width = min(1.0 * (k + 1) + 1.2, 14.0)  # inches
    image_height = 0.89 * width * mosaic.shape[0] / mosaic.shape[1]
    height = image_height + 0.5  # room for the title
    fig = new_figure(width, height, dpi=100)
    ax = fig.add_axes((0.1, 0.1 / height, 0.89, image_height / height))
    ax.imshow(mosaic, interpolation="nearest" if tile_h < 64 else "antialiased")
    ax.set_axis_off()
    gap = (mosaic.shape[0] - len(rows) * tile_h) / max(len(rows) - 1, 1)
    for r, row in enumerate(rows):
        name = row.get("query_name") or f"query {row['query_index']}"
        ax.text(
            -tile_w * 0.08,
            r * (tile_h + gap) + tile_h / 2,
            f"{name}\nlabel {_label_text(row['query_label'])}",
            ha="right",
            va="center",
            fontsize=7,
        )
    hits = sum(int(np.sum(r["relevant"])) for r in rows)
    total = sum(len(r["relevant"]) for r in rows)
    heading = f"top {k} per query — green: relevant, red: not ({hits}/{total} relevant)"
    fig.suptitle(f"{title}: {heading}" if title else heading, fontsize=9)
    return fig
