"""End-to-end tests of dpq_jax.search.retriever and the dpq-search CLI on one tiny trained run.

One module-scoped training run (ORL faces, `configs/orl_opqn.py:runlocal` shrunk to M=2, K=16,
D=32 and 2 steps) feeds every test. Oracles: NumPy re-computations of the OPQN codes and tables
from the model's embeddings, and the brute-force search of `search/reference.py`.
"""

import csv
import io
import json
import os
import shutil
import subprocess
import sys

import jax
import ml_collections
import numpy as np
import pytest
from flax import nnx
from PIL import Image

from dpq_jax import checkpointing, config_lib, inference, io_utils, optim, parallel, train
from dpq_jax.data import orl, protocols
from dpq_jax.data import pp as pp_lib
from dpq_jax.methods import opqn
from dpq_jax.search import cli, index
from dpq_jax.search import reference as ref
from dpq_jax.search.retriever import Retriever, default_query_side

CONFIG = os.path.join(os.path.dirname(__file__), "..", "configs", "orl_opqn.py")
M, K, D = 2, 16, 32


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """(workdir, ORL source): a 2-step OPQN run without evaluators (compiles fast)."""
    jax.config.update("jax_disable_most_optimizations", True)  # compile faster, as flax does
    try:
        data_dir = str(tmp_path_factory.mktemp("tfds"))
        source = orl.load_orl_faces(data_dir=data_dir)
        config = config_lib.load_config(CONFIG, "runlocal")
        with config.unlocked():
            config.input.data_dir = data_dir
            config.total_steps = 2
            config.ckpt_steps = 2
            config.evals = ml_collections.ConfigDict()
            config.select_on = ""
            config.raw_pixel_baseline = False
            config.model.embedding_dim = D
            config.model.head.num_codebooks = M
            config.model.head.codebook_size = K
        workdir = str(tmp_path_factory.mktemp("workdir"))
        train.train_and_evaluate(config, workdir)
        yield workdir, source
    finally:
        jax.config.update("jax_disable_most_optimizations", False)  # the default


@pytest.fixture(scope="module")
def restored(run):
    """`restore_model`'s (config, method, model, meta) for the run's checkpoint."""
    workdir, _ = run
    return inference.restore_model(workdir, "best")


def _retriever(restored, **kwargs):
    config, method, model, meta = restored
    return Retriever(config, method, model, meta, **kwargs)


@pytest.fixture(scope="module")
def oracle(restored):
    """(embed, assign [M, d, K], codebooks [M, K, d]): float64 NumPy views of the model.

    `embed` runs each image alone through pp_eval and the backbone (no batching or padding).
    """
    config, _, model, _ = restored
    fn = pp_lib.build(config.input.pp_eval)

    def embed(images):
        x = np.stack([fn(img, None) for img in images]).astype(np.float32)
        return np.asarray(model.backbone(x), np.float64)

    assign = np.asarray(model.head.assign[...], np.float64)
    return embed, assign, np.asarray(model.head.codebooks[...], np.float64)


def _oracle_logits(feats, assign, normalize=False):
    sub = feats.reshape(len(feats), M, D // M)  # [N, M, d]
    if normalize:
        sub = sub / np.linalg.norm(sub, axis=-1, keepdims=True)
    return np.einsum("bmd,mdk->bmk", sub, assign)  # [N, M, K]


def _oracle_probs(feats, assign):
    logits = _oracle_logits(feats, assign, normalize=True)
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


# ---------------------------------------------------------------------------------------------


def test_default_query_side_follows_the_final_evaluator():
    method = opqn.METHOD
    config = config_lib.load_config(CONFIG, "runlocal")
    assert default_query_side(config, method) == "soft_quantized"
    config = ml_collections.ConfigDict(
        {"evals": {"val": {"query_side": "raw"}, "test": {"query_side": "l2", "final": True}}}
    )
    assert default_query_side(config, method) == "l2"
    empty = ml_collections.ConfigDict({"evals": {}})
    assert default_query_side(empty, method) == method.default_query_side == "soft_quantized"


def test_encode_equals_numpy_codes_in_fixed_batches(restored, run, oracle):
    _, source = run
    embed, assign, _ = oracle
    r = _retriever(restored, batch_size=16)
    images = source.images[:21]  # 16 + 5: the last batch is padded
    codes = r.encode(images)
    assert codes.shape == (21, M) and codes.dtype == np.uint8
    logits = _oracle_logits(embed(images), assign)  # [N, M, K]
    chosen = np.take_along_axis(logits, codes[..., None].astype(np.int64), -1)[..., 0]
    np.testing.assert_allclose(chosen, logits.max(-1), rtol=1e-5, atol=1e-6)  # an argmax
    # Other sizes and a list of images reuse the compiled function: one trace in all.
    np.testing.assert_array_equal(r.encode(source.images[:3]), codes[:3])
    np.testing.assert_array_equal(r.encode(list(source.images[5:21])), codes[5:21])
    assert r._traces == 1


def test_add_search_matches_brute_force_oracle(restored, run, oracle):
    _, source = run
    embed, assign, codebooks = oracle
    r = _retriever(restored, batch_size=16)
    db_ids = 1000 + 3 * np.arange(40)[::-1]
    r.add(source.images[:25], db_ids[:25])
    r.add(source.images[25:40], db_ids[25:])
    assert len(r) == 40
    np.testing.assert_array_equal(r.index.ids, db_ids)
    queries = source.images[[3, 100, 250]]
    ids, scores = r.search(queries, 7)
    assert ids.shape == scores.shape == (3, 7)

    # Oracle: OPQN's soft-quantized table from NumPy probabilities, dense float64 scores.
    lut = ref.lut_soft_quantized(_oracle_probs(embed(queries), assign), codebooks)
    dense = ref.adc_scores(lut, r.index.codes)  # [Q, N]
    exp_scores, _ = ref.topk(dense, 7)
    np.testing.assert_allclose(scores, exp_scores, rtol=1e-4, atol=1e-6)
    # Near-ties may be ordered either way in float32: check each hit's own oracle score.
    position = {int(i): p for p, i in enumerate(db_ids)}
    for q in range(3):
        assert len(set(ids[q].tolist())) == 7
        got = dense[q, [position[int(i)] for i in ids[q]]]
        np.testing.assert_allclose(got, scores[q], rtol=1e-4, atol=1e-6)
    # Automatic ids continue after the largest id so far.
    np.testing.assert_array_equal(r.add(source.images[40:42]), [1118, 1119])


def test_sharded_retriever_equals_single_device(restored, run, cpu_devices):
    _, source = run
    mesh = parallel.make_mesh(devices=cpu_devices)
    sharded = _retriever(restored, batch_size=16, mesh=mesh)
    single = _retriever(restored, batch_size=16)
    for r in (sharded, single):
        r.add(source.images[:37])
    np.testing.assert_array_equal(sharded.index.codes, single.index.codes)
    a_ids, a_scores = sharded.search(source.images[[5, 9]], 6)
    b_ids, b_scores = single.search(source.images[[5, 9]], 6)
    np.testing.assert_array_equal(a_ids, b_ids)
    np.testing.assert_allclose(a_scores, b_scores, rtol=1e-6)
    with pytest.raises(ValueError, match="not divisible"):
        _retriever(restored, batch_size=12, mesh=mesh)


def test_save_load_round_trip_and_rejections(restored, run, tmp_path):
    workdir, source = run
    r = _retriever(restored)
    r.add(source.images[:30], np.arange(30) * 2)
    path = r.save(tmp_path / "db.npz", extra={"note": "faces"})
    back = Retriever.load(path, workdir)
    assert back.extra == {"note": "faces"} and len(back) == 30
    assert back.query_side == r.query_side and back.checkpoint_step == r.checkpoint_step
    np.testing.assert_array_equal(back.index.codes, r.index.codes)
    np.testing.assert_array_equal(back.index.ids, r.index.ids)
    queries = source.images[[1, 2]]
    for a, b in zip(back.search(queries, 5), r.search(queries, 5), strict=True):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="unique"):
        back.add(source.images[:1], [4])  # 4 = 2 * 2 is already there

    with pytest.raises(ValueError, match="checkpoint step"):
        Retriever.load(path, workdir, step=r.checkpoint_step + 1)
    plain = r.index.save(tmp_path / "plain.npz")
    with pytest.raises(ValueError, match="not written by Retriever.save"):
        Retriever.load(plain, workdir)
    # Same provenance metadata, but codebooks of another model.
    extra = index.load_index_metadata(path)[1]["extra"]
    other = index.PQIndex(r.index.codebooks + 1.0, r.index.codes, method="opqn")
    other.save(tmp_path / "other.npz", extra=extra)
    with pytest.raises(ValueError, match="other codebooks"):
        Retriever.load(tmp_path / "other.npz", workdir)


def test_bad_input_gives_clear_errors(restored, run):
    _, source = run
    r = _retriever(restored)
    with pytest.raises(ValueError, match="empty"):
        r.search(source.images[:1], 1)
    with pytest.raises(ValueError, match=r"\[N, H, W, C\].*batch axis"):
        r.encode(source.images[0])
    with pytest.raises(ValueError, match="1-channel"):
        r.encode(np.repeat(source.images[:2], 3, axis=-1))
    with pytest.raises(ValueError, match="uint8"):
        r.encode(source.images[:2].astype(np.int32))
    with pytest.raises(ValueError, match="cannot take inputs"):
        r.encode(np.zeros((2, 20, 20, 1), np.float32), preprocessed=True)
    with pytest.raises(ValueError, match="No images"):
        r.encode([])
    r.add(source.images[:4])
    with pytest.raises(ValueError, match=r"k must be an int in \[1, 4\]"):
        r.search(source.images[:1], 5)
    with pytest.raises(ValueError, match="ids must be 2 integers"):
        r.add(source.images[:2], [1])
    with pytest.raises(ValueError, match="query sides"):
        _retriever(restored, query_side="x")


def test_cli_indexes_a_png_folder_and_writes_json_and_csv(restored, run, tmp_path, capsys):
    workdir, source = run
    folder = tmp_path / "faces"
    picks = [0, 1, 10, 11, 20]
    names = {}
    for i in picks:
        name = f"id{source.labels[i]}/{i}.png"
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(source.images[i, :, :, 0]).save(folder / name)
        names[name] = i
    out = tmp_path / "db.npz"
    assert (
        cli.main(["index", f"--workdir={workdir}", f"--database={folder}", f"--output={out}"]) == 0
    )

    query = tmp_path / "q.png"
    Image.fromarray(source.images[2, :, :, 0]).save(query)
    args = ["query", f"--workdir={workdir}", f"--index={out}", f"--queries={query}", "--k=3"]
    assert cli.main([*args, "--format=json", f"--output={tmp_path / 'r.json'}"]) == 0
    result = json.loads((tmp_path / "r.json").read_text())
    assert [row["query"] for row in result] == [query.as_posix()]
    hits = result[0]["results"]
    assert [h["rank"] for h in hits] == [1, 2, 3]

    # The same search through the API: the CLI indexes files in sorted path order.
    ordered = sorted(names)
    r = _retriever(restored)
    r.add(source.images[[names[n] for n in ordered]])
    ids, scores = r.search(source.images[2:3], 3)
    assert [h["id"] for h in hits] == ids[0].tolist()
    assert [h["name"] for h in hits] == [ordered[i] for i in ids[0]]
    assert [h["label"] for h in hits] == [ordered[i].split("/")[0] for i in ids[0]]
    np.testing.assert_allclose([h["score"] for h in hits], scores[0], rtol=1e-6)

    capsys.readouterr()
    assert cli.main([*args, "--format=csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [int(row["id"]) for row in rows] == ids[0].tolist()

    assert cli.main([*args[:4], f"--queries={tmp_path / 'missing'}"]) == 1
    assert "is not an image file" in capsys.readouterr().err


def test_cli_reads_protocol_splits_and_tfds_sources(restored, run):
    workdir, source = run
    r = _retriever(restored)
    items = cli.load_items("dataset:orl_faces:query", r, workdir=workdir)
    splits = protocols.get_splits("orl_seen", source.labels, 0)  # the run's protocol and seed
    np.testing.assert_array_equal(items.ids, splits.query)
    assert items.names[0] == f"orl_faces[{splits.query[0]}]"
    assert items.labels[:3] == [str(source.labels[i]) for i in splits.query[:3]]
    (images, ids), *_ = items.chunks()
    np.testing.assert_array_equal(images[0], source.images[splits.query[0]])

    data_dir = r.config.input.data_dir
    tf_items = cli.load_items("tfds:dpq_orl_faces/orl:train", r, workdir=workdir, data_dir=data_dir)
    assert len(tf_items) == len(source)
    first = tf_items.images(0, 1)[0]
    assert first.shape == source.images.shape[1:] and first.dtype == np.uint8
    with pytest.raises(ValueError, match="Unknown split"):
        cli.load_items("dataset:orl_faces:nope", r, workdir=workdir)


# ---------------------------------------------------------------------------------------------
# Reliability: damaged checkpoints, index binding, pixel checks, output paths, one-line errors.
# ---------------------------------------------------------------------------------------------


def _copy_workdir(run, tmp_path, name="copy") -> str:
    target = tmp_path / name
    shutil.copytree(run[0], target)
    return str(target)


def _data_files(workdir, step=2, *, values_only=False) -> list[str]:
    """The array data files orbax wrote for a step (`values_only`: chunk files, no index)."""
    files = []
    for root, _, names in os.walk(os.path.join(workdir, "checkpoints", str(step), "state")):
        in_data = os.path.basename(root) == "d"
        if in_data and (not values_only or ".process_" in os.path.basename(os.path.dirname(root))):
            files += [os.path.join(root, name) for name in names]
    assert files, "no orbax data files found: has orbax's layout changed?"
    return files


def _flip_bytes(path, count=8, spots=16):
    """Flips `count` bytes at `spots` places spread over the middle of the file: orbax's async
    writers do not fix which array lands where, so one place may miss the parameters."""
    data = bytearray(open(path, "rb").read())
    for spot in range(spots):
        start = len(data) // 10 + spot * (len(data) * 8 // 10) // spots
        for i in range(start, min(start + count, len(data))):
            data[i] ^= 0xFF
    with open(path, "wb") as f:
        f.write(bytes(data))


def _cli_error(capsys, argv) -> str:
    """Runs dpq-search expecting a known error: exit status 1 and exactly one stderr line."""
    capsys.readouterr()
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("dpq-search: error: ") and err.count("\n") == 1, err
    return err


def test_damaged_checkpoint_is_refused_by_inference_and_dpq_search(
    restored, run, tmp_path, capsys, monkeypatch
):
    workdir = _copy_workdir(run, tmp_path)
    for path in _data_files(workdir, values_only=True):
        _flip_bytes(path)
    # Without the digest check, the damaged weights load without a word.
    with monkeypatch.context() as patch:
        patch.setattr(checkpointing.Checkpointer, "_verify", lambda *args: None)
        _, _, silent, _ = inference.restore_model(workdir, 2)
    assert inference.model_digest(silent) != inference.model_digest(restored[2])

    with pytest.raises(checkpointing.DamagedCheckpointError, match=r"step 2 .* is damaged"):
        inference.restore_model(workdir)
    with pytest.raises(checkpointing.DamagedCheckpointError, match="retrain"):
        Retriever.from_workdir(workdir)
    out = tmp_path / "db.npz"
    db = "--database=dataset:orl_faces:database"
    err = _cli_error(capsys, ["index", f"--workdir={workdir}", db, f"--output={out}"])
    assert "Checkpoint step 2" in err and "is damaged" in err
    assert not out.exists()


def test_unreadable_checkpoint_is_one_line_without_orbax_noise(run, tmp_path):
    workdir = _copy_workdir(run, tmp_path)
    for path in _data_files(workdir):
        _flip_bytes(path, count=64)
    out = tmp_path / "db.npz"
    proc = subprocess.run(
        [sys.executable, "-m", "dpq_jax.search.cli", "index", f"--workdir={workdir}",
         "--database=dataset:orl_faces:database", f"--output={out}"],
        capture_output=True, text=True, timeout=600, env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )  # fmt: skip
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 1 and len(lines) == 1, proc.stderr[-3000:]
    assert lines[0].startswith("dpq-search: error: Cannot read checkpoint step 2")
    assert "--workdir" in lines[0] or "retrain" in lines[0]


def _rewrite_step_with_other_backbone(workdir, step=2):
    """The same config, signature, step and codebooks, but other backbone weights (as another
    run of the same config would give); the step's digest is valid for its new values."""
    config = inference.load_workdir_config(workdir)
    directory = os.path.join(workdir, "checkpoints")
    ckpt = checkpointing.Checkpointer(directory, save_interval_steps=1)
    signature = ckpt.restore_meta(step)["signature"]
    model = inference.build_model(
        config, num_classes=signature["num_classes"], in_channels=signature["in_channels"]
    )
    optimizer, _ = optim.make_nnx_optimizer(model, config.optim, int(config.total_steps))
    graphdef, state = nnx.split((model, optimizer))
    state, meta = ckpt.restore(checkpointing.abstract_like(state), step=step)
    ckpt.close()
    model, optimizer = nnx.merge(graphdef, state)
    params = nnx.state(model.backbone, nnx.Param)
    nnx.update(model.backbone, jax.tree.map(lambda x: x * 1.05 + 0.01, params))
    shutil.rmtree(os.path.join(directory, str(step)))
    ckpt = checkpointing.Checkpointer(directory, save_interval_steps=1)
    ckpt.save(step, nnx.state((model, optimizer)), meta, force=True)
    ckpt.close()
    return model


def test_index_is_bound_to_the_exact_checkpoint(restored, run, tmp_path, capsys):
    workdir, source = run
    r = Retriever.from_workdir(workdir)
    r.add(source.images[:20])
    path = r.save(tmp_path / "db.npz")
    other = _copy_workdir(run, tmp_path, "same_config_other_weights")
    model = _rewrite_step_with_other_backbone(other)
    # What the older checks compare is unchanged: signature, step and codebooks.
    np.testing.assert_array_equal(model.head.codebooks[...], restored[2].head.codebooks[...])
    with pytest.raises(ValueError, match="other model parameters .*same config and step"):
        Retriever.load(path, other)
    assert len(Retriever.load(path, workdir)) == 20  # the workdir that built it
    queries = "--queries=dataset:orl_faces:query"
    err = _cli_error(capsys, ["query", f"--workdir={other}", f"--index={path}", queries])
    assert "other model parameters" in err and workdir in err  # names the workdir that built it


def test_index_from_a_workdir_without_its_step(run, tmp_path, capsys):
    workdir, source = run
    r = Retriever.from_workdir(workdir)
    r.add(source.images[:5])
    path = r.save(tmp_path / "db.npz")
    other = _copy_workdir(run, tmp_path, "other_run")
    os.rename(os.path.join(other, "checkpoints", "2"), os.path.join(other, "checkpoints", "7"))
    with pytest.raises(ValueError, match=r"has no step 2 \(its steps: \[7\]\).*another model"):
        Retriever.load(path, other)
    queries = "--queries=dataset:orl_faces:query"
    err = _cli_error(capsys, ["query", f"--workdir={other}", f"--index={path}", queries])
    assert "has no step 2" in err


def test_non_finite_and_out_of_range_pixels_are_refused(restored, run):
    _, source = run
    r = _retriever(restored)
    images = source.images[:3]
    nan = images.astype(np.float32)
    nan[1, 4, 5, 0] = np.nan
    with pytest.raises(ValueError, match="Image 1 of the batch has NaN or infinite"):
        r.encode(nan)
    with pytest.raises(ValueError, match="NaN or infinite"):
        r.add(list(nan))
    r.add(images)
    inf = images.astype(np.float32)
    inf[0, 0, 0, 0] = np.inf
    with pytest.raises(ValueError, match="NaN or infinite"):
        r.search(inf, 1)
    with pytest.raises(ValueError, match="NaN or infinite"):
        r.encode(np.full((1, 32, 32, 1), np.nan, np.float32), preprocessed=True)
    with pytest.raises(ValueError, match=r"like \[0, 1\] intensities.*multiply them by 255"):
        r.encode(images.astype(np.float32) / 255.0)
    bright = images.astype(np.float32) * 4.0
    found = rf"values in \[{bright.min():g}, {bright.max():g}\]"
    with pytest.raises(ValueError, match=found + r".*expects pixel values in \[0, 255\]"):
        r.encode(bright)
    with pytest.raises(ValueError, match="16-bit images: divide by 257"):
        r.encode(images.astype(np.uint16) * 257)
    assert len(r) == 3  # the refused calls added nothing
    # Float pixel values in [0, 255] are accepted (resized as floats, so codes may differ).
    assert r.encode(images.astype(np.float32)).shape == (3, M)


def test_expected_pixel_range_follows_the_value_range_op():
    from dpq_jax.search.retriever import expected_pixel_range

    assert expected_pixel_range("resize(8,8)|value_range(-1,1)") == (0.0, 255.0)
    assert expected_pixel_range("value_range(0,1,0,1)") == (0.0, 1.0)
    assert expected_pixel_range("value_range(0,1,in_hi=4095)") == (0.0, 4095.0)
    assert expected_pixel_range("normalize((0.5,),(0.5,))|value_range(0,1,0,1)") == (0, 255)


def test_cli_refuses_16_bit_pngs(run, tmp_path, capsys):
    workdir, source = run
    face = tmp_path / "face16.png"
    Image.fromarray(source.images[0, :, :, 0].astype(np.uint16) * 257).save(face)
    # What reading it as 8 bits would give: nearly all white.
    from dpq_jax.data import image_io

    assert (image_io.read_image(face, 1) == 255).mean() > 0.9
    db = "--database=dataset:orl_faces:database"
    err = _cli_error(capsys, ["query", f"--workdir={workdir}", db, f"--queries={face}"])
    assert "more than 8 bits" in err and "divide by 257" in err


def test_cli_refuses_outputs_that_are_inputs_folders_or_run_files(run, tmp_path, capsys):
    workdir, source = run
    r = Retriever.from_workdir(workdir)
    r.add(source.images[:5])
    index_path = r.save(tmp_path / "db.npz")
    saved = index_path.read_bytes()
    query = tmp_path / "q.png"
    Image.fromarray(source.images[2, :, :, 0]).save(query)
    query_bytes = query.read_bytes()
    (tmp_path / "link.npz").symlink_to(index_path)
    base = ["query", f"--workdir={workdir}", f"--index={index_path}", f"--queries={query}"]
    for output, problem in [
        (index_path, "is also the input --index"),
        (tmp_path / "link.npz", "is also the input --index"),
        (query, "is also the input --queries"),
        (tmp_path, "is a folder"),
        (tmp_path / "missing" / "r.json", "does not exist; create it first"),
        (os.path.join(workdir, "config.json"), "training run's own file config.json"),
        (os.path.join(workdir, "checkpoints", "x"), "training run's own file checkpoints/x"),
    ]:
        assert problem in _cli_error(capsys, [*base, f"--output={output}"])
    assert index_path.read_bytes() == saved and query.read_bytes() == query_bytes
    folder = tmp_path / "faces"
    folder.mkdir()
    Image.fromarray(source.images[1, :, :, 0]).save(folder / "a.png")
    index_args = ["index", f"--workdir={workdir}", f"--database={folder}"]
    assert "is a folder" in _cli_error(capsys, [*index_args, f"--output={folder}"])
    single = ["index", f"--workdir={workdir}", f"--database={folder / 'a.png'}"]
    assert "input --database" in _cli_error(capsys, [*single, f"--output={folder / 'a.png'}"])


def test_cli_output_is_written_atomically(run, tmp_path, capsys, monkeypatch):
    workdir, source = run
    query = tmp_path / "q.png"
    Image.fromarray(source.images[2, :, :, 0]).save(query)
    out = tmp_path / "top.csv"
    out.write_text("previous results\n")
    argv = ["query", f"--workdir={workdir}", "--database=dataset:orl_faces:database",
            f"--queries={query}", "--k=2", "--format=csv", f"--output={out}"]  # fmt: skip

    def crash(fd):
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(io_utils.os, "fsync", crash)  # the disk fills up while writing
        with pytest.raises(OSError, match="No space left"):
            cli.main(argv)
    assert out.read_text() == "previous results\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q.png", "top.csv"]  # no temp file
    assert cli.main(argv) == 0
    assert out.read_text().startswith("query,rank,id,score,name,label")


def test_cli_known_problems_are_one_line_unexpected_ones_keep_the_traceback(
    run, tmp_path, capsys, monkeypatch
):
    workdir, _ = run
    out = f"--output={tmp_path / 'db.npz'}"
    err = _cli_error(capsys, ["index", f"--workdir={workdir}", "--database=dataset:bogus", out])
    assert "Unknown dataset 'bogus'" in err and "orl_faces" in err
    fresh = tmp_path / "fresh"  # a run that has not saved a checkpoint yet
    fresh.mkdir()
    shutil.copy(os.path.join(workdir, "config.json"), fresh / "config.json")
    db = "--database=dataset:orl_faces:database"
    err = _cli_error(capsys, ["index", f"--workdir={fresh}", db, out])
    assert "No checkpoint found" in err and "Train first" in err
    assert not (fresh / "checkpoints").exists()  # inference creates nothing in a workdir
    err = _cli_error(capsys, ["index", f"--workdir={tmp_path / 'nowhere'}", db, out])
    assert "not a dpq_jax training workdir" in err
    err = _cli_error(capsys, ["index", f"--workdir={workdir}", "--step=9", db, out])
    assert "No checkpoint step 9" in err and "[2]" in err

    def boom(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(Retriever, "from_workdir", boom)
    with pytest.raises(RuntimeError, match="a bug"):
        cli.main(["index", f"--workdir={workdir}", db, out])
