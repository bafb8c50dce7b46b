"""DPQ-G's progressive (residual) quantizer: L levels of full-dimension codebooks `[L, K, D]`.

Level l quantizes the residual the levels before it left, so the first l codes of an item are a
code of l·log2(K) bits by themselves: one trained quantizer serves every code length up to
L·log2(K), and the database is encoded once (`[N, L]` codes, searched with the first l columns).

With r_1 = x, at level l = 1..L (Gao et al., IJCAI 2019, Sec. 3.2; METHODS §2.1):

    a_l    = softmax_k(s(r_l, c_lk))           soft assignment `[K]`
    soft_l = sum_k a_lk c_lk                   soft quantization `[D]`
    code_l = argmax_k s(r_l, c_lk)             hard code
    hard_l = c_{l, code_l}                     hard quantization (the nearest codeword)
    r_{l+1} = r_l - hard_l                     the residual uses the HARD codeword

and the partial sums Q^soft_l = sum_{i<=l} soft_i, Q^hard_l = sum_{i<=l} hard_i approximate x
with the first l levels. The assignment score s is

- `"cosine"`: `s = gamma * cos(r, c)`. The released code (cfm-uestc/DPQ, `buildEncoder`) uses
  plain cosine-softmax, gamma = 1.
- `"l2"`: `s = -gamma * ||r - c||^2`. The paper describes the soft quantizer as a differentiable
  K-means whose sharpness is a large gamma (Sec. 3.2).

In both cases the hard code is the argmax of the same score, so it is the codeword the soft
assignment weights most ("nearest" in cosine or in L2). Gradients flow through the soft path
and through the gather of the hard codewords (also into later levels, via the residual); the
argmax itself has none.

Pure functions hold the maths; `ProgressiveQuantizer` only holds the codebooks. All products run
in float32 at HIGHEST matmul precision.

References:
  L. Gao, X. Zhu, J. Song, Z. Zhao, H. T. Shen, "Beyond Product Quantization: Deep Progressive
  Quantization for Image Retrieval", IJCAI 2019, pp. 723-729 (arXiv 1906.06698), Sec. 3.2
  (Q-blocks: soft and hard quantization of the residual); METHODS.md §2.1.
"""

import functools

import flax.struct
import jax
import jax.numpy as jnp
from flax import nnx

from dpq_jax.quantizers.pq import MAX_CODEBOOK_SIZE
from dpq_jax.typing import Array, Float, UInt8

_HIGHEST = jax.lax.Precision.HIGHEST
_NORM_EPS = 1e-12  # denominator floor of the cosine (as torch.nn.functional.normalize)
ASSIGN_MODES = ("cosine", "l2")
# The reference initialises every codebook N(0, 0.01^2) (METHODS §2.1).
CODEBOOK_INIT_STD = 0.01


@flax.struct.dataclass
class ProgressiveOutput:
    """What the progressive quantizer returns for a batch.

    Attributes:
      soft: `[B, L, D]` float32 soft partial sums, `soft[:, l-1] = Q^soft_l`.
      hard: `[B, L, D]` float32 hard partial sums, `hard[:, l-1] = Q^hard_l` (the
        reconstruction from the first l codes).
      codes: `[B, L]` uint8 hard codes.
      probs: `[B, L, K]` float32 soft assignments a_l (rows sum to 1).
      residuals: `[B, L, D]` float32 inputs r_l of each level (`residuals[:, 0] = x`).
    """

    soft: Float[Array, "B L D"]
    hard: Float[Array, "B L D"]
    codes: UInt8[Array, "B L"]
    probs: Float[Array, "B L K"]
    residuals: Float[Array, "B L D"]


def check_assign(assign: str, gamma: float) -> None:
    """Validates the assignment mode and its scale.

    Raises:
      ValueError: an unknown `assign` or a non-positive `gamma`.
    """
    if assign not in ASSIGN_MODES:
        raise ValueError(f"assign must be one of {ASSIGN_MODES}, got {assign!r}.")
    if not gamma > 0:
        raise ValueError(f"gamma must be positive (the softmax sharpness), got {gamma!r}.")


def _check_shapes(x, codebooks) -> None:
    if x.ndim != 2 or codebooks.ndim != 3 or x.shape[1] != codebooks.shape[2]:
        raise ValueError(
            f"Embeddings [B, D] {tuple(x.shape)} do not match progressive codebooks [L, K, D] "
            f"{tuple(codebooks.shape)}: D must agree (every level quantizes the full embedding)."
        )
    if codebooks.shape[1] > MAX_CODEBOOK_SIZE:
        raise ValueError(
            f"codebook_size K={codebooks.shape[1]} does not fit uint8 codes; use K <= 256."
        )


def _l2_normalize(x: Float[Array, "... D"]) -> Float[Array, "... D"]:
    # x / max(|x|, eps) via rsqrt of the clamped square: a zero vector (e.g. a residual that a
    # codeword cancelled exactly) gets a finite gradient.
    sumsq = jnp.sum(jnp.square(x), axis=-1, keepdims=True)
    return x * jax.lax.rsqrt(jnp.maximum(sumsq, _NORM_EPS**2))


def assignment_scores(
    residual: Float[Array, "B D"],
    codebook: Float[Array, "K D"],
    *,
    assign: str = "cosine",
    gamma: float = 1.0,
) -> Float[Array, "B K"]:
    """The scores `s(r, c_k)` of one level: softmax logits and argmax target.

    Args:
      residual: `[B, D]` residuals r_l.
      codebook: `[K, D]` codewords c_lk of the level.
      assign: `"cosine"` (`gamma * cos(r, c_k)`, the code) or `"l2"`
        (`-gamma * ||r - c_k||^2`, the paper).
      gamma: the softmax sharpness (the code's cosine-softmax: 1).

    Returns:
      `[B, K]` float32 scores (higher is nearer).

    Raises:
      ValueError: an unknown `assign` or a non-positive `gamma`.

    References:
      Gao et al., IJCAI 2019, Sec. 3.2; METHODS.md §2.1 (`a_l = softmax_k(cos(r_l, c_lk))`).

    Examples:
      >>> r = jnp.array([[1.0, 0.0]])
      >>> cb = jnp.array([[2.0, 0.0], [0.0, 1.0]])
      >>> assignment_scores(r, cb).tolist()
      [[1.0, 0.0]]
      >>> assignment_scores(r, cb, assign="l2", gamma=2.0).tolist()
      [[-2.0, -4.0]]
    """
    check_assign(assign, gamma)
    r = residual.astype(jnp.float32)
    cb = codebook.astype(jnp.float32)
    if assign == "cosine":
        cos = jnp.einsum("bd,kd->bk", _l2_normalize(r), _l2_normalize(cb), precision=_HIGHEST)
        return gamma * cos
    # ||r - c||^2 = |r|^2 - 2<r, c> + |c|^2, without a [B, K, D] intermediate.
    cross = jnp.einsum("bd,kd->bk", r, cb, precision=_HIGHEST)  # [B, K]
    r_sq = jnp.sum(r * r, axis=-1, keepdims=True)  # [B, 1]
    c_sq = jnp.sum(cb * cb, axis=-1)[None, :]  # [1, K]
    return -gamma * jnp.maximum(r_sq - 2.0 * cross + c_sq, 0.0)


def progressive_quantize(
    x: Float[Array, "B D"],
    codebooks: Float[Array, "L K D"],
    *,
    assign: str = "cosine",
    gamma: float = 1.0,
) -> ProgressiveOutput:
    """Soft and hard progressive quantization of a batch (see the module docstring).

    Args:
      x: `[B, D]` embeddings (any float dtype; computed in float32).
      codebooks: `[L, K, D]` codebooks, level by level, K <= 256.
      assign: `"cosine"` (the released code) or `"l2"` (the paper's gamma-softmax).
      gamma: softmax sharpness (cosine in the code: 1; the paper's L2: large).

    Returns:
      `ProgressiveOutput(soft [B, L, D], hard [B, L, D], codes [B, L] uint8, probs [B, L, K],
      residuals [B, L, D])`, with partial sums over the levels.

    Raises:
      ValueError: shapes do not match, K > 256, or a bad `assign` / `gamma`.

    References:
      Gao et al., IJCAI 2019, Sec. 3.2 (Q-blocks on the residual; soft and hard
      quantization); METHODS.md §2.1.

    Examples:
      >>> x = jnp.array([[3.0, 1.0]])
      >>> cb = jnp.array([[[3.0, 0.0], [0.0, 3.0]], [[0.0, 1.0], [1.0, 0.0]]])  # L=2, K=2
      >>> out = progressive_quantize(x, cb)
      >>> out.codes.tolist(), out.hard[0].tolist()
      ([[0, 0]], [[3.0, 0.0], [3.0, 1.0]])
    """
    _check_shapes(x, codebooks)
    check_assign(assign, gamma)
    return _progressive_quantize(x, codebooks, assign=assign, gamma=float(gamma))


@functools.partial(jax.jit, static_argnames=("assign", "gamma"))
def _progressive_quantize(x, codebooks, *, assign, gamma):
    x = x.astype(jnp.float32)
    codebooks = codebooks.astype(jnp.float32)

    def level(residual, codebook):  # residual [B, D], codebook [K, D]
        scores = assignment_scores(residual, codebook, assign=assign, gamma=gamma)  # [B, K]
        probs = jax.nn.softmax(scores, axis=-1)
        soft = jnp.einsum("bk,kd->bd", probs, codebook, precision=_HIGHEST)  # [B, D]
        codes = jnp.argmax(scores, axis=-1)  # [B]
        # The codeword as a one-hot product (exact: one 1 and zeros), which keeps the batch
        # sharding where a gather with sharded indices would not.
        onehot = jax.nn.one_hot(codes, codebook.shape[0], dtype=jnp.float32)  # [B, K]
        hard = jnp.einsum("bk,kd->bd", onehot, codebook, precision=_HIGHEST)  # [B, D]
        return residual - hard, (soft, hard, codes.astype(jnp.uint8), probs, residual)

    _, (soft, hard, codes, probs, residuals) = jax.lax.scan(level, x, codebooks)
    # scan stacks the levels first: [L, B, ...] -> [B, L, ...].
    soft, hard, probs, residuals = (jnp.moveaxis(a, 0, 1) for a in (soft, hard, probs, residuals))
    return ProgressiveOutput(
        soft=jnp.cumsum(soft, axis=1),  # Q^soft_l
        hard=jnp.cumsum(hard, axis=1),  # Q^hard_l
        codes=codes.T,
        probs=probs,
        residuals=residuals,
    )


def progressive_codes(
    x: Float[Array, "B D"],
    codebooks: Float[Array, "L K D"],
    *,
    assign: str = "cosine",
    gamma: float = 1.0,
) -> UInt8[Array, "B L"]:
    """The database codes `[B, L]` uint8 of `progressive_quantize` (the first l columns are
    the l-level code)."""
    return progressive_quantize(x, codebooks, assign=assign, gamma=gamma).codes


def reconstruct_progressive(
    codes: UInt8[Array, "B l"], codebooks: Float[Array, "L K D"]
) -> Float[Array, "B D"]:
    """The hard reconstruction with the first `l = codes.shape[1]` levels:
    `sum_{i<l} codebooks[i, codes[:, i]]`.

    Raises:
      ValueError: more code columns than levels, or not `[B, l]` / `[L, K, D]`.

    Examples:
      >>> cb = jnp.array([[[1.0], [2.0]], [[10.0], [20.0]]])  # L=2, K=2, D=1
      >>> reconstruct_progressive(jnp.array([[1, 0]], jnp.uint8), cb).tolist()
      [[12.0]]
    """
    if codes.ndim != 2 or codebooks.ndim != 3 or codes.shape[1] > codebooks.shape[0]:
        raise ValueError(
            f"Codes [B, l] {tuple(codes.shape)} need l <= L of the codebooks [L, K, D] "
            f"{tuple(codebooks.shape)}."
        )
    return _reconstruct_progressive(jnp.asarray(codes), jnp.asarray(codebooks))


@jax.jit
def _reconstruct_progressive(codes, codebooks):
    levels, size = codes.shape[1], codebooks.shape[1]
    onehot = jax.nn.one_hot(codes, size, dtype=jnp.float32)  # [B, l, K], exact selection
    return jnp.einsum(
        "blk,lkd->bd", onehot, codebooks[:levels].astype(jnp.float32), precision=_HIGHEST
    )


class ProgressiveQuantizer(nnx.Module):
    """L levels of learnable `[K, D]` codebooks, stacked as `codebooks [L, K, D]` (an
    `nnx.Param`, init N(0, 0.01^2) as the reference).

    `__call__(x)` is `progressive_quantize(x, codebooks, assign=..., gamma=...)`.

    References:
      Gao et al., IJCAI 2019, Sec. 3.2; METHODS.md §2.1 (`buildEncoder`).
    """

    def __init__(
        self,
        features: int,
        *,
        num_levels: int,
        codebook_size: int,
        assign: str = "cosine",
        gamma: float = 1.0,
        init_std: float = CODEBOOK_INIT_STD,
        rngs: nnx.Rngs,
    ):
        """Builds the codebooks.

        Args:
          features: D, the embedding width (every level quantizes all of it).
          num_levels: L >= 1.
          codebook_size: K in [2, 256].
          assign: `"cosine"` or `"l2"`.
          gamma: softmax sharpness.
          init_std: standard deviation of the Gaussian initial codewords.
          rngs: `nnx.Rngs` for the initial codewords.

        Raises:
          ValueError: non-positive sizes, K outside [2, 256], or a bad `assign` / `gamma`.
        """
        if features < 1 or num_levels < 1:
            raise ValueError(
                f"features ({features}) and num_levels ({num_levels}) must be positive."
            )
        if not 2 <= codebook_size <= MAX_CODEBOOK_SIZE:
            raise ValueError(
                f"codebook_size K={codebook_size} must be in [2, 256] (uint8 codes, >= 1 bit)."
            )
        check_assign(assign, gamma)
        self.num_levels, self.codebook_size, self.features = num_levels, codebook_size, features
        self.assign, self.gamma = assign, float(gamma)
        init = jax.nn.initializers.normal(init_std)
        self.codebooks = nnx.Param(
            init(rngs.params(), (num_levels, codebook_size, features), jnp.float32)
        )  # [L, K, D]

    def __call__(self, x: Float[Array, "B D"]) -> ProgressiveOutput:
        return progressive_quantize(x, self.codebooks[...], assign=self.assign, gamma=self.gamma)
