"""DDH and DDQH: divide-and-encode, the DDH trunk, the heads and the loss, against slow NumPy
twins written here.

Oracles: explicit loops in float64 (divide-and-encode, convolutions, pooling, the
locally-connected layer, batch norm with batch statistics, cross-entropy), central finite
differences of the twins for the gradients, and `sign(h) > 0` for the codes.
"""

import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from dpq_jax import config_lib, parallel, registry
from dpq_jax.methods import ddh, ddqh
from dpq_jax.models.backbones import ddh_net
from dpq_jax.models.backbones.cnn_small import BN_EPSILON
from dpq_jax.quantizers import divide_and_encode as dae

pytestmark = pytest.mark.usefixtures("fast_compile")
CONFIGS = os.path.join(os.path.dirname(__file__), "..", "..", "configs")
METHODS = {"ddh": ddh.METHOD, "ddqh": ddqh.METHOD}


# --- NumPy twins -------------------------------------------------------------------------------
def dae_twin(x, kernel, bias):
    """z[b, i] = bias[i] + sum_l x[b, i*L + l] kernel[i, l], by loops."""
    k, length = kernel.shape
    z = np.zeros((x.shape[0], k))
    for b in range(x.shape[0]):
        for i in range(k):
            z[b, i] = bias[i] + sum(x[b, i * length + j] * kernel[i, j] for j in range(length))
    return z


def bn_twin(x, scale, bias):
    """Training-mode batch norm: statistics over every axis but the last (biased variance)."""
    axes = tuple(range(x.ndim - 1))
    return (x - x.mean(axes)) / np.sqrt(x.var(axes) + BN_EPSILON) * scale + bias


def relu(x):
    return np.maximum(x, 0.0)


def conv_twin(x, kernel, bias):
    """'valid' convolution, kernel [kh, kw, C, F], one output position at a time."""
    kh, kw = kernel.shape[:2]
    b, h, w, _ = x.shape
    out = np.zeros((b, h - kh + 1, w - kw + 1, kernel.shape[3]))
    for i in range(h - kh + 1):
        for j in range(w - kw + 1):
            out[:, i, j] = np.tensordot(x[:, i : i + kh, j : j + kw], kernel, axes=3) + bias
    return out


def pool_twin(x):
    """2x2 max-pool, stride 2, floor."""
    b, h, w, c = x.shape
    out = np.zeros((b, h // 2, w // 2, c))
    for i in range(h // 2):
        for j in range(w // 2):
            out[:, i, j] = x[:, 2 * i : 2 * i + 2, 2 * j : 2 * j + 2].max(axis=(1, 2))
    return out


def local_twin(x, kernel, bias):
    """2x2 locally-connected layer: position (i, j) has its own [2*2*C, F] filters."""
    b, h, w, c = x.shape
    out = np.zeros((b, h - 1, w - 1, kernel.shape[-1]))
    for i in range(h - 1):
        for j in range(w - 1):
            patch = x[:, i : i + 2, j : j + 2].reshape(b, 4 * c)  # (u, v, c) order
            out[:, i, j] = patch @ kernel[i, j] + bias[i, j]
    return out


def trunk_twin(x, p):
    """The DDH trunk: 3 x (conv, BN, ReLU, pool); LC, BN, ReLU; concat of the two flattens."""
    for i in range(3):
        x = conv_twin(x, p[f"backbone/convs/{i}/kernel"], p[f"backbone/convs/{i}/bias"])
        x = pool_twin(
            relu(bn_twin(x, p[f"backbone/norms/{i}/scale"], p[f"backbone/norms/{i}/bias"]))
        )
    local = local_twin(x, p["backbone/local/kernel"], p["backbone/local/bias"])
    local = relu(bn_twin(local, p["backbone/local_norm/scale"], p["backbone/local_norm/bias"]))
    return np.concatenate([x.reshape(len(x), -1), local.reshape(len(x), -1)], axis=1)


def head_twin(trunk, p, hash_layer, prefix=""):
    """(h, logits) of one head: face layer, hash layer, BN, tanh, classifier."""

    def q(name):
        return p[prefix + name]

    face = relu(
        bn_twin(
            trunk @ q("face/kernel") + q("face/bias"), q("face_norm/scale"), q("face_norm/bias")
        )
    )
    if hash_layer == "divide_and_encode":
        z = dae_twin(face, q("encode/kernel"), q("encode/bias"))
    else:
        z = face @ q("encode/kernel") + q("encode/bias")
    h = np.tanh(bn_twin(z, q("hash_norm/scale"), q("hash_norm/bias")))
    return h, h @ q("classifier/kernel") + q("classifier/bias")


def loss_twin(logits, h, labels, alpha, target=1.0):
    """mean_b [logsumexp(logits_b) - logits_b[y_b]] + alpha * mean ||h| - t|."""
    ce = 0.0
    for b in range(len(labels)):
        m = logits[b].max()
        ce += m + np.log(np.sum(np.exp(logits[b] - m))) - logits[b, labels[b]]
    return ce / len(labels) + alpha * np.mean(np.abs(np.abs(h) - target))


def _params(module):
    return {
        "/".join(map(str, path)): np.asarray(v[...], np.float64)
        for path, v in nnx.to_flat_state(nnx.state(module, nnx.Param))
    }


def _randomise(module, seed):
    """Random values in every parameter, BN scales and biases included (no identity BN)."""
    rng = np.random.default_rng(seed)
    for _, v in nnx.to_flat_state(nnx.state(module, nnx.Param)):
        v[...] = jnp.asarray(rng.normal(scale=0.7, size=v[...].shape), jnp.float32)


def _finite_difference(fn, params, name, eps=1e-5):
    grad = np.zeros_like(params[name])
    for idx in np.ndindex(grad.shape):
        up = {**params, name: params[name].copy()}
        down = {**params, name: params[name].copy()}
        up[name][idx] += eps
        down[name][idx] -= eps
        grad[idx] = (fn(up) - fn(down)) / (2 * eps)
    return grad


# --- divide-and-encode ---------------------------------------------------------------------------
def test_divide_and_encode_equals_the_slice_loop_and_a_block_diagonal_dense():
    rng = np.random.default_rng(0)
    x, kernel, bias = rng.normal(size=(5, 12)), rng.normal(size=(4, 3)), rng.normal(size=4)
    z = dae.divide_and_encode(*(jnp.asarray(a, jnp.float32) for a in (x, kernel, bias)))
    np.testing.assert_allclose(np.asarray(z), dae_twin(x, kernel, bias), rtol=1e-5, atol=1e-6)
    block = np.zeros((12, 4))  # bit i reads rows 3i .. 3i + 2 only
    for i in range(4):
        block[3 * i : 3 * i + 3, i] = kernel[i]
    np.testing.assert_allclose(np.asarray(z), x @ block + bias, rtol=1e-5, atol=1e-6)


def test_divide_and_encode_gradients_equal_the_hand_derived_ones():
    rng = np.random.default_rng(1)
    x, kernel, bias = rng.normal(size=(5, 12)), rng.normal(size=(4, 3)), rng.normal(size=4)
    g = rng.normal(size=(5, 4))
    _, vjp = jax.vjp(
        dae.divide_and_encode, *(jnp.asarray(a, jnp.float32) for a in (x, kernel, bias))
    )
    dx, dk, db = vjp(jnp.asarray(g, jnp.float32))
    want_dx = np.zeros_like(x)
    want_dk = np.zeros_like(kernel)
    for b in range(5):
        for i in range(4):
            for j in range(3):
                want_dx[b, 3 * i + j] += kernel[i, j] * g[b, i]
                want_dk[i, j] += x[b, 3 * i + j] * g[b, i]
    np.testing.assert_allclose(np.asarray(dx), want_dx, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(dk), want_dk, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(db), g.sum(0), rtol=1e-5, atol=1e-6)


def test_divide_and_encode_refuses_bad_shapes():
    with pytest.raises(ValueError, match=r"x must be \[B, k\*L\] = \[B, 12\]"):
        dae.divide_and_encode(jnp.ones((2, 10)), jnp.ones((4, 3)), jnp.ones(4))
    with pytest.raises(ValueError, match="bias"):
        dae.divide_and_encode(jnp.ones((2, 12)), jnp.ones((4, 3)), jnp.ones(3))
    module = dae.DivideAndEncode(6, 4, rngs=nnx.Rngs(0))  # Glorot of Dense(4 -> 1)
    assert np.abs(np.asarray(module.kernel[...])).max() <= np.sqrt(6 / 5)


# --- the trunk -----------------------------------------------------------------------------------
@pytest.mark.parametrize("hw,width", [((32, 32), 860), ((28, 28), 320), ((32, 26), 520)])
def test_trunk_width_follows_the_input_size(hw, width):
    net = nnx.eval_shape(lambda: ddh_net.DDHNet(3, input_hw=hw, rngs=nnx.Rngs(0)))
    assert net.out_features == ddh_net.trunk_width(hw) == width
    out = jax.eval_shape(lambda m, x: m(x), net, jax.ShapeDtypeStruct((2, *hw, 3), jnp.float32))
    assert out.shape == (2, width)


def test_trunk_equals_the_numpy_twin():
    net = ddh_net.DDHNet(2, input_hw=(24, 26), widths=(2, 3, 2, 3), rngs=nnx.Rngs(0))
    _randomise(net, 1)
    x = np.random.default_rng(2).normal(size=(8, 24, 26, 2)).astype(np.float32)
    want = trunk_twin(x, {"backbone/" + k: v for k, v in _params(net).items()})
    assert want.shape == (8, net.out_features) == (8, 2 * 2 * 2 + 1 * 1 * 3)  # pool 2x2, LC 1x1
    # Tolerance: Flax's BN variance E[x²] − E[x]² loses float32 digits when the mean of a
    # channel is large against its spread (1e-4 here); a wrong layer would be off by O(1).
    np.testing.assert_allclose(np.asarray(net(jnp.asarray(x))), want, rtol=1e-3, atol=5e-4)


def test_trunk_refuses_small_inputs_and_bad_widths():
    with pytest.raises(ValueError, match="at least 24x24"):
        ddh_net.DDHNet(1, input_hw=(23, 30), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="four positive widths"):
        ddh_net.DDHNet(1, widths=(4, 4, 4), rngs=nnx.Rngs(0))
    net = ddh_net.DDHNet(1, 5, input_hw=(24, 24), widths=(2, 2, 2, 2), rngs=nnx.Rngs(0))
    out = jax.eval_shape(lambda m, x: m(x), net, jax.ShapeDtypeStruct((2, 24, 24, 1), jnp.float32))
    assert net.out_features == 5 and out.shape == (2, 5)


# --- the heads and the loss ----------------------------------------------------------------------
@pytest.mark.parametrize("hash_layer", ["divide_and_encode", "dense"])
def test_head_loss_values_and_gradients_equal_the_twin(hash_layer):
    head = ddh.DDHHead(5, 3, 4, slice_size=2, hash_layer=hash_layer, rngs=nnx.Rngs(0))
    _randomise(head, 3)
    rng = np.random.default_rng(4)
    trunk = rng.normal(size=(8, 5))
    labels = np.asarray([0, 1, 2, 3, 0, 1, 2, 3])
    alpha = 0.3  # large enough that the regulariser's gradient matters

    def twin(p):
        h, logits = head_twin(trunk, p, hash_layer)
        return loss_twin(logits, h, labels, alpha)

    def loss(model):
        h = model(jnp.asarray(trunk, jnp.float32))
        return ddh.ddh_head_loss(model.classifier(h), h, jnp.asarray(labels), quant_weight=alpha)[0]

    want = _params(head)  # before the call: BN only updates its running statistics
    value, grads = nnx.jit(nnx.value_and_grad(loss))(head)
    np.testing.assert_allclose(float(value), twin(want), rtol=1e-5)
    expected_shape = (3, 2) if hash_layer == "divide_and_encode" else (6, 3)
    assert want["encode/kernel"].shape == expected_shape
    for path, g in nnx.to_flat_state(grads):
        name = "/".join(map(str, path))
        np.testing.assert_allclose(
            np.asarray(g[...]),
            _finite_difference(twin, want, name),
            rtol=2e-3,
            atol=2e-5,
            err_msg=name,
        )


def _model_cfg(backbone=None, bits=(2, 4), features=0):
    backbone = backbone or {"name": "ddh_net", "widths": (2, 3, 2, 3), "input_hw": (24, 26)}
    return ml_collections.ConfigDict(
        {
            "backbone": backbone,
            "features": features,
            "bits": bits,
            "slice_size": 2,
            "dtype": "float32",
        }
    )


def _loss_cfg(kernel_l2=1e-4):
    return ml_collections.ConfigDict(
        {"quant_weight": 0.01, "magnitude_target": 1.0, "kernel_l2": kernel_l2}
    )


def _batch(n=6, hw=(24, 26), channels=2, seed=5):
    rng = np.random.default_rng(seed)
    return {
        "image": rng.normal(size=(n, *hw, channels)).astype(np.float32),
        "label": rng.integers(0, 3, size=n).astype(np.int32),
    }


@pytest.mark.parametrize("name", ["ddh", "ddqh"])
def test_method_loss_is_the_sum_of_heads_plus_keras_l2(name):
    method = METHODS[name]
    model = method.build(_model_cfg(), num_classes=3, in_channels=2, rngs=nnx.Rngs(0))
    _randomise(model, 6)
    p = _params(model)
    batch = {k: jnp.asarray(v) for k, v in _batch().items()}
    trunk = trunk_twin(np.asarray(batch["image"], np.float64), p)
    want = 0.0
    for i in range(2):
        h, logits = head_twin(trunk, p, method.hash_layer, f"heads/{i}/")
        want += loss_twin(logits, h, np.asarray(batch["label"]), 0.01)
    lam = 0.5

    @nnx.jit
    def losses(model, batch):  # one compile instead of hundreds of eager ops
        return method.loss_fn(model, batch, _loss_cfg(0.0)), method.loss_fn(
            model, batch, _loss_cfg(lam)
        )

    (total, aux), (with_l2, aux_l2) = losses(model, batch)
    np.testing.assert_allclose(float(total), want, rtol=1e-4)
    assert {"loss_ce_2bit", "quantization_4bit", "accuracy_4bit", "bit_balance_2bit"} <= set(aux)
    # Keras l2(λ) = λ Σ w² over the kernels (convs, the LC layer, each head's three dense
    # layers), not the biases or BN; TF1's λ/2 Σ w² or decaying every parameter would fail.
    kernels = sorted(k for k in p if k.endswith("/kernel"))
    assert len(kernels) == 4 + 3 * 2 and not any("norm" in k for k in kernels)
    squares = sum(np.sum(p[k] ** 2) for k in kernels)
    np.testing.assert_allclose(float(aux_l2["kernel_l2"]), squares, rtol=1e-5)
    np.testing.assert_allclose(float(with_l2) - float(total), lam * squares, rtol=1e-4)


def test_one_and_eight_devices_give_the_same_loss_and_gradients(cpu_devices):
    method = ddh.METHOD
    model = method.build(_model_cfg(), num_classes=3, in_channels=2, rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(model)

    @jax.jit
    def loss_and_grads(state, batch):
        def loss(params):
            return method.loss_fn(nnx.merge(graphdef, params), batch, _loss_cfg())[0]

        return jax.value_and_grad(loss)(state)

    batch = _batch(16)
    loss1, grads1 = loss_and_grads(state, {k: jnp.asarray(v) for k, v in batch.items()})
    mesh = parallel.make_mesh(devices=cpu_devices)
    with jax.set_mesh(mesh):
        loss8, grads8 = loss_and_grads(
            jax.device_put(state, parallel.replicated(mesh)), parallel.put_batch(batch, mesh)
        )
    np.testing.assert_allclose(float(loss8), float(loss1), rtol=1e-5)
    for a, b in zip(jax.tree.leaves(grads1), jax.tree.leaves(grads8), strict=True):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", ["ddh", "ddqh"])
def test_codes_are_the_signs_of_the_tanh_codes(name):
    method = METHODS[name]
    model = method.build(_model_cfg(), num_classes=3, in_channels=2, rngs=nnx.Rngs(0))
    _randomise(model, 8)
    rng = np.random.default_rng(9)  # running statistics too: eval-mode BN is not the identity
    for path, v in nnx.to_flat_state(nnx.state(model, nnx.BatchStat)):
        draw = (
            rng.uniform(0.5, 2.0, v[...].shape)
            if path[-1] == "var"
            else rng.normal(size=v[...].shape)
        )
        v[...] = jnp.asarray(draw, jnp.float32)
    model.eval()
    images = jnp.asarray(_batch(5, seed=7)["image"])
    out, codes = nnx.jit(lambda m, x: (method.encode_fn(m, x), m.codes(x)))(model, images)
    for head, relaxed in enumerate(codes):
        relaxed = np.asarray(relaxed)
        assert relaxed.shape == (5, (2, 4)[head]) and np.abs(relaxed).max() < 1
        np.testing.assert_array_equal(method.database_codes(out, head), relaxed > 0)
    assert method.code_type == "binary" and method.describe_search("hamming").startswith("Hamming")


# --- the build: backbones and bad configs --------------------------------------------------------
def test_any_backbone_with_a_feature_width():
    cfg = _model_cfg({"name": "cnn_small", "widths": (4,)}, features=8)
    model = ddh.METHOD.build(cfg, num_classes=3, in_channels=2, rngs=nnx.Rngs(0))
    loss, _ = ddh.METHOD.loss_fn(
        model, {k: jnp.asarray(v) for k, v in _batch().items()}, _loss_cfg()
    )
    assert np.isfinite(float(loss)) and model.heads[0].face.in_features == 8
    with pytest.raises(ValueError, match="only with the ddh_net backbone"):
        ddh.METHOD.build(
            _model_cfg({"name": "cnn_small"}), num_classes=3, in_channels=2, rngs=nnx.Rngs(0)
        )
    with pytest.raises(ValueError, match="sets \\['features'\\]"):
        ddh.METHOD.build(
            _model_cfg({"name": "ddh_net", "features": 3}),
            num_classes=3,
            in_channels=2,
            rngs=nnx.Rngs(0),
        )
    with pytest.raises(ValueError, match="slice_size must be a positive int"):
        cfg = _model_cfg()
        cfg.slice_size = 0
        ddh.METHOD.build(cfg, num_classes=3, in_channels=2, rngs=nnx.Rngs(0))


def test_bad_labels_and_loss_configs_are_refused():
    model = ddh.METHOD.build(_model_cfg(), num_classes=3, in_channels=2, rngs=nnx.Rngs(0))
    batch = {k: jnp.asarray(v) for k, v in _batch().items()}
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
        ddh.METHOD.loss_fn(model, {**batch, "label": batch["label"] + 3}, _loss_cfg())
    with pytest.raises(ValueError, match=r"labels must have shape \[B\]"):
        ddh.METHOD.loss_fn(model, {**batch, "label": jnp.ones((6, 3), jnp.int32)}, _loss_cfg())
    with pytest.raises(ValueError, match="DDQH config is missing the field 'kernel_l2'"):
        ddqh.METHOD.loss_fn(model, batch, ml_collections.ConfigDict({"quant_weight": 0.01}))


# --- registry and configs ------------------------------------------------------------------------
def test_registered_by_module_name():
    assert registry.get("method", "ddh") is ddh.METHOD
    assert registry.get("method", "ddqh") is ddqh.METHOD
    assert registry.get("backbone", "ddh_net") is ddh_net.DDHNet
    assert isinstance(ddqh.METHOD, ddh.DDH) and ddqh.METHOD.hash_layer == "dense"


@pytest.mark.parametrize("name", ["ddh", "ddqh"])
def test_configs_load_and_name_registered_parts(name):
    method = METHODS[name]
    for proto, args in (
        ("fmnist", ("bits=24", "multihead", "runlocal")),
        ("orl", ("", "multihead", "runlocal,multihead")),
        ("faces_seen", ("", "bits=12,dataset=youtube_faces", "multihead", "runlocal")),
    ):
        for arg in args:
            config = config_lib.load_config(os.path.join(CONFIGS, f"{proto}_{name}.py"), arg)
            assert registry.get("method", config.method) is method
            assert registry.get("backbone", config.model.backbone.name) is ddh_net.DDHNet
            lengths = method.code_lengths(config.model)
            assert lengths == ((12, 24, 36, 48) if "multihead" in arg else lengths)
    config = config_lib.load_config(os.path.join(CONFIGS, f"faces_seen_{name}.py"), "")
    assert method.code_lengths(config.model) == (48,) and config.optim.name == "adam"
    assert config.total_steps == 200 * -(-65000 // 256)
    with pytest.raises(ValueError, match="choose one of"):
        config_lib.load_config(os.path.join(CONFIGS, f"faces_seen_{name}.py"), "bits=16")


# --- config groups -------------------------------------------------------------------------------
def test_model_and_loss_groups_are_the_reference_ddh():
    model = ddh.model_config((32, 32), (12, 48))
    assert model.backbone.to_dict() == {"name": "ddh_net", "input_hw": (32, 32)}
    assert (model.features, model.slice_size, model.dtype) == (0, 4, "float32")
    built = nnx.eval_shape(
        lambda: ddh.METHOD.build(model, num_classes=7, in_channels=3, rngs=nnx.Rngs(0))
    )
    assert built.code_lengths == (12, 48)
    # features 0: the trunk's concatenation, 540 + 320 = 860 at 32×32; face layer 4k per head.
    assert [head.face.kernel.shape for head in built.heads] == [(860, 48), (860, 192)]
    # DDH.py: 0.01·mean||h| − 1| and Keras l2(1e-4) on the kernels.
    assert ddh.loss_config().to_dict() == {
        "quant_weight": 0.01,
        "magnitude_target": 1.0,
        "kernel_l2": 1e-4,
    }
    assert ddh.model_config([28, 28], 24).backbone.input_hw == (28, 28)
