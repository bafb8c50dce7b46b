"""Binary codes: bit packing, Hamming distances, exact Hamming ranking and radius search.

Packing convention (`pack_bits`): bit `j` of a code is stored in word `j // 32`, at bit position
`j % 32` counted from the least significant bit (little-endian within each uint32 word). Unused
high bits of the last word are 0 in every code, so they never add to a distance. A value is a
1-bit when it is `> 0`, which maps {0, 1} bits, booleans and {-1, +1} signs alike.

Why not pack the signs directly: the DDH and DCBH reference codes (`compactbit`) pack {-1, +1}
values as if they were {0, 1}: each byte is written as `sum_i s_i 2^i mod 256`, which equals
`2B + 1 mod 256` for the correct byte `B` of a full byte. Bit 7 of every full byte is lost and
partial bytes are distorted by borrows, so most distances are wrong (METHODS.md, Sec. 3.5).
`legacy_compactbit_pack` reproduces that bug for parity with published numbers only.

Top-k ranking reuses the chunked engine of `adc.py` with keys `-distance`, so the tie policy is
the same: `ties="stable"` puts the lower database index first among equal distances,
`ties="random"` uses a seeded random permutation of the database (`adc.tie_permutation`).

References:
  Y. Weiss, A. Torralba, R. Fergus. Spectral Hashing. NIPS 2008 (the `compactbit` /
  `hammingDist` utilities that DDH and DCBH adapted).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from dpq_jax.parallel import replicated
from dpq_jax.search import adc
from dpq_jax.typing import Array, Int, Shaped, UInt8, UInt32

WORD_BITS = 32


def _check_2d(x, name: str) -> None:
    if getattr(x, "ndim", None) != 2:
        raise ValueError(
            f"{name} must be a 2-D array [N, ...], got shape {getattr(x, 'shape', None)}."
        )


def pack_bits(bits: Shaped[Array, "n b"]) -> UInt32[Array, "n w"]:
    """Packs binary codes into uint32 words, little-endian within each word.

    Args:
      bits: `[N, b]` codes: {0, 1} integers, booleans, or {-1, +1} signs (any real values are
        read as `value > 0`; so an exact 0 is a 0-bit, map it first if a method needs
        `sign(0) = +1`).

    Returns:
      `[N, ceil(b / 32)]` uint32; bit `j` is `(out[:, j // 32] >> (j % 32)) & 1`.

    Raises:
      ValueError: `bits` is not 2-D or has no columns.

    Examples:
      >>> pack_bits(jnp.array([[1, 0, 1], [-1, 1, 1]])).tolist()
      [[5], [6]]
    """
    bits = jnp.asarray(bits)
    _check_2d(bits, "bits")
    if bits.shape[1] == 0:
        raise ValueError("bits has 0 columns; a code needs at least one bit.")
    return _pack_bits(bits)


@jax.jit
def _pack_bits(bits):
    num_n, num_bits = bits.shape
    words = -(-num_bits // WORD_BITS)
    ones = (bits > 0).astype(jnp.uint32)
    ones = jnp.pad(ones, ((0, 0), (0, words * WORD_BITS - num_bits)))
    ones = ones.reshape(num_n, words, WORD_BITS)  # [N, W, 32]
    shifts = jnp.arange(WORD_BITS, dtype=jnp.uint32)
    # Distinct powers of two: the sum is an exact bitwise OR.
    return jnp.sum(ones << shifts, axis=-1, dtype=jnp.uint32)


def unpack_bits(packed: UInt32[Array, "n w"], num_bits: int) -> UInt8[Array, "n b"]:
    """Inverse of `pack_bits`: `[N, W]` uint32 -> `[N, num_bits]` uint8 in {0, 1}.

    Args:
      packed: `[N, W]` unsigned words from `pack_bits`.
      num_bits: code length b, `32 * (W - 1) < b <= 32 * W`.

    Returns:
      `[N, num_bits]` uint8 bits.

    Raises:
      ValueError: bad shape or dtype, or `num_bits` inconsistent with W.
    """
    packed = jnp.asarray(packed)
    _check_packed(packed, "packed")
    if packed.dtype != jnp.uint32:
        raise ValueError(f"packed must be uint32 words from pack_bits, got {packed.dtype}.")
    words = packed.shape[1]
    if not (WORD_BITS * (words - 1) < num_bits <= WORD_BITS * words):
        raise ValueError(
            f"num_bits = {num_bits} does not fit {words} uint32 words; expected "
            f"{WORD_BITS * (words - 1) + 1}..{WORD_BITS * words}."
        )
    return _unpack_bits(packed, num_bits=int(num_bits))


@functools.partial(jax.jit, static_argnames=("num_bits",))
def _unpack_bits(packed, *, num_bits):
    words = packed.shape[1]
    shifts = jnp.arange(WORD_BITS, dtype=jnp.uint32)
    bits = (packed.astype(jnp.uint32)[:, :, None] >> shifts) & 1  # [N, W, 32]
    return bits.reshape(packed.shape[0], words * WORD_BITS)[:, :num_bits].astype(jnp.uint8)


def _check_packed(packed, name: str) -> None:
    _check_2d(packed, name)
    if not jnp.issubdtype(packed.dtype, jnp.unsignedinteger):
        raise ValueError(
            f"{name} must be packed unsigned words (uint32 from pack_bits), got dtype "
            f"{packed.dtype}; pack {{0,1}} or +-1 codes with pack_bits first."
        )
    if packed.shape[1] == 0:
        raise ValueError(f"{name} has 0 words per code.")


def _check_pair(q_packed, db_packed) -> None:
    _check_packed(q_packed, "q_packed")
    _check_packed(db_packed, "db_packed")
    if q_packed.dtype != db_packed.dtype or q_packed.shape[1] != db_packed.shape[1]:
        raise ValueError(
            f"Query codes {q_packed.dtype}{list(q_packed.shape)} and database codes "
            f"{db_packed.dtype}{list(db_packed.shape)} must have the same dtype and number of "
            "words; pack both with the same function and code length."
        )


@jax.jit
def _distances_jit(q_packed, db_packed):
    return _distances(q_packed, db_packed)


def _distances(q_packed, db_packed) -> Int[Array, "q n"]:
    """Unchecked popcount distances; `[Q, W] x [N, W] -> [Q, N]` int32."""
    diff = q_packed[:, None, :] ^ db_packed[None, :, :]  # [Q, N, W]
    return jnp.sum(jnp.bitwise_count(diff).astype(jnp.int32), axis=-1)


def hamming_distances(
    q_packed: UInt32[Array, "q w"], db_packed: UInt32[Array, "n w"]
) -> Int[Array, "q n"]:
    """All-pairs Hamming distances `popcount(q XOR db)` summed over words.

    Works for any unsigned word type (uint32 from `pack_bits`, uint8 from
    `legacy_compactbit_pack`), as long as both sides match.

    Args:
      q_packed: `[Q, W]` packed query codes.
      db_packed: `[N, W]` packed database codes.

    Returns:
      `[Q, N]` int32 distances.

    Raises:
      ValueError: not 2-D, not unsigned, or mismatched word counts or dtypes.

    Examples:
      >>> hamming_distances(pack_bits(jnp.array([[1, 1, 0]])),
      ...                   pack_bits(jnp.array([[1, 0, 0], [0, 0, 1]]))).tolist()
      [[1, 3]]
    """
    q_packed, db_packed = jnp.asarray(q_packed), jnp.asarray(db_packed)
    _check_pair(q_packed, db_packed)
    return _distances_jit(q_packed, db_packed)


def hamming_from_signs(
    q_signs: Shaped[Array, "q b"], db_signs: Shaped[Array, "n b"]
) -> Int[Array, "q n"]:
    """Hamming distances of {-1, +1} codes by a matmul: `(b - q_signs @ db_signs.T) / 2`.

    For +-1 vectors, `<q, x> = (b - H) - H`, hence `H = (b - <q, x>) / 2`. Computed in float32
    with `Precision.HIGHEST` (exact for b < 2^24) and rounded to int32.

    Args:
      q_signs: `[Q, b]` query signs in {-1, +1}.
      db_signs: `[N, b]` database signs in {-1, +1}.

    Returns:
      `[Q, N]` int32 distances.

    Raises:
      ValueError: shapes do not match, or (when concrete) entries other than -1 and +1.

    References:
      The inner-product form of the Hamming distance used by pairwise hashing losses, e.g.
      Liu et al., "Deep Supervised Hashing for Fast Image Retrieval", CVPR 2016.
    """
    q_signs, db_signs = jnp.asarray(q_signs), jnp.asarray(db_signs)
    _check_2d(q_signs, "q_signs")
    _check_2d(db_signs, "db_signs")
    if q_signs.shape[1] != db_signs.shape[1]:
        raise ValueError(
            f"q_signs has b = {q_signs.shape[1]} bits but db_signs has {db_signs.shape[1]}."
        )
    for name, x in (("q_signs", q_signs), ("db_signs", db_signs)):
        bounds = adc.value_range(_abs(x)) if x.size else None
        if bounds is not None and bounds != (1, 1):
            raise ValueError(
                f"{name} must contain only -1 and +1; map {{0,1}} bits with 2*bits-1 or use "
                "hamming_distances on packed bits."
            )
    return _from_signs(q_signs, db_signs)


_abs = jax.jit(jnp.abs)


@jax.jit
def _from_signs(q_signs, db_signs):
    dots = jnp.einsum(
        "qb,nb->qn",
        q_signs.astype(jnp.float32),
        db_signs.astype(jnp.float32),
        precision=lax.Precision.HIGHEST,
        preferred_element_type=jnp.float32,
    )
    return jnp.rint((q_signs.shape[1] - dots) / 2).astype(jnp.int32)


def legacy_compactbit_pack(signs: Shaped[Array, "n b"]) -> UInt8[Array, "n w8"]:
    """Emulates the buggy `compactbit` of the DDH / DCBH reference codes (parity only).

    The references call `compactbit` on sign codes in {-1, +1} (DDH: `sgn`, so also 0) and
    write byte `j` as `sum_i s_{8j+i} 2^i` into a uint8, which wraps modulo 256. For a full
    byte with correct 0/1 value `B` that is `2B + 1 mod 256`: bit 7 is lost and the pattern
    shifts, so Hamming distances computed on these bytes (`popcount` of XOR, as the references
    do) are wrong for most pairs. Never use this for new results; use `pack_bits`.

    Args:
      signs: `[N, b]` codes; `sign()` is applied first, as the references did, so {-1, 0, +1}
        sign codes and raw real-valued outputs give what the references stored.

    Returns:
      `[N, ceil(b / 8)]` uint8 bytes exactly as the references store them (on the usual
      platforms, where a negative value cast to uint8 wraps modulo 256); compare them with
      `hamming_distances`.

    Raises:
      ValueError: not 2-D.
    """
    signs = jnp.asarray(signs)
    _check_2d(signs, "signs")
    return _legacy_compactbit_pack(signs)


@jax.jit
def _legacy_compactbit_pack(signs):
    num_n, num_bits = signs.shape
    num_bytes = -(-num_bits // 8)
    s = jnp.pad(jnp.sign(signs).astype(jnp.int32), ((0, 0), (0, num_bytes * 8 - num_bits)))
    s = s.reshape(num_n, num_bytes, 8)  # [N, bytes, 8]
    weights = jnp.left_shift(1, jnp.arange(8, dtype=jnp.int32))
    value = jnp.sum(s * weights, axis=-1)  # in [-255, 255]
    return jnp.mod(value, 256).astype(jnp.uint8)


# --------------------------------------------------------------------------------------------
# Top-k, sharded top-k and radius search.
# --------------------------------------------------------------------------------------------


def _neg_distances(q_block, db_chunk):
    return -_distances(q_block, db_chunk)


@functools.partial(jax.jit, static_argnames=("k", "chunk_size", "query_chunk"))
def _hamming_topk_jit(q_packed, db_packed, perm, *, k, chunk_size, query_chunk):
    if perm is not None:
        db_packed = db_packed[perm]
    keys, ids = adc.chunked_topk(
        _neg_distances,
        q_packed,
        db_packed,
        k,
        key_dtype=jnp.int32,
        chunk_size=chunk_size,
        query_chunk=query_chunk,
    )
    if perm is not None:
        ids = perm[ids]
    return -keys, ids


def hamming_topk(
    q_packed: UInt32[Array, "q w"],
    db_packed: UInt32[Array, "n w"],
    k: int,
    *,
    chunk_size: int = adc.DEFAULT_CHUNK_SIZE,
    query_chunk: int = adc.DEFAULT_QUERY_CHUNK,
    ties: str = "stable",
    seed: int = 0,
) -> tuple[Int[Array, "q k"], Int[Array, "q k"]]:
    """Exact Hamming ranking: the `k` nearest database codes of each query.

    Chunked like `adc.adc_topk` (one compiled kernel for all chunks, padding masked).

    Args:
      q_packed: `[Q, W]` packed queries.
      db_packed: `[N, W]` packed database.
      k: results per query, `1 <= k <= N`.
      chunk_size: database rows per step.
      query_chunk: queries per block.
      ties: `"stable"` (equal distances by lower database index) or `"random"` (by a seeded
        random permutation of the database, `adc.tie_permutation(N, seed)`).
      seed: seed for `ties="random"`.

    Returns:
      `(distances [Q, k] int32, ids [Q, k] int32)`, nearest first.

    Raises:
      ValueError: bad shapes or dtypes, empty database, `k > N`, unknown tie policy.
    """
    q_packed, db_packed = jnp.asarray(q_packed), jnp.asarray(db_packed)
    _check_pair(q_packed, db_packed)
    k = adc.check_k(k, db_packed.shape[0])
    chunk_size, query_chunk = adc.check_chunks(chunk_size, query_chunk)
    adc.check_ties(ties, seed)
    mesh = adc.database_mesh(db_packed)
    if mesh is not None:  # already split over devices: search it where it lies
        return hamming_topk_sharded(
            q_packed,
            db_packed,
            k,
            mesh,
            chunk_size=chunk_size,
            query_chunk=query_chunk,
            ties=ties,
            seed=seed,
        )
    perm = adc.tie_permutation(db_packed.shape[0], int(seed)) if ties == "random" else None
    return _hamming_topk_jit(
        adc.replicate_if_sharded(q_packed),
        db_packed,
        perm,
        k=k,
        chunk_size=chunk_size,
        query_chunk=query_chunk,
    )


@functools.partial(
    jax.jit,
    static_argnames=("k", "mesh", "num_items", "local_rows", "chunk_size", "query_chunk"),
)
def _hamming_topk_sharded_jit(
    q_packed, db_packed, *, k, mesh, num_items, local_rows, chunk_size, query_chunk
):
    keys, ids = adc.sharded_topk(
        _neg_distances,
        q_packed,
        db_packed,
        k,
        mesh,
        num_items=num_items,
        local_rows=local_rows,
        key_dtype=jnp.int32,
        chunk_size=chunk_size,
        query_chunk=query_chunk,
    )
    return -keys, ids


def hamming_topk_sharded(
    q_packed: UInt32[Array, "q w"],
    db_packed: UInt32[Array, "n w"],
    k: int,
    mesh: jax.sharding.Mesh,
    *,
    chunk_size: int = adc.DEFAULT_CHUNK_SIZE,
    query_chunk: int = adc.DEFAULT_QUERY_CHUNK,
    ties: str = "stable",
    seed: int = 0,
) -> tuple[Int[Array, "q k"], Int[Array, "q k"]]:
    """`hamming_topk` with the database split over the `"data"` axis of `mesh`.

    Same algorithm as `adc.adc_topk_sharded`: padded, placed `P("data")`, local top-k with
    global ids, candidates gathered and merged with the same tie rule. Identical results to
    `hamming_topk` with the same arguments.

    Args:
      q_packed: `[Q, W]` packed queries (replicated).
      db_packed: `[N, W]` packed database.
      k: results per query, `1 <= k <= N`.
      mesh: mesh with a `"data"` axis.
      chunk_size: database rows per step on each device.
      query_chunk: queries per block.
      ties: `"stable"` or `"random"` (see `hamming_topk`).
      seed: seed for `ties="random"`.

    Returns:
      `(distances [Q, k] int32, ids [Q, k] int32)`, replicated.

    Raises:
      ValueError: as `hamming_topk`, or a mesh without a `"data"` axis.
    """
    _check_pair(q_packed, db_packed)
    k = adc.check_k(k, db_packed.shape[0])
    chunk_size, query_chunk = adc.check_chunks(chunk_size, query_chunk)
    adc.check_ties(ties, seed)
    adc.check_mesh(mesh)
    num_items = db_packed.shape[0]
    perm = adc.tie_permutation(num_items, int(seed)) if ties == "random" else None
    db, local_rows = adc.place_database(
        db_packed, mesh, perm=None if perm is None else np.asarray(perm)
    )
    q_packed = jax.device_put(jnp.asarray(q_packed), replicated(mesh))
    dist, ids = _hamming_topk_sharded_jit(
        q_packed,
        db,
        k=k,
        mesh=mesh,
        num_items=num_items,
        local_rows=local_rows,
        chunk_size=chunk_size,
        query_chunk=query_chunk,
    )
    if perm is not None:
        ids = jax.device_put(perm, replicated(mesh))[ids]
    return dist, ids


def _radius_counts(q_packed, db_packed, radius, *, chunk_size):
    num_n = db_packed.shape[0]
    chunk = max(1, min(chunk_size, num_n))
    num_chunks = -(-num_n // chunk)
    db = adc.pad_rows(db_packed, num_chunks * chunk).reshape(num_chunks, chunk, -1)
    starts = jnp.arange(num_chunks, dtype=jnp.int32) * chunk

    def step(counts, xs):
        db_chunk, start = xs
        valid = (start + jnp.arange(chunk)) < num_n  # [chunk]
        inside = (_distances(q_packed, db_chunk) <= radius) & valid[None, :]
        return counts + jnp.sum(inside, axis=1, dtype=jnp.int32), None

    counts, _ = lax.scan(step, jnp.zeros(q_packed.shape[0], jnp.int32), (db, starts))
    return counts


def radius_search(
    q_packed: UInt32[Array, "q w"],
    db_packed: UInt32[Array, "n w"],
    radius: int,
    *,
    max_results: int | None = None,
    chunk_size: int = adc.DEFAULT_CHUNK_SIZE,
    query_chunk: int = adc.DEFAULT_QUERY_CHUNK,
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
    _check_pair(q_packed, db_packed)
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
    chunk_size, query_chunk = adc.check_chunks(chunk_size, query_chunk)
    return _radius_search_jit(
        adc.replicate_if_sharded(q_packed),
        adc.replicate_if_sharded(db_packed),
        jnp.asarray(radius, jnp.int32),
        max_results=int(max_results),
        chunk_size=chunk_size,
        query_chunk=query_chunk,
    )


@functools.partial(jax.jit, static_argnames=("max_results", "chunk_size", "query_chunk"))
def _radius_search_jit(q_packed, db_packed, radius, *, max_results, chunk_size, query_chunk):
    num_n = db_packed.shape[0]
    k = min(max_results, num_n)
    keys, ids = adc.chunked_topk(
        _neg_distances,
        q_packed,
        db_packed,
        k,
        key_dtype=jnp.int32,
        chunk_size=chunk_size,
        query_chunk=query_chunk,
    )
    ids = jnp.where(-keys <= radius, ids, -1)
    ids = jnp.pad(ids, ((0, 0), (0, max_results - k)), constant_values=-1)
    return _radius_counts(q_packed, db_packed, radius, chunk_size=chunk_size), ids
