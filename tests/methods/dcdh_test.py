"""DCDH: the Gaussian-centre, separation and regression-quantization losses, the DFHNet trunk
and the method, against slow NumPy twins written here.

Oracles: float64 loops over items, classes and pairs; `np.linalg.pinv` / `np.linalg.inv` for
the regression; finite differences and the hand-derived 2(H − B)/N for the gradients; a
scatter-form loop for PyTorch's ConvTranspose2d; brute-force Hamming search.
"""

import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from dpq_jax import config_lib, parallel, registry
from dpq_jax.losses import gaussian_center as gc
from dpq_jax.methods import dcdh
from dpq_jax.models.backbones import dfh_net

CONFIGS = os.path.join(os.path.dirname(__file__), "..", "..", "configs")
pytestmark = pytest.mark.usefixtures("fast_compile")


# --- NumPy twins -------------------------------------------------------------------------------
def sgn(x):
    """sgn(0) = −1 (the 0 bit)."""
    return np.where(np.asarray(x) > 0, 1.0, -1.0)


def onehot(labels, c):
    labels = np.asarray(labels)
    if labels.ndim == 2:
        return (labels > 0).astype(np.float64)
    y = np.zeros((len(labels), c))
    y[np.arange(len(labels)), labels] = 1.0
    return y


def center_loss_twin(h, mu, labels, sigma):
    """−mean_i (mean over i's labels) log p(c|h_i), p ∝ exp(−σ/2 ‖h − μ_c‖²), with loops."""
    h, mu = np.asarray(h, np.float64), np.asarray(mu, np.float64)
    y = onehot(labels, mu.shape[0])
    total = 0.0
    for i in range(h.shape[0]):
        e = [np.exp(-0.5 * sigma * np.sum((h[i] - mu[c]) ** 2)) for c in range(mu.shape[0])]
        logp = [np.log(v / sum(e)) for v in e]
        n = y[i].sum()
        total += -sum(y[i, c] * logp[c] for c in range(mu.shape[0])) / max(n, 1.0)
    return total / h.shape[0]


def separation_twin(mu):
    mu = np.asarray(mu, np.float64)
    c, k = mu.shape
    total = 0.0
    for i in range(c):
        for j in range(c):
            if i != j:
                cos = mu[i] @ mu[j] / (np.linalg.norm(mu[i]) * np.linalg.norm(mu[j]))
                total += np.log1p(np.exp(0.5 * k * cos))
    return total / (c * (c - 1))


def regression_twin(h, labels, c, eta, ridge=0.0):
    """(W, B, Lq) with NumPy's pinv (ridge 0) or inverse of YᵀY + λI."""
    h = np.asarray(h, np.float64)
    y = onehot(labels, c)
    gram = y.T @ y
    inv = np.linalg.pinv(gram) if ridge == 0 else np.linalg.inv(gram + ridge * np.eye(c))
    w = inv @ y.T @ sgn(h)
    b = sgn(y @ w + eta * h)
    return w, b, np.sum((h - b) ** 2) / h.shape[0]


def deconv_twin(x, kernel, bias):
    """PyTorch ConvTranspose2d(k=3, stride=2, padding=1, output_padding=1) in scatter form,
    `out[2i + a − 1] += x[i] w[a]`, with w = the flax kernel flipped."""
    x = np.asarray(x, np.float64)
    w = np.asarray(kernel, np.float64)[::-1, ::-1]
    n, h, wd, _ = x.shape
    out = np.zeros((n, 2 * h, 2 * wd, w.shape[-1]))
    for i in range(h):
        for j in range(wd):
            for a in range(3):
                for b in range(3):
                    oi, oj = 2 * i + a - 1, 2 * j + b - 1
                    if 0 <= oi < 2 * h and 0 <= oj < 2 * wd:
                        out[:, oi, oj] += x[:, i, j] @ w[a, b]
    return out + np.asarray(bias)


def _finite_difference(fn, x, eps=1e-4):
    grad = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        up, down = x.copy(), x.copy()
        up[idx] += eps
        down[idx] -= eps
        grad[idx] = (fn(up) - fn(down)) / (2 * eps)
    return grad


def _data(n=10, k=6, c=5, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, k)), rng.normal(size=(c, k)), rng.integers(0, c, size=n)


# --- L1: the Gaussian-softmax centre loss --------------------------------------------------------
@pytest.mark.parametrize("multi_label", [False, True])
def test_center_loss_values_and_gradients(multi_label):
    h, mu, labels = _data()
    if multi_label:
        labels = (np.random.default_rng(1).random((10, 5)) < 0.4).astype(np.int32)
        labels[0] = 0  # an item without labels contributes 0
    sigma = 0.25

    def fn(h_, mu_):
        return gc.gaussian_center_loss(h_, mu_, jnp.asarray(labels), sigma=sigma)

    value = fn(jnp.asarray(h, jnp.float32), jnp.asarray(mu, jnp.float32))
    np.testing.assert_allclose(float(value), center_loss_twin(h, mu, labels, sigma), rtol=1e-5)
    gh, gmu = jax.grad(fn, argnums=(0, 1))(
        jnp.asarray(h, jnp.float32), jnp.asarray(mu, jnp.float32)
    )
    np.testing.assert_allclose(
        np.asarray(gh),
        _finite_difference(lambda x: center_loss_twin(x, mu, labels, sigma), h),
        rtol=1e-4,
        atol=1e-6,
    )
    np.testing.assert_allclose(
        np.asarray(gmu),
        _finite_difference(lambda x: center_loss_twin(h, x, labels, sigma), mu),
        rtol=1e-4,
        atol=1e-6,
    )


def test_center_loss_is_stable_far_from_every_centre():
    """‖h‖ huge: the ‖h‖² term cancels exactly, no overflow to inf/NaN."""
    h = np.asarray([[300.0, -200.0]])
    mu = np.asarray([[1.0, 0.0], [0.0, 1.0]])
    value = gc.gaussian_center_loss(jnp.asarray(h), jnp.asarray(mu), jnp.asarray([1]), sigma=0.25)
    # log p(1|h) = logits_1 - logsumexp; the logits differ by σ/2 · 2·(h·(μ1 − μ0)) = 125.
    np.testing.assert_allclose(float(value), 125.0 + np.log1p(np.exp(-125.0)), rtol=1e-6)


# --- L2: centre separation -----------------------------------------------------------------------
def test_separation_values_and_gradients():
    _, mu, _ = _data(c=5, k=6)
    value = gc.center_separation(jnp.asarray(mu, jnp.float32))
    np.testing.assert_allclose(float(value), separation_twin(mu), rtol=1e-5)
    grad = jax.grad(gc.center_separation)(jnp.asarray(mu, jnp.float32))
    np.testing.assert_allclose(
        np.asarray(grad), _finite_difference(separation_twin, mu), rtol=1e-4, atol=1e-6
    )
    assert float(gc.center_separation(jnp.ones((1, 6)))) == 0.0  # one centre: no pairs


# --- Lq: regression targets ----------------------------------------------------------------------
def test_regression_with_absent_classes_matches_numpy_pinv():
    rng = np.random.default_rng(2)
    h = rng.normal(size=(9, 7))
    labels = np.asarray([0, 2, 2, 3, 0, 3, 3, 2, 0])  # classes 1, 4, 5 absent
    for ridge in (0.0, 1.0):
        _, b_want, q_want = regression_twin(h, labels, 6, 0.01, ridge)
        q, b = gc.regression_quantization(
            jnp.asarray(h, jnp.float32), jnp.asarray(labels), num_classes=6, eta=0.01, ridge=ridge
        )
        np.testing.assert_array_equal(np.asarray(b), b_want)
        np.testing.assert_allclose(float(q), q_want, rtol=1e-5)
    # pinv(YᵀY) of the one-hot closed form: 1/n_c for present classes, 0 for absent ones.
    w, _, _ = regression_twin(h, labels, 6, 0.01)
    np.testing.assert_allclose(w[[1, 4, 5]], 0.0)
    np.testing.assert_allclose(w[0], sgn(h[labels == 0]).mean(0))


def test_regression_multi_hot_rank_deficient_matches_numpy_pinv():
    rng = np.random.default_rng(3)
    h = rng.normal(size=(8, 5))
    labels = (rng.random((8, 6)) < 0.5).astype(np.int32)
    labels[:, 4] = 0  # an absent class
    labels[:, 5] = labels[:, 1]  # two identical columns: YᵀY is singular
    _, b_want, q_want = regression_twin(h, labels, 6, 0.01)
    q, b = gc.regression_quantization(
        jnp.asarray(h, jnp.float32), jnp.asarray(labels), num_classes=6, eta=0.01
    )
    np.testing.assert_array_equal(np.asarray(b), b_want)
    np.testing.assert_allclose(float(q), q_want, rtol=1e-5)


def test_sign_of_zero_is_minus_one():
    """Class 0 holds h = [0, .5] in bit 0: the votes sgn = (−1, +1) tie, so B = sgn(η h) =
    (−1, +1); PyTorch's sign(0) = 0 would vote +0.5 and give B = (+1, +1), and a zero target."""
    h = np.asarray([[0.0, 1.0], [0.5, 2.0], [-1.0, 0.0], [-1.0, 0.0]])
    labels = np.asarray([0, 0, 1, 1])
    q, b = gc.regression_quantization(
        jnp.asarray(h, jnp.float32), jnp.asarray(labels), num_classes=2, eta=0.01
    )
    np.testing.assert_array_equal(np.asarray(b), [[-1, 1], [1, 1], [-1, -1], [-1, -1]])
    _, _, q_want = regression_twin(h, labels, 2, 0.01)
    np.testing.assert_allclose(float(q), q_want, rtol=1e-6)
    np.testing.assert_allclose(float(q), (1 + 0 + 0.25 + 1 + 0 + 1 + 0 + 1) / 4)


def test_quantization_gradient_treats_b_as_a_constant():
    h, _, labels = _data(n=12, k=4, c=3, seed=4)
    _, b, _ = regression_twin(h, labels, 3, 0.01)
    grad = jax.grad(
        lambda x: gc.regression_quantization(x, jnp.asarray(labels), num_classes=3, eta=0.01)[0]
    )(jnp.asarray(h, jnp.float32))
    np.testing.assert_allclose(np.asarray(grad), 2 * (h - b) / 12, rtol=1e-5, atol=1e-6)


def test_dcdh_loss_is_the_weighted_sum():
    h, mu, labels = _data(seed=5)
    loss, parts = gc.dcdh_loss(
        jnp.asarray(h, jnp.float32), jnp.asarray(mu, jnp.float32), jnp.asarray(labels)
    )
    want = (
        center_loss_twin(h, mu, labels, 0.25)
        + 0.1 * separation_twin(mu)
        + 0.01 * regression_twin(h, labels, 5, 0.01)[2]
    )
    np.testing.assert_allclose(float(loss), want, rtol=1e-5)
    assert set(parts) == {"center", "separation", "quantization"}


def test_bad_inputs_are_refused():
    h, mu = jnp.ones((4, 6)), jnp.ones((3, 6))
    with pytest.raises(ValueError, match="labels have 3 rows"):
        gc.gaussian_center_loss(h, mu, jnp.zeros(3, jnp.int32))
    with pytest.raises(ValueError, match="code length"):
        gc.gaussian_center_loss(h, jnp.ones((3, 5)), jnp.zeros(4, jnp.int32))
    with pytest.raises(ValueError, match=r"must lie in \[0, 3\)"):
        gc.regression_quantization(h, jnp.asarray([0, 1, 2, 3]), num_classes=3)
    with pytest.raises(ValueError, match="multi-hot with C = 3"):
        gc.gaussian_center_loss(h, mu, jnp.zeros((4, 2), jnp.int32))


# --- the net -------------------------------------------------------------------------------------
def test_deconvolution_is_pytorch_conv_transpose():
    rng = np.random.default_rng(6)
    layer = dfh_net._deconv(3, 2, jnp.float32, nnx.Rngs(0))
    layer.bias[...] = jnp.asarray(rng.normal(size=2), jnp.float32)
    x = rng.normal(size=(2, 4, 3, 3)).astype(np.float32)
    want = deconv_twin(x, layer.kernel[...], layer.bias[...])
    np.testing.assert_allclose(np.asarray(layer(jnp.asarray(x))), want, rtol=1e-5, atol=1e-5)


def test_full_width_net_is_the_reference_at_32x32():
    net = nnx.eval_shape(lambda: dfh_net.DFHNet(3, rngs=nnx.Rngs(0)))
    assert net.fc.in_features == 2176 and net.fc.out_features == 1024
    assert net.deconvs[2].kernel.shape == (3, 3, 32, 16) and net.mask_conv.kernel.shape[-1] == 3


@pytest.mark.parametrize("hw", [(32, 32), (28, 28), (32, 26)])
def test_net_output_and_mask_shapes(hw):
    net = dfh_net.DFHNet(1, 8, widths=(4, 4, 8, 8), input_hw=hw, rngs=nnx.Rngs(0))
    x = jnp.asarray(np.random.default_rng(7).normal(size=(3, *hw, 1)), jnp.float32)
    out, mask = jax.jit(lambda m, x: (m(x), m.attention_mask(x)))(net, x)
    assert out.shape == (3, 8) and out.dtype == jnp.float32 and float(out.min()) >= 0.0
    assert mask.shape == (3, *hw, 3) and 0.0 < float(mask.min()) and float(mask.max()) < 1.0
    (h3, h4), (w3, w4) = dfh_net.feature_sizes(hw[0]), dfh_net.feature_sizes(hw[1])
    assert net.fc.in_features == h3 * w3 * 8 + h4 * w4 * 8


def test_net_refuses_small_or_mismatched_inputs():
    with pytest.raises(ValueError, match="at least 24"):
        dfh_net.DFHNet(1, 8, widths=(4, 4, 8, 8), input_hw=(20, 32), rngs=nnx.Rngs(0))
    net = dfh_net.DFHNet(1, 8, widths=(4, 4, 8, 8), input_hw=(28, 28), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="input_hw"):
        net(jnp.ones((2, 32, 32, 1)))


# --- the method ----------------------------------------------------------------------------------
def _model_cfg(bits=(4, 8), **extra):
    return ml_collections.ConfigDict(
        {
            "backbone": {"name": "dfh_net", "widths": (4, 4, 4, 4), "input_hw": (26, 24)},
            "features": 8,
            "bits": bits,
            "dtype": "float32",
            **extra,
        }
    )


LOSS_CFG = ml_collections.ConfigDict(
    {
        "sigma": 0.25,
        "separation_weight": 0.1,
        "quantization_weight": 0.01,
        "eta": 0.01,
        "ridge": 0.0,
    }
)


def _batch(n=16):
    rng = np.random.default_rng(8)
    return {
        "image": rng.normal(size=(n, 26, 24, 1)).astype(np.float32),
        "label": rng.integers(0, 4, size=n).astype(np.int32),  # class 4 of 5 absent
    }


def _build(**extra):
    return dcdh.METHOD.build(_model_cfg(**extra), num_classes=5, in_channels=1, rngs=nnx.Rngs(0))


def test_registered_and_multi_head_loss_is_the_sum_of_twins():
    assert registry.get("method", "dcdh") is dcdh.METHOD
    assert registry.get("backbone", "dfh_net") is dfh_net.DFHNet
    model = _build()
    batch = {k: jnp.asarray(v) for k, v in _batch().items()}
    # One compile: the loss and (BN with the same batch statistics) the heads' codes.
    total, aux, relaxed = jax.jit(
        lambda m, b: (*dcdh.METHOD.loss_fn(m, b, LOSS_CFG), m(b["image"]))
    )(model, batch)
    labels = np.asarray(batch["label"])
    expected = 0.0
    for head, h in zip(model.heads, relaxed, strict=True):
        mu, h = np.asarray(head.centers[...]), np.asarray(h)
        expected += (
            center_loss_twin(h, mu, labels, 0.25)
            + 0.1 * separation_twin(mu)
            + 0.01 * regression_twin(h, labels, 5, 0.01)[2]
        )
    np.testing.assert_allclose(float(total), expected, rtol=1e-4)
    assert {"center_4bit", "quantization_8bit", "center_accuracy_8bit", "bit_balance_4bit"} <= set(
        aux
    )
    assert model.heads[1].centers.shape == (5, 8)
    assert dcdh.METHOD.code_lengths(_model_cfg(48)) == (48,)
    with pytest.raises(ValueError, match="model.encode"):
        _build(encode="centre")


def test_one_and_eight_devices_give_the_same_loss_and_gradients(cpu_devices):
    """The batch-coupled regression gathers the whole batch (on the small `cnn_small` trunk,
    which also shows DCDH takes any registered backbone; DFHNet's backward compiles slowly)."""
    method = dcdh.METHOD
    cfg = _model_cfg()
    cfg.backbone = {"name": "cnn_small", "widths": (4,)}
    graphdef, state = nnx.split(method.build(cfg, num_classes=5, in_channels=1, rngs=nnx.Rngs(0)))

    @jax.jit
    def loss_and_grads(state, batch):
        def loss(params):
            return method.loss_fn(nnx.merge(graphdef, params), batch, LOSS_CFG)[0]

        return jax.value_and_grad(loss)(state)

    batch = _batch()
    loss1, grads1 = loss_and_grads(state, {k: jnp.asarray(v) for k, v in batch.items()})
    mesh = parallel.make_mesh(devices=cpu_devices)
    with jax.set_mesh(mesh):
        loss8, grads8 = loss_and_grads(
            jax.device_put(state, parallel.replicated(mesh)), parallel.put_batch(batch, mesh)
        )
    np.testing.assert_allclose(float(loss8), float(loss1), rtol=1e-5)
    # Float32 reduction order differs across devices and BatchNorm's backward cancels (the
    # gradient of a bias before BN is ~0), so each leaf is compared to its own scale.
    for a, b in zip(jax.tree.leaves(grads1), jax.tree.leaves(grads8), strict=True):
        a, b = np.asarray(a), np.asarray(b)
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-3 * max(np.abs(a).max(), 0.1))


@pytest.mark.parametrize("encode", ["sign", "nearest_center"])
def test_codes_are_sign_bits_or_nearest_centre_and_search_is_brute_force(encode):
    method = dcdh.METHOD
    model = _build(encode=encode)
    model.eval()
    images = jnp.asarray(_batch(12)["image"])
    out, relaxed = jax.jit(lambda m, x: (method.encode_fn(m, x), m(x)))(model, images)
    for head in range(2):
        h = np.asarray(relaxed[head])
        if encode == "nearest_center":
            mu = sgn(model.heads[head].centers[...])
            h = mu[np.argmin((sgn(h)[:, None] != mu[None]).sum(-1), axis=1)]
        np.testing.assert_array_equal(method.database_codes(out, head), (h > 0).astype(np.uint8))
    bits = method.database_codes(out, 1)
    index = method.index(bits, params=None, query_side="hamming")
    dist, ids = index.search(
        method.search_queries(out, head=1, params=None, query_side="hamming"), 12
    )
    brute = (bits[:, None, :] != bits[None, :, :]).sum(-1)
    order = np.argsort(brute, axis=1, kind="stable")
    np.testing.assert_array_equal(np.asarray(dist), np.take_along_axis(brute, order, 1))
    np.testing.assert_array_equal(np.asarray(ids), order)


def test_configs_load_and_name_registered_parts():
    for name, arg, lengths in (
        ("fmnist_dcdh.py", "multihead", (12, 24, 36, 48)),
        ("fmnist_dcdh.py", "bits=24", (24,)),
        ("orl_dcdh.py", "", (48,)),
        ("orl_dcdh.py", "runlocal,multihead", (12, 24, 36, 48)),
        ("faces_seen_dcdh.py", "dataset=youtube_faces", (48,)),
        ("faces_seen_dcdh.py", "runlocal", (48,)),
    ):
        config = config_lib.load_config(os.path.join(CONFIGS, name), arg)
        assert registry.get("method", config.method) is dcdh.METHOD
        assert config.model.backbone.name == "dfh_net"
        registry.get("backbone", config.model.backbone.name)
        assert dcdh.METHOD.code_lengths(config.model) == lengths
