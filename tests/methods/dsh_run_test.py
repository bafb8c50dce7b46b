"""A tiny two-length DSH run on ORL faces through the whole spine: trainer, evaluator, report,
retriever, index files, `dpq-search` and the FAISS export, all of them asking the method.

Oracles: brute-force Hamming ranking of the sign bits of the restored model's relaxed codes,
and the NumPy mAP of `metrics/reference.py`.
"""

import numpy as np
import pytest

from dpq_jax.search import cli, index
from dpq_jax.search.retriever import Retriever

BITS = (12, 24, 36, 48)


@pytest.fixture(scope="module")
def run(tmp_path_factory, orl_runs):
    """(workdir, ORL source, TrainResult) of a 4-step DSH run with two code lengths."""
    yield from orl_runs.tiny_orl_run(tmp_path_factory, "orl_dsh.py", "runlocal,multihead")


def test_report_has_one_row_per_code_length(run, orl_runs):
    workdir, _, result = run
    orl_runs.check_report_rows(
        workdir,
        result,
        BITS,
        search="Hamming",
        query_side="hamming",
        metrics={"map@all", "p@5", "p@r2", "r@r2"},
    )


def test_test_map_equals_the_numpy_oracle(run, orl_runs):
    orl_runs.check_hamming_row_against_numpy(*run, bits=48)


def test_retriever_serves_each_code_length_and_reloads(run, tmp_path, orl_runs):
    workdir, source, _ = run
    for bits in (12, 48):
        r = Retriever.from_workdir(workdir, code_length=bits)
        r.add(source.images[:30])
        codes = r.encode(source.images[:30])
        assert codes.shape == (30, bits) and set(np.unique(codes)) <= {0, 1}
        dist, ids = r.index.search(r.search_queries(source.images[:3]), 30)
        brute = (codes[:3, None, :] != codes[None, :, :]).sum(-1)
        order = np.argsort(brute, axis=1, kind="stable")
        np.testing.assert_array_equal(ids, order)
        np.testing.assert_array_equal(dist, np.take_along_axis(brute, order, 1))
        path = tmp_path / f"db{bits}.npz"
        loaded = orl_runs.check_saved_index_reloads(r, path, workdir, source.images)
        assert isinstance(loaded, index.BinaryIndex) and loaded.code_bits == bits
    with pytest.raises(ValueError, match="code lengths"):
        Retriever.from_workdir(workdir, code_length=16)
    # An index of the other code length is refused.
    other = index.load_index(tmp_path / "db12.npz")
    extra = index.load_index_metadata(tmp_path / "db48.npz")[1]["extra"]
    other.save(tmp_path / "mixed.npz", extra=extra)
    with pytest.raises(ValueError, match="another model"):
        Retriever.load(tmp_path / "mixed.npz", workdir)


def test_cli_and_faiss_export_on_binary_codes(run, tmp_path, capsys):
    workdir, source, _ = run
    out = tmp_path / "orl.npz"
    assert (
        cli.main(
            [
                "index",
                "--workdir",
                workdir,
                "--database",
                "dataset:orl_faces:database",
                "--output",
                str(out),
                "--code_length",
                "12",
            ]
        )
        == 0
    )
    assert "12-bit codes" in capsys.readouterr().err
    r = Retriever.load(out, workdir)
    faiss = pytest.importorskip("faiss")
    from dpq_jax.search import faiss_export

    fidx = faiss_export.to_faiss_binary(r.index)
    fdist, _ = fidx.search(r.query_vectors(source.images[:5]), 10)
    dist, _ = r.index.search(r.search_queries(source.images[:5]), 10)
    np.testing.assert_array_equal(fdist, dist)
    del faiss
