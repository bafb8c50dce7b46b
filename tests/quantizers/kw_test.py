"""Tests for the DPQ-KW layer (dpq_jax.quantizers.kw) against quantizers/kw_reference.py.

The straight-through tests would fail for the reference's hard path (`MyArgmax` + one-hot,
no gradient to the assignment): `test_reference_hard_path_has_no_gradient` shows that version
gives exactly zero gradients to the features and A, where ours equals the soft path's.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from dpq_jax.quantizers import kw, pq
from dpq_jax.quantizers import kw_reference as ref

M, D_SUB, K = 3, 4, 5
D = M * D_SUB
B = 6

pytestmark = pytest.mark.usefixtures("fast_compile")


def _random(shape, seed, scale=1.0):
    return (scale * np.random.default_rng(seed).standard_normal(shape)).astype(np.float32)


def _inputs(seed=0):
    """feats [B, D], A [M, d, K], codebooks [M, K, d] as float32 NumPy."""
    return _random((B, D), seed), _random((M, D_SUB, K), seed + 1), _random((M, K, D_SUB), seed + 2)


def _finite_difference(fn, x, eps=1e-5):
    grad = np.zeros(x.shape)
    for idx in np.ndindex(x.shape):
        up, down = x.astype(np.float64), x.astype(np.float64)
        up[idx] += eps
        down[idx] -= eps
        grad[idx] = (fn(up) - fn(down)) / (2 * eps)
    return grad


# --- values ------------------------------------------------------------------------------------


@pytest.mark.parametrize("temperature", [1.0, 0.5, 3.0])
def test_quantize_matches_numpy_twin(temperature):
    feats, assign, books = _inputs()
    out = kw.quantize(
        jnp.asarray(feats), jnp.asarray(assign), jnp.asarray(books), temperature=temperature
    )
    want = ref.kw_layer(feats, assign, books, temperature)
    assert out.soft.shape == out.hard.shape == (B, D) and out.probs.shape == (B, M, K)
    assert out.codes.dtype == jnp.uint8 and out.codes.shape == (B, M)
    np.testing.assert_allclose(np.asarray(out.probs), want["probs"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(out.soft), want["soft"], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(out.codes), want["codes"])
    np.testing.assert_allclose(np.asarray(out.hard), want["hard"], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(np.asarray(out.feats), feats)
    # The codes do not depend on the temperature; the probabilities do.
    base = kw.quantize(jnp.asarray(feats), jnp.asarray(assign), jnp.asarray(books))
    np.testing.assert_array_equal(np.asarray(out.codes), np.asarray(base.codes))
    if temperature != 1.0:
        assert np.abs(np.asarray(out.probs) - np.asarray(base.probs)).max() > 1e-3


def test_hard_is_exactly_the_chosen_codewords():
    """The straight-through value is the one-hot itself: h_m = c_{m, code_m} bit for bit."""
    feats, assign, books = _inputs(3)
    out = kw.quantize(jnp.asarray(feats), jnp.asarray(assign), jnp.asarray(books))
    exact = pq.reconstruct(out.codes, jnp.asarray(books)).reshape(B, D)
    np.testing.assert_array_equal(np.asarray(out.hard), np.asarray(exact))
    logits = np.einsum("bmd,mdk->bmk", feats.reshape(B, M, D_SUB), assign)
    np.testing.assert_array_equal(np.asarray(out.codes), logits.argmax(-1))


def test_soft_and_hard_assign_match_numpy():
    feats, assign, _ = _inputs(5)
    x_sub = feats.reshape(B, M, D_SUB)
    got = kw.soft_assign(jnp.asarray(x_sub), jnp.asarray(assign), temperature=0.7)
    np.testing.assert_allclose(
        np.asarray(got), ref.soft_assign(x_sub, assign, 0.7), rtol=1e-5, atol=1e-6
    )
    np.testing.assert_allclose(np.asarray(got).sum(-1), 1.0, rtol=1e-6)
    onehot = kw.hard_assign(jnp.asarray(ref.assignment_logits(x_sub, assign), jnp.float32))
    np.testing.assert_array_equal(np.asarray(onehot), ref.one_hot(ref.hard_codes(x_sub, assign), K))
    # Ties go to the first maximum.
    tied = kw.hard_assign(jnp.asarray([[[1.0, 3.0, 3.0, 0.0]]]))
    np.testing.assert_array_equal(np.asarray(tied), [[[0.0, 1.0, 0.0, 0.0]]])


# --- the straight-through estimator -------------------------------------------------------------


def test_straight_through_value_is_one_hot_and_backward_is_identity():
    probs = jnp.asarray(ref.soft_assign(_random((B, M, D_SUB), 7), _random((M, D_SUB, K), 8)))
    probs = probs.astype(jnp.float32)
    onehot = kw.hard_assign(probs)
    value, vjp = jax.vjp(lambda p: kw.straight_through(p, onehot), probs)
    np.testing.assert_array_equal(np.asarray(value), np.asarray(onehot))  # exact, not ≈
    cotangent = jnp.asarray(_random((B, M, K), 9))
    (grad,) = vjp(cotangent)
    np.testing.assert_array_equal(np.asarray(grad), np.asarray(cotangent))
    _, vjp_off = jax.vjp(lambda p: kw.straight_through(p, onehot, enabled=False), probs)
    np.testing.assert_array_equal(np.asarray(vjp_off(cotangent)[0]), 0.0)
    with pytest.raises(ValueError, match="same"):
        kw.straight_through(probs, onehot[:1])


def _path_grads(path, use_straight_through, seed=11):
    """Gradients of the linear functional <G, path> w.r.t. feats, A and the codebooks."""
    feats, assign, books = _inputs(seed)
    g = jnp.asarray(_random((B, D), seed + 10))

    def loss(f, a, c):
        out = kw.quantize(f, a, c, use_straight_through=use_straight_through)
        return jnp.sum(g * getattr(out, path))

    return jax.grad(loss, argnums=(0, 1, 2))(
        jnp.asarray(feats), jnp.asarray(assign), jnp.asarray(books)
    )


def test_hard_path_gradient_equals_the_soft_path_gradient():
    """Through the assignment (features and A) the hard path's gradient is the soft path's; the
    codebooks get the chosen codeword's gradient (e ⊗ G) instead of p ⊗ G."""
    hard = _path_grads("hard", True)
    soft = _path_grads("soft", True)
    for got, want in zip(hard[:2], soft[:2]):
        assert np.abs(np.asarray(got)).max() > 1e-3  # alive
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-6)
    feats, assign, books = _inputs(11)
    g = _random((B, D), 21).reshape(B, M, D_SUB)
    layer = ref.kw_layer(feats, assign, books)
    want_books = np.einsum("bmk,bmd->mkd", layer["onehot"], g)
    np.testing.assert_allclose(np.asarray(hard[2]), want_books, rtol=1e-5, atol=1e-6)
    want_soft_books = np.einsum("bmk,bmd->mkd", layer["probs"], g)
    np.testing.assert_allclose(np.asarray(soft[2]), want_soft_books, rtol=1e-5, atol=1e-6)


def test_reference_hard_path_has_no_gradient():
    """The trap (METHODS §5.6): with the one-hot of an argmax and no estimator, nothing flows
    to the features or A through the hard path. The test above fails for that version."""
    feats_grad, assign_grad, books_grad = _path_grads("hard", False)
    np.testing.assert_array_equal(np.asarray(feats_grad), 0.0)
    np.testing.assert_array_equal(np.asarray(assign_grad), 0.0)
    assert np.abs(np.asarray(books_grad)).max() > 1e-3  # the codebooks still learn from it


def test_gradients_match_finite_differences_of_the_numpy_surrogate():
    """A nonlinear loss of s and h: jax.grad equals float64 finite differences of the twin with
    the straight-through surrogate (one-hot and p frozen at the base point)."""
    feats, assign, books = _inputs(13)
    temperature = 0.8
    g1, g2 = _random((B, D), 30), _random((B, D), 31)
    base = ref.kw_layer(feats, assign, books, temperature)
    frozen = (base["onehot"], base["probs"])

    def loss_np(f, a, c):
        out = ref.kw_layer(f, a, c, temperature, frozen)
        return float(np.sum(g1 * np.tanh(out["soft"])) + np.sum(g2 * out["hard"] ** 2))

    def loss_jax(f, a, c):
        out = kw.quantize(f, a, c, temperature=temperature)
        return jnp.sum(g1 * jnp.tanh(out.soft)) + jnp.sum(g2 * jnp.square(out.hard))

    grads = jax.grad(loss_jax, argnums=(0, 1, 2))(
        jnp.asarray(feats), jnp.asarray(assign), jnp.asarray(books)
    )
    wants = (
        _finite_difference(lambda f: loss_np(f, assign, books), feats),
        _finite_difference(lambda a: loss_np(feats, a, books), assign),
        _finite_difference(lambda c: loss_np(feats, assign, c), books),
    )
    for got, want in zip(grads, wants):
        np.testing.assert_allclose(np.asarray(got), want, rtol=2e-4, atol=2e-5)


# --- the layer module ---------------------------------------------------------------------------


def test_head_holds_learnable_assignment_and_codebooks():
    head = kw.KWPQHead(D, num_codebooks=M, codebook_size=K, temperature=2.0, rngs=nnx.Rngs(0))
    params = nnx.state(head, nnx.Param)
    assert {str(k) for k in params} == {"assign", "codebooks"}  # both trained
    assert head.assign[...].shape == (M, D_SUB, K)
    assert head.codebooks[...].shape == (M, K, D_SUB)
    feats = jnp.asarray(_random((B, D), 40))
    out = head(feats)
    want = ref.kw_layer(
        np.asarray(feats), np.asarray(head.assign[...]), np.asarray(head.codebooks[...]), 2.0
    )
    np.testing.assert_allclose(np.asarray(out.soft), want["soft"], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(head.codes(feats)), want["codes"])
    np.testing.assert_allclose(np.asarray(head.probs(feats)), want["probs"], atol=1e-6)


def test_initialisations():
    big = kw.KWPQHead(1024, num_codebooks=4, codebook_size=64, rngs=nnx.Rngs(1))
    for value in (big.assign[...], big.codebooks[...]):  # the reference's torch.randn
        assert abs(float(jnp.std(value)) - 1.0) < 0.03 and abs(float(jnp.mean(value))) < 0.03
    xavier = kw.KWPQHead(
        1024, num_codebooks=4, codebook_size=64, init="xavier_uniform", rngs=nnx.Rngs(1)
    )
    bound = np.sqrt(6.0 / (256 + 64))  # per subspace: fan_in d = 256, fan_out K = 64
    for value in (xavier.assign[...], xavier.codebooks[...]):
        assert float(jnp.max(jnp.abs(value))) <= bound
        assert float(jnp.max(jnp.abs(value))) > 0.9 * bound


def test_bad_arguments_give_clear_errors():
    with pytest.raises(ValueError, match="must divide"):
        kw.KWPQHead(10, num_codebooks=3, codebook_size=4, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="uint8"):
        kw.KWPQHead(8, num_codebooks=2, codebook_size=300, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="temperature"):
        kw.KWPQHead(8, num_codebooks=2, codebook_size=4, temperature=0.0, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="init"):
        kw.KWPQHead(8, num_codebooks=2, codebook_size=4, init="zeros", rngs=nnx.Rngs(0))
    feats, assign, books = _inputs()
    with pytest.raises(ValueError, match="do not match codebooks"):
        kw.quantize(feats, assign, books[:, :, :2])
    with pytest.raises(ValueError, match="temperature"):
        kw.quantize(feats, assign, books, temperature=-1.0)
