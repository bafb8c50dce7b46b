"""Tests for the CNNSmall and SphereFace20 backbones (tiny widths, batch 2)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from dpq_jax import registry
from dpq_jax.models.backbones.cnn_small import CNNSmall
from dpq_jax.models.backbones.sphereface20 import PReLU, SphereFace20


@pytest.fixture(autouse=True, scope="module")
def _fast_compile():
    """Cheaper XLA compiles (many small init/conv kernels); restored after this module."""
    old = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", old)


def _forward(model, x):
    return jax.jit(lambda m, x: m(x))(model, x)


def _images(h, w, c, batch=2, seed=0):
    return jnp.asarray(np.random.default_rng(seed).standard_normal((batch, h, w, c)), jnp.float32)


def test_registry_names():
    assert registry.get("backbone", "cnn_small") is CNNSmall
    assert registry.get("backbone", "sphereface20") is SphereFace20


def test_cnn_small_shapes_and_dtypes():
    x = _images(32, 26, 1)  # grey 32x26 faces
    model = CNNSmall(1, 16, widths=(4, 8), rngs=nnx.Rngs(0))
    out = _forward(model, x)
    assert out.shape == (2, 16) and out.dtype == jnp.float32
    half = CNNSmall(1, 16, widths=(4, 8), dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
    assert half.convs[0].kernel[...].dtype == jnp.float32  # parameters stay float32
    model.eval()  # running statistics, so both nets compute the same affine map of the input
    half.eval()
    out, out_half = _forward(model, x), _forward(half, x)
    assert out_half.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(out_half), np.asarray(out), atol=0.05, rtol=0.05)


def test_cnn_small_train_eval_modes():
    model = CNNSmall(3, 8, widths=(4,), rngs=nnx.Rngs(0))
    x = _images(8, 8, 3, batch=4) + 2.0
    model.train()
    train_out = model(x)
    # Train mode normalises with batch statistics: each output feature has ~zero batch mean.
    np.testing.assert_allclose(np.asarray(train_out.mean(0)), 0.0, atol=1e-5)
    mean = np.asarray(model.norms[0].mean[...])
    assert np.abs(mean).max() > 0  # running statistics moved
    model.eval()
    eval_out = model(x)
    np.testing.assert_array_equal(np.asarray(model.norms[0].mean[...]), mean)  # frozen
    np.testing.assert_array_equal(np.asarray(model(x)), np.asarray(eval_out))
    assert np.abs(np.asarray(eval_out - train_out)).max() > 1e-3


@pytest.mark.parametrize("input_size,final", [(32, 4), (112, 7)])
def test_sphereface_shapes(input_size, final):
    widths = (2, 2, 2, 3)
    model = SphereFace20(
        3, 6, input_size=input_size, widths=widths, units=(1, 1, 1, 1), rngs=nnx.Rngs(0)
    )
    assert model.flat_norm.num_features == final * final * widths[-1]
    model.eval()
    out = _forward(model, _images(input_size, input_size, 3))
    assert out.shape == (2, 6) and out.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(out)))


def test_sphereface_default_layout_is_20_layers_and_flatten_sizes():
    # Abstract construction only (no arrays): the full-width net, as in METHODS.md Sec. 1.1.
    for size, flat in ((32, 8192), (112, 25088)):
        model = nnx.eval_shape(lambda s=size: SphereFace20(3, 512, input_size=s, rngs=nnx.Rngs(0)))
        convs = [m for _, m in nnx.iter_graph(model) if isinstance(m, nnx.Conv)]
        assert len(convs) == 20
        assert sum(c.bias is not None for c in convs) == 4  # only the stage convs have a bias
        assert model.flat_norm.num_features == flat
        assert model.dense.kernel.shape == (flat, 512)


def test_sphereface_width_multiplier_prelu_and_bf16():
    model = SphereFace20(
        1, 4, width_multiplier=1 / 32, units=(0, 1, 0, 0), dtype=jnp.bfloat16, rngs=nnx.Rngs(1)
    )
    assert model.stages[3].layers[0].conv.out_features == 16  # 512 / 32
    prelus = [m for _, m in nnx.iter_graph(model) if isinstance(m, PReLU)]
    assert len(prelus) == 6  # 4 stage PReLUs + 2 in the one unit
    slope = prelus[0].slope[...]
    assert slope.shape == (2,) and slope.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(slope), 0.25)
    model.train()
    out = _forward(model, _images(32, 32, 1, batch=4))
    assert out.dtype == jnp.float32 and out.shape == (4, 4)


def test_prelu_per_channel():
    act = PReLU(2)
    act.slope[...] = jnp.array([0.1, 0.5])
    x = jnp.array([[-2.0, -2.0], [3.0, 3.0]])
    np.testing.assert_allclose(np.asarray(act(x)), [[-0.2, -1.0], [3.0, 3.0]])


def test_sphereface_dropout_follows_mode():
    model = SphereFace20(1, 4, widths=(2, 2, 2, 2), units=(0, 0, 0, 0), rngs=nnx.Rngs(0))
    x = _images(32, 32, 1, batch=4)
    forward = nnx.jit(lambda m, x: m(x))  # nnx.jit writes the advanced RNG count back
    model.train()
    a, b = forward(model, x), forward(model, x)  # fresh dropout masks on each call
    assert np.abs(np.asarray(a - b)).max() > 1e-4
    model.eval()
    np.testing.assert_array_equal(np.asarray(forward(model, x)), np.asarray(forward(model, x)))


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="32x32 or 112x112"):
        SphereFace20(3, 8, input_size=64, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="4 stages"):
        SphereFace20(3, 8, widths=(2, 2, 2), rngs=nnx.Rngs(0))
    model = SphereFace20(1, 4, widths=(2, 2, 2, 2), units=(0, 0, 0, 0), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="input_size=112"):
        model(_images(112, 112, 1))
    with pytest.raises(ValueError, match="positive"):
        CNNSmall(1, 8, widths=(), rngs=nnx.Rngs(0))


def test_backbones_jit_as_pytrees():
    model = CNNSmall(1, 8, widths=(4,), rngs=nnx.Rngs(0))
    model.eval()
    x = _images(8, 8, 1)
    np.testing.assert_allclose(
        np.asarray(jax.jit(lambda m, x: m(x))(model, x)), np.asarray(model(x)), atol=1e-5
    )
