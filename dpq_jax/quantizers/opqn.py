"""OPQN's product-quantization head: learnable soft assignment onto fixed orthonormal codewords.

The embedding x `[B, D]` is split into M sub-vectors x_m `[d]`. A learnable linear map
A_m `[d, K]` gives assignment probabilities `p_m = softmax(x_m A_m)`; the soft quantization is
`s_m = C_m p_m` with fixed orthonormal codewords C_m (rows of `codebooks[m]`, `[K, d]`). Hard
codes are `argmax_k x_m A_m` and the query lookup table is `softmax(x_m/|x_m| A_m)`.

Pure functions hold the maths; `OrthoPQHead` only holds `A` (trainable) and the codebooks (a
`FixedCodebook` variable, which `nnx.Optimizer(..., wrt=nnx.Param)` never updates). All
softmax and inner products run in float32 at HIGHEST matmul precision, whatever the input dtype.

References:
  Zhang, Zhe & Yan, "Orthonormal Product Quantization Network for Scalable Face Image
  Retrieval", Pattern Recognition 2023 (arXiv 2107.00327), Sec. 3.2-3.4; METHODS.md Sec. 1.
"""

import jax
import jax.numpy as jnp
from flax import nnx

from dpq_jax.quantizers.codebooks import make_codebooks
from dpq_jax.quantizers.outputs import QuantizerOutput
from dpq_jax.quantizers.pq import (  # noqa: F401  (re-exported: OPQN's users import them here)
    MAX_CODEBOOK_SIZE,
    argmax_codes,
    reconstruct,
    soft_quantize,
    split_subvectors,
)
from dpq_jax.typing import Array, Float, UInt8

_HIGHEST = jax.lax.Precision.HIGHEST
# Denominator floor of the L2 normalisation (as torch.nn.functional.normalize).
_NORM_EPS = 1e-12


def torch_xavier_uniform(gain: float = 1.0) -> jax.nn.initializers.Initializer:
    """`torch.nn.init.xavier_uniform_` as a JAX initializer, fans read as torch reads them.

    Torch takes `fan_in = shape[1] * receptive` and `fan_out = shape[0] * receptive` with
    `receptive = prod(shape[2:])`, so on OPQN's 3-D tensors the fans include the third axis:
    A `[M, d, K]` gets `U(-a, a)` with `a = sqrt(6 / (d K + M K))`, the classifier `[M, C, d]`
    `a = sqrt(6 / (C d + M d))`. (A per-subspace Xavier, `sqrt(6 / (d + K))`, is 6-12 times
    wider at OPQN's sizes.)

    Args:
      gain: torch's `gain`.

    Returns:
      `init(key, shape, dtype)`, U(-a, a) with `a = gain * sqrt(6 / (fan_in + fan_out))`.

    Example:
      >>> w = torch_xavier_uniform()(jax.random.key(0), (2, 3))
      >>> bool(jnp.abs(w).max() <= (6 / (3 + 2)) ** 0.5)
      True

    References:
      OPQN `margin_metric.py` (`OrthoPQ`: `nn.init.xavier_uniform_` on `weight [M, C, d]` and
      `mlp [M, d, K]`); torch `nn/init.py` (`_calculate_fan_in_and_fan_out`).
    """
    # jax's receptive field is the product of the axes other than in/out: torch's prod(shape[2:]).
    return jax.nn.initializers.variance_scaling(
        gain**2, "fan_avg", "uniform", in_axis=1, out_axis=0
    )


def _check_sub(x_sub, assign) -> None:
    if x_sub.ndim != 3 or assign.ndim != 3 or x_sub.shape[1:] != assign.shape[:2]:
        raise ValueError(
            f"Sub-vectors [B, M, d] {tuple(x_sub.shape)} do not match the assignment maps "
            f"[M, d, K] {tuple(assign.shape)}; split the embedding with the head's M."
        )


def _l2_normalize(x: Float[Array, "... d"]) -> Float[Array, "... d"]:
    # x / max(|x|, eps), written with rsqrt of the clamped square so that a zero vector gets a
    # finite gradient (the derivative of sqrt at 0 is infinite).
    sumsq = jnp.sum(jnp.square(x), axis=-1, keepdims=True)
    return x * jax.lax.rsqrt(jnp.maximum(sumsq, _NORM_EPS**2))


def assignment_logits(
    x_sub: Float[Array, "B M d"], assign: Float[Array, "M d K"], normalize: bool = False
) -> Float[Array, "B M K"]:
    """Float32 assignment scores `x_m A_m` (optionally with `x_m` L2-normalised first).

    Args:
      x_sub: `[B, M, d]` sub-vectors.
      assign: `[M, d, K]` linear assignment maps A_m.
      normalize: divide each x_m by `max(|x_m|, 1e-12)` first.

    Returns:
      `[B, M, K]` float32 scores.

    Raises:
      ValueError: the shapes do not match.
    """
    _check_sub(x_sub, assign)
    x_sub = x_sub.astype(jnp.float32)
    if normalize:
        x_sub = _l2_normalize(x_sub)
    return jnp.einsum("bmd,mdk->bmk", x_sub, assign.astype(jnp.float32), precision=_HIGHEST)


def soft_assign(
    x_sub: Float[Array, "B M d"], assign: Float[Array, "M d K"], normalize: bool = False
) -> Float[Array, "B M K"]:
    """Soft assignment `p_m = softmax_k(x_m A_m)` (METHODS Sec. 1.1).

    Training uses the raw x_m (`normalize=False`, no temperature); the query lookup table uses
    the L2-normalised one (`normalize=True`), which is flatter (METHODS Sec. 1.6, trap 4).

    Args:
      x_sub: `[B, M, d]` sub-vectors (any float dtype; computed in float32).
      assign: `[M, d, K]` assignment maps A_m.
      normalize: L2-normalise each x_m first.

    Returns:
      `[B, M, K]` float32 probabilities, summing to 1 over K.

    Raises:
      ValueError: the shapes do not match.

    References:
      OPQN Sec. 3.2, Eq. (soft assignment `p_m = softmax(x_m A_m)`).
    """
    return jax.nn.softmax(assignment_logits(x_sub, assign, normalize), axis=-1)


def hard_codes(x_sub: Float[Array, "B M d"], assign: Float[Array, "M d K"]) -> UInt8[Array, "B M"]:
    """Database codes `code_m = argmax_k x_m A_m` (normalising x_m would not change them).

    Args:
      x_sub: `[B, M, d]` sub-vectors.
      assign: `[M, d, K]` assignment maps, K <= 256.

    Returns:
      `[B, M]` uint8 codes (the first maximum on ties).

    Raises:
      ValueError: shapes do not match, or K > 256.

    References:
      OPQN Sec. 3.4; METHODS.md Sec. 1.4 (`compute_quant_indexing`).
    """
    if assign.shape[-1] > MAX_CODEBOOK_SIZE:
        raise ValueError(
            f"codebook_size K={assign.shape[-1]} does not fit uint8 codes; use K <= 256."
        )
    return argmax_codes(assignment_logits(x_sub, assign))


def probability_lut(
    q_sub: Float[Array, "Q M d"], assign: Float[Array, "M d K"]
) -> Float[Array, "Q M K"]:
    """OPQN's query lookup table `LUT[m, k] = softmax_k(q_m/|q_m| A_m)`.

    A database item with codes `code` scores `sum_m LUT[m, code_m]` (higher is closer). Since
    the codewords are orthonormal this equals `<[C_m p_m]_m, [c_{m, code_m}]_m>`: inner-product
    ADC of the soft-quantized query against the hard reconstruction.

    Args:
      q_sub: `[Q, M, d]` query sub-vectors.
      assign: `[M, d, K]` assignment maps.

    Returns:
      `[Q, M, K]` float32.

    References:
      METHODS.md Sec. 1.4 (`PqDistRet_Ortho`).
    """
    return soft_assign(q_sub, assign, normalize=True)


class FixedCodebook(nnx.Variable):
    """A non-trainable variable for predefined codewords.

    Not an `nnx.Param`, so `nnx.Optimizer(model, tx, wrt=nnx.Param)` and `nnx.grad` (whose
    default is `wrt=nnx.Param`) leave it unchanged; it is still saved with `nnx.state(model)`.
    """


class OrthoPQHead(nnx.Module):
    """OPQN quantization layer: `p_m = softmax(x_m A_m)`, `s_m = C_m p_m`, fixed orthonormal C_m.

    Attributes:
      assign: `nnx.Param [M, d, K]`, torch's Xavier-uniform on the whole `[M, d, K]` tensor
        (as the reference's `mlp`): `U(-a, a)`, `a = sqrt(6 / (d K + M K))`.
      codebooks: `FixedCodebook [M, K, d]`, rows orthonormal per book.

    References:
      OPQN Sec. 3.2 (`OrthoPQ` in the reference `margin_metric.py`); METHODS.md Sec. 1.1.
    """

    def __init__(
        self,
        features: int,
        *,
        num_codebooks: int,
        codebook_size: int,
        codebook_init: str = "dct",
        seed: int = 0,
        rngs: nnx.Rngs,
    ):
        """Builds the head.

        Args:
          features: D, the embedding width.
          num_codebooks: M, dividing D.
          codebook_size: K, with K <= D/M (orthonormality) and K <= 256 (uint8 codes).
          codebook_init: `"dct"` (OPQN's DCT-II powers) or `"qr"` (random orthonormal).
          seed: seed of the `"qr"` codebooks.
          rngs: `nnx.Rngs` for the assignment maps.

        Raises:
          ValueError: M does not divide D, K > 256, K > D/M, or an unknown codebook_init.
        """
        if num_codebooks < 1 or features % num_codebooks:
            raise ValueError(
                f"num_codebooks M={num_codebooks} must divide the embedding width "
                f"D={features}; choose M among the divisors of D."
            )
        if not 1 <= codebook_size <= MAX_CODEBOOK_SIZE:
            raise ValueError(
                f"codebook_size K={codebook_size} must be in [1, 256] so codes fit uint8."
            )
        dim = features // num_codebooks
        self.num_codebooks = num_codebooks
        self.codebook_size = codebook_size
        self.features = features
        self.codebooks = FixedCodebook(
            make_codebooks(codebook_init, num_codebooks, codebook_size, dim, seed)
        )  # [M, K, d]
        self.assign = nnx.Param(
            torch_xavier_uniform()(rngs.params(), (num_codebooks, dim, codebook_size), jnp.float32)
        )  # [M, d, K]

    def __call__(self, feats: Float[Array, "B D"]) -> QuantizerOutput:
        """Soft and hard quantization of a batch.

        Args:
          feats: `[B, D]` embeddings (any float dtype; the head computes in float32).

        Returns:
          `QuantizerOutput(feats [B, D] f32, soft [B, D] f32, probs [B, M, K], codes [B, M])`.
        """
        feats = feats.astype(jnp.float32)
        x_sub = split_subvectors(feats, self.num_codebooks)  # [B, M, d]
        assign = self.assign[...]
        logits = assignment_logits(x_sub, assign)  # [B, M, K]
        probs = jax.nn.softmax(logits, axis=-1)
        soft = soft_quantize(probs, self.codebooks[...])  # [B, M, d]
        codes = jnp.argmax(logits, axis=-1).astype(jnp.uint8)  # [B, M]
        return QuantizerOutput(
            feats=feats, soft=soft.reshape(feats.shape), probs=probs, codes=codes
        )
