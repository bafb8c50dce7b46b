"""Progressive OPQN's quantizer: L residual levels, each an OPQN product quantizer with fixed
orthonormal codewords.

The embedding x `[B, D]` is split into M sub-vectors x_m `[d]` (d = D/M). Every level l = 1..L
has, per subspace, a fixed codebook C_lm `[K, d]` with orthonormal rows, a learnable assignment
map A_lm `[d, K]` (OPQN's "linear transform layer") and one gain alpha_l > 0 per level. With
u_1 = x_m / |x_m| (the unit target; OPQN's cosine losses and lookup table ignore |x_m| too):

    logits_l = t_m * (u_l / |u_l|) A_lm      t_m = |x_m| in training (level 1: x_m A_m, OPQN);
                                             t_m = 1 for query tables (OPQN's q_m/|q_m| A_m)
    p_l      = softmax_k(logits_l)           soft assignment `[K]`
    soft_l   = alpha_l sum_k p_lk c_lmk      soft quantization
    code_l   = argmax_k logits_l             hard code (the same for both t_m)
    hard_l   = alpha_l c_{lm, code_l}        hard quantization
    u_{l+1}  = u_l - hard_l                  the residual uses the HARD codeword (as DPQ)

and the partial sums Q^soft_l = sum_{i<=l} soft_i, Q^hard_l = sum_{i<=l} hard_i approximate the
unit target with the first l levels. Codes are `[B, L, M]`: the first l levels are a code of
l·M·log2(K) bits by themselves.

What "orthonormal" means here (ours; see `level_codebooks`): within a (level, subspace) the K
codewords are orthonormal, as in OPQN, so level 1 alone is exactly OPQN's head. Across levels
a residual should meet new directions: level 1 is OPQN's codebook (DCT powers, or random QR),
levels 2..L are independent Haar-random orthonormal frames. Continuing OPQN's DCT chain
T^j C_1 instead would repeat directions: codeword cosines between books two apart are the
entries of T^2, up to 0.90 at d = 64 and 256, against about 0.45 (d = 64) and 0.29 (d = 256)
for random frames. The gains alpha_l (learned by default, initialised gain_decay^(l-1)) let
later levels hold shrinking residuals without giving up the fixed codeword directions: one
scalar per level, so level 1's table stays OPQN's up to the factor alpha_1^2.

Pure functions hold the maths; `ProgressiveOrthoHead` holds A (trainable), the codebooks
(`FixedCodebook`, never trained) and the log-gains. All products run in float32 at HIGHEST
matmul precision.

References:
  Zhang, Zhe & Yan, "Orthonormal Product Quantization Network for Scalable Face Image
  Retrieval", Pattern Recognition 2023 (arXiv 2107.00327), Sec. 3.2 (fixed orthonormal
  codewords, soft assignment by a linear map); METHODS.md §1.1.
  Gao, Zhu, Song, Zhao & Shen, "Beyond Product Quantization: Deep Progressive Quantization for
  Image Retrieval", IJCAI 2019, Sec. 3.2 (residual levels with the hard codeword; partial sums);
  METHODS.md §2.1.
"""

import functools
import math

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dpq_jax.quantizers.codebooks import make_codebooks, random_orthonormal_codebooks
from dpq_jax.quantizers.opqn import FixedCodebook
from dpq_jax.quantizers.pq import MAX_CODEBOOK_SIZE
from dpq_jax.typing import Array, Float, UInt8

_HIGHEST = jax.lax.Precision.HIGHEST
_NORM_EPS = 1e-12  # denominator floor of the L2 normalisation (as torch.nn.functional.normalize)
# Levels 2..L draw their random frames with seed + LEVEL_SEED_OFFSET (level 1 uses `seed`).
LEVEL_SEED_OFFSET = 1
DEFAULT_GAIN_DECAY = 0.5


@flax.struct.dataclass
class ProgressiveOrthoOutput:
    """What the progressive orthonormal quantizer returns for a batch.

    Attributes:
      target: `[B, D]` float32 unit target: each sub-vector x_m / |x_m|.
      soft: `[B, L, D]` float32 soft partial sums, `soft[:, l-1] = Q^soft_l`.
      hard: `[B, L, D]` float32 hard partial sums (the reconstruction from the first l levels).
      codes: `[B, L, M]` uint8 hard codes.
      probs: `[B, L, M, K]` float32 soft assignments p_l (rows sum to 1).
      residuals: `[B, L, D]` float32 inputs u_l of each level (`residuals[:, 0] = target`).
    """

    target: Float[Array, "B D"]
    soft: Float[Array, "B L D"]
    hard: Float[Array, "B L D"]
    codes: UInt8[Array, "B L M"]
    probs: Float[Array, "B L M K"]
    residuals: Float[Array, "B L D"]


def level_codebooks(
    kind: str, num_levels: int, num_codebooks: int, codebook_size: int, dim: int, seed: int = 0
) -> Float[Array, "L M K d"]:
    """Fixed codebooks of every level: level 1 is OPQN's, levels 2..L random orthonormal frames.

    Level 1 is `make_codebooks(kind, M, K, d, seed)`, the codebooks a one-level OPQN head
    builds. Levels 2..L are `random_orthonormal_codebooks((L-1) M, K, d, seed + 1)` (QR of a
    Gaussian), reshaped level by level: every (level, subspace) book has orthonormal rows, and
    books of different levels are incoherent with high probability (module docstring).

    Args:
      kind: level 1's codebooks, `"dct"` (OPQN's DCT powers) or `"qr"` (random).
      num_levels: L >= 1.
      num_codebooks: M.
      codebook_size: K <= d.
      dim: d, the subspace dimension.
      seed: seed of the random codebooks.

    Returns:
      `[L, M, K, d]` float32; `out[l, m] @ out[l, m].T = I_K`.

    Raises:
      ValueError: L < 1, an unknown `kind`, or invalid sizes (K > d names the valid (M, K)).

    Examples:
      >>> books = level_codebooks("dct", 3, 2, 4, 4)
      >>> books.shape
      (3, 2, 4, 4)
      >>> bool(jnp.allclose(books[2, 1] @ books[2, 1].T, jnp.eye(4), atol=1e-6))
      True
    """
    if int(num_levels) != num_levels or num_levels < 1:
        raise ValueError(f"num_levels L must be a positive integer, got {num_levels!r}.")
    first = make_codebooks(kind, num_codebooks, codebook_size, dim, seed)  # [M, K, d]
    if num_levels == 1:
        return first[None]
    rest = random_orthonormal_codebooks(
        (num_levels - 1) * num_codebooks, codebook_size, dim, seed + LEVEL_SEED_OFFSET
    ).reshape(num_levels - 1, num_codebooks, codebook_size, dim)
    return jnp.concatenate([first[None], rest], axis=0)


def initial_log_gains(num_levels: int, gain_decay: float = DEFAULT_GAIN_DECAY) -> np.ndarray:
    """`[L]` float32 `log(gain_decay^(l-1))`: gains 1, decay, decay^2, ...

    Raises:
      ValueError: a non-positive `gain_decay`.

    Examples:
      >>> np.exp(initial_log_gains(3, 0.5)).tolist()
      [1.0, 0.5, 0.25]
    """
    if not gain_decay > 0:
        raise ValueError(
            f"gain_decay must be positive (gain of level l = decay^(l-1)), got {gain_decay!r}."
        )
    return (np.arange(num_levels) * math.log(gain_decay)).astype(np.float32)


def _check_shapes(x, assign, codebooks, gains) -> None:
    if assign.ndim != 4 or codebooks.ndim != 4 or gains.ndim != 1:
        raise ValueError(
            f"Expected assignment maps [L, M, d, K], codebooks [L, M, K, d] and gains [L], got "
            f"{tuple(assign.shape)}, {tuple(codebooks.shape)} and {tuple(gains.shape)}."
        )
    levels, num_codebooks, dim, size = assign.shape
    if codebooks.shape != (levels, num_codebooks, size, dim) or gains.shape != (levels,):
        raise ValueError(
            f"Assignment maps [L, M, d, K] {tuple(assign.shape)}, codebooks [L, M, K, d] "
            f"{tuple(codebooks.shape)} and gains [L] {tuple(gains.shape)} disagree; build them "
            f"with the same L, M, K and d."
        )
    if x.ndim != 2 or x.shape[1] != num_codebooks * dim:
        raise ValueError(
            f"Embeddings [B, D] {tuple(x.shape)} do not match M = {num_codebooks} subspaces of "
            f"d = {dim}: D must be M*d = {num_codebooks * dim}."
        )
    if size > MAX_CODEBOOK_SIZE:
        raise ValueError(f"codebook_size K={size} does not fit uint8 codes; use K <= 256.")


def _l2_normalize(x: Float[Array, "... d"]) -> Float[Array, "... d"]:
    # x / max(|x|, eps) via rsqrt of the clamped square: a zero vector (a residual a codeword
    # cancelled exactly) gets a finite gradient.
    sumsq = jnp.sum(jnp.square(x), axis=-1, keepdims=True)
    return x * jax.lax.rsqrt(jnp.maximum(sumsq, _NORM_EPS**2))


def _norm(x: Float[Array, "... d"]) -> Float[Array, "... 1"]:
    # max(|x|, eps), finite gradient at 0 (as _l2_normalize).
    return jnp.sqrt(jnp.maximum(jnp.sum(jnp.square(x), axis=-1, keepdims=True), _NORM_EPS**2))


def progressive_ortho_quantize(
    x: Float[Array, "B D"],
    assign: Float[Array, "L M d K"],
    codebooks: Float[Array, "L M K d"],
    gains: Float[Array, " L"],
    *,
    scale_by_norm: bool = True,
) -> ProgressiveOrthoOutput:
    """Soft and hard progressive quantization with fixed orthonormal codewords (module docstring).

    Args:
      x: `[B, D]` embeddings (any float dtype; computed in float32), D = M d.
      assign: `[L, M, d, K]` assignment maps A_lm.
      codebooks: `[L, M, K, d]` fixed codebooks (`level_codebooks`).
      gains: `[L]` positive level gains alpha_l.
      scale_by_norm: multiply the logits by |x_m| (training: level 1 is OPQN's `x_m A_m`);
        False gives OPQN's query-table assignment `softmax(q_m/|q_m| A_m)` at level 1. The
        codes are the same either way.

    Returns:
      `ProgressiveOrthoOutput(target [B, D], soft [B, L, D], hard [B, L, D], codes [B, L, M]
      uint8, probs [B, L, M, K], residuals [B, L, D])`.

    Raises:
      ValueError: the shapes disagree, or K > 256.

    References:
      OPQN Sec. 3.2 (`p_m = softmax(x_m A_m)`, `s_m = C_m p_m`); DPQ (Gao et al., IJCAI 2019)
      Sec. 3.2 (residual of the hard codeword, partial sums); METHODS.md §1.1, §2.1.

    Examples:
      >>> x = jnp.array([[3.0, 4.0]])  # M = 1, d = 2: target (0.6, 0.8)
      >>> eye = jnp.eye(2)[None, None]  # L = 1, K = 2 codewords e_1, e_2; A = I
      >>> out = progressive_ortho_quantize(x, eye, eye, jnp.ones(1))
      >>> out.codes.tolist(), out.hard[0, 0].tolist()
      ([[[1]]], [0.0, 1.0])
    """
    _check_shapes(x, assign, codebooks, gains)
    return _quantize(x, assign, codebooks, gains, scale_by_norm=bool(scale_by_norm))


@functools.partial(jax.jit, static_argnames=("scale_by_norm",))
def _quantize(x, assign, codebooks, gains, *, scale_by_norm):
    levels, num_codebooks, dim, size = assign.shape
    batch = x.shape[0]
    x_sub = x.astype(jnp.float32).reshape(batch, num_codebooks, dim)  # [B, M, d]
    target = _l2_normalize(x_sub)
    # |x_m| as the softmax temperature: level 1's logits are then OPQN's x_m A_m.
    scale = _norm(x_sub) if scale_by_norm else 1.0  # [B, M, 1]

    def level(residual, params):  # residual u_l [B, M, d]
        book_assign, book, gain = params  # [M, d, K], [M, K, d], []
        logits = jnp.einsum(
            "bmd,mdk->bmk", scale * _l2_normalize(residual), book_assign, precision=_HIGHEST
        )
        probs = jax.nn.softmax(logits, axis=-1)
        soft = gain * jnp.einsum("bmk,mkd->bmd", probs, book, precision=_HIGHEST)
        codes = jnp.argmax(logits, axis=-1)  # [B, M]
        # The codeword as a one-hot product (exact), which keeps the batch sharding.
        onehot = jax.nn.one_hot(codes, size, dtype=jnp.float32)
        hard = gain * jnp.einsum("bmk,mkd->bmd", onehot, book, precision=_HIGHEST)
        return residual - hard, (soft, hard, codes.astype(jnp.uint8), probs, residual)

    params = (
        assign.astype(jnp.float32),
        codebooks.astype(jnp.float32),
        gains.astype(jnp.float32),
    )
    _, (soft, hard, codes, probs, residuals) = jax.lax.scan(level, target, params)
    # scan stacks the levels first: [L, B, ...] -> [B, L, ...].
    soft, hard, codes, probs, residuals = (
        jnp.moveaxis(a, 0, 1) for a in (soft, hard, codes, probs, residuals)
    )
    flat = (batch, levels, num_codebooks * dim)
    return ProgressiveOrthoOutput(
        target=target.reshape(batch, -1),
        soft=jnp.cumsum(soft, axis=1).reshape(flat),  # Q^soft_l
        hard=jnp.cumsum(hard, axis=1).reshape(flat),  # Q^hard_l
        codes=codes,
        probs=probs,
        residuals=residuals.reshape(flat),
    )


def full_dim_codebooks(
    codebooks: Float[Array, "L M K d"], gains: Float[Array, " L"]
) -> Float[Array, "LM K D"]:
    """The levels as `[L·M, K, D]` full-dimension codebooks for progressive ADC.

    Book `l·M + m` holds `alpha_l c_lmk` in columns `m·d : (m+1)·d` and zeros elsewhere, so
    with the codes flattened level-major (`codes.reshape(B, L·M)`) the sum of the first `l·M`
    selected rows is Q^hard_l, and `search.luts.lut_progressive(q, books[:l·M], l·M)` scores
    `<q, Q^hard_l>` (`progressive.reconstruct_progressive` reconstructs it).

    Args:
      codebooks: `[L, M, K, d]` fixed codebooks.
      gains: `[L]` level gains.

    Returns:
      `[L·M, K, M·d]` float32.

    Raises:
      ValueError: the shapes disagree.

    Examples:
      >>> books = jnp.ones((1, 2, 1, 1))  # L = 1, M = 2, K = 1, d = 1
      >>> full_dim_codebooks(books, jnp.array([2.0])).tolist()
      [[[2.0, 0.0]], [[0.0, 2.0]]]
    """
    if codebooks.ndim != 4 or gains.shape != codebooks.shape[:1]:
        raise ValueError(
            f"Expected codebooks [L, M, K, d] and gains [L], got {tuple(codebooks.shape)} and "
            f"{tuple(gains.shape)}."
        )
    levels, num_codebooks, size, dim = codebooks.shape
    scaled = codebooks.astype(jnp.float32) * gains.astype(jnp.float32)[:, None, None, None]
    place = jnp.eye(num_codebooks, dtype=jnp.float32)  # book m -> subspace m (exact 0/1 product)
    full = jnp.einsum("lmkd,mn->lmknd", scaled, place, precision=_HIGHEST)
    return full.reshape(levels * num_codebooks, size, num_codebooks * dim)


class FixedGain(nnx.Variable):
    """Level log-gains held fixed (`learn_gains=False`): not an `nnx.Param`, never trained."""


class ProgressiveOrthoHead(nnx.Module):
    """L levels of OPQN heads on the residual: `assign [L, M, d, K]` (`nnx.Param`, each level
    initialised as OPQN's reference initialises its `[M, d, K]` map), `codebooks [L, M, K, d]` (`FixedCodebook`) and `log_gains [L]`
    (`nnx.Param`, or `FixedGain` when `learn_gains=False`).

    `__call__(feats, scale_by_norm=True)` is `progressive_ortho_quantize(feats, assign,
    codebooks, gains, scale_by_norm=...)`.
    """

    def __init__(
        self,
        features: int,
        *,
        num_levels: int,
        num_codebooks: int,
        codebook_size: int,
        codebook_init: str = "dct",
        seed: int = 0,
        gain_decay: float = DEFAULT_GAIN_DECAY,
        learn_gains: bool = True,
        rngs: nnx.Rngs,
    ):
        """Builds the head.

        Args:
          features: D, the embedding width.
          num_levels: L >= 1.
          num_codebooks: M, dividing D.
          codebook_size: K in [2, 256] with K <= D/M.
          codebook_init: level 1's codebooks, `"dct"` or `"qr"`.
          seed: seed of the random codebooks.
          gain_decay: initial gain of level l is gain_decay^(l-1).
          learn_gains: train the gains (True) or keep them at their initial values.
          rngs: `nnx.Rngs` for the assignment maps.

        Raises:
          ValueError: M does not divide D, K outside [2, 256] or K > D/M, L < 1, a bad
            codebook_init or gain_decay.
        """
        if num_codebooks < 1 or features % num_codebooks:
            raise ValueError(
                f"num_codebooks M={num_codebooks} must divide the embedding width "
                f"D={features}; choose M among the divisors of D."
            )
        if not 2 <= codebook_size <= MAX_CODEBOOK_SIZE:
            raise ValueError(
                f"codebook_size K={codebook_size} must be in [2, 256] (uint8 codes, >= 1 bit)."
            )
        dim = features // num_codebooks
        self.num_levels, self.num_codebooks = num_levels, num_codebooks
        self.codebook_size, self.features = codebook_size, features
        self.codebooks = FixedCodebook(
            level_codebooks(codebook_init, num_levels, num_codebooks, codebook_size, dim, seed)
        )  # [L, M, K, d]
        log_gains = jnp.asarray(initial_log_gains(num_levels, gain_decay))
        self.log_gains = nnx.Param(log_gains) if learn_gains else FixedGain(log_gains)  # [L]
        # Each level's A [M, d, K] as OPQN's reference initialises its `mlp`: torch's
        # xavier_uniform_ fans (fan_in d·K, fan_out M·K), a = sqrt(6 / (d K + M K)).
        init = jax.nn.initializers.variance_scaling(
            1.0, "fan_avg", "uniform", in_axis=2, out_axis=1, batch_axis=(0,)
        )
        self.assign = nnx.Param(
            init(rngs.params(), (num_levels, num_codebooks, dim, codebook_size), jnp.float32)
        )  # [L, M, d, K]

    def gains(self) -> Float[Array, " L"]:
        """The positive level gains `exp(log_gains)`."""
        return jnp.exp(self.log_gains[...])

    def __call__(
        self, feats: Float[Array, "B D"], *, scale_by_norm: bool = True
    ) -> ProgressiveOrthoOutput:
        return progressive_ortho_quantize(
            feats, self.assign[...], self.codebooks[...], self.gains(), scale_by_norm=scale_by_norm
        )
