r"""DCBH's parameter-free block hashing (block clustering) layer.

The descriptor f `[B, bits·L]` is split into `bits` consecutive blocks of L entries (L = 6 in
DCBH); each block becomes one relaxed bit

    h_i = tanh( max_j softmax(f_block_i)_j − ½ ),

so bit i is on (h_i > 0) when the block's softmax peak exceeds ½, i.e. when one entry of the
block dominates the others (Jang, Jeong, Lee & Cho, ACCV 2018, Sec. 3.2; METHODS.md §3.1;
the reference's `Slice_Encode` then `Tanh`).

**Range.** The softmax peak p* lies in [1/L, 1): p* = 1/L exactly when the block's logits are
all equal (for instance a block the ReLU zeroed entirely), and p* → 1 only as one logit grows
without bound. Hence h ∈ [tanh(1/L − ½), tanh(½)) = [−0.3215, 0.4621) for L = 6 (METHODS
writes the open interval; the lower end is attained by flat blocks, and in float32 the upper
end too, once a peak rounds to 1). h = 0 exactly only when
p* = ½ exactly, a set of measure zero (in float32: a degenerate tie of two maxima whose other
four entries underflow to 0 in the softmax). The reference maps sign(0) to +1, our
`HashingMethod` maps h = 0 to the bit 0 (`h > 0` is a 1); they differ only there.

**Gradient: "only through the arg-max element".** The reference takes `tf.reduce_max` of the
softmax output. The gradient of a max reaches only the maximal entry of its input (TF's
`_MaxGrad` and JAX's `reduce_max` rule alike split it equally among *tied* maxima). That entry
is the softmax probability p_{k*} of the block's arg-max logit, and p_{k*} depends on *every*
logit of the block through the softmax. So, with p = softmax(z) of one block and T the set of
tied arg-max entries (|T| = 1 almost surely),

    ∂h/∂z_j = (1 − h²) · (1/|T|) Σ_{k∈T} p_k (δ_kj − p_j)
            = (1 − h²) · p* · ( 1[j∈T]/|T| − p_j ),

which is non-zero for all L logits of the block (the arg-max logit is pushed one way, the
others the other way), and zero for every other block. The non-arg-max *softmax outputs* get
no gradient; the non-arg-max *logits* do, through the softmax Jacobian. This is what JAX's
autodiff of `tanh(max(softmax(z)) − ½)` computes, so no custom gradient is written; the tests
check it against this closed form, ties included.
"""

import math

import jax
import jax.numpy as jnp

from dpq_jax.typing import Array, Float

BLOCK_SIZE = 6  # L in DCBH (`codeLength = 6` in the reference's main.py)
BIAS = 0.5  # the softmax peak is compared with ½ (`Slice_Encode(x, numBits, bias=0.5)`)


def code_range(block_size: int = BLOCK_SIZE, bias: float = BIAS) -> tuple[float, float]:
    """`(tanh(1/L − bias), tanh(1 − bias))`: the infimum (attained) and supremum of the codes.

    Example:
      >>> [round(v, 4) for v in code_range(6)]
      [-0.3215, 0.4621]
    """
    if block_size < 2:
        raise ValueError(f"The block size L must be at least 2, got {block_size}.")
    return math.tanh(1.0 / block_size - bias), math.tanh(1.0 - bias)


def block_hash(
    descriptor: Float[Array, "B n"],
    bits: int,
    *,
    block_size: int = BLOCK_SIZE,
    bias: float = BIAS,
) -> Float[Array, "B bits"]:
    """DCBH's relaxed codes `h_i = tanh(max_j softmax(f_block_i)_j − bias)` (module docstring).

    Args:
      descriptor: `[B, bits·L]` descriptors f (DCBH: the ReLU output of Dense → BN); block i
        is `f[:, i·L:(i+1)·L]`, as the reference's `tf.split(x, numBits, 1)`.
      bits: the number of blocks (the code length).
      block_size: L, the entries per block (DCBH: 6).
      bias: the peak threshold (DCBH: 0.5).

    Returns:
      `[B, bits]` float32 relaxed codes in `code_range(L, bias)`; the gradient reaches each
      block's logits through its softmax peak only (module docstring).

    Raises:
      ValueError: descriptor is not 2-D with `bits·L` columns, or L < 2.

    Example:
      >>> h = block_hash(jnp.asarray([[0.0] * 6 + [9.0, 0, 0, 0, 0, 0]]), 2)
      >>> [round(v, 4) for v in h[0].tolist()]  # a flat block, a peaked block
      [-0.3215, 0.4616]

    References:
      Jang et al., ACCV 2018, Sec. 3.2 (block clustering / block hashing); METHODS.md §3.1.
    """
    if block_size < 2:
        raise ValueError(f"The block size L must be at least 2, got {block_size}.")
    if descriptor.ndim != 2 or descriptor.shape[1] != bits * block_size:
        raise ValueError(
            f"Expected descriptors [B, bits·L] = [B, {bits * block_size}] for {bits} bits of "
            f"blocks of {block_size}, got shape {tuple(descriptor.shape)}; set the descriptor "
            f"width to bits·L."
        )
    blocks = descriptor.astype(jnp.float32).reshape(descriptor.shape[0], bits, block_size)
    probs = jax.nn.softmax(blocks, axis=-1)  # [B, bits, L]
    peak = jnp.max(probs, axis=-1)  # [B, bits]; its gradient goes to the arg-max entry
    return jnp.tanh(peak - bias)
