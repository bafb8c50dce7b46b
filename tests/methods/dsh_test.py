"""DSH: the pairwise loss, the LRN trunk and the method, against slow NumPy twins written here.

Oracles: explicit double loops over pairs and pixels in float64, finite differences for the
gradients, and brute-force Hamming ranking.
"""

import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from dpq_jax import config_lib, parallel, registry
from dpq_jax.losses import pairwise
from dpq_jax.methods import dsh
from dpq_jax.models.backbones import dsh_net

CONFIGS = os.path.join(os.path.dirname(__file__), "..", "..", "configs")


# --- NumPy twins -------------------------------------------------------------------------------
def loss_twin(codes, labels, margin, alpha):
    """DSH's loss with a double loop over the unordered pairs (METHODS §5.1)."""
    codes = np.asarray(codes, np.float64)
    n = codes.shape[0]
    total = 0.0
    for i in range(n):
        for j in range(i + 1, n):
            if labels.ndim == 1:
                similar = labels[i] == labels[j]
            else:
                similar = np.any((labels[i] > 0) & (labels[j] > 0))
            d = np.sum((codes[i] - codes[j]) ** 2)
            total += d if similar else max(0.0, margin - d)
    reg = np.mean([np.sum(np.abs(np.abs(b) - 1.0)) for b in codes])
    return total / (n * (n - 1)) + alpha * reg


def lrn_twin(x, size, alpha, beta):
    """Caffe's WITHIN_CHANNEL LRN with explicit loops over pixels and the window."""
    x = np.asarray(x, np.float64)
    out = np.empty_like(x)
    b, h, w, c = x.shape
    half = size // 2
    for n in range(b):
        for ch in range(c):
            for i in range(h):
                for j in range(w):
                    s = 0.0
                    for di in range(-half, half + 1):
                        for dj in range(-half, half + 1):
                            if 0 <= i + di < h and 0 <= j + dj < w:
                                s += x[n, i + di, j + dj, ch] ** 2
                    out[n, i, j, ch] = x[n, i, j, ch] / (1 + alpha / size**2 * s) ** beta
    return out


def _finite_difference(fn, x, eps=1e-3):
    grad = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        up, down = x.copy(), x.copy()
        up[idx] += eps
        down[idx] -= eps
        grad[idx] = (fn(up) - fn(down)) / (2 * eps)
    return grad


# --- the loss ----------------------------------------------------------------------------------
@pytest.mark.parametrize("multi_label", [False, True])
def test_pairwise_loss_equals_the_pair_loop(multi_label):
    rng = np.random.default_rng(0)
    codes = rng.normal(scale=1.5, size=(9, 6)).astype(np.float32)
    if multi_label:
        labels = (rng.random((9, 4)) < 0.4).astype(np.int32)
    else:
        labels = rng.integers(0, 3, size=9).astype(np.int32)
    margin = 12.0  # 2k: some dissimilar pairs inside the margin, some outside
    loss, parts = pairwise.pairwise_hashing_loss(
        jnp.asarray(codes), jnp.asarray(labels), margin=margin, alpha=0.01
    )
    np.testing.assert_allclose(float(loss), loss_twin(codes, labels, margin, 0.01), rtol=1e-5)
    np.testing.assert_allclose(
        float(parts["regularizer"]),
        loss_twin(codes, labels, margin, 1.0) - loss_twin(codes, labels, margin, 0.0),
        rtol=1e-5,
    )


def test_hinge_inactive_pairs_and_identical_codes_cost_nothing():
    codes = jnp.asarray([[1.0, -1.0], [1.0, -1.0], [-1.0, 1.0]])  # |b| = 1: no regulariser
    labels = jnp.asarray([0, 0, 1])
    # Similar pair at distance 0; dissimilar pairs at distance 8 >= margin 4.
    loss, _ = pairwise.pairwise_hashing_loss(codes, labels, margin=4.0, alpha=0.01)
    assert float(loss) == 0.0
    loss, _ = pairwise.pairwise_hashing_loss(codes, labels, margin=10.0, alpha=0.01)
    np.testing.assert_allclose(float(loss), 2 * (10.0 - 8.0) / 6, rtol=1e-6)


def test_gradients_match_finite_differences():
    rng = np.random.default_rng(1)
    codes = rng.normal(size=(6, 4))
    labels = np.asarray([0, 1, 0, 2, 1, 0])
    grad = jax.grad(
        lambda c: pairwise.pairwise_hashing_loss(c, jnp.asarray(labels), margin=8.0, alpha=0.01)[0]
    )(jnp.asarray(codes, jnp.float32))
    want = _finite_difference(lambda c: loss_twin(c, labels, 8.0, 0.01), codes)
    np.testing.assert_allclose(np.asarray(grad), want, rtol=2e-3, atol=2e-4)


def test_regularizer_gradient_is_alive():
    """The trap of one public port: |1 - sign(b)| has zero gradient. Ours pulls |b| to 1."""
    codes = jnp.asarray([[0.5, -2.0, 1.5], [-0.2, 0.1, 3.0]])
    labels = jnp.asarray([0, 1])
    grad = jax.grad(lambda c: pairwise.pairwise_hashing_loss(c, labels, margin=0.0, alpha=1.0)[0])(
        codes
    )
    c = np.asarray(codes)
    np.testing.assert_allclose(np.asarray(grad), np.sign(c) * np.sign(np.abs(c) - 1) / 2)


def test_bad_batches_are_refused():
    with pytest.raises(ValueError, match="B >= 2"):
        pairwise.pairwise_hashing_loss(jnp.ones((1, 4)), jnp.zeros(1), margin=8.0, alpha=0.01)
    with pytest.raises(ValueError, match="labels have 3 rows"):
        pairwise.pairwise_hashing_loss(jnp.ones((4, 4)), jnp.zeros(3), margin=8.0, alpha=0.01)


# --- the net -------------------------------------------------------------------------------------
def test_local_response_norm_equals_the_window_loop():
    x = np.random.default_rng(2).normal(scale=30.0, size=(2, 5, 4, 3)).astype(np.float32)
    out = dsh_net.local_response_norm(jnp.asarray(x), size=3, alpha=5e-2, beta=0.75)
    np.testing.assert_allclose(np.asarray(out), lrn_twin(x, 3, 5e-2, 0.75), rtol=1e-5)


@pytest.mark.parametrize("hw", [(32, 32), (28, 28), (32, 26)])
def test_dsh_net_shapes_follow_caffe_ceil_pooling(hw):
    net = dsh_net.DSHNet(1, 500, input_hw=hw, rngs=nnx.Rngs(0))
    h, w = hw
    for _ in range(3):
        h, w = int(np.ceil((h - 3) / 2)) + 1, int(np.ceil((w - 3) / 2)) + 1
    assert net.fc.in_features == h * w * 64
    out = net(jnp.ones((2, *hw, 1)))
    assert out.shape == (2, 500) and float(out.min()) >= 0.0  # after the ReLU


# --- the method ----------------------------------------------------------------------------------
def _model_cfg(bits=(4, 8)):
    return ml_collections.ConfigDict(
        {
            "backbone": {"name": "dsh_net", "widths": (4, 4, 8), "input_hw": (16, 16)},
            "features": 16,
            "bits": bits,
            "dtype": "float32",
        }
    )


LOSS_CFG = ml_collections.ConfigDict({"alpha": 0.01, "margin_per_bit": 2.0})


def _batch(n=16):
    rng = np.random.default_rng(3)
    return {
        "image": rng.normal(size=(n, 16, 16, 1)).astype(np.float32),
        "label": rng.integers(0, 3, size=n).astype(np.int32),
    }


def test_registered_by_module_name():
    assert registry.get("method", "dsh") is dsh.METHOD
    assert registry.get("backbone", "dsh_net") is dsh_net.DSHNet
    assert dsh.METHOD.code_type == "binary" and dsh.METHOD.query_sides == ("hamming",)


def test_multi_head_loss_is_the_sum_of_single_head_losses():
    method = dsh.METHOD
    model = method.build(_model_cfg(), num_classes=3, in_channels=1, rngs=nnx.Rngs(0))
    batch = {k: jnp.asarray(v) for k, v in _batch().items()}
    total, aux = method.loss_fn(model, batch, LOSS_CFG)
    relaxed = model(batch["image"])
    expected = sum(
        loss_twin(np.asarray(r), np.asarray(batch["label"]), 2.0 * bits, 0.01)
        for bits, r in zip((4, 8), relaxed, strict=True)
    )
    np.testing.assert_allclose(float(total), expected, rtol=1e-5)
    assert {"loss_pairs_4bit", "loss_pairs_8bit", "bit_balance_8bit"} <= set(aux)
    assert method.code_lengths(_model_cfg()) == (4, 8)
    assert method.code_lengths(_model_cfg(12)) == (12,)
    with pytest.raises(ValueError, match="repeats"):
        method.code_lengths(_model_cfg((8, 8)))


def test_one_and_eight_devices_give_the_same_loss_and_gradients(cpu_devices):
    method = dsh.METHOD
    model = method.build(_model_cfg(), num_classes=3, in_channels=1, rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(model)

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
    for a, b in zip(jax.tree.leaves(grads1), jax.tree.leaves(grads8), strict=True):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-4, atol=1e-6)


def test_codes_search_and_metrics_follow_the_sign_bits():
    method = dsh.METHOD
    model = method.build(_model_cfg(), num_classes=3, in_channels=1, rngs=nnx.Rngs(0))
    model.eval()
    images = jnp.asarray(_batch(12)["image"])
    out = jax.jit(method.encode_fn)(model, images)
    relaxed = model(images)
    for head in range(2):
        want_bits = (np.asarray(relaxed[head]) > 0).astype(np.uint8)
        np.testing.assert_array_equal(method.database_codes(out, head), want_bits)
    # Hamming ranking of the 8-bit head: index search == brute force on the bits.
    bits = method.database_codes(out, 1)
    index = method.index(bits, params=None, ids=np.arange(100, 112), query_side="hamming")
    np.testing.assert_array_equal(method.stored_codes(index), bits)
    dist, ids = index.search(
        method.search_queries(out, head=1, params=None, query_side="hamming"), 12
    )
    brute = (bits[:, None, :] != bits[None, :, :]).sum(-1)
    order = np.argsort(brute, axis=1, kind="stable")
    np.testing.assert_array_equal(np.asarray(dist), np.take_along_axis(brute, order, 1))
    np.testing.assert_array_equal(np.asarray(ids), order + 100)
    # Metrics: the method's score source ranks by the same distances.
    source = method.score_source(out, bits, head=1, params=None, query_side="hamming")
    assert source.kind == "hamming" and source.num_bits == 8


def test_faiss_binary_export_ranks_like_our_search():
    faiss = pytest.importorskip("faiss")
    from dpq_jax.search import faiss_export

    method = dsh.METHOD
    rng = np.random.default_rng(4)
    codes = {"codes": ((rng.random((40, 12)) > 0.5).astype(np.uint8),)}
    index = method.index(method.database_codes(codes, 0), params=None, query_side="hamming")
    fidx = faiss_export.to_faiss_binary(index)
    queries = method.faiss_queries(codes, head=0, params=None, query_side="hamming")
    fdist, _ = fidx.search(queries, 5)
    dist, _ = index.search(
        method.search_queries(codes, head=0, params=None, query_side="hamming"), 5
    )
    np.testing.assert_array_equal(fdist, np.asarray(dist))
    del faiss


def test_configs_load_and_name_registered_parts():
    for arg in ("bits=12", "multihead", "runlocal"):
        config = config_lib.load_config(os.path.join(CONFIGS, "fmnist_dsh.py"), arg)
        assert registry.get("method", config.method) is dsh.METHOD
        registry.get("backbone", config.model.backbone.name)
    config = config_lib.load_config(os.path.join(CONFIGS, "fmnist_dsh.py"), "multihead")
    assert dsh.METHOD.code_lengths(config.model) == (12, 24, 36, 48)
    config = config_lib.load_config(os.path.join(CONFIGS, "orl_dsh.py"), "")
    assert dsh.METHOD.code_lengths(config.model) == (48,)
