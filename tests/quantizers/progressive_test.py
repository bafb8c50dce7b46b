"""Tests for the DPQ-G progressive quantizer (dpq_jax.quantizers.progressive) against the NumPy
twins in quantizers/reference.py and losses/reference.py."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from dpq_jax.losses import reference as loss_ref
from dpq_jax.quantizers import progressive
from dpq_jax.quantizers import reference as ref

pytestmark = pytest.mark.usefixtures("fast_compile")

B, L, K, D = 6, 3, 5, 4


def _data(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((B, D)).astype(np.float32)
    codebooks = rng.standard_normal((L, K, D)).astype(np.float32)
    return x, codebooks


@pytest.mark.parametrize("assign,gamma", [("cosine", 1.0), ("cosine", 3.0), ("l2", 0.5)])
def test_matches_numpy_twin(assign, gamma):
    x, codebooks = _data()
    out = jax.jit(lambda x, c: progressive.progressive_quantize(x, c, assign=assign, gamma=gamma))(
        x, codebooks
    )
    want = ref.progressive_quantize(x, codebooks, assign, gamma)
    assert out.codes.dtype == jnp.uint8 and out.codes.shape == (B, L)
    assert out.soft.shape == out.hard.shape == out.residuals.shape == (B, L, D)
    assert out.probs.shape == (B, L, K)
    np.testing.assert_array_equal(np.asarray(out.codes), want["codes"])
    for name in ("soft", "hard", "probs", "residuals"):
        np.testing.assert_allclose(
            np.asarray(getattr(out, name)), want[name], rtol=1e-5, atol=1e-5, err_msg=name
        )


@pytest.mark.parametrize("assign", ["cosine", "l2"])
def test_hard_residuals_and_partial_sums(assign):
    """r_1 = x, r_{l+1} = r_l - C_l[code_l]; Q^hard_l is the sum of the first l codewords."""
    x, codebooks = _data(1)
    out = progressive.progressive_quantize(x, codebooks, assign=assign)
    codes = np.asarray(out.codes)
    residuals = np.asarray(out.residuals)
    np.testing.assert_array_equal(residuals[:, 0], x)
    for level in range(L):
        picked = codebooks[level][codes[:, level]]  # [B, D]
        if level + 1 < L:
            np.testing.assert_allclose(
                residuals[:, level + 1], residuals[:, level] - picked, rtol=1e-6, atol=1e-6
            )
        np.testing.assert_allclose(
            np.asarray(out.hard[:, level]),
            ref.reconstruct_progressive(codes[:, : level + 1], codebooks),
            rtol=1e-6,
            atol=1e-6,
        )
        np.testing.assert_allclose(
            np.asarray(progressive.reconstruct_progressive(out.codes[:, : level + 1], codebooks)),
            np.asarray(out.hard[:, level]),
            rtol=1e-6,
            atol=1e-6,
        )
    # x - Q^hard_l is the residual the next level sees.
    np.testing.assert_allclose(
        x - np.asarray(out.hard[:, 0]), residuals[:, 1], rtol=1e-6, atol=1e-6
    )


def test_cosine_and_l2_pick_different_nearest_codewords():
    # c0 points the same way as r but is far; c1 is close in L2 but at 45 degrees.
    r = jnp.array([[1.0, 0.0]])
    books = jnp.array([[[10.0, 1.0], [0.5, 0.5]]])  # L=1, K=2
    assert int(progressive.progressive_codes(r, books, assign="cosine")[0, 0]) == 0
    assert int(progressive.progressive_codes(r, books, assign="l2")[0, 0]) == 1
    np.testing.assert_allclose(
        np.asarray(progressive.assignment_scores(r[:, :], books[0], assign="l2", gamma=2.0)),
        ref.progressive_scores(np.asarray(r), np.asarray(books[0]), "l2", 2.0),
        rtol=1e-6,
    )


def test_large_gamma_l2_soft_becomes_hard():
    x, codebooks = _data(2)
    out = progressive.progressive_quantize(x, codebooks, assign="l2", gamma=1e4)
    np.testing.assert_allclose(np.asarray(out.soft), np.asarray(out.hard), atol=1e-4)
    loose = progressive.progressive_quantize(x, codebooks, assign="cosine", gamma=1.0)
    assert float(jnp.max(jnp.abs(loose.soft - loose.hard))) > 0.1  # the code's flat softmax


def _twin_distortion(x, codebooks, assign, gamma):
    out = ref.progressive_quantize(x, codebooks, assign, gamma)
    parts = loss_ref.progressive_distortions(x, out["soft"], out["hard"])
    return parts["soft"] + parts["hard"] + 0.1 * parts["jcl"]


def _numeric_grad(fn, value, eps=1e-5):
    value = np.asarray(value, np.float64)
    grad = np.zeros_like(value)
    for idx in np.ndindex(value.shape):
        plus, minus = value.copy(), value.copy()
        plus[idx] += eps
        minus[idx] -= eps
        grad[idx] = (fn(plus) - fn(minus)) / (2 * eps)
    return grad


@pytest.mark.parametrize("assign,gamma", [("cosine", 1.0), ("l2", 0.5)])
def test_gradients_match_finite_differences_of_the_twin(assign, gamma):
    """Gradients to the codebooks and to x (soft path, hard gather, residual chain)."""
    x, codebooks = _data(3)

    def loss(x, codebooks):
        out = progressive.progressive_quantize(x, codebooks, assign=assign, gamma=gamma)
        soft = jnp.sum(jnp.mean(jnp.square(x[:, None] - out.soft), axis=(0, 2)))
        hard = jnp.sum(jnp.mean(jnp.square(x[:, None] - out.hard), axis=(0, 2)))
        jcl = jnp.mean(jnp.square(out.soft[:, -1] - out.hard[:, -1]))
        return soft + hard + 0.1 * jcl

    grad_x, grad_c = jax.grad(loss, argnums=(0, 1))(jnp.asarray(x), jnp.asarray(codebooks))
    want_c = _numeric_grad(lambda c: _twin_distortion(x, c, assign, gamma), codebooks)
    want_x = _numeric_grad(lambda v: _twin_distortion(v, codebooks, assign, gamma), x)
    np.testing.assert_allclose(np.asarray(grad_c), want_c, rtol=2e-3, atol=2e-5)
    np.testing.assert_allclose(np.asarray(grad_x), want_x, rtol=2e-3, atol=2e-5)
    assert np.abs(want_c).max() > 1e-3  # the codebooks really get a gradient


def test_module_holds_codebooks_and_calls_the_pure_function():
    quantizer = progressive.ProgressiveQuantizer(
        D, num_levels=L, codebook_size=K, assign="l2", gamma=2.0, rngs=nnx.Rngs(0)
    )
    assert isinstance(quantizer.codebooks, nnx.Param)
    books = np.asarray(quantizer.codebooks[...])
    assert books.shape == (L, K, D) and 0.003 < books.std() < 0.03  # N(0, 0.01^2)
    x, _ = _data()
    out = quantizer(jnp.asarray(x))
    want = ref.progressive_quantize(x, books, "l2", 2.0)
    np.testing.assert_array_equal(np.asarray(out.codes), want["codes"])


def test_bad_arguments_raise_clear_errors():
    x, codebooks = _data()
    with pytest.raises(ValueError, match="assign must be one of"):
        progressive.progressive_quantize(x, codebooks, assign="dot")
    with pytest.raises(ValueError, match="gamma must be positive"):
        progressive.progressive_quantize(x, codebooks, gamma=0.0)
    with pytest.raises(ValueError, match="D must agree"):
        progressive.progressive_quantize(x[:, :3], codebooks)
    with pytest.raises(ValueError, match=r"\[2, 256\]"):
        progressive.ProgressiveQuantizer(D, num_levels=2, codebook_size=300, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="l <= L"):
        progressive.reconstruct_progressive(jnp.zeros((2, L + 1), jnp.uint8), codebooks)
