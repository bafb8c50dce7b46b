"""`dpq-train`'s error boundary and exit status: one line for a known problem, 75 after SIGTERM,
a traceback for anything unexpected."""

import os
import signal
import subprocess
import sys
import time

import pytest

from dpq_jax import checkpointing, config_lib, main, train
from dpq_jax import workdir as workdir_lib
from dpq_jax.data import orl

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
CONFIG = os.path.join(REPO, "configs", "orl_opqn.py")


@pytest.fixture(scope="module")
def orl_data_dir(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("tfds")
    orl.load_orl_faces(data_dir=data_dir)
    return str(data_dir)


def tiny_config(data_dir, **overrides):
    config = config_lib.load_config(CONFIG, "runlocal")
    with config.unlocked():
        config.input.data_dir = data_dir
        for key, value in overrides.items():
            target = config
            *parents, leaf = key.split(".")
            for parent in parents:
                target = target[parent]
            target[leaf] = value
    return config


def dpq_train(*args, **kwargs):
    """Starts `python -m dpq_jax.main` (8 fake CPU devices, inherited from conftest)."""
    return subprocess.Popen(
        [sys.executable, "-m", "dpq_jax.main", *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


def _stderr_lines(text):
    return [line for line in text.splitlines() if line.strip()]


# ----------------------------------------------------------------------------------------------
# Flag and config-file problems (before training): one line, status 2
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "args, expected",
    [
        (
            ["--config=configs/orl_opqn.py:runlocal", "--config.input.batchsize=8"],
            "dpq-train: error: --config.input.batchsize: the config has no field 'batchsize'. "
            'Did you mean "batch_size" instead of "batchsize"?',
        ),
        (
            ["--config=configs/no_such_config.py"],
            "dpq-train: error: config file 'configs/no_such_config.py' not found (working "
            f"directory {REPO}); pass --config=<path to a configs/*.py file>, e.g. "
            "--config=configs/orl_opqn.py.",
        ),
        (
            ["--config=configs/orl_opqn.py:bitz=3"],
            "dpq-train: error: --config=configs/orl_opqn.py:bitz=3: Unknown config argument "
            "'bitz'; this config takes ['bits', 'protocol', 'runlocal', 'size', 'split_seed'].",
        ),
    ],
    ids=["unknown_field", "missing_config_file", "bad_config_argument"],
)
def test_flag_problems_are_one_line(tmp_path, args, expected):
    proc = dpq_train(*args, f"--workdir={tmp_path / 'wd'}")
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == main.EXIT_ERROR
    assert _stderr_lines(err) == [expected]
    assert not (tmp_path / "wd").exists()


# ----------------------------------------------------------------------------------------------
# The boundary around training (in-process)
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "overrides, expected",
    [
        ({"total_steps": 0}, "config.total_steps must be an integer >= 1, got 0"),
        ({"ckpt_steps": 0}, "config.ckpt_steps must be an integer >= 1, got 0"),
        ({"log_training_steps": 0}, "config.log_training_steps must be an integer >= 1"),
        (
            {"input.eval_batch_size": 12},
            "config.input.eval_batch_size=12 is not divisible by the 8",
        ),
        ({"select_on": "test/map@all"}, "selection must use validation splits"),
    ],
)
def test_config_problems_are_one_line_and_status_2(tmp_path, capsys, overrides, expected):
    status = main.train_command(tiny_config("", **overrides), str(tmp_path / "wd"))
    assert status == main.EXIT_ERROR
    lines = _stderr_lines(capsys.readouterr().err)
    assert len(lines) == 1 and lines[0].startswith("dpq-train: error: ")
    assert expected in lines[0]
    assert not (tmp_path / "wd").exists()


def test_workdir_problems_are_one_line(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    assert main.train_command(tiny_config(""), str(tmp_path / "file")) == main.EXIT_ERROR
    assert "is a file, not a directory" in capsys.readouterr().err
    (tmp_path / "busy").mkdir()
    with workdir_lib.WorkdirLock(str(tmp_path / "busy"), command="the-other-run"):
        assert main.train_command(tiny_config(""), str(tmp_path / "busy")) == main.EXIT_ERROR
    lines = _stderr_lines(capsys.readouterr().err)
    assert len(lines) == 1 and f"in use by pid {os.getpid()}" in lines[0]
    assert "the-other-run" in lines[0]


def test_unexpected_errors_keep_their_traceback(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(train, "train_and_evaluate", broken)
    with pytest.raises(RuntimeError, match="a bug"):
        main.train_command(tiny_config(""), str(tmp_path))


# ----------------------------------------------------------------------------------------------
# End to end (subprocess): SIGTERM status, and orbax noise kept off stderr
# ----------------------------------------------------------------------------------------------
def _wait_for(predicate, proc, what, limit_s=600):
    deadline = time.monotonic() + limit_s
    while not predicate():
        if proc.poll() is not None:
            pytest.fail(f"dpq-train ended before {what}: {proc.communicate()[1][-3000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"dpq-train never reached {what}")
        time.sleep(0.2)


def test_sigterm_before_the_last_step_exits_75_after_saving(orl_data_dir, tmp_path):
    workdir = tmp_path / "wd"
    proc = dpq_train(
        "--config=configs/orl_opqn.py:runlocal",
        f"--config.input.data_dir={orl_data_dir}",
        "--config.total_steps=100000",
        "--config.ckpt_steps=100000",
        "--config.evals.val.log_steps=0",
        f"--workdir={workdir}",
    )
    metrics = workdir / "metrics.jsonl"
    _wait_for(
        lambda: metrics.exists() and "train/loss" in metrics.read_text(), proc, "a logged step"
    )
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == main.EXIT_PREEMPTED == 75
    last = _stderr_lines(err)[-1]
    assert last.startswith("dpq-train: stopped at step ") and "Rerun the same command" in last
    steps = [int(name) for name in os.listdir(workdir / "checkpoints") if name.isdigit()]
    assert steps and max(steps) < 100000
    assert not (workdir / "report.json").exists()


def test_checkpoint_error_is_the_last_stderr_line_without_orbax_noise(orl_data_dir, tmp_path):
    # A checkpoint of another model and no config.json (so only the restore can tell): orbax
    # fails mid-read, and its abandoned reads raise in other threads and at exit.
    workdir = tmp_path / "wd"
    _, state, _ = train.build_state(tiny_config(orl_data_dir), num_classes=40, in_channels=1)
    ckpt = checkpointing.Checkpointer(str(workdir / "checkpoints"), save_interval_steps=1)
    ckpt.save(2, state, {}, force=True)
    ckpt.close()
    proc = dpq_train(
        "--config=configs/orl_opqn.py:runlocal",
        f"--config.input.data_dir={orl_data_dir}",
        "--config.model.embedding_dim=1280",
        f"--workdir={workdir}",
    )
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == main.EXIT_ERROR
    assert "Event loop is closed" not in err and "Traceback" not in err
    last = _stderr_lines(err)[-1]
    assert last.startswith("dpq-train: error: ") and str(workdir / "checkpoints") in last
    assert not (workdir / "config.json").exists()  # a run that does not start writes nothing
