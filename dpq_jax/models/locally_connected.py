"""The locally-connected 2-D layer: a 'valid' convolution whose filters are not shared.

Each output position (i, j) has its own filter bank `kernel[i, j]` `[kh·kw·C, F]` and bias
`bias[i, j]` `[F]`. With strides (sh, sw) and 'valid' padding, on x `[B, H, W, C]`:

    H_out = (H − kh) // sh + 1,   W_out = (W − kw) // sw + 1
    y[b, i, j, f] = Σ_{u<kh, v<kw, c<C} x[b, i·sh + u, j·sw + v, c] · kernel[i, j, (u·kw + v)·C + c, f]
                    + bias[i, j, f]

The patch axis is ordered (u, v, c), row-major: a Flax `nnx.Conv` kernel `[kh, kw, C, F]`
reshaped to `[kh·kw·C, F]` and repeated at every position gives exactly that convolution.
(Keras' `LocallyConnected2D`, DDH's fourth layer, orders its channels-first patches (c, u, v);
the two differ by a fixed permutation of the kernel's rows.)

`locally_connected_2d` is the maths; `LocallyConnected2D` only holds the parameters (named
`kernel` and `bias`, so `losses.weight_decay.kernel_l2` decays the kernel like a conv kernel).

References:
  Lin, Li & Tang, "Discriminative Deep Hashing for Scalable Face Image Retrieval", IJCAI 2017,
  Sec. 3.1 (the fourth, unshared convolution); METHODS.md §5.2.
"""

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from dpq_jax.typing import Array, Float

# He-uniform over the fan-in of one position's filter, kh·kw·C (Keras: init='he_uniform').
KERNEL_INIT = jax.nn.initializers.he_uniform(in_axis=-2, out_axis=-1, batch_axis=(0, 1))
BIAS_INIT = jax.nn.initializers.zeros


def _pair(value, name: str) -> tuple[int, int]:
    values = (value, value) if isinstance(value, int) else tuple(int(v) for v in value)
    if len(values) != 2 or min(values) < 1:
        raise ValueError(f"{name} must be a positive int or a pair of them, got {value!r}.")
    return values


def output_hw(
    input_hw: Sequence[int], kernel_size: Sequence[int] | int, strides: Sequence[int] | int = 1
) -> tuple[int, int]:
    """`(H_out, W_out)` of a 'valid' window: `(size − k) // s + 1` per axis.

    Raises:
      ValueError: the input is smaller than the window.

    Example:
      >>> output_hw((3, 3), 2), output_hw((7, 6), (2, 3), 2)
      ((2, 2), (3, 2))
    """
    (h, w), (kh, kw), (sh, sw) = (
        _pair(tuple(input_hw), "input_hw"),
        _pair(kernel_size, "kernel_size"),
        _pair(strides, "strides"),
    )
    if h < kh or w < kw:
        raise ValueError(
            f"A {kh}x{kw} locally-connected window needs an input of at least {kh}x{kw}, got "
            f"{h}x{w}; use larger images or fewer pooling steps before the layer."
        )
    return (h - kh) // sh + 1, (w - kw) // sw + 1


def extract_patches(
    x: Float[Array, "B H W C"], kernel_size: Sequence[int] | int, strides: Sequence[int] | int = 1
) -> Float[Array, "B Ho Wo P"]:
    """The 'valid' patches of x, `P = kh·kw·C` ordered (u, v, c) as in the module docstring."""
    (kh, kw), (sh, sw) = _pair(kernel_size, "kernel_size"), _pair(strides, "strides")
    b, h, w, c = x.shape
    h_out, w_out = output_hw((h, w), (kh, kw), (sh, sw))
    pieces = [
        x[:, u : u + sh * (h_out - 1) + 1 : sh, v : v + sw * (w_out - 1) + 1 : sw, :]
        for u in range(kh)
        for v in range(kw)
    ]  # kh·kw arrays [B, H_out, W_out, C], in (u, v) row-major order
    return jnp.stack(pieces, axis=3).reshape(b, h_out, w_out, kh * kw * c)


def locally_connected_2d(
    x: Float[Array, "B H W C"],
    kernel: Float[Array, "Ho Wo P F"],
    bias: Float[Array, "Ho Wo F"] | None = None,
    *,
    kernel_size: Sequence[int] | int,
    strides: Sequence[int] | int = 1,
) -> Float[Array, "B Ho Wo F"]:
    """An unshared 'valid' convolution (see the module docstring).

    Args:
      x: `[B, H, W, C]` inputs.
      kernel: `[H_out, W_out, kh·kw·C, F]` one filter bank per output position.
      bias: `[H_out, W_out, F]` or None.
      kernel_size: `(kh, kw)` (or one int).
      strides: `(sh, sw)` (or one int); 1 by default.

    Returns:
      `[B, H_out, W_out, F]` in the result dtype of x and kernel.

    Raises:
      ValueError: x is not 4-D, or the kernel or bias shape does not match x, the window and
        the strides.
    """
    if x.ndim != 4:
        raise ValueError(f"x must be [B, H, W, C], got shape {tuple(x.shape)}.")
    (kh, kw), (sh, sw) = _pair(kernel_size, "kernel_size"), _pair(strides, "strides")
    h_out, w_out = output_hw(x.shape[1:3], (kh, kw), (sh, sw))
    patch = kh * kw * x.shape[3]
    if kernel.ndim != 4 or kernel.shape[:3] != (h_out, w_out, patch):
        raise ValueError(
            f"kernel must be [H_out, W_out, kh*kw*C, F] = [{h_out}, {w_out}, {patch}, F] for "
            f"x {tuple(x.shape)} with a {kh}x{kw} window and strides ({sh}, {sw}), got "
            f"{tuple(kernel.shape)}; build the layer with this input size."
        )
    if bias is not None and bias.shape != (h_out, w_out, kernel.shape[3]):
        raise ValueError(
            f"bias must be [H_out, W_out, F] = {(h_out, w_out, kernel.shape[3])}, got "
            f"{tuple(bias.shape)}."
        )
    y = jnp.einsum("bhwp,hwpf->bhwf", extract_patches(x, (kh, kw), (sh, sw)), kernel)
    return y if bias is None else y + bias


class LocallyConnected2D(nnx.Module):
    """Holds `kernel [H_out, W_out, kh·kw·C, F]` and `bias [H_out, W_out, F]`; calls
    `locally_connected_2d`. The input size is fixed at construction (`input_hw`)."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        kernel_size: Sequence[int] | int,
        *,
        input_hw: Sequence[int],
        strides: Sequence[int] | int = 1,
        use_bias: bool = True,
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        kernel_init=KERNEL_INIT,
        bias_init=BIAS_INIT,
        rngs: nnx.Rngs,
    ):
        """Builds the layer.

        Args:
          in_features: C of the input.
          out_features: F, filters per position.
          kernel_size: `(kh, kw)` or one int.
          input_hw: `(H, W)` of the inputs the layer will see.
          strides: `(sh, sw)` or one int.
          use_bias: add a per-position bias.
          dtype: compute dtype.
          param_dtype: parameter dtype.
          kernel_init, bias_init: initializers (default: He-uniform over kh·kw·C, zeros).
          rngs: `nnx.Rngs`.

        Raises:
          ValueError: non-positive sizes, or an input smaller than the window.
        """
        if in_features < 1 or out_features < 1:
            raise ValueError(
                f"in_features ({in_features}) and out_features ({out_features}) must be positive."
            )
        self.kernel_size = _pair(kernel_size, "kernel_size")
        self.strides = _pair(strides, "strides")
        self.input_hw = _pair(tuple(input_hw), "input_hw")
        self.out_hw = output_hw(self.input_hw, self.kernel_size, self.strides)
        self.dtype = dtype
        kh, kw = self.kernel_size
        shape = (*self.out_hw, kh * kw * in_features, out_features)
        self.kernel = nnx.Param(kernel_init(rngs.params(), shape, param_dtype))
        self.bias = (
            nnx.Param(bias_init(rngs.params(), (*self.out_hw, out_features), param_dtype))
            if use_bias
            else None
        )

    def __call__(self, x: Float[Array, "B H W C"]) -> Float[Array, "B Ho Wo F"]:
        """`[B, H, W, C]` (H, W = `input_hw`) -> `[B, H_out, W_out, F]` in `dtype`."""
        if tuple(x.shape[1:3]) != self.input_hw:
            raise ValueError(
                f"This locally-connected layer was built for {self.input_hw[0]}x"
                f"{self.input_hw[1]} inputs, got {x.shape[1]}x{x.shape[2]}; rebuild it with "
                f"input_hw={tuple(x.shape[1:3])}."
            )
        bias = None if self.bias is None else self.bias[...].astype(self.dtype)
        return locally_connected_2d(
            x.astype(self.dtype),
            self.kernel[...].astype(self.dtype),
            bias,
            kernel_size=self.kernel_size,
            strides=self.strides,
        )
