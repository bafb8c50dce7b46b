"""Tests for the DPQ-KW losses (dpq_jax.losses.kw) against losses/kw_reference.py: values,
gradients (float64 finite differences of the twins), hand-computed cases and bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dpq_jax.losses import kw
from dpq_jax.losses import kw_reference as ref

B, M, K, D, C = 6, 2, 3, 4, 3
WEIGHTS = dict(central_weight=0.25, diversity_weight=1.0, sharpness_weight=0.01)


def _random(shape, seed, scale=1.0):
    return (scale * np.random.default_rng(seed).standard_normal(shape)).astype(np.float32)


def _probs(seed):
    z = _random((B, M, K), seed, scale=2.0)
    e = np.exp(z - z.max(-1, keepdims=True))
    return (e / e.sum(-1, keepdims=True)).astype(np.float32)


def _args(seed=0):
    labels = np.asarray([0, 2, 2, 1, 0, 2], np.int32)
    return dict(
        soft=_random((B, D), seed),
        hard=_random((B, D), seed + 1),
        probs=_probs(seed + 2),
        labels=labels,
        weights=_random((C, D), seed + 3),
        centers=_random((C, D), seed + 4),
    )


def _finite_difference(fn, x, eps=1e-5):
    grad = np.zeros(x.shape)
    for idx in np.ndindex(x.shape):
        up, down = x.astype(np.float64), x.astype(np.float64)
        up[idx] += eps
        down[idx] -= eps
        grad[idx] = (fn(up) - fn(down)) / (2 * eps)
    return grad


def test_terms_match_the_twins():
    a = _args()
    total, terms = kw.kw_loss(
        a["soft"], a["hard"], a["probs"], a["labels"], a["weights"], a["centers"], **WEIGHTS
    )
    ce_soft, ce_hard = ref.shared_classifier_losses(a["soft"], a["hard"], a["weights"], a["labels"])
    want = dict(
        loss_clf_soft=ce_soft,
        loss_clf_hard=ce_hard,
        loss_central=ref.joint_central_loss(a["soft"], a["hard"], a["labels"], a["centers"]),
        gini_diversity=ref.gini_batch_diversity(a["probs"]),
        gini_sharpness=ref.gini_sharpness(a["probs"]),
    )
    assert set(terms) == set(want)
    for key, value in want.items():
        np.testing.assert_allclose(float(terms[key]), value, rtol=1e-5, err_msg=key)
    np.testing.assert_allclose(
        float(total),
        ref.kw_loss(
            a["soft"], a["hard"], a["probs"], a["labels"], a["weights"], a["centers"], **WEIGHTS
        ),
        rtol=1e-5,
    )


def test_hand_computed_values():
    one_hot = jnp.asarray([[[1.0, 0.0]], [[0.0, 1.0]]])  # B=2, M=1, K=2: batch spread evenly
    assert float(kw.gini_batch_diversity(one_hot)) == pytest.approx(0.5)
    assert float(kw.gini_sharpness(one_hot)) == pytest.approx(1.0)
    same = jnp.asarray([[[1.0, 0.0]], [[1.0, 0.0]]])  # the whole batch on one codeword
    assert float(kw.gini_batch_diversity(same)) == pytest.approx(1.0)
    flat = jnp.full((2, 1, 2), 0.5)
    assert float(kw.gini_sharpness(flat)) == pytest.approx(0.5)
    soft = jnp.asarray([[1.0, 0.0], [0.0, 3.0]])
    hard = jnp.asarray([[0.0, 0.0], [0.0, 1.0]])
    labels = jnp.asarray([0, 1])
    centers = jnp.asarray([[0.0, 0.0], [0.0, 1.0]])
    # (1/2) · ½ · (1 + 4 + 0 + 0)
    assert float(kw.joint_central_loss(soft, hard, labels, centers)) == pytest.approx(1.25)
    zero_w = jnp.zeros((3, 2))  # uniform logits: CE = log C on both paths
    ce_soft, ce_hard = kw.shared_classifier_losses(soft, hard, zero_w, labels)
    assert float(ce_soft) == pytest.approx(np.log(3)) and float(ce_hard) == pytest.approx(np.log(3))


@pytest.mark.parametrize("name", ["soft", "hard", "probs", "weights", "centers"])
def test_gradients_match_finite_differences(name):
    a = _args(5)

    def loss_np(x):
        b = dict(a, **{name: x})
        return ref.kw_loss(
            b["soft"], b["hard"], b["probs"], b["labels"], b["weights"], b["centers"], **WEIGHTS
        )

    def loss_jax(x):
        b = dict(a, **{name: x})
        return kw.kw_loss(
            b["soft"], b["hard"], b["probs"], b["labels"], b["weights"], b["centers"], **WEIGHTS
        )[0]

    got = jax.grad(loss_jax)(jnp.asarray(a[name]))
    want = _finite_difference(loss_np, a[name])
    assert np.abs(want).max() > 1e-3
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-5)


def test_bad_input_gives_clear_errors():
    a = _args()
    with pytest.raises(ValueError, match=r"\[B, M, K\]"):
        kw.gini_batch_diversity(a["probs"][0])
    with pytest.raises(ValueError, match="same"):
        kw.joint_central_loss(a["soft"], a["hard"][:2], a["labels"], a["centers"])
    with pytest.raises(ValueError, match="same D"):
        kw.shared_classifier_losses(a["soft"], a["hard"], a["weights"][:, :2], a["labels"])
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        kw.shared_classifier_losses(
            a["soft"], a["hard"], a["weights"], np.asarray([0, 1, 2, 3, 0, 0], np.int32)
        )
    with pytest.raises(ValueError, match="batch size"):
        kw.kw_loss(a["soft"], a["hard"], a["probs"][:2], a["labels"], a["weights"], a["centers"])
