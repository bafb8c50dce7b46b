"""ResNet-18/34/50/101/152 trunks in torchvision's layout (He et al. 2016, "v1.5": the stride
of a bottleneck sits on its 3x3 conv), up to the global average pool: `[B, H, W, C] -> [B, D]`.

Layout (224x224 inputs, any size from 32x32 up works):

    conv1 64@7x7 stride 2 pad 3 -> bn1 -> ReLU -> max-pool 3/2 pad 1         224 -> 56
    layer1..layer4: BasicBlocks (18, 34) or Bottlenecks (50, 101, 152),
      widths 64/128/256/512 (x4 for bottlenecks), stride 2 from layer2 on     56 -> 7
    global average pool -> [B, 512] (18, 34) or [B, 2048] (50, 101, 152)
    proj: Dense(D) only when `features` asks for another width (fresh weights)

Attribute names follow torchvision's (`conv1`, `bn1`, `layer2[0].downsample.conv` for
`layer2.0.downsample.0`), so `dpq_jax.models.pretrained` maps an ImageNet `state_dict` onto
them; `pretrained=PATH` loads such converted weights when the net is built. BatchNorm follows
the NNX mode: `model.train()` uses (global-)batch statistics, `model.eval()` the running ones.

References:
  K. He, X. Zhang, S. Ren, J. Sun, "Deep Residual Learning for Image Recognition", CVPR 2016,
  Table 1; torchvision `models/resnet.py`.
"""

import jax
import jax.numpy as jnp
from flax import nnx

from dpq_jax.models import pretrained as pretrained_lib
from dpq_jax.typing import Array, Float

# PyTorch's BatchNorm defaults (its momentum 0.1 is 0.9 here) and torchvision's conv init
# (kaiming normal, fan_out), so a fresh net starts as torchvision's does.
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5
KERNEL_INIT = jax.nn.initializers.variance_scaling(2.0, "fan_out", "normal")
LINEAR_INIT = jax.nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")
# depth -> (block kind, blocks per stage), torchvision's `resnet18` ... `resnet152`.
DEPTHS = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
}
STAGE_WIDTHS = (64, 128, 256, 512)
MIN_INPUT = 32  # five halvings leave at least 1x1


def _conv(cin, cout, kernel, stride, dtype, rngs):
    pad = (kernel - 1) // 2
    return nnx.Conv(
        cin,
        cout,
        (kernel, kernel),
        strides=(stride, stride),
        padding=((pad, pad), (pad, pad)),
        use_bias=False,
        dtype=dtype,
        kernel_init=KERNEL_INIT,
        rngs=rngs,
    )


def _bn(channels, dtype, rngs):
    return nnx.BatchNorm(channels, momentum=BN_MOMENTUM, epsilon=BN_EPSILON, dtype=dtype, rngs=rngs)


class Downsample(nnx.Module):
    """The shortcut's 1x1 conv (stride s) and BatchNorm (torchvision `downsample.0`, `.1`)."""

    def __init__(self, cin: int, cout: int, stride: int, *, dtype, rngs: nnx.Rngs):
        self.conv = _conv(cin, cout, 1, stride, dtype, rngs)
        self.bn = _bn(cout, dtype, rngs)

    def __call__(self, x):
        return self.bn(self.conv(x))


class BasicBlock(nnx.Module):
    """3x3 conv (stride s) -> BN -> ReLU -> 3x3 conv -> BN, plus the shortcut, -> ReLU."""

    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int, *, dtype, rngs: nnx.Rngs):
        self.conv1 = _conv(cin, planes, 3, stride, dtype, rngs)
        self.bn1 = _bn(planes, dtype, rngs)
        self.conv2 = _conv(planes, planes, 3, 1, dtype, rngs)
        self.bn2 = _bn(planes, dtype, rngs)
        self.downsample = (
            Downsample(cin, planes, stride, dtype=dtype, rngs=rngs)
            if stride != 1 or cin != planes
            else None
        )

    def __call__(self, x):
        y = jax.nn.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        shortcut = x if self.downsample is None else self.downsample(x)
        return jax.nn.relu(y + shortcut)


class Bottleneck(nnx.Module):
    """1x1 conv -> BN -> ReLU -> 3x3 conv (stride s) -> BN -> ReLU -> 1x1 conv (4x) -> BN,
    plus the shortcut, -> ReLU."""

    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int, *, dtype, rngs: nnx.Rngs):
        cout = planes * self.expansion
        self.conv1 = _conv(cin, planes, 1, 1, dtype, rngs)
        self.bn1 = _bn(planes, dtype, rngs)
        self.conv2 = _conv(planes, planes, 3, stride, dtype, rngs)
        self.bn2 = _bn(planes, dtype, rngs)
        self.conv3 = _conv(planes, cout, 1, 1, dtype, rngs)
        self.bn3 = _bn(cout, dtype, rngs)
        self.downsample = (
            Downsample(cin, cout, stride, dtype=dtype, rngs=rngs)
            if stride != 1 or cin != cout
            else None
        )

    def __call__(self, x):
        y = jax.nn.relu(self.bn1(self.conv1(x)))
        y = jax.nn.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        shortcut = x if self.downsample is None else self.downsample(x)
        return jax.nn.relu(y + shortcut)


def stage_widths(width: float) -> tuple[int, ...]:
    """The `planes` of layer1..layer4 for a width multiplier (64/128/256/512 at 1.0).

    Example:
      >>> stage_widths(1.0), stage_widths(1 / 16)
      ((64, 128, 256, 512), (4, 8, 16, 32))
    """
    return tuple(max(1, round(w * width)) for w in STAGE_WIDTHS)


class ResNet(nnx.Module):
    """torchvision's ResNet without its classifier `fc` (module docstring).

    Attributes:
      features: D, the output width.
      trunk_features: the pooled width before `proj` (512 or 2048 at width 1).
    """

    def __init__(
        self,
        in_channels: int,
        features: int = 0,
        *,
        depth: int = 50,
        width: float = 1.0,
        pretrained: str = "",
        dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        """Builds the network.

        Args:
          in_channels: C of the input images (3 for RGB, and for ImageNet weights).
          features: D; 0 or the pooled width (512 for ResNet-18/34, 2048 for 50/101/152 at
            width 1) returns the pooled features, another value adds a fresh Dense(D) `proj`.
          depth: 18, 34, 50, 101 or 152.
          width: multiplier of every stage width (tests and CPU runs; 1.0 for ImageNet
            weights).
          pretrained: path of weights converted by `dpq-convert` (`dpq_jax.models.pretrained`),
            loaded into the net once built; "" keeps the fresh initialisation.
          dtype: compute dtype (`jnp.bfloat16` on accelerators); parameters stay float32.
          rngs: `nnx.Rngs` for parameter initialisation.

        Raises:
          ValueError: an unknown depth, non-positive sizes, or pretrained weights that do not
            fit this net (the message names the layer).
        """
        if depth not in DEPTHS:
            raise ValueError(f"ResNet depth must be one of {sorted(DEPTHS)}, got {depth}.")
        if in_channels < 1 or features < 0 or width <= 0:
            raise ValueError(
                f"in_channels ({in_channels}) and width ({width}) must be positive and "
                f"features ({features}) >= 0 (0 = the pooled width)."
            )
        if pretrained:  # a wrong architecture fails before the layers are built
            pretrained_lib.check_architecture(pretrained, backbone="resnet", arch={"depth": depth})
        self.dtype = dtype
        self.depth = depth
        kind, blocks = DEPTHS[depth]
        block = BasicBlock if kind == "basic" else Bottleneck
        planes = stage_widths(width)
        channels = planes[0]
        self.conv1 = nnx.Conv(
            in_channels,
            channels,
            (7, 7),
            strides=(2, 2),
            padding=((3, 3), (3, 3)),
            use_bias=False,
            dtype=dtype,
            kernel_init=KERNEL_INIT,
            rngs=rngs,
        )
        self.bn1 = _bn(channels, dtype, rngs)
        stages = []
        for stage, (p, n) in enumerate(zip(planes, blocks, strict=True)):
            layer = []
            for i in range(n):
                stride = 2 if stage > 0 and i == 0 else 1
                layer.append(block(channels, p, stride, dtype=dtype, rngs=rngs))
                channels = p * block.expansion
            stages.append(nnx.List(layer))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.trunk_features = channels
        self.features = features or channels
        self.proj = (
            nnx.Linear(channels, features, dtype=dtype, kernel_init=LINEAR_INIT, rngs=rngs)
            if features and features != channels
            else None
        )
        if pretrained:
            pretrained_lib.load_into(
                self, pretrained, backbone="resnet", arch={"depth": depth}, dont_load=("proj",)
            )

    def __call__(self, x: Float[Array, "B H W C"]) -> Float[Array, "B D"]:
        """Pooled features of a batch of images.

        Raises:
          ValueError: the images are not `[B, H, W, C]` with H, W >= 32.
        """
        if x.ndim != 4 or min(x.shape[1:3]) < MIN_INPUT:
            raise ValueError(
                f"ResNet needs [B, H, W, C] images of at least {MIN_INPUT}x{MIN_INPUT}, got "
                f"shape {tuple(x.shape)}; resize the images (224x224 for ImageNet weights)."
            )
        x = jax.nn.relu(self.bn1(self.conv1(x.astype(self.dtype))))
        x = nnx.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            for block in layer:
                x = block(x)
        x = jnp.mean(x.astype(jnp.float32), axis=(1, 2))  # [B, C] global average pool
        if self.proj is not None:
            x = self.proj(x.astype(self.dtype))
        return x.astype(jnp.float32)


Model = ResNet  # the registry's entry point (`registry.get("backbone", "resnet")`)
