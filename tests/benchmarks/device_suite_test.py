"""`benchmarks/device_suite.py` at toy sizes: its search rows agree with independent oracles
(an exact NumPy search, and FAISS-CPU when installed), and its PyTorch twin of the OPQN model
has dpq_jax's SphereFace-20 layers. The metrics and train sections compile for minutes on a
CPU, so the tests leave them to the documented toy run (BENCHMARKS.md)."""

import importlib.util
import json
import os
import re

import jax
import numpy as np
import pytest

SUITE_PATH = os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks", "device_suite.py")


@pytest.fixture(scope="module")
def suite():
    spec = importlib.util.spec_from_file_location("device_suite", SUITE_PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _read(out):
    with open(os.path.join(out, "device_suite.json")) as f:
        result = json.load(f)
    with open(os.path.join(out, "device_suite.md")) as f:
        markdown = f.read()
    return result, markdown


def test_toy_search_agrees_with_exact_numpy_and_faiss(suite, tmp_path):
    out = str(tmp_path / "out")
    assert suite.main(["--toy", "--sections", "search", "--out", out]) == 0
    result, markdown = _read(out)
    assert result["toy"] and result["sizes"]["search_n"] == suite.TOY.search_n
    assert result["command"].endswith(f"--toy --sections search --out {out}")
    rows = {row["engine"]: row for row in result["rows"]}
    adc_row, ham_row = rows["dpq_jax adc_topk"], rows["dpq_jax hamming_topk"]
    assert "same ids as exact NumPy 1.000" in adc_row["agreement"]
    assert "distances equal to exact NumPy" in ham_row["agreement"]
    for row in (adc_row, ham_row):
        assert row["seconds"] > 0 and row["rate"] == pytest.approx(
            suite.TOY.search_q / row["seconds"]
        )
    if result["peers"]["faiss"].startswith("faiss "):
        same = float(re.search(r"same ids as FAISS ([0-9.]+)", adc_row["agreement"]).group(1))
        assert same >= 0.999  # float32 sums in another order may swap a near-tie at rank 100
        assert "distances equal to FAISS" in ham_row["agreement"]
        faiss_row = rows["FAISS-CPU IndexPQ"]
        assert adc_row["speedup"] == pytest.approx(faiss_row["seconds"] / adc_row["seconds"])
    else:
        assert adc_row["speedup"] is None
    # The Markdown table holds every row.
    table = [line for line in markdown.splitlines() if line.startswith("| search |")]
    assert len(table) == len(result["rows"])
    assert not jax.config.read("jax_disable_most_optimizations")  # the toy setting is undone


def test_ivfpq_over_zero_centroids_is_an_exact_pq_scan(suite):
    """The FAISS-GPU peer's construction, run on the CPU: an IVFPQ with all-zero coarse
    centroids, our codes put straight into its lists and every list probed ranks exactly as
    an exhaustive NumPy ADC scan."""
    faiss = pytest.importorskip("faiss")
    from dpq_jax.search import index as index_lib

    rng = np.random.default_rng(1)
    m, k, d, n, q = 16, 256, 8, 3000, 20
    codebooks = rng.standard_normal((m, k, d), dtype=np.float32)
    codes = rng.integers(0, k, size=(n, m), dtype=np.uint8)
    queries = rng.standard_normal((q, m * d), dtype=np.float32)
    ivf = suite.faiss_ivfpq_exhaustive(
        faiss, index_lib.PQIndex(codebooks, codes, method="random", metric="ip"), nlist=16
    )
    scores, ids = ivf.search(queries, 10)
    luts = np.einsum("qmd,mkd->qmk", queries.reshape(q, m, d), codebooks, dtype=np.float64)
    exact = luts[:, np.arange(m), codes].sum(-1)  # [Q, N]
    want = np.argsort(-exact, axis=1, kind="stable")[:, :10]
    np.testing.assert_array_equal(ids, want)
    np.testing.assert_allclose(scores, np.take_along_axis(exact, want, 1), rtol=1e-5, atol=1e-4)


def test_budget_skips_sections(suite, tmp_path):
    out = str(tmp_path / "out")
    assert suite.main(["--toy", "--budget_s", "0", "--out", out]) == 0
    result, _ = _read(out)
    assert [row["section"] for row in result["rows"]] == list(suite.SECTIONS)
    assert all("budget is spent" in row["note"] for row in result["rows"])


def test_unknown_section_is_refused(suite, capsys):
    with pytest.raises(SystemExit) as e:
        suite.main(["--sections", "search,nope"])
    assert e.value.code == 2 and "unknown ['nope']" in capsys.readouterr().err


def test_torch_twin_has_the_sphereface20_layers(suite):
    torch = pytest.importorskip("torch")
    from flax import nnx

    from dpq_jax.models.backbones import sphereface20

    geo = suite._opqn_geometry(suite.TOY.opqn_spec)
    twin = suite._torch_opqn(torch, geo, num_classes=16)
    ours = nnx.eval_shape(  # shapes only: nothing is initialized
        lambda: sphereface20.SphereFace20(
            3,
            geo["features"],
            input_size=geo["input_size"],
            width_multiplier=geo["width"],
            rngs=nnx.Rngs(0),
        )
    )
    ours_shapes = sorted(x.size for x in jax.tree.leaves(nnx.state(ours, nnx.Param)))
    twin_shapes = sorted(
        p.numel() for name, p in twin.named_parameters() if not name.startswith("classifier")
    )
    assert twin_shapes == ours_shapes
    assert tuple(twin.classifier.shape) == (geo["m"], 16, geo["features"] // geo["m"])
    torch.manual_seed(0)
    x = torch.randn(4, 3, geo["input_size"], geo["input_size"])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # OpenMP threads that spin crawl on a busy CPU
    try:
        loss = twin.loss(x, torch.tensor([0, 1, 2, 3]))
    finally:
        torch.set_num_threads(threads)
    assert loss.ndim == 0 and np.isfinite(loss.item())
