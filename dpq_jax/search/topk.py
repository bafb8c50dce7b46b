"""The exact top-k engine: chunked over the database, optionally sharded over a mesh.

`topk(key_fn, queries, database, k=...)` returns, for every query, the `k` database rows with
the largest keys, where `key_fn(query_block, db_chunk)` scores one block of queries against
one chunk of the database. ADC search (`adc.py`), Hamming ranking and radius search
(`hamming.py`) are thin entry points over it; `chunked_topk` is the traceable core.

Algorithm (two passes per block of `query_chunk` queries):

1. Scan: the database, padded to a multiple of the chunk size, is scored one fixed-size chunk
   per `lax.scan` step (one compiled kernel for all chunks). Only the maximum key of each run
   of `B` consecutive rows (a selection block) is kept.
2. Select: the `k` blocks with the largest maxima hold the top-k items (fewer than `k` items
   beat the k-th key, so at most `k - 1` blocks have a larger maximum). Their `k * B` rows are
   re-scored with the same `key_fn` (bitwise the same keys) and an exact `lax.top_k` of those
   picks the result.

Sorting `N / B + k * B` keys per query instead of all `N` removes most of the selection cost.
With `mesh`, the database is split over the `"data"` axis with `jax.shard_map`: each device
runs the chunked search on its rows with global ids, and the `n_dev * k` candidates are
gathered (`jax.sharding.reshard` to `P()`; a top-k along a sharded axis is a sharding type
error in explicit mode) and merged by one more top-k.

Keys are float32 inside the engine (`key_fn` may return integers below 2**24 in magnitude,
e.g. negated Hamming distances, which float32 holds exactly): XLA:CPU runs `lax.top_k` on
float32 through a dedicated kernel but on int32 through a generic sort, 20x slower
(`BENCHMARKS.md`, "Search kernels").

Tie policy. `ties="stable"`: equal keys are ordered by the LOWER database index. This holds
exactly because `lax.top_k` puts the lower position first among equal values (documented by
JAX): the block maxima are ranked in block order, the selected blocks are re-scored in
increasing index order, and sharded candidates are concatenated in device order, i.e. in
index order. Floating zeros are canonicalised (`-0.0 -> +0.0`) first, because `lax.top_k`
orders `-0.0` below `+0.0`. `ties="random"`: the database is searched in the seeded order of
`tie_permutation(N, seed)`, the same for every query, and ids are mapped back; the retrieval
metrics (`dpq_jax.metrics`, `ties="random"`) use the same permutation, so search and metrics
rank tied items identically.
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
from dpq_jax.search import checks
from dpq_jax.typing import Array, Float, Int

DEFAULT_CHUNK_SIZE = 16384
DEFAULT_QUERY_CHUNK = 32

# (query block [q, ...], database chunk [c, ...]) -> keys [c, q], larger is better.
KeyFn = Callable[[Array, Array], Array]


def tie_permutation(num_items: int, seed: int) -> Int[np.ndarray, " n"]:
    """The seeded random database order of `ties="random"`, in search and in the metrics.

    `perm[j]` is the database index placed at position `j`; among tied items the one at the
    lower position ranks first, i.e. item `i` has tie priority `argsort(perm)[i]`. Computed on
    the host with `np.random.default_rng(seed).permutation(num_items)`.

    Args:
      num_items: database size N.
      seed: integer seed in `[0, 2**32)`.

    Returns:
      `[N]` int32 NumPy permutation of `0..N-1`.

    Raises:
      ValueError: a bad seed.

    Examples:
      >>> sorted(tie_permutation(4, 0).tolist())
      [0, 1, 2, 3]
    """
    checks.check_ties("random", seed)
    return np.random.default_rng(int(seed)).permutation(int(num_items)).astype(np.int32)


def pad_rows(x: Array, rows: int) -> Array:
    """`x` padded with zero rows to `rows` rows (traceable)."""
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


def _block_max(keys: Float[Array, "c q"], block: int) -> Float[Array, "cb q"]:
    """Maximum of each run of `block` rows: `[C, Q] -> [C / B, Q]`.

    Halving by elementwise maxima keeps the scoring kernel and the reduction in one
    vectorized loop on XLA:CPU; `jnp.max` over the middle axis was several times slower.
    """
    x = keys.reshape(keys.shape[0] // block, block, keys.shape[1])
    while x.shape[1] > 1 and x.shape[1] % 2 == 0:
        half = x.shape[1] // 2
        x = jnp.maximum(x[:, :half], x[:, half:])
    return jnp.max(x, axis=1)


def chunked_topk(
    key_fn: KeyFn,
    queries: Array,
    database: Array,
    k: int,
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    query_chunk: int = DEFAULT_QUERY_CHUNK,
    block_size: int | None = None,
    num_valid=None,
    id_offset=0,
) -> tuple[Float[Array, "q k"], Int[Array, "q k"]]:
    """Exact top-k of `key_fn` keys over one device's database, chunk by chunk (traceable).

    See the module docstring for the algorithm and the tie rule. Rows at or beyond
    `num_valid` get key -inf. No argument checks: `topk` is the checked entry point.

    Args:
      key_fn: `(query_block [q, ...], db_chunk [c, ...]) -> keys [c, q]` (database-major),
        larger is better; it must give the same key for a (query, row) pair whatever the other
        rows are. Integer keys must lie below 2**24 in magnitude (exact in float32).
      queries: `[Q, ...]` query-side array (LUTs, packed bits).
      database: `[N, ...]` database-side array (codes, packed bits).
      k: results per query; the output has `min(k, N)` columns.
      chunk_size: database rows scored per step (clipped to N, rounded up to a multiple of B).
      query_chunk: queries per block (clipped to Q).
      block_size: selection block B; default `selection_block(N, k, chunk)`. Memory per query
        block: `[query_chunk, N / B]` maxima and `[query_chunk, k * B, ...]` candidates.
      num_valid: rows `>= num_valid` are padding (default: all N rows are valid); may be traced.
      id_offset: added to row positions to form the returned ids; may be traced.

    Returns:
      `(keys [Q, min(k, N)] float32, ids [Q, min(k, N)] int32)`, best first.

    Raises:
      ValueError: `key_fn` returns a block that is not `[c, q]`.
    """
    num_q, num_n = queries.shape[0], database.shape[0]
    padded = num_valid is not None
    # Rows past the end of `database` (chunk padding) are never valid, whatever num_valid says.
    num_valid = num_n if num_valid is None else jnp.minimum(num_valid, num_n)
    k_out = min(k, num_n)
    chunk = max(1, min(chunk_size, num_n))
    block = selection_block(num_n, k_out, chunk) if block_size is None else block_size
    block = max(1, min(int(block), chunk))
    chunk = -(-chunk // block) * block
    num_chunks = -(-num_n // chunk)
    num_blocks = num_chunks * (chunk // block)
    padded = padded or num_chunks * chunk > num_n
    # A block that straddles the end of the valid rows may have a maximum from a padding row;
    # it can push one true top-k block down by one place, so keep one more block then.
    k_blocks = min(k_out + int(padded), num_blocks)
    q_block = max(1, min(query_chunk, num_q))
    num_qblocks = -(-num_q // q_block)
    lowest = jnp.array(-jnp.inf, jnp.float32)

    def raw_keys(qb, rows_db):  # -> [c, q] float32
        keys = key_fn(qb, rows_db)
        if keys.shape != (rows_db.shape[0], qb.shape[0]):
            raise ValueError(
                f"The key function must return database-major keys [c, q] = "
                f"[{rows_db.shape[0]}, {qb.shape[0]}], got shape {keys.shape}."
            )
        return keys.astype(jnp.float32)

    def canonical(keys, valid):  # -0.0 -> +0.0 (top_k orders it lower); invalid -> -inf
        return jnp.where(valid, jnp.where(keys == 0, jnp.zeros_like(keys), keys), lowest)

    # [N, ...] -> [num_chunks, chunk, ...]; [Q, ...] -> [num_qblocks, q_block, ...]
    flat_db = pad_rows(database, num_chunks * chunk)
    db = flat_db.reshape(num_chunks, chunk, *database.shape[1:])
    qs = pad_rows(queries, num_qblocks * q_block)
    qs = qs.reshape(num_qblocks, q_block, *queries.shape[1:])
    offsets = jnp.arange(block, dtype=jnp.int32)
    # Blocks made of padding only; a partly valid block is handled by the extra block above.
    empty = jnp.arange(num_blocks, dtype=jnp.int32) * block >= num_valid  # [num_blocks]

    def search_block(qb):
        def step(_, db_chunk):
            # Only the kernel and the maxima here: masking each key row-wise (a [c] operand)
            # made XLA:CPU's scan loop 3-4x slower; padding is masked per block below.
            return None, _block_max(raw_keys(qb, db_chunk), block)  # [chunk / B, q]

        _, maxima = lax.scan(step, None, db)  # [num_chunks, chunk / B, q]
        maxima = maxima.reshape(num_blocks, q_block).T  # [q, num_blocks]
        maxima = canonical(maxima, ~empty[None, :])
        _, best_blocks = lax.top_k(maxima, k_blocks)  # [q, k_blocks], lower block on ties
        best_blocks = jnp.sort(best_blocks, axis=1)  # candidates in increasing index order
        rows = (best_blocks[:, :, None] * block + offsets).reshape(q_block, k_blocks * block)
        # Re-score each query's candidate rows (gathered inside the vmap: XLA:CPU then fuses
        # the gather into the kernel instead of writing per-codebook index arrays).
        keys = jax.vmap(lambda qrow, r: raw_keys(qrow[None], flat_db[r])[:, 0])(qb, rows)
        keys = canonical(keys, rows < num_valid)  # [q, k_blocks * B]
        best_keys, pos = lax.top_k(keys, k_out)  # stable: lower row first among equal keys
        return best_keys, jnp.take_along_axis(rows, pos, axis=1) + id_offset

    keys, ids = lax.map(search_block, qs)  # [num_qblocks, q_block, k_out]
    keys = keys.reshape(num_qblocks * q_block, k_out)[:num_q]
    ids = ids.reshape(num_qblocks * q_block, k_out)[:num_q].astype(jnp.int32)
    return keys, ids


def place_database(x, mesh: jax.sharding.Mesh, *, perm=None) -> tuple[Array, int]:
    """Pads `x` to a multiple of the device count (and optionally permutes rows), split `P("data")`.

    Host (NumPy) inputs are prepared on the host. A device array that needs padding or a
    permutation is first replicated, which costs one full copy per device; pass host arrays or
    a row count divisible by the device count to avoid it.

    Args:
      x: `[N, ...]` database rows.
      mesh: a mesh with a `"data"` axis.
      perm: optional `[N]` NumPy row order (`x[perm]`).

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
            x = x[perm]
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


@functools.partial(
    jax.jit, static_argnames=("key_fn", "k", "chunk_size", "query_chunk", "block_size")
)
def _topk_jit(queries, database, perm, *, key_fn, k, chunk_size, query_chunk, block_size):
    if perm is not None:
        database = database[perm]  # ties="random": search the permuted database
    keys, ids = chunked_topk(
        key_fn,
        queries,
        database,
        k,
        chunk_size=chunk_size,
        query_chunk=query_chunk,
        block_size=block_size,
    )
    return keys, ids if perm is None else perm[ids]


@functools.partial(
    jax.jit,
    static_argnames=(
        "key_fn",
        "k",
        "mesh",
        "num_items",
        "local_rows",
        "chunk_size",
        "query_chunk",
        "block_size",
    ),
)
def _sharded_topk_jit(
    queries,
    database,
    perm,
    *,
    key_fn,
    k,
    mesh,
    num_items,
    local_rows,
    chunk_size,
    query_chunk,
    block_size,
):
    def local_search(q, db):
        offset = lax.axis_index(DATA_AXIS) * local_rows
        return chunked_topk(
            key_fn,
            q,
            db,
            k,
            chunk_size=chunk_size,
            query_chunk=query_chunk,
            block_size=block_size,
            num_valid=num_items - offset,
            id_offset=offset,
        )

    keys, ids = jax.shard_map(
        local_search,
        mesh=mesh,
        in_specs=(P(), P(DATA_AXIS)),
        out_specs=(P(None, DATA_AXIS), P(None, DATA_AXIS)),
    )(queries, database)
    # Explicit mode forbids top_k along a sharded axis: gather the few candidates first. They
    # are in device order, i.e. increasing id among equal keys, so the merge keeps the tie rule.
    everywhere = NamedSharding(mesh, P())
    keys = jax.sharding.reshard(keys, everywhere)
    ids = jax.sharding.reshard(ids, everywhere)
    keys, pos = lax.top_k(keys, k)
    ids = jnp.take_along_axis(ids, pos, axis=1)
    return keys, ids if perm is None else perm[ids]


def topk(
    key_fn: KeyFn,
    queries: Array,
    database: Array,
    *,
    k: int,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    query_chunk: int = DEFAULT_QUERY_CHUNK,
    ties: str = "stable",
    seed: int = 0,
    mesh: jax.sharding.Mesh | None = None,
    block_size: int | None = None,
) -> tuple[Float[Array, "q k"], Int[Array, "q k"]]:
    """Exact top-k of `key_fn` keys for every query, on one device or over a mesh.

    `mesh=None` searches on one device, unless `database` is a device array already split
    across devices, which is then searched where it lies. With a mesh (or such an array), the
    database is padded to a multiple of the device count (padding is masked) and placed
    `P("data")`, the queries are replicated, and each device keeps an exact local top-k with
    global ids before the merge; the result is identical to the single-device search.

    Args:
      key_fn: `(query_block [q, ...], db_chunk [c, ...]) -> keys [c, q]`, larger is better
        (see `chunked_topk`). Pass the same function object each call: it is a static argument
        of the compiled search, so a fresh lambda per call recompiles.
      queries: `[Q, ...]` query-side array.
      database: `[N, ...]` database-side array (host arrays avoid an extra device copy when
        the sharded search needs padding).
      k: results per query, `1 <= k <= N`.
      chunk_size: database rows per step (per device with a mesh).
      query_chunk: queries per block.
      ties: `"stable"` (equal keys by lower database index) or `"random"` (by the seeded
        permutation `tie_permutation(N, seed)`).
      seed: seed for `ties="random"`.
      mesh: optional mesh with a `"data"` axis (`dpq_jax.parallel.make_mesh`).
      block_size: selection block B (default `selection_block`).

    Returns:
      `(keys [Q, k] float32, ids [Q, k] int32)`, best first; replicated over the mesh.

    Raises:
      ValueError: empty database, `k` out of range, bad chunk sizes, tie policy, seed or mesh.

    Examples:
      >>> key_fn = lambda q, db: db[:, :1] * q[:, 0]  # [c, q]
      >>> keys, ids = topk(key_fn, jnp.ones((1, 1)), jnp.array([[1.0], [3.0], [2.0]]), k=2)
      >>> keys.tolist(), ids.tolist()
      ([[3.0, 2.0]], [[1, 2]])
    """
    k = checks.check_k(k, database.shape[0])
    chunk_size, query_chunk = checks.check_chunks(chunk_size, query_chunk)
    checks.check_ties(ties, seed)
    if mesh is None:
        mesh = checks.database_mesh(database)
    else:
        checks.check_mesh(mesh)
    num_items = database.shape[0]
    perm = tie_permutation(num_items, seed) if ties == "random" else None
    options = dict(
        key_fn=key_fn, k=k, chunk_size=chunk_size, query_chunk=query_chunk, block_size=block_size
    )
    if mesh is None:
        return _topk_jit(
            checks.replicate_if_sharded(queries),
            database,
            None if perm is None else jnp.asarray(perm),
            **options,
        )
    db, local_rows = place_database(database, mesh, perm=perm)
    return _sharded_topk_jit(
        jax.device_put(queries, replicated(mesh)),
        db,
        None if perm is None else jax.device_put(perm, replicated(mesh)),
        mesh=mesh,
        num_items=num_items,
        local_rows=local_rows,
        **options,
    )
