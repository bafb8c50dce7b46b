"""`kernel_l2` and `magnitude_l1` against NumPy sums (values and gradients)."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dpq_jax.losses.quantization import magnitude_l1
from dpq_jax.losses.weight_decay import kernel_l2


def _net():
    rngs = nnx.Rngs(0)
    return nnx.Sequential(
        nnx.Conv(2, 3, (3, 3), rngs=rngs),
        nnx.BatchNorm(3, rngs=rngs),
        nnx.Linear(3, 5, rngs=rngs),
    )


def test_kernel_l2_sums_kernels_only():
    net = _net()
    net.layers[1].scale[...] = jnp.full((3,), 7.0)  # would dominate if BN scales were counted
    kernels = [np.asarray(net.layers[i].kernel[...], np.float64) for i in (0, 2)]
    expected = sum(np.sum(k**2) for k in kernels)
    np.testing.assert_allclose(float(kernel_l2(net)), expected, rtol=1e-6)


def test_kernel_l2_gradient_is_two_w_on_kernels_zero_elsewhere():
    net = _net()
    grads = nnx.grad(kernel_l2)(net)
    np.testing.assert_allclose(grads["layers"][2]["kernel"][...], 2 * net.layers[2].kernel[...])
    np.testing.assert_array_equal(grads["layers"][2]["bias"][...], 0.0)
    np.testing.assert_array_equal(grads["layers"][1]["scale"][...], 0.0)


def test_magnitude_l1_matches_numpy_value_and_gradient():
    rng = np.random.default_rng(0)
    codes = rng.normal(size=(6, 5)).astype(np.float32)
    for target in (0.5, 1.0):
        expected = np.mean(np.abs(np.abs(codes) - target))
        value = magnitude_l1(jnp.asarray(codes), target)
        grad = jax.grad(lambda c, t=target: magnitude_l1(c, t))(jnp.asarray(codes))
        np.testing.assert_allclose(float(value), expected, rtol=1e-6)
        expected_grad = np.sign(codes) * np.sign(np.abs(codes) - target) / codes.size
        np.testing.assert_allclose(grad, expected_grad, rtol=1e-6)
