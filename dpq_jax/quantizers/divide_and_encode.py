"""DDH's divide-and-encode module: one scalar per code bit from its own slice of the features.

The face feature f `[B, k·L]` is divided into k consecutive slices of L; slice i feeds only
bit i through its own Dense(L -> 1):

    z[b, i] = Σ_{l<L} f[b, i·L + l] · kernel[i, l] + bias[i]          (i = 0 … k−1)

which is a Dense(k·L -> k) layer whose weight is block-diagonal (one L×1 block per bit): each
bit sees disjoint features, reducing the redundancy between bits and the parameters (k·L
instead of k²·L). DDH follows it with BN and tanh (the relaxed code); DDQH replaces it with the
full Dense(k·L -> k) (`dpq_jax/methods/ddqh.py`). The reference uses L = 4.

References:
  Lin, Li & Tang, "Discriminative Deep Hashing for Scalable Face Image Retrieval", IJCAI 2017,
  Sec. 3.2; METHODS.md §5.2.
"""

import jax
import jax.numpy as jnp
from flax import nnx

from dpq_jax.typing import Array, Float


def divide_and_encode(
    x: Float[Array, "B kL"], kernel: Float[Array, "k L"], bias: Float[Array, " k"]
) -> Float[Array, "B k"]:
    """`z[b, i] = <x[b, i·L:(i+1)·L], kernel[i]> + bias[i]` (see the module docstring).

    Args:
      x: `[B, k·L]` features (slice i is columns i·L … i·L + L − 1).
      kernel: `[k, L]`, row i the weights of bit i's Dense(L -> 1).
      bias: `[k]`.

    Returns:
      `[B, k]`, one pre-activation per bit.

    Raises:
      ValueError: x is not `[B, k·L]` for the kernel's k and L, or bias is not `[k]`.

    Example:
      >>> x = jnp.arange(6.0)[None]  # two slices of 3: [0, 1, 2] and [3, 4, 5]
      >>> divide_and_encode(x, jnp.ones((2, 3)), jnp.asarray([0.0, 10.0])).tolist()
      [[3.0, 22.0]]
    """
    if kernel.ndim != 2 or bias.shape != kernel.shape[:1]:
        raise ValueError(
            f"kernel must be [k, L] and bias [k], got {tuple(kernel.shape)} and "
            f"{tuple(bias.shape)}."
        )
    bits, length = kernel.shape
    if x.ndim != 2 or x.shape[1] != bits * length:
        raise ValueError(
            f"x must be [B, k*L] = [B, {bits * length}] ({bits} slices of {length}), got "
            f"{tuple(x.shape)}; the feature layer must be slice_size * bits wide."
        )
    slices = x.reshape(x.shape[0], bits, length)  # [B, k, L]
    return jnp.einsum("bkl,kl->bk", slices, kernel) + bias


def slice_glorot_uniform(key, shape, dtype=jnp.float32):
    """Glorot-uniform of each slice's Dense(L -> 1) on a `[k, L]` kernel: U(±√(6 / (L + 1)))
    (Keras' default `glorot_uniform` with fan-in L and fan-out 1)."""
    limit = jnp.sqrt(6.0 / (shape[-1] + 1.0))
    return jax.random.uniform(key, shape, dtype, -limit, limit)


class DivideAndEncode(nnx.Module):
    """Holds `kernel [k, L]` and `bias [k]`; calls `divide_and_encode` (float32)."""

    def __init__(self, bits: int, slice_size: int, *, rngs: nnx.Rngs):
        """Builds k = `bits` Dense(L -> 1) layers, L = `slice_size`.

        Raises:
          ValueError: non-positive sizes.
        """
        if bits < 1 or slice_size < 1:
            raise ValueError(
                f"bits ({bits}) and slice_size ({slice_size}) must be positive integers."
            )
        self.kernel = nnx.Param(slice_glorot_uniform(rngs.params(), (bits, slice_size)))
        self.bias = nnx.Param(jnp.zeros((bits,), jnp.float32))

    def __call__(self, x: Float[Array, "B kL"]) -> Float[Array, "B k"]:
        return divide_and_encode(x.astype(jnp.float32), self.kernel[...], self.bias[...])
