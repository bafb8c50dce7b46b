"""Each figure draws exactly its table: the plotted data equal the rows given (hand-made
tables, no training)."""

import io

import numpy as np
import pytest
from PIL import Image

from dpq_jax.analysis import plots


def _lines(ax):
    return {line.get_label(): (line.get_xdata(), line.get_ydata()) for line in ax.get_lines()}


def test_metric_vs_bits_draws_the_mean_per_code_length():
    rows = [
        {"series": "dsh", "protocol": "p", "bits": 12, "value": 0.3},
        {"series": "dsh", "protocol": "p", "bits": 48, "value": 0.6},
        {"series": "opqn", "protocol": "p", "bits": 32, "value": 0.8},
        {"series": "opqn", "protocol": "p", "bits": 32, "value": 0.6},  # a second seed
    ]
    ax = plots.metric_vs_bits_figure(rows).axes[0]
    lines = _lines(ax)
    np.testing.assert_array_equal(lines["dsh"][0], [12, 48])
    np.testing.assert_allclose(lines["dsh"][1], [0.3, 0.6])
    np.testing.assert_allclose(lines["opqn"][1], [0.7])  # the mean of both seeds
    dots = ax.collections[0].get_offsets()  # the seeds themselves
    np.testing.assert_allclose(dots, [[32, 0.8], [32, 0.6]])
    assert [int(t) for t in ax.get_xticks()] == [12, 32, 48]


def _pr_row(run, bits, by="rank"):
    x = np.arange(1, 11) if by == "rank" else np.arange(bits + 1)
    recall = np.linspace(0.1, 1.0, x.size)
    return {
        "run": run,
        "bits": bits,
        "by": by,
        "x": x,
        "precision": 1 - recall / 2,
        "recall": recall,
    }


def test_pr_and_precision_at_k_draw_the_curves():
    rows = [_pr_row("a", 16), _pr_row("a", 32), _pr_row("b", 32), _pr_row("b", 4, "radius")]
    lines = _lines(plots.pr_figure(rows, "rank").axes[0])
    assert sorted(lines) == ["a 16-bit", "a 32-bit", "b 32-bit"]  # several lengths: bits shown
    np.testing.assert_allclose(lines["b 32-bit"][0], rows[2]["recall"])
    np.testing.assert_allclose(lines["b 32-bit"][1], rows[2]["precision"])
    radius_ax = plots.pr_figure(rows, "radius").axes[0]
    (line,) = radius_ax.get_lines()
    np.testing.assert_allclose(line.get_ydata(), rows[3]["precision"])
    np.testing.assert_allclose(radius_ax.collections[0].get_offsets(), [[0.55, 0.725]])  # r = 2
    lines = _lines(plots.precision_at_k_figure(rows).axes[0])
    np.testing.assert_array_equal(lines["a 16-bit"][0], np.arange(1, 11))
    np.testing.assert_allclose(lines["a 16-bit"][1], rows[0]["precision"])


def test_training_figure_splits_loss_and_validation():
    rows = [
        {"run": "a", "key": "train/loss", "step": 2, "value": 3.0},
        {"run": "a", "key": "train/loss", "step": 4, "value": 2.0},
        {"run": "a", "key": "val/map@all", "step": 4, "value": 0.5},
        {"run": "b", "key": "train/loss", "step": 4, "value": 100.0},
    ]
    left, right = plots.training_figure(rows).axes
    lines = _lines(left)
    np.testing.assert_array_equal(lines["a"][0], [2, 4])
    np.testing.assert_allclose(lines["a"][1], [3.0, 2.0])
    assert left.get_yscale() == "log"  # losses 50x apart
    lines = _lines(right)
    np.testing.assert_allclose(lines["a: val/map@all"][1], [0.5])


def test_code_usage_figure_pq_and_binary():
    counts = np.array([[3, 1, 0, 0], [1, 1, 1, 1]])
    row = {
        "run": "r",
        "bits": 4,
        "code_type": "pq",
        "codeword_counts": counts,
        "entropy": np.array([0.811, 2.0]),
        "max_entropy": 2.0,
    }
    fig = plots.code_usage_figure([row])
    heat, bars = fig.axes[0], fig.axes[1]  # then the colour bar
    np.testing.assert_allclose(heat.get_images()[0].get_array(), counts / 4)
    np.testing.assert_allclose([p.get_width() for p in bars.patches], [0.811, 2.0])
    ones = np.array([0.5, 0.9, 0.0])
    fig = plots.code_usage_figure(
        [{"run": "r", "bits": 3, "code_type": "binary", "ones_fraction": ones}]
    )
    np.testing.assert_allclose([p.get_height() for p in fig.axes[0].patches], ones)
    assert "0.300" in fig.axes[0].get_title()  # mean |p - 0.5| = (0 + 0.4 + 0.5) / 3


def test_code_groups_figure_draws_sizes():
    rows = [
        {
            "run": "r",
            "bits": 8,
            "group_sizes": np.array([5, 2, 1]),
            "distinct_codes": 3,
            "largest_code_group": 5,
        }
    ]
    (line,) = plots.code_groups_figure(rows).axes[0].get_lines()
    np.testing.assert_array_equal(line.get_xdata(), [1, 2, 3])
    np.testing.assert_array_equal(line.get_ydata(), [5, 2, 1])
    assert "3 codes, largest 5 of 8" in line.get_label()


def test_retrieval_grid_frames_by_relevance():
    images = np.arange(5 * 20 * 16, dtype=np.int64).reshape(5, 20, 16, 1) % 200
    images = images.astype(np.uint8)
    rows = [
        {
            "query_index": 0,
            "query_label": 1,
            "result_indices": np.array([3, 1]),
            "relevant": np.array([True, False]),
        },
        {
            "query_index": 2,
            "query_label": 0,
            "result_indices": np.array([4, 0]),
            "relevant": np.array([False, True]),
            "query_image": np.full((20, 16, 1), 7, np.uint8),  # a custom query
        },
    ]
    mosaic, tile_h, tile_w = plots.grid_mosaic(rows, images)
    frame = (tile_h - 20) // 2
    gap = frame
    green, red = plots._hex_rgb(plots.RELEVANT_COLOR), plots._hex_rgb(plots.IRRELEVANT_COLOR)
    for r, row in enumerate(rows):
        top = r * (tile_h + gap)
        query = mosaic[top + frame : top + frame + 20, frame : frame + 16, 0]
        expected = row.get("query_image", images[row["query_index"]])[..., 0]
        np.testing.assert_array_equal(query, expected)
        for j, (idx, rel) in enumerate(zip(row["result_indices"], row["relevant"], strict=True)):
            left = (j + 1) * (tile_w + gap) + 2 * gap
            np.testing.assert_array_equal(mosaic[top, left], green if rel else red)
            inner = mosaic[top + frame : top + frame + 20, left + frame : left + frame + 16]
            np.testing.assert_array_equal(inner[..., 1], images[idx][..., 0])  # grey as RGB
    fig = plots.retrieval_grid_figure(rows, images, title="t")
    assert "2/4 relevant" in fig._suptitle.get_text()
    png = Image.open(io.BytesIO(plots.png_bytes(fig)))
    assert png.format == "PNG" and png.size[0] > png.size[1] > 0


def test_save_png_creates_the_folder(tmp_path):
    fig = plots.new_figure(2, 1, dpi=50)
    path = plots.save_png(fig, str(tmp_path / "a" / "b.png"))
    assert Image.open(path).size == (100, 50)


@pytest.mark.parametrize("label", [np.int32(4), np.array([0, 1, 1])])
def test_label_text(label):
    assert plots._label_text(label) in ("4", "1,2")
