"""End-to-end tests of dpq_jax.search.retriever and the dpq-search CLI on one tiny trained run.

One module-scoped training run (ORL faces, `configs/orl_opqn.py:runlocal` shrunk to M=2, K=16,
D=32 and 2 steps) feeds every test. Oracles: NumPy re-computations of the OPQN codes and tables
from the model's embeddings, and the brute-force search of `search/reference.py`.
"""

import csv
import io
import json
import os

import jax
import ml_collections
import numpy as np
import pytest
from PIL import Image

from dpq_jax import config_lib, inference, parallel, train
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
