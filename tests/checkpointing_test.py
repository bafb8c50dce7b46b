"""Checkpointer: keep-N plus best-on-validation, metadata, SIGTERM flag, foreign checkpoints."""

import os
import signal

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dpq_jax import checkpointing


def _state(value):
    return {"w": jnp.full((3,), value, jnp.float32), "step": jnp.asarray(int(value))}


def test_keeps_latest_n_and_best(tmp_path):
    ckpt = checkpointing.Checkpointer(
        str(tmp_path), save_interval_steps=1, max_to_keep=2, best_metric="val/map@all"
    )
    val = {1: 0.5, 2: 0.9, 3: 0.6, 4: 0.7, 5: 0.65}
    for step, score in val.items():
        ckpt.save(step, _state(step), {"note": step}, metrics={"val/map@all": score}, force=True)
    ckpt.wait()
    assert ckpt.best_step() == 2
    assert sorted(ckpt.all_steps()) == [2, 4, 5]  # best (2) + latest two (4, 5)
    state, meta = ckpt.restore(checkpointing.abstract_like(_state(0)), step=2)
    np.testing.assert_array_equal(np.asarray(state["w"]), np.full(3, 2.0))
    assert meta["note"] == 2 and meta["step"] == 2
    assert ckpt.restore_meta(5)["note"] == 5
    ckpt.close()


def test_empty_directory_restores_none(tmp_path):
    ckpt = checkpointing.Checkpointer(str(tmp_path), save_interval_steps=1)
    assert ckpt.restore_or_none(_state(0)) is None
    with pytest.raises(checkpointing.CheckpointError, match="No checkpoint"):
        ckpt.restore(_state(0))
    ckpt.close()


def test_foreign_checkpoint_is_rejected(tmp_path):
    import orbax.checkpoint as ocp

    with ocp.CheckpointManager(str(tmp_path)) as manager:  # another program's checkpoint
        manager.save(
            1,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(_state(1)), meta=ocp.args.JsonSave({"x": 1})
            ),
        )
        manager.wait_until_finished()
    ckpt = checkpointing.Checkpointer(str(tmp_path), save_interval_steps=1)
    with pytest.raises(checkpointing.CheckpointError, match="not a dpq_jax checkpoint"):
        ckpt.restore(checkpointing.abstract_like(_state(0)))
    ckpt.close()


def test_sigterm_sets_the_preemption_flag(tmp_path):
    ckpt = checkpointing.Checkpointer(str(tmp_path), save_interval_steps=1)
    ckpt.preemption.install()
    try:
        assert not ckpt.should_stop(1)
        os.kill(os.getpid(), signal.SIGTERM)
        assert ckpt.should_stop(1)
    finally:
        ckpt.preemption.uninstall()
        ckpt.close()
    assert signal.getsignal(signal.SIGTERM) is not ckpt.preemption._handle


def test_abstract_like_keeps_sharding():
    x = jax.device_put(jnp.ones((8, 2)))
    struct = checkpointing.abstract_like({"x": x, "n": 3})
    assert struct["x"].shape == (8, 2) and struct["x"].sharding == x.sharding
    assert struct["n"] == 3


# ---------------------------------------------------------------------------------------------
# Integrity: a digest recorded at save time, verified on restore.
# ---------------------------------------------------------------------------------------------


def _big_state(value):
    """A state whose largest array spans a data file of several KB (bytes to flip)."""
    w = np.arange(4096, dtype=np.float32).reshape(64, 64) + value
    return {"w": jnp.asarray(w), "b": jnp.full((7,), value, jnp.float32)}


def _data_files(step_dir):
    """The array data files orbax wrote for a step, largest first."""
    files = [
        os.path.join(root, name)
        for root, _, names in os.walk(step_dir)
        if os.path.basename(root) == "d"
        for name in names
    ]
    assert files, f"no array data files under {step_dir}"
    return sorted(files, key=os.path.getsize, reverse=True)


def _flip_bytes(path, count=8):
    data = bytearray(open(path, "rb").read())
    middle = len(data) // 2
    for i in range(middle, middle + count):
        data[i] ^= 0xFF
    with open(path, "wb") as f:
        f.write(bytes(data))


def _raw_orbax_restore(directory, step, abstract):
    """What orbax alone returns for a step: no digest check."""
    import orbax.checkpoint as ocp

    with ocp.CheckpointManager(directory) as manager:
        return manager.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract))
        )["state"]


def test_state_digest_matches_a_hashlib_oracle_and_ignores_placement(cpu_devices):
    import hashlib

    from dpq_jax import parallel

    state = {"a": jnp.arange(6, dtype=jnp.int32).reshape(2, 3), "b": {"c": jnp.ones(4)}}
    leaves = []
    for x in (np.arange(6, dtype=np.int32).reshape(2, 3), np.ones(4, np.float32)):  # key order
        h = hashlib.sha256(f"{x.dtype.str}{list(x.shape)}".encode())
        h.update(x.tobytes())
        leaves.append(h.hexdigest())
    expected = hashlib.sha256("\n".join(leaves).encode()).hexdigest()
    assert checkpointing.state_digest(state) == expected
    mesh = parallel.make_mesh(devices=cpu_devices)
    replicated = jax.device_put(state, parallel.replicated(mesh))
    assert checkpointing.state_digest(replicated) == expected
    changed = {"a": state["a"].at[1, 2].set(7), "b": state["b"]}
    assert checkpointing.state_digest(changed) != expected


def test_flipped_bytes_are_loaded_silently_by_orbax_but_refused_here(tmp_path):
    ckpt = checkpointing.Checkpointer(str(tmp_path), save_interval_steps=1)
    ckpt.save(1, _big_state(0), {"note": 1}, force=True)
    ckpt.wait()
    recorded = ckpt.restore_meta(1)["integrity"]["sha256"]
    assert recorded == checkpointing.state_digest(_big_state(0))
    ckpt.close()
    _flip_bytes(_data_files(tmp_path / "1")[0])
    abstract = checkpointing.abstract_like(_big_state(0))
    # orbax alone returns wrong values without a word: this is what the digest guards against.
    raw = _raw_orbax_restore(str(tmp_path), 1, abstract)
    assert np.sum(np.asarray(raw["w"]) != np.asarray(_big_state(0)["w"])) > 0
    ckpt = checkpointing.Checkpointer(str(tmp_path), save_interval_steps=1)
    with pytest.raises(checkpointing.DamagedCheckpointError, match=r"step 1 .* is damaged") as e:
        ckpt.restore(abstract, step=1)
    assert "['w']" in str(e.value) and "retrain" in str(e.value) and "\n" not in str(e.value)
    ckpt.close()


def test_unreadable_step_is_one_clean_error(tmp_path):
    ckpt = checkpointing.Checkpointer(str(tmp_path), save_interval_steps=1)
    ckpt.save(1, _big_state(0), {}, force=True)
    ckpt.save(2, _big_state(1), {}, force=True)
    ckpt.close()
    for path in _data_files(tmp_path / "2"):
        with open(path, "wb") as f:
            f.write(b"\0" * 3)
    ckpt = checkpointing.Checkpointer(str(tmp_path), save_interval_steps=1)
    with pytest.raises(checkpointing.DamagedCheckpointError, match="Cannot read checkpoint step 2"):
        ckpt.restore(checkpointing.abstract_like(_big_state(0)), step=2)
    with pytest.raises(checkpointing.CheckpointError, match=r"No checkpoint step 5 .*\[1, 2\]"):
        ckpt.restore(checkpointing.abstract_like(_big_state(0)), step=5)
    ckpt.close()


def test_resume_falls_back_to_the_newest_intact_step(tmp_path, caplog):
    directory = tmp_path / "checkpoints"
    ckpt = checkpointing.Checkpointer(str(directory), save_interval_steps=1, max_to_keep=5)
    for step in (1, 2, 3):
        ckpt.save(step, _big_state(step), {}, force=True)
    ckpt.close()
    _flip_bytes(_data_files(directory / "3")[0])
    for path in _data_files(directory / "2"):  # unreadable
        with open(path, "wb") as f:
            f.write(b"\0")
    ckpt = checkpointing.Checkpointer(str(directory), save_interval_steps=1, max_to_keep=5)
    with caplog.at_level("WARNING"):
        state, meta = ckpt.restore_or_none(checkpointing.abstract_like(_big_state(0)))
    assert meta["step"] == 1
    np.testing.assert_array_equal(np.asarray(state["w"]), np.asarray(_big_state(1)["w"]))
    warned = caplog.text
    assert "step 3" in warned and "step 2" in warned and "damaged" in warned
    # The damaged steps are kept aside, and the run can save those step numbers again.
    assert sorted(os.listdir(tmp_path / "checkpoints_damaged")) == ["2", "3"]
    assert ckpt.all_steps() == [1]
    ckpt.save(2, _big_state(20), {}, force=True)
    ckpt.wait()
    state, meta = ckpt.restore(checkpointing.abstract_like(_big_state(0)))
    assert meta["step"] == 2 and float(state["b"][0]) == 20.0
    ckpt.close()


def test_resume_with_every_step_damaged_raises_and_moves_nothing(tmp_path):
    ckpt = checkpointing.Checkpointer(str(tmp_path / "c"), save_interval_steps=1)
    ckpt.save(1, _big_state(1), {}, force=True)
    ckpt.close()
    _flip_bytes(_data_files(tmp_path / "c" / "1")[0])
    ckpt = checkpointing.Checkpointer(str(tmp_path / "c"), save_interval_steps=1)
    with pytest.raises(checkpointing.DamagedCheckpointError, match="step 1"):
        ckpt.restore_or_none(checkpointing.abstract_like(_big_state(0)))
    assert ckpt.all_steps() == [1] and not (tmp_path / "c_damaged").exists()
    ckpt.close()


def test_step_without_a_digest_restores_unverified(tmp_path, caplog):
    import orbax.checkpoint as ocp

    with ocp.CheckpointManager(str(tmp_path)) as manager:  # as dpq_jax wrote before digests
        manager.save(
            4,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(_state(4)),
                meta=ocp.args.JsonSave({"format": checkpointing.CHECKPOINT_FORMAT, "step": 4}),
            ),
        )
        manager.wait_until_finished()
    ckpt = checkpointing.Checkpointer(str(tmp_path), save_interval_steps=1)
    with caplog.at_level("WARNING"):
        state, meta = ckpt.restore_or_none(checkpointing.abstract_like(_state(0)))
    assert meta["step"] == 4 and float(state["w"][0]) == 4.0
    assert "no integrity digest" in caplog.text and "unverified" in caplog.text
    ckpt.close()


def test_read_only_checkpointer_creates_nothing(tmp_path):
    missing = tmp_path / "no" / "checkpoints"
    ckpt = checkpointing.Checkpointer(str(missing), save_interval_steps=1, read_only=True)
    assert ckpt.latest_step() is None
    with pytest.raises(checkpointing.CheckpointError, match="No checkpoint found"):
        ckpt.restore_meta()
    ckpt.close()
    assert not (tmp_path / "no").exists()


def test_min_mode_keeps_the_lowest_loss_and_survives_a_restart(tmp_path):
    # "train/loss" is minimised (metric_mode); the values go down, up and down again.
    loss = {1: 0.9, 2: 0.4, 3: 0.7, 4: 0.5, 5: 0.6}
    lowest = min(sorted(loss), key=lambda s: (loss[s], -s))  # ties: the later step
    ckpt = checkpointing.Checkpointer(
        str(tmp_path), save_interval_steps=1, max_to_keep=2, best_metric="train/loss"
    )
    assert ckpt.best_mode == "min"
    for step, value in loss.items():
        ckpt.save(step, _state(step), {}, metrics={"train/loss": value}, force=True)
    ckpt.wait()
    assert ckpt.best_step() == lowest == 2
    assert sorted(ckpt.all_steps()) == sorted({lowest, 4, 5})  # lowest + latest two
    ckpt.close()
    # A new process (resume) and a read-only reader (inference) find the same step on disk.
    again = checkpointing.Checkpointer(
        str(tmp_path), save_interval_steps=1, max_to_keep=2, best_metric="train/loss"
    )
    assert again.best_step() == lowest
    again.save(6, _state(6), {}, metrics={"train/loss": 0.45}, force=True)
    again.wait()
    assert again.best_step() == 2 and sorted(again.all_steps()) == [2, 5, 6]
    again.close()
    reader = checkpointing.Checkpointer(
        str(tmp_path), save_interval_steps=1, best_metric="train/loss", read_only=True
    )
    assert reader.best_step() == 2
    reader.close()
    # The mode can be given explicitly; a wrong one is one clear error.
    highest = checkpointing.Checkpointer(
        str(tmp_path),
        save_interval_steps=1,
        best_metric="train/loss",
        best_mode="max",
        read_only=True,
    )
    assert highest.best_step() == 5  # of the kept steps 2, 5, 6
    highest.close()
    with pytest.raises(ValueError, match="best_mode must be 'max' or 'min', got 'lowest'"):
        checkpointing.Checkpointer(str(tmp_path), save_interval_steps=1, best_mode="lowest")


def test_metric_mode():
    assert checkpointing.metric_mode("train/loss") == "min"
    assert checkpointing.metric_mode("loss") == "min"
    for name in ("val/map@all", "val/24bit/p@5", "val/r@r2", "train/lossy"):
        assert checkpointing.metric_mode(name) == "max"
