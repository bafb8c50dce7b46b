"""DFHNet: the 32×32 attention network of DCDH (Zhang, Zhe, Chen & Yan, Pattern Recognition
2021; METHODS.md §5.5), up to FC 1024 → BN → ReLU. The hash layer (FC bits → BN) is the
method's head (`dpq_jax/methods/dcdh.py`), so one trunk can feed several code lengths.

Layout (the reference `model.py` of mzhang367/DCDH-PyTorch, channels for `widths = (32, 64,
128, 256)`, sizes at 32×32; every "conv" below is conv → BN → ReLU unless marked):

    residual-attention branch (the mask):
      encoder  e1 = conv 32@2×2/2 (16×16), e2 = conv 64@2×2/2 (8×8), e3 = conv 128@2×2/2 (4×4)
               bottleneck = conv 128@1×1 (4×4)
      decoder  d2 = BN(ReLU(deconv 64@3×3/2 (bottleneck)) + e2)        8×8, skip from e2
               d1 = BN(ReLU(deconv 32@3×3/2 (d2)) + e1)                16×16, skip from e1
               d0 = ReLU(deconv 16@3×3/2 (d1))                          32×32 (no BN)
               mask = sigmoid(conv 3@1×1 (d0), no BN)                   32×32×3
    trunk branch:  conv 32@3×3 pad 1 → conv 64@3×3 pad 1 → conv 128@3×3 pad 1 → conv 3@1×1
    mixed input:   x' = trunk + mask · trunk                            32×32×3
    features:      conv 32@3×3 → max-pool 2 → conv 64@2×2 → max-pool 2 → conv 128@2×2
                   → max-pool 2 = f3 (3×3×128);  conv 256@2×2 on f3 = f4 (2×2×256)
    fusion:        concat(flatten f3, flatten f4) (1152 + 1024 = 2176) → FC 1024 → BN → ReLU

Convolutions of the feature part are unpadded ("VALID") and the pools floor, as PyTorch's
defaults; each deconvolution is PyTorch's `ConvTranspose2d(k=3, stride=2, padding=1,
output_padding=1)`, which doubles the size: `lax.conv_transpose` with explicit padding
`(k-1-p, k-1-p+output_padding) = (1, 2)` (the kernel is stored unflipped, a relabelling of a
learned weight). The reference defines a BN after the last deconvolution but never uses it;
so does this net. Weights Xavier-normal (PyTorch's `xavier_normal_`, untruncated), biases 0,
as the reference's `weights_init`; BatchNorm uses `BN_MOMENTUM`/`BN_EPSILON` of `cnn_small`.

**Other input sizes.** The stride-2 encoder and the doubling decoder need sides divisible by 8
for the skip connections to line up. Our choice: only the attention branch sees the input
zero-padded (symmetrically; zero is the mean pixel after normalisation) to the next multiple
of 8, and its mask is cropped back to the input size; the trunk, the mixing and the feature
part run on the real H×W, with the FC width derived from `input_hw`. A 32×32 input is exactly
the reference net (FC input 2176); 28×28 Fashion-MNIST gives 2·2·128 + 1·1·256 = 768 and 32×26
ORL faces 3·2·128 + 2·1·256 = 1280 (`fused_width`). Padding keeps every real pixel and needs
no resize in the configs; resizing the input to 32×32 instead would change the data for every
method compared on the same trunk. The feature part needs at least 24 pixels per side.

`widths = (w1, w2, w3, w4)` scales every layer: the encoder and trunk use w1/w2/w3, the
decoder w2/w1/⌈w1/2⌉, the feature part w1/w2/w3/w4; `mix_channels` (3) is the width of the
mask and of the trunk's output (the reference's RGB count, kept for grey input too).
"""

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from dpq_jax.models.backbones.cnn_small import BN_EPSILON, BN_MOMENTUM
from dpq_jax.typing import Array, Float

# PyTorch's `init.xavier_normal_`: N(0, 2 / (fan_in + fan_out)), not truncated.
XAVIER_NORMAL = jax.nn.initializers.variance_scaling(1.0, "fan_avg", "normal")
MIN_SIDE = 24  # conv3 → pool → conv2 → pool → conv2 → pool → conv2 needs >= 1 output pixel
# PyTorch ConvTranspose2d(k=3, s=2, p=1, output_padding=1) as lax.conv_transpose padding.
DECONV_PADDING = ((1, 2), (1, 2))


def feature_sizes(side: int) -> tuple[int, int]:
    """Sides of f3 and f4 for an input side: conv3 → pool → conv2 → pool → conv2 → pool = f3,
    conv2 = f4 (unpadded convolutions, flooring 2×2 pools).

    Example:
      >>> [feature_sizes(s) for s in (32, 28, 26)]
      [(3, 2), (2, 1), (2, 1)]
    """
    if side < MIN_SIDE:
        raise ValueError(
            f"DFHNet needs inputs of at least {MIN_SIDE} pixels per side, got {side}; resize "
            f"the images (e.g. resize(32,32) in input.pp_train/pp_eval)."
        )
    s = (side - 2) // 2  # conv 3×3, pool
    s = (s - 1) // 2  # conv 2×2, pool
    s = (s - 1) // 2  # conv 2×2, pool
    return s, s - 1


def fused_width(input_hw: Sequence[int], widths: Sequence[int] = (32, 64, 128, 256)) -> int:
    """Width of concat(flatten f3, flatten f4), the input of the FC layer.

    Example:
      >>> [fused_width(hw) for hw in ((32, 32), (28, 28), (32, 26))]
      [2176, 768, 1280]
    """
    (h3, h4), (w3, w4) = (feature_sizes(int(v)) for v in input_hw)
    return h3 * w3 * int(widths[2]) + h4 * w4 * int(widths[3])


def attention_padding(side: int) -> tuple[int, int]:
    """`(before, after)` zero padding that takes a side to the next multiple of 8.

    Example:
      >>> [attention_padding(s) for s in (32, 28, 26)]
      [(0, 0), (2, 2), (3, 3)]
    """
    extra = -side % 8
    return extra // 2, extra - extra // 2


class ConvBN(nnx.Module):
    """conv → BatchNorm → ReLU (the reference's `Conv2d, BatchNorm2d, ReLU` blocks)."""

    def __init__(self, cin, cout, kernel, *, strides=1, padding="VALID", dtype, rngs):
        self.conv = nnx.Conv(
            cin,
            cout,
            (kernel, kernel),
            strides=(strides, strides),
            padding=padding,
            dtype=dtype,
            kernel_init=XAVIER_NORMAL,
            rngs=rngs,
        )
        self.norm = _batch_norm(cout, dtype, rngs)

    def __call__(self, x):
        return jax.nn.relu(self.norm(self.conv(x)))


def _batch_norm(width, dtype, rngs):
    return nnx.BatchNorm(width, momentum=BN_MOMENTUM, epsilon=BN_EPSILON, dtype=dtype, rngs=rngs)


def _deconv(cin, cout, dtype, rngs):
    return nnx.ConvTranspose(
        cin,
        cout,
        (3, 3),
        strides=(2, 2),
        padding=DECONV_PADDING,
        dtype=dtype,
        kernel_init=XAVIER_NORMAL,
        rngs=rngs,
    )


def _pool(x):
    return nnx.max_pool(x, (2, 2), strides=(2, 2), padding="VALID")


PAPER_WIDTHS = (32, 64, 128, 256)


def scaled_widths(width: float) -> tuple[int, ...]:
    """The paper's channel widths (32, 64, 128, 256) times `width`, at least 1 each.

    Example:
      >>> scaled_widths(0.25)
      (8, 16, 32, 64)
    """
    if not width > 0:
        raise ValueError(f"The width multiplier must be positive, got {width}.")
    return tuple(max(1, round(w * width)) for w in PAPER_WIDTHS)


class DFHNet(nnx.Module):
    """DCDH's attention trunk up to FC → BN → ReLU (see the module docstring)."""

    def __init__(
        self,
        in_channels: int,
        features: int = 1024,
        *,
        widths: Sequence[int] = (32, 64, 128, 256),
        mix_channels: int = 3,
        input_hw: Sequence[int] = (32, 32),
        dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        """Builds the net.

        Args:
          in_channels: C of the input images `[B, H, W, C]`.
          features: width of the FC layer (DCDH: 1024).
          widths: `(w1, w2, w3, w4)` channel widths (DCDH: 32, 64, 128, 256).
          mix_channels: channels of the attention mask and the trunk output (DCDH: 3).
          input_hw: `(H, W)` of the input images (sets the FC input width); each side >= 24.
          dtype: compute dtype of the convolutions and the FC layer.
          rngs: `nnx.Rngs`.

        Raises:
          ValueError: not four positive widths, non-positive sizes, or sides under 24.
        """
        widths = tuple(int(w) for w in widths)
        if len(widths) != 4 or min(widths) < 1 or min(in_channels, features, mix_channels) < 1:
            raise ValueError(
                f"DFHNet needs four positive widths and positive in_channels/features/"
                f"mix_channels, got widths={widths}, in_channels={in_channels}, "
                f"features={features}, mix_channels={mix_channels}."
            )
        if len(input_hw) != 2:
            raise ValueError(f"input_hw must be (H, W), got {input_hw!r}.")
        w1, w2, w3, w4 = widths
        self.dtype = dtype
        self.input_hw = tuple(int(v) for v in input_hw)
        kw = dict(dtype=dtype, rngs=rngs)
        # Attention branch: encoder, bottleneck, decoder with two skips, sigmoid mask.
        self.encoder = nnx.List(
            [
                ConvBN(cin, cout, 2, strides=2, **kw)
                for cin, cout in ((in_channels, w1), (w1, w2), (w2, w3))
            ]
        )
        self.bottleneck = ConvBN(w3, w3, 1, **kw)
        decoder_out = max(1, (w1 + 1) // 2)
        self.deconvs = nnx.List(
            [_deconv(w3, w2, **kw), _deconv(w2, w1, **kw), _deconv(w1, decoder_out, **kw)]
        )
        self.skip_norms = nnx.List([_batch_norm(w2, **kw), _batch_norm(w1, **kw)])
        self.mask_conv = nnx.Conv(
            decoder_out, mix_channels, (1, 1), dtype=dtype, kernel_init=XAVIER_NORMAL, rngs=rngs
        )
        # Trunk branch: 3×3 same-size convolutions, then 1×1 to mix_channels.
        self.trunk = nnx.List(
            [
                ConvBN(cin, cout, 3, padding=1, **kw)
                for cin, cout in ((in_channels, w1), (w1, w2), (w2, w3))
            ]
            + [ConvBN(w3, mix_channels, 1, **kw)]
        )
        # Feature part on the mixed input: f3 after three conv-pool blocks, f4 = conv of f3.
        self.features = nnx.List(
            [
                ConvBN(mix_channels, w1, 3, **kw),
                ConvBN(w1, w2, 2, **kw),
                ConvBN(w2, w3, 2, **kw),
            ]
        )
        self.conv4 = ConvBN(w3, w4, 2, **kw)
        self.fc = nnx.Linear(
            fused_width(self.input_hw, widths),
            features,
            dtype=dtype,
            kernel_init=XAVIER_NORMAL,
            rngs=rngs,
        )
        self.out_norm = _batch_norm(features, jnp.float32, rngs)

    def attention_mask(self, x: Float[Array, "B H W C"]) -> Float[Array, "B H W m"]:
        """The sigmoid mask in (0, 1), computed on x zero-padded to multiples of 8, then
        cropped back to x's H×W."""
        (ht, hb), (wl, wr) = attention_padding(x.shape[1]), attention_padding(x.shape[2])
        padded = jnp.pad(x, ((0, 0), (ht, hb), (wl, wr), (0, 0)))
        e1 = self.encoder[0](padded)
        e2 = self.encoder[1](e1)
        y = self.bottleneck(self.encoder[2](e2))
        y = self.skip_norms[0](jax.nn.relu(self.deconvs[0](y)) + e2)
        y = self.skip_norms[1](jax.nn.relu(self.deconvs[1](y)) + e1)
        y = jax.nn.relu(self.deconvs[2](y))
        mask = jax.nn.sigmoid(self.mask_conv(y))
        return mask[:, ht : ht + x.shape[1], wl : wl + x.shape[2]]

    def __call__(self, x: Float[Array, "B H W C"]) -> Float[Array, "B F"]:
        """`[B, H, W, C]` images (H, W = `input_hw`) -> `[B, features]` float32 (after ReLU)."""
        if tuple(x.shape[1:3]) != self.input_hw:
            raise ValueError(
                f"DFHNet was built for {self.input_hw[0]}x{self.input_hw[1]} inputs, got "
                f"{x.shape[1]}x{x.shape[2]}; set model.backbone.input_hw to the image size."
            )
        x = x.astype(self.dtype)
        trunk = x
        for block in self.trunk:
            trunk = block(trunk)
        mixed = trunk + self.attention_mask(x) * trunk
        f3 = mixed
        for block in self.features:
            f3 = _pool(block(f3))
        f4 = self.conv4(f3)
        fused = jnp.concatenate([f3.reshape(f3.shape[0], -1), f4.reshape(f4.shape[0], -1)], -1)
        y = self.out_norm(self.fc(fused).astype(jnp.float32))
        return jax.nn.relu(y)


Model = DFHNet  # the registry's entry point (`registry.get("backbone", "dfh_net")`)
