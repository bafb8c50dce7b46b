"""Tests for the VGG backbone (dpq_jax.models.backbones.vgg): torchvision's sizes and module
indices, modes and errors. Weight conversion is in pretrained_test.py."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from dpq_jax import registry
from dpq_jax.models.backbones import vgg

pytestmark = pytest.mark.usefixtures("fast_compile")


@pytest.mark.parametrize(
    "batch_norm,params",
    # torchvision's vgg16 / vgg16_bn parameter counts less the 1000-way classifier.6.
    [(False, 138_357_544 - 4_097_000), (True, 138_365_992 - 4_097_000)],
)
def test_full_size_matches_torchvision(batch_norm, params):
    assert registry.get("backbone", "vgg") is vgg.VGG
    model = nnx.eval_shape(lambda: vgg.VGG(3, depth=16, batch_norm=batch_norm, rngs=nnx.Rngs(0)))
    assert sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param))) == params
    assert model.fc6.kernel.shape == (7 * 7 * 512, 4096)
    graphdef, state = nnx.split(model)
    images = jax.ShapeDtypeStruct((2, 224, 224, 3), jnp.float32)
    out = jax.eval_shape(lambda s, x: nnx.merge(graphdef, s)(x), state, images)
    assert out.shape == (2, 4096) and out.dtype == jnp.float32


def test_torch_feature_indices_are_torchvisions():
    # torchvision's vgg16 / vgg16_bn: the Conv2d positions in `features`.
    plain = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
    with_bn = (0, 3, 7, 10, 14, 17, 20, 24, 27, 30, 34, 37, 40)
    assert vgg.torch_feature_indices(16, False) == tuple((i, None) for i in plain)
    assert vgg.torch_feature_indices(16, True) == tuple((i, i + 1) for i in with_bn)


def test_modes_and_errors():
    x = jnp.asarray(np.random.default_rng(0).standard_normal((4, 32, 32, 3)) + 1.0, jnp.float32)
    model = vgg.VGG(3, 8, depth=11, batch_norm=True, width=1 / 16, rngs=nnx.Rngs(0))
    run = nnx.jit(lambda m, x: m(x))  # writes the running statistics back
    model.train()
    out = run(model, x)
    assert out.shape == (4, 8) and out.dtype == jnp.float32
    assert np.abs(np.asarray(model.norms[0].mean[...])).max() > 0  # running statistics moved
    model.eval()
    a, b = run(model, x), run(model, x)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))  # no dropout, fixed BN
    assert bool(jnp.all(a >= 0))  # after fc7's ReLU
    with pytest.raises(ValueError, match="at least 32x32"):
        model(x[:, :16])
    with pytest.raises(ValueError, match="depth must be one of"):
        vgg.VGG(3, depth=15, rngs=nnx.Rngs(0))
