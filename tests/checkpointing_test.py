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
