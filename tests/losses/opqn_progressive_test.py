"""Tests for Progressive OPQN's loss (dpq_jax.losses.opqn_progressive): the NumPy twin, a
hand-computed case, OPQN's loss at one level, invariance to the batch order."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dpq_jax.losses import opqn_progressive as loss_lib
from dpq_jax.losses import opqn_progressive_reference as ref
from dpq_jax.losses import reference as loss_ref
from dpq_jax.losses.margin import subspace_cosface
from dpq_jax.losses.quantization import assignment_entropy

B, L, M, d, K, C = 6, 3, 2, 4, 5, 3
HYPER = dict(scale=20.0, margin=0.5, entropy_weight=0.1)


def _inputs(seed=0, levels=L):
    rng = np.random.default_rng(seed)
    feats = rng.standard_normal((B, M, d)).astype(np.float32)
    soft = rng.standard_normal((B, levels, M, d)).astype(np.float32)
    logits = rng.standard_normal((B, levels, M, K))
    probs = (np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)).astype(np.float32)
    weights = rng.standard_normal((M, C, d)).astype(np.float32)
    labels = rng.integers(0, C, B).astype(np.int32)
    return feats, soft, probs, weights, labels


def test_matches_numpy_twin():
    args = _inputs()
    total, parts = jax.jit(lambda *a: loss_lib.prefix_margin_loss(*a, **HYPER))(*args)
    want = ref.prefix_margin_loss(*args, **HYPER)
    np.testing.assert_allclose(float(total), want["total"], rtol=1e-5)
    np.testing.assert_allclose(float(parts["raw"]), want["raw"], rtol=1e-5)
    np.testing.assert_allclose(np.asarray(parts["prefixes"]), want["prefixes"], rtol=1e-5)
    np.testing.assert_allclose(float(parts["entropy"]), want["entropy"], rtol=1e-5)


def test_hand_computed_case():
    """M = 1, d = 2, C = 2, W = I, two prefixes, s = 2, m = 0.5, one item of class 0.

    raw x = e_1: cos (1, 0), logits (2(1 - 0.5), 0) = (1, 0), CE = log(1 + e^-1).
    Q_1 = e_2:   cos (0, 1), logits (-1, 2), CE = log(e^-1 + e^2) + 1 = log(1 + e^3).
    Q_2 = e_1 + e_2: cos (c, c), c = 1/sqrt(2), logits (2c - 1, 2c), CE = log(1 + e^1).
    Probabilities: level 1 uniform over K = 2 (H = log 2), level 2 one-hot (H = 0).
    """
    feats = jnp.array([[[1.0, 0.0]]])
    soft = jnp.array([[[[0.0, 1.0]], [[1.0, 1.0]]]])
    probs = jnp.array([[[[0.5, 0.5]], [[1.0, 0.0]]]])
    weights = jnp.eye(2)[None]
    labels = jnp.array([0])
    total, parts = loss_lib.prefix_margin_loss(
        feats, soft, probs, weights, labels, scale=2.0, margin=0.5, entropy_weight=0.3
    )
    raw = math.log(1 + math.exp(-1))
    prefixes = [math.log(1 + math.exp(3)), math.log(1 + math.exp(1))]
    entropy = math.log(2) / 2
    np.testing.assert_allclose(float(parts["raw"]), raw, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(parts["prefixes"]), prefixes, rtol=1e-6)
    np.testing.assert_allclose(float(parts["entropy"]), entropy, rtol=1e-6)
    want = 0.5 * (raw + sum(prefixes) / 2) + 0.3 * entropy
    np.testing.assert_allclose(float(total), want, rtol=1e-6)


def test_one_level_is_opqns_loss():
    feats, soft, probs, weights, labels = _inputs(1, levels=1)
    total, _ = loss_lib.prefix_margin_loss(feats, soft, probs, weights, labels, **HYPER)
    cos = dict(scale=HYPER["scale"], margin=HYPER["margin"])
    opqn = 0.5 * (
        subspace_cosface(feats, weights, labels, **cos)
        + subspace_cosface(soft[:, 0], weights, labels, **cos)
    ) + HYPER["entropy_weight"] * assignment_entropy(probs[:, 0])
    np.testing.assert_allclose(float(total), float(opqn), rtol=1e-6)
    want = 0.5 * (
        loss_ref.subspace_cosface(feats, weights, labels, **cos)
        + loss_ref.subspace_cosface(soft[:, 0], weights, labels, **cos)
    ) + HYPER["entropy_weight"] * loss_ref.assignment_entropy(probs[:, 0])
    np.testing.assert_allclose(float(total), want, rtol=1e-5)


def test_batch_permutation_leaves_the_loss_and_gradients_unchanged():
    feats, soft, probs, weights, labels = _inputs(2)
    perm = np.random.default_rng(0).permutation(B)

    def value(f, s, p, w, y):
        return loss_lib.prefix_margin_loss(f, s, p, w, y, **HYPER)[0]

    grad = jax.grad(value, argnums=(3,))
    a = value(feats, soft, probs, weights, labels)
    b = value(feats[perm], soft[perm], probs[perm], weights, labels[perm])
    np.testing.assert_allclose(float(a), float(b), rtol=1e-6)
    np.testing.assert_allclose(
        np.asarray(grad(feats, soft, probs, weights, labels)[0]),
        np.asarray(grad(feats[perm], soft[perm], probs[perm], weights, labels[perm])[0]),
        rtol=1e-5,
        atol=1e-7,
    )


def test_rejects_mismatched_shapes_and_bad_labels():
    feats, soft, probs, weights, labels = _inputs()
    with pytest.raises(ValueError, match="same B, L, M"):
        loss_lib.prefix_margin_loss(feats, soft, probs[:, :2], weights, labels, **HYPER)
    labels[0] = C
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        loss_lib.prefix_margin_loss(feats, soft, probs, weights, labels, **HYPER)
