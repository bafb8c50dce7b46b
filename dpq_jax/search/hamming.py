"""Exact Hamming ranking and radius search over packed binary codes.

Codes are packed with `kernels.pack_bits` (bit `j` in word `j // 32` at position `j % 32`; a
value is a 1-bit when it is `> 0`) and compared with `kernels.popcount_distances`. Ranking runs
on the exact top-k engine of `topk.py` with keys `-distance`, so the tie policy is the same as
ADC search: `ties="stable"` puts the lower database index first among equal distances,
`ties="random"` uses the seeded permutation `topk.tie_permutation(N, seed)` (the one the
metrics' `ties="random"` uses too).

References:
  Y. Weiss, A. Torralba, R. Fergus. Spectral Hashing. NIPS 2008 (the `hammingDist` utility).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from dpq_jax.search import checks, kernels, topk
from dpq_jax.search.topk import DEFAULT_CHUNK_SIZE, DEFAULT_QUERY_CHUNK
from dpq_jax.typing import Array, Int, UInt32


def _neg_distances(q_block, db_chunk):
    return -kernels.popcount_distances(q_block, db_chunk)  # [c, q]


def hamming_topk(
    q_packed: UInt32[Array, "q w"],
    db_packed: UInt32[Array, "n w"],
    k: int,
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    query_chunk: int = DEFAULT_QUERY_CHUNK,
    ties: str = "stable",
    seed: int = 0,
    mesh: jax.sharding.Mesh | None = None,
) -> tuple[Int[Array, "q k"], Int[Array, "q k"]]:
    """Exact Hamming ranking: the `k` nearest database codes of each query.

    Args:
      q_packed: `[Q, W]` packed queries.
      db_packed: `[N, W]` packed database.
      k: results per query, `1 <= k <= N`.
      chunk_size: database rows per step (per device with a mesh).
      query_chunk: queries per block.
      ties: `"stable"` (equal distances by lower database index) or `"random"` (by the
        seeded permutation `topk.tie_permutation(N, seed)`).
      seed: seed for `ties="random"`.
      mesh: optional mesh with a `"data"` axis: the database is split over it and the result
        is identical. A `db_packed` array already split over a mesh is searched where it lies.

    Returns:
      `(distances [Q, k] int32, ids [Q, k] int32)`, nearest first.

    Raises:
      ValueError: bad shapes or dtypes, empty database, `k > N`, unknown tie policy or mesh.

    Examples:
      >>> q = kernels.pack_bits(jnp.array([[1, 1, 0]]))
      >>> db = kernels.pack_bits(jnp.array([[0, 0, 1], [1, 0, 0], [1, 1, 1]]))
      >>> dist, ids = hamming_topk(q, db, 2)
      >>> dist.tolist(), ids.tolist()
      ([[1, 1]], [[1, 2]])
    """
    checks.check_pair(q_packed, db_packed)
    keys, ids = topk.topk(
        _neg_distances,
        jnp.asarray(q_packed),
        db_packed,
        k=k,
        chunk_size=chunk_size,
        query_chunk=query_chunk,
        ties=ties,
        seed=seed,
        mesh=mesh,
    )
    return _keys_to_distances(keys), ids


@jax.jit
def _keys_to_distances(keys):
    return (-keys).astype(jnp.int32)


def _radius_counts(q_packed, db_packed, radius, *, chunk_size):
    num_n = db_packed.shape[0]
    chunk = max(1, min(chunk_size, num_n))
    num_chunks = -(-num_n // chunk)
    db = topk.pad_rows(db_packed, num_chunks * chunk).reshape(num_chunks, chunk, -1)
    starts = jnp.arange(num_chunks, dtype=jnp.int32) * chunk

    def step(counts, xs):
        db_chunk, start = xs
        valid = (start + jnp.arange(chunk)) < num_n  # [chunk]
        inside = (kernels.popcount_distances(q_packed, db_chunk) <= radius) & valid[:, None]
        return counts + jnp.sum(inside, axis=0, dtype=jnp.int32), None

    counts, _ = lax.scan(step, jnp.zeros(q_packed.shape[0], jnp.int32), (db, starts))
    return counts


def radius_search(
    q_packed: UInt32[Array, "q w"],
    db_packed: UInt32[Array, "n w"],
    radius: int,
    *,
    max_results: int | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    query_chunk: int = DEFAULT_QUERY_CHUNK,
) -> tuple[Int[Array, " q"], Int[Array, "q r"]]:
    """All database codes within Hamming distance `radius` of each query (`<= radius`).

    Args:
      q_packed: `[Q, W]` packed queries.
      db_packed: `[N, W]` packed database.
      radius: non-negative int (2 is the usual "P/R at radius 2").
      max_results: width R of the returned id array (default N). When more than R items are
        within the radius, the R nearest are returned (ties by lower index); `counts` is still
        the full count.
      chunk_size: database rows per step.
      query_chunk: queries per block.

    Returns:
      `(counts [Q] int32, ids [Q, R] int32)`: `counts[q]` is the exact number of items within
      the radius; `ids[q]` lists `min(counts[q], R)` of them ordered by (distance, index),
      padded with -1.

    Raises:
      ValueError: bad shapes, empty database, negative radius or `max_results < 1`.
    """
    q_packed, db_packed = jnp.asarray(q_packed), jnp.asarray(db_packed)
    checks.check_pair(q_packed, db_packed)
    num_n = db_packed.shape[0]
    if num_n == 0:
        raise ValueError("The database is empty (N = 0); add items before searching.")
    if isinstance(radius, bool) or not isinstance(radius, (int, np.integer)) or radius < 0:
        raise ValueError(f"radius must be a non-negative int, got {radius!r}.")
    max_results = num_n if max_results is None else max_results
    if (
        isinstance(max_results, bool)
        or not isinstance(max_results, (int, np.integer))
        or (max_results < 1)
    ):
        raise ValueError(f"max_results must be a positive int, got {max_results!r}.")
    chunk_size, query_chunk = checks.check_chunks(chunk_size, query_chunk)
    return _radius_search_jit(
        checks.replicate_if_sharded(q_packed),
        checks.replicate_if_sharded(db_packed),
        jnp.asarray(radius, jnp.int32),
        max_results=int(max_results),
        chunk_size=chunk_size,
        query_chunk=query_chunk,
    )


@functools.partial(jax.jit, static_argnames=("max_results", "chunk_size", "query_chunk"))
def _radius_search_jit(q_packed, db_packed, radius, *, max_results, chunk_size, query_chunk):
    num_n = db_packed.shape[0]
    k = min(max_results, num_n)
    keys, ids = topk.chunked_topk(
        _neg_distances,
        q_packed,
        db_packed,
        k,
        chunk_size=chunk_size,
        query_chunk=query_chunk,
    )
    ids = jnp.where(-keys <= radius, ids, -1)
    ids = jnp.pad(ids, ((0, 0), (0, max_results - k)), constant_values=-1)
    return _radius_counts(q_packed, db_packed, radius, chunk_size=chunk_size), ids
