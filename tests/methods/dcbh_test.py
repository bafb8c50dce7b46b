"""DCBH: the block hash, the centre loss and its explicit update, the DCBH net and the method,
against slow NumPy twins written here.

Oracles: per-block loops in float64 with the hand-derived block-hash gradient (ties split
equally, as TF's `reduce_max` gradient), finite differences, per-class loops and the
reference's `scatter_sub` for the centre update, a loop-and-pad NumPy forward pass of the
trunk, and brute-force recomputation of every loss term from the model's outputs.
"""

import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from dpq_jax import config_lib, parallel, registry
from dpq_jax.losses import center
from dpq_jax.methods import dcbh
from dpq_jax.models.backbones import dcbh_net
from dpq_jax.quantizers import block_hash as bh

pytestmark = pytest.mark.usefixtures("fast_compile")
CONFIGS = os.path.join(os.path.dirname(__file__), "..", "..", "configs")


# --- NumPy twins -------------------------------------------------------------------------------
def softmax_twin(z):
    e = np.exp(z - z.max())
    return e / e.sum()


def block_hash_twin(f, bits, L=6, bias=0.5):
    """h[b, i] = tanh(max softmax(block i) − bias), one block at a time."""
    f = np.asarray(f, np.float64)
    out = np.empty((f.shape[0], bits))
    for b in range(f.shape[0]):
        for i in range(bits):
            out[b, i] = np.tanh(softmax_twin(f[b, i * L : (i + 1) * L]).max() - bias)
    return out


def block_hash_vjp_twin(f, bits, cotangent, L=6, bias=0.5):
    """d(Σ g·h)/df: the max's gradient to the arg-max softmax entries (split over exact ties),
    then the softmax Jacobian p_k (δ_kj − p_j) onto every logit of the block."""
    f = np.asarray(f, np.float64)
    grad = np.zeros_like(f)
    for b in range(f.shape[0]):
        for i in range(bits):
            z = f[b, i * L : (i + 1) * L]
            p = softmax_twin(z)
            ties = np.flatnonzero(z == z.max())  # equal logits <=> equal probabilities
            h = np.tanh(p.max() - bias)
            d_peak = cotangent[b, i] * (1.0 - h**2)
            for j in range(L):
                grad[b, i * L + j] = d_peak * sum(
                    p[k] * ((k == j) - p[j]) / len(ties) for k in ties
                )
    return grad


def center_loss_twin(f, y, c, reduction="sum"):
    total = sum(0.5 * np.sum((f[b] - c[y[b]]) ** 2) for b in range(len(y)))
    return total if reduction == "sum" else total / len(y)


def center_delta_twin(f, y, c):
    """Δc_j = Σ_{i: y_i=j} (c_j − f_i) / (1 + n_j), one class at a time."""
    delta = np.zeros_like(np.asarray(c, np.float64))
    for j in range(c.shape[0]):
        members = [i for i in range(len(y)) if y[i] == j]
        for i in members:
            delta[j] += (c[j] - f[i]) / (1 + len(members))
    return delta


def reference_scatter_sub(f, y, c):
    """The reference's `C_loss` update: scatter_sub of (c_y − f)/(1 + n_y), duplicates summed."""
    counts = np.bincount(y, minlength=c.shape[0])
    out = np.array(c, np.float64)
    np.subtract.at(out, y, (c[y] - f) / (1 + counts[y])[:, None])
    return out


def cross_entropy_twin(logits, y):
    logits = np.asarray(logits, np.float64)
    return np.mean([np.log(np.sum(np.exp(row - row.max()))) + row.max() - row[t]
                    for row, t in zip(logits, y)])  # fmt: skip


def conv3x3_same_twin(x, w):
    """SAME 3×3 cross-correlation, zero padding, no bias: x [B,H,W,Cin], w [3,3,Cin,Cout]."""
    b, h, wd, _ = x.shape
    pad = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    out = np.zeros((b, h, wd, w.shape[-1]))
    for di in range(3):
        for dj in range(3):
            out += np.einsum("bhwc,co->bhwo", pad[:, di : di + h, dj : dj + wd], w[di, dj])
    return out


def max_pool_ceil_twin(x):
    """2×2, stride 2, ceil mode: windows cut at the border take the max of what is inside."""
    b, h, w, c = x.shape
    out = np.empty((b, -(-h // 2), -(-w // 2), c))
    for i in range(out.shape[1]):
        for j in range(out.shape[2]):
            out[:, i, j] = x[:, 2 * i : 2 * i + 2, 2 * j : 2 * j + 2].max(axis=(1, 2))
    return out


def _finite_difference(fn, x, eps=1e-4):
    grad = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        up, down = x.copy(), x.copy()
        up[idx] += eps
        down[idx] -= eps
        grad[idx] = (fn(up) - fn(down)) / (2 * eps)
    return grad


# --- block hash ----------------------------------------------------------------------------------
def _descriptors(seed=0, batch=3, bits=4):
    return np.random.default_rng(seed).normal(scale=2.0, size=(batch, bits * 6))


def test_block_hash_value_and_gradient_match_the_twin():
    f = _descriptors()
    g = np.random.default_rng(1).normal(size=(3, 4))
    h, vjp = jax.vjp(lambda x: bh.block_hash(x, 4), jnp.asarray(f, jnp.float32))
    np.testing.assert_allclose(np.asarray(h), block_hash_twin(f, 4), rtol=1e-5, atol=1e-6)
    grad = np.asarray(vjp(jnp.asarray(g, jnp.float32))[0])
    np.testing.assert_allclose(grad, block_hash_vjp_twin(f, 4, g), rtol=1e-4, atol=1e-6)
    # Away from ties the layer is smooth: finite differences of the twin agree too.
    fd = _finite_difference(lambda x: np.sum(g * block_hash_twin(x, 4)), f)
    np.testing.assert_allclose(grad, fd, rtol=1e-3, atol=1e-6)


def test_gradient_flows_through_the_arg_max_softmax_entry_only():
    # One block, arg-max logit 0. The gradient is the arg-max row of the softmax Jacobian:
    # every logit of the block moves (not only the arg-max one), no other block does, and it
    # differs from the gradient of the sum or mean of the softmax (which is zero).
    f = np.zeros((1, 12))
    f[0, :6] = [3.0, 1.0, 0.5, -1.0, 0.0, 2.0]
    f[0, 6:] = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]
    grad = np.asarray(jax.grad(lambda x: bh.block_hash(x, 2)[0, 0])(jnp.asarray(f, jnp.float32)))
    p = softmax_twin(f[0, :6])
    h = np.tanh(p[0] - 0.5)
    want = (1 - h**2) * p[0] * (np.eye(6)[0] - p)
    np.testing.assert_allclose(grad[0, :6], want, rtol=1e-5, atol=1e-7)
    assert np.all(grad[0, 6:] == 0.0)
    assert grad[0, 0] > 0 and np.all(grad[0, 1:6] < 0)


@pytest.mark.parametrize(
    "block",
    [
        [2.0, 2.0, 0.0, 0.0, -1.0, 0.0],  # two tied maxima: the gradient is split between them
        [1.0, 1.0, 1.0, 1.0, 1.0, 1.0],  # a flat block: split six ways, which sums to zero
        [0.0, 0.0, 0.0, 0.0, 0.0, 5.0],  # five tied non-maxima: no tie at the max
    ],
)
def test_ties_split_the_gradient_like_reduce_max(block):
    f = np.asarray([block + [0.3, -0.2, 0.0, 0.9, 0.1, 0.0]])
    g = np.asarray([[1.0, -0.5]])
    h, vjp = jax.vjp(lambda x: bh.block_hash(x, 2), jnp.asarray(f, jnp.float32))
    np.testing.assert_allclose(np.asarray(h), block_hash_twin(f, 2), rtol=1e-6)
    grad = np.asarray(vjp(jnp.asarray(g, jnp.float32))[0])
    np.testing.assert_allclose(grad, block_hash_vjp_twin(f, 2, g), rtol=1e-5, atol=1e-7)
    if block[0] == block[1] == 2.0:
        assert grad[0, 0] == grad[0, 1] > 0  # not all to the first arg-max (one-hot argmax)


def test_range_and_bits():
    lo, hi = bh.code_range(6)
    np.testing.assert_allclose((lo, hi), (np.tanh(1 / 6 - 0.5), np.tanh(0.5)))
    f = np.random.default_rng(2).normal(scale=10.0, size=(64, 8 * 6))
    h = np.asarray(bh.block_hash(jnp.asarray(f, jnp.float32), 8))
    # tanh(1/2) is the supremum; in float32 a saturated softmax peak (p* = 1.0f) reaches it.
    assert h.min() >= lo - 1e-7 and h.max() <= np.float32(hi)
    flat = np.asarray(bh.block_hash(jnp.zeros((2, 12)), 2))
    np.testing.assert_allclose(flat, lo, rtol=1e-6)  # a dead (all-zero) block: bit 0
    assert np.all(flat < 0)
    # The bit is on exactly when the block's softmax peak exceeds 1/2.
    peaks = np.asarray([[softmax_twin(r[i * 6 : (i + 1) * 6]).max() for i in range(8)] for r in f])
    np.testing.assert_array_equal(h > 0, peaks > 0.5)


def test_block_hash_refuses_bad_shapes():
    with pytest.raises(ValueError, match=r"bits·L\] = \[B, 24\]"):
        bh.block_hash(jnp.zeros((2, 20)), 4)
    with pytest.raises(ValueError, match="at least 2"):
        bh.block_hash(jnp.zeros((2, 4)), 4, block_size=1)


# --- centre loss and update -----------------------------------------------------------------------
def _center_case(seed=3):
    rng = np.random.default_rng(seed)
    f = rng.normal(size=(10, 5))
    y = np.asarray([0, 2, 2, 0, 3, 2, 0, 3, 2, 2])  # class 1 is absent; uneven counts
    c = rng.normal(size=(4, 5))
    return f, y, c


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_center_loss_value_and_gradients(reduction):
    f, y, c = _center_case()

    def fn(f_, c_):
        return center.center_loss(f_, jnp.asarray(y), c_, reduction=reduction)

    value, (gf, gc) = jax.value_and_grad(fn, argnums=(0, 1))(
        jnp.asarray(f, jnp.float32), jnp.asarray(c, jnp.float32)
    )
    np.testing.assert_allclose(float(value), center_loss_twin(f, y, c, reduction), rtol=1e-5)
    scale = 1.0 if reduction == "sum" else 1.0 / len(y)
    np.testing.assert_allclose(np.asarray(gf), scale * (f - c[y]), rtol=1e-5, atol=1e-6)
    want_gc = np.zeros_like(c)
    np.add.at(want_gc, y, -scale * (f - c[y]))
    np.testing.assert_allclose(np.asarray(gc), want_gc, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="reduction"):
        center.center_loss(jnp.asarray(f), jnp.asarray(y), jnp.asarray(c), reduction="max")


def test_center_update_matches_the_loop_and_the_reference_scatter_sub():
    f, y, c = _center_case()
    delta = np.asarray(
        center.center_delta(
            jnp.asarray(f, jnp.float32), jnp.asarray(y), jnp.asarray(c, jnp.float32)
        )
    )
    np.testing.assert_allclose(delta, center_delta_twin(f, y, c), rtol=1e-5, atol=1e-6)
    assert np.all(delta[1] == 0.0)  # an absent class does not move
    updated = np.asarray(center.update_centers(jnp.asarray(c), jnp.asarray(delta), alpha=1.0))
    np.testing.assert_allclose(updated, reference_scatter_sub(f, y, c), rtol=1e-5, atol=1e-6)
    half = np.asarray(center.update_centers(jnp.asarray(c), jnp.asarray(delta), alpha=0.5))
    np.testing.assert_allclose(half, c - 0.5 * delta, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="single-label"):
        center.center_delta(jnp.zeros((4, 5)), jnp.zeros((4, 2), jnp.int32), jnp.zeros((3, 5)))


# --- the DCBH net ---------------------------------------------------------------------------------
def test_dcbh_net_widths_and_features_argument():
    assert dcbh_net.output_width(1.0) == 768 and dcbh_net.output_width(0.25) == 192
    assert dcbh_net.stage_widths(0.25)[-1] == (128, 128, 128)
    for features in (None, 0, 24):
        net = nnx.eval_shape(
            lambda f=features: dcbh_net.DCBHNet(1, f, width=1 / 32, rngs=nnx.Rngs(0))
        )
        assert net.features == 24
    with pytest.raises(ValueError, match="set model.features to 0"):
        nnx.eval_shape(lambda: dcbh_net.DCBHNet(1, 500, width=1 / 32, rngs=nnx.Rngs(0)))
    # SAME (ceil) pooling: 28 -> 14 -> 7 -> 4 -> 2; 32x26 -> ... -> 2x2; a 3x3 map -> 2x2.
    sizes = [28]
    for _ in range(4):
        sizes.append(dcbh_net.pooled_size(sizes[-1]))
    assert sizes == [28, 14, 7, 4, 2] and dcbh_net.pooled_size(3) == 2


def test_dcbh_net_forward_equals_the_numpy_twin():
    """Layout, ceil pooling, branch A after stage 3 and the concat order, on an odd 7x5 input
    (7x5 -> 4x3 -> 2x2 -> 1x1 -> 1x1), in eval mode with non-trivial BN statistics."""
    net = dcbh_net.DCBHNet(2, width=1 / 32, rngs=nnx.Rngs(0))
    rng = np.random.default_rng(5)
    for norm in net.norms:  # make BN an arbitrary per-channel affine map
        n = norm.mean[...].shape[0]
        norm.mean[...] = jnp.asarray(rng.normal(size=n), jnp.float32)
        norm.var[...] = jnp.asarray(rng.uniform(0.5, 2.0, size=n), jnp.float32)
        norm.scale[...] = jnp.asarray(rng.uniform(0.5, 1.5, size=n), jnp.float32)
        norm.bias[...] = jnp.asarray(rng.normal(size=n), jnp.float32)
    net.eval()
    x = rng.normal(size=(2, 7, 5, 2))
    out = np.asarray(nnx.jit(lambda m, x: m(x))(net, jnp.asarray(x, jnp.float32)))

    a, layer, branch_a = x, 0, None
    for stage, size in enumerate((2, 2, 3, 3)):
        for _ in range(size):
            conv, norm = net.convs[layer], net.norms[layer]
            a = conv3x3_same_twin(a, np.asarray(conv.kernel[...], np.float64))
            a = (a - np.asarray(norm.mean[...])) / np.sqrt(np.asarray(norm.var[...]) + 1e-5)
            a = np.maximum(a * np.asarray(norm.scale[...]) + np.asarray(norm.bias[...]), 0.0)
            layer += 1
        a = max_pool_ceil_twin(a)
        if stage == 2:
            branch_a = a.mean(axis=(1, 2))
    want = np.concatenate([a.mean(axis=(1, 2)), branch_a], axis=1)
    assert out.shape == (2, 24) and out.dtype == np.float32
    np.testing.assert_allclose(out, want, rtol=1e-4, atol=1e-5)
    assert net.convs[0].bias is None  # convs have no bias


@pytest.mark.parametrize("hw", [(28, 28), (32, 26), (32, 32)])
def test_dcbh_net_runs_on_the_protocol_sizes(hw):
    net = nnx.eval_shape(lambda: dcbh_net.DCBHNet(1, width=1 / 32, rngs=nnx.Rngs(0)))
    out = jax.eval_shape(lambda m, x: m(x), net, jax.ShapeDtypeStruct((2, *hw, 1), jnp.float32))
    assert out.shape == (2, 24)


# --- the method ----------------------------------------------------------------------------------
NUM_CLASSES = 4


def _model_cfg(bits=(2, 4), backbone=None):
    return ml_collections.ConfigDict(
        {
            "backbone": backbone or {"name": "dcbh_net", "width": 1 / 32},
            "features": 0,
            "bits": bits,
            "block_size": 6,
            "dtype": "float32",
        }
    )


def _loss_cfg(**overrides):
    cfg = dict(
        quant_weight=0.1,
        quant_target=0.5,
        center_weight=1e-4,
        center_reduction="sum",
        center_update=True,
        center_alpha=1.0,
        weight_decay=2e-4,
    )
    cfg.update(overrides)
    return ml_collections.ConfigDict(cfg)


def _batch(n=16, seed=6):
    rng = np.random.default_rng(seed)
    return {
        "image": rng.normal(size=(n, 8, 8, 1)).astype(np.float32),
        "label": rng.integers(0, NUM_CLASSES - 1, size=n).astype(np.int32),  # class 3 absent
    }


def _build(cfg=None, seed=0):
    return dcbh.METHOD.build(
        cfg or _model_cfg(), num_classes=NUM_CLASSES, in_channels=1, rngs=nnx.Rngs(seed)
    )


def test_registered_by_module_name():
    assert registry.get("method", "dcbh") is dcbh.METHOD
    assert registry.get("backbone", "dcbh_net") is dcbh_net.DCBHNet
    assert dcbh.METHOD.code_type == "binary" and dcbh.METHOD.query_sides == ("hamming",)
    assert dcbh.METHOD.code_lengths(_model_cfg()) == (2, 4)


def _params(model):
    return {path: np.array(v[...]) for path, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


# (reduction, quant_target, center_update, alpha) of the loss configs the fixture runs, in order.
LOSS_VARIANTS = (("sum", 0.5, False, 1.0), ("mean", 1.0, True, 0.7))


@pytest.fixture(scope="module")
def forward():
    """One jitted pass on a tiny DCBH net (one compile for every test below): the outputs, the
    loss of each `LOSS_VARIANTS` config (in order, on the same pre-step centres), the stash
    after the first (no update) and the last config, then `after_update`."""
    method = dcbh.METHOD
    model = _build()
    batch = {k: jnp.asarray(v) for k, v in _batch().items()}
    before = _params(model)
    cfgs = [
        _loss_cfg(center_reduction=r, quant_target=t, center_update=u, center_alpha=a)
        for r, t, u, a in LOSS_VARIANTS
    ]

    @nnx.jit
    def run(model, batch):
        outs = model(batch["image"])  # train mode: batch statistics, as inside loss_fn
        losses, stashes = [], []
        for cfg in cfgs:
            losses.append(method.loss_fn(model, batch, cfg))
            stashes.append(tuple(head.center_step[...] for head in model.heads))
        method.after_update(model)
        return outs, losses, stashes

    outs, losses, stashes = run(model, batch)
    return dict(
        model=model, labels=np.asarray(batch["label"]), before=before, outs=outs,
        losses=losses, stashes=stashes,
    )  # fmt: skip


@pytest.mark.parametrize("variant", [0, 1])
def test_loss_equals_the_numpy_recomputation_of_its_parts(forward, variant):
    reduction, quant_target, _, _ = LOSS_VARIANTS[variant]
    model, y, before = forward["model"], forward["labels"], forward["before"]
    total, aux = forward["losses"][variant]
    want = 0.0
    for i, (head, out) in enumerate(zip(model.heads, forward["outs"], strict=True)):
        f = np.asarray(out.descriptor, np.float64)
        h = block_hash_twin(f, head.bits)
        np.testing.assert_allclose(np.asarray(out.codes), h, rtol=1e-5, atol=1e-6)
        w, b = (
            before[("heads", i, "hash_classifier", "kernel")],
            before[("heads", i, "hash_classifier", "bias")],
        )
        np.testing.assert_allclose(np.asarray(out.hash_logits), h @ w + b, rtol=1e-4, atol=1e-5)
        parts = {
            "ce_hash": cross_entropy_twin(out.hash_logits, y),
            "ce_descriptor": cross_entropy_twin(out.descriptor_logits, y),
            "quantization": np.mean(np.abs(quant_target - np.abs(h))),
            "center": center_loss_twin(f, y, before[("heads", i, "centers")], reduction),
        }
        for name, value in parts.items():
            np.testing.assert_allclose(float(aux[f"{name}_{head.bits}bit"]), value, rtol=1e-4)
        want += (
            parts["ce_hash"]
            + parts["ce_descriptor"]
            + 0.1 * parts["quantization"]
            + 1e-4 * parts["center"]
        )
    kernels = [np.asarray(v, np.float64) for path, v in before.items() if path[-1] == "kernel"]
    assert len(kernels) == 10 + 3 * 2  # the convs, and per head the descriptor + 2 classifiers
    decay = 2e-4 / 2 * sum(np.sum(k**2) for k in kernels)  # TF1 λ·l2_loss = λ/2 Σ w²
    np.testing.assert_allclose(float(aux["weight_decay"]), decay, rtol=1e-5)
    np.testing.assert_allclose(float(total), want + decay, rtol=1e-5)


def test_after_update_moves_the_centers_by_the_explicit_step_and_nothing_else(forward):
    model, y, before = forward["model"], forward["labels"], forward["before"]
    for i, (head, out) in enumerate(zip(model.heads, forward["outs"], strict=True)):
        c0 = before[("heads", i, "centers")]
        step = 0.7 * center_delta_twin(np.asarray(out.descriptor, np.float64), y, c0)
        assert np.all(np.asarray(forward["stashes"][0][i]) == 0.0)  # center_update=False
        np.testing.assert_allclose(forward["stashes"][1][i], step, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(np.asarray(head.centers[...]), c0 - step, rtol=1e-5, atol=1e-7)
        assert np.all(np.asarray(head.centers[...])[3] == c0[3])  # absent class: unchanged
        assert np.all(np.asarray(head.center_step[...]) == 0.0)  # applied once, then cleared
    # Every other Param is untouched by loss_fn + after_update (BN statistics are not Params).
    after = _params(model)
    assert after.keys() == before.keys()
    for path, value in after.items():
        if path[-1] != "centers":
            np.testing.assert_array_equal(value, before[path])


def test_one_and_eight_devices_give_the_same_loss_grads_and_centers(cpu_devices):
    """The batch sharded over 8 devices: the same loss, gradients and explicitly updated
    centres (Δc needs the class counts and sums of the whole batch) as on one device."""
    method = dcbh.METHOD
    cfg = _model_cfg(backbone={"name": "cnn_small", "widths": (4,)})
    cfg.features = 8  # a small trunk: what is new here is the heads, centres and the update
    graphdef, state = nnx.split(_build(cfg))
    cfg = _loss_cfg()

    @jax.jit
    def step(state, batch):
        model = nnx.merge(graphdef, state)
        (loss, _), grads = nnx.value_and_grad(
            lambda m: method.loss_fn(m, batch, cfg), has_aux=True
        )(model)
        method.after_update(model)
        return loss, grads, tuple(head.centers[...] for head in model.heads)

    batch = _batch()
    loss1, grads1, centers1 = step(state, {k: jnp.asarray(v) for k, v in batch.items()})
    mesh = parallel.make_mesh(devices=cpu_devices)
    with jax.set_mesh(mesh):
        loss8, grads8, centers8 = step(
            jax.device_put(state, parallel.replicated(mesh)), parallel.put_batch(batch, mesh)
        )
    np.testing.assert_allclose(float(loss8), float(loss1), rtol=1e-5)
    # float32 reduction order differs across devices (~1e-6); per-device BN statistics or
    # per-device centre counts would be off by O(1).
    for a, b in zip(jax.tree.leaves(grads1), jax.tree.leaves(grads8), strict=True):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-3, atol=1e-5)
    c0 = np.asarray(state["heads"][0]["centers"][...])
    assert np.abs(np.asarray(centers1[0]) - c0).max() > 1e-3  # the update did something
    for a, b in zip(centers1, centers8, strict=True):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-6)


def test_codes_are_the_sign_bits_of_h_and_any_backbone_works():
    method = dcbh.METHOD
    other = {"name": "cnn_small", "widths": (4,)}
    with pytest.raises(ValueError, match="features"):  # 0 = "the trunk's width": dcbh_net only
        nnx.eval_shape(lambda: _build(_model_cfg(backbone=other)))
    cfg = _model_cfg(bits=(4,), backbone=other)
    cfg.features = 8
    model = _build(cfg)
    model.eval()
    images = jnp.asarray(_batch(8)["image"])
    encoded, outs = nnx.jit(lambda m, x: (method.encode_fn(m, x), m(x)))(model, images)
    h = block_hash_twin(np.asarray(outs[0].descriptor, np.float64), 4)
    np.testing.assert_allclose(np.asarray(encoded["relaxed"][0]), h, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(
        method.database_codes(encoded, 0), (np.asarray(encoded["relaxed"][0]) > 0).astype(np.uint8)
    )
    with pytest.raises(ValueError, match="single-label"):
        method.loss_fn(
            model, {"image": images, "label": jnp.zeros((8, NUM_CLASSES), jnp.int32)}, _loss_cfg()
        )
    with pytest.raises(ValueError, match="center_reduction"):
        method.loss_fn(
            model, {"image": images, "label": jnp.zeros(8, jnp.int32)},
            _loss_cfg(center_reduction="avg"),
        )  # fmt: skip


def test_configs_load_and_name_registered_parts():
    for name, arg in (
        ("fmnist_dcbh.py", "bits=12"),
        ("fmnist_dcbh.py", "multihead,width=1.0"),
        ("orl_dcbh.py", ""),
        ("faces_seen_dcbh.py", "dataset=youtube_faces,multihead"),
    ):
        config = config_lib.load_config(os.path.join(CONFIGS, name), arg)
        assert registry.get("method", config.method) is dcbh.METHOD
        registry.get("backbone", config.model.backbone.name)
        assert config.optim.name == "adam" and config.optim.weight_decay == 0.0
    assert dcbh.METHOD.code_lengths(config.model) == (12, 24, 36, 48)
    assert config.model.backbone.width == 1.0 and config.input.dataset == "youtube_faces"
    config = config_lib.load_config(os.path.join(CONFIGS, "fmnist_dcbh.py"), "")
    assert config.model.backbone.width == 0.25 and config.total_steps == 5600
    config = config_lib.load_config(os.path.join(CONFIGS, "orl_dcbh.py"), "")
    assert dcbh.METHOD.code_lengths(config.model) == (48,)
