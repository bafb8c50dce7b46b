"""Tests for the AlexNet backbone (dpq_jax.models.backbones.alexnet): layout, LRN, modes."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from dpq_jax import registry
from dpq_jax.models.backbones import alexnet

pytestmark = pytest.mark.usefixtures("fast_compile")


def _lrn_twin(x, size=5, alpha=1e-4, beta=0.75, k=1.0):
    """Caffe's across-channel LRN with explicit loops (float64)."""
    x = np.asarray(x, np.float64)
    out = np.zeros_like(x)
    channels = x.shape[-1]
    for idx in np.ndindex(x.shape[:-1]):
        for c in range(channels):
            lo, hi = max(0, c - size // 2), min(channels, c + size // 2 + 1)
            total = sum(x[idx + (j,)] ** 2 for j in range(lo, hi))
            out[idx + (c,)] = x[idx + (c,)] / math.pow(k + alpha / size * total, beta)
    return out


def test_lrn_matches_twin():
    x = np.random.default_rng(0).standard_normal((2, 3, 2, 7)).astype(np.float32) * 30
    got = alexnet.local_response_norm(jnp.asarray(x))
    np.testing.assert_allclose(np.asarray(got), _lrn_twin(x), rtol=1e-5)
    got = alexnet.local_response_norm(jnp.asarray(x), size=3, alpha=0.5, beta=0.5, k=2.0)
    np.testing.assert_allclose(np.asarray(got), _lrn_twin(x, 3, 0.5, 0.5, 2.0), rtol=1e-5)
    with pytest.raises(ValueError, match="odd"):
        alexnet.local_response_norm(jnp.asarray(x), size=4)


def test_full_size_layout_is_the_caffe_one():
    model = nnx.eval_shape(lambda: alexnet.AlexNet(3, 4096, rngs=nnx.Rngs(0)))
    assert registry.get("backbone", "alexnet") is alexnet.AlexNet
    shapes = [c.kernel.shape for c in model.convs]
    # Grouped convolutions hold half the input channels, as the Caffe weights do.
    assert shapes == [
        (11, 11, 3, 96),
        (5, 5, 48, 256),
        (3, 3, 256, 384),
        (3, 3, 192, 384),
        (3, 3, 192, 256),
    ]
    assert model.fc6.kernel.shape == (6 * 6 * 256, 4096)
    assert model.fc7.kernel.shape == (4096, 4096)
    graphdef, state = nnx.split(model)
    images = jax.ShapeDtypeStruct((2, 227, 227, 3), jnp.float32)
    out = jax.eval_shape(lambda s, x: nnx.merge(graphdef, s)(x), state, images)
    assert out.shape == (2, 4096) and out.dtype == jnp.float32


def test_tiny_forward_modes_and_errors():
    model = alexnet.AlexNet(3, 8, input_hw=(67, 67), width=1 / 32, rngs=nnx.Rngs(0))
    x = jnp.asarray(np.random.default_rng(1).standard_normal((2, 67, 67, 3)), jnp.float32)
    run = jax.jit(lambda m, x: m(x))
    model.eval()
    a, b = run(model, x), run(model, x)
    assert a.shape == (2, 8) and bool(jnp.all(a >= 0))  # after fc7's ReLU
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))  # no dropout in eval mode
    with pytest.raises(ValueError, match="built for"):
        model(x[:, :66])
    with pytest.raises(ValueError, match="at least 67"):
        alexnet.AlexNet(3, 8, input_hw=(32, 32), rngs=nnx.Rngs(0))


def _adaptive_pool_twin(x, out_h, out_w):
    """PyTorch's AdaptiveAvgPool2d on NHWC with explicit loops (float64)."""
    x = np.asarray(x, np.float64)
    _, h, w, _ = x.shape
    out = np.zeros((x.shape[0], out_h, out_w, x.shape[3]))
    for i in range(out_h):
        r0, r1 = (i * h) // out_h, math.ceil((i + 1) * h / out_h)
        for j in range(out_w):
            c0, c1 = (j * w) // out_w, math.ceil((j + 1) * w / out_w)
            out[:, i, j] = x[:, r0:r1, c0:c1].mean(axis=(1, 2))
    return out


@pytest.mark.parametrize("hw,out", [((5, 2), (7, 7)), ((13, 7), (6, 3)), ((6, 6), (6, 6))])
def test_adaptive_avg_pool_matches_twin(hw, out):
    x = np.random.default_rng(0).standard_normal((2, *hw, 3)).astype(np.float32)
    got = alexnet.adaptive_avg_pool(jnp.asarray(x), out)
    np.testing.assert_allclose(np.asarray(got), _adaptive_pool_twin(x, *out), rtol=1e-6, atol=1e-6)


def test_torchvision_layout_is_torchvisions():
    model = nnx.eval_shape(
        lambda: alexnet.AlexNet(3, variant="torchvision", input_hw=(224, 224), rngs=nnx.Rngs(0))
    )
    shapes = [c.kernel.shape for c in model.convs]
    assert shapes == [
        (11, 11, 3, 64),
        (5, 5, 64, 192),
        (3, 3, 192, 384),
        (3, 3, 384, 256),
        (3, 3, 256, 256),
    ]
    # torchvision's alexnet has 61,100,840 parameters, 4,097,000 of them in classifier.6.
    assert sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param))) == 57_003_840
    assert [alexnet.min_input(v) for v in alexnet.VARIANTS] == [67, 67, 63]
    with pytest.raises(ValueError, match="at least 63x63"):
        alexnet.AlexNet(3, 8, variant="torchvision", input_hw=(62, 62), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="variant must be one of"):
        alexnet.AlexNet(3, 8, variant="vgg", rngs=nnx.Rngs(0))


def test_caffenet_moves_lrn_after_the_pools():
    x = jnp.asarray(np.random.default_rng(2).standard_normal((2, 67, 67, 3)) * 50, jnp.float32)
    kwargs = dict(input_hw=(67, 67), width=1 / 8)
    caffe = alexnet.AlexNet(3, 8, variant="caffe", rngs=nnx.Rngs(0), **kwargs)
    caffenet = alexnet.AlexNet(3, 8, variant="caffenet", rngs=nnx.Rngs(0), **kwargs)
    # Same parameters (same shapes and seed); only the LRN / pool order differs.
    for a, b in zip(
        jax.tree.leaves(nnx.state(caffe, nnx.Param)),
        jax.tree.leaves(nnx.state(caffenet, nnx.Param)),
    ):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    caffe.eval()
    caffenet.eval()
    assert not np.allclose(np.asarray(caffe(x)), np.asarray(caffenet(x)))
