"""`gs://` paths end to end, on a local Cloud Storage emulator (no network, no credentials).

The emulator is `gcp-storage-emulator` (pure Python, in this process); `etils.epath` reaches it
through gcsfs (`STORAGE_EMULATOR_HOST`), orbax through tensorstore (`TENSORSTORE_GCS_HTTP_URL`).
The module is skipped when the emulator or gcsfs is not installed (`pip install -e '.[test]'`
installs both). See docs/cloud.md.
"""

import hashlib
import http
import json
import logging
import os
import socket
import sys

import numpy as np
import pytest

emulator = pytest.importorskip("gcp_storage_emulator.server", reason="needs gcp-storage-emulator")
gcsfs_core = pytest.importorskip("gcsfs.core", reason="needs gcsfs")

import fsspec  # noqa: E402 (after the skips)
from etils.epath import backend as epath_backend  # noqa: E402
from gcp_storage_emulator import exceptions as emulator_errors  # noqa: E402
from gcp_storage_emulator.handlers import objects as emulator_objects  # noqa: E402

from dpq_jax import io_utils  # noqa: E402

BUCKET = "dpq-test"
_PORT: list[int] = []  # one port per process: tensorstore reads its endpoint only once


def _move(request, response, storage, *args, **kwargs):
    """objects.move (`moveTo`), which the emulator lacks and real buckets have: copy, delete."""
    del args, kwargs
    params = request.params
    try:
        moved = emulator_objects._copy(
            request.base_url,
            storage,
            params["bucket_name"],
            params["object_id"],
            params["bucket_name"],
            params["dest_object_id"],
        )
        storage.delete_file(params["bucket_name"], params["object_id"])
    except emulator_errors.NotFound:
        response.status = http.HTTPStatus.NOT_FOUND
        return
    response.json(moved)


_MOVE_ROUTE = (
    r"^/storage/v1/b/(?P<bucket_name>[-.\w]+)/o/(?P<object_id>.*[^/]+)/moveTo/o/"
    r"(?P<dest_object_id>.*[^/]+)$",
    {"POST": _move},
)


def _port() -> int:
    if not _PORT:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            _PORT.append(s.getsockname()[1])
    return _PORT[0]


@pytest.fixture(scope="module")
def gcs():
    """`gs://dpq-test`, an empty bucket on the emulator; every client pointed at it."""
    port = _port()
    url = f"http://127.0.0.1:{port}"
    env = {
        "STORAGE_EMULATOR_HOST": url,  # gcsfs and google-cloud-storage
        "TENSORSTORE_GCS_HTTP_URL": url,  # tensorstore (orbax)
        "GOOGLE_AUTH_TOKEN_FOR_TESTING": "test",  # tensorstore: no credential search
        # google-auth and tensorstore never probe a metadata server off this machine.
        "GCE_METADATA_HOST": "127.0.0.1:9",
        "GCE_METADATA_IP": "127.0.0.1:9",
        "GCE_METADATA_ROOT": "127.0.0.1:9",
        "GOOGLE_CLOUD_PROJECT": "test",
        "EPATH_USE_TF": "false",  # etils: gcsfs even where TensorFlow is installed
    }
    logging.getLogger("gcp_storage_emulator").setLevel(logging.CRITICAL)
    registry = sys.modules["fsspec.registry"]._registry
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        mp.setattr(emulator, "HANDLERS", (_MOVE_ROUTE, *emulator.HANDLERS))
        mp.setitem(fsspec.config.conf, "gcs", {"token": "anon"})
        # The plain client: gcsfs's default subclass asks Google's control plane (gRPC, off this
        # machine) for each bucket's layout.
        for protocol in ("gs", "gcs"):
            mp.setitem(registry, protocol, gcsfs_core.GCSFileSystem)
        _forget_clients()
        server = emulator.create_server("127.0.0.1", port, in_memory=True, default_bucket=BUCKET)
        server.start()
        try:
            yield f"gs://{BUCKET}"
        finally:
            server.stop()
            _forget_clients()


def _forget_clients():
    """Drops cached gcsfs clients, so none outlives the emulator it was made for."""
    epath_backend.fsspec_backend._get_filesystem.cache_clear()
    gcsfs_core.GCSFileSystem.clear_instance_cache()


def _objects(root: str) -> list[str]:
    """Every object under `root`, relative."""
    return io_utils._files_under(io_utils.as_path(root))


# ----------------------------------------------------------------------------------------------
# io_utils
# ----------------------------------------------------------------------------------------------
def test_paths_atomic_writes_and_npz_files(gcs):
    folder = f"{gcs}/io"
    path = io_utils.as_path(f"{folder}/a.npz")
    assert io_utils.is_remote(path) and str(path) == f"{folder}/a.npz"
    arrays = {"codes": np.arange(12, dtype=np.uint8).reshape(3, 4), "ids": np.arange(3)}
    meta = {"format": "demo", "format_version": 1}
    assert str(io_utils.write_npz(path, arrays, meta)) == str(path)
    loaded, read_meta = io_utils.read_npz(path, format_name="demo")
    for name, a in arrays.items():
        np.testing.assert_array_equal(loaded[name], a)
        assert read_meta["arrays"][name] == io_utils.array_record(a)
    # A failed write keeps the old object and leaves no temporary object.
    good = path.read_bytes()
    with pytest.raises(RuntimeError, match="disk on fire"), io_utils.atomic_write(path) as f:
        f.write(b"half of the new")
        raise RuntimeError("disk on fire")
    assert path.read_bytes() == good and _objects(folder) == ["a.npz"]
    with io_utils.atomic_write(f"{folder}/note.txt", "w", encoding="utf-8") as f:
        f.write("é\n")
    assert io_utils.read_bytes(f"{folder}/note.txt") == "é\n".encode()
    assert _objects(folder) == ["a.npz", "note.txt"]
    # Damage is still caught: a truncated object.
    with io_utils.as_path(f"{folder}/bad.npz").open("wb") as f:
        f.write(good[:200])
    with pytest.raises(ValueError, match="truncated"):
        io_utils.read_npz(f"{folder}/bad.npz")
    with pytest.raises(FileNotFoundError):
        io_utils.read_npz(f"{folder}/missing.npz")
    files = [io_utils.as_path(f"{folder}/a.npz"), io_utils.as_path(f"{folder}/note.txt")]
    want = hashlib.sha256(b"a.npz\0" + good + b"note.txt\0" + "é\n".encode()).hexdigest()
    assert io_utils.files_sha256(io_utils.as_path(folder), files, content=True) == want
    sizes = hashlib.sha256(f"a.npz\0{len(good)}\0note.txt\0{3}\0".encode()).hexdigest()
    assert io_utils.files_sha256(io_utils.as_path(folder), files, content=False) == sizes


# ----------------------------------------------------------------------------------------------
# Workdir, metric writer, checkpoints
# ----------------------------------------------------------------------------------------------
def test_workdir_is_prepared_and_not_locked(gcs, caplog):
    from dpq_jax import workdir as workdir_lib

    assert workdir_lib.prepare(f"{gcs}/wd/run/") == f"{gcs}/wd/run"
    io_utils.as_path(f"{gcs}/wd/file").write_text("x")
    with pytest.raises(workdir_lib.WorkdirError, match="is an object"):
        workdir_lib.prepare(f"{gcs}/wd/file")
    first = workdir_lib.WorkdirLock(f"{gcs}/wd/run")
    with caplog.at_level("WARNING"):
        first.acquire()
        workdir_lib.WorkdirLock(f"{gcs}/wd/run").acquire()  # no lock: a second one succeeds
    assert first.held and caplog.text.count("has no file locks") == 2
    first.release()
    assert not first.held and _objects(f"{gcs}/wd") == ["file"]  # nothing written
    assert workdir_lib.saved_config(f"{gcs}/wd/run") is None
    io_utils.as_path(f"{gcs}/wd/run/config.json").write_text('{"seed": 3}')
    assert workdir_lib.saved_config(f"{gcs}/wd/run") == {"seed": 3}


def test_metric_writer_rewrites_the_log_and_writes_tensorboard(gcs, monkeypatch):
    from dpq_jax import metric_writers

    workdir = f"{gcs}/mw"
    writer = metric_writers.MetricWriter(workdir)
    monkeypatch.setattr(metric_writers, "REMOTE_FLUSH_SECONDS", 0.0)  # upload on every write
    writer.write(1, {"train/loss": 0.5})
    assert [r["step"] for r in metric_writers.read_jsonl(f"{workdir}/metrics.jsonl")] == [1]
    monkeypatch.setattr(metric_writers, "REMOTE_FLUSH_SECONDS", 3600.0)
    writer.write(2, {"train/loss": float("nan")})
    writer.write_json("report.json", {"a": 1})
    writer.close()
    resumed = metric_writers.MetricWriter(workdir, tensorboard=False)  # appends, as locally
    resumed.write(3, {"train/loss": 0.25})
    resumed.close()
    records = metric_writers.read_jsonl(f"{workdir}/metrics.jsonl")
    assert [(r["step"], r["train/loss"]) for r in records] == [(1, 0.5), (2, "nan"), (3, 0.25)]
    assert json.loads(io_utils.read_bytes(f"{workdir}/report.json")) == {"a": 1}
    events = [name for name in _objects(workdir) if name.startswith("tensorboard/events.")]
    assert len(events) == 1 and io_utils.read_bytes(f"{workdir}/{events[0]}")


def _state(value):
    import jax.numpy as jnp

    w = np.arange(4096, dtype=np.float32).reshape(64, 64) + value
    return {"w": jnp.asarray(w), "b": jnp.full((7,), value, jnp.float32)}


def test_checkpoints_resume_past_a_damaged_step_and_move_it_aside(gcs, caplog):
    from dpq_jax import checkpointing

    directory = f"{gcs}/ck/checkpoints"
    ckpt = checkpointing.Checkpointer(directory, save_interval_steps=1, max_to_keep=5)
    assert ckpt.directory == directory
    for step in (1, 2):
        ckpt.save(step, _state(step), {"note": step}, force=True)
    ckpt.close()
    step_files = _objects(f"{directory}/2")
    data = [io_utils.as_path(f"{directory}/2/{name}") for name in step_files if "/d/" in name]
    assert data, step_files
    largest = max(data, key=io_utils.file_size)
    damaged = bytearray(largest.read_bytes())
    for i in range(len(damaged) // 2, len(damaged) // 2 + 8):
        damaged[i] ^= 0xFF
    largest.write_bytes(bytes(damaged))  # flipped bytes: read without error, digest differs
    abstract = checkpointing.abstract_like(_state(0))
    ckpt = checkpointing.Checkpointer(directory, save_interval_steps=1, max_to_keep=5)
    with pytest.raises(checkpointing.DamagedCheckpointError, match="step 2"):
        ckpt.restore(abstract, step=2)
    with caplog.at_level("WARNING"):
        state, meta = ckpt.restore_or_none(abstract)
    assert meta["step"] == 1 and meta["note"] == 1
    np.testing.assert_array_equal(np.asarray(state["w"]), np.asarray(_state(1)["w"]))
    assert "step 2" in caplog.text and f"{gcs}/ck/checkpoints_damaged/2" in caplog.text
    # Every file of the damaged step is kept aside, and the step number is free again.
    assert _objects(f"{gcs}/ck/checkpoints_damaged/2") == step_files
    assert ckpt.all_steps() == [1]
    ckpt.save(2, _state(20), {}, force=True)
    ckpt.wait()
    state, meta = ckpt.restore(abstract)
    assert meta["step"] == 2 and float(state["b"][0]) == 20.0
    ckpt.close()


# ----------------------------------------------------------------------------------------------
# End to end: the tiny ORL run with --workdir=gs://..., then inference, dpq-search, dpq-report
# ----------------------------------------------------------------------------------------------
CONFIG = os.path.join(os.path.dirname(__file__), "..", "configs", "orl_opqn.py")


@pytest.fixture(scope="module")
def orl_data_dir(tmp_path_factory):
    from dpq_jax.data import orl

    data_dir = tmp_path_factory.mktemp("tfds")
    orl.load_orl_faces(data_dir=data_dir)
    return str(data_dir)


def _tiny_config(data_dir, **overrides):
    from dpq_jax import config_lib

    config = config_lib.load_config(CONFIG, "runlocal")
    with config.unlocked():
        config.input.data_dir = data_dir
        config.update_from_flattened_dict(overrides)
    return config


def test_tiny_orl_run_in_a_bucket_resumes_and_serves(
    gcs, orl_data_dir, tmp_path, monkeypatch, capsys, fast_compile
):
    from dpq_jax import inference, train
    from dpq_jax.analysis import cli as report_cli
    from dpq_jax.analysis import runs
    from dpq_jax.search import cli as search_cli

    monkeypatch.chdir(tmp_path)  # the old bug: a local folder named "gs:"
    workdir = f"{gcs}/runs/orl"
    config = _tiny_config(orl_data_dir, total_steps=2, tensorboard=True)
    first = train.train_and_evaluate(config, workdir)
    assert first.step == 2 and first.workdir == workdir
    config = _tiny_config(orl_data_dir, total_steps=4, tensorboard=True)
    resumed = train.train_and_evaluate(config, workdir, allow_config_change=True)
    assert resumed.step == 4 and not resumed.stopped_early
    assert os.listdir(tmp_path) == []

    names = _objects(workdir)
    for name in ("config.json", "report.json", "pr_curve.png", "splits/orl_seen_seed0.npz"):
        assert name in names, names
    assert {"2", "4"} <= {n.split("/")[1] for n in names if n.startswith("checkpoints/")}
    assert any(n.startswith("tensorboard/events.") for n in names)
    assert not any(n.endswith(".tmp") for n in names), names
    report = json.loads(io_utils.read_bytes(f"{workdir}/report.json"))
    assert report["selected_step"] in (2, 4) and report["results"][0]["num_queries"] == 120
    run = runs.load_run(workdir)
    assert run.workdir == workdir and run.name == "orl" and run.splits is not None
    logged = [s for s, rec in run.history.items() if "train/loss" in rec]
    assert logged[0] <= 2 and logged[-1] == 4  # both runs' records, in one log
    _, _, _, meta = inference.restore_model(workdir, step="latest")
    assert meta["step"] == 4

    index = f"{gcs}/out/orl_db.npz"
    args = ["--workdir", workdir, "--step", "4"]
    database = ["--database", "dataset:orl_faces:database"]
    assert search_cli.main(["index", *args, *database, "--output", index]) == 0
    top = f"{gcs}/out/top.json"
    queries = ["--queries", "dataset:orl_faces:query", "--k", "3", "--format", "json"]
    assert search_cli.main(["query", "--workdir", workdir, "--index", index, *queries,
                            "--output", top]) == 0  # fmt: skip
    results = json.loads(io_utils.read_bytes(top))
    assert len(results) == 120 and all(len(r["results"]) == 3 for r in results)
    capsys.readouterr()
    assert search_cli.main(["index", *args, *database, "--output", f"{workdir}/report.json"]) == 1
    assert "training run's own file report.json" in capsys.readouterr().err
    out = f"{gcs}/out/report"
    assert report_cli.main([workdir, "--output", out, "--no_recompute", "--no_progress"]) == 0
    assert {"report.html", "tables.json", "map_vs_bits.png"} <= set(_objects(out))
    assert os.listdir(tmp_path) == []
