"""Tests for Progressive OPQN (dpq_jax.methods.opqn_progressive): build, loss against the NumPy
twins, OPQN at one level, encode-once prefix codes and search, one vs eight devices."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import nnx

from dpq_jax import parallel, registry
from dpq_jax.losses import opqn_progressive_reference as loss_ref
from dpq_jax.methods import opqn
from dpq_jax.methods import opqn_progressive as method
from dpq_jax.quantizers import opqn_progressive_reference as ref
from dpq_jax.quantizers import reference as opqn_ref

pytestmark = pytest.mark.usefixtures("fast_compile")

NUM_CLASSES, LEVELS, M, K, D = 5, 3, 2, 4, 8
METHOD = method.METHOD
LOSS_CFG = ml_collections.ConfigDict(dict(scale=20.0, margin=0.5, entropy_weight=0.1))


def _model_cfg(levels=LEVELS, **overrides):
    cfg = ml_collections.ConfigDict(
        dict(
            backbone=dict(name="cnn_small", widths=(4,)),
            embedding_dim=D,
            quantizer=dict(
                num_levels=levels,
                num_codebooks=M,
                codebook_size=K,
                codebook_init="dct",
                seed=0,
                gain_decay=0.5,
                learn_gains=True,
            ),
            dtype="float32",
        )
    )
    cfg.update(overrides)
    return cfg


def _batch(n=16, seed=0):
    rng = np.random.default_rng(seed)
    return dict(
        image=rng.standard_normal((n, 8, 8, 1)).astype(np.float32),
        label=rng.integers(0, NUM_CLASSES, n).astype(np.int32),
    )


def _build(levels=LEVELS, **overrides):
    return METHOD.build(
        _model_cfg(levels, **overrides), num_classes=NUM_CLASSES, in_channels=1, rngs=nnx.Rngs(0)
    )


def _head_params(model):
    head = model.head
    return (
        np.asarray(head.assign[...]),
        np.asarray(head.codebooks[...]),
        np.asarray(head.gains()),
    )


# --- sizes and construction -----------------------------------------------------------------


def test_registry_and_code_lengths_are_the_prefixes():
    assert registry.get("method", "opqn_progressive") is METHOD
    assert METHOD.code_type == "pq" and METHOD.default_query_side == "soft_quantized"
    assert METHOD.code_lengths(_model_cfg()) == (4, 8, 12)  # M log2 K = 4 bits per level
    fmnist = dict(quantizer=dict(num_levels=4, num_codebooks=1, codebook_size=256))
    assert METHOD.code_lengths(fmnist) == (8, 16, 24, 32)
    with pytest.raises(ValueError, match=r"\[2, 256\]"):
        METHOD.code_lengths(dict(quantizer=dict(num_levels=2, num_codebooks=1, codebook_size=512)))
    with pytest.raises(ValueError, match="num_levels"):
        METHOD.code_lengths(dict(quantizer=dict(num_levels=0, num_codebooks=1, codebook_size=4)))


def test_build_shapes_and_errors():
    model = _build()
    assert model.head.assign[...].shape == (LEVELS, M, D // M, K)
    assert model.head.codebooks[...].shape == (LEVELS, M, K, D // M)
    assert model.classifier[...].shape == (M, NUM_CLASSES, D // M)
    assert isinstance(model.head.log_gains, nnx.Param)
    # OPQN's reference classifier init: torch's Xavier fans on [M, C, d], a^2 = 6/(C d + M d).
    bound = np.sqrt(6 / (NUM_CLASSES * (D // M) + D))
    assert 0.7 * bound < np.abs(np.asarray(model.classifier[...])).max() <= bound
    fixed = _build(
        quantizer=dict(num_levels=2, num_codebooks=M, codebook_size=K, learn_gains=False)
    )
    assert "log_gains" not in nnx.state(fixed, nnx.Param)["head"]
    with pytest.raises(ValueError, match="K <= subspace dim"):
        _build(quantizer=dict(num_levels=2, num_codebooks=M, codebook_size=8))
    with pytest.raises(ValueError, match="sets itself"):
        _build(backbone=dict(name="cnn_small", features=3))
    with pytest.raises(ValueError, match="model.dtype"):
        _build(dtype="float16")


# --- loss -----------------------------------------------------------------------------------


def test_loss_matches_the_numpy_twins():
    model = _build()
    model.train()
    batch = {k: jnp.asarray(v) for k, v in _batch(8).items()}
    loss, aux = jax.jit(lambda m, b: METHOD.loss_fn(m, b, LOSS_CFG))(model, batch)
    # Oracles from the backbone features (train-mode BatchNorm depends only on the batch).
    feats = np.asarray(model.backbone(batch["image"]), np.float64)
    q = ref.progressive_ortho_quantize(feats, *_head_params(model))
    labels = np.asarray(batch["label"])
    want = loss_ref.prefix_margin_loss(
        opqn_ref.split_subvectors(feats, M),
        q["soft"].reshape(8, LEVELS, M, D // M),
        q["probs"],
        np.asarray(model.classifier[...]),
        labels,
        scale=20.0,
        margin=0.5,
        entropy_weight=0.1,
    )
    np.testing.assert_allclose(float(loss), want["total"], rtol=1e-4)
    np.testing.assert_allclose(float(aux["loss_clf_raw"]), want["raw"], rtol=1e-4)
    np.testing.assert_allclose(float(aux["loss_entropy"]), want["entropy"], rtol=1e-4)
    np.testing.assert_allclose(
        float(aux["loss_clf_quantized"]), np.mean(want["prefixes"]), rtol=1e-4
    )
    for level in range(LEVELS):
        np.testing.assert_allclose(
            float(aux[f"loss_clf_{level + 1}level"]), want["prefixes"][level], rtol=1e-4
        )
        np.testing.assert_allclose(float(aux[f"gain_{level + 1}level"]), 0.5**level, rtol=1e-6)
    usage = np.mean(
        [len(set(q["codes"][:, i, m].tolist())) / K for i in range(LEVELS) for m in range(M)]
    )
    np.testing.assert_allclose(float(aux["code_usage"]), usage, rtol=1e-6)


def test_one_level_model_is_opqn():
    """L = 1 with OPQN's parameters: the same loss, codes and (up to alpha_1^2) lookup table."""
    ours = _build(levels=1)
    theirs = opqn.METHOD.build(
        ml_collections.ConfigDict(
            dict(
                backbone=dict(name="cnn_small", widths=(4,)),
                embedding_dim=D,
                head=dict(num_codebooks=M, codebook_size=K, codebook_init="dct", seed=0),
                dtype="float32",
            )
        ),
        num_classes=NUM_CLASSES,
        in_channels=1,
        rngs=nnx.Rngs(1),
    )
    nnx.update(ours.backbone, nnx.state(theirs.backbone))
    ours.classifier[...] = theirs.classifier[...]
    ours.head.assign[...] = theirs.head.assign[...][None]
    ours.head.log_gains[...] = jnp.log(jnp.array([0.7]))
    np.testing.assert_array_equal(
        np.asarray(ours.head.codebooks[...][0]), np.asarray(theirs.head.codebooks[...])
    )
    batch = {k: jnp.asarray(v) for k, v in _batch(8).items()}
    for model in (ours, theirs):
        model.train()
    loss_ours, _ = METHOD.loss_fn(ours, batch, LOSS_CFG)
    loss_theirs, _ = opqn.METHOD.loss_fn(theirs, batch, LOSS_CFG)
    np.testing.assert_allclose(float(loss_ours), float(loss_theirs), rtol=1e-5)
    for model in (ours, theirs):
        model.eval()
    images = jnp.asarray(_batch(16, 1)["image"])
    database = METHOD.database_codes(jax.device_get(METHOD.encode_fn(ours, images)), 0)
    np.testing.assert_array_equal(
        database, np.asarray(opqn.METHOD.encode_fn(theirs, images)["codes"][0])
    )
    queries = jax.device_get(METHOD.query_fn(ours, images[:4]))
    (params,) = jax.device_get(METHOD.code_params(ours))
    lut = np.asarray(
        METHOD.query_tables(queries, head=0, codebooks=params, query_side="soft_quantized")
    )
    opqn_probs = np.asarray(opqn.METHOD.query_fn(theirs, images[:4])["probs"][0])  # [Q, M, K]
    np.testing.assert_allclose(lut, 0.49 * opqn_probs, rtol=1e-4, atol=1e-6)


def test_loss_rejects_bad_labels_eagerly():
    model = _build()
    batch = _batch(4)
    batch["label"][0] = NUM_CLASSES
    with pytest.raises(ValueError, match=r"\[0, 5\)"):
        METHOD.loss_fn(model, {k: jnp.asarray(v) for k, v in batch.items()}, LOSS_CFG)
    with pytest.raises(ValueError, match="entropy_weight"):
        METHOD.loss_fn(model, _batch(4), dict(scale=20.0, margin=0.5))


# --- training -------------------------------------------------------------------------------


def test_step_trains_assignments_and_gains_but_not_codewords(method_checks):
    model = _build()
    model.train()
    books, gains = np.asarray(model.head.codebooks[...]), np.asarray(model.head.gains())
    assign = np.asarray(model.head.assign[...])
    graphdef, state = nnx.split((model, nnx.Optimizer(model, optax.sgd(0.1), wrt=nnx.Param)))
    state, loss = method_checks.train_step(METHOD, LOSS_CFG)(graphdef, state, _batch())[:2]
    assert np.isfinite(float(loss))
    trained, _ = nnx.merge(graphdef, state)
    np.testing.assert_array_equal(np.asarray(trained.head.codebooks[...]), books)
    assert not np.array_equal(np.asarray(trained.head.assign[...]), assign)
    assert not np.array_equal(np.asarray(trained.head.gains()), gains)


def test_one_vs_eight_devices(cpu_devices, method_checks):
    model = _build()
    model.train()
    graphdef, state = nnx.split((model, nnx.Optimizer(model, optax.sgd(0.1), wrt=nnx.Param)))
    step = method_checks.train_step(METHOD, LOSS_CFG)
    method_checks.check_one_vs_eight_devices(step, graphdef, state, _batch(), cpu_devices)


# --- encoding and prefix search -------------------------------------------------------------


def _encoded(model=None):
    model = model or _build()
    model.eval()
    images = jnp.asarray(_batch(16, seed=1)["image"])
    database = jax.device_get(jax.jit(METHOD.encode_fn)(model, images))
    queries = jax.device_get(jax.jit(METHOD.query_fn)(model, jnp.asarray(_batch(4, 2)["image"])))
    return model, database, queries


def test_encode_once_and_every_prefix_is_a_head(cpu_devices, method_checks):
    model, database, queries = _encoded()
    (codes,) = database["codes"]
    assert codes.dtype == np.uint8 and codes.shape == (16, LEVELS, M)
    params = _head_params(model)
    want = ref.progressive_ortho_quantize(database["feats"], *params)
    np.testing.assert_array_equal(codes, want["codes"])
    query_want = ref.progressive_ortho_quantize(queries["feats"], *params, scale_by_norm=False)
    for name in ("target", "soft"):
        np.testing.assert_allclose(queries[name], query_want[name], rtol=1e-5, atol=1e-6)
    books = jax.device_get(METHOD.code_params(model))
    assert [b.shape for b in books] == [(level * M, K, D) for level in range(1, LEVELS + 1)]
    lengths = METHOD.code_lengths(_model_cfg())
    method_checks.check_prefix_heads(METHOD, database, codes, books, lengths, "soft_quantized")
    mesh = parallel.make_mesh(devices=cpu_devices)
    with jax.set_mesh(mesh):
        images = parallel.put_batch(dict(image=_batch(16, seed=1)["image"]), mesh)["image"]
        codes8 = jax.jit(METHOD.encode_fn)(jax.device_put(model, parallel.replicated(mesh)), images)
    np.testing.assert_array_equal(np.asarray(codes8["codes"][0]), codes)


def test_prefix_codes_equal_a_model_with_only_the_first_levels():
    model, database, _ = _encoded()
    for levels in range(1, LEVELS):  # L itself is the model
        short = _build(levels=levels)
        nnx.update(short.backbone, nnx.state(model.backbone))
        short.classifier[...] = model.classifier[...]
        short.head.assign[...] = model.head.assign[...][:levels]
        short.head.log_gains[...] = model.head.log_gains[...][:levels]
        _, short_db, _ = _encoded(short)
        np.testing.assert_array_equal(
            METHOD.database_codes(short_db, levels - 1),
            METHOD.database_codes(database, levels - 1),
        )


@pytest.mark.parametrize("query_side", ["soft_quantized", "raw"])
def test_prefix_scores_equal_brute_force_of_the_first_levels(query_side, method_checks):
    model, database, queries = _encoded()
    assign, books, gains = _head_params(model)
    params = jax.device_get(METHOD.code_params(model))
    codes = database["codes"][0]
    for head in range(LEVELS):
        levels = head + 1
        vectors = METHOD.query_vectors(
            queries, head=head, codebooks=params[head], query_side=query_side
        )
        want_vectors = queries["target"] if query_side == "raw" else queries["soft"][:, head]
        np.testing.assert_array_equal(vectors, np.asarray(want_vectors, np.float32))
        brute = np.asarray(vectors, np.float64) @ ref.reconstruct(codes[:, :levels], books, gains).T
        luts = method_checks.check_prefix_search(
            METHOD, queries, database, params, head, query_side, brute
        )
        assert luts.shape == (4, levels * M, K)
    with pytest.raises(ValueError, match="query_side"):
        METHOD.query_tables(queries, head=0, codebooks=params[0], query_side="l2")


# --- config groups ---------------------------------------------------------------------------
def test_model_config():
    model = method.model_config({"name": "cnn_small"}, levels=4, num_codebooks=1, codebook_size=256)
    # D = M·K; L = 4 levels of one 8-bit book: prefixes of 8, 16, 24 and 32 bits.
    assert model.embedding_dim == 256 and METHOD.code_lengths(model) == (8, 16, 24, 32)
    assert (model.quantizer.codebook_init, model.quantizer.gain_decay) == ("dct", 0.5)
    assert model.quantizer.learn_gains and model.quantizer.seed == 0
    tiny = method.model_config(
        {"name": "cnn_small"}, levels=2, num_codebooks=2, codebook_size=256, runlocal=True
    )
    # runlocal: K = 16 (4-bit books), D = M·K follows.
    assert (tiny.quantizer.codebook_size, tiny.embedding_dim) == (16, 32)
    assert METHOD.code_lengths(tiny) == (8, 16)
