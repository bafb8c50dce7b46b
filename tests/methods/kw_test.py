"""Tests for DPQ-KW (dpq_jax.methods.kw): build, loss and its gradients against the NumPy twins,
the working straight-through path, learned codebooks, 1 vs 8 devices, encoders, ADC search
against brute force, the FAISS export and the configs."""

import os
import types

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import nnx

from dpq_jax import config_lib, parallel, registry
from dpq_jax.losses import kw_reference as loss_ref
from dpq_jax.methods import kw as method
from dpq_jax.quantizers import kw_reference as ref

pytestmark = pytest.mark.usefixtures("fast_compile")

CONFIGS = os.path.join(os.path.dirname(__file__), "..", "..", "configs")
M, K, D = 2, 4, 8
NUM_CLASSES = 5
LOSS_CFG = ml_collections.ConfigDict(
    dict(central_weight=0.25, diversity_weight=1.0, sharpness_weight=0.01)
)


def _model_cfg(**head):
    cfg = ml_collections.ConfigDict(
        dict(
            backbone=dict(name="cnn_small", widths=(4,)),
            embedding_dim=D,
            head=dict(
                num_codebooks=M,
                codebook_size=K,
                temperature=1.0,
                init="xavier_uniform",  # unsaturated softmax: every gradient is visible
                straight_through=True,
            ),
            dtype="float32",
        )
    )
    cfg.head.update(head)
    return cfg


def _build(**head):
    model = method.METHOD.build(
        _model_cfg(**head), num_classes=NUM_CLASSES, in_channels=1, rngs=nnx.Rngs(0)
    )
    model.train()
    return model


def _batch(n=16, seed=0):
    rng = np.random.default_rng(seed)
    return dict(
        image=rng.standard_normal((n, 8, 8, 1)).astype(np.float32),
        label=rng.integers(0, NUM_CLASSES, n).astype(np.int32),
    )


def _np(x):
    return np.asarray(x, np.float64)


def _twin_loss(feats, assign, books, weights, centers, labels, frozen=None):
    layer = ref.kw_layer(feats, assign, books, 1.0, frozen)
    return loss_ref.kw_loss(
        layer["soft"], layer["hard"], layer["probs"], labels, weights, centers, **LOSS_CFG
    )


def _finite_difference(fn, x, eps=1e-5):
    grad = np.zeros(x.shape)
    for idx in np.ndindex(x.shape):
        up, down = _np(x).copy(), _np(x).copy()
        up[idx] += eps
        down[idx] -= eps
        grad[idx] = (fn(up) - fn(down)) / (2 * eps)
    return grad


# --- method ------------------------------------------------------------------------------------


def test_method_and_registry():
    assert registry.get("method", "kw") is method.METHOD
    assert method.METHOD.name == "kw" and method.METHOD.code_type == "pq"
    assert method.METHOD.default_query_side == "l2"
    assert method.METHOD.metric("l2") == "l2" and method.METHOD.metric("soft_quantized") == "ip"


def test_build_from_configdict_dict_and_namespace():
    for cfg in (
        _model_cfg(),
        _model_cfg().to_dict(),
        types.SimpleNamespace(
            backbone=dict(name="cnn_small", widths=(4,)),
            embedding_dim=D,
            head=types.SimpleNamespace(num_codebooks=M, codebook_size=K),
        ),
    ):
        model = method.METHOD.build(cfg, num_classes=NUM_CLASSES, in_channels=1, rngs=nnx.Rngs(0))
        assert model.classifier[...].shape == model.centers[...].shape == (NUM_CLASSES, D)
        assert model.head.assign[...].shape == (M, D // M, K)
        assert method.METHOD.codebooks_fn(model)[0].shape == (M, K, D // M)
        assert method.METHOD.code_lengths(cfg) == (M * 2,)
    defaults = method.METHOD.build(
        types.SimpleNamespace(
            backbone=dict(name="cnn_small", widths=(4,)),
            embedding_dim=D,
            head=dict(num_codebooks=M, codebook_size=K),
        ),
        num_classes=3,
        in_channels=1,
        rngs=nnx.Rngs(0),
    )
    assert defaults.head.temperature == 1.0 and defaults.head.use_straight_through
    with pytest.raises(ValueError, match="embedding_dim"):
        method.METHOD.build(
            dict(backbone=dict(name="cnn_small"), head=dict(num_codebooks=M, codebook_size=K)),
            num_classes=3,
            in_channels=1,
            rngs=nnx.Rngs(0),
        )
    with pytest.raises(ValueError, match="sets itself"):
        cfg = _model_cfg()
        cfg.backbone.features = 8
        method.METHOD.build(cfg, num_classes=3, in_channels=1, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="dtype"):
        cfg = _model_cfg()
        cfg.dtype = "float16"
        method.METHOD.build(cfg, num_classes=3, in_channels=1, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="init"):
        method.METHOD.build(_model_cfg(init="ones"), num_classes=3, in_channels=1, rngs=nnx.Rngs(0))


def test_loss_matches_the_numpy_twins():
    model = _build()
    batch = {k: jnp.asarray(v) for k, v in _batch(8).items()}
    loss, aux = jax.jit(lambda m, b: method.METHOD.loss_fn(m, b, LOSS_CFG))(model, batch)
    assert set(aux) == {
        "loss_clf_soft",
        "loss_clf_hard",
        "loss_central",
        "gini_diversity",
        "gini_sharpness",
        "code_usage",
    }
    # Oracle from the backbone features (train-mode BN depends only on the batch).
    feats = _np(model.backbone(batch["image"]))
    layer = ref.kw_layer(feats, _np(model.head.assign[...]), _np(model.head.codebooks[...]))
    labels = np.asarray(batch["label"])
    weights, centers = _np(model.classifier[...]), _np(model.centers[...])
    ce_soft, ce_hard = loss_ref.shared_classifier_losses(
        layer["soft"], layer["hard"], weights, labels
    )
    np.testing.assert_allclose(float(aux["loss_clf_soft"]), ce_soft, rtol=1e-4)
    np.testing.assert_allclose(float(aux["loss_clf_hard"]), ce_hard, rtol=1e-4)
    np.testing.assert_allclose(
        float(aux["loss_central"]),
        loss_ref.joint_central_loss(layer["soft"], layer["hard"], labels, centers),
        rtol=1e-4,
    )
    np.testing.assert_allclose(
        float(aux["gini_diversity"]), loss_ref.gini_batch_diversity(layer["probs"]), rtol=1e-4
    )
    np.testing.assert_allclose(
        float(aux["gini_sharpness"]), loss_ref.gini_sharpness(layer["probs"]), rtol=1e-4
    )
    usage = np.mean([len(set(layer["codes"][:, m].tolist())) / K for m in range(M)])
    np.testing.assert_allclose(float(aux["code_usage"]), usage)
    np.testing.assert_allclose(
        float(loss),
        loss_ref.kw_loss(
            layer["soft"], layer["hard"], layer["probs"], labels, weights, centers, **LOSS_CFG
        ),
        rtol=1e-4,
    )


def _param_grads(model, batch):
    return nnx.grad(lambda m: method.METHOD.loss_fn(m, batch, LOSS_CFG)[0])(model)


def test_head_gradients_match_finite_differences_of_the_twin():
    """The method's gradients for A, the codebooks, the classifier and the centres equal float64
    finite differences of the twin's loss (straight-through surrogate frozen at the point)."""
    model = _build()
    batch = {k: jnp.asarray(v) for k, v in _batch(8, seed=3).items()}
    grads = _param_grads(model, batch)
    feats = _np(model.backbone(batch["image"]))
    labels = np.asarray(batch["label"])
    params = dict(
        assign=_np(model.head.assign[...]),
        books=_np(model.head.codebooks[...]),
        weights=_np(model.classifier[...]),
        centers=_np(model.centers[...]),
    )
    base = ref.kw_layer(feats, params["assign"], params["books"])
    frozen = (base["onehot"], base["probs"])
    got = dict(
        assign=grads.head.assign[...],
        books=grads.head.codebooks[...],
        weights=grads.classifier[...],
        centers=grads.centers[...],
    )
    for name, value in params.items():

        def loss_of(x, name=name):
            p = dict(params, **{name: x})
            return _twin_loss(
                feats, p["assign"], p["books"], p["weights"], p["centers"], labels, frozen
            )

        want = _finite_difference(loss_of, value)
        assert np.abs(want).max() > 1e-4, name
        np.testing.assert_allclose(np.asarray(got[name]), want, rtol=2e-3, atol=2e-5, err_msg=name)


def test_straight_through_reaches_the_assignment_and_the_backbone():
    """The two hard paths give the same loss; only ours sends the hard path's gradient to A
    and the backbone (the reference's gives them the soft path's alone), while the classifier,
    centres and codebooks, which do not see the estimator, get the same gradient."""
    batch = {k: jnp.asarray(v) for k, v in _batch(8, seed=4).items()}
    ours, theirs = _build(straight_through=True), _build(straight_through=False)
    loss_ours = method.METHOD.loss_fn(ours, batch, LOSS_CFG)[0]
    loss_theirs = method.METHOD.loss_fn(theirs, batch, LOSS_CFG)[0]
    assert float(loss_ours) == float(loss_theirs)
    g_ours, g_theirs = _param_grads(ours, batch), _param_grads(theirs, batch)
    flat_ours = dict(nnx.to_flat_state(nnx.state(g_ours, nnx.Param)))
    flat_theirs = dict(nnx.to_flat_state(nnx.state(g_theirs, nnx.Param)))
    assert flat_ours.keys() == flat_theirs.keys()
    same, changed = set(), set()
    for path, value in flat_ours.items():
        diff = np.abs(np.asarray(value[...]) - np.asarray(flat_theirs[path][...])).max()
        key = "/".join(map(str, path))
        if key.startswith(("classifier", "centers", "head/codebooks")):
            assert diff < 1e-6, key
            same.add(key)
        elif key == "head/assign" or (key.startswith("backbone") and key.endswith("kernel")):
            assert diff > 1e-3 * np.abs(np.asarray(value[...])).max(), key
            changed.add(key)
    assert same == {"classifier", "centers", "head/codebooks"}
    assert {"head/assign", "backbone/dense/kernel"} <= changed


# --- training steps ----------------------------------------------------------------------------


def _make_state(**head):
    model = _build(**head)
    optimizer = nnx.Optimizer(model, optax.sgd(0.1), wrt=nnx.Param)
    return nnx.split((model, optimizer))


@pytest.mark.parametrize("init", ["normal", "xavier_uniform"])
def test_step_learns_the_codebooks(init, method_checks):
    """Unlike OPQN's fixed codewords, one optimizer step moves every codebook (and A, the
    classifier, the centres and the backbone)."""
    _leaves = method_checks.float_leaves
    graphdef, state = _make_state(init=init)
    before = _leaves(state)
    step = method_checks.train_step(method.METHOD, LOSS_CFG)
    new_state, loss, aux, grads = step(graphdef, state, _batch())
    assert bool(jnp.isfinite(loss)) and all(bool(jnp.isfinite(v)) for v in aux.values())
    grad_leaves = _leaves(grads)
    assert any("codebooks" in key for key in grad_leaves)  # differentiated
    assert all(np.all(np.isfinite(g)) for g in grad_leaves.values())
    after = _leaves(new_state)
    checked = set()
    for key in before:
        if any(name in key for name in ("'codebooks'", "'assign'", "'classifier'", "'centers'")):
            checked.add(key.split("'")[-2])
            assert np.abs(after[key] - before[key]).max() > 0, key
    assert {"codebooks", "assign", "classifier", "centers"} <= checked
    # What the index is built from changes too (OPQN's `codebooks_fn` never does).
    model, _ = nnx.merge(graphdef, new_state)
    old_model, _ = nnx.merge(graphdef, state)
    assert not np.array_equal(
        np.asarray(method.METHOD.codebooks_fn(model)[0]),
        np.asarray(method.METHOD.codebooks_fn(old_model)[0]),
    )


def test_one_vs_eight_devices(cpu_devices, method_checks):
    graphdef, state = _make_state()
    step = method_checks.train_step(method.METHOD, LOSS_CFG)
    method_checks.check_one_vs_eight_devices(step, graphdef, state, _batch(), cpu_devices)


def test_loss_rejects_bad_input_eagerly():
    model = _build()
    batch = _batch(4)
    batch["label"][0] = NUM_CLASSES
    with pytest.raises(ValueError, match=r"\[0, 5\)"):
        method.METHOD.loss_fn(model, {k: jnp.asarray(v) for k, v in batch.items()}, LOSS_CFG)
    with pytest.raises(ValueError, match="sharpness_weight"):
        method.METHOD.loss_fn(model, _batch(4), dict(central_weight=0.25, diversity_weight=1.0))


# --- encoding and search -----------------------------------------------------------------------


def _encoded(seed=0, n=16):
    model = _build()
    model.eval()
    images = jnp.asarray(_batch(n, seed)["image"])
    return (
        model,
        jax.jit(method.METHOD.encode_fn)(model, images),
        jax.jit(method.METHOD.query_fn)(model, images),
    )


def test_encode_and_query_match_numpy(cpu_devices):
    model, enc, qry = _encoded()
    (codes,), (probs,) = enc["codes"], qry["probs"]
    assert codes.dtype == jnp.uint8 and codes.shape == (16, M) and probs.shape == (16, M, K)
    feats = _np(enc["feats"])
    np.testing.assert_array_equal(np.asarray(qry["feats"]), np.asarray(enc["feats"]))
    layer = ref.kw_layer(feats, _np(model.head.assign[...]), _np(model.head.codebooks[...]))
    np.testing.assert_array_equal(np.asarray(codes), layer["codes"])
    np.testing.assert_allclose(np.asarray(probs), layer["probs"], atol=1e-6)  # raw query
    mesh = parallel.make_mesh(devices=cpu_devices)
    images = _batch(16, 0)["image"]
    with jax.set_mesh(mesh):
        sharded = parallel.put_batch(dict(image=images), mesh)["image"]
        enc8 = jax.jit(method.METHOD.encode_fn)(
            jax.device_put(model, parallel.replicated(mesh)), sharded
        )
    np.testing.assert_array_equal(np.asarray(enc8["codes"][0]), np.asarray(codes))


def _brute_force(model, queries, db_codes):
    """float64 `[Q, N]` squared distances `||s_q − h_n||²` and inner products `<s_q, h_n>` of
    the soft-quantized queries and the database's hard reconstructions."""
    books = _np(model.head.codebooks[...])
    soft = ref.combine(_np(queries["probs"][0]), books).reshape(len(queries["feats"]), -1)
    hard = ref.combine(ref.one_hot(db_codes, K), books).reshape(len(db_codes), -1)
    dist = np.array([[float(np.sum((s - h) ** 2)) for h in hard] for s in soft])
    dots = np.array([[float(np.dot(s, h)) for h in hard] for s in soft])
    return dist, dots


@pytest.mark.parametrize("query_side", ["l2", "soft_quantized"])
def test_adc_search_equals_numpy_brute_force(query_side):
    model, database, _ = _encoded(seed=1, n=24)
    _, _, queries = _encoded(seed=2, n=5)
    params = method.METHOD.code_params(model)[0]
    db_codes = method.METHOD.database_codes(jax.device_get(database), 0)
    index = method.METHOD.index(db_codes, params=params, query_side=query_side)
    assert index.metric == ("l2" if query_side == "l2" else "ip") and index.method == "kw"
    lut = method.METHOD.search_queries(
        jax.device_get(queries), head=0, params=params, query_side=query_side
    )
    assert lut.shape == (5, M, K)
    scores, ids = index.search(lut, 24)
    dist, dots = _brute_force(model, jax.device_get(queries), db_codes)
    want = dist if query_side == "l2" else dots
    np.testing.assert_allclose(
        np.take_along_axis(want, ids, 1), scores, rtol=1e-4, atol=1e-4
    )  # every hit carries its own brute-force score
    sign = 1.0 if query_side == "l2" else -1.0  # ascending distances, descending products
    order = np.argsort(sign * want, axis=1, kind="stable")
    np.testing.assert_allclose(np.take_along_axis(want, order, 1), scores, rtol=1e-4, atol=1e-4)
    assert np.all(np.diff(sign * scores, axis=1) >= -1e-5)
    source = method.METHOD.score_source(
        jax.device_get(queries), db_codes, head=0, params=params, query_side=query_side
    )
    assert source.kind == "adc" and source.negate == (query_side == "l2")


def test_faiss_pq_export_gives_the_same_distances():
    faiss = pytest.importorskip("faiss")
    from dpq_jax.search import faiss_export

    model, database, _ = _encoded(seed=1, n=24)
    _, _, queries = _encoded(seed=2, n=5)
    queries = jax.device_get(queries)
    params = np.asarray(method.METHOD.code_params(model)[0])
    db_codes = method.METHOD.database_codes(jax.device_get(database), 0)
    index = method.METHOD.index(db_codes, params=params, query_side="l2")
    vectors = method.METHOD.faiss_queries(queries, head=0, params=params, query_side="l2")
    assert vectors.shape == (5, D)
    fdist, _ = faiss_export.to_faiss_pq(index).search(vectors, 6)
    lut = method.METHOD.search_queries(queries, head=0, params=params, query_side="l2")
    dist, _ = index.search(lut, 6)
    np.testing.assert_allclose(fdist, dist, rtol=1e-4, atol=1e-4)
    del faiss


# --- configs -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["fmnist_kw.py", "orl_kw.py"])
def test_configs_load_and_match_the_opqn_budget(name):
    path = os.path.join(CONFIGS, name)
    opqn_cfg = config_lib.load_config(path.replace("_kw.py", "_opqn.py"), "bits=16")
    for arg, bits in (("", 32), ("bits=16", 16), ("bits=24,runlocal", 24)):
        config = config_lib.load_config(path, arg)
        assert config.method == "kw" and registry.get("method", config.method) is method.METHOD
        assert method.METHOD.code_lengths(config.model) == (bits,)
        assert config.model.head.init == "normal" and config.model.head.straight_through
    config = config_lib.load_config(path, "bits=16")
    for field in ("total_steps", "protocol"):
        assert config[field] == opqn_cfg[field], field
    assert config.input.to_dict() == opqn_cfg.input.to_dict()
    assert config.model.backbone.to_dict() == opqn_cfg.model.backbone.to_dict()
    assert config.model.embedding_dim == opqn_cfg.model.embedding_dim
    assert config.model.head.num_codebooks == opqn_cfg.model.head.num_codebooks
    assert config.model.head.codebook_size == opqn_cfg.model.head.codebook_size
    ablation = config_lib.load_config(path, "init=xavier_uniform,straight_through=false")
    assert ablation.model.head.init == "xavier_uniform"
    assert not ablation.model.head.straight_through
    tiny = config_lib.load_config(path, "runlocal,init=xavier_uniform")
    model = method.METHOD.build(tiny.model, num_classes=3, in_channels=1, rngs=nnx.Rngs(0))
    assert model.head.assign[...].shape == (4, 256, 256)
