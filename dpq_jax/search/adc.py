"""Asymmetric distance computation (ADC): lookup tables, scoring kernels and exact top-k search.

A query is compared with PQ-coded database items through a lookup table (LUT) of shape
`[Q, M, K]`: `LUT[q, m, k]` is the contribution of codeword `k` of codebook `m` to the score of
query `q`, so the score of item `n` is `sum_m LUT[q, m, codes[n, m]]` (Jegou et al., 2011).

Layout of this module:
- LUT builders (`lut_inner_product`, `lut_soft_quantized`, `lut_l2`, `lut_progressive`): pure,
  jittable, float32.
- Scoring kernels over one database chunk (`scores_gather`, `scores_onehot`, `scores_decode`).
- `chunked_topk`, the engine: a fixed-size chunk of the database is scored per step of a
  `lax.scan` over a padded array, so one compiled kernel serves every chunk. The scan keeps only
  the maximum of each run of B rows; the k best runs are then re-scored and an exact top-k of
  their `k * B` rows is taken (see `chunked_topk` for why this is exact). `hamming.py` reuses
  it with Hamming distances.
- `adc_topk` / `adc_topk_sharded` / `decode_topk`: validated entry points.

Tie policy ("stable"): results are ordered by score, and equal scores by the LOWER database
index. This holds exactly because `lax.top_k` puts the lower position first among equal values
(documented by JAX): the block maxima are ranked in block order, the selected blocks are
re-scored in increasing index order, and sharded candidates are concatenated in device order,
i.e. in index order. Floating zeros are canonicalised (`-0.0 -> +0.0`) first, because
`lax.top_k` orders `-0.0` below `+0.0`. `ties="random"` instead breaks ties by a seeded random
permutation of the database (`tie_permutation`), the same for every query.

`kernel="auto"` picks `"gather"` on CPU and `"onehot"` elsewhere. Measured on the shared
2-core development CPU (jax 0.10.2, noisy: load average 3-8 from other users): Q=128,
N=65536, k=100, M=8, K=256: gather 0.15 s, onehot 0.65 s, decode (d=16) 0.17 s; M=4, K=16:
gather 0.13 s, onehot 0.14 s, decode 0.21 s. Selection: `lax.top_k` on CPU sorts about
2e8 keys/s, as fast as the gather kernel scores them, so the earlier per-chunk top-k plus
running merge spent about half its time selecting; keeping block maxima instead made
`adc_topk` 2-3x faster (N=262144, Q=256, M=8, best of 4 interleaved runs: 0.82 s -> 0.26 to
0.35 s). Chunks of 16384 rows and
blocks of 32 queries were best or within noise of the best of 2048-65536 rows and 8-256
queries. `benchmarks/search.py` compares with FAISS: on that CPU, N=1M, Q=1000, k=100, dpq_jax
took 0.76x (M=8) and 1.85x (M=16) the time of FAISS `IndexPQ` on the same codes. Not measured
on an accelerator: there the one-hot form is a dense matmul for the matrix units, and the
gather's scattered reads are the slow path; re-measure (and raise `query_chunk`) before
relying on these defaults there.

References:
  H. Jegou, M. Douze, C. Schmid. Product quantization for nearest neighbor search. IEEE TPAMI
  33(1), 2011, Sec. III-A, Eq. (13) (asymmetric distance as a sum of per-subspace table entries).
"""

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from dpq_jax.parallel import DATA_AXIS, data_sharding, replicated
from dpq_jax.typing import Array, Float, Int

KERNELS = ("gather", "onehot")
TIES = ("stable", "random")
DEFAULT_CHUNK_SIZE = 16384
DEFAULT_QUERY_CHUNK = 32

_HIGHEST = lax.Precision.HIGHEST

# A per-chunk scoring function: (query block [q, ...], database chunk [c, ...]) -> keys [q, c].
ScoreFn = Callable[[Array, Array], Array]


# --------------------------------------------------------------------------------------------
# Validation helpers (shared with hamming.py and index.py).
# --------------------------------------------------------------------------------------------


def concrete_or_none(x) -> np.ndarray | None:
    """Returns `x` as a NumPy value when it is concrete, or None while it is being traced."""
    try:
        return np.asarray(x)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return None


@jax.jit
def _min_max(x):
    return jnp.min(x), jnp.max(x)


def value_range(x) -> tuple[float, float] | None:
    """`(min, max)` of a non-empty array when it is concrete, None while tracing.

    NumPy inputs are reduced on the host; device arrays by one small jitted reduction, so
    validating a large database does not copy it to the host. NaN propagates into the result.
    """
    if not isinstance(x, jax.Array):
        x = np.asarray(x)
        return x.min().item(), x.max().item()
    lo, hi = _min_max(x)
    lo, hi = concrete_or_none(lo), concrete_or_none(hi)
    if lo is None or hi is None:
        return None
    return lo.item(), hi.item()


def check_k(k, num_items: int, what: str = "database") -> int:
    """Validates the number of results `k` against the database size.

    Raises:
      ValueError: empty database, or `k` not an integer in `[1, num_items]`.
    """
    if num_items == 0:
        raise ValueError(f"The {what} is empty (N = 0); add items before searching.")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise ValueError(f"k must be a Python int, got {k!r} of type {type(k).__name__}.")
    k = int(k)
    if not 1 <= k <= num_items:
        raise ValueError(
            f"k = {k} is out of range for a {what} of N = {num_items} items; "
            f"ask for 1 <= k <= {num_items}."
        )
    return k


def check_chunks(chunk_size, query_chunk) -> tuple[int, int]:
    """Validates the database and query chunk sizes (positive ints)."""
    for name, value in (("chunk_size", chunk_size), ("query_chunk", query_chunk)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}.")
    return int(chunk_size), int(query_chunk)


def check_ties(ties: str, seed) -> None:
    """Validates the tie policy name and its seed."""
    if ties not in TIES:
        raise ValueError(f"ties must be one of {TIES}, got {ties!r}.")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**32:
        raise ValueError(f"seed must be an int in [0, 2**32), got {seed!r}.")


def check_mesh(mesh) -> None:
    """Validates that `mesh` is a Mesh with a `"data"` axis."""
    if not isinstance(mesh, jax.sharding.Mesh) or DATA_AXIS not in mesh.axis_names:
        raise ValueError(
            f"mesh must be a jax.sharding.Mesh with a {DATA_AXIS!r} axis; build one with "
            f"dpq_jax.parallel.make_mesh(), got {mesh!r}."
        )


def database_mesh(x) -> jax.sharding.Mesh | None:
    """The mesh of a concrete device array that is split across devices, else None.

    The single-device search functions use it to hand a database that is already sharded
    (e.g. encoded under a mesh) to the sharded search, since in explicit mode padding or
    chunking a sharded axis is a sharding type error.

    Raises:
      ValueError: `x` is split over a mesh that has no `"data"` axis.
    """
    if not isinstance(x, jax.Array):
        return None
    try:
        sharding = x.sharding
    except Exception:  # a tracer: placement is the caller's jit's business
        return None
    if not isinstance(sharding, NamedSharding) or sharding.is_fully_replicated:
        return None
    if (
        not isinstance(sharding.mesh, jax.sharding.Mesh)
        or DATA_AXIS not in sharding.mesh.axis_names
    ):
        raise ValueError(
            f"The database is sharded as {sharding.spec} over a mesh without a {DATA_AXIS!r} "
            "axis; pass a host or replicated array, or place it with parallel.data_sharding."
        )
    return sharding.mesh


def replicate_if_sharded(x):
    """`x` replicated on its mesh if it is a concrete array split across devices; else `x`.

    The single-device search functions chunk and pad their inputs, which explicit sharding
    forbids along a sharded axis; small operands (queries, tables) are simply replicated.
    """
    if not isinstance(x, jax.Array):
        return x
    try:
        sharding = x.sharding
    except Exception:  # a tracer
        return x
    if isinstance(sharding, NamedSharding) and not sharding.is_fully_replicated:
        return jax.device_put(x, NamedSharding(sharding.mesh, P()))
    return x


def _check_lut(lut, name: str = "lut") -> None:
    if getattr(lut, "ndim", None) != 3:
        raise ValueError(
            f"{name} must have shape [Q, M, K] (queries, codebooks, codewords), got shape "
            f"{getattr(lut, 'shape', None)}; build it with one of the lut_* functions."
        )
    if not jnp.issubdtype(lut.dtype, jnp.floating):
        raise ValueError(f"{name} must be floating point, got dtype {lut.dtype}.")
    if lut.shape[1] == 0 or lut.shape[2] == 0:
        raise ValueError(f"{name} has an empty codebook axis: shape {lut.shape}.")
    bounds = value_range(lut) if lut.size else None
    if bounds is not None and not np.all(np.isfinite(bounds)):
        raise ValueError(
            f"{name} contains NaN or infinite entries; ranking would be undefined. Check the "
            "queries and codebooks it was built from."
        )


def check_codes(codes, num_codebooks: int, codebook_size: int, name: str = "codes") -> None:
    """Validates `[N, M]` integer codes against M and K (value range only when concrete)."""
    if getattr(codes, "ndim", None) != 2:
        raise ValueError(
            f"{name} must have shape [N, M] (items, codebooks), got shape "
            f"{getattr(codes, 'shape', None)}."
        )
    if not jnp.issubdtype(codes.dtype, jnp.integer):
        raise ValueError(
            f"{name} must be an integer array (uint8 for K <= 256), got dtype {codes.dtype}."
        )
    if codes.shape[1] != num_codebooks:
        raise ValueError(
            f"{name} has {codes.shape[1]} columns but the lookup table has M = {num_codebooks} "
            "codebooks; they must match."
        )
    if codes.shape[0] == 0:
        return
    bounds = value_range(codes)
    if bounds is not None and (bounds[0] < 0 or bounds[1] >= codebook_size):
        raise ValueError(
            f"{name} must lie in [0, K) = [0, {codebook_size}), found values in "
            f"[{int(bounds[0])}, {int(bounds[1])}]; the codes do not belong to these codebooks."
        )


def _check_codebooks(codebooks, name: str = "codebooks") -> None:
    if getattr(codebooks, "ndim", None) != 3:
        raise ValueError(
            f"{name} must have shape [M, K, d], got shape {getattr(codebooks, 'shape', None)}."
        )
    if not jnp.issubdtype(codebooks.dtype, jnp.floating):
        raise ValueError(f"{name} must be floating point, got dtype {codebooks.dtype}.")


def _check_query(query, num_codebooks: int, sub_dim: int, name: str = "query") -> Array:
    """Checks a `[Q, D]` or `[Q, M, d]` query against the codebooks; returns it as an array."""
    query = jnp.asarray(query)
    if query.ndim == 3:
        if query.shape[1:] != (num_codebooks, sub_dim):
            raise ValueError(
                f"{name} has shape {query.shape}; expected [Q, M, d] = "
                f"[Q, {num_codebooks}, {sub_dim}] to match the codebooks."
            )
        return query
    if query.ndim != 2:
        raise ValueError(f"{name} must have shape [Q, D] or [Q, M, d], got {query.shape}.")
    if query.shape[1] != num_codebooks * sub_dim:
        raise ValueError(
            f"{name} has D = {query.shape[1]} but the codebooks need D = M * d = "
            f"{num_codebooks} * {sub_dim} = {num_codebooks * sub_dim}."
        )
    return query


def _split(query: Array, num_codebooks: int, sub_dim: int) -> Array:
    """[Q, D] or [Q, M, d] -> [Q, M, d] float32 (traceable, unchecked)."""
    # Subspace m is the m-th contiguous slice of length d of the D-dim query.
    return query.reshape(query.shape[0], num_codebooks, sub_dim).astype(jnp.float32)


# --------------------------------------------------------------------------------------------
# Lookup tables.
# --------------------------------------------------------------------------------------------


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
    _check_codebooks(codebooks)
    m, _, d = codebooks.shape
    return _lut_inner_product(_check_query(query, m, d), jnp.asarray(codebooks))


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
    _check_codebooks(codebooks)
    _check_lut(probs, "probs")
    if probs.shape[1:] != codebooks.shape[:2]:
        raise ValueError(
            f"probs has shape {probs.shape} but the codebooks have [M, K] = "
            f"{codebooks.shape[:2]}; they must agree."
        )
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
    _check_codebooks(codebooks)
    _check_lut(probs, "probs")
    if probs.shape[1:] != codebooks.shape[:2]:
        raise ValueError(
            f"probs has shape {probs.shape} but the codebooks have [M, K] = "
            f"{codebooks.shape[:2]}; they must agree."
        )
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
    _check_codebooks(codebooks)
    m, _, d = codebooks.shape
    return _lut_l2(_check_query(query, m, d), jnp.asarray(codebooks))


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
    _check_codebooks(codebooks)
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


# --------------------------------------------------------------------------------------------
# Scoring kernels over one database chunk.
# --------------------------------------------------------------------------------------------


def scores_gather(lut: Float[Array, "q m k"], codes: Int[Array, "c m"]) -> Float[Array, "q c"]:
    """ADC scores by table gathers: `out[q, c] = sum_m lut[q, m, codes[c, m]]`.

    Summed over `m` in increasing order, in float32. Out-of-range codes are clipped (callers
    validate concrete codes first).

    Args:
      lut: `[Q, M, K]` lookup table.
      codes: `[C, M]` integer codes of a database chunk.

    Returns:
      `[Q, C]` float32 scores.
    """
    lut = lut.astype(jnp.float32)
    codes = codes.astype(jnp.int32)
    total = jnp.take(lut[:, 0, :], codes[:, 0], axis=1, mode="clip")  # [Q, C]
    for m in range(1, lut.shape[1]):
        total = total + jnp.take(lut[:, m, :], codes[:, m], axis=1, mode="clip")
    return total


def scores_onehot(lut: Float[Array, "q m k"], codes: Int[Array, "c m"]) -> Float[Array, "q c"]:
    """ADC scores as a matmul: `out = lut.reshape(Q, M*K) @ one_hot(codes).reshape(C, M*K).T`.

    Float32 with `Precision.HIGHEST`, so accelerators do not drop to bf16/tf32.

    Args:
      lut: `[Q, M, K]` lookup table.
      codes: `[C, M]` integer codes of a database chunk.

    Returns:
      `[Q, C]` float32 scores.
    """
    onehot = jax.nn.one_hot(codes, lut.shape[2], dtype=jnp.float32)  # [C, M, K]
    return jnp.einsum(
        "qmk,cmk->qc",
        lut.astype(jnp.float32),
        onehot,
        precision=_HIGHEST,
        preferred_element_type=jnp.float32,
    )


def scores_decode(
    query: Float[Array, "q ..."], codebooks: Float[Array, "m k d"], codes: Int[Array, "c m"]
) -> Float[Array, "q c"]:
    """Inner-product scores by decoding the chunk: `out[q, c] = <query_q, [c_{m, codes[c, m]}]_m>`.

    Equal to `scores_gather(lut_inner_product(query, codebooks), codes)` up to float rounding;
    cheaper when `D < M * K`. Inner product only.

    Args:
      query: `[Q, D]` or `[Q, M, d]` queries.
      codebooks: `[M, K, d]` codewords.
      codes: `[C, M]` integer codes.

    Returns:
      `[Q, C]` float32 scores.
    """
    m, _, d = codebooks.shape
    query = _split(jnp.asarray(query), m, d)  # [Q, M, d]
    # recon[c, m, :] = codebooks[m, codes[c, m], :]  -> [C, M, d]
    recon = codebooks.astype(jnp.float32)[jnp.arange(m)[None, :], codes.astype(jnp.int32)]
    return jnp.einsum(
        "qmd,cmd->qc", query, recon, precision=_HIGHEST, preferred_element_type=jnp.float32
    )


def _resolve_kernel(kernel) -> Callable:
    if callable(kernel):
        return kernel
    if kernel == "auto":
        kernel = "gather" if jax.default_backend() == "cpu" else "onehot"
    if kernel == "gather":
        return scores_gather
    if kernel == "onehot":
        return scores_onehot
    raise ValueError(
        f"kernel must be 'auto', one of {KERNELS} or a callable (lut, codes) -> scores, got "
        f"{kernel!r}. For decode-then-matmul scoring call decode_topk."
    )


def adc_scores(
    lut: Float[Array, "q m k"], codes: Int[Array, "n m"], *, kernel: str | Callable = "auto"
) -> Float[Array, "q n"]:
    """Dense ADC scores of every query against every item (small databases only).

    Args:
      lut: `[Q, M, K]` lookup table.
      codes: `[N, M]` integer codes in `[0, K)`.
      kernel: `"auto"`, `"gather"`, `"onehot"` or a callable `(lut, codes) -> [Q, N]`.

    Returns:
      `[Q, N]` float32 scores `sum_m lut[q, m, codes[n, m]]`.

    Raises:
      ValueError: bad shapes or dtypes, non-finite table, codes outside `[0, K)`.
    """
    _check_lut(lut)
    check_codes(codes, lut.shape[1], lut.shape[2])
    _resolve_kernel(kernel)
    return _adc_scores(jnp.asarray(lut), jnp.asarray(codes), kernel=kernel)


@functools.partial(jax.jit, static_argnames=("kernel",))
def _adc_scores(lut, codes, *, kernel):
    return _resolve_kernel(kernel)(lut.astype(jnp.float32), codes).astype(jnp.float32)


# --------------------------------------------------------------------------------------------
# The chunked exact top-k engine.
# --------------------------------------------------------------------------------------------


def _lowest(dtype) -> Array:
    """The padding key: below every real key of `dtype`."""
    if jnp.issubdtype(dtype, jnp.floating):
        return jnp.array(-jnp.inf, dtype)
    return jnp.array(jnp.iinfo(dtype).min, dtype)


def pad_rows(x: Array, rows: int) -> Array:
    if rows == x.shape[0]:
        return x
    return jnp.pad(x, [(0, rows - x.shape[0])] + [(0, 0)] * (x.ndim - 1))


def selection_block(num_items: int, k: int, chunk: int) -> int:
    """Default selection block B: the power of two nearest `sqrt(N / k)`, within `[1, chunk]`.

    Selection sorts about `N / B` block maxima plus `k * B` candidates per query; the sum is
    smallest near `B = sqrt(N / k)`.
    """
    ideal = np.sqrt(max(num_items, 1) / max(k, 1))
    block = 2 ** int(np.round(np.log2(max(ideal, 1.0))))
    return int(max(1, min(block, chunk)))


def chunked_topk(
    score_fn: ScoreFn,
    queries: Array,
    database: Array,
    k: int,
    *,
    key_dtype,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    query_chunk: int = DEFAULT_QUERY_CHUNK,
    block_size: int | None = None,
    num_valid=None,
    id_offset=0,
    varying_axes: tuple[str, ...] = (),
) -> tuple[Array, Int[Array, "q k"]]:
    """Exact top-k of `score_fn` keys over a database, chunk by chunk (traceable, no checks).

    Two passes per block of `query_chunk` queries (`lax.map` over query blocks):

    1. Scan: the database, padded to a multiple of the chunk size, is scored one fixed-size
       chunk per `lax.scan` step (one compiled kernel for all chunks). Only the maximum key of
       each run of `B` consecutive rows (a selection block) is kept: `[q, N / B]`.
    2. Select: the `k` blocks with the largest maxima (`lax.top_k`, lower block first on
       ties) hold the top-k items, since fewer than `k` items beat the k-th key, so at most
       `k - 1` blocks have a larger maximum. Their `k * B` rows, in increasing index order,
       are re-scored with the same `score_fn` (bitwise the same keys) and a last stable
       `lax.top_k` picks the result.

    Sorting `N / B + k * B` keys per query instead of all `N` removes most of the selection
    cost, which otherwise rivals the scoring itself on CPU. Rows at or beyond `num_valid` get
    the lowest key of `key_dtype`. The result is sorted by key (descending) and, among equal
    keys, by lower index: among blocks with equal maxima the lower ones are kept, and within
    them the candidates are in index order, so the tie rule is exact.

    Args:
      score_fn: `(query_block [q, ...], db_chunk [c, ...]) -> keys [q, c]`, larger is better;
        it must give the same key for a (query, row) pair whatever the other rows are.
      queries: `[Q, ...]` query-side array (LUTs, packed bits).
      database: `[N, ...]` database-side array (codes, packed bits).
      k: results per query; the output has `min(k, N)` columns.
      key_dtype: dtype of the keys `score_fn` returns (float32 or int32).
      chunk_size: database rows scored per step (clipped to N, rounded up to a multiple of B).
      query_chunk: queries per block (clipped to Q).
      block_size: selection block B; default `selection_block(N, k, chunk)`. Memory per query
        block: `[query_chunk, N / B]` maxima and `[query_chunk, k * B, ...]` candidates.
      num_valid: rows `>= num_valid` are padding (default: all N rows are valid); may be traced.
      id_offset: added to row positions to form the returned ids; may be traced.
      varying_axes: inside `shard_map`, the mesh axes the database is split over (kept for
        callers; every intermediate derives from the database, so nothing needs casting).

    Returns:
      `(keys [Q, min(k, N)], ids [Q, min(k, N)] int32)`.
    """
    del varying_axes
    num_q, num_n = queries.shape[0], database.shape[0]
    # Rows past the end of `database` (chunk padding) are never valid, whatever num_valid says.
    num_valid = num_n if num_valid is None else jnp.minimum(num_valid, num_n)
    k_out = min(k, num_n)
    chunk = max(1, min(chunk_size, num_n))
    block = selection_block(num_n, k_out, chunk) if block_size is None else block_size
    block = max(1, min(int(block), chunk))
    chunk = -(-chunk // block) * block
    num_chunks = -(-num_n // chunk)
    blocks_per_chunk = chunk // block
    num_blocks = num_chunks * blocks_per_chunk
    k_blocks = min(k_out, num_blocks)
    q_block = max(1, min(query_chunk, num_q))
    num_qblocks = -(-num_q // q_block)
    floating = jnp.issubdtype(key_dtype, jnp.floating)
    lowest = _lowest(key_dtype)

    def keys_of(qb, rows_db, rows):
        keys = score_fn(qb, rows_db).astype(key_dtype)  # [q, c]
        if floating:
            keys = jnp.where(keys == 0, jnp.zeros_like(keys), keys)  # -0.0 -> +0.0
        return jnp.where(rows < num_valid, keys, lowest)

    # [N, ...] -> [num_chunks, chunk, ...]; [Q, ...] -> [num_qblocks, q_block, ...]
    flat_db = pad_rows(database, num_chunks * chunk)
    db = flat_db.reshape(num_chunks, chunk, *database.shape[1:])
    qs = pad_rows(queries, num_qblocks * q_block)
    qs = qs.reshape(num_qblocks, q_block, *queries.shape[1:])
    starts = jnp.arange(num_chunks, dtype=jnp.int32) * chunk
    offsets = jnp.arange(block, dtype=jnp.int32)

    def search_block(qb):
        def step(_, xs):
            db_chunk, start = xs
            rows = (start + jnp.arange(chunk, dtype=jnp.int32))[None, :]  # [1, chunk]
            keys = keys_of(qb, db_chunk, rows)  # [q, chunk]
            return None, jnp.max(keys.reshape(q_block, blocks_per_chunk, block), axis=-1)

        _, maxima = lax.scan(step, None, (db, starts))  # [num_chunks, q, blocks_per_chunk]
        maxima = jnp.transpose(maxima, (1, 0, 2)).reshape(q_block, num_blocks)
        _, best_blocks = lax.top_k(maxima, k_blocks)  # [q, k_blocks], lower block on ties
        best_blocks = jnp.sort(best_blocks, axis=1)  # candidates in increasing index order
        rows = (best_blocks[:, :, None] * block + offsets).reshape(q_block, k_blocks * block)
        candidates = flat_db[rows]  # [q, k_blocks * B, ...]
        keys = jax.vmap(lambda qrow, cand: score_fn(qrow[None], cand)[0])(qb, candidates)
        keys = keys.astype(key_dtype)
        if floating:
            keys = jnp.where(keys == 0, jnp.zeros_like(keys), keys)
        keys = jnp.where(rows < num_valid, keys, lowest)
        best_keys, pos = lax.top_k(keys, k_out)  # stable: lower row first among equal keys
        return best_keys, jnp.take_along_axis(rows, pos, axis=1) + id_offset

    keys, ids = lax.map(search_block, qs)  # [num_qblocks, q_block, k_out]
    keys = keys.reshape(num_qblocks * q_block, k_out)[:num_q]
    ids = ids.reshape(num_qblocks * q_block, k_out)[:num_q].astype(jnp.int32)
    return keys, ids


def tie_permutation(num_items: int, seed: int) -> Int[Array, " n"]:
    """The seeded random database order used by `ties="random"`.

    `perm[j]` is the database index placed at position `j`; ties are broken by lower position,
    i.e. item `i` has tie priority `argsort(perm)[i]`.

    Args:
      num_items: database size N.
      seed: integer seed.

    Returns:
      `[N]` int32 permutation of `0..N-1`.
    """
    check_ties("random", seed)
    return _permutation(jnp.asarray(seed, jnp.uint32), num_items=int(num_items))


@functools.partial(jax.jit, static_argnames=("num_items",))
def _permutation(seed, *, num_items):
    return jax.random.permutation(jax.random.key(seed), num_items).astype(jnp.int32)


def merge_candidates(keys: Array, ids: Int[Array, "q c"], k: int) -> tuple[Array, Array]:
    """Final exact top-k over candidates concatenated in increasing-id order (stable ties)."""
    keys_k, pos = lax.top_k(keys, k)
    return keys_k, jnp.take_along_axis(ids, pos, axis=1)


def place_database(x, mesh: jax.sharding.Mesh, *, perm=None) -> tuple[Array, int]:
    """Pads `x` to a multiple of the device count (and optionally permutes rows), split `P("data")`.

    Host (NumPy) inputs are prepared on the host. A device array that needs padding or a
    permutation is first replicated, which costs one full copy per device; pass host arrays or
    a row count divisible by the device count to avoid it.

    Args:
      x: `[N, ...]` database rows.
      mesh: a mesh with a `"data"` axis.
      perm: optional `[N]` row order (`x[perm]`).

    Returns:
      `(x_padded [n_dev * N_loc, ...] sharded over "data", N_loc)`.
    """
    n_dev = mesh.shape[DATA_AXIS]
    num_n = x.shape[0]
    local = -(-num_n // n_dev)
    rows = local * n_dev
    sharding = data_sharding(mesh)
    if not isinstance(x, jax.Array):
        x = np.asarray(x)
        if perm is not None:
            x = x[np.asarray(perm)]
        if rows != num_n:
            x = np.pad(x, [(0, rows - num_n)] + [(0, 0)] * (x.ndim - 1))
        return jax.device_put(x, sharding), local
    if perm is None and rows == num_n:
        return jax.device_put(x, sharding), local

    def prepare(x, perm):
        if perm is not None:
            x = x[perm]
        return pad_rows(x, rows)

    x = jax.device_put(x, replicated(mesh))
    perm = None if perm is None else jax.device_put(jnp.asarray(perm), replicated(mesh))
    return jax.jit(prepare, out_shardings=sharding)(x, perm), local


def sharded_topk(
    score_fn: ScoreFn,
    queries: Array,
    database: Array,
    k: int,
    mesh: jax.sharding.Mesh,
    *,
    num_items: int,
    local_rows: int,
    key_dtype,
    chunk_size: int,
    query_chunk: int,
) -> tuple[Array, Int[Array, "q k"]]:
    """Top-k over a database split `P("data")`, queries replicated (traceable, no checks).

    Each device runs `chunked_topk` on its `local_rows` rows with global ids
    `axis_index("data") * local_rows + row`, masking ids `>= num_items` (padding). The
    `[Q, n_dev * min(k, local_rows)]` candidates come out split over `"data"` in device order,
    are resharded to `P()` and merged by one more stable top-k, so ties again go to the lower id.

    Args:
      score_fn: see `chunked_topk`.
      queries: `[Q, ...]`, replicated.
      database: `[n_dev * local_rows, ...]`, split over `"data"` (see `place_database`).
      k: results per query, `k <= num_items`.
      mesh: the mesh.
      num_items: number of real rows N (the rest is padding).
      local_rows: rows per device.
      key_dtype: see `chunked_topk`.
      chunk_size: see `chunked_topk`.
      query_chunk: see `chunked_topk`.

    Returns:
      `(keys [Q, k], ids [Q, k] int32)`, replicated.
    """

    def local_search(q, db):
        offset = lax.axis_index(DATA_AXIS) * local_rows
        return chunked_topk(
            score_fn,
            q,
            db,
            k,
            key_dtype=key_dtype,
            chunk_size=chunk_size,
            query_chunk=query_chunk,
            num_valid=num_items - offset,
            id_offset=offset,
            varying_axes=(DATA_AXIS,),
        )

    keys, ids = jax.shard_map(
        local_search,
        mesh=mesh,
        in_specs=(P(), P(DATA_AXIS)),
        out_specs=(P(None, DATA_AXIS), P(None, DATA_AXIS)),
    )(queries, database)
    # Explicit mode forbids top_k along a sharded axis: gather the few candidates first.
    everywhere = NamedSharding(mesh, P())
    keys = jax.sharding.reshard(keys, everywhere)
    ids = jax.sharding.reshard(ids, everywhere)
    return merge_candidates(keys, ids, k)


# --------------------------------------------------------------------------------------------
# ADC entry points.
# --------------------------------------------------------------------------------------------


def _adc_key_fn(kernel: Callable, larger_is_better: bool) -> ScoreFn:
    if larger_is_better:
        return kernel
    return lambda lut, codes: -kernel(lut, codes)


def _keys_to_scores(keys: Array, larger_is_better: bool) -> Array:
    scores = keys if larger_is_better else -keys
    return jnp.where(scores == 0, jnp.zeros_like(scores), scores)


@functools.partial(
    jax.jit, static_argnames=("k", "chunk_size", "query_chunk", "larger_is_better", "kernel")
)
def _adc_topk_jit(lut, codes, perm, *, k, chunk_size, query_chunk, larger_is_better, kernel):
    if perm is not None:
        codes = codes[perm]  # ties="random": search the permuted database, map ids back below
    keys, ids = chunked_topk(
        _adc_key_fn(_resolve_kernel(kernel), larger_is_better),
        lut.astype(jnp.float32),
        codes,
        k,
        key_dtype=jnp.float32,
        chunk_size=chunk_size,
        query_chunk=query_chunk,
    )
    if perm is not None:
        ids = perm[ids]
    return _keys_to_scores(keys, larger_is_better), ids


def adc_topk(
    lut: Float[Array, "q m k"],
    codes: Int[Array, "n m"],
    k: int,
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    query_chunk: int = DEFAULT_QUERY_CHUNK,
    larger_is_better: bool = True,
    kernel: str | Callable = "auto",
    ties: str = "stable",
    seed: int = 0,
) -> tuple[Float[Array, "q k"], Int[Array, "q k"]]:
    """Exact top-k ADC search of `Q` lookup tables against `N` coded items.

    Scores are `sum_m lut[q, m, codes[n, m]]` in float32. The database is scored in fixed-size
    chunks of a padded array (one compiled kernel for all chunks), padding is masked to -inf
    (+inf for ascending metrics), and a running exact top-k is merged after each chunk.

    Ties: with `ties="stable"` equal scores are ordered by the lower database index; with
    `ties="random"` by a seeded random permutation of the database (`tie_permutation(N, seed)`),
    the same for all queries.

    Args:
      lut: `[Q, M, K]` float lookup table (`lut_*` functions).
      codes: `[N, M]` codes in `[0, K)`, uint8 for K <= 256 (any integer dtype is accepted).
      k: results per query, `1 <= k <= N`.
      chunk_size: database rows per step; bounds the `[query_chunk, chunk_size]` score block.
      query_chunk: queries per block.
      larger_is_better: True for inner-product tables (descending), False for L2 (ascending).
      kernel: `"auto"` (gather on CPU, one-hot matmul elsewhere; see the module docstring),
        `"gather"`, `"onehot"`, or a callable `(lut_block, codes_chunk) -> [q, c]` scores.
      ties: `"stable"` or `"random"`.
      seed: seed for `ties="random"`.

    Returns:
      `(scores [Q, k] float32, ids [Q, k] int32)`, best first. A `codes` array already split
      over a mesh's `"data"` axis is searched with `adc_topk_sharded` (same results).

    Raises:
      ValueError: empty database, `k > N`, bad shapes or dtypes, non-finite table (when
        concrete), codes outside `[0, K)` (when concrete), unknown kernel or tie policy.

    References:
      Jegou et al., TPAMI 2011, Sec. III-A (ADC) and Sec. IV (exhaustive search).

    Examples:
      >>> lut = jnp.array([[[0.0, 1.0], [0.0, 2.0]]])  # Q=1, M=2, K=2
      >>> codes = jnp.array([[0, 0], [1, 1], [1, 0], [0, 1]], jnp.uint8)
      >>> scores, ids = adc_topk(lut, codes, 3)
      >>> scores.tolist(), ids.tolist()
      ([[3.0, 2.0, 1.0]], [[1, 3, 2]])
    """
    _check_lut(lut)
    check_codes(codes, lut.shape[1], lut.shape[2])
    k = check_k(k, codes.shape[0])
    chunk_size, query_chunk = check_chunks(chunk_size, query_chunk)
    check_ties(ties, seed)
    _resolve_kernel(kernel)
    mesh = database_mesh(codes)
    if mesh is not None:  # already split over devices: search it where it lies
        return adc_topk_sharded(
            lut,
            codes,
            k,
            mesh,
            chunk_size=chunk_size,
            query_chunk=query_chunk,
            larger_is_better=larger_is_better,
            kernel=kernel,
            ties=ties,
            seed=seed,
        )
    perm = tie_permutation(codes.shape[0], int(seed)) if ties == "random" else None
    return _adc_topk_jit(
        jnp.asarray(replicate_if_sharded(lut)),
        jnp.asarray(codes),
        perm,
        k=k,
        chunk_size=chunk_size,
        query_chunk=query_chunk,
        larger_is_better=bool(larger_is_better),
        kernel=kernel,
    )


@functools.partial(
    jax.jit,
    static_argnames=(
        "k",
        "mesh",
        "num_items",
        "local_rows",
        "chunk_size",
        "query_chunk",
        "larger_is_better",
        "kernel",
    ),
)
def _adc_topk_sharded_jit(
    lut,
    codes,
    *,
    k,
    mesh,
    num_items,
    local_rows,
    chunk_size,
    query_chunk,
    larger_is_better,
    kernel,
):
    keys, ids = sharded_topk(
        _adc_key_fn(_resolve_kernel(kernel), larger_is_better),
        lut.astype(jnp.float32),
        codes,
        k,
        mesh,
        num_items=num_items,
        local_rows=local_rows,
        key_dtype=jnp.float32,
        chunk_size=chunk_size,
        query_chunk=query_chunk,
    )
    return _keys_to_scores(keys, larger_is_better), ids


def adc_topk_sharded(
    lut: Float[Array, "q m k"],
    codes: Int[Array, "n m"],
    k: int,
    mesh: jax.sharding.Mesh,
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    query_chunk: int = DEFAULT_QUERY_CHUNK,
    larger_is_better: bool = True,
    kernel: str | Callable = "auto",
    ties: str = "stable",
    seed: int = 0,
) -> tuple[Float[Array, "q k"], Int[Array, "q k"]]:
    """`adc_topk` over a database split across the `"data"` axis of `mesh` (`jax.shard_map`).

    The codes are padded to a multiple of the device count (padding is masked) and placed
    `P("data")`; the tables are replicated. Each device keeps a local exact top-k with global
    ids, the candidates are gathered and merged with the same stable tie rule, so the result is
    identical to `adc_topk` with the same arguments.

    Args:
      lut: `[Q, M, K]` lookup table.
      codes: `[N, M]` codes (host arrays avoid an extra device copy when padding is needed).
      k: results per query, `1 <= k <= N`.
      mesh: mesh with a `"data"` axis (`dpq_jax.parallel.make_mesh`).
      chunk_size: database rows per step on each device.
      query_chunk: queries per block.
      larger_is_better: see `adc_topk`.
      kernel: see `adc_topk`.
      ties: see `adc_topk`.
      seed: see `adc_topk`.

    Returns:
      `(scores [Q, k] float32, ids [Q, k] int32)`, replicated over the mesh.

    Raises:
      ValueError: as `adc_topk`, or the mesh has no `"data"` axis.
    """
    _check_lut(lut)
    check_codes(codes, lut.shape[1], lut.shape[2])
    k = check_k(k, codes.shape[0])
    chunk_size, query_chunk = check_chunks(chunk_size, query_chunk)
    check_ties(ties, seed)
    check_mesh(mesh)
    _resolve_kernel(kernel)
    num_items = codes.shape[0]
    perm = tie_permutation(num_items, int(seed)) if ties == "random" else None
    db, local_rows = place_database(codes, mesh, perm=None if perm is None else np.asarray(perm))
    lut = jax.device_put(jnp.asarray(lut), replicated(mesh))
    scores, ids = _adc_topk_sharded_jit(
        lut,
        db,
        k=k,
        mesh=mesh,
        num_items=num_items,
        local_rows=local_rows,
        chunk_size=chunk_size,
        query_chunk=query_chunk,
        larger_is_better=bool(larger_is_better),
        kernel=kernel,
    )
    if perm is not None:
        ids = jax.device_put(perm, replicated(mesh))[ids]
    return scores, ids


@functools.partial(jax.jit, static_argnames=("k", "chunk_size", "query_chunk"))
def _decode_topk_jit(query, codebooks, codes, *, k, chunk_size, query_chunk):
    return chunked_topk(
        lambda q, c: scores_decode(q, codebooks, c),
        query,
        codes,
        k,
        key_dtype=jnp.float32,
        chunk_size=chunk_size,
        query_chunk=query_chunk,
    )


def decode_topk(
    query: Float[Array, "q ..."],
    codebooks: Float[Array, "m k d"],
    codes: Int[Array, "n m"],
    k: int,
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    query_chunk: int = DEFAULT_QUERY_CHUNK,
) -> tuple[Float[Array, "q k"], Int[Array, "q k"]]:
    """Inner-product top-k by decoding each database chunk and a matmul (`scores_decode`).

    Same ranking rule and tie policy ("stable") as `adc_topk` with
    `lut_inner_product(query, codebooks)`; scores agree up to float rounding.

    Args:
      query: `[Q, D]` or `[Q, M, d]` raw queries.
      codebooks: `[M, K, d]` codewords.
      codes: `[N, M]` codes in `[0, K)`.
      k: results per query, `1 <= k <= N`.
      chunk_size: database rows per step.
      query_chunk: queries per block.

    Returns:
      `(scores [Q, k] float32, ids [Q, k] int32)`, best first.

    Raises:
      ValueError: bad shapes, empty database, `k > N`, codes out of range (when concrete).
    """
    _check_codebooks(codebooks)
    m, codebook_size, d = codebooks.shape
    query = _check_query(query, m, d)
    check_codes(codes, m, codebook_size)
    k = check_k(k, codes.shape[0])
    chunk_size, query_chunk = check_chunks(chunk_size, query_chunk)
    scores, ids = _decode_topk_jit(
        replicate_if_sharded(query),
        jnp.asarray(codebooks, jnp.float32),
        jnp.asarray(replicate_if_sharded(codes)),
        k=k,
        chunk_size=chunk_size,
        query_chunk=query_chunk,
    )
    return jnp.where(scores == 0, jnp.zeros_like(scores), scores), ids
