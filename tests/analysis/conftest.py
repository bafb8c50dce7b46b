"""Two tiny trained ORL workdirs shared by the analysis tests: OPQN (PQ codes, 32 bits) and
multi-length DSH (binary codes, 16 and 32 bits), each trained for 4 steps with the `runlocal`
configs, and their encoded splits (`evaluation.encode_run`).

They are trained once per test session; under pytest-xdist the workers share them through a
folder of the run's temporary root, guarded by a file lock (the pytest-xdist recipe for
session fixtures). Training and every in-process test that compares numbers with them run
with `jax_disable_most_optimizations` (`fast_compile` of tests/conftest.py), so compiles are
cheap and the numerics identical.
"""

import contextlib
import fcntl
import os

import jax
import pytest

from dpq_jax import config_lib, train

CONFIGS = os.path.join(os.path.dirname(__file__), "..", "..", "configs")
# name -> (config file, argument, overrides); DSH keeps two of its four code lengths and skips
# the raw-pixel baseline (the same numbers as OPQN's) to save compiles.
RUNS = {
    "orl_opqn": ("orl_opqn.py", "runlocal", {}),
    "orl_dsh": (
        "orl_dsh.py",
        "multihead,runlocal",
        {"model.bits": (16, 32), "raw_pixel_baseline": False},
    ),
}


@contextlib.contextmanager
def fast_compiles():
    """Cheap XLA compiles; the flag is restored afterwards."""
    old = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    try:
        yield
    finally:
        jax.config.update("jax_disable_most_optimizations", old)


def _shared_root(tmp_path_factory):
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = tmp_path_factory.getbasetemp().parent / "analysis_runs"  # this run's root
        root.mkdir(exist_ok=True)
        return root
    return tmp_path_factory.mktemp("analysis_runs")


def _train(name: str, root, data_dir: str) -> str:
    filename, arg, overrides = RUNS[name]
    config = config_lib.load_config(os.path.join(CONFIGS, filename), arg)
    with config.unlocked():
        config.input.data_dir = data_dir
        for key, value in overrides.items():
            parent, _, leaf = key.rpartition(".")
            (config[parent] if parent else config)[leaf] = value
    workdir = str(root / name)
    with fast_compiles():
        train.train_and_evaluate(config, workdir)
    return workdir


@pytest.fixture(scope="session")
def trained_runs(tmp_path_factory) -> dict[str, str]:
    """`{name: workdir}` of the two tiny trained runs (see the module docstring)."""
    root = _shared_root(tmp_path_factory)
    with open(root / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one worker trains, the others wait and reuse
        try:
            data_dir = str(root / "tfds")
            workdirs = {}
            for name in RUNS:
                if not (root / f"{name}.done").exists():
                    _train(name, root, data_dir)
                    (root / f"{name}.done").write_text("ok")
                workdirs[name] = str(root / name)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return workdirs


@pytest.fixture(scope="session")
def encoded_runs(trained_runs):
    """`{name: EncodedRun}` of the trained runs (restored and encoded once per session)."""
    from dpq_jax.analysis import evaluation, runs

    loaded = runs.load_runs(list(trained_runs.values()), list(trained_runs))
    with fast_compiles():
        return {run.name: evaluation.encode_run(run, progress=False) for run in loaded}
