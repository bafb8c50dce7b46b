"""A small CNN backbone for CPU-sized experiments and tests (e.g. 32x26 grey faces).

Blocks of conv3x3 -> BatchNorm -> ReLU -> 2x2 max-pool, then global average pooling,
Dense(D) and BatchNorm(D). BatchNorm follows the NNX mode: `model.train()` uses batch
statistics (global-batch statistics under a data-parallel `jit`), `model.eval()` the running
averages.
"""

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from dpq_jax.typing import Array, Float

# PyTorch's BatchNorm defaults (momentum 0.1 there is 0.9 here), so short runs settle fast.
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5
# PyTorch's default weight init, U(+-1/sqrt(fan_in)); a uniform draw also compiles much faster
# than Flax's truncated-normal default, which matters for quick CPU runs and tests.
KERNEL_INIT = jax.nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


class CNNSmall(nnx.Module):
    """conv-BN-ReLU-maxpool blocks, global average pool, Dense(D), BatchNorm(D).

    Parameters are float32; the convolutions and the dense layer compute in `dtype`; the
    output features are float32.
    """

    def __init__(
        self,
        in_channels: int,
        features: int,
        *,
        widths: Sequence[int] = (32, 64, 128),
        pool: str = "avg",
        input_hw: Sequence[int] | None = None,
        dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        """Builds the network.

        Args:
          in_channels: C of the input images `[B, H, W, C]`.
          features: D, the output embedding width.
          widths: output channels of each conv block (one 2x2 max-pool per block).
          pool: `"avg"` (global average pool: any input size) or `"flatten"` (keeps the
            spatial layout, as the SphereFace head does; needs `input_hw`). Faces of unseen
            identities are ranked better with the layout kept.
          input_hw: `(H, W)` of the input images, required by `pool="flatten"`.
          dtype: compute dtype of convolutions and the dense layer (e.g. `jnp.bfloat16`).
          rngs: `nnx.Rngs` for parameter initialisation.

        Raises:
          ValueError: non-positive sizes or an empty `widths`.
        """
        widths = tuple(int(w) for w in widths)
        if in_channels < 1 or features < 1 or not widths or min(widths) < 1:
            raise ValueError(
                f"in_channels ({in_channels}), features ({features}) and every entry of "
                f"widths ({widths}) must be positive, with at least one block."
            )
        if pool not in ("avg", "flatten"):
            raise ValueError(f"pool must be 'avg' or 'flatten', got {pool!r}.")
        if pool == "flatten" and (input_hw is None or len(input_hw) != 2):
            raise ValueError("pool='flatten' needs input_hw=(H, W) of the input images.")
        self.dtype = dtype
        self.pool = pool
        convs, norms = [], []
        channels = in_channels
        for width in widths:
            convs.append(
                nnx.Conv(
                    channels,
                    width,
                    (3, 3),
                    padding="SAME",
                    use_bias=False,
                    dtype=dtype,
                    kernel_init=KERNEL_INIT,
                    rngs=rngs,
                )
            )
            norms.append(
                nnx.BatchNorm(
                    width, momentum=BN_MOMENTUM, epsilon=BN_EPSILON, dtype=dtype, rngs=rngs
                )
            )
            channels = width
        self.convs = nnx.List(convs)
        self.norms = nnx.List(norms)
        if pool == "flatten":
            h, w = (int(v) for v in input_hw)
            for _ in widths:  # each SAME max-pool halves H and W, rounding up
                h, w = -(-h // 2), -(-w // 2)
            flat = h * w * channels
        else:
            flat = channels
        self.dense = nnx.Linear(flat, features, dtype=dtype, kernel_init=KERNEL_INIT, rngs=rngs)
        self.out_norm = nnx.BatchNorm(
            features, momentum=BN_MOMENTUM, epsilon=BN_EPSILON, dtype=jnp.float32, rngs=rngs
        )

    def __call__(self, x: Float[Array, "B H W C"]) -> Float[Array, "B D"]:
        """Embeds a batch of images.

        Args:
          x: `[B, H, W, C]` images (any size; each block halves H and W, rounding up).

        Returns:
          `[B, D]` float32 features.
        """
        x = x.astype(self.dtype)
        for conv, norm in zip(self.convs, self.norms):
            x = jax.nn.relu(norm(conv(x)))
            x = nnx.max_pool(x, (2, 2), strides=(2, 2), padding="SAME")
        if self.pool == "flatten":
            x = x.reshape(x.shape[0], -1)  # [B, H'·W'·C']
        else:
            x = jnp.mean(x.astype(jnp.float32), axis=(1, 2))  # [B, C'] global average pool
        x = self.dense(x.astype(self.dtype))
        return self.out_norm(x.astype(jnp.float32))


Model = CNNSmall  # the registry's entry point (`registry.get("backbone", "cnn_small")`)
