"""The workdir guards: the run lock (across processes, after a crash) and the config comparison
on resume."""

import json
import os
import signal
import socket
import subprocess
import sys

import pytest

from dpq_jax import config_lib
from dpq_jax import workdir as workdir_lib

REPO = os.path.join(os.path.dirname(__file__), "..")
CONFIG = os.path.join(REPO, "configs", "orl_opqn.py")

# A second process that takes the lock, says so, and holds it until its stdin closes.
_HOLDER = """
import sys
from dpq_jax import workdir
lock = workdir.WorkdirLock(sys.argv[1], command="holder-command --workdir=x")
lock.acquire()
print("locked", flush=True)
sys.stdin.read()
"""


def _start_holder(path):
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(path)],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline().strip() == "locked"
    return proc


# ----------------------------------------------------------------------------------------------
# Lock
# ----------------------------------------------------------------------------------------------
def test_second_process_is_refused_and_the_holder_is_named(tmp_path):
    holder = _start_holder(tmp_path)
    try:
        with pytest.raises(workdir_lib.WorkdirBusyError) as info:
            workdir_lib.WorkdirLock(str(tmp_path)).acquire()
        message = str(info.value)
        assert f"pid {holder.pid} on host {socket.gethostname()} since " in message
        assert "holder-command --workdir=x" in message and "another --workdir" in message
        assert "\n" not in message
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)
    # The holder ended: the workdir is free again.
    with workdir_lib.WorkdirLock(str(tmp_path)) as lock:
        assert lock.held
        assert json.loads((tmp_path / ".lock").read_text())["pid"] == os.getpid()


def test_lock_left_by_a_killed_process_does_not_block(tmp_path):
    holder = _start_holder(tmp_path)
    holder.send_signal(signal.SIGKILL)  # dies holding the lock; its file stays behind
    holder.wait(timeout=60)
    holder.stdin.close()
    stale = json.loads((tmp_path / ".lock").read_text())
    assert stale["pid"] == holder.pid
    lock = workdir_lib.WorkdirLock(str(tmp_path), command="second")
    lock.acquire()
    try:
        info = json.loads((tmp_path / ".lock").read_text())
        assert (info["pid"], info["command"]) == (os.getpid(), "second")
    finally:
        lock.release()


def test_garbage_lock_file_without_holder_does_not_block(tmp_path):
    (tmp_path / ".lock").write_text("not json")
    with workdir_lib.WorkdirLock(str(tmp_path)):
        pass


def test_second_handle_in_the_same_process_is_refused_until_released(tmp_path):
    first = workdir_lib.WorkdirLock(str(tmp_path))
    first.acquire()
    with pytest.raises(workdir_lib.WorkdirBusyError, match=f"pid {os.getpid()}"):
        workdir_lib.WorkdirLock(str(tmp_path)).acquire()
    first.release()
    assert not first.held and (tmp_path / ".lock").read_text() == ""
    with workdir_lib.WorkdirLock(str(tmp_path)):
        pass


def test_prepare_creates_the_directory_and_refuses_a_file(tmp_path):
    created = workdir_lib.prepare(str(tmp_path / "a" / "b"))
    assert os.path.isdir(created) and os.path.isabs(created)
    (tmp_path / "file").write_text("x")
    with pytest.raises(workdir_lib.WorkdirError, match="is a file, not a directory"):
        workdir_lib.prepare(str(tmp_path / "file"))
    with pytest.raises(workdir_lib.WorkdirError, match="part of its path is a file"):
        workdir_lib.prepare(str(tmp_path / "file" / "run"))


# ----------------------------------------------------------------------------------------------
# Config comparison
# ----------------------------------------------------------------------------------------------
def _config(arg="runlocal", **overrides):
    config = config_lib.load_config(CONFIG, arg)
    with config.unlocked():
        for key, value in overrides.items():
            target = config
            *parents, leaf = key.split(".")
            for parent in parents:
                target = target[parent]
            target[leaf] = value
    return config


def _as_json(config):
    return json.loads(config.to_json())


def test_differences_are_split_into_compatible_and_incompatible():
    old = _as_json(_config())
    new = _as_json(
        _config(
            "runlocal,bits=64,protocol=orl_unseen",
            **{
                "optim.lr": 0.01,
                "total_steps": 8,
                "evals.val.log_steps": 4,
                "evals.val.query": "query",
                "model.backbone.input_hw": (28, 28),
            },
        )
    )
    incompatible, compatible = workdir_lib.config_differences(old, new)
    assert [f for f, _, _ in compatible] == ["evals.val.log_steps", "optim.lr", "total_steps"]
    fields = {f for f, _, _ in incompatible}
    assert {"protocol", "evals.val.query", "model.backbone.input_hw", "model.embedding_dim"} <= (
        fields
    )
    assert not fields & {"optim.lr", "total_steps"}
    assert ("model.backbone.input_hw", (32, 26), (28, 28)) in incompatible


def test_new_unset_fields_and_list_tuple_spelling_are_no_change():
    old = {"input": {"dataset": "orl_faces"}, "shape": [1, 2]}
    new = {"input": {"dataset": "orl_faces", "source_dir": ""}, "shape": (1, 2)}
    assert workdir_lib.config_differences(old, new) == ([], [])
    old_added = {"input": {"dataset": "orl_faces"}}
    new_added = {"input": {"dataset": "orl_faces", "source_dir": "/data"}}
    assert workdir_lib.config_differences(old_added, new_added)[1] == [
        ("input.source_dir", "<absent>", "/data")
    ]


def test_optimizer_fields_that_change_the_state_are_incompatible():
    for field in ("optim.name", "optim.momentum", "optim.weight_decay", "optim.grad_clip_norm"):
        assert not workdir_lib.is_compatible(field), field
    for field in ("optim.lr", "ckpt_steps", "evals.test.final", "input.eval_batch_size"):
        assert workdir_lib.is_compatible(field), field


def _write_config(workdir, config):
    (workdir / "config.json").write_text(json.dumps(_as_json(config), indent=2))


def test_check_config_change(tmp_path):
    config = _config()
    assert workdir_lib.check_config_change(str(tmp_path), config) == []  # new workdir
    _write_config(tmp_path, config)
    before = (tmp_path / "config.json").read_bytes()
    assert workdir_lib.check_config_change(str(tmp_path), config) == []  # same config

    with pytest.raises(workdir_lib.ConfigChangeError) as info:
        workdir_lib.check_config_change(str(tmp_path), _config("runlocal,protocol=orl_unseen"))
    message = str(info.value)
    assert "protocol: 'orl_seen' -> 'orl_unseen'" in message and "new --workdir" in message
    assert "\n" not in message

    lr = _config(**{"optim.lr": 0.5})
    with pytest.raises(workdir_lib.ConfigChangeError, match=r"optim.lr: 0.1 -> 0.5.*--allow_xyz"):
        workdir_lib.check_config_change(str(tmp_path), lr, flag="--allow_xyz")
    assert workdir_lib.check_config_change(str(tmp_path), lr, allow=True) == [
        ("optim.lr", 0.1, 0.5)
    ]
    # An incompatible change is refused even when compatible ones are allowed.
    with pytest.raises(workdir_lib.ConfigChangeError, match="model.embedding_dim"):
        workdir_lib.check_config_change(
            str(tmp_path), _config("runlocal,bits=64", **{"optim.lr": 0.5}), allow=True
        )
    assert (tmp_path / "config.json").read_bytes() == before  # nothing was written
    assert sorted(os.listdir(tmp_path)) == ["config.json"]


def test_long_difference_lists_are_cut(tmp_path):
    old = {f"f{i:02d}": i for i in range(20)}
    new = {f"f{i:02d}": i + 1 for i in range(20)}
    incompatible, _ = workdir_lib.config_differences(old, new)
    text = workdir_lib.format_differences(incompatible)
    assert text.startswith("f00: 0 -> 1; ") and text.endswith("and 8 more")


def test_unreadable_config_json_is_an_error(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(workdir_lib.WorkdirError, match="cannot be read"):
        workdir_lib.check_config_change(str(tmp_path), _config())
