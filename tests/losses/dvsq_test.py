"""Tests for DPQ-G's losses (dpq_jax.losses.dvsq) against the NumPy twins in losses/reference.py."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dpq_jax import parallel
from dpq_jax.losses import dvsq
from dpq_jax.losses import reference as ref

pytestmark = pytest.mark.usefixtures("fast_compile")

B, C, D, L = 8, 5, 6, 3


def _data(seed=0):
    rng = np.random.default_rng(seed)
    x = np.tanh(rng.standard_normal((B, D))).astype(np.float32)
    vectors = rng.standard_normal((C, D)).astype(np.float32)
    labels = rng.integers(0, C, B).astype(np.int32)
    multi = (rng.random((B, C)) < 0.4).astype(np.float32)
    multi[0] = 0.0  # an item without labels contributes nothing
    multi[1, :2] = 1.0
    return x, vectors, labels, multi


def _numeric_grad(fn, value, eps=1e-4):
    value = np.asarray(value, np.float64)
    grad = np.zeros_like(value)
    for idx in np.ndindex(value.shape):
        plus, minus = value.copy(), value.copy()
        plus[idx] += eps
        minus[idx] -= eps
        grad[idx] = (fn(plus) - fn(minus)) / (2 * eps)
    return grad


def test_label_margins_match_twin():
    _, vectors, _, _ = _data()
    margins = np.asarray(dvsq.label_margins(jnp.asarray(vectors)))
    np.testing.assert_allclose(margins, ref.label_margins(vectors), atol=1e-6)
    np.testing.assert_array_equal(np.diag(margins), 0.0)  # delta_ii exactly 0
    np.testing.assert_allclose(margins, margins.T, atol=1e-7)
    assert margins.min() >= 0.0 and margins.max() <= 2.0


def test_adaptive_margin_hand_computed():
    """Two orthogonal classes: delta_01 = 1. x = v_0 with label 0 satisfies the margin
    exactly (loss 0); x = v_1 with label 0 pays delta - 0 + 1 = 2, divided by C P = 2."""
    vectors = jnp.array([[1.0, 0.0], [0.0, 1.0]])
    label = jnp.array([0])
    assert float(dvsq.adaptive_margin_loss(jnp.array([[2.0, 0.0]]), vectors, label)) == 0.0
    np.testing.assert_allclose(
        float(dvsq.adaptive_margin_loss(jnp.array([[0.0, 3.0]]), vectors, label)), 1.0
    )


@pytest.mark.parametrize("multi_label", [False, True])
def test_adaptive_margin_matches_twin(multi_label):
    x, vectors, labels, multi = _data(1)
    y = multi if multi_label else labels
    got = jax.jit(dvsq.adaptive_margin_loss)(x, vectors, y)
    np.testing.assert_allclose(float(got), ref.adaptive_margin_loss(x, vectors, y), rtol=1e-5)
    # Explicit margins (e.g. of a word-vector file) are used as given.
    margins = ref.label_margins(vectors) * 0.5
    got = dvsq.adaptive_margin_loss(x, vectors, y, margins=jnp.asarray(margins, jnp.float32))
    want = ref.adaptive_margin_loss(x, vectors, y, margins=margins)
    np.testing.assert_allclose(float(got), want, rtol=1e-5)


def test_adaptive_margin_gradients_treat_margins_as_constants():
    """d/dx and d/dv equal finite differences of the twin with delta held at its value."""
    x, vectors, labels, _ = _data(2)
    fixed = ref.label_margins(vectors)
    grad_x, grad_v = jax.grad(dvsq.adaptive_margin_loss, argnums=(0, 1))(
        jnp.asarray(x), jnp.asarray(vectors), jnp.asarray(labels)
    )
    want_x = _numeric_grad(lambda v: ref.adaptive_margin_loss(v, vectors, labels, fixed), x)
    want_v = _numeric_grad(lambda v: ref.adaptive_margin_loss(x, v, labels, fixed), vectors)
    np.testing.assert_allclose(np.asarray(grad_x), want_x, rtol=1e-3, atol=1e-5)
    np.testing.assert_allclose(np.asarray(grad_v), want_v, rtol=1e-3, atol=1e-5)
    # A gradient through delta would differ: it pulls the classes together.
    through = _numeric_grad(lambda v: ref.adaptive_margin_loss(x, v, labels), vectors)
    assert np.abs(through - want_v).max() > 1e-3


def test_classification_softmax_and_sigmoid_match_twin():
    x, _, labels, multi = _data(3)
    logits = np.random.default_rng(4).standard_normal((B, C)).astype(np.float32) * 3
    np.testing.assert_allclose(
        float(dvsq.classification_loss(logits, labels)),
        ref.classification_loss(logits, labels),
        rtol=1e-5,
    )
    np.testing.assert_allclose(
        float(dvsq.classification_loss(logits, multi)),
        ref.classification_loss(logits, multi),
        rtol=1e-5,
    )


def test_bad_labels_raise():
    x, vectors, labels, _ = _data()
    with pytest.raises(ValueError, match=r"\[0, 5\)"):
        dvsq.adaptive_margin_loss(x, vectors, labels + C)
    with pytest.raises(ValueError, match="multi-hot"):
        dvsq.classification_loss(np.zeros((B, C), np.float32), np.zeros((B, C + 1)))


def _partials(seed=5):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((B, D)).astype(np.float32)
    soft = rng.standard_normal((B, L, D)).astype(np.float32)
    hard = rng.standard_normal((B, L, D)).astype(np.float32)
    return x, soft, hard


def test_distortions_and_joint_central_loss_match_twin():
    x, soft, hard = _partials()
    parts = dvsq.progressive_distortions(x, soft, hard)
    want = ref.progressive_distortions(x, soft, hard)
    for name in ("soft", "hard", "jcl"):
        np.testing.assert_allclose(float(parts[name]), want[name], rtol=1e-5, err_msg=name)
    total, _ = dvsq.quantization_loss(x, soft, hard, tau=2.0, mu=0.5, nu=0.1)
    np.testing.assert_allclose(
        float(total), 2.0 * (want["soft"] + 0.5 * want["hard"] + 0.1 * want["jcl"]), rtol=1e-5
    )
    with pytest.raises(ValueError, match="partial sums"):
        dvsq.progressive_distortions(x, soft, hard[:, :2])


def test_batch_permutation_and_eight_devices(cpu_devices):
    x, vectors, labels, _ = _data(6)
    _, soft, hard = _partials(7)

    def total(x, labels, soft, hard, vectors):
        quant, _ = dvsq.quantization_loss(x, soft, hard)
        return dvsq.adaptive_margin_loss(x, vectors, labels) + quant

    one = float(jax.jit(total)(x, labels, soft, hard, vectors))
    perm = np.random.default_rng(0).permutation(B)
    np.testing.assert_allclose(
        float(total(x[perm], labels[perm], soft[perm], hard[perm], vectors)), one, rtol=1e-6
    )
    mesh = parallel.make_mesh(devices=cpu_devices)
    with jax.set_mesh(mesh):
        batch = parallel.put_batch(dict(x=x, labels=labels, soft=soft, hard=hard), mesh)
        assert len(batch["x"].sharding.device_set) == 8
        eight = jax.jit(total)(
            batch["x"],
            batch["labels"],
            batch["soft"],
            batch["hard"],
            jax.device_put(vectors, parallel.replicated(mesh)),
        )
    np.testing.assert_allclose(float(eight), one, rtol=1e-5)
