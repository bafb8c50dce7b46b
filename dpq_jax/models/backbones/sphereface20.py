"""SphereFace-20-style residual CNN, the backbone of OPQN (`resnet20_pq`).

Four stages; each opens with conv3x3 (with bias, stride s) -> BN -> PReLU and continues with
residual units `x + PReLU(BN(conv(PReLU(BN(conv(x))))))` (convs without bias). There is no
pooling; the head is flatten -> BN -> Dropout -> Dense(D) -> BN(D).

Convolutions use PyTorch's padding of 1 on each side, so the maps are 32 -> 32/16/8/4 for
32x32 inputs (strides 1, 2, 2, 2) and 112 -> 56/28/14/7 for 112x112 (strides 2, 2, 2, 2). The
flatten runs over `[H, W, C]` (NHWC), not PyTorch's `[C, H, W]`.

References:
  Liu et al., "SphereFace: Deep Hypersphere Embedding for Face Recognition", CVPR 2017, Table 2
  (the 20-layer net); Zhang, Zhe & Yan, "Orthonormal Product Quantization Network", PR 2023,
  Sec. 4.2; METHODS.md Sec. 1.1.
"""

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from dpq_jax.typing import Array, Float

BN_MOMENTUM = 0.9  # PyTorch's momentum 0.1
BN_EPSILON = 1e-5
PRELU_INIT = 0.25  # PyTorch nn.PReLU default
_STRIDES = {32: (1, 2, 2, 2), 112: (2, 2, 2, 2)}
_PAD = ((1, 1), (1, 1))
# PyTorch's default Conv2d/Linear weight init, U(+-1/sqrt(fan_in)) (kaiming_uniform with
# a=sqrt(5)), which the OPQN reference relies on; a uniform draw also compiles much faster than
# Flax's truncated-normal default.
KERNEL_INIT = jax.nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


class PReLU(nnx.Module):
    """Parametric ReLU with one learnable slope per channel (last axis), init 0.25."""

    def __init__(self, channels: int, *, init: float = PRELU_INIT):
        self.slope = nnx.Param(jnp.full((channels,), init, jnp.float32))  # [C]

    def __call__(self, x: Float[Array, "... C"]) -> Float[Array, "... C"]:
        slope = self.slope[...].astype(x.dtype)
        return jnp.where(x >= 0, x, slope * x)


class _ConvBNPReLU(nnx.Module):
    """conv3x3 (padding 1) -> BatchNorm -> per-channel PReLU."""

    def __init__(self, cin: int, cout: int, stride: int, use_bias: bool, dtype, rngs: nnx.Rngs):
        self.conv = nnx.Conv(
            cin,
            cout,
            (3, 3),
            strides=stride,
            padding=_PAD,
            use_bias=use_bias,
            dtype=dtype,
            kernel_init=KERNEL_INIT,
            rngs=rngs,
        )
        self.norm = nnx.BatchNorm(
            cout, momentum=BN_MOMENTUM, epsilon=BN_EPSILON, dtype=dtype, rngs=rngs
        )
        self.act = PReLU(cout)

    def __call__(self, x):
        return self.act(self.norm(self.conv(x)))


class _Unit(nnx.Module):
    """Residual unit: x + (conv-BN-PReLU) x 2, convs without bias."""

    def __init__(self, channels: int, dtype, rngs: nnx.Rngs):
        self.first = _ConvBNPReLU(channels, channels, 1, False, dtype, rngs)
        self.second = _ConvBNPReLU(channels, channels, 1, False, dtype, rngs)

    def __call__(self, x):
        return x + self.second(self.first(x))


def _out_size(size: int, stride: int) -> int:
    """Spatial size after a 3x3 conv with padding 1 and the given stride."""
    return (size + 2 - 3) // stride + 1


class SphereFace20(nnx.Module):
    """The OPQN backbone: 4 residual stages without pooling, then a BN/Dropout/Dense/BN head.

    With the defaults (widths 64/128/256/512, units 1/2/4/1) it has 20 conv layers
    (4 stage convs + 2 x 8 unit convs). Parameters are float32; the body computes in `dtype`;
    the output features are float32.
    """

    def __init__(
        self,
        in_channels: int,
        features: int,
        *,
        input_size: int = 32,
        widths: Sequence[int] = (64, 128, 256, 512),
        units: Sequence[int] = (1, 2, 4, 1),
        dropout: float = 0.5,
        width_multiplier: float = 1.0,
        dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        """Builds the network.

        Args:
          in_channels: C of the input images.
          features: D, the output embedding width.
          input_size: 32 (strides 1, 2, 2, 2; final map 4x4) or 112 (strides 2, 2, 2, 2;
            final map 7x7). Inputs must be `input_size x input_size`.
          widths: channels of the 4 stages.
          units: residual units per stage.
          dropout: dropout rate before the dense layer (active in `model.train()` mode).
          width_multiplier: scales every width (rounded, at least 1); for tiny test nets.
          dtype: compute dtype of the body (`jnp.bfloat16` on accelerators).
          rngs: `nnx.Rngs`; the `dropout` stream (or `default`) drives the dropout masks.

        Raises:
          ValueError: an unsupported `input_size`, mismatched `widths`/`units`, or
            non-positive sizes.
        """
        if input_size not in _STRIDES:
            raise ValueError(
                f"input_size must be one of {sorted(_STRIDES)} (OPQN's two regimes), got "
                f"{input_size}; resize the images to 32x32 or 112x112."
            )
        widths = tuple(max(1, round(w * width_multiplier)) for w in widths)
        units = tuple(int(u) for u in units)
        if len(widths) != 4 or len(units) != 4 or min(units) < 0:
            raise ValueError(
                f"SphereFace20 has 4 stages: widths and units need 4 entries each (units >= 0), "
                f"got widths={widths}, units={units}."
            )
        if in_channels < 1 or features < 1 or not 0.0 <= dropout < 1.0:
            raise ValueError(
                f"in_channels ({in_channels}) and features ({features}) must be positive and "
                f"dropout ({dropout}) in [0, 1)."
            )
        self.dtype = dtype
        self.input_size = input_size
        stages = []
        channels, size = in_channels, input_size
        for width, count, stride in zip(widths, units, _STRIDES[input_size]):
            layers = [_ConvBNPReLU(channels, width, stride, True, dtype, rngs)]
            layers += [_Unit(width, dtype, rngs) for _ in range(count)]
            stages.append(nnx.Sequential(*layers))
            channels, size = width, _out_size(size, stride)
        self.stages = nnx.List(stages)
        flat = size * size * channels  # 4*4*512 = 8192 or 7*7*512 = 25088
        self.flat_norm = nnx.BatchNorm(
            flat, momentum=BN_MOMENTUM, epsilon=BN_EPSILON, dtype=dtype, rngs=rngs
        )
        self.dropout = nnx.Dropout(dropout, rngs=rngs)
        self.dense = nnx.Linear(flat, features, dtype=dtype, kernel_init=KERNEL_INIT, rngs=rngs)
        self.out_norm = nnx.BatchNorm(
            features, momentum=BN_MOMENTUM, epsilon=BN_EPSILON, dtype=jnp.float32, rngs=rngs
        )

    def __call__(self, x: Float[Array, "B H W C"]) -> Float[Array, "B D"]:
        """Embeds a batch of `input_size x input_size` images.

        Args:
          x: `[B, S, S, C]` images with S = `input_size`.

        Returns:
          `[B, D]` float32 features.

        Raises:
          ValueError: the spatial size is not `input_size`.
        """
        if x.ndim != 4 or x.shape[1:3] != (self.input_size, self.input_size):
            raise ValueError(
                f"SphereFace20 built for {self.input_size}x{self.input_size} inputs "
                f"[B, H, W, C], got shape {tuple(x.shape)}; resize the images or rebuild "
                f"with input_size={x.shape[1] if x.ndim == 4 else '?'}."
            )
        x = x.astype(self.dtype)
        for stage in self.stages:
            x = stage(x)
        x = x.reshape(x.shape[0], -1)  # [B, H*W*C]
        x = self.dropout(self.flat_norm(x))
        x = self.dense(x)
        return self.out_norm(x.astype(jnp.float32))


Model = SphereFace20  # the registry's entry point (`registry.get("backbone", "sphereface20")`)
