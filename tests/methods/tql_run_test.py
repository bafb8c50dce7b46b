"""Tiny TQL runs through the trainer, evaluator and report, on fixtures written in the releases'
exact layouts: `configs/fmnist_tql.py` (the IDX files; two heads, binary and real-valued mAP)
and `configs/inshop_tql.py` (`Eval/list_eval_partition.txt` and `img/`; class-balanced batches,
query vs gallery, mAP and recall@1/10/20).

Oracles: the NumPy metrics of `metrics/reference.py` on a brute-force Hamming ranking of the
restored model's sign bits and a brute-force Euclidean ranking of its real-valued descriptors,
computed here from the images (eval preprocessing applied independently).
"""

import functools
import gzip
import json
import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from dpq_jax import config_lib, inference, registry, train
from dpq_jax.data import inshop, pp, protocols
from dpq_jax.metrics import reference as metrics_ref

CONFIGS = os.path.join(os.path.dirname(__file__), "..", "..", "configs")
BITS = (12, 48)


# --- fixtures in the release layouts ----------------------------------------------------------
def _write_idx(path: pathlib.Path, array: np.ndarray) -> None:
    """IDX: 00 00 08 ndim, big-endian int32 sizes, the bytes; gzip-compressed."""
    array = np.asarray(array, np.uint8)
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(s).to_bytes(4, "big") for s in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.tobytes())


def _write_fmnist(root: pathlib.Path) -> None:
    """12 training and 3 test images per class; each class a bright band at its own row."""
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, per_class in (("train", 12), ("t10k", 3)):
        labels = np.tile(np.arange(10), per_class)
        images = rng.integers(0, 60, (labels.size, 28, 28), dtype=np.uint8)
        for i, y in enumerate(labels):
            images[i, 2 * y : 2 * y + 4] += 150
        _write_idx(root / f"{prefix}-images-idx3-ubyte.gz", images)
        _write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", labels)


def _write_inshop(root: pathlib.Path) -> None:
    """7 training items x 4 images, 5 test items x (2 query + 3 gallery) images, 16x16 JPEGs
    listed in `Eval/list_eval_partition.txt` with paths relative to the release root."""
    rng = np.random.default_rng(1)
    rows = []
    plan = [(f"id_{i:08d}", "train", 4) for i in range(1, 8)]
    for i in range(8, 13):
        plan += [(f"id_{i:08d}", "query", 2), (f"id_{i:08d}", "gallery", 3)]
    for item, status, n in plan:
        colour = (int(item[-2:]) * 37) % 200  # items differ in colour; images in noise
        for j in range(n):
            name = f"img/WOMEN/Dresses/{item}/{status}_{j:02d}_1_front.jpg"
            pixels = np.clip(colour + rng.integers(0, 50, (16, 16, 3)), 0, 255).astype(np.uint8)
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(root / name)
            rows.append(f"{name} {item} {status}")
    (root / "Eval").mkdir()
    text = f"{len(rows)}\nimage_name item_id evaluation_status\n" + "\n".join(rows) + "\n"
    (root / "Eval" / inshop.EVAL_FILE).write_text(text)


def _run(tmp_path_factory, config_file, arg, protocol, protocol_fn, source_dir):
    """`(workdir, config, TrainResult)` of a tiny run on a fixture protocol."""
    protocols.register_protocol(protocol, protocol_fn)
    jax.config.update("jax_disable_most_optimizations", True)  # compile time dominates
    try:
        config = config_lib.load_config(os.path.join(CONFIGS, config_file), arg)
        with config.unlocked():
            config.protocol = protocol
            config.input.data_dir = str(tmp_path_factory.mktemp("tfds"))
            config.input.source_dir = str(source_dir)
            config.model.bits = BITS
        workdir = str(tmp_path_factory.mktemp("workdir"))
        yield workdir, config, train.train_and_evaluate(config, workdir)
    finally:
        jax.config.update("jax_disable_most_optimizations", False)
        protocols.PROTOCOLS.pop(protocol, None)


@pytest.fixture(scope="module")
def fmnist_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("fmnist") / "src"
    _write_fmnist(root)
    fn = functools.partial(
        protocols.fmnist, query_per_class=2, val_query_per_class=2, val_database_per_class=5
    )
    yield from _run(
        tmp_path_factory,
        "fmnist_tql.py",
        "runlocal,quant=triplet_b",
        "fmnist_tql_fixture",
        fn,
        root,
    )


@pytest.fixture(scope="module")
def inshop_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("inshop") / "release"
    _write_inshop(root)
    fn = functools.partial(protocols.inshop, num_val_items=2)  # 5 training items remain
    yield from _run(tmp_path_factory, "inshop_tql.py", "runlocal", "inshop_tql_fixture", fn, root)


# --- oracles ---------------------------------------------------------------------------------
def _oracle(workdir, config, bits):
    """NumPy metrics of the test split, from the restored model: (Hamming, Euclidean)."""
    cfg, method, model, _ = inference.restore_model(workdir)
    source = registry.get("dataset", cfg.input.dataset)(
        data_dir=cfg.input.data_dir, source_dir=cfg.input.source_dir
    )
    splits = protocols.get_splits(
        cfg.protocol, source.labels, cfg.seed, split_dir=os.path.join(workdir, "splits")
    )
    fn = pp.build(cfg.input.pp_eval)

    def descriptors(indices):
        images = np.stack([fn(np.asarray(source[i]["image"]), None) for i in indices])
        relaxed = method.relaxed_codes(model, jnp.asarray(images, jnp.float32))
        return np.asarray(relaxed[BITS.index(bits)], np.float64)

    q, db = descriptors(splits.query), descriptors(splits.database)
    labels = np.asarray(source.labels)
    evals = cfg.evals.test
    kw = dict(
        map_ks=(-1,),
        precision_ks=tuple(evals.precision_ks),
        recall_ks=tuple(evals.get("recall_ks", ())),
    )
    hamming = ((q[:, None, :] > 0) != (db[None, :, :] > 0)).sum(-1)
    euclid = ((q[:, None, :] - db[None, :, :]) ** 2).sum(-1)
    ql, dl = labels[splits.query], labels[splits.database]
    return (
        metrics_ref.retrieval_metrics(-hamming.astype(np.float64), ql, dl, **kw),
        metrics_ref.retrieval_metrics(-euclid, ql, dl, **kw),
    )


def _test_rows(workdir):
    report = json.load(open(os.path.join(workdir, "report.json")))
    rows = [row for row in report["results"] if row["eval"] == "test"]
    assert [row["bits"] for row in rows] == list(BITS)
    return rows


# --- Fashion-MNIST -------------------------------------------------------------------------
def test_fmnist_report_has_binary_and_real_valued_rows(fmnist_run):
    workdir, _, result = fmnist_run
    assert np.isfinite(result.metrics["train/loss"])
    for row in _test_rows(workdir):
        assert row["search"].startswith("Hamming")
        assert set(row["metrics"]) == {
            "map@all",
            "p@100",
            "p@r2",
            "r@r2",
            "real_map@all",
            "real_p@100",
        }
        assert "real_valued" in row["conventions"]
    metrics = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    val = [m for m in metrics if "val/12bit/map@all" in m]
    assert val and not any("val/12bit/real_map@all" in m for m in val)  # test only
    final = [m for m in metrics if "test/12bit/real_map@all" in m][-1]
    np.testing.assert_allclose(
        final["test/real_map@all"],
        np.mean([final[f"test/{b}bit/real_map@all"] for b in BITS]),
    )
    losses = [m for m in metrics if "train/loss_quant_48bit" in m]
    assert losses and all(np.isfinite(m["train/loss_quant_48bit"]) for m in losses)


@pytest.mark.parametrize("bits", BITS)
def test_fmnist_binary_and_real_valued_map_equal_the_numpy_oracle(fmnist_run, bits):
    workdir, config, _ = fmnist_run
    want_hamming, want_real = _oracle(workdir, config, bits)
    row = [row for row in _test_rows(workdir) if row["bits"] == bits][0]["metrics"]
    np.testing.assert_allclose(row["map@all"], want_hamming["map@all"], rtol=1e-6)
    np.testing.assert_allclose(row["p@100"], want_hamming["p@100"], rtol=1e-6)
    np.testing.assert_allclose(row["real_map@all"], want_real["map@all"], rtol=1e-6)
    np.testing.assert_allclose(row["real_p@100"], want_real["p@100"], rtol=1e-6)


# --- In-shop -------------------------------------------------------------------------------
def test_inshop_reports_map_and_recall_at_1_10_20_against_the_oracle(inshop_run):
    workdir, config, result = inshop_run
    assert config.input.sampler == "class_balanced" and np.isfinite(result.metrics["train/loss"])
    report = json.load(open(os.path.join(workdir, "report.json")))
    assert report["dataset"] == "inshop"
    for row in _test_rows(workdir):
        assert (row["query_split"], row["database_split"]) == ("query", "database")
        assert (row["num_queries"], row["num_database"]) == (10, 15)  # query vs gallery
        keys = {"map@all", "p@10", "r@1", "r@10", "r@20", "p@r2", "r@r2"}
        assert set(row["metrics"]) == keys | {f"real_{k}" for k in keys - {"p@r2", "r@r2"}}
        want_hamming, want_real = _oracle(workdir, config, row["bits"])
        for key in ("map@all", "r@1", "r@10", "r@20"):
            np.testing.assert_allclose(row["metrics"][key], want_hamming[key], rtol=1e-6)
            np.testing.assert_allclose(row["metrics"][f"real_{key}"], want_real[key], rtol=1e-6)
        # 3 relevant gallery images per query, 15 in all: the top 10 / 20 hold most / all.
        assert row["metrics"]["r@20"] == 1.0 and row["metrics"]["r@1"] <= 1 / 3 + 1e-9
