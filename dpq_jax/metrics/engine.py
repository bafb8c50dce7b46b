"""The metrics engine: chunked (and optionally sharded) on-device ranking of every query.

Nothing of size Q x N ever reaches the host and the database is never sorted. Queries are
processed in chunks inside one jitted `lax.map`; for each chunk the database is streamed in
chunks of `db_chunk` items (`lax.scan`), scored by the source (`sources.block_keys`) and
reduced to per-query rank statistics (`rank_stats.py`), which `finish.py` turns into metric
values on the host.

Algorithms (all exact; nothing of size Q x N ever reaches the host; no database sort):

* **Rank path** (`ties="stable"` and `"random"` for every source, `"expected"` for
  non-Hamming sources). AP and every cut-off metric only need, for each relevant item, how
  many items rank before it. Queries are processed in chunks inside one jitted `lax.map`; for
  each chunk the database is streamed in chunks of `db_chunk` items (`lax.scan`) to build rows
  of int32 sort keys (`order_keys` of the negated float32 scores, equal keys iff equal scores,
  or the Hamming distance). A query's R relevant items are a slice of the label-sorted
  database (class ids) or are compacted on device (multi-hot labels), then sorted by (key,
  index) — R is usually far below N. Float keys (`relevant_rank_stats`): every database item
  finds, by a short binary search inside a cell of a monotone bucketing of the keys, how many
  relevant items rank before it; a histogram of those counts, cumulated, is the rank of each
  relevant item. For `"expected"` the count is taken on keys only, plus a "tied with a
  relevant item" bit, which gives each relevant tie group's A (items strictly before) and t
  (its size). Hamming distances (`distance_rank_stats`): the stable rank is the number of
  items at smaller distances plus those at the same distance with a smaller index, read from
  per-block distance histograms and, inside the item's own block, a direct count. Random ties
  rank by the seeded permutation applied to the database beforehand. Cost O(N log(cell
  occupancy) + R log R) or O(N + R * block) per query, O(query_chunk x N) device memory. No
  (key, index) sort of all N scores: on XLA:CPU it made PQ mAP 4x slower than NumPy.
* **Histogram path** (Hamming source with `ties="expected"`, and every Hamming-radius metric).
  Distances take only b+1 values, so per-query counts of all items and of relevant items at
  each distance (scatter-adds streamed over database chunks, O(query_chunk x (b+1)) memory)
  determine every tie-aware metric in closed form. Cost O(Q N) simple integer work.

On the rank path, AP@all sums are accumulated on device in float32. The last step for
cut-offs (and for everything on the histogram path), from per-query counts and partial sums
to metric values, runs on the host in float64 NumPy over arrays of size Q x (number of
cut-offs): it needs the hypergeometric law of the hits inside a cut tie group and
harmonic-number differences, which float32 cannot hold for N up to 10M (JAX x64 is off).

With a mesh (`dpq_jax.parallel.make_mesh`), queries are padded to a multiple of the device
count and split over the "data" axis with `jax.shard_map`; each device ranks its query rows
against the whole (replicated) database, and padded rows are dropped on the host, so results are
identical with and without a mesh.

Class ids of any integer dtype and range (int8 to uint64, negative, beyond int32) are mapped
to a dense int32 range on the host before they reach the device (`prepare_labels`), so two
distinct ids never collide.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from dpq_jax.metrics import finish, rank_stats, sources
from dpq_jax.parallel import DATA_AXIS, to_host
from dpq_jax.search import kernels
from dpq_jax.search.topk import tie_permutation
from dpq_jax.typing import Array, Int, Shaped

# Packed histogram counters hold the chunk's total count in the low 16 bits and its relevant
# count in the high bits of one int32, so a Hamming database chunk must stay below 2**15 items.
MAX_HAMMING_DB_CHUNK = 32767
_DEFAULT_DB_CHUNK = 8192
# Elements of one query-chunk working set: rank path (key row, search state and gathers, about
# 32 bytes per item, plus per-relevant-slot arrays) and histogram path (query, item) pairs per
# scan step.
_ROW_BUDGET = {"cpu": 1 << 18, "default": 1 << 25}
_PAIR_BUDGET = {"cpu": 1 << 22, "default": 1 << 23}
# Search cells per relevant slot in the rank path: more cells mean shorter binary searches.
_CELLS_PER_RELEVANT = 4


def relevance(query_labels: Shaped[Array, "q ..."], db_labels: Shaped[Array, "n ..."]):
    """Relevance block: same id (labels [q], [n]) or shares >= 1 label (multi-hot [q, C]).

    Args:
      query_labels: [q] int ids, or [q, C] multi-hot (0/1, any dtype; bfloat16 on device).
      db_labels: [n] int ids, or [n, C] multi-hot.

    Returns:
      [q, n] bool relevance.
    """
    if query_labels.ndim == 1:
        return query_labels[:, None] == db_labels[None, :]
    # 0/1 products are exact in bfloat16 and the float32 accumulation counts shared labels.
    shared = jnp.einsum(
        "qc,nc->qn", query_labels, db_labels, preferred_element_type=jnp.float32
    )  # [q, n]
    return shared > 0


@dataclasses.dataclass(frozen=True)
class _Plan:
    kind: str
    negate: bool
    num_bits: int
    path: str  # "rank" | "hist"
    expected: bool
    multi_label: bool
    cuts: tuple[int, ...]
    num_items: int
    query_chunk: int
    db_chunk: int
    num_db_chunks: int
    rel_cap: int  # r: relevant slots per query (rank path)
    num_cells: int  # search cells (rank path, float keys)
    block: int  # items per distance-histogram block (rank path, Hamming)
    mesh: Any


def _scan(body, init, xs):
    """`lax.scan`, or a plain call for a single step (small inputs compile faster)."""
    if jax.tree.leaves(xs)[0].shape[0] == 1:
        carry, ys = body(init, jax.tree.map(lambda x: x[0], xs))
        return carry, jax.tree.map(lambda y: y[None], ys)
    return lax.scan(body, init, xs)


def _rank_chunk(plan: _Plan, qd, ql, xd, xl, xv, q_start, q_count, db_order):
    qc = ql.shape[0]
    n_pad = plan.num_db_chunks * plan.db_chunk
    r = plan.rel_cap
    chunk_ids = jnp.arange(plan.num_db_chunks, dtype=jnp.int32)

    def body(bad, xs):
        d, lab, v, j = xs
        key, nonfinite = sources.block_keys(
            plan.kind, plan.negate, qd, j if plan.kind == "scores" else d, plan.db_chunk
        )
        key = jnp.where(v[None, :], key, jnp.iinfo(jnp.int32).max)  # padding ranks last
        if nonfinite is not None:
            bad = bad + jnp.sum(nonfinite & v[None, :], axis=1, dtype=jnp.int32)
        rel = (relevance(ql, lab) & v[None, :]).astype(jnp.int8) if plan.multi_label else None
        return bad, (key, rel)

    xs = (xd, xl, xv, chunk_ids)
    bad, (keys, rels) = _scan(body, jnp.zeros((qc,), jnp.int32), xs)
    keys = jnp.moveaxis(keys, 0, 1).reshape(qc, n_pad)
    if plan.multi_label:
        rels = jnp.moveaxis(rels, 0, 1).reshape(qc, n_pad) > 0
        num_rel = jnp.sum(rels, axis=1, dtype=jnp.int32)
        # Compact each row's relevant indices (ascending) into r slots.
        slot = jnp.cumsum(rels.astype(jnp.int32), axis=1) - 1
        rows = lax.broadcasted_iota(jnp.int32, (qc, n_pad), 0)
        flat = jnp.where(rels, rows * r + slot, qc * r).reshape(-1)
        item = lax.broadcasted_iota(jnp.int32, (qc, n_pad), 1).reshape(-1)
        rel_idx = jnp.full((qc * r,), n_pad, jnp.int32).at[flat].set(item, mode="drop")
        rel_idx = rel_idx.reshape(qc, r)
    else:
        # Single-label: the relevant items of a query are its class's slice of the database
        # sorted by (label, index), precomputed on the host.
        num_rel = q_count
        rel_idx = jnp.take(db_order, q_start[:, None] + jnp.arange(r, dtype=jnp.int32)[None])
    if plan.kind == "hamming":  # stable or random ties (expected ones take the histograms)
        out = rank_stats.distance_rank_stats(
            keys,
            rel_idx,
            num_rel,
            num_levels=plan.num_bits + 1,
            block=plan.block,
            cuts=plan.cuts,
        )
    else:
        out = rank_stats.relevant_rank_stats(
            keys,
            rel_idx,
            num_rel,
            cuts=plan.cuts,
            expected=plan.expected,
            num_cells=plan.num_cells,
        )
    out["bad"] = bad
    return out


def _hist_chunk(plan: _Plan, qd, ql, xd, xl, xv, q_start, q_count, db_order):
    del q_start, q_count, db_order
    qc = ql.shape[0]
    zeros = jnp.zeros((qc, plan.num_bits + 1), jnp.int32)

    def body(carry, xs):
        d, lab, v = xs
        dist = kernels.popcount_distances(qd, d).T  # [q, c]
        tot, rel = rank_stats.distance_histograms(dist, relevance(ql, lab), v, plan.num_bits)
        return (carry[0] + tot, carry[1] + rel), None

    (tot, rel), _ = _scan(body, (zeros, zeros), (xd, xl, xv))
    return {"tot": tot, "rel": rel}


def _local(plan: _Plan, q_data, q_lab, q_start, q_count, db_data, db_lab, db_valid, db_order):
    """Per-device work: all local query chunks against the whole database."""
    qc, nb, nc = plan.query_chunk, plan.num_db_chunks, plan.db_chunk
    nq = q_lab.shape[0] // qc

    def split(x):
        return x.reshape((nq, qc) + x.shape[1:])

    xd = db_data if plan.kind == "scores" else db_data.reshape((nb, nc) + db_data.shape[1:])
    xl = db_lab.reshape((nb, nc) + db_lab.shape[1:])
    xv = db_valid.reshape(nb, nc)
    chunk = _rank_chunk if plan.path == "rank" else _hist_chunk
    out = lax.map(
        lambda a: chunk(plan, a[0], a[1], xd, xl, xv, a[2], a[3], db_order),
        (split(q_data), split(q_lab), split(q_start), split(q_count)),
    )
    return {k: v.reshape((nq * qc,) + v.shape[2:]) for k, v in out.items()}


@functools.lru_cache(maxsize=64)
def _kernel(plan: _Plan):
    fn = functools.partial(_local, plan)
    if plan.mesh is not None:
        q_spec, db_spec = P(DATA_AXIS), P()
        fn = jax.shard_map(
            fn,
            mesh=plan.mesh,
            in_specs=(q_spec,) * 4 + (db_spec,) * 4,
            out_specs=q_spec,
            check_vma=False,
        )
    return jax.jit(fn)


@functools.partial(jax.jit, static_argnames=("block",))
def _relevant_counts(query_labels, db_labels, *, block):
    """[Q] number of relevant database items per query, `block` queries at a time."""
    q = query_labels.shape[0]
    ql = query_labels.reshape((q // block, block) + query_labels.shape[1:])
    out = lax.map(lambda lab: jnp.sum(relevance(lab, db_labels), axis=1, dtype=jnp.int32), ql)
    return out.reshape(q)


def dense_class_ids(
    query_labels: Shaped[np.ndarray, " q"], db_labels: Shaped[np.ndarray, " n"]
) -> tuple[Int[np.ndarray, " q"], Int[np.ndarray, " n"]]:
    """Class ids of any integer dtype and range mapped to `0..C-1` (int32), order kept.

    `np.unique` over the query and database ids together, so equal ids map to the same dense
    id and distinct ids (e.g. int64 0 and 2**32, or -1 and 255) never collide.

    Args:
      query_labels: [Q] integer class ids (any integer dtype, negative or huge values).
      db_labels: [N] integer class ids.

    Returns:
      ([Q] int32, [N] int32) dense ids in `0..C-1`, C = number of distinct ids.

    Raises:
      ValueError: more than 2**31 - 1 labels in all (dense int32 ids could not hold them).

    Examples:
      >>> q, x = dense_class_ids(np.array([2**40, -3]), np.array([-3, 7, 2**40]))
      >>> q.tolist(), x.tolist()
      ([2, 0], [0, 1, 2])
    """
    num_q = query_labels.shape[0]
    if num_q + db_labels.shape[0] >= np.iinfo(np.int32).max:
        raise ValueError(
            f"{num_q + db_labels.shape[0]} labels in all cannot be mapped to int32 class ids; "
            "evaluate fewer queries or database items at a time."
        )
    both = np.concatenate([query_labels, db_labels])
    if both.dtype.kind not in "iu":  # int64 with uint64 promotes to float64: use Python ints
        both = np.array(query_labels.tolist() + db_labels.tolist(), dtype=object)
    _, dense = np.unique(both, return_inverse=True)
    dense = dense.astype(np.int32)
    return dense[:num_q], dense[num_q:]


def prepare_labels(query_labels, db_labels, num_queries: int, num_items: int):
    """Checks the labels and puts them on the device in the form the kernels use.

    Args:
      query_labels: [Q] integer class ids, or [Q, C] multi-hot.
      db_labels: [N] integer class ids, or [N, C] multi-hot (same kind as the queries).
      num_queries: Q.
      num_items: N.

    Returns:
      (query labels, database labels, multi_label): dense int32 class ids (`dense_class_ids`)
      or bfloat16 0/1 multi-hot matrices, and whether they are multi-hot.

    Raises:
      ValueError: counts that do not match, unknown or mismatched label kinds, 1-D labels that
        are not integers.
    """
    ql = sources.as_array(query_labels, "query_labels")
    dl = sources.as_array(db_labels, "db_labels")
    if ql.shape[0] != num_queries or dl.shape[0] != num_items:
        raise ValueError(
            f"Got {ql.shape[0]} query labels for {num_queries} queries and {dl.shape[0]} "
            f"database labels for {num_items} items; they must match."
        )
    if ql.ndim != dl.ndim or ql.ndim not in (1, 2):
        raise ValueError(
            f"Label kinds differ or are unknown: query labels {tuple(ql.shape)}, database "
            f"labels {tuple(dl.shape)}. Use int ids [Q] and [N], or multi-hot [Q, C] and [N, C]."
        )
    if ql.ndim == 1:
        for arr, name in ((ql, "query_labels"), (dl, "db_labels")):
            if not jnp.issubdtype(arr.dtype, jnp.integer):
                raise ValueError(
                    f"{name} are 1-D, so they must be integer class ids; got {arr.dtype}. "
                    f"Pass multi-hot labels as [.., C] arrays."
                )
        q_ids, db_ids = dense_class_ids(np.asarray(ql), np.asarray(dl))
        return jnp.asarray(q_ids), jnp.asarray(db_ids), False
    if ql.shape[1] != dl.shape[1]:
        raise ValueError(
            f"Multi-hot labels need the same number of classes: {ql.shape[1]} vs {dl.shape[1]}."
        )
    to_bf16 = lambda x: (jnp.asarray(x) != 0).astype(jnp.bfloat16)  # noqa: E731
    return to_bf16(ql), to_bf16(dl), True


def _budget(table, mesh) -> int:
    platform = mesh.devices.flat[0].platform if mesh is not None else jax.devices()[0].platform
    return table.get(platform, table["default"])


def _balanced(total: int, cap: int, multiple: int = 1) -> int:
    """Chunk size <= ~cap, rounded up to `multiple`, that splits `total` with little padding."""
    cap = max(1, cap)
    pieces = -(-total // cap)
    size = -(-total // pieces)
    return -(-size // multiple) * multiple


def _distance_block(num_levels: int, n_pad: int) -> int:
    """Histogram block for Hamming ranks: a power of two near b + 1 (64..1024) dividing N_pad."""
    block = min(1024, max(64, 1 << (num_levels - 1).bit_length()))
    while n_pad % block:
        block //= 2
    return block


def _relevant_index(ql, dl, multi, n, mesh):
    """Per-query relevant counts, and (single-label) class slices of the label-sorted database.

    Returns (q_start [Q], q_count [Q], db_order [N + r] with sentinel N, r = slots per query).
    """
    if multi:
        q = ql.shape[0]
        block = _balanced(q, max(1, _budget(_PAIR_BUDGET, mesh) // max(n, 1)))
        pad = -(-q // block) * block - q
        counts = _relevant_counts(jnp.pad(ql, ((0, pad), (0, 0))), dl, block=block)
        counts = np.asarray(counts)[:q].astype(np.int32)
        starts, order = np.zeros_like(counts), np.zeros(0, np.int32)
    else:
        labels = np.asarray(dl)
        order = np.argsort(labels, kind="stable").astype(np.int32)
        sorted_labels, qh = labels[order], np.asarray(ql)
        starts = np.searchsorted(sorted_labels, qh, "left").astype(np.int32)
        counts = (np.searchsorted(sorted_labels, qh, "right") - starts).astype(np.int32)
    # Powers of two keep the number of compiled shapes small.
    r = min(1 << max(int(counts.max(initial=0)) - 1, 0).bit_length(), max(n, 1))
    r = max(r, int(counts.max(initial=0)), 1)
    return starts, counts, np.concatenate([order, np.full(r, n, np.int32)]), r


def run(source, ql, dl, multi, *, path, expected, cuts, ties, seed, query_chunk, db_chunk, mesh):
    """Runs one kernel over all queries; returns per-query NumPy arrays (padding dropped)."""
    n, nq_total = source.num_items, source.num_queries
    kind = source.kind
    ndev = 1 if mesh is None else int(mesh.devices.size)
    if db_chunk is None:
        # Multiples of 128 keep Hamming histogram blocks (`_distance_block`) large.
        nc = _balanced(n, _DEFAULT_DB_CHUNK, 128 if n >= 1024 else 1)
    else:
        if int(db_chunk) < 1:
            raise ValueError(f"db_chunk must be >= 1, got {db_chunk}.")
        nc = int(db_chunk)
    if path == "hist" and nc > MAX_HAMMING_DB_CHUNK:
        if db_chunk is not None:
            raise ValueError(
                f"db_chunk={db_chunk} exceeds {MAX_HAMMING_DB_CHUNK} for Hamming histograms; "
                f"use a smaller db_chunk."
            )
        nc = _balanced(n, MAX_HAMMING_DB_CHUNK, 8)
    nb = -(-n // nc)
    n_pad = nb * nc

    qdata = jnp.asarray(source.queries)
    dbdata = None if kind == "scores" else jnp.asarray(source.database)
    if ties == "random" and not expected:
        perm = jnp.asarray(tie_permutation(n, seed))
        dl = jnp.take(dl, perm, axis=0)
        if kind == "scores":
            qdata = jnp.take(qdata, perm, axis=1)
        else:
            dbdata = jnp.take(dbdata, perm, axis=0)
    r = 1
    q_start = q_count = np.zeros(nq_total, np.int32)
    db_order = np.zeros(1, np.int32)
    if path == "rank":
        q_start, q_count, db_order, r = _relevant_index(ql, dl, multi, n, mesh)
        db_order = np.where(db_order == n, n_pad, db_order)  # sentinel: past the padding

    q_local = -(-nq_total // ndev)
    if query_chunk is None:
        if path == "rank":
            # Key row, search state and gathers per item; slot and cell arrays per relevant item.
            cap = _budget(_ROW_BUDGET, mesh) // (n_pad + (len(cuts) + 12) * r)
        else:
            cap = _budget(_PAIR_BUDGET, mesh) // nc
        qc = _balanced(q_local, min(cap, q_local))
    else:
        if int(query_chunk) < 1:
            raise ValueError(f"query_chunk must be >= 1, got {query_chunk}.")
        qc = int(query_chunk)
    nq_chunks = -(-q_local // qc)
    q_pad = ndev * nq_chunks * qc

    def pad0(x, size, axis=0):
        widths = [(0, 0)] * x.ndim
        widths[axis] = (0, size - x.shape[axis])
        return jnp.pad(x, widths)

    if kind == "scores":
        qdata = pad0(qdata, n_pad, axis=1)
        dbdata = jnp.arange(nb, dtype=jnp.int32)
    else:
        dbdata = pad0(dbdata, n_pad)
    qdata = pad0(qdata, q_pad)
    ql = pad0(ql, q_pad)
    dl = pad0(dl, n_pad)
    valid = jnp.arange(n_pad) < n
    q_start = pad0(jnp.asarray(q_start, jnp.int32), q_pad)
    q_count = pad0(jnp.asarray(q_count, jnp.int32), q_pad)  # padded queries: no relevant item

    plan = _Plan(
        kind=kind,
        negate=source.negate,
        num_bits=source.num_bits,
        path=path,
        expected=expected,
        multi_label=multi,
        cuts=cuts,
        num_items=n,
        query_chunk=qc,
        db_chunk=nc,
        num_db_chunks=nb,
        rel_cap=r,
        num_cells=_CELLS_PER_RELEVANT * r,
        block=_distance_block(source.num_bits + 1, n_pad),
        mesh=mesh,
    )
    args = (qdata, ql, q_start, q_count, dbdata, dl, valid, jnp.asarray(db_order, jnp.int32))
    if mesh is not None:
        qs, rs = NamedSharding(mesh, P(DATA_AXIS)), NamedSharding(mesh, P())
        args = tuple(jax.device_put(a, s) for a, s in zip(args, (qs,) * 4 + (rs,) * 4))
    out = to_host(_kernel(plan)(*args))  # multi-host: each process ranked its own queries
    out = {k: np.asarray(v)[:nq_total] for k, v in out.items()}
    if "bad" in out and out["bad"].any():
        raise ValueError(
            f"{int(out['bad'].sum())} scores are NaN or Inf (queries "
            f"{np.flatnonzero(out['bad'])[:5].tolist()}...); check features, LUTs or scores."
        )
    return out


def collect_stats(source, ql, dl, multi, cuts, ties, seed, query_chunk, db_chunk, mesh):
    """Per-query rank statistics via the histogram path (Hamming, expected) or the rank path."""
    expected = ties == "expected"
    if source.kind == "hamming" and expected:
        h = run(
            source,
            ql,
            dl,
            multi,
            path="hist",
            expected=True,
            cuts=(),
            ties=ties,
            seed=seed,
            query_chunk=query_chunk,
            db_chunk=db_chunk,
            mesh=mesh,
        )
        return finish.hist_stats(h["tot"], h["rel"], cuts), h
    return run(
        source,
        ql,
        dl,
        multi,
        path="rank",
        expected=expected,
        cuts=cuts,
        ties=ties,
        seed=seed,
        query_chunk=query_chunk,
        db_chunk=db_chunk,
        mesh=mesh,
    ), None


def radius_curves(source, ql, dl, multi, query_chunk, db_chunk, mesh, hist=None):
    """Per-query precision and recall of the items within each radius 0..b."""
    h = hist
    if h is None:
        h = run(
            source,
            ql,
            dl,
            multi,
            path="hist",
            expected=True,
            cuts=(),
            ties="expected",
            seed=0,
            query_chunk=query_chunk,
            db_chunk=db_chunk,
            mesh=mesh,
        )
    retrieved = np.cumsum(h["tot"], 1).astype(np.float64)  # [Q, b+1]
    hits = np.cumsum(h["rel"], 1).astype(np.float64)
    R = hits[:, -1:]
    return {
        "precision": np.divide(hits, retrieved, out=np.zeros_like(hits), where=retrieved > 0),
        "recall": np.divide(hits, R, out=np.zeros_like(hits), where=R > 0),
        "has_rel": R[:, 0] > 0,
    }
