"""Rank statistics of each query's relevant items, on device, without sorting the database.

AP and every cut-off metric only need, for each relevant item, how many items rank before it.
`relevant_rank_stats` gets those counts for float-derived keys (`order_keys`) by a short binary
search per item inside a monotone bucketing of the keys; `distance_rank_stats` gets them for
small integer keys (Hamming distances) from per-block histograms; `distance_histograms` counts
items per distance for the closed-form tie-aware path. The results are per-query partial sums
that `finish.py` turns into metric values in float64 on the host.

References:
  F. McSherry and M. Najork, "Computing Information Retrieval Performance Measures Efficiently
  in the Presence of Tied Scores", ECIR 2008 (tie-aware AP: the expected precision at each rank
  of a tie group).
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax

from dpq_jax.typing import Array, Bool, Float, Int

# Ranks of a tie group summed term by term before the closed-form tail (expected ties).
_SHARE_HEAD = 8
# Binary-search steps done without a loop (cells of up to 2**3 - 1 relevant items need no loop).
_SEARCH_STEPS = 3


def distance_histograms(
    dist: Int[Array, "q n"], rel: Bool[Array, "q n"], valid: Bool[Array, " n"], num_bits: int
) -> tuple[Int[Array, "q v"], Int[Array, "q v"]]:
    """Per-query counts of all and of relevant items at each distance 0..b.

    One scatter-add per (query, item) serves both counts: the increment holds 1 in the low 16
    bits and the relevance in the high bits (so n <= 32767).

    Args:
      dist: [q, n] int32 distances in 0..b.
      rel: [q, n] bool relevance.
      valid: [n] bool, False for padding items (not counted).
      num_bits: b.

    Returns:
      (total, relevant): two [q, b+1] int32 count arrays.
    """
    inc = jnp.where(valid[None, :], 1 + (rel.astype(jnp.int32) << 16), 0)  # [q, n]
    packed = _row_bincount(dist, num_bits + 1, inc)  # [q, b+1]
    return packed & 0xFFFF, packed >> 16


def order_keys(values: Float[Array, "*s"]) -> Int[Array, "*s"]:
    """Order-preserving int32 keys of float32 values.

    For all non-NaN float32 a, b: a < b iff key(a) < key(b) and a == b iff key(a) == key(b)
    (-0.0 and +0.0 both map to 0). +inf maps below int32 max, which stays free for padding.
    Integer keys let XLA sort with its built-in comparator and compare with integer ops.

    Args:
      values: float array (cast to float32).

    Returns:
      int32 keys of the same shape.

    Examples:
      >>> order_keys(jnp.array([-2.0, -0.0, 0.0, 1.5])).tolist()
      [-1073741825, 0, 0, 1069547520]
    """
    bits = lax.bitcast_convert_type(jnp.asarray(values).astype(jnp.float32), jnp.int32)
    # -0.0 is the bit pattern int32 min; comparing bits (not floats) keeps subnormals exact
    # where XLA:CPU would flush them to zero.
    bits = jnp.where(bits == jnp.iinfo(jnp.int32).min, 0, bits)
    # Negative floats: larger magnitude bits mean smaller values, so flip the magnitude bits.
    return jnp.where(bits < 0, bits ^ 0x7FFFFFFF, bits)


def _key_values(keys):
    """Inverse of `order_keys` (int32 max decodes to NaN)."""
    bits = jnp.where(keys < 0, keys ^ 0x7FFFFFFF, keys)
    return lax.bitcast_convert_type(bits, jnp.float32)


def _row_bincount(idx, num_bins: int, weights=None):
    """Per-row histogram [q, num_bins] of int indices [q, m] (indices outside are dropped)."""
    qn = idx.shape[0]
    rows = lax.broadcasted_iota(jnp.int32, idx.shape, 0)
    ok = (idx >= 0) & (idx < num_bins)
    flat = jnp.where(ok, rows * num_bins + idx, qn * num_bins).reshape(-1)
    # A flat 1-D scatter-add is the fastest histogram on XLA:CPU (no one-hot, no sort).
    w = jnp.ones(flat.shape, jnp.int32) if weights is None else weights.reshape(-1)
    out = jnp.zeros((qn * num_bins,), w.dtype).at[flat].add(w, mode="drop")
    return out.reshape(qn, num_bins)


def _harmonic_diff_f32(x, m):
    """sum_{u=1}^{m} 1 / (x + u) in float32 for x >= 8 (Euler-Maclaurin; error < 1e-9)."""
    y = x + m
    return (
        jnp.log1p(m / x)
        - m / (2 * x * y)
        - (1 / (y * y) - 1 / (x * x)) / 12
        + (1 / y**4 - 1 / x**4) / 120
        - (1 / y**6 - 1 / x**6) / 252
    )


def expected_group_share(
    above: Int[Array, "*s"],
    size: Int[Array, "*s"],
    rel_above: Int[Array, "*s"],
    rel_in: Int[Array, "*s"],
) -> Float[Array, "*s"]:
    """Expected precision summed over a tie group's ranks, per relevant item of the group.

    For a group of t items (r relevant) ranked after A items of which a are relevant, over all
    orders of the group, the expected value of rel_k * precision@k at rank A + p is
    (r / t) (a + 1 + (p - 1) (r - 1) / (t - 1)) / (A + p). Summing over p = 1..t and dividing
    by r gives each relevant item's share of the group's AP numerator.

    Args:
      above: A, items ranked before the group.
      size: t >= 1, items in the group.
      rel_above: a, relevant items before the group.
      rel_in: r, relevant items in the group.

    Returns:
      float32 (1 / t) sum_{p=1}^{t} (a + 1 + (p - 1) (r - 1) / (t - 1)) / (A + p).

    References:
      McSherry & Najork, ECIR 2008, tie-aware average precision (expected precision at each
      rank of a tie group).
    """
    f32 = jnp.float32
    A = above.astype(f32)
    t = size.astype(f32)
    a1 = rel_above.astype(f32) + 1
    slope = jnp.where(size > 1, (rel_in.astype(f32) - 1) / jnp.maximum(t - 1, 1), 0.0)
    head = jnp.zeros_like(A)
    for p in range(1, _SHARE_HEAD + 1):  # exact terms for the first ranks
        head = head + jnp.where(p <= size, (a1 + (p - 1) * slope) / (A + p), 0.0)
    # Tail p = P+1..t: sum_u (a1 + (P + u - 1) slope) / (x + u) with x = A + P, u = 1..m.
    m = jnp.maximum(t - _SHARE_HEAD, 0)
    x = A + _SHARE_HEAD
    dh = _harmonic_diff_f32(x, m)
    tail = (a1 + (_SHARE_HEAD - 1) * slope) * dh + slope * (m - x * dh)
    return (head + tail) / t


def _cell_fn(rk, num_rel, num_cells):
    """Monotone bucketing of float-derived keys into cells: (cell(k, row_of), #cells).

    Equal-width cells over [first, last] relevant value; keys outside go to the end cells.
    `row_of(x)` spreads a per-query [q, 1] value to the shape of k.
    """
    k_lo = rk[:, :1]
    k_hi = jnp.take_along_axis(rk, jnp.maximum(num_rel - 1, 0)[:, None], axis=1)
    v_lo = _key_values(k_lo)
    span = _key_values(k_hi) - v_lo
    scale = num_cells / jnp.where(span > 0, span, 1.0)
    ok = jnp.isfinite(span) & (span > 0) & jnp.isfinite(scale)
    scale = jnp.where(ok, scale, 0.0)

    def cell(k, row_of):
        lo, hi = row_of(k_lo), row_of(k_hi)
        pos = jnp.clip((_key_values(k) - row_of(v_lo)) * row_of(scale), 0, num_cells - 1)
        pos = jnp.where(row_of(ok) & (k > lo) & (k < hi), pos, 0.0).astype(jnp.int32)
        return jnp.where(k >= hi, num_cells - 1, pos)

    return cell, num_cells


def relevant_rank_stats(
    keys: Int[Array, "q n"],
    rel_idx: Int[Array, "q r"],
    num_rel: Int[Array, " q"],
    *,
    cuts: tuple[int, ...],
    expected: bool,
    num_cells: int,
) -> dict[str, Array]:
    """Rank statistics of each query's relevant items, without sorting the database.

    Ranking is by ascending key, ties by database index (`expected=False`; permute the
    database for random ties) or averaged over all tie orders (`expected=True`). AP and the
    cut-off metrics only need, per relevant item, how many items rank before it, so:

    1. the R relevant items are sorted by (key, index) — R is usually much smaller than N;
    2. every item finds how many relevant items precede it (its "gap") by a binary search
       among the relevant items of its cell (cells bucket keys monotonically, so the search
       range is a few items; exact for any data, only slower when many relevant items share a
       cell);
    3. a histogram of the gaps, cumulated, gives the stable rank of each relevant item
       (rank_j = #items with gap <= j). For `expected`, the gap is doubled plus a "tied with
       a relevant item" bit, which separates #items strictly before a tie group (A) from
       #items up to its end (A + t).

    Cost per query: O(N log(cell occupancy) + R log R), O(N + R) memory.

    Args:
      keys: [q, n] int32 ascending sort keys (`order_keys` of negated scores); padding items
        hold int32 max, real items less.
      rel_idx: [q, r] int32 database indices of each query's relevant items, ascending;
        entries from `num_rel[q]` on are ignored.
      num_rel: [q] int32, R per query (<= r).
      cuts: rank cut-offs K, each >= 1.
      expected: tie-aware (expected) statistics instead of index-stable ranks.
      num_cells: number of search cells (a few times r: more cells, shorter searches, larger
        tables).

    Returns:
      Dict of per-query arrays, as consumed by the float64 finish: `R` [q] and `ap_sum` [q]
      (sum over relevant items of precision at their rank, or its expectation). Without
      `expected`: `hits` [q, c] (relevant in the top K) and `S` [q, c] (sum of precision at
      those hits). With `expected`, for the tie group holding rank K: `A`, `t`, `a`, `trel`
      [q, c] int32 and `S_above` [q, c] (expected precision sum of the groups above it); when
      rank K falls in a group without relevant items, A = K - 1, t = 1, trel = 0.

    References:
      McSherry & Najork, ECIR 2008 (tie-aware AP; see `expected_group_share`).
    """
    qn, n = keys.shape
    r = rel_idx.shape[1]
    imax = jnp.iinfo(jnp.int32).max
    slot = lax.broadcasted_iota(jnp.int32, (qn, r), 1)
    live = slot < num_rel[:, None]
    ri = jnp.where(live, rel_idx, n)
    rk = jnp.where(live, jnp.take_along_axis(keys, jnp.minimum(ri, n - 1), axis=1), imax)
    if expected:
        rk = lax.sort(rk, dimension=1)  # keys only: XLA's built-in integer sort
    else:
        rk, ri = lax.sort((rk, ri), dimension=1, num_keys=2)  # (key, index) lexicographic

    # Per-item work runs on flat 1-D arrays with clamped 1-D gathers: XLA:CPU fuses those into
    # the surrounding arithmetic (2-D take_along_axis gathers are several times slower).
    key1 = keys.reshape(-1)
    item1 = lax.broadcasted_iota(jnp.int32, (qn, n), 1).reshape(-1)
    row1 = lax.broadcasted_iota(jnp.int32, (qn, n), 0).reshape(-1)

    def row_of(x):  # [q, 1] -> [q * n]
        return jnp.broadcast_to(x, (qn, n)).reshape(-1)

    def take(table, idx):  # table[row, idx] for each item; idx clamped into range
        m = table.shape[1]
        return jnp.take(table.reshape(-1), row1 * m + jnp.clip(idx, 0, m - 1), mode="clip")

    cell, g = _cell_fn(rk, num_rel, num_cells)
    per_cell = _row_bincount(jnp.where(live, cell(rk, lambda x: x), g), g + 1)
    first = jnp.concatenate(
        [jnp.zeros((qn, 1), jnp.int32), jnp.cumsum(per_cell[:, :g], axis=1)], axis=1
    )  # [q, g+1]: relevant slots before each cell
    c = cell(key1, row_of)
    lo, hi = take(first, c), take(first, c + 1)
    if expected:
        before = lambda mid: take(rk, mid) < key1  # noqa: E731
    else:

        def before(mid):
            mk = take(rk, mid)
            return (mk < key1) | ((mk == key1) & (take(ri, mid) < item1))

    def step(state):  # one bisection step on [lo, hi)
        lo, hi = state
        active = lo < hi
        mid = (lo + hi) >> 1
        b = before(mid)
        return jnp.where(active & b, mid + 1, lo), jnp.where(active & ~b, mid, hi)

    # gap: number of relevant items ranked strictly before the item. Binary lifting first:
    # its state is one array, so its steps fuse into one pass over the items, and it is exact
    # when the cell holds fewer than 2**_SEARCH_STEPS relevant items. Items in fuller cells
    # (heavy ties) finish with a bisection loop, which is skipped when none is left.
    steps = min(_SEARCH_STEPS, r.bit_length())  # r < 2**steps: the lifting alone is exact
    gap = lo
    for e in reversed(range(steps)):
        cand = gap + (1 << e)
        gap = jnp.where((cand <= hi) & before(cand - 1), cand, gap)
    if r >= 1 << steps:
        more = (gap == lo + (1 << steps) - 1) & (gap < hi)  # the lifting saturated

        def finish(state):
            return lax.while_loop(lambda s: jnp.any(s[0] < s[1]), step, state)[0]

        # The conditional keeps the loop (and its copies of the state) off the common path.
        state = (gap, jnp.where(more, hi, gap))
        gap = lax.cond(jnp.any(more), finish, lambda s: s[0], state)

    if not expected:
        # rank_j = #items with gap <= j (itself included): its 1-based stable rank.
        rank = jnp.cumsum(_row_bincount(gap.reshape(qn, n), r + 1), axis=1)[:, :r]
        return _stable_stats(rank, num_rel, cuts)

    kk = jnp.asarray(cuts, jnp.int32).reshape(1, -1, 1)  # [1, c, 1]
    out = {"R": num_rel}

    tied = (gap < row_of(num_rel[:, None])) & (take(rk, gap) == key1)
    pos = (2 * gap + tied).reshape(qn, n)
    cum = jnp.cumsum(_row_bincount(pos, 2 * r + 2), axis=1)  # [q, 2r+2]
    new = jnp.concatenate([jnp.ones((qn, 1), bool), rk[:, 1:] != rk[:, :-1]], axis=1)
    end = jnp.concatenate([rk[:, 1:] != rk[:, :-1], jnp.ones((qn, 1), bool)], axis=1)
    start = lax.cummax(jnp.where(new, slot, 0), axis=1)  # a: relevant before the group
    stop = lax.cummin(jnp.where(end, slot + 1, r), axis=1, reverse=True)
    A = jnp.take_along_axis(cum, 2 * start, axis=1)  # items strictly before the group
    t = jnp.take_along_axis(cum, 2 * start + 1, axis=1) - A
    trel = stop - start
    share = jnp.where(live, expected_group_share(A, jnp.maximum(t, 1), start, trel), 0.0)
    out["ap_sum"] = jnp.sum(share, axis=1)
    Ab, Bb = A[:, None, :], (A + t)[:, None, :]
    holds = live[:, None, :] & (Ab < kk) & (kk <= Bb)  # [q, c, r] group holding rank K
    above = live[:, None, :] & (Bb < kk)
    has = jnp.any(holds, axis=2)

    def pick(x, default):
        return jnp.where(has, jnp.max(jnp.where(holds, x[:, None, :], -1), axis=2), default)

    out["A"] = pick(A, kk[..., 0] - 1)
    out["t"] = pick(t, 1)
    out["a"] = jnp.sum(above, axis=2, dtype=jnp.int32)
    out["trel"] = pick(trel, 0)
    out["S_above"] = jnp.sum(jnp.where(above, share[:, None, :], 0.0), axis=2)
    return out


def _stable_stats(rank, num_rel, cuts):
    """AP numerator and cut statistics from the 1-based ranks [q, r] of the sorted relevant."""
    f32 = jnp.float32
    slot = lax.broadcasted_iota(jnp.int32, rank.shape, 1)
    live = slot < num_rel[:, None]
    # Relevant slot j is the (j+1)-th hit: precision at its rank is (j + 1) / rank_j.
    terms = jnp.where(live, (slot + 1).astype(f32) / jnp.maximum(rank, 1).astype(f32), 0.0)
    kk = jnp.asarray(cuts, jnp.int32).reshape(1, -1, 1)  # [1, c, 1]
    inside = live[:, None, :] & (rank[:, None, :] <= kk)  # [q, c, r]
    return {
        "R": num_rel,
        "ap_sum": jnp.sum(terms, axis=1),
        "hits": jnp.sum(inside, axis=2, dtype=jnp.int32),
        "S": jnp.sum(jnp.where(inside, terms[:, None, :], 0.0), axis=2),
    }


def distance_rank_stats(
    dist: Int[Array, "q n"],
    rel_idx: Int[Array, "q r"],
    num_rel: Int[Array, " q"],
    *,
    num_levels: int,
    block: int,
    cuts: tuple[int, ...],
) -> dict[str, Array]:
    """Index-stable rank statistics of each query's relevant items from small integer keys.

    For Hamming distances (b + 1 levels): the stable rank of a relevant item at distance d and
    database index i is 1 + (#items at distances < d) + (#items at distance d with index < i).
    Both counts come from per-block histograms of the distances (blocks of `block` items in
    index order, cumulated over blocks) plus, inside the item's own block, a direct count over
    its `block` items. Cost per query O(N + (N / block) (b + 1) + R * block); no sort of the
    database, no search.

    Args:
      dist: [q, n] int32 distances in [0, num_levels); padding items hold num_levels or more.
      rel_idx: [q, r] int32 database indices of each query's relevant items, ascending;
        entries from `num_rel[q]` on are ignored.
      num_rel: [q] int32, R per query (<= r).
      num_levels: b + 1.
      block: items per block; must divide n.
      cuts: rank cut-offs K, each >= 1.

    Returns:
      As `relevant_rank_stats` with expected=False: `R`, `ap_sum` [q], `hits`, `S` [q, c].

    Raises:
      ValueError: `block` does not divide n.
    """
    qn, n = dist.shape
    r = rel_idx.shape[1]
    if n % block:
        raise ValueError(f"block={block} must divide the number of items {n}.")
    nblk = n // block
    imax = jnp.iinfo(jnp.int32).max
    slot = lax.broadcasted_iota(jnp.int32, (qn, r), 1)
    live = slot < num_rel[:, None]
    item = lax.broadcasted_iota(jnp.int32, (qn, n), 1)
    # hist[q, k, d]: items of block k at distance d; before[q, k, d]: in blocks before k.
    hist = _row_bincount(
        jnp.where(dist < num_levels, (item // block) * num_levels + dist, -1), nblk * num_levels
    ).reshape(qn, nblk, num_levels)
    before = (jnp.cumsum(hist, axis=1) - hist).reshape(qn, nblk * num_levels)
    per_level = jnp.sum(hist, axis=1)  # [q, L]
    closer = jnp.cumsum(per_level, axis=1) - per_level  # items at smaller distances

    def take(table, idx):  # table[q, idx] with idx clamped (fast flat gather)
        rows = lax.broadcasted_iota(jnp.int32, idx.shape, 0)
        m = table.shape[1]
        return jnp.take(table.reshape(-1), rows * m + jnp.clip(idx, 0, m - 1), mode="clip")

    ri = jnp.where(live, rel_idx, 0)
    d = jnp.where(live, take(dist, ri), imax)
    # Rank order of the relevant items: by (distance, index).
    if num_levels < 128 and n < 1 << 24:
        packed = lax.sort(jnp.where(live, (d << 24) | ri, imax), dimension=1)  # one int32 key
        d, ri = packed >> 24, packed & 0xFFFFFF
    else:
        d, ri = lax.sort((d, ri), dimension=1, num_keys=2)
    d, ri = jnp.where(live, d, 0), jnp.where(live, ri, 0)
    blk = ri // block
    pos = jnp.arange(block, dtype=jnp.int32)

    def within(d, ri):  # [q, m] -> same-distance items of the own block with a smaller index
        start = (ri // block) * block
        own = take(dist, (start[:, :, None] + pos).reshape(qn, -1)).reshape(qn, -1, block)
        earlier = pos < (ri - start)[:, :, None]
        return jnp.sum((own == d[:, :, None]) & earlier, axis=2, dtype=jnp.int32)

    # [q, r, block] at a time would hold r * block items: beyond a few rows' worth, loop over
    # slices of the relevant slots.
    step = max(1, min(r, 4 * n // block))
    if step >= r:
        own_counts = within(d, ri)
    else:
        m = -(-r // step) * step
        parts = [jnp.pad(x, ((0, 0), (0, m - r))).reshape(qn, m // step, step) for x in (d, ri)]
        own_counts = lax.map(
            lambda a: within(a[0], a[1]), tuple(jnp.moveaxis(x, 1, 0) for x in parts)
        )
        own_counts = jnp.moveaxis(own_counts, 0, 1).reshape(qn, m)[:, :r]
    rank = take(closer, d) + take(before, blk * num_levels + d) + own_counts + 1
    return _stable_stats(rank, num_rel, cuts)
