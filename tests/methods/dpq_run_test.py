"""A tiny DPQ-G run on ORL faces through the whole spine: one model, trained a few steps, its
database encoded once and evaluated at every prefix of the levels (one report row per code
length), then served by the retriever at each length.

Oracles: NumPy brute force of the inner product between the raw query embedding and the
reconstruction from the first l codebooks, and the NumPy mAP of `metrics/reference.py`.
"""

import os

import jax
import numpy as np
import pytest
from flax import nnx

from dpq_jax import config_lib, inference, train
from dpq_jax.data import orl
from dpq_jax.quantizers import reference as quant_ref

CONFIG = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "orl_dpq.py")
BITS = (4, 8, 12, 16)  # runlocal: K = 16 codewords (4 bits) per level, L = 4 levels


@pytest.fixture(scope="module")
def run(tmp_path_factory, orl_runs):
    """(workdir, ORL source, TrainResult) of a 4-step DPQ run."""
    yield from orl_runs.tiny_orl_run(tmp_path_factory, "orl_dpq.py", "runlocal")


def test_report_has_one_row_per_prefix(run, orl_runs):
    workdir, _, result = run
    report, _ = orl_runs.check_report_rows(
        workdir,
        result,
        BITS,
        search="progressive ADC",
        query_side="raw",
        metrics={"map@all", "p@5"},
        prefixes=True,
        train_keys=("train/loss_semantic", "train/loss_quantization"),
    )
    assert report["results"][0]["code_stats"]["distinct_codes"] <= 16  # K codewords at 1 level


def test_prefix_scores_equal_numpy_brute_force_of_the_first_levels(run, orl_runs):
    def make_brute(model, query_outputs):
        books = np.asarray(model.quantizer.codebooks[...], np.float64)  # [L, K, D]
        queries = np.asarray(query_outputs["feats"], np.float64)
        # [Q, N]: the raw query . the reconstruction from the first l codebooks.
        return lambda level, codes: queries @ quant_ref.reconstruct_progressive(codes, books).T

    orl_runs.check_prefix_rows_against_brute_force(
        run, make_brute, BITS, query_side="raw", rtol=1e-5
    )


def test_retriever_saves_and_reloads_a_prefix_index(run, tmp_path, orl_runs):
    def want_codes(r, images):  # the first two levels' codes of the query-side embedding
        feats = r.query_outputs(images)["feats"]
        books = np.asarray(r.code_params)  # [2, K, D]: the first two codebooks
        return quant_ref.progressive_quantize(feats, books)["codes"]

    assert orl_runs.check_prefix_retriever(run, tmp_path, want_codes).levels == 2


def test_two_stage_schedule_trains_the_codebooks_only_from_their_start_step(tmp_path):
    """The reference's recipe through the trainer: `Method.make_optimizer` builds the encoder
    and codebook optimizers, the codebooks stay at their initial values until
    `codebook_start_step`, and `restore_model` rebuilds the same optimizer tree."""
    jax.config.update("jax_disable_most_optimizations", True)
    try:
        data_dir = str(tmp_path / "tfds")
        orl.load_orl_faces(data_dir=data_dir)
        config = config_lib.load_config(CONFIG, "runlocal,schedule=two_stage")
        start = int(config.optim.codebook_start_step)
        assert 0 < start < config.total_steps
        with config.unlocked():
            config.input.data_dir = data_dir
            config.ckpt_steps = 1
            config.keep_ckpts = config.total_steps + 1
            config.evals.val.log_steps = config.total_steps
        workdir = str(tmp_path / "workdir")
        train.train_and_evaluate(config, workdir)

        def codebooks(step):
            _, _, model, _ = inference.restore_model(workdir, step=step)
            leaves = [
                np.asarray(v)
                for path, v in nnx.to_flat_state(nnx.state(model, nnx.Param))
                if "codebook" in "/".join(map(str, path))
            ]
            assert leaves, "no codebook parameter found"
            return leaves

        first, at_start, last = codebooks(1), codebooks(start), codebooks(config.total_steps)
        for a, b in zip(first, at_start, strict=True):
            np.testing.assert_array_equal(a, b)  # frozen before the codebook stage
        assert any(not np.array_equal(a, b) for a, b in zip(at_start, last, strict=True))
    finally:
        jax.config.update("jax_disable_most_optimizations", False)
