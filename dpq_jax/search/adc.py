"""Asymmetric distance computation (ADC): exact top-k search of lookup tables against PQ codes.

A query is compared with PQ-coded database items through a lookup table (LUT) of shape
`[Q, M, K]` (built by `luts.py`): the score of item `n` is `sum_m LUT[q, m, codes[n, m]]`
(Jegou et al., 2011). This module holds the validated entry points; the work is done by the
scoring kernels of `kernels.py` and the exact top-k engine of `topk.py` (chunked over the
database, optionally sharded over a mesh; tie policy documented there).

The LUT builders and `check_mesh` are re-exported here for existing callers.

References:
  H. Jegou, M. Douze, C. Schmid. Product quantization for nearest neighbor search. IEEE TPAMI
  33(1), 2011, Sec. III-A (ADC) and Sec. IV (exhaustive search).
"""

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp

from dpq_jax.search import checks, kernels, topk
from dpq_jax.search.checks import check_mesh
from dpq_jax.search.luts import (
    lut_inner_product,
    lut_l2,
    lut_progressive,
    lut_soft_quantized,
    soft_quantized_vectors,
)
from dpq_jax.search.topk import DEFAULT_CHUNK_SIZE, DEFAULT_QUERY_CHUNK
from dpq_jax.typing import Array, Float, Int

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "DEFAULT_QUERY_CHUNK",
    "adc_topk",
    "check_mesh",
    "decode_topk",
    "lut_inner_product",
    "lut_l2",
    "lut_progressive",
    "lut_soft_quantized",
    "soft_quantized_vectors",
]


@functools.cache
def _key_fn(kernel: str | Callable, larger_is_better: bool) -> topk.KeyFn:
    """The engine's key function for `kernel`; one object per argument pair (no recompiles)."""
    score = kernels.resolve_kernel(kernel)
    if larger_is_better:
        return score
    return lambda lut, codes: -score(lut, codes)


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
    mesh: jax.sharding.Mesh | None = None,
) -> tuple[Float[Array, "q k"], Int[Array, "q k"]]:
    """Exact top-k ADC search of `Q` lookup tables against `N` coded items.

    Scores are `sum_m lut[q, m, codes[n, m]]` in float32, summed over `m` in increasing order.
    The database is scored in fixed-size chunks of a padded array (one compiled kernel for all
    chunks), padding is masked, and the exact top-k is selected from block maxima (`topk.py`).

    Ties: with `ties="stable"` equal scores are ordered by the lower database index; with
    `ties="random"` by the seeded permutation `topk.tie_permutation(N, seed)`, the same for
    all queries (and the same as the metrics' `ties="random"`).

    Args:
      lut: `[Q, M, K]` float lookup table (`lut_*` functions).
      codes: `[N, M]` codes in `[0, K)`, uint8 for K <= 256 (any integer dtype is accepted).
      k: results per query, `1 <= k <= N`.
      chunk_size: database rows per step (per device with a mesh).
      query_chunk: queries per block.
      larger_is_better: True for inner-product tables (descending), False for L2 (ascending).
      kernel: `"auto"` (gather on CPU, one-hot matmul elsewhere; see `kernels.py`),
        `"gather"`, `"onehot"`, or a callable `(lut_block [q, M, K], codes_chunk [c, M]) ->
        scores [c, q]` (database-major, as the built-in kernels).
      ties: `"stable"` or `"random"`.
      seed: seed for `ties="random"`.
      mesh: optional mesh with a `"data"` axis: the codes are split over it (`jax.shard_map`)
        and the result is identical. A `codes` array already split over a mesh is searched
        where it lies.

    Returns:
      `(scores [Q, k] float32, ids [Q, k] int32)`, best first.

    Raises:
      ValueError: empty database, `k > N`, bad shapes or dtypes, non-finite table (when
        concrete), codes outside `[0, K)` (when concrete), unknown kernel, tie policy or mesh.

    References:
      Jegou et al., TPAMI 2011, Sec. III-A (ADC) and Sec. IV (exhaustive search).

    Examples:
      >>> lut = jnp.array([[[0.0, 1.0], [0.0, 2.0]]])  # Q=1, M=2, K=2
      >>> codes = jnp.array([[0, 0], [1, 1], [1, 0], [0, 1]], jnp.uint8)
      >>> scores, ids = adc_topk(lut, codes, 3)
      >>> scores.tolist(), ids.tolist()
      ([[3.0, 2.0, 1.0]], [[1, 3, 2]])
    """
    checks.check_lut(lut)
    checks.check_codes(codes, lut.shape[1], lut.shape[2])
    key_fn = _key_fn(kernel, bool(larger_is_better))
    keys, ids = topk.topk(
        key_fn,
        jnp.asarray(lut, jnp.float32),
        codes,
        k=k,
        chunk_size=chunk_size,
        query_chunk=query_chunk,
        ties=ties,
        seed=seed,
        mesh=mesh,
    )
    return _keys_to_scores(keys, bool(larger_is_better)), ids


@functools.partial(jax.jit, static_argnames=("larger_is_better",))
def _keys_to_scores(keys, larger_is_better):
    scores = keys if larger_is_better else -keys
    return jnp.where(scores == 0, jnp.zeros_like(scores), scores)


@functools.partial(jax.jit, static_argnames=("k", "chunk_size", "query_chunk"))
def _decode_topk_jit(query, codebooks, codes, *, k, chunk_size, query_chunk):
    scores, ids = topk.chunked_topk(
        lambda q, c: kernels.scores_decode(q, codebooks, c),
        query,
        codes,
        k,
        chunk_size=chunk_size,
        query_chunk=query_chunk,
    )
    return jnp.where(scores == 0, jnp.zeros_like(scores), scores), ids


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
    checks.check_codebooks(codebooks)
    m, codebook_size, d = codebooks.shape
    query = checks.check_query(query, m, d)
    checks.check_codes(codes, m, codebook_size)
    k = checks.check_k(k, codes.shape[0])
    chunk_size, query_chunk = checks.check_chunks(chunk_size, query_chunk)
    return _decode_topk_jit(
        checks.replicate_if_sharded(query),
        jnp.asarray(codebooks, jnp.float32),
        jnp.asarray(checks.replicate_if_sharded(codes)),
        k=k,
        chunk_size=chunk_size,
        query_chunk=query_chunk,
    )
