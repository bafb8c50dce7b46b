"""The DDH network trunk (Lin, Li & Tang, IJCAI 2017): three conv-pool blocks and an unshared
(locally-connected) convolution, whose two flattened maps are concatenated ("multi-scale").

Layout (the reference `DDH.py`, METHODS.md §5.2; sizes at 32×32):

    conv 20@3×3 valid -> BN -> ReLU -> max-pool 2    30 -> 15
    conv 40@2×2 valid -> BN -> ReLU -> max-pool 2    14 -> 7
    conv 60@2×2 valid -> BN -> ReLU -> max-pool 2     6 -> 3   -> flatten (3·3·60 = 540)
    locally-connected 80@2×2 valid -> BN -> ReLU     2          -> flatten (2·2·80 = 320)
    concat                                                     -> 860

Pools are 2×2, stride 2, floor ('valid'). The BN after the locally-connected layer is per
channel, as Keras' `BatchNormalization(axis=1)` on its channels-first output. Every size follows
from `input_hw` (`trunk_width`): 28×28 Fashion-MNIST gives 240 + 80 = 320, 32×26 ORL faces
360 + 160 = 520; inputs below 24×24 leave no 2×2 map for the locally-connected layer.

**`features`.** The paper's next layer, the "face feature layer" Dense(4·bits) -> BN -> ReLU,
has a width that depends on the code length, so DDH and DDQH (`dpq_jax/methods/ddh.py`) build
it per head, inside the method. This trunk therefore returns the concatenation itself when
`features = 0` (the paper; the DDH configs' default), with width `out_features =
trunk_width(input_hw, widths)`. A positive `features` appends one shared Dense(features) -> BN
-> ReLU, so the trunk also serves methods that need a fixed feature width (DSH, OPQN). Either
way `out_features` is the width of the output.

Initialisation as the reference: He-uniform conv and locally-connected kernels, Glorot-uniform
dense kernels, zero biases (the convolutions keep their bias before BN, as Keras does). The
locally-connected fan-in is one position's kh·kw·C (240 at 32×32); Keras 1 takes √(Π shape) of
its 3-D weight (≈ 277), a negligible difference. BN uses the project's momentum 0.9 and epsilon
1e-5 (`cnn_small`), not Keras 1's 0.99 / 1e-3.
"""

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from dpq_jax.models.backbones.cnn_small import BN_EPSILON, BN_MOMENTUM
from dpq_jax.models.locally_connected import LocallyConnected2D
from dpq_jax.typing import Array, Float

_HE = jax.nn.initializers.he_uniform()
_GLOROT = jax.nn.initializers.xavier_uniform()
CONV_SIZES = (3, 2, 2)  # kernel sides of the three shared convolutions
LC_SIZE = 2  # kernel side of the locally-connected layer
DEFAULT_WIDTHS = (20, 40, 60, 80)


def trunk_shapes(input_hw: Sequence[int]) -> tuple[tuple[int, int], tuple[int, int]]:
    """`((H3, W3), (H4, W4))`: the map after the third pool and after the locally-connected
    layer, for `input_hw` images.

    Raises:
      ValueError: the input is too small (below 24×24) for a 2×2 map after the third pool.

    Example:
      >>> trunk_shapes((32, 32)), trunk_shapes((28, 28)), trunk_shapes((32, 26))
      (((3, 3), (2, 2)), ((2, 2), (1, 1)), ((3, 2), (2, 1)))
    """
    sizes = [int(v) for v in input_hw]
    if len(sizes) != 2:
        raise ValueError(f"input_hw must be (H, W), got {input_hw!r}.")
    out = []
    for size in sizes:
        for k in CONV_SIZES:  # valid conv, then a floor 2×2 pool
            size = (size - k + 1) // 2
        out.append(size)
    h3, w3 = out
    if h3 < LC_SIZE or w3 < LC_SIZE:
        raise ValueError(
            f"DDHNet needs inputs of at least 24x24 (a {LC_SIZE}x{LC_SIZE} map after the third "
            f"pool for the locally-connected layer), got {sizes[0]}x{sizes[1]}; resize the "
            f"images or use another backbone."
        )
    return (h3, w3), (h3 - LC_SIZE + 1, w3 - LC_SIZE + 1)


def trunk_width(input_hw: Sequence[int], widths: Sequence[int] = DEFAULT_WIDTHS) -> int:
    """Width of the concatenated output: `H3·W3·widths[2] + H4·W4·widths[3]`.

    Example:
      >>> trunk_width((32, 32)), trunk_width((28, 28)), trunk_width((32, 26))
      (860, 320, 520)
    """
    (h3, w3), (h4, w4) = trunk_shapes(input_hw)
    return h3 * w3 * int(widths[2]) + h4 * w4 * int(widths[3])


class DDHNet(nnx.Module):
    """The DDH trunk (see the module docstring); `out_features` is its output width."""

    def __init__(
        self,
        in_channels: int,
        features: int = 0,
        *,
        widths: Sequence[int] = DEFAULT_WIDTHS,
        input_hw: Sequence[int] = (32, 32),
        dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        """Builds the trunk.

        Args:
          in_channels: C of the input images.
          features: 0 returns the concatenation (the paper); a positive D appends a shared
            Dense(D) -> BN -> ReLU.
          widths: channels of the three convolutions and of the locally-connected layer
            (DDH: 20, 40, 60, 80).
          input_hw: `(H, W)` of the input images (sets the locally-connected layer's shape).
          dtype: compute dtype of the convolutions and dense layers.
          rngs: `nnx.Rngs`.

        Raises:
          ValueError: not four positive widths, negative features, or too small an input.
        """
        widths = tuple(int(w) for w in widths)
        if len(widths) != 4 or min(widths) < 1 or in_channels < 1 or features < 0:
            raise ValueError(
                f"DDHNet needs four positive widths (3 convs + the locally-connected layer), "
                f"in_channels >= 1 and features >= 0 (0: the concatenation itself), got "
                f"widths={widths}, in_channels={in_channels}, features={features}."
            )
        (h3, w3), _ = trunk_shapes(input_hw)
        self.dtype = dtype
        channels = (in_channels, *widths[:3])
        self.convs = nnx.List(
            [
                nnx.Conv(
                    channels[i],
                    channels[i + 1],
                    (k, k),
                    padding="VALID",
                    dtype=dtype,
                    kernel_init=_HE,
                    rngs=rngs,
                )
                for i, k in enumerate(CONV_SIZES)
            ]
        )
        bn = dict(momentum=BN_MOMENTUM, epsilon=BN_EPSILON, dtype=dtype, rngs=rngs)
        self.norms = nnx.List([nnx.BatchNorm(w, **bn) for w in widths[:3]])
        self.local = LocallyConnected2D(
            widths[2], widths[3], LC_SIZE, input_hw=(h3, w3), dtype=dtype, rngs=rngs
        )
        self.local_norm = nnx.BatchNorm(widths[3], **bn)
        concat = trunk_width(input_hw, widths)
        if features:
            self.face = nnx.Linear(concat, features, dtype=dtype, kernel_init=_GLOROT, rngs=rngs)
            self.face_norm = nnx.BatchNorm(features, **{**bn, "dtype": jnp.float32})
        else:
            self.face = self.face_norm = None
        self.out_features = int(features or concat)

    def __call__(self, x: Float[Array, "B H W C"]) -> Float[Array, "B F"]:
        """`[B, H, W, C]` images (H, W = `input_hw`) -> `[B, out_features]` float32."""
        x = x.astype(self.dtype)
        for conv, norm in zip(self.convs, self.norms, strict=True):
            x = jax.nn.relu(norm(conv(x)))
            x = nnx.max_pool(x, (2, 2), strides=(2, 2), padding="VALID")
        local = jax.nn.relu(self.local_norm(self.local(x)))
        b = x.shape[0]
        out = jnp.concatenate([x.reshape(b, -1), local.reshape(b, -1)], axis=-1)
        if self.face is not None:
            out = jax.nn.relu(self.face_norm(self.face(out).astype(jnp.float32)))
        return out.astype(jnp.float32)


Model = DDHNet  # the registry's entry point (`registry.get("backbone", "ddh_net")`)
