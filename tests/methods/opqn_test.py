"""Tests for the OPQN method (dpq_jax.methods.opqn): build, loss, encoders, one vs eight devices."""

import types

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import nnx

from dpq_jax import parallel, registry
from dpq_jax.losses import reference as loss_ref
from dpq_jax.methods import opqn as method
from dpq_jax.quantizers import codebooks
from dpq_jax.quantizers import reference as ref
from dpq_jax.quantizers import torch_init_reference as torch_ref

pytestmark = pytest.mark.usefixtures("fast_compile")


def _model_cfg(**overrides):
    cfg = ml_collections.ConfigDict(
        dict(
            backbone=dict(name="cnn_small", widths=(4,)),
            embedding_dim=8,
            head=dict(num_codebooks=2, codebook_size=4, codebook_init="dct", seed=0),
            dtype="float32",
        )
    )
    cfg.update(overrides)
    return cfg


LOSS_CFG = ml_collections.ConfigDict(dict(scale=20.0, margin=0.5, entropy_weight=0.1))
NUM_CLASSES = 5


def _batch(n=16, seed=0):
    rng = np.random.default_rng(seed)
    return dict(
        image=rng.standard_normal((n, 8, 8, 1)).astype(np.float32),
        label=rng.integers(0, NUM_CLASSES, n).astype(np.int32),
    )


# --- method ---------------------------------------------------------------------------------


def test_method_and_registry():
    assert registry.get("method", "opqn") is method.METHOD
    assert method.METHOD.name == "opqn" and method.METHOD.code_type == "pq"


def test_build_from_configdict_dict_and_namespace():
    for cfg in (
        _model_cfg(),
        _model_cfg().to_dict(),
        types.SimpleNamespace(
            backbone=dict(name="cnn_small", widths=(4,)),
            embedding_dim=8,
            head=types.SimpleNamespace(num_codebooks=2, codebook_size=4),
        ),
    ):
        model = method.METHOD.build(cfg, num_classes=NUM_CLASSES, in_channels=1, rngs=nnx.Rngs(0))
        assert model.classifier[...].shape == (2, NUM_CLASSES, 4)
        assert model.backbone.convs[0].out_features == 4
        assert method.METHOD.codebooks_fn(model)[0].shape == (2, 4, 4)
        assert method.METHOD.code_lengths(cfg) == (4,)
    with pytest.raises(ValueError, match="embedding_dim"):
        method.METHOD.build(
            dict(backbone=dict(name="cnn_small"), head=dict(num_codebooks=2, codebook_size=4)),
            num_classes=3,
            in_channels=1,
            rngs=nnx.Rngs(0),
        )
    with pytest.raises(ValueError, match="sets itself"):
        method.METHOD.build(
            _model_cfg(backbone=dict(name="cnn_small", features=8)),
            num_classes=3,
            in_channels=1,
            rngs=nnx.Rngs(0),
        )
    with pytest.raises(ValueError, match="dtype"):
        method.METHOD.build(
            _model_cfg(dtype="float16"), num_classes=3, in_channels=1, rngs=nnx.Rngs(0)
        )


def test_classifier_and_assignment_init_use_torch_fans_on_reference_shapes():
    # The reference's OrthoPQ: weight [M, C, d] and mlp [M, d, K] under torch's xavier_uniform_
    # (fans C·d and M·d; d·K and M·K). 500 identities, M = 2, d = K = 4: 4,000 and 32 draws.
    model = method.METHOD.build(_model_cfg(), num_classes=500, in_channels=1, rngs=nnx.Rngs(0))
    weights = np.abs(np.asarray(model.classifier[...]))
    bound = torch_ref.torch_xavier_uniform_bound((2, 500, 4))
    assert (1 - 20 / weights.size) * bound < weights.max() <= bound
    assign = np.abs(np.asarray(model.head.assign[...]))
    assert assign.max() <= torch_ref.torch_xavier_uniform_bound((2, 4, 4))


def test_reference_shapes():
    # README: --len 16 24 36 --num 2 4 6 --words 256 64 64; D = 512 (516 at 36 bits) at 32×32,
    # D = M·K at 112×112 (opqn_main.py); K <= d everywhere (orthonormal codewords).
    assert [method.reference_shape(b, 32) for b in (16, 24, 36, 48)] == [
        (2, 256, 512),
        (4, 64, 512),
        (6, 64, 516),
        (8, 64, 512),
    ]
    for bits in (16, 24, 36, 48, 64):
        m, k, d = method.reference_shape(bits, 112)
        assert d == m * k and m * np.log2(k) == bits
    for size, shapes in method.REFERENCE_SHAPES.items():
        for bits, (m, k, d) in shapes.items():
            assert d % m == 0 and k <= d // m and m * np.log2(k) == bits, (size, bits)
    with pytest.raises(ValueError, match="choose one of"):
        method.reference_shape(64, 32)
    with pytest.raises(ValueError, match="input_size"):
        method.reference_shape(36, 64)


def test_loss_matches_reference_terms():
    model = method.METHOD.build(
        _model_cfg(), num_classes=NUM_CLASSES, in_channels=1, rngs=nnx.Rngs(0)
    )
    model.train()
    batch = {k: jnp.asarray(v) for k, v in _batch(8).items()}
    loss, aux = jax.jit(lambda m, b: method.METHOD.loss_fn(m, b, LOSS_CFG))(model, batch)
    assert set(aux) == {"loss_clf_raw", "loss_clf_soft", "loss_entropy", "code_usage"}
    # Oracle from the backbone features (train-mode BN depends only on the batch).
    feats = np.asarray(model.backbone(batch["image"]))
    head = ref.ortho_pq_head(
        feats, np.asarray(model.head.assign[...]), np.asarray(model.head.codebooks[...])
    )
    weights = np.asarray(model.classifier[...])
    labels = np.asarray(batch["label"])
    raw = loss_ref.subspace_cosface(
        ref.split_subvectors(feats, 2), weights, labels, scale=20.0, margin=0.5
    )
    soft = loss_ref.subspace_cosface(
        ref.split_subvectors(head["soft"], 2), weights, labels, scale=20.0, margin=0.5
    )
    entropy = loss_ref.assignment_entropy(head["probs"])
    usage = np.mean([len(set(head["codes"][:, m].tolist())) / 4 for m in range(2)])
    np.testing.assert_allclose(float(aux["loss_clf_raw"]), raw, rtol=1e-4)
    np.testing.assert_allclose(float(aux["loss_clf_soft"]), soft, rtol=1e-4)
    np.testing.assert_allclose(float(aux["loss_entropy"]), entropy, rtol=1e-4)
    np.testing.assert_allclose(float(aux["code_usage"]), usage)
    np.testing.assert_allclose(float(loss), 0.5 * (raw + soft) + 0.1 * entropy, rtol=1e-4)


def test_loss_rejects_bad_labels_eagerly():
    model = method.METHOD.build(
        _model_cfg(), num_classes=NUM_CLASSES, in_channels=1, rngs=nnx.Rngs(0)
    )
    batch = _batch(4)
    batch["label"][0] = NUM_CLASSES
    with pytest.raises(ValueError, match=r"\[0, 5\)"):
        method.METHOD.loss_fn(model, {k: jnp.asarray(v) for k, v in batch.items()}, LOSS_CFG)
    with pytest.raises(ValueError, match=r"shape \[B\]"):
        method.METHOD.loss_fn(model, dict(image=batch["image"], label=batch["label"][:2]), LOSS_CFG)
    with pytest.raises(ValueError, match="entropy_weight"):
        method.METHOD.loss_fn(model, _batch(4), dict(scale=1.0, margin=0.1))


def _make_state(dtype="float32"):
    model = method.METHOD.build(
        _model_cfg(dtype=dtype), num_classes=NUM_CLASSES, in_channels=1, rngs=nnx.Rngs(0)
    )
    model.train()
    optimizer = nnx.Optimizer(model, optax.sgd(0.1), wrt=nnx.Param)
    return nnx.split((model, optimizer))


def test_step_updates_params_but_not_codebooks(method_checks):
    _leaves = method_checks.float_leaves
    graphdef, state = _make_state()
    before = _leaves(state)
    step = method_checks.train_step(method.METHOD, LOSS_CFG)
    new_state, loss, aux, grads = step(graphdef, state, _batch())
    assert bool(jnp.isfinite(loss)) and all(bool(jnp.isfinite(v)) for v in aux.values())
    grad_leaves = _leaves(grads)
    assert all(np.all(np.isfinite(g)) for g in grad_leaves.values())
    assert not any("codebooks" in key for key in grad_leaves)  # not differentiated
    after = _leaves(new_state)
    for key in before:
        changed = np.abs(after[key] - before[key]).max() > 0
        if "codebooks" in key:
            assert not changed, key
        elif "'assign'" in key or "'classifier'" in key or "kernel" in key:
            assert changed, key
    model, _ = nnx.merge(graphdef, new_state)
    np.testing.assert_array_equal(
        np.asarray(method.METHOD.codebooks_fn(model)[0]),
        np.asarray(codebooks.dct_orthonormal_codebooks(2, 4, 4)),
    )


def test_bfloat16_backbone_loss_finite(method_checks):
    graphdef, state = _make_state("bfloat16")
    step = method_checks.train_step(method.METHOD, LOSS_CFG)
    _, loss, _, grads = step(graphdef, state, _batch())
    assert bool(jnp.isfinite(loss))
    assert all(np.all(np.isfinite(g)) for g in method_checks.float_leaves(grads).values())


def test_one_vs_eight_devices(cpu_devices, method_checks):
    """Parameters, BN running statistics and momentum-free SGD state all agree."""
    graphdef, state = _make_state()
    step = method_checks.train_step(method.METHOD, LOSS_CFG)
    method_checks.check_one_vs_eight_devices(step, graphdef, state, _batch(), cpu_devices)


def test_encode_and_query(cpu_devices):
    model = method.METHOD.build(
        _model_cfg(), num_classes=NUM_CLASSES, in_channels=1, rngs=nnx.Rngs(0)
    )
    model.eval()
    images = jnp.asarray(_batch()["image"])
    enc = jax.jit(method.METHOD.encode_fn)(model, images)
    qry = jax.jit(method.METHOD.query_fn)(model, images)
    (codes,), (probs,) = enc["codes"], qry["probs"]  # one head
    assert codes.dtype == jnp.uint8 and codes.shape == (16, 2)
    assert enc["feats"].dtype == jnp.float32 and probs.shape == (16, 2, 4)
    feats = np.asarray(enc["feats"])
    assign = np.asarray(model.head.assign[...])
    x_sub = ref.split_subvectors(feats, 2)
    np.testing.assert_array_equal(np.asarray(codes), ref.hard_codes(x_sub, assign))
    np.testing.assert_allclose(np.asarray(probs), ref.probability_lut(x_sub, assign), atol=1e-5)
    mesh = parallel.make_mesh(devices=cpu_devices)
    with jax.set_mesh(mesh):
        sharded = parallel.put_batch(dict(image=np.asarray(images)), mesh)["image"]
        enc8 = jax.jit(method.METHOD.encode_fn)(
            jax.device_put(model, parallel.replicated(mesh)), sharded
        )
    np.testing.assert_array_equal(np.asarray(enc8["codes"][0]), np.asarray(codes))


# --- config groups ---------------------------------------------------------------------------
def _face_input(batch_size=256):
    return ml_collections.ConfigDict(dict(batch_size=batch_size, eval_batch_size=512))


def test_face_config_is_the_reference_recipe_at_32_pixels():
    config = method.face_config(
        48,
        input_size=32,
        protocol="faces_seen",
        input_cfg=_face_input(),
        train_images=65000,
        epochs=200,
        decay_epochs=35,
        scale=20.0,
    )
    steps_per_epoch = 254  # ceil(65000 / 256)
    # METHODS §1.1: 48 bits at 32×32 = 8 books of 64 codewords, D = 512; SphereFace-20.
    assert (config.model.head.num_codebooks, config.model.head.codebook_size) == (8, 64)
    assert config.model.embedding_dim == 512 and config.model.head.codebook_init == "dct"
    assert config.model.backbone.to_dict() == {
        "name": "sphereface20",
        "input_size": 32,
        "width_multiplier": 1.0,
    }
    # METHODS §1.2-1.3: CosFace s = 20, m = 0.5, μ = 0.1; SGD 0.1, momentum 0.9, L2 5e-4,
    # 200 epochs, ×0.5 every 35 epochs; mAP every 5 epochs.
    assert (config.loss.scale, config.loss.margin, config.loss.entropy_weight) == (20.0, 0.5, 0.1)
    optim = config.optim
    assert (optim.name, optim.lr, optim.momentum, optim.weight_decay) == ("sgd", 0.1, 0.9, 5e-4)
    assert not optim.decoupled_weight_decay and optim.schedule == "step"
    assert (optim.decay_steps, optim.decay_rate) == (35 * steps_per_epoch, 0.5)
    assert config.total_steps == 200 * steps_per_epoch == 50800
    assert config.evals.val.log_steps == config.ckpt_steps == 5 * steps_per_epoch
    assert config.evals.test.precision_ks == (5,) and config.select_on == "val/map@all"
    assert (config.method, config.protocol, config.seed) == ("opqn", "faces_seen", 0)


def test_face_config_at_112_pixels_and_runlocal():
    config = method.face_config(
        64,
        input_size=112,
        protocol="faces_unseen",
        input_cfg=_face_input(),
        train_images=2560,
        epochs=160,
        decay_epochs=20,
        scale=40.0,
        precision_ks=(10,),
        runlocal=True,
    )
    # 64 bits at 112×112: 8 × 256, D = M·K = 2048; a tiny SphereFace-20 for the smoke run.
    assert (config.model.head.num_codebooks, config.model.head.codebook_size) == (8, 256)
    assert config.model.embedding_dim == 2048 and config.loss.scale == 40.0
    assert config.model.backbone.width_multiplier == 0.0625
    assert (config.total_steps, config.optim.decay_steps, config.input.batch_size) == (4, 2, 16)
    assert config.evals.test.precision_ks == (10,)
    with pytest.raises(ValueError, match="bits=32 not supported at 32×32"):
        method.face_config(
            32,
            input_size=32,
            protocol="faces_seen",
            input_cfg=_face_input(),
            train_images=1,
            epochs=1,
            decay_epochs=1,
            scale=20.0,
        )


def test_model_loss_and_optim_groups():
    model = method.model_config({"name": "cnn_small", "widths": (4, 8)}, 4, 256)
    assert model.embedding_dim == 1024 and model.backbone.widths == (4, 8)  # D = M·K
    assert (model.head.num_codebooks, model.head.codebook_size, model.head.seed) == (4, 256, 0)
    assert method.model_config({"name": "x"}, 6, 64, 516).embedding_dim == 516
    built = nnx.eval_shape(  # shapes only
        lambda: method.METHOD.build(model, num_classes=3, in_channels=1, rngs=nnx.Rngs(0))
    )
    assert built.head.codebooks.shape == (4, 256, 256)  # [M, K, d = D / M]
    assert method.loss_config().to_dict() == {"scale": 20.0, "margin": 0.5, "entropy_weight": 0.1}
    optim = method.optim_config(100, lr=0.01)
    assert (optim.lr, optim.decay_steps, optim.decay_rate, optim.momentum) == (0.01, 100, 0.5, 0.9)
