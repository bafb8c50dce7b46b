"""Tests for dpq_jax.losses against the NumPy twins in losses/reference.py."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from dpq_jax import parallel
from dpq_jax.losses import margin, quantization
from dpq_jax.losses import reference as ref

B, M, C, D_SUB, K = 8, 3, 5, 4, 6


def _data(seed=0):
    rng = np.random.default_rng(seed)
    x_sub = rng.standard_normal((B, M, D_SUB)).astype(np.float32)
    weights = rng.standard_normal((M, C, D_SUB)).astype(np.float32)
    labels = rng.integers(0, C, B).astype(np.int32)
    return x_sub, weights, labels


def test_cosine_logits_matches_reference_and_is_clamped():
    x_sub, weights, _ = _data()
    # Make one sub-vector a positive multiple of a class weight, so its cosine is 1.
    x_sub[0, 1] = 3.0 * weights[1, 2]
    out = margin.cosine_logits(jnp.asarray(x_sub), jnp.asarray(weights))
    assert out.shape == (B, M, C) and out.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(out), ref.cosine_logits(x_sub, weights), atol=1e-6)
    assert float(jnp.max(jnp.abs(out))) <= 1.0
    np.testing.assert_allclose(float(out[0, 1, 2]), 1.0, atol=1e-6)


@pytest.mark.parametrize("scale,m", [(20.0, 0.5), (40.0, 0.35), (1.0, 0.0)])
def test_subspace_cosface_matches_reference(scale, m):
    x_sub, weights, labels = _data(1)
    got = margin.subspace_cosface(
        jnp.asarray(x_sub), jnp.asarray(weights), jnp.asarray(labels), scale=scale, margin=m
    )
    want = ref.subspace_cosface(x_sub, weights, labels, scale=scale, margin=m)
    np.testing.assert_allclose(float(got), want, rtol=1e-5)


def test_subspace_cosface_bf16_input_and_permutation_invariance():
    x_sub, weights, labels = _data(2)
    kw = dict(scale=20.0, margin=0.5)
    base = margin.subspace_cosface(jnp.asarray(x_sub), jnp.asarray(weights), labels, **kw)
    perm = np.random.default_rng(0).permutation(B)
    permuted = margin.subspace_cosface(
        jnp.asarray(x_sub[perm]), jnp.asarray(weights), labels[perm], **kw
    )
    np.testing.assert_allclose(float(base), float(permuted), rtol=1e-6)
    half = margin.subspace_cosface(
        jnp.asarray(x_sub, jnp.bfloat16), jnp.asarray(weights), labels, **kw
    )
    assert half.dtype == jnp.float32
    np.testing.assert_allclose(float(half), float(base), rtol=2e-2)


def test_subspace_cosface_grads_finite():
    x_sub, weights, labels = _data(3)
    x_sub[0, 0] = 0.0  # a zero sub-vector must not give NaN through the normalisation

    def loss(x, w):
        return margin.subspace_cosface(x, w, labels, scale=20.0, margin=0.5)

    grads = jax.grad(loss, argnums=(0, 1))(jnp.asarray(x_sub), jnp.asarray(weights))
    for g in grads:
        assert bool(jnp.all(jnp.isfinite(g)))
    assert float(jnp.abs(grads[1]).max()) > 0


def test_bad_labels_raise():
    x_sub, weights, labels = _data()
    kw = dict(scale=20.0, margin=0.5)
    bad = labels.copy()
    bad[3] = C
    with pytest.raises(ValueError, match=r"\[0, 5\)"):
        margin.subspace_cosface(jnp.asarray(x_sub), jnp.asarray(weights), jnp.asarray(bad), **kw)
    bad[3] = -1
    with pytest.raises(ValueError, match=r"\[0, 5\)"):
        margin.subspace_cosface(jnp.asarray(x_sub), jnp.asarray(weights), bad, **kw)
    with pytest.raises(ValueError, match="integers"):
        margin.subspace_cosface(x_sub, weights, labels.astype(np.float32), **kw)
    with pytest.raises(ValueError, match=r"shape \[B\]"):
        margin.subspace_cosface(x_sub, weights, labels[:-1], **kw)

    # Traced labels cannot be checked; the loss still runs (and is finite) under jit.
    @jax.jit
    def traced(labels):
        return margin.subspace_cosface(x_sub, weights, labels, **kw)

    assert bool(jnp.isfinite(traced(jnp.asarray(bad))))


def test_shape_mismatch_raises():
    x_sub, weights, labels = _data()
    kw = dict(scale=20.0, margin=0.5)
    with pytest.raises(ValueError, match="M and d must agree"):
        margin.subspace_cosface(x_sub, weights[:, :, :3], labels, **kw)
    with pytest.raises(ValueError, match="M and d must agree"):
        margin.cosine_logits(x_sub, weights[:2])
    with pytest.raises(ValueError, match=r"\[B, M, d\]"):
        margin.cosine_logits(x_sub[0], weights)


def test_assignment_entropy_matches_reference():
    rng = np.random.default_rng(4)
    logits = 3.0 * rng.standard_normal((B, M, K))
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    got = quantization.assignment_entropy(jnp.asarray(probs, jnp.float32))
    np.testing.assert_allclose(float(got), ref.assignment_entropy(probs), rtol=1e-5)


def test_assignment_entropy_limits_and_zero_safety():
    uniform = jnp.full((2, M, K), 1.0 / K)
    np.testing.assert_allclose(float(quantization.assignment_entropy(uniform)), np.log(K), 1e-6)
    onehot = jax.nn.one_hot(jnp.zeros((2, M), jnp.int32), K)
    assert float(quantization.assignment_entropy(onehot)) == 0.0
    probs = np.zeros((2, M, K), np.float32)
    probs[..., 0] = 0.5
    probs[..., 1] = 0.5  # exact zeros elsewhere
    value, grad = jax.value_and_grad(quantization.assignment_entropy)(jnp.asarray(probs))
    np.testing.assert_allclose(float(value), np.log(2.0), rtol=1e-6)
    assert bool(jnp.all(jnp.isfinite(grad)))
    np.testing.assert_allclose(np.asarray(grad[..., 2:]), 0.0)
    with pytest.raises(ValueError, match=r"\[B, M, K\]"):
        quantization.assignment_entropy(jnp.ones((2, K)))


def test_losses_same_on_one_and_eight_devices(cpu_devices):
    x_sub, weights, labels = _data(5)
    probs = jax.nn.softmax(jnp.asarray(x_sub[..., :3]), axis=-1)

    def both(x, w, y, p):
        cos = margin.subspace_cosface(x, w, y, scale=20.0, margin=0.5)
        return cos, quantization.assignment_entropy(p)

    single = jax.jit(both)(x_sub, weights, labels, probs)
    mesh = parallel.make_mesh(devices=cpu_devices)
    with jax.set_mesh(mesh):
        batch = parallel.put_batch(dict(x=x_sub, y=labels, p=np.asarray(probs)), mesh)
        w = jax.device_put(weights, parallel.replicated(mesh))
        assert jax.typeof(batch["x"]).sharding.spec == P("data", None, None)
        sharded = jax.jit(both)(batch["x"], w, batch["y"], batch["p"])
    for a, b in zip(single, sharded):
        np.testing.assert_allclose(float(a), float(b), rtol=1e-6)
