"""Shared pieces of the methods' tiny end-to-end runs on ORL faces (`*_run_test.py`).

Test modules get them through the `orl_runs` fixture (with `--import-mode=importlib` a test
module cannot import this file).
"""

import os
import types

import jax
import numpy as np
import pytest

from dpq_jax import config_lib, inference, train
from dpq_jax.data import orl, protocols
from dpq_jax.metrics import reference as metrics_ref
from dpq_jax.search.retriever import Retriever

CONFIG_DIR = os.path.join(os.path.dirname(__file__), "..", "..", "configs")


def tiny_orl_run(tmp_path_factory, config_file, arg, overrides=None):
    """Yields `(workdir, ORL source, TrainResult)` of a tiny run of `configs/<config_file>`.

    `overrides` maps dotted config fields (`"model.bits"`) to values. Compiles with most XLA
    optimizations off (as flax's tests do): the runs are a few steps, compile time dominates.
    Use from a module-scoped fixture with `yield from`.
    """
    jax.config.update("jax_disable_most_optimizations", True)
    try:
        data_dir = str(tmp_path_factory.mktemp("tfds"))
        source = orl.load_orl_faces(data_dir=data_dir)
        config = config_lib.load_config(os.path.join(CONFIG_DIR, config_file), arg)
        with config.unlocked():
            config.input.data_dir = data_dir
            for dotted, value in (overrides or {}).items():
                *groups, name = dotted.split(".")
                node = config
                for group in groups:
                    node = node[group]
                node[name] = value
        workdir = str(tmp_path_factory.mktemp("workdir"))
        result = train.train_and_evaluate(config, workdir)
        yield workdir, source, result
    finally:
        jax.config.update("jax_disable_most_optimizations", False)


def check_hamming_row_against_numpy(workdir, source, result, bits):
    """The report's test row at `bits` equals a NumPy mAP@all / P@5 of a brute-force Hamming
    ranking of the restored model's codes (query and database encoded by the retriever)."""
    config, method, model, meta = inference.restore_model(workdir)
    sp = protocols.get_splits(
        config.protocol, source.labels, config.seed, split_dir=os.path.join(workdir, "splits")
    )
    r = Retriever(config, method, model, meta, code_length=bits)
    db_bits, q_bits = r.encode(source.images[sp.database]), r.encode(source.images[sp.query])
    dist = (q_bits[:, None, :] != db_bits[None, :, :]).sum(-1)
    labels = np.asarray(source.labels)
    want = metrics_ref.retrieval_metrics(
        -dist.astype(np.float64),
        labels[sp.query],
        labels[sp.database],
        map_ks=(-1,),
        precision_ks=(5,),
    )
    row = [row for row in result.report["results"] if row["bits"] == bits][0]
    np.testing.assert_allclose(row["metrics"]["map@all"], want["map@all"], rtol=1e-6)
    np.testing.assert_allclose(row["metrics"]["p@5"], want["p@5"], rtol=1e-6)


@pytest.fixture(scope="session")
def orl_runs():
    """`tiny_orl_run` and `check_hamming_row_against_numpy`, for the run tests."""
    return types.SimpleNamespace(
        tiny_orl_run=tiny_orl_run, check_hamming_row_against_numpy=check_hamming_row_against_numpy
    )
