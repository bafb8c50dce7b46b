"""Lookup tables (LUTs) for asymmetric distance computation (ADC).

A query is compared with PQ-coded database items through a table of shape `[Q, M, K]`:
`LUT[q, m, k]` is the contribution of codeword `k` of codebook `m` to the score of query `q`,
so the score of item `n` is `sum_m LUT[q, m, codes[n, m]]` (Jegou et al., 2011). The builders
here are pure, jittable and float32 (`Precision.HIGHEST`); `adc.adc_topk` searches with them.

References:
  H. Jegou, M. Douze, C. Schmid. Product quantization for nearest neighbor search. IEEE TPAMI
  33(1), 2011, Sec. III-A, Eq. (13) (asymmetric distance as a sum of per-subspace table entries).
"""

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from dpq_jax.search import checks
from dpq_jax.typing import Array, Float

_HIGHEST = lax.Precision.HIGHEST


def _split(query: Array, num_codebooks: int, sub_dim: int) -> Array:
    """[Q, D] or [Q, M, d] -> [Q, M, d] float32 (traceable, unchecked)."""
    # Subspace m is the m-th contiguous slice of length d of the D-dim query.
    return query.reshape(query.shape[0], num_codebooks, sub_dim).astype(jnp.float32)


def lut_inner_product(
    query: Float[Array, "q dim"], codebooks: Float[Array, "m k d"]
) -> Float[Array, "q m k"]:
    """Inner-product LUT with the raw query: `LUT[q, m, k] = <query_qm, c_mk>`.

    Args:
      query: `[Q, D]` queries (or `[Q, M, d]` already split), D = M * d.
      codebooks: `[M, K, d]` codewords `c_mk`.

    Returns:
      `[Q, M, K]` float32 table; scores are ranked in descending order.

    Raises:
      ValueError: shapes do not match.

    References:
      Jegou et al., TPAMI 2011, Eq. (13), with the inner product in place of the squared
      distance; Gao et al., IJCAI 2019 (DPQ), Sec. 3.4 (asymmetric inner-product search).

    Examples:
      >>> q = jnp.array([[1.0, 2.0]])
      >>> cb = jnp.array([[[1.0], [0.0]], [[0.0], [1.0]]])  # M=2, K=2, d=1
      >>> lut_inner_product(q, cb)[0].tolist()
      [[1.0, 0.0], [0.0, 2.0]]
    """
    checks.check_codebooks(codebooks)
    m, _, d = codebooks.shape
    return _lut_inner_product(checks.check_query(query, m, d), jnp.asarray(codebooks))


@jax.jit
def _lut_inner_product(query, codebooks):
    m, _, d = codebooks.shape
    return jnp.einsum(
        "qmd,mkd->qmk",
        _split(query, m, d),  # [Q, M, d]
        codebooks.astype(jnp.float32),
        precision=_HIGHEST,
        preferred_element_type=jnp.float32,
    )


def _check_probs(probs, codebooks) -> None:
    checks.check_codebooks(codebooks)
    checks.check_lut(probs, "probs")
    if probs.shape[1:] != codebooks.shape[:2]:
        raise ValueError(
            f"probs has shape {probs.shape} but the codebooks have [M, K] = "
            f"{codebooks.shape[:2]}; they must agree."
        )


def lut_soft_quantized(
    probs: Float[Array, "q m k"], codebooks: Float[Array, "m k d"]
) -> Float[Array, "q m k"]:
    """Inner-product LUT with the soft-quantized query `s_m = sum_k p_mk c_mk`.

    `LUT[q, m, k] = <s_qm, c_mk>`. When the codewords of each codebook are orthonormal (OPQN)
    this equals `probs` itself: OPQN's probability lookup table.

    Args:
      probs: `[Q, M, K]` soft assignments of the query (each row sums to 1).
      codebooks: `[M, K, d]` codewords.

    Returns:
      `[Q, M, K]` float32 table; ranked in descending order.

    Raises:
      ValueError: shapes do not match.

    References:
      Zhang, Zhe & Yan, "Orthonormal Product Quantization Network for Scalable Face Image
      Retrieval", Pattern Recognition 2023 (soft quantization s_m = C_m p_m and the
      probability-table search of the released code).
    """
    _check_probs(probs, codebooks)
    return _lut_soft_quantized(jnp.asarray(probs), jnp.asarray(codebooks))


@jax.jit
def _lut_soft_quantized(probs, codebooks):
    cb = codebooks.astype(jnp.float32)
    # s[q, m, :] = sum_k p[q, m, k] c[m, k, :]  -> [Q, M, d]
    soft = jnp.einsum(
        "qmk,mkd->qmd",
        probs.astype(jnp.float32),
        cb,
        precision=_HIGHEST,
        preferred_element_type=jnp.float32,
    )
    return jnp.einsum(
        "qmd,mkd->qmk", soft, cb, precision=_HIGHEST, preferred_element_type=jnp.float32
    )


def soft_quantized_vectors(
    probs: Float[Array, "q m k"], codebooks: Float[Array, "m k d"]
) -> Float[Array, "q dim"]:
    """The soft-quantized query vector `s = [s_1, ..., s_M]`, `s_m = sum_k p_mk c_mk`.

    `lut_soft_quantized(probs, codebooks)` is the inner-product table of this vector, and
    `lut_l2(s, codebooks)` its squared-L2 table, so an engine that takes query vectors (FAISS
    `IndexPQ`) reproduces the soft-quantized query sides when given `s`.

    Args:
      probs: `[Q, M, K]` soft assignments of the query.
      codebooks: `[M, K, d]` codewords.

    Returns:
      `[Q, M * d]` float32, subspace `m` in columns `m*d : (m+1)*d`.

    Raises:
      ValueError: shapes do not match.

    References:
      Zhang, Zhe & Yan, Pattern Recognition 2023 (OPQN), soft quantization `s_m = C_m p_m`.

    Examples:
      >>> probs = jnp.array([[[0.25, 0.75]]])  # Q=1, M=1, K=2
      >>> cb = jnp.array([[[4.0, 0.0], [0.0, 4.0]]])  # d=2
      >>> soft_quantized_vectors(probs, cb).tolist()
      [[1.0, 3.0]]
    """
    _check_probs(probs, codebooks)
    return _soft_quantized_vectors(jnp.asarray(probs), jnp.asarray(codebooks))


@jax.jit
def _soft_quantized_vectors(probs, codebooks):
    soft = jnp.einsum(
        "qmk,mkd->qmd",
        probs.astype(jnp.float32),
        codebooks.astype(jnp.float32),
        precision=_HIGHEST,
        preferred_element_type=jnp.float32,
    )  # [Q, M, d]
    return soft.reshape(soft.shape[0], -1)  # [Q, M*d], subspace-major


def lut_l2(query: Float[Array, "q ..."], codebooks: Float[Array, "m k d"]) -> Float[Array, "q m k"]:
    """Squared-L2 LUT: `LUT[q, m, k] = ||x_qm - c_mk||^2`; ranked in ASCENDING order.

    Used by Klein-Wolf supervised PQ and OPQN-l2q with the soft-quantized query, and by plain
    PQ with the raw query. Computed as `|x|^2 - 2<x, c> + |c|^2` in float32 (clamped at 0), which
    needs no `[Q, M, K, d]` intermediate.

    Args:
      query: `[Q, D]` raw queries, or `[Q, M, d]` sub-vectors (e.g. the soft-quantized
        `s_m = sum_k p_mk c_mk`).
      codebooks: `[M, K, d]` codewords.

    Returns:
      `[Q, M, K]` float32 table; pass `larger_is_better=False` to `adc_topk`.

    Raises:
      ValueError: shapes do not match.

    References:
      Jegou et al., TPAMI 2011, Eq. (13); Klein & Wolf, "End-to-End Supervised Product
      Quantization for Image Search and Retrieval", CVPR 2019.
    """
    checks.check_codebooks(codebooks)
    m, _, d = codebooks.shape
    return _lut_l2(checks.check_query(query, m, d), jnp.asarray(codebooks))


@jax.jit
def _lut_l2(query, codebooks):
    m, _, d = codebooks.shape
    x = _split(query, m, d)  # [Q, M, d]
    cb = codebooks.astype(jnp.float32)
    cross = jnp.einsum(
        "qmd,mkd->qmk", x, cb, precision=_HIGHEST, preferred_element_type=jnp.float32
    )
    x_sq = jnp.sum(x * x, axis=-1)[:, :, None]  # [Q, M, 1]
    c_sq = jnp.sum(cb * cb, axis=-1)[None, :, :]  # [1, M, K]
    return jnp.maximum(x_sq - 2.0 * cross + c_sq, 0.0)


def lut_progressive(
    query: Float[Array, "q dim"], codebooks: Float[Array, "l k dim"], levels: int
) -> Float[Array, "q l k"]:
    """Inner-product LUT for progressive (residual) codebooks, using the first `levels` levels.

    DPQ-G stores `L` codes per item, one per full-dimension residual level; the score with the
    first `l` levels is `<q, sum_{i<l} c_{i, code_i}> = sum_{i<l} LUT[q, i, code_i]`. The table
    keeps all `L` rows and sets rows `i >= levels` to exactly 0, so the one stored `[N, L]` code
    array is searched unchanged for every `l` (adding 0.0 leaves each partial sum exact).

    Args:
      query: `[Q, D]` raw query embeddings.
      codebooks: `[L, K, D]` full-dimension codebooks, level by level.
      levels: how many leading levels to score with, `1 <= levels <= L`.

    Returns:
      `[Q, L, K]` float32 table; ranked in descending order.

    Raises:
      ValueError: shapes do not match or `levels` is out of range.

    References:
      Gao, Zhu, Song, Zhao & Shen, "Deep Progressive Quantization", IJCAI 2019, Sec. 3.4
      (asymmetric quantizer distance with the first l codebooks).
    """
    checks.check_codebooks(codebooks)
    num_levels, _, dim = codebooks.shape
    query = jnp.asarray(query)
    if query.ndim != 2 or query.shape[1] != dim:
        raise ValueError(
            f"query must have shape [Q, D] with D = {dim} (the codeword dimension), "
            f"got {query.shape}."
        )
    if isinstance(levels, bool) or not isinstance(levels, (int, np.integer)):
        raise ValueError(f"levels must be an int, got {levels!r}.")
    if not 1 <= levels <= num_levels:
        raise ValueError(f"levels = {levels} is out of range; use 1 <= levels <= L = {num_levels}.")
    return _lut_progressive(query, jnp.asarray(codebooks), jnp.asarray(levels, jnp.int32))


@jax.jit
def _lut_progressive(query, codebooks, levels):
    num_levels = codebooks.shape[0]
    lut = jnp.einsum(
        "qd,lkd->qlk",
        query.astype(jnp.float32),
        codebooks.astype(jnp.float32),
        precision=_HIGHEST,
        preferred_element_type=jnp.float32,
    )
    keep = (jnp.arange(num_levels) < levels)[None, :, None]  # [1, L, 1]
    return jnp.where(keep, lut, 0.0)
