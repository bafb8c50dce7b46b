"""Tests for the ResNet backbone (dpq_jax.models.backbones.resnet): torchvision's sizes, modes,
the optional projection and errors. Weight conversion is in pretrained_test.py."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from dpq_jax import registry
from dpq_jax.models.backbones import resnet

pytestmark = pytest.mark.usefixtures("fast_compile")


def _num_params(model) -> int:
    return sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


@pytest.mark.parametrize(
    "depth,width,params",
    # torchvision's parameter counts (11,689,512 and 25,557,032) less the 1000-way fc.
    [(18, 512, 11_689_512 - 513_000), (50, 2048, 25_557_032 - 2_049_000)],
)
def test_full_size_matches_torchvision(depth, width, params):
    assert registry.get("backbone", "resnet") is resnet.ResNet
    model = nnx.eval_shape(lambda: resnet.ResNet(3, depth=depth, rngs=nnx.Rngs(0)))
    assert _num_params(model) == params and model.features == width and model.proj is None
    graphdef, state = nnx.split(model)
    images = jax.ShapeDtypeStruct((2, 224, 224, 3), jnp.float32)
    out = jax.eval_shape(lambda s, x: nnx.merge(graphdef, s)(x), state, images)
    assert out.shape == (2, width) and out.dtype == jnp.float32


def test_modes_projection_and_dtype():
    x = jnp.asarray(np.random.default_rng(0).standard_normal((4, 32, 32, 3)) + 1.0, jnp.float32)
    model = resnet.ResNet(3, 6, depth=18, width=1 / 16, rngs=nnx.Rngs(0))
    assert model.trunk_features == 32 and model.features == 6
    run = nnx.jit(lambda m, x: m(x))  # writes the running statistics back
    model.train()
    out = run(model, x)
    assert out.shape == (4, 6) and out.dtype == jnp.float32
    assert np.abs(np.asarray(model.bn1.mean[...])).max() > 0  # running statistics moved
    model.eval()
    a, b = run(model, x), run(model, x)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    half = resnet.ResNet(3, depth=18, width=1 / 16, dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
    assert half.conv1.kernel[...].dtype == jnp.float32  # parameters stay float32
    half.eval()
    assert run(half, x).dtype == jnp.float32


def test_errors():
    with pytest.raises(ValueError, match="depth must be one of"):
        resnet.ResNet(3, depth=20, rngs=nnx.Rngs(0))
    model = resnet.ResNet(3, depth=18, width=1 / 32, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="at least 32x32"):
        model(jnp.zeros((1, 16, 16, 3)))
