"""Multi-host data parallelism for real: two processes on localhost, four fake CPU devices each.

The two processes run the actual entry point (`python -m dpq_jax.main` with
`DPQ_JAX_DISTRIBUTED=1` and `JAX_COORDINATOR_ADDRESS` / `JAX_NUM_PROCESSES` / `JAX_PROCESS_ID`,
as `launch/gpu_multihost.sh` sets them), so `jax.distributed.initialize()`, the per-process
input rows, the cross-process gradient all-reduce (gloo: jax 0.10's default
`jax_cpu_collectives_implementation`), the gathering of encoded splits and ranking results,
and orbax writing one checkpoint from two processes into a shared local workdir are all
exercised. The oracle is the same tiny ORL run in this process on 8 devices.

Tolerances (float32): the all-reduce sums the per-device gradients in another order across
processes, so losses and parameters agree to rtol 1e-5 / atol 1e-5 (seen: 1.5e-6 after four
SGD steps), not bitwise. The final mAP of the two runs agrees to 1e-3: parameter differences
of 1e-6 can swap two near-tied database items in a ranking, which moves one query's AP by at
most ~1/(queries x relevant items); seen: 1e-5. Evaluation itself is exact: the two-process
checkpoint, evaluated again by one process, gives the two-process report to 1e-12.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from dpq_jax import checkpointing, config_lib, parallel, train
from dpq_jax.data import orl

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
CONFIG = os.path.join(REPO, "configs", "orl_opqn.py")
# A loss every step, no validation runs or checkpoint selection (the report uses the last
# step), no raw-pixel baseline: the least compiling that still trains, saves and evaluates.
OVERRIDES = {
    "log_training_steps": 1,
    "select_on": "",
    "evals.val.log_steps": 0,
    "raw_pixel_baseline": False,
}
TIMEOUT_S = 600

pytestmark = pytest.mark.usefixtures("fast_compile")


@pytest.fixture(scope="module")
def orl_data_dir(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("tfds")
    orl.load_orl_faces(data_dir=data_dir)  # built once, so the two processes only read it
    return str(data_dir)


def _config(data_dir):
    config = config_lib.load_config(CONFIG, "runlocal")
    with config.unlocked():
        config.input.data_dir = data_dir
        for key, value in OVERRIDES.items():
            *parents, leaf = key.split(".")
            target = config
            for parent in parents:
                target = target[parent]
            target[leaf] = value
    return config


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _train_two_processes(data_dir: str, workdir: str) -> list[subprocess.CompletedProcess]:
    """`dpq-train` as process 0 and 1 of 2; if one fails the other is stopped (it would wait
    for its peer until JAX's heartbeat timeout)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "XLA_", "DPQ_"))}
    env.update(
        XLA_FLAGS="--xla_force_host_platform_device_count=4",
        JAX_PLATFORMS="cpu",
        JAX_DISABLE_MOST_OPTIMIZATIONS="true",  # as the fast_compile fixture does here
        DPQ_JAX_DISTRIBUTED="1",
        JAX_COORDINATOR_ADDRESS=f"localhost:{_free_port()}",
        JAX_NUM_PROCESSES="2",
    )
    flags = [f"--config.{key}={value}" for key, value in OVERRIDES.items()]
    command = [
        sys.executable,
        "-m",
        "dpq_jax.main",
        f"--config={CONFIG}:runlocal",
        f"--config.input.data_dir={data_dir}",
        f"--workdir={workdir}",
        *flags,
    ]
    # Output goes to files: a full pipe would block a process that nobody reads yet.
    logs = [(open(f"{workdir}.{i}.out", "w+"), open(f"{workdir}.{i}.err", "w+")) for i in range(2)]
    procs = [
        subprocess.Popen(
            command, cwd=REPO, env={**env, "JAX_PROCESS_ID": str(i)}, stdout=out, stderr=err
        )
        for i, (out, err) in enumerate(logs)
    ]
    deadline = time.monotonic() + TIMEOUT_S
    while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
        if any(p.poll() not in (None, 0) for p in procs):
            break
        time.sleep(0.2)
    for p in procs:
        if p.poll() is None:
            p.kill()
    results = []
    for i, (p, (out, err)) in enumerate(zip(procs, logs, strict=True)):
        p.wait()
        texts = []
        for f in (out, err):
            f.seek(0)
            texts.append(f.read())
            f.close()
        results.append(
            subprocess.CompletedProcess(command + [f"process {i}"], p.returncode, *texts)
        )
    return results


def _records(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def _losses(workdir) -> dict[int, dict[str, float]]:
    """Step -> the training losses logged at that step."""
    return {
        r["step"]: {k: v for k, v in r.items() if k.startswith("train/loss")}
        for r in _records(workdir)
        if "train/loss" in r
    }


def _report_metrics(workdir) -> dict[str, float]:
    with open(os.path.join(workdir, "report.json")) as f:
        (row,) = json.load(f)["results"]
    return row["metrics"]


def _array_leaves(state):
    return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(state)) if x.dtype != object]


def test_two_processes_train_and_evaluate_like_one(orl_data_dir, tmp_path):
    config = _config(orl_data_dir)
    multi = str(tmp_path / "two_processes")
    procs = _train_two_processes(orl_data_dir, multi)
    for p in procs:
        assert p.returncode == 0, f"{p.args[-1]} exited {p.returncode}:\n{p.stderr[-4000:]}"
    # Process 0 alone writes the report; process 1 trained and evaluated silently.
    assert "map@all" in procs[0].stdout and "map@all" not in procs[1].stdout

    single = train.train_and_evaluate(config, str(tmp_path / "one_process"))
    assert jax.process_count() == 1 and jax.device_count() == 8
    with open(os.path.join(multi, "config.json")) as f:
        assert json.load(f) == json.loads(config.to_json())  # the CLI flags made the same run

    # Losses of every step.
    multi_losses, single_losses = _losses(multi), _losses(single.workdir)
    assert sorted(multi_losses) == list(range(1, config.total_steps + 1)) == sorted(single_losses)
    for step, losses in single_losses.items():
        assert multi_losses[step].keys() == losses.keys()
        for key, value in losses.items():
            np.testing.assert_allclose(multi_losses[step][key], value, rtol=1e-5, err_msg=key)

    # Parameters and optimizer state of the checkpoint both processes wrote (shared workdir).
    assert sorted(os.listdir(os.path.join(multi, "checkpoints"))) == ["2", "4"]
    ckpt = checkpointing.Checkpointer(
        os.path.join(multi, "checkpoints"), save_interval_steps=2, max_to_keep=2
    )
    try:
        restored, meta = ckpt.restore(checkpointing.abstract_like(single.state), step=4)
    finally:
        ckpt.close()
    assert meta["step"] == 4
    for a, b in zip(_array_leaves(restored), _array_leaves(single.state), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)

    # Final retrieval metrics.
    multi_map, single_map = _report_metrics(multi), _report_metrics(single.workdir)
    assert multi_map.keys() == single_map.keys() and "map@all" in multi_map
    for key, value in single_map.items():
        np.testing.assert_allclose(multi_map[key], value, atol=1e-3, err_msg=key)

    # Evaluation alone is exact: one process resuming the two-process workdir at its last step
    # trains nothing and re-evaluates the same parameters.
    again = str(tmp_path / "re_evaluated")
    shutil.copytree(multi, again)
    result = train.train_and_evaluate(config, again)
    assert result.step == config.total_steps and not result.stopped_early
    for key, value in _report_metrics(again).items():
        np.testing.assert_allclose(value, multi_map[key], rtol=0, atol=1e-12, err_msg=key)


def test_to_host_on_one_process(cpu_devices):
    mesh = parallel.make_mesh(8, devices=cpu_devices)
    x = np.arange(16 * 3, dtype=np.float32).reshape(16, 3)
    sharded = jax.device_put(x, parallel.data_sharding(mesh))
    out = parallel.to_host({"a": sharded, "b": (jax.numpy.float32(2.0),)})
    assert isinstance(out["a"], np.ndarray)
    np.testing.assert_array_equal(out["a"], x)
    assert out["b"][0] == np.float32(2.0)
