"""VGG-11/13/16/19, with or without BatchNorm, in torchvision's layout, up to fc7:
`[B, H, W, C] -> [B, D]` (Simonyan & Zisserman 2015, configurations A, B, D, E).

Layout of VGG-16 (224x224 inputs, any size from 32x32 up works):

    [conv 3x3 pad 1 (-> BN) -> ReLU] x (2, 2, 3, 3, 3), widths 64/128/256/512/512,
      a 2x2 max-pool after each group                                     224 -> 7
    adaptive average pool to 7x7 -> flatten
    fc6 4096 -> ReLU -> dropout 0.5 -> fc7 D (4096) -> ReLU -> dropout 0.5   the output [B, D]

The convs sit in `convs` (and their BatchNorms in `norms`) in order; `torch_feature_indices`
says which of torchvision's `features.N` each one is, so `dpq_jax.models.pretrained` maps an
ImageNet `state_dict` onto the net; `pretrained=PATH` loads such converted weights when the net
is built. BatchNorm follows the NNX mode (`model.train()` / `model.eval()`).

References:
  K. Simonyan, A. Zisserman, "Very Deep Convolutional Networks for Large-Scale Image
  Recognition", ICLR 2015, Table 1; S. Ioffe, C. Szegedy, "Batch Normalization", ICML 2015;
  torchvision `models/vgg.py`.
"""

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from dpq_jax.models import pretrained as pretrained_lib
from dpq_jax.models.backbones.alexnet import adaptive_avg_pool
from dpq_jax.typing import Array, Float

BN_MOMENTUM = 0.9  # PyTorch's BatchNorm momentum 0.1
BN_EPSILON = 1e-5
# torchvision's init: kaiming normal (fan_out) convs, N(0, 0.01) linears.
KERNEL_INIT = jax.nn.initializers.variance_scaling(2.0, "fan_out", "normal")
LINEAR_INIT = jax.nn.initializers.normal(0.01)
# depth -> conv widths per group (each group ends in a 2x2 max-pool), torchvision's cfgs.
GROUPS = {
    11: ((64,), (128,), (256, 256), (512, 512), (512, 512)),
    13: ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512)),
    16: ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512)),
    19: ((64, 64), (128, 128), (256,) * 4, (512,) * 4, (512,) * 4),
}
FC = 4096
POOL_HW = (7, 7)  # torchvision's AdaptiveAvgPool2d before the classifier
MIN_INPUT = 32  # five 2x2 pools leave at least 1x1


def torch_feature_indices(depth: int, batch_norm: bool) -> tuple[tuple[int, int | None], ...]:
    """`(conv index, BatchNorm index or None)` in torchvision's `features` Sequential for each
    conv in order (ReLUs and pools take indices too).

    Example:
      >>> torch_feature_indices(11, False)[:3]
      ((0, None), (3, None), (6, None))
      >>> torch_feature_indices(11, True)[:2]
      ((0, 1), (4, 5))
    """
    if depth not in GROUPS:
        raise ValueError(f"VGG depth must be one of {sorted(GROUPS)}, got {depth}.")
    out, index = [], 0
    for group in GROUPS[depth]:
        for _ in group:
            out.append((index, index + 1 if batch_norm else None))
            index += 3 if batch_norm else 2  # conv (BN) ReLU
        index += 1  # max-pool
    return tuple(out)


class VGG(nnx.Module):
    """torchvision's VGG without its last classifier layer (module docstring).

    Attributes:
      features: D, the width of fc7.
    """

    def __init__(
        self,
        in_channels: int,
        features: int = 4096,
        *,
        depth: int = 16,
        batch_norm: bool = False,
        width: float = 1.0,
        dropout: float = 0.5,
        pretrained: str = "",
        dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        """Builds the network.

        Args:
          in_channels: C of the input images (3 for RGB, and for ImageNet weights).
          features: D, the width of fc7 (4096; ImageNet weights need 4096).
          depth: 11, 13, 16 or 19.
          batch_norm: BatchNorm after every conv (torchvision's `vgg16_bn`).
          width: multiplier of every conv width and of fc6 (tests and CPU runs).
          dropout: dropout rate after fc6 and fc7 (active in `model.train()` mode).
          pretrained: path of weights converted by `dpq-convert` (`dpq_jax.models.pretrained`),
            loaded into the net once built; "" keeps the fresh initialisation.
          dtype: compute dtype (`jnp.bfloat16` on accelerators); parameters stay float32.
          rngs: `nnx.Rngs` for initialisation and the `dropout` stream.

        Raises:
          ValueError: an unknown depth, non-positive sizes, a dropout outside [0, 1), or
            pretrained weights that do not fit this net (the message names the layer).
        """
        if depth not in GROUPS:
            raise ValueError(f"VGG depth must be one of {sorted(GROUPS)}, got {depth}.")
        if in_channels < 1 or features < 1 or width <= 0 or not 0.0 <= dropout < 1.0:
            raise ValueError(
                f"in_channels ({in_channels}), features ({features}) and width ({width}) must be "
                f"positive and dropout ({dropout}) in [0, 1)."
            )
        arch = {"depth": depth, "batch_norm": batch_norm}
        if pretrained:  # a wrong architecture fails before the layers are built
            pretrained_lib.check_architecture(pretrained, backbone="vgg", arch=arch)
        self.dtype = dtype
        self.features = features
        convs, norms, pool_after = [], [], []
        channels = in_channels
        for group in GROUPS[depth]:
            for i, out in enumerate(group):
                out = max(1, round(out * width))
                convs.append(
                    nnx.Conv(
                        channels,
                        out,
                        (3, 3),
                        padding=((1, 1), (1, 1)),
                        dtype=dtype,
                        kernel_init=KERNEL_INIT,
                        rngs=rngs,
                    )
                )
                if batch_norm:
                    norms.append(
                        nnx.BatchNorm(
                            out, momentum=BN_MOMENTUM, epsilon=BN_EPSILON, dtype=dtype, rngs=rngs
                        )
                    )
                pool_after.append(i == len(group) - 1)
                channels = out
        self.convs = nnx.List(convs)
        self.norms = nnx.List(norms)
        self.pool_after = tuple(pool_after)
        fc6 = max(1, round(FC * width))
        flat = POOL_HW[0] * POOL_HW[1] * channels  # 7 * 7 * 512 = 25088
        self.fc6 = nnx.Linear(flat, fc6, dtype=dtype, kernel_init=LINEAR_INIT, rngs=rngs)
        self.fc7 = nnx.Linear(fc6, features, dtype=dtype, kernel_init=LINEAR_INIT, rngs=rngs)
        self.dropout = nnx.Dropout(dropout, rngs=rngs)
        if pretrained:
            pretrained_lib.load_into(
                self, pretrained, backbone="vgg", arch={"depth": depth, "batch_norm": batch_norm}
            )

    def __call__(self, x: Float[Array, "B H W C"]) -> Float[Array, "B D"]:
        """fc7 features of a batch of images.

        Raises:
          ValueError: the images are not `[B, H, W, C]` with H, W >= 32.
        """
        if x.ndim != 4 or min(x.shape[1:3]) < MIN_INPUT:
            raise ValueError(
                f"VGG needs [B, H, W, C] images of at least {MIN_INPUT}x{MIN_INPUT}, got shape "
                f"{tuple(x.shape)}; resize the images (224x224 for ImageNet weights)."
            )
        x = x.astype(self.dtype)
        norms: Sequence = self.norms if len(self.norms) else (None,) * len(self.convs)
        for conv, norm, pool in zip(self.convs, norms, self.pool_after, strict=True):
            x = conv(x)
            if norm is not None:
                x = norm(x)
            x = jax.nn.relu(x)
            if pool:
                x = nnx.max_pool(x, (2, 2), strides=(2, 2), padding="VALID")
        x = adaptive_avg_pool(x, POOL_HW).astype(self.dtype)
        x = x.reshape(x.shape[0], -1)  # [B, 7*7*C], HWC order (the converter permutes fc6)
        x = self.dropout(jax.nn.relu(self.fc6(x)))
        x = self.dropout(jax.nn.relu(self.fc7(x)))
        return x.astype(jnp.float32)


Model = VGG  # the registry's entry point (`registry.get("backbone", "vgg")`)
