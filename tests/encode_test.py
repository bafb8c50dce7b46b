"""encode_split returns every item exactly once, in order, for any N and device count."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from dpq_jax import encode, parallel
from dpq_jax.data.sources import SyntheticSource


class _Mean(nnx.Module):
    def __init__(self):
        self.scale = nnx.Param(jnp.asarray(2.0))


def _fn(model, images):
    flat = images.reshape(images.shape[0], -1)
    return {"feats": model.scale[...] * flat.mean(axis=1, keepdims=True), "first": flat[:, :1]}


@pytest.mark.parametrize("n", [15, 16, 17])  # 8k - 1, 8k, 8k + 1
def test_every_item_exactly_once(cpu_devices, n):
    mesh = parallel.make_mesh(devices=cpu_devices)
    source = SyntheticSource(num_classes=3, per_class=10, shape=(4, 4, 1), seed=1)
    indices = np.random.default_rng(0).permutation(len(source))[:n]
    model = _Mean()
    graphdef, state = nnx.split((model, nnx.Variable(jnp.zeros(()))))
    state = jax.device_put(state, parallel.replicated(mesh))
    with jax.set_mesh(mesh):
        predict = encode.make_predict_fn(graphdef, _fn)
        out = encode.encode_split(
            predict, state, source, indices, pp_spec="value_range(0,1)", batch_size=8, mesh=mesh
        )
    images = source.images[indices].reshape(n, -1).astype(np.float64) / 255.0
    assert out["feats"].shape == (n, 1)
    np.testing.assert_allclose(out["feats"][:, 0], 2.0 * images.mean(axis=1), rtol=1e-5)
    np.testing.assert_allclose(out["first"][:, 0], images[:, 0], rtol=1e-6)


def test_empty_split_is_an_error(cpu_devices):
    mesh = parallel.make_mesh(devices=cpu_devices)
    source = SyntheticSource(num_classes=2, per_class=2, shape=(4, 4, 1))
    with pytest.raises(ValueError, match="split is empty"):
        encode.encode_split(
            None, None, source, [], pp_spec="value_range(0,1)", batch_size=8, mesh=mesh
        )


def test_non_finite_items_are_refused_naming_them(cpu_devices):
    mesh = parallel.make_mesh(devices=cpu_devices)
    source = SyntheticSource(num_classes=3, per_class=4, shape=(4, 4, 1), seed=2)
    # A source whose pixels are not validated uint8 (e.g. a user's own source class).
    images = source.images.astype(np.float32)
    images[7, 1, 2, 0] = np.nan
    images[5, 0, 0, 0] = np.inf
    source.images = images
    model = _Mean()
    graphdef, state = nnx.split((model, nnx.Variable(jnp.zeros(()))))
    state = jax.device_put(state, parallel.replicated(mesh))
    options = dict(pp_spec="value_range(0,1)", batch_size=8, mesh=mesh)
    with jax.set_mesh(mesh):
        predict = encode.make_predict_fn(graphdef, _fn)
        with pytest.raises(ValueError, match=r"Items \[5, 7\] .* NaN or infinite"):
            encode.encode_split(predict, state, source, np.arange(12), **options)
        finite = encode.encode_split(predict, state, source, [0, 1, 2, 8, 10], **options)
    assert np.isfinite(finite["feats"]).all()
