"""Generic product-quantization maths shared by PQ methods (OPQN, DPQ, Klein-Wolf PQ).

An embedding `[B, D]` is split into M contiguous sub-vectors of width d = D/M; each is coded
by one of K codewords of its own codebook `[K, d]`. These pure functions do not care how the
assignment is learned: that is each method's quantizer (`quantizers/opqn.py`, ...).
All products run in float32 at HIGHEST matmul precision.
"""

import jax
import jax.numpy as jnp

from dpq_jax.typing import Array, Float, Int, UInt8

_HIGHEST = jax.lax.Precision.HIGHEST
MAX_CODEBOOK_SIZE = 256  # codes are stored as uint8


def split_subvectors(x: Float[Array, "B D"], num_codebooks: int) -> Float[Array, "B M d"]:
    """Splits each row into M contiguous sub-vectors: `[B, D] -> [B, M, D/M]`.

    Args:
      x: `[B, D]` embeddings.
      num_codebooks: M, which must divide D.

    Returns:
      `[B, M, d]` with `out[b, m] = x[b, m*d:(m+1)*d]`.

    Raises:
      ValueError: x is not 2-D, or M does not divide D.
    """
    if x.ndim != 2:
        raise ValueError(f"Expected embeddings of shape [B, D], got shape {tuple(x.shape)}.")
    dim = x.shape[1]
    if num_codebooks < 1 or dim % num_codebooks:
        raise ValueError(
            f"num_codebooks M={num_codebooks} must divide the embedding width D={dim}; "
            f"choose M among the divisors of D, or change the embedding width."
        )
    return x.reshape(x.shape[0], num_codebooks, dim // num_codebooks)  # [B, M, d]


def soft_quantize(
    probs: Float[Array, "B M K"], codebooks: Float[Array, "M K d"]
) -> Float[Array, "B M d"]:
    """Soft quantization `s_m = C_m p_m = sum_k p_mk c_mk`.

    Args:
      probs: `[B, M, K]` assignment probabilities.
      codebooks: `[M, K, d]` codewords (rows).

    Returns:
      `[B, M, d]` float32.

    Raises:
      ValueError: the shapes do not match.
    """
    if probs.ndim != 3 or codebooks.ndim != 3 or probs.shape[1:] != codebooks.shape[:2]:
        raise ValueError(
            f"Probabilities [B, M, K] {tuple(probs.shape)} do not match codebooks [M, K, d] "
            f"{tuple(codebooks.shape)}."
        )
    return jnp.einsum(
        "bmk,mkd->bmd",
        probs.astype(jnp.float32),
        codebooks.astype(jnp.float32),
        precision=_HIGHEST,
    )


def argmax_codes(logits: Float[Array, "B M K"]) -> UInt8[Array, "B M"]:
    """Hard codes `argmax_k logits[b, m, k]` as uint8 (the first maximum on ties).

    Raises:
      ValueError: logits are not `[B, M, K]`, or K > 256.
    """
    if logits.ndim != 3:
        raise ValueError(f"Expected assignment scores [B, M, K], got shape {tuple(logits.shape)}.")
    if logits.shape[-1] > MAX_CODEBOOK_SIZE:
        raise ValueError(
            f"codebook_size K={logits.shape[-1]} does not fit uint8 codes; use K <= 256."
        )
    return jnp.argmax(logits, axis=-1).astype(jnp.uint8)


def reconstruct(
    codes: Int[Array, "B M"] | UInt8[Array, "B M"], codebooks: Float[Array, "M K d"]
) -> Float[Array, "B M d"]:
    """Hard reconstruction: `out[b, m] = codebooks[m, codes[b, m]]`.

    Args:
      codes: `[B, M]` integer codes in `[0, K)`.
      codebooks: `[M, K, d]`.

    Returns:
      `[B, M, d]` codewords (a gather, so exact).

    Raises:
      ValueError: the shapes do not match.
    """
    if codes.ndim != 2 or codebooks.ndim != 3 or codes.shape[1] != codebooks.shape[0]:
        raise ValueError(
            f"Codes [B, M] {tuple(codes.shape)} do not match codebooks [M, K, d] "
            f"{tuple(codebooks.shape)}."
        )
    # vmap over the M books: book [K, d] gathered at codes[:, m] [B] -> [B, d]; stacked at axis 1.
    return jax.vmap(lambda book, idx: book[idx], in_axes=(0, 1), out_axes=1)(
        codebooks, codes.astype(jnp.int32)
    )
