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
        train.NonFiniteLossError, match="NaN/Inf.*latest checkpoint \\(step 2, saved before"
    ):
        train.train_and_evaluate(bad, str(tmp_path), allow_config_change=True)
    ckpt = checkpointing.Checkpointer(str(tmp_path / "checkpoints"), save_interval_steps=1)
    assert ckpt.latest_step() == 2
    ckpt.close()


def test_checkpoint_of_another_model_is_rejected(orl_data_dir, tmp_path):
    from dpq_jax import workdir as workdir_lib

    train.train_and_evaluate(tiny_config(orl_data_dir, total_steps=2), str(tmp_path))
    other = tiny_config(orl_data_dir, total_steps=2, **{"model.embedding_dim": 1024 + 256})
    # First line of defence: the workdir's config.json.
    with pytest.raises(workdir_lib.ConfigChangeError, match="model.embedding_dim: 1024 -> 1280"):
        train.train_and_evaluate(other, str(tmp_path))
    # Second: without config.json, the checkpoint's signature (same shapes, another seed).
    os.remove(tmp_path / "config.json")
    reseeded = tiny_config(orl_data_dir, total_steps=2, seed=1)
    with pytest.raises(checkpointing.CheckpointError, match="another model.*new --workdir"):
        train.train_and_evaluate(reseeded, str(tmp_path))


def test_corrupt_checkpoint_gives_clear_error(orl_data_dir, tmp_path):
    train.train_and_evaluate(tiny_config(orl_data_dir, total_steps=2), str(tmp_path))
    state_dir = tmp_path / "checkpoints" / "2" / "state"
    for root, _, files in os.walk(state_dir):
        for name in files:
            with open(os.path.join(root, name), "wb") as f:
                f.write(b"garbage")
    with pytest.raises(checkpointing.CheckpointError, match="corrupt"):
        train.train_and_evaluate(
            tiny_config(orl_data_dir, total_steps=4), str(tmp_path), allow_config_change=True
        )
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


# ----------------------------------------------------------------------------------------------
# Reliability (issue 13): a workdir is never clobbered, and bad configs stop before writing
# ----------------------------------------------------------------------------------------------
def _snapshot(workdir):
    """Every file under `workdir` with its bytes (the lock file aside)."""
    files = {}
    for root, _, names in os.walk(workdir):
        for name in names:
            path = os.path.join(root, name)
            if name != ".lock":
                with open(path, "rb") as f:
                    files[os.path.relpath(path, workdir)] = f.read()
    return files


def test_locked_workdir_and_config_changes_leave_the_first_run_intact(orl_data_dir, tmp_path):
    from dpq_jax import workdir as workdir_lib

    first = tiny_config(orl_data_dir, total_steps=2)
    train.train_and_evaluate(first, str(tmp_path))
    before = _snapshot(tmp_path)
    assert "config.json" in before and "report.json" in before

    # 1. Another run holds the workdir: a second one stops at once, naming it.
    with workdir_lib.WorkdirLock(str(tmp_path), command="first-run"):
        with pytest.raises(workdir_lib.WorkdirBusyError, match="in use by pid .*first-run"):
            train.train_and_evaluate(first, str(tmp_path), allow_config_change=True)
    # 3. Incompatible fields stop with one message, even with the flag.
    other = tiny_config(orl_data_dir, total_steps=2, protocol="orl_unseen")
    with pytest.raises(workdir_lib.ConfigChangeError, match="protocol: 'orl_seen' -> 'orl_unseen'"):
        train.train_and_evaluate(other, str(tmp_path), allow_config_change=True)
    # 3. Compatible fields need the flag.
    longer = tiny_config(orl_data_dir, total_steps=4, **{"optim.lr": 0.05})
    with pytest.raises(workdir_lib.ConfigChangeError, match="allow_config_change") as info:
        train.train_and_evaluate(longer, str(tmp_path))
    assert "optim.lr: 0.1 -> 0.05" in str(info.value) and "total_steps: 2 -> 4" in str(info.value)
    assert _snapshot(tmp_path) == before  # nothing was written by the runs that did not start

    # With the flag the run resumes at step 2, and the change is on record.
    result = train.train_and_evaluate(longer, str(tmp_path), allow_config_change=True)
    assert result.step == 4
    assert json.loads((tmp_path / "config.json").read_text())["optim"]["lr"] == 0.05
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    changes = [r for r in records if "config_changes" in r]
    assert changes == [
        {
            "step": 2,
            "time": changes[0]["time"],
            "config_changes": {
                "optim.lr": {"old": 0.1, "new": 0.05},
                "total_steps": {"old": 2, "new": 4},
            },
        }
    ]


def test_only_process_zero_locks_and_compares(tmp_path, monkeypatch):
    from dpq_jax import workdir as workdir_lib

    (tmp_path / "config.json").write_text(json.dumps({"protocol": "another"}))
    with workdir_lib.WorkdirLock(str(tmp_path)):  # held by "another run"
        with pytest.raises(workdir_lib.WorkdirBusyError):
            with train._guard_workdir(str(tmp_path), tiny_config(""), False):
                pass
        monkeypatch.setattr(jax, "process_index", lambda: 1)
        with train._guard_workdir(str(tmp_path), tiny_config(""), False) as changes:
            assert changes == []  # process 0 decides; the others follow its broadcast


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"total_steps": 0}, "config.total_steps must be an integer >= 1"),
        ({"ckpt_steps": 0}, "config.ckpt_steps must be an integer >= 1"),  # was ZeroDivisionError
        ({"log_training_steps": 0}, "config.log_training_steps must be an integer >= 1"),
        ({"input.eval_batch_size": 12}, "config.input.eval_batch_size=12 .* 8 devices"),
        ({"select_on": "test/map@all"}, "on the query/database splits; selection must use val"),
        ({"select_on": "val/map@5"}, "evaluator 'val' logs no metric 'map@5'; choose one of"),
        ({"select_on": "nosuch/map@all"}, "names no evaluator in config.evals"),
        ({"select_on": "val"}, "must read '<evaluator>/<metric>'"),
        ({"method": "nosuch"}, "config.method: Unknown method 'nosuch'"),
        ({"evals.val.query": "val_queries"}, "config.evals.val.query='val_queries' is not a split"),
    ],
)
def test_config_errors_stop_before_the_workdir_is_touched(tmp_path, overrides, match):
    with pytest.raises(ValueError, match=match):
        train.train_and_evaluate(tiny_config("", **overrides), str(tmp_path / "wd"))
    assert not (tmp_path / "wd").exists()


def test_workdir_that_is_a_file_is_refused(tmp_path):
    from dpq_jax import workdir as workdir_lib

    (tmp_path / "file").write_text("keep me")
    with pytest.raises(workdir_lib.WorkdirError, match="is a file, not a directory"):
        train.train_and_evaluate(tiny_config(""), str(tmp_path / "file"))
    assert (tmp_path / "file").read_text() == "keep me"


def test_input_size_that_does_not_match_the_data_is_one_clear_error(orl_data_dir, tmp_path):
    config = tiny_config(orl_data_dir, **{"model.backbone.input_hw": (28, 28)})
    with pytest.raises(ValueError, match=r"does not take the 32x26x1 images that config.input.pp"):
        train.train_and_evaluate(config, str(tmp_path))
    assert not {"config.json", "metrics.jsonl", "checkpoints"} & set(os.listdir(tmp_path))


def test_report_says_which_step_was_selected_and_why(orl_data_dir, tmp_path, capsys):
    config = tiny_config(orl_data_dir, keep_ckpts=5)
    result = train.train_and_evaluate(config, str(tmp_path / "best"))
    records = [
        json.loads(line) for line in (tmp_path / "best" / "metrics.jsonl").read_text().splitlines()
    ]
    # Validation ran at every checkpoint (steps 2 and 4); the best (ties: the later) is reported.
    val = {r["step"]: r["val/map@all"] for r in records if "val/map@all" in r}
    assert sorted(val) == [2, 4]
    best = max(sorted(val), key=lambda s: (val[s], s))
    assert result.report["selected_step"] == best
    assert result.report["selected_on"] == "val/map@all"
    out = capsys.readouterr().out
    assert f"Reporting step {best}: the best val/map@all (val_query against val_database)" in out
    assert "(validation split)" not in out
    # Every name `select_on` may use is one the evaluator logs.
    logged = set().union(*records)
    assert set(train.selectable_metrics(config, "val")) <= logged

    # No selection: the last step, said as such.
    none = tiny_config(orl_data_dir, total_steps=2, select_on="")
    result = train.train_and_evaluate(none, str(tmp_path / "last"))
    assert result.report["selected_step"] == 2 and result.report["selected_on"] == "last step"
    assert "Reporting the last step 2 (select_on is '')" in capsys.readouterr().out


# ----------------------------------------------------------------------------------------------
# select_on = "train/loss": the reference OPQN's rule (issue 11)
# ----------------------------------------------------------------------------------------------
def _window_means(records, ckpt_steps):
    """NumPy oracle: {checkpoint step: mean logged train/loss over the steps since the previous
    checkpoint}, from a run that logged every step."""
    loss = {r["step"]: r["train/loss"] for r in records if "train/loss" in r}
    steps = np.array(sorted(loss))
    values = np.array([loss[s] for s in steps], np.float64)
    ends = [s for s in steps if s % ckpt_steps == 0 or s == steps[-1]]
    starts = [0, *ends[:-1]]
    return {int(e): float(values[(steps > a) & (steps <= e)].mean()) for a, e in zip(starts, ends)}


def test_select_on_train_loss_picks_the_lowest_mean_training_loss(
    orl_data_dir, tmp_path, capsys, monkeypatch
):
    overrides = dict(
        select_on="train/loss",
        total_steps=6,  # lr 0.5 makes the loss noisy: the lowest window need not be the last
        ckpt_steps=2,
        keep_ckpts=1,
        log_training_steps=1,
        **{"optim.lr": 0.5},
    )
    config = tiny_config(orl_data_dir, **overrides)
    straight = train.train_and_evaluate(config, str(tmp_path / "straight"))
    records = [
        json.loads(line)
        for line in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()
    ]
    means = _window_means(records, ckpt_steps=2)
    assert sorted(means) == [2, 4, 6]
    lowest = min(sorted(means), key=lambda s: (means[s], -s))
    logged = {r["step"]: r["train/window_loss"] for r in records if "train/window_loss" in r}
    np.testing.assert_allclose(
        [logged[s] for s in sorted(means)], [means[s] for s in sorted(means)], rtol=1e-6
    )
    assert straight.report["selected_step"] == lowest
    assert straight.report["selected_on"] == "train/loss"
    out = capsys.readouterr().out
    assert f"Reporting step {lowest}: the lowest mean training loss" in out
    assert "never looks at held-out data" in out
    # Inference reads the same rule from the workdir (min, not max).
    _, _, _, meta = inference.restore_model(str(tmp_path / "straight"))
    assert meta["step"] == lowest

    # Preempted mid-window (step 3) and resumed: the open window is carried in the checkpoint,
    # so every window mean, and the selected step, are those of the uninterrupted run.
    original = checkpointing.Checkpointer.should_stop
    monkeypatch.setattr(checkpointing.Checkpointer, "should_stop", lambda self, step: step == 3)
    first = train.train_and_evaluate(config, str(tmp_path / "resumed"))
    assert first.stopped_early and first.step == 3
    monkeypatch.setattr(checkpointing.Checkpointer, "should_stop", original)
    resumed = train.train_and_evaluate(config, str(tmp_path / "resumed"))
    records = [
        json.loads(line)
        for line in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()
    ]
    again = {r["step"]: r["train/window_loss"] for r in records if "train/window_loss" in r}
    assert sorted(again) == [2, 4, 6]
    assert again == logged  # the same float64 sums, in the same order
    assert resumed.report["selected_step"] == lowest


def test_invalid_select_on_is_one_line_listing_the_choices(tmp_path):
    for select_on in ("train/accuracy", "val/map@7", "val"):
        with pytest.raises(ValueError) as info:
            train.train_and_evaluate(tiny_config("", select_on=select_on), str(tmp_path / "wd"))
        message = str(info.value)
        assert "\n" not in message and f"select_on={select_on!r}" in message
        for choice in ("'val/map@all'", "'val/p@5'", "'train/loss'", "'' (report the last step)"):
            assert choice in message, (choice, message)
    assert not (tmp_path / "wd").exists()


def test_select_on_takes_the_recall_and_real_valued_metrics_the_evaluator_logs():
    """recall@K (`r@K`) and the real-valued descriptors' numbers (`real_*`, with
    `real_valued`) are selectable, per code length and as their mean; what the evaluator does
    not log is refused in one line that lists the choices."""
    config = config_lib.load_config(
        os.path.join(os.path.dirname(CONFIG), "fmnist_tql.py"), "runlocal"
    )
    with config.unlocked():
        config.evals.val.recall_ks = (10,)
        config.evals.val.real_valued = True
    assert tuple(config.model.bits) == (12, 48) and config.evals.val.hamming_radius == 2
    names = set(train.selectable_metrics(config, "val"))
    assert {"val/r@10", "val/real_map@all", "val/real_r@10", "val/48bit/real_p@100"} <= names
    for select_on in ("val/real_map@all", "val/r@10", "val/12bit/real_r@10", "val/p@r2"):
        with config.unlocked():
            config.select_on = select_on
        assert train.check_select_on(config) == select_on
    # Radius metrics rank Hamming distances: the real-valued descriptors have none.
    for select_on, metric in (("val/real_p@r2", "real_p@r2"), ("val/r@20", "r@20")):
        with config.unlocked():
            config.select_on = select_on
        with pytest.raises(ValueError, match=f"logs no metric '{metric}'; choose one of") as info:
            train.check_select_on(config)
        assert "\n" not in str(info.value) and "'val/real_map@all'" in str(info.value)
    # Without recall_ks and real_valued there are no such names to select.
    plain = config_lib.load_config(
        os.path.join(os.path.dirname(CONFIG), "fmnist_tql.py"), "runlocal"
    )
    assert not any("real_" in n or "r@1" in n for n in train.selectable_metrics(plain, "val"))
