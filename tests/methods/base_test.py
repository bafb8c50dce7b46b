"""`methods.base.make_backbone`: the one place a method's trunk is built from the config."""

import jax.numpy as jnp
import pytest
from flax import nnx

from dpq_jax.methods import base
from dpq_jax.models.backbones import cnn_small


def test_make_backbone_builds_the_registered_class_with_the_method_arguments():
    net = base.make_backbone(
        "cnn_small", {"widths": (4,)}, 1, 7, dtype=jnp.float32, rngs=nnx.Rngs(0), method="X"
    )
    assert isinstance(net, cnn_small.CNNSmall) and len(net.convs) == 1
    assert net(jnp.zeros((2, 8, 8, 1))).shape == (2, 7)


@pytest.mark.parametrize("method", ["DSH", "DCBH", "DDH", "DCDH", "OPQN"])
def test_reserved_backbone_keys_name_the_key_and_the_method(method):
    with pytest.raises(ValueError, match=rf"\['features'\], which {method} sets itself"):
        base.make_backbone(
            "cnn_small", {"features": 3}, 1, 7, dtype=None, rngs=nnx.Rngs(0), method=method
        )
