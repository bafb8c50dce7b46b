"""AlexNet up to fc7, the trunk of DPQ-G, DVSQ and the HashNet line, in the three layouts
ImageNet weights come in (`variant`):

- `"caffe"` (default): Caffe's `bvlc_alexnet` (Krizhevsky et al. 2012 as released in Caffe,
  METHODS §2.1), LRN before each of the first two pools; 227x227 inputs.
- `"caffenet"`: Caffe's `bvlc_reference_caffenet`, the same layers with each of the first two
  LRNs after its pool. This is the net of the `reference_pretrain.npy` that DVSQ, DeepHash and
  the DPQ reference code (`Encoder_Alex.py`) fine-tune.
- `"torchvision"`: torchvision's `alexnet` (the "one weird trick" variant): 64/192/384/256/256
  convs, no LRN, no groups, an adaptive average pool to 6x6 before fc6; 224x224 inputs.

Caffe layouts (227x227 inputs):

    conv1 96@11x11 stride 4 -> ReLU -> LRN -> max-pool 3/2          55 -> 27  (caffenet: pool, LRN)
    conv2 256@5x5 pad 2, 2 groups -> ReLU -> LRN -> max-pool 3/2   27 -> 13  (caffenet: pool, LRN)
    conv3 384@3x3 pad 1 -> ReLU
    conv4 384@3x3 pad 1, 2 groups -> ReLU
    conv5 256@3x3 pad 1, 2 groups -> ReLU -> max-pool 3/2          13 -> 6
    fc6 4096 -> ReLU -> dropout 0.5
    fc7 D (4096) -> ReLU -> dropout 0.5                             the output [B, D]

torchvision layout (224x224 inputs):

    conv1 64@11x11 stride 4 pad 2 -> ReLU -> max-pool 3/2          55 -> 27
    conv2 192@5x5 pad 2 -> ReLU -> max-pool 3/2                     27 -> 13
    conv3 384, conv4 256, conv5 256 @3x3 pad 1, each -> ReLU, max-pool 3/2    13 -> 6
    adaptive average pool to 6x6 (any input size from 63x63 up)
    dropout 0.5 -> fc6 4096 -> ReLU -> dropout 0.5 -> fc7 D (4096) -> ReLU    the output [B, D]

LRN is Caffe's across-channel normalisation (local size 5, alpha 1e-4, beta 0.75, k = 1). The
grouped convolutions keep the tensor shapes of the Caffe weights. Pools are floor-mode (Caffe's
ceil mode gives the same sizes at 227; the TensorFlow ports use floor mode). `width` scales every
conv and fc6 width (tests and CPU runs); `input_hw` sets fc6's input width for the Caffe
layouts, whose fc6 sees the pool5 map as it is (6x6 only at 227x227). `pretrained=PATH` loads
weights converted by `dpq-convert` (`dpq_jax.models.pretrained`).

References:
  A. Krizhevsky, I. Sutskever, G. E. Hinton, "ImageNet Classification with Deep Convolutional
  Neural Networks", NIPS 2012, Sec. 3.3 (LRN) and 3.5 (architecture); the Caffe
  `models/bvlc_alexnet/deploy.prototxt` and `models/bvlc_reference_caffenet/deploy.prototxt`;
  A. Krizhevsky, "One weird trick for parallelizing convolutional neural networks",
  arXiv 1404.5997 (torchvision's `models/alexnet.py`).
"""

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dpq_jax.models import pretrained as pretrained_lib
from dpq_jax.typing import Array, Float

# PyTorch's default weight init, U(+-1/sqrt(fan_in)) (as cnn_small): a from-scratch start.
KERNEL_INIT = jax.nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")
# (out channels, kernel, stride, padding, groups, LRN, max-pool) of conv1..conv5, Caffe layout.
CONVS = (
    (96, 11, 4, 0, 1, True, True),
    (256, 5, 1, 2, 2, True, True),
    (384, 3, 1, 1, 1, False, False),
    (384, 3, 1, 1, 2, False, False),
    (256, 3, 1, 1, 2, False, True),
)
# The same for torchvision's layout (no LRN, no groups).
TORCHVISION_CONVS = (
    (64, 11, 4, 2, 1, False, True),
    (192, 5, 1, 2, 1, False, True),
    (384, 3, 1, 1, 1, False, False),
    (256, 3, 1, 1, 1, False, False),
    (256, 3, 1, 1, 1, False, True),
)
VARIANTS = ("caffe", "caffenet", "torchvision")
FC6 = 4096
TORCHVISION_POOL = (6, 6)  # torchvision's AdaptiveAvgPool2d before fc6
MIN_INPUT = 67  # Caffe layouts: the smallest side every pool still gets a 3x3 window from


def local_response_norm(
    x: Float[Array, "B H W C"],
    *,
    size: int = 5,
    alpha: float = 1e-4,
    beta: float = 0.75,
    k: float = 1.0,
) -> Float[Array, "B H W C"]:
    """Caffe's across-channel LRN: `x_c / (k + alpha/size * sum_{|c'-c| <= size//2} x_c'^2)^beta`.

    The channel window is centred and zero-padded at the ends (Caffe divides by `size`
    everywhere, padding included). TensorFlow's `local_response_normalization(depth_radius=2,
    alpha=2e-5, bias=1)` of the DVSQ / DPQ code is the same map (its alpha is alpha/size).

    Args:
      x: `[B, H, W, C]` activations.
      size: odd window length over channels.
      alpha: scale.
      beta: exponent.
      k: additive constant.

    Returns:
      `[B, H, W, C]`, the dtype of x (computed in float32).

    Raises:
      ValueError: an even or non-positive `size`.

    References:
      Krizhevsky et al., NIPS 2012, Sec. 3.3 (there with k = 2; Caffe's AlexNet uses k = 1).

    Examples:
      >>> y = local_response_norm(jnp.ones((1, 1, 1, 1)), size=1, alpha=3.0, beta=0.5)
      >>> y.tolist()  # 1 / (1 + 3)^0.5
      [[[[0.5]]]]
    """
    if size < 1 or size % 2 == 0:
        raise ValueError(f"LRN size must be a positive odd number, got {size}.")
    half = size // 2
    squares = jnp.square(x.astype(jnp.float32))
    window_sum = jax.lax.reduce_window(
        squares, 0.0, jax.lax.add, (1, 1, 1, size), (1, 1, 1, 1), ((0, 0),) * 3 + ((half, half),)
    )
    scale = jnp.power(k + (alpha / size) * window_sum, beta)
    return (x.astype(jnp.float32) / scale).astype(x.dtype)


def adaptive_pool_matrix(size: int, out: int) -> np.ndarray:
    """`[out, size]` averaging weights of PyTorch's `AdaptiveAvgPool` along one axis: output i
    averages inputs `floor(i * size / out)` to `ceil((i + 1) * size / out) - 1`.

    Example:
      >>> adaptive_pool_matrix(2, 3).tolist()  # upsampling repeats the inputs
      [[1.0, 0.0], [0.5, 0.5], [0.0, 1.0]]
    """
    if size < 1 or out < 1:
        raise ValueError(f"adaptive pooling needs positive sizes, got {size} -> {out}.")
    weights = np.zeros((out, size), np.float32)
    for i in range(out):
        start, stop = (i * size) // out, -(-((i + 1) * size) // out)
        weights[i, start:stop] = 1.0 / (stop - start)
    return weights


def adaptive_avg_pool(x: Float[Array, "B H W C"], out_hw: Sequence[int]) -> Float[Array, "B h w C"]:
    """PyTorch's `AdaptiveAvgPool2d(out_hw)` on NHWC inputs (torchvision's AlexNet and VGG pool
    to 6x6 and 7x7 before fc6), as two small averaging matmuls; float32.

    Args:
      x: `[B, H, W, C]`.
      out_hw: `(h, w)`.

    Returns:
      `[B, h, w, C]` float32; x itself (as float32) when `(H, W) == (h, w)`.

    Examples:
      >>> x = jnp.arange(4.0).reshape(1, 2, 2, 1)
      >>> adaptive_avg_pool(x, (1, 1)).ravel().tolist()
      [1.5]
    """
    h, w = (int(v) for v in out_hw)
    x = x.astype(jnp.float32)
    if tuple(x.shape[1:3]) == (h, w):
        return x
    rows = jnp.asarray(adaptive_pool_matrix(x.shape[1], h))  # [h, H]
    cols = jnp.asarray(adaptive_pool_matrix(x.shape[2], w))  # [w, W]
    return jnp.einsum("hH,bHWc,wW->bhwc", rows, x, cols, precision=jax.lax.Precision.HIGHEST)


def _conv_size(size: int, kernel: int, stride: int, pad: int) -> int:
    return (size + 2 * pad - kernel) // stride + 1


def _pool_size(size: int) -> int:
    return (size - 3) // 2 + 1


def _even_width(channels: int, width: float) -> int:
    # Grouped convolutions split channels in two: keep every width even (and >= 2).
    return max(2, 2 * round(channels * width / 2))


def min_input(variant: str) -> int:
    """The smallest input side a variant takes (every 3/2 pool gets a full 3x3 window).

    Example:
      >>> min_input("caffe"), min_input("torchvision")
      (67, 63)
    """
    convs = TORCHVISION_CONVS if variant == "torchvision" else CONVS
    size = 1
    while True:
        s = size
        for _, kernel, stride, pad, _, _, pool in convs:
            s = _conv_size(s, kernel, stride, pad)
            if s < 1 or (pool and s < 3):
                break
            if pool:
                s = _pool_size(s)
        else:
            return size
        size += 1


class AlexNet(nnx.Module):
    """conv1..conv5 with LRN and pools, fc6 and fc7 with ReLU and dropout (module docstring).

    Parameters are float32; the layers compute in `dtype`; the output is float32 `[B, D]`,
    non-negative (after fc7's ReLU).
    """

    def __init__(
        self,
        in_channels: int,
        features: int = 4096,
        *,
        input_hw: Sequence[int] = (227, 227),
        width: float = 1.0,
        dropout: float = 0.5,
        variant: str = "caffe",
        pretrained: str = "",
        dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        """Builds the network.

        Args:
          in_channels: C of the input images (3 for RGB, and for ImageNet weights).
          features: D, the width of fc7 (AlexNet: 4096; ImageNet weights need 4096).
          input_hw: `(H, W)` of the input images, each >= 67 (Caffe layouts; 227x227 crops for
            ImageNet weights) or >= 63 (torchvision).
          width: multiplier of every conv width and of fc6 (rounded, to even for the Caffe
            layouts, whose groups split channels in two).
          dropout: dropout rate before (torchvision) or after (Caffe) fc6 and fc7 (active in
            `model.train()` mode).
          variant: `"caffe"` (bvlc_alexnet), `"caffenet"` (bvlc_reference_caffenet, DPQ's
            reference weights) or `"torchvision"` (module docstring).
          pretrained: path of weights converted by `dpq-convert` (`dpq_jax.models.pretrained`),
            loaded into the net once built; "" keeps the fresh initialisation.
          dtype: compute dtype (`jnp.bfloat16` on accelerators).
          rngs: `nnx.Rngs`; the `dropout` stream (or `default`) drives the dropout masks.

        Raises:
          ValueError: an unknown variant, inputs too small, non-positive sizes, a dropout
            outside [0, 1), or pretrained weights that do not fit this net (the message names
            the layer).
        """
        if variant not in VARIANTS:
            raise ValueError(f"AlexNet variant must be one of {VARIANTS}, got {variant!r}.")
        h, w = (int(v) for v in input_hw)
        smallest = min_input(variant)
        if min(h, w) < smallest:
            raise ValueError(
                f"AlexNet ({variant}) needs inputs of at least {smallest}x{smallest} (three 3/2 "
                f"pools after a stride-4 conv), got input_hw={tuple(input_hw)}; resize the "
                "images (227x227 crops for Caffe weights, 224x224 for torchvision's)."
            )
        if in_channels < 1 or features < 1 or width <= 0 or not 0.0 <= dropout < 1.0:
            raise ValueError(
                f"in_channels ({in_channels}), features ({features}) and width ({width}) must be "
                f"positive and dropout ({dropout}) in [0, 1)."
            )
        if pretrained:  # a wrong architecture fails before the layers are built
            pretrained_lib.check_architecture(
                pretrained, backbone="alexnet", arch={"variant": variant}
            )
        self.dtype = dtype
        self.variant = variant
        self.input_hw = (h, w)
        self.features = features
        torchvision = variant == "torchvision"
        convs, lrn_after, pool_after = [], [], []
        channels = in_channels
        for out, kernel, stride, pad, groups, lrn, pool in (
            TORCHVISION_CONVS if torchvision else CONVS
        ):
            out = max(1, round(out * width)) if torchvision else _even_width(out, width)
            convs.append(
                nnx.Conv(
                    channels,
                    out,
                    (kernel, kernel),
                    strides=(stride, stride),
                    padding=((pad, pad), (pad, pad)),
                    feature_group_count=groups if channels % groups == 0 else 1,
                    dtype=dtype,
                    kernel_init=KERNEL_INIT,
                    rngs=rngs,
                )
            )
            h, w = _conv_size(h, kernel, stride, pad), _conv_size(w, kernel, stride, pad)
            if pool:
                h, w = _pool_size(h), _pool_size(w)
            lrn_after.append(lrn)
            pool_after.append(pool)
            channels = out
        self.convs = nnx.List(convs)
        self.lrn_after, self.pool_after = tuple(lrn_after), tuple(pool_after)
        if torchvision:
            h, w = TORCHVISION_POOL
        fc6 = max(1, round(FC6 * width))
        flat = h * w * channels  # 6 * 6 * 256 = 9216 at 227x227 (Caffe) or any size (torchvision)
        self.fc6 = nnx.Linear(flat, fc6, dtype=dtype, kernel_init=KERNEL_INIT, rngs=rngs)
        self.fc7 = nnx.Linear(fc6, features, dtype=dtype, kernel_init=KERNEL_INIT, rngs=rngs)
        self.dropout = nnx.Dropout(dropout, rngs=rngs)
        if pretrained:
            pretrained_lib.load_into(
                self, pretrained, backbone="alexnet", arch={"variant": variant}
            )

    def __call__(self, x: Float[Array, "B H W C"]) -> Float[Array, "B D"]:
        """fc7 features of a batch of `input_hw` images.

        Raises:
          ValueError: the images are not `[B, H, W, C]` of the built `input_hw`.
        """
        if x.ndim != 4 or tuple(x.shape[1:3]) != self.input_hw:
            raise ValueError(
                f"AlexNet built for {self.input_hw} inputs [B, H, W, C], got shape "
                f"{tuple(x.shape)}; resize the images or rebuild with input_hw."
            )
        x = x.astype(self.dtype)
        lrn_first = self.variant == "caffe"
        for conv, lrn, pool in zip(self.convs, self.lrn_after, self.pool_after, strict=True):
            x = jax.nn.relu(conv(x))
            if lrn and lrn_first:
                x = local_response_norm(x)
            if pool:
                x = nnx.max_pool(x, (3, 3), strides=(2, 2), padding="VALID")
            if lrn and not lrn_first:
                x = local_response_norm(x)
        if self.variant == "torchvision":
            x = adaptive_avg_pool(x, TORCHVISION_POOL).astype(self.dtype)
            x = x.reshape(x.shape[0], -1)  # [B, 6*6*C], HWC order (the converter permutes fc6)
            x = jax.nn.relu(self.fc6(self.dropout(x)))
            x = jax.nn.relu(self.fc7(self.dropout(x)))
        else:
            x = x.reshape(x.shape[0], -1)  # [B, 6*6*256] at 227x227, HWC order
            x = self.dropout(jax.nn.relu(self.fc6(x)))
            x = self.dropout(jax.nn.relu(self.fc7(x)))
        return x.astype(jnp.float32)


Model = AlexNet  # the registry's entry point (`registry.get("backbone", "alexnet")`)
