"""AlexNet up to fc7 (the Caffe `bvlc_alexnet` layout), the trunk of DPQ-G, DVSQ and the
HashNet line. Plain NNX with fresh initial weights: no pretrained weights are loaded (yet).

Layout (227x227 inputs; Krizhevsky et al. 2012 as released in Caffe, METHODS §2.1):

    conv1 96@11x11 stride 4 -> ReLU -> LRN -> max-pool 3/2          55 -> 27
    conv2 256@5x5 pad 2, 2 groups -> ReLU -> LRN -> max-pool 3/2   27 -> 13
    conv3 384@3x3 pad 1 -> ReLU
    conv4 384@3x3 pad 1, 2 groups -> ReLU
    conv5 256@3x3 pad 1, 2 groups -> ReLU -> max-pool 3/2          13 -> 6
    fc6 4096 -> ReLU -> dropout 0.5
    fc7 D (4096) -> ReLU -> dropout 0.5                             the output [B, D]

LRN is Caffe's across-channel normalisation (local size 5, alpha 1e-4, beta 0.75, k = 1). The
grouped convolutions keep the tensor shapes of the Caffe weights, so a loader for them can be
added without changing the net. Pools are floor-mode (Caffe's ceil mode gives the same sizes at
227). `width` scales every conv and fc6 width (tests and CPU runs); `input_hw` sets fc6's input
width, any size from 67x67 up works.

References:
  A. Krizhevsky, I. Sutskever, G. E. Hinton, "ImageNet Classification with Deep Convolutional
  Neural Networks", NIPS 2012, Sec. 3.3 (LRN) and 3.5 (architecture); the Caffe
  `models/bvlc_alexnet/deploy.prototxt`.
"""

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from dpq_jax.typing import Array, Float

# PyTorch's default weight init, U(+-1/sqrt(fan_in)) (as cnn_small): a from-scratch start.
KERNEL_INIT = jax.nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")
# (out channels, kernel, stride, padding, groups, LRN after, max-pool after) of conv1..conv5.
CONVS = (
    (96, 11, 4, 0, 1, True, True),
    (256, 5, 1, 2, 2, True, True),
    (384, 3, 1, 1, 1, False, False),
    (384, 3, 1, 1, 2, False, False),
    (256, 3, 1, 1, 2, False, True),
)
FC6 = 4096
MIN_INPUT = 67  # the smallest side every pool still gets a 3x3 window from


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
    everywhere, padding included).

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


def _conv_size(size: int, kernel: int, stride: int, pad: int) -> int:
    return (size + 2 * pad - kernel) // stride + 1


def _pool_size(size: int) -> int:
    return (size - 3) // 2 + 1


def _even_width(channels: int, width: float) -> int:
    # Grouped convolutions split channels in two: keep every width even (and >= 2).
    return max(2, 2 * round(channels * width / 2))


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
        dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        """Builds the network.

        Args:
          in_channels: C of the input images (3 for RGB).
          features: D, the width of fc7 (AlexNet: 4096).
          input_hw: `(H, W)` of the input images, each >= 67 (AlexNet: 227x227 crops).
          width: multiplier of every conv width and of fc6 (rounded to even, at least 2).
          dropout: dropout rate after fc6 and fc7 (active in `model.train()` mode).
          dtype: compute dtype (`jnp.bfloat16` on accelerators).
          rngs: `nnx.Rngs`; the `dropout` stream (or `default`) drives the dropout masks.

        Raises:
          ValueError: inputs smaller than 67x67, non-positive sizes or a dropout outside
            [0, 1).
        """
        h, w = (int(v) for v in input_hw)
        if min(h, w) < MIN_INPUT:
            raise ValueError(
                f"AlexNet needs inputs of at least {MIN_INPUT}x{MIN_INPUT} (three 3/2 pools after "
                f"a stride-4 conv), got input_hw={tuple(input_hw)}; resize the images (227x227 "
                "crops in the paper)."
            )
        if in_channels < 1 or features < 1 or width <= 0 or not 0.0 <= dropout < 1.0:
            raise ValueError(
                f"in_channels ({in_channels}), features ({features}) and width ({width}) must be "
                f"positive and dropout ({dropout}) in [0, 1)."
            )
        self.dtype = dtype
        self.input_hw = (h, w)
        convs, lrn_after, pool_after = [], [], []
        channels = in_channels
        for out, kernel, stride, pad, groups, lrn, pool in CONVS:
            out = _even_width(out, width)
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
        fc6 = max(1, round(FC6 * width))
        flat = h * w * channels  # 6 * 6 * 256 = 9216 at 227x227
        self.fc6 = nnx.Linear(flat, fc6, dtype=dtype, kernel_init=KERNEL_INIT, rngs=rngs)
        self.fc7 = nnx.Linear(fc6, features, dtype=dtype, kernel_init=KERNEL_INIT, rngs=rngs)
        self.dropout = nnx.Dropout(dropout, rngs=rngs)

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
        for conv, lrn, pool in zip(self.convs, self.lrn_after, self.pool_after, strict=True):
            x = jax.nn.relu(conv(x))
            if lrn:
                x = local_response_norm(x)
            if pool:
                x = nnx.max_pool(x, (3, 3), strides=(2, 2), padding="VALID")
        x = x.reshape(x.shape[0], -1)  # [B, 6*6*256] at 227x227
        x = self.dropout(jax.nn.relu(self.fc6(x)))
        x = self.dropout(jax.nn.relu(self.fc7(x)))
        return x.astype(jnp.float32)


Model = AlexNet  # the registry's entry point (`registry.get("backbone", "alexnet")`)
