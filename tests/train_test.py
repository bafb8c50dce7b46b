"""End-to-end tests of `train_and_evaluate` on the real ORL faces with the tiny config."""

import json
import os
import shutil

import jax
import numpy as np
import pytest

from dpq_jax import checkpointing, config_lib, inference, train
from dpq_jax.data import orl

CONFIG = os.path.join(os.path.dirname(__file__), "..", "configs", "orl_opqn.py")


@pytest.fixture(scope="module")
def orl_data_dir(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("tfds")
    orl.load_orl_faces(data_dir=data_dir)  # build once for the module
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


def _leaves(state):
    model_state = jax.tree.leaves(jax.device_get(state))
    return [np.asarray(x) for x in model_state if hasattr(x, "shape") and x.dtype != object]


def test_train_writes_report_and_checkpoint(orl_data_dir, tmp_path):
    result = train.train_and_evaluate(tiny_config(orl_data_dir), str(tmp_path))
    assert result.step == 4 and not result.stopped_early
    assert np.isfinite(result.metrics["train/loss"])
    ckpts = os.listdir(tmp_path / "checkpoints")
    assert "4" in ckpts
    report = json.loads((tmp_path / "report.json").read_text())
    row = report["results"][0]
    assert row["num_queries"] == 120 and row["num_database"] == 280  # orl_seen test split
    assert 0.0 <= row["metrics"]["map@all"] <= 1.0
    assert 0.0 < row["raw_pixels"]["map@all"] <= 1.0
    assert row["conventions"]["ties"] == "stable"
    assert (tmp_path / "pr_curve.png").stat().st_size > 0
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert any("train/loss" in r for r in records)
    tags = [r["test/conventions"] for r in records if "test/conventions" in r]
    assert (
        tags and tags[0]["protocol"] == "orl_seen" and tags[0]["denominator"] == "relevant_in_topk"
    )
    assert any("val/map@all" in r for r in records)  # validation ran on its own schedule


def test_resume_reaches_same_parameters(orl_data_dir, tmp_path, monkeypatch):
    config = tiny_config(orl_data_dir, ckpt_steps=2)
    straight = train.train_and_evaluate(config, str(tmp_path / "straight"))

    # Preempt the second run at step 2 (as SIGTERM would), then rerun the same command.
    original = checkpointing.Checkpointer.should_stop
    monkeypatch.setattr(checkpointing.Checkpointer, "should_stop", lambda self, step: step == 2)
    first = train.train_and_evaluate(config, str(tmp_path / "resumed"))
    assert first.stopped_early and first.step == 2
    monkeypatch.setattr(checkpointing.Checkpointer, "should_stop", original)
    resumed = train.train_and_evaluate(config, str(tmp_path / "resumed"))
    assert resumed.step == 4 and not resumed.stopped_early

    for a, b in zip(_leaves(straight.state), _leaves(resumed.state), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
    assert straight.report["results"][0]["metrics"] == resumed.report["results"][0]["metrics"]


def test_nan_loss_stops_and_keeps_last_good_checkpoint(orl_data_dir, tmp_path):
    config = tiny_config(orl_data_dir, total_steps=2, ckpt_steps=2)
    train.train_and_evaluate(config, str(tmp_path))
    bad = tiny_config(orl_data_dir, total_steps=6, ckpt_steps=2, **{"optim.lr": 1e30})
    with pytest.raises(
        train.NonFiniteLossError, match="NaN/Inf.*last good checkpoint \\(step 2\\)"
    ):
        train.train_and_evaluate(bad, str(tmp_path))
    ckpt = checkpointing.Checkpointer(str(tmp_path / "checkpoints"), save_interval_steps=1)
    assert ckpt.latest_step() == 2
    ckpt.close()


def test_checkpoint_of_another_model_is_rejected(orl_data_dir, tmp_path):
    train.train_and_evaluate(tiny_config(orl_data_dir, total_steps=2), str(tmp_path))
    other = tiny_config(orl_data_dir, total_steps=2, **{"model.embedding_dim": 1024 + 256})
    with pytest.raises(checkpointing.CheckpointError, match="new --workdir"):
        train.train_and_evaluate(other, str(tmp_path))


def test_corrupt_checkpoint_gives_clear_error(orl_data_dir, tmp_path):
    train.train_and_evaluate(tiny_config(orl_data_dir, total_steps=2), str(tmp_path))
    state_dir = tmp_path / "checkpoints" / "2" / "state"
    for root, _, files in os.walk(state_dir):
        for name in files:
            with open(os.path.join(root, name), "wb") as f:
                f.write(b"garbage")
    with pytest.raises(checkpointing.CheckpointError, match="corrupt"):
        train.train_and_evaluate(tiny_config(orl_data_dir, total_steps=4), str(tmp_path))
    shutil.rmtree(tmp_path / "checkpoints" / "2")


def test_batch_not_divisible_by_devices(orl_data_dir, tmp_path):
    config = tiny_config(orl_data_dir, **{"input.batch_size": 12})
    with pytest.raises(ValueError, match="not divisible by the 8 devices"):
        train.train_and_evaluate(config, str(tmp_path))


def test_restore_model_matches_trained_state(orl_data_dir, tmp_path):
    from flax import nnx

    config = tiny_config(orl_data_dir, total_steps=2, ckpt_steps=2)
    result = train.train_and_evaluate(config, str(tmp_path))
    _, method, model, meta = inference.restore_model(str(tmp_path), step="latest")
    assert meta["step"] == 2 and meta["signature"]["in_channels"] == 1
    graphdef, _, _ = train.build_state(config, num_classes=40, in_channels=1)
    trained, _ = nnx.merge(graphdef, result.state)
    trained.eval()
    images = np.random.default_rng(0).normal(size=(4, 32, 26, 1)).astype(np.float32)
    np.testing.assert_array_equal(
        np.asarray(method.encode_fn(model, images)["codes"][0]),
        np.asarray(method.encode_fn(trained, images)["codes"][0]),
    )
    with pytest.raises(FileNotFoundError, match="not a dpq_jax training workdir"):
        inference.restore_model(str(tmp_path / "nowhere"))
