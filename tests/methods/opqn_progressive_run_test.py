"""A tiny Progressive OPQN run on ORL faces through the whole spine: one model, trained a few
steps, its database encoded once and evaluated at every prefix of the levels (one report row
per code length), then served by the retriever at each length.

Oracles: the NumPy twin of the quantizer (`quantizers/opqn_progressive_reference.py`), brute
force of the inner product between the query's l-level soft quantization and the database's
l-level reconstruction, and the NumPy mAP of `metrics/reference.py`.
"""

import numpy as np
import pytest

from dpq_jax import inference
from dpq_jax.quantizers import opqn_progressive_reference as quant_ref

BITS = (4, 8, 12, 16)  # runlocal: M = 1 book of K = 16 codewords (4 bits) per level, L = 4


@pytest.fixture(scope="module")
def run(tmp_path_factory, orl_runs):
    """(workdir, ORL source, TrainResult) of a 4-step run."""
    yield from orl_runs.tiny_orl_run(tmp_path_factory, "orl_opqn_progressive.py", "runlocal")


def test_report_has_one_row_per_prefix(run, orl_runs):
    workdir, _, result = run
    report, _ = orl_runs.check_report_rows(
        workdir,
        result,
        BITS,
        search="progressive ADC",
        query_side="soft_quantized",
        metrics={"map@all", "p@5"},
        prefixes=True,
        train_keys=("train/loss_clf_quantized", "train/gain_4level"),
    )
    assert report["results"][0]["code_stats"]["distinct_codes"] <= 16  # M = 1 book of K = 16


def test_prefix_scores_equal_numpy_brute_force_of_the_first_levels(run, orl_runs):
    def make_brute(model, query_outputs):
        head = model.head
        assign, books, gains = (
            np.asarray(a, np.float64) for a in (head.assign[...], head.codebooks[...], head.gains())
        )
        want_queries = quant_ref.progressive_ortho_quantize(
            query_outputs["feats"], assign, books, gains, scale_by_norm=False
        )
        np.testing.assert_allclose(
            query_outputs["soft"], want_queries["soft"], rtol=1e-4, atol=1e-5
        )

        def brute(level, codes):  # [Q, N]: l-level soft query . l-level reconstruction (M = 1)
            recon = quant_ref.reconstruct(codes[:, :, None], books, gains)
            return np.asarray(want_queries["soft"][:, level - 1]) @ recon.T

        return brute

    orl_runs.check_prefix_rows_against_brute_force(
        run, make_brute, BITS, query_side="soft_quantized", rtol=1e-4
    )


def test_retriever_saves_and_reloads_a_prefix_index(run, tmp_path, orl_runs):
    workdir = run[0]

    def want_codes(r, images):  # the first two levels' codes, as the twin encodes them
        feats = np.asarray(r.query_outputs(images)["feats"], np.float64)
        _, _, model, _ = inference.restore_model(workdir)
        head = model.head
        want = quant_ref.progressive_ortho_quantize(
            feats, *(np.asarray(a) for a in (head.assign[...], head.codebooks[...], head.gains()))
        )["codes"][:, :2, :]
        return want.reshape(len(images), -1)

    orl_runs.check_prefix_retriever(run, tmp_path, want_codes)
