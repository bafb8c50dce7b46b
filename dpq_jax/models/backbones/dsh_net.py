"""The DSH network (Liu et al., CVPR 2016): three conv blocks with local response
normalisation, then FC 500 -> ReLU. The per-code-length FC k layers are the method's heads
(`dpq_jax/methods/dsh.py`), so one trunk can feed several code lengths.

Layout (the Caffe `CIFAR-10/train_test.prototxt` of the reference, METHODS.md §5.1):

    conv 32@5x5 pad 2 -> max-pool 3/2 -> ReLU -> LRN
    conv 32@5x5 pad 2 -> avg-pool 3/2 -> ReLU -> LRN
    conv 64@5x5 pad 2 -> ReLU -> avg-pool 3/2
    FC 500 -> ReLU

LRN normalises within each channel over a `size x size` window (Caffe `WITHIN_CHANNEL`,
size 3, alpha 5e-5, beta 0.75). Pooling follows Caffe's ceil-mode output size; average pools
divide by the window's in-image cells. Xavier-uniform weights, zero biases (Caffe's
`xavier` filler). Any input size works: 32x32 (CIFAR) and 28x28 (Fashion-MNIST) are the
common ones; `widths` narrows or widens the conv channels.
"""

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from dpq_jax.typing import Array, Float

_XAVIER = jax.nn.initializers.xavier_uniform()


def local_response_norm(
    x: Float[Array, "B H W C"], *, size: int = 3, alpha: float = 5e-5, beta: float = 0.75
) -> Float[Array, "B H W C"]:
    """Caffe's within-channel LRN: `x / (1 + alpha/size^2 * sum_window x^2)^beta`.

    The window is `size x size`, centred, zero-padded at the borders (Caffe divides by
    size^2 everywhere, padding included).

    Args:
      x: `[B, H, W, C]` activations.
      size: odd window side.
      alpha: scale.
      beta: exponent.

    Returns:
      `[B, H, W, C]`, the same dtype as x.
    """
    if size < 1 or size % 2 == 0:
        raise ValueError(f"LRN size must be a positive odd number, got {size}.")
    half = size // 2
    squares = jnp.square(x.astype(jnp.float32))
    window_sum = jax.lax.reduce_window(
        squares,
        0.0,
        jax.lax.add,
        (1, size, size, 1),
        (1, 1, 1, 1),
        ((0, 0), (half, half), (half, half), (0, 0)),
    )
    scale = jnp.power(1.0 + (alpha / size**2) * window_sum, beta)
    return (x.astype(jnp.float32) / scale).astype(x.dtype)


def pooled_size(size: int) -> int:
    """Caffe's ceil-mode output size of a 3/2 pool: `ceil((size - 3) / 2) + 1`.

    Example:
      >>> [pooled_size(s) for s in (32, 28, 14, 7)]
      [16, 14, 7, 3]
    """
    if size < 3:
        raise ValueError(f"A 3x3 pool needs inputs of at least 3 pixels, got {size}.")
    return -(-(size - 3) // 2) + 1


def _ceil_pool_padding(size: int) -> tuple[int, int]:
    # floor((size + pad - 3) / 2) + 1 equals Caffe's ceil((size - 3) / 2) + 1 with one extra
    # cell after the end when size - 3 is odd.
    return (0, (size - 3) % 2)


class DSHNet(nnx.Module):
    """The DSH conv trunk up to FC 500 -> ReLU (see the module docstring)."""

    def __init__(
        self,
        in_channels: int,
        features: int = 500,
        *,
        widths: Sequence[int] = (32, 32, 64),
        input_hw: Sequence[int] = (32, 32),
        dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        """Builds the trunk.

        Args:
          in_channels: C of the input images.
          features: width of the last FC layer (DSH: 500).
          widths: output channels of the three 5x5 convolutions (DSH: 32, 32, 64).
          input_hw: `(H, W)` of the input images (sets the FC layer's input width).
          dtype: compute dtype of the convolutions and the FC layer.
          rngs: `nnx.Rngs`.

        Raises:
          ValueError: not three positive widths, or non-positive sizes.
        """
        widths = tuple(int(w) for w in widths)
        if len(widths) != 3 or min(widths) < 1 or in_channels < 1 or features < 1:
            raise ValueError(
                f"DSHNet needs three positive conv widths and positive in_channels/features, "
                f"got widths={widths}, in_channels={in_channels}, features={features}."
            )
        self.dtype = dtype
        channels = (in_channels, *widths)
        self.convs = nnx.List(
            [
                nnx.Conv(
                    channels[i],
                    channels[i + 1],
                    (5, 5),
                    padding=2,
                    dtype=dtype,
                    kernel_init=_XAVIER,
                    rngs=rngs,
                )
                for i in range(3)
            ]
        )
        h, w = (int(v) for v in input_hw)
        for _ in range(3):  # each pool: Caffe's ceil((H - 3) / 2) + 1
            h, w = pooled_size(h), pooled_size(w)
        self.fc = nnx.Linear(
            h * w * widths[2], features, dtype=dtype, kernel_init=_XAVIER, rngs=rngs
        )

    def _pool(self, x, kind: str):
        pad = (_ceil_pool_padding(x.shape[1]), _ceil_pool_padding(x.shape[2]))
        if kind == "max":
            return nnx.max_pool(x, (3, 3), strides=(2, 2), padding=pad)
        return nnx.avg_pool(x, (3, 3), strides=(2, 2), padding=pad, count_include_pad=False)

    def __call__(self, x: Float[Array, "B H W C"]) -> Float[Array, "B F"]:
        """`[B, H, W, C]` images -> `[B, features]` float32 (after the ReLU)."""
        x = x.astype(self.dtype)
        x = local_response_norm(jax.nn.relu(self._pool(self.convs[0](x), "max")))
        x = local_response_norm(jax.nn.relu(self._pool(self.convs[1](x), "avg")))
        x = self._pool(jax.nn.relu(self.convs[2](x)), "avg")
        x = self.fc(x.reshape(x.shape[0], -1))
        return jax.nn.relu(x.astype(jnp.float32))


Model = DSHNet
