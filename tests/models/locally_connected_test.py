"""The locally-connected layer against slow NumPy twins written here.

Oracles: explicit loops over output positions, window cells and channels (float64) for the
values, the hand-derived gradients of that sum, and `lax.conv` for a kernel shared by every
position.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from dpq_jax.losses.weight_decay import kernel_l2
from dpq_jax.models import locally_connected as lc

pytestmark = pytest.mark.usefixtures("fast_compile")


# --- NumPy twins -------------------------------------------------------------------------------
def _out(size, k, s):
    return (size - k) // s + 1


def lc_twin(x, kernel, bias, kh, kw, sh, sw):
    """y[b,i,j,f] = sum_{u,v,c} x[b, i*sh+u, j*sw+v, c] K[i,j,(u*kw+v)*C+c,f] + bias[i,j,f]."""
    x, kernel, bias = (np.asarray(a, np.float64) for a in (x, kernel, bias))
    b, h, w, c = x.shape
    ho, wo, f = _out(h, kh, sh), _out(w, kw, sw), kernel.shape[-1]
    y = np.zeros((b, ho, wo, f))
    for n in range(b):
        for i in range(ho):
            for j in range(wo):
                for o in range(f):
                    total = bias[i, j, o]
                    for u in range(kh):
                        for v in range(kw):
                            for ch in range(c):
                                p = (u * kw + v) * c + ch
                                total += x[n, i * sh + u, j * sw + v, ch] * kernel[i, j, p, o]
                    y[n, i, j, o] = total
    return y


def lc_grad_twin(x, kernel, g, kh, kw, sh, sw):
    """Gradients of sum(y * g) with respect to x, the kernel and the bias, by the same loops."""
    x, kernel, g = (np.asarray(a, np.float64) for a in (x, kernel, g))
    b, h, w, c = x.shape
    ho, wo, f = g.shape[1:]
    dx, dk = np.zeros_like(x), np.zeros_like(kernel)
    for n in range(b):
        for i in range(ho):
            for j in range(wo):
                for o in range(f):
                    for u in range(kh):
                        for v in range(kw):
                            for ch in range(c):
                                p = (u * kw + v) * c + ch
                                xi = (n, i * sh + u, j * sw + v, ch)
                                dk[i, j, p, o] += x[xi] * g[n, i, j, o]
                                dx[xi] += kernel[i, j, p, o] * g[n, i, j, o]
    return dx, dk, g.sum(axis=0)


CASES = [((2, 5, 4, 3), (2, 3), (1, 1)), ((2, 7, 6, 2), (3, 2), (2, 3))]


def _arrays(shape, ks, st, seed=0):
    rng = np.random.default_rng(seed)
    ho, wo = _out(shape[1], ks[0], st[0]), _out(shape[2], ks[1], st[1])
    x = rng.normal(size=shape).astype(np.float32)
    kernel = rng.normal(size=(ho, wo, ks[0] * ks[1] * shape[3], 4)).astype(np.float32)
    bias = rng.normal(size=(ho, wo, 4)).astype(np.float32)
    return x, kernel, bias


# --- the function --------------------------------------------------------------------------------
@pytest.mark.parametrize("shape,ks,st", CASES)
def test_values_equal_the_loop_twin(shape, ks, st):
    x, kernel, bias = _arrays(shape, ks, st)
    y = lc.locally_connected_2d(x, kernel, bias, kernel_size=ks, strides=st)
    np.testing.assert_allclose(np.asarray(y), lc_twin(x, kernel, bias, *ks, *st), rtol=1e-5)


@pytest.mark.parametrize("shape,ks,st", CASES)
def test_gradients_equal_the_hand_derived_twin(shape, ks, st):
    x, kernel, bias = _arrays(shape, ks, st, seed=1)
    y, vjp = jax.vjp(
        lambda *a: lc.locally_connected_2d(*a, kernel_size=ks, strides=st), x, kernel, bias
    )
    g = np.random.default_rng(2).normal(size=y.shape).astype(np.float32)
    for got, want in zip(vjp(jnp.asarray(g)), lc_grad_twin(x, kernel, g, *ks, *st), strict=True):
        np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)


def test_a_kernel_shared_by_every_position_is_the_convolution():
    """Ties the patch order (u, v, c) to Flax's conv kernel layout [kh, kw, C, F]."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(2, 7, 6, 3)).astype(np.float32)
    conv = rng.normal(size=(3, 2, 3, 5)).astype(np.float32)  # HWIO
    ho, wo = _out(7, 3, 2), _out(6, 2, 1)
    kernel = np.broadcast_to(conv.reshape(1, 1, -1, 5), (ho, wo, 18, 5))
    y = lc.locally_connected_2d(x, jnp.asarray(kernel), None, kernel_size=(3, 2), strides=(2, 1))
    want = jax.lax.conv_general_dilated(
        x, conv, (2, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    np.testing.assert_allclose(np.asarray(y), np.asarray(want), rtol=1e-5, atol=1e-5)


def test_bad_shapes_are_refused():
    x = jnp.ones((2, 3, 3, 4))
    with pytest.raises(ValueError, match=r"kernel must be \[H_out, W_out, kh\*kw\*C, F\]"):
        lc.locally_connected_2d(x, jnp.ones((2, 2, 15, 8)), None, kernel_size=2)
    with pytest.raises(ValueError, match="bias must be"):
        lc.locally_connected_2d(x, jnp.ones((2, 2, 16, 8)), jnp.ones((2, 2, 7)), kernel_size=2)
    with pytest.raises(ValueError, match="needs an input of at least 4x4"):
        lc.locally_connected_2d(x, jnp.ones((1, 1, 64, 8)), None, kernel_size=4)
    with pytest.raises(ValueError, match=r"x must be \[B, H, W, C\]"):
        lc.locally_connected_2d(jnp.ones((3, 3, 4)), jnp.ones((2, 2, 16, 8)), None, kernel_size=2)


# --- the module ----------------------------------------------------------------------------------
def test_module_holds_the_parameters_and_calls_the_function():
    layer = lc.LocallyConnected2D(3, 4, (2, 3), input_hw=(5, 4), rngs=nnx.Rngs(0))
    kernel, bias = np.asarray(layer.kernel[...]), np.asarray(layer.bias[...])
    assert kernel.shape == (4, 2, 18, 4) and bias.shape == (4, 2, 4)
    # He-uniform over one position's fan-in kh*kw*C = 18 (Keras' he_uniform), zero bias.
    limit = np.sqrt(6.0 / 18)
    assert np.abs(kernel).max() <= limit and np.abs(kernel).max() > 0.8 * limit
    assert not bias.any()
    x = np.random.default_rng(4).normal(size=(2, 5, 4, 3)).astype(np.float32)
    np.testing.assert_allclose(
        np.asarray(layer(jnp.asarray(x))), lc_twin(x, kernel, bias, 2, 3, 1, 1), rtol=1e-5
    )
    # The kernel is decayed like a conv kernel; the bias is not.
    np.testing.assert_allclose(
        float(kernel_l2(layer)), np.sum(kernel.astype(np.float64) ** 2), rtol=1e-6
    )
    with pytest.raises(ValueError, match="built for 5x4 inputs"):
        layer(jnp.ones((2, 6, 4, 3)))
