"""Retrieval metrics on device: mAP@K, precision/recall@K, PR curves, Hamming-radius P/R.

Every convention is an explicit option, recorded in the `conventions` entry of each result
(PROTOCOLS.md, "Metric conventions"):

* `denominator` (AP@K): `"relevant_in_topk"` (hits found in the top K; DPQ, DeepHash-pytorch,
  HashNet) or `"min_relevant_k"` (min(#relevant in the database, K)). For K = all they agree.
* `empty`: a query with no relevant item *in the whole database* counts as 0 (`"zero"`,
  default) or is left out of every mean (`"skip"`). A query that has relevant items but none in
  its top K always scores AP@K = 0.
* `ties`: `"stable"` (default; tied items ranked by database index), `"random"` (tied items
  ranked by a seeded permutation, see `tie_permutation`; one permutation shared by all queries,
  so for each query the order of its ties is uniform), or `"expected"` (the exact expectation of
  the metric over all orderings of tied items; McSherry & Najork 2008).
* K: `-1` means the whole database ("all"). Any K > N is clipped to N (documented rule, no
  error): `map@1000` on a 700-item database is mAP@700 and is reported under the requested key.
* Relevance: single-label ids `[Q]`/`[N]` (same id) or multi-hot `[Q, C]`/`[N, C]` (relevant =
  shares at least one label; any non-zero entry is a label).
* Hamming radius: precision within radius r is 0 for a query that retrieves nothing.

Scores come from a `ScoreSource` (dense features, ADC over PQ codes, packed-bit Hamming, or a
precomputed score matrix); higher scores rank first, distances are negated.

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

References:
  F. McSherry and M. Najork, "Computing Information Retrieval Performance Measures Efficiently
  in the Presence of Tied Scores", ECIR 2008 (tie-aware AP: the expected precision at each rank
  of a tie group).
  H. Jegou, M. Douze, C. Schmid, "Product Quantization for Nearest Neighbor Search", TPAMI 2011
  (asymmetric distance computation, Sec. IV-A, Eq. 13).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from dpq_jax.parallel import DATA_AXIS
from dpq_jax.typing import Array, Bool, Float, Int, Shaped

DENOMINATORS = ("relevant_in_topk", "min_relevant_k")
EMPTY_RULES = ("zero", "skip")
TIE_RULES = ("stable", "random", "expected")
SOURCE_KINDS = ("dense_ip", "dense_neg_l2", "adc", "hamming", "scores")

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
# Ranks of a tie group summed term by term before the closed-form tail (expected ties).
_SHARE_HEAD = 8
# Binary-search steps done without a loop (cells of up to 2**3 - 1 relevant items need no loop).
_SEARCH_STEPS = 3


# ---------------------------------------------------------------------------------------------
# Score sources.
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ScoreSource:
    """Where scores come from: query-side and database-side arrays plus how to combine them.

    Build one with `dense_source`, `adc_source`, `hamming_source` or `scores_source`; the
    fields are an implementation detail. For any chunk of queries and chunk of the database,
    `block_scores` gives a float32 score block, higher = more similar.

    Attributes:
      kind: one of `SOURCE_KINDS`.
      queries: query-side array, leading axis Q (features [Q, D], LUTs [Q, M, K], packed bits
        [Q, W], or score rows [Q, N]).
      database: database-side array, leading axis N (None for precomputed scores).
      num_items: N.
      num_bits: b for Hamming sources (distances lie in 0..b), else 0.
      negate: whether the combined value is a distance to be negated (ADC distance LUTs,
        precomputed distances).
    """

    kind: str
    queries: Any
    database: Any
    num_items: int
    num_bits: int = 0
    negate: bool = False

    @property
    def num_queries(self) -> int:
        return int(self.queries.shape[0])


def _as_array(x, name: str):
    if not hasattr(x, "shape") or not hasattr(x, "dtype"):
        x = np.asarray(x)
    if x.ndim == 0:
        raise ValueError(f"{name} must be an array with a leading batch axis, got a scalar.")
    return x


def _check_finite(x, name: str) -> None:
    if not bool(jnp.all(jnp.isfinite(jnp.asarray(x)))):
        raise ValueError(f"{name} contains NaN or Inf; clean or re-encode the inputs first.")


def dense_source(query_feats, db_feats, *, metric: str = "ip") -> ScoreSource:
    """Scores from dense float features.

    Args:
      query_feats: [Q, D] float query features.
      db_feats: [N, D] float database features.
      metric: `"ip"` (inner product) or `"neg_l2"` (negative squared Euclidean distance,
        computed as -(|q|^2 + |x|^2 - 2 q.x) in float32 with full-precision matmuls).

    Returns:
      A `ScoreSource`.

    Raises:
      ValueError: wrong ranks, mismatched D, unknown metric, or non-finite features.
    """
    q, x = _as_array(query_feats, "query_feats"), _as_array(db_feats, "db_feats")
    if metric not in ("ip", "neg_l2"):
        raise ValueError(f"metric must be 'ip' or 'neg_l2', got {metric!r}.")
    if q.ndim != 2 or x.ndim != 2 or q.shape[1] != x.shape[1]:
        raise ValueError(
            f"dense_source needs query_feats [Q, D] and db_feats [N, D] with the same D; got "
            f"{tuple(q.shape)} and {tuple(x.shape)}."
        )
    _check_finite(q, "query_feats")
    _check_finite(x, "db_feats")
    kind = "dense_ip" if metric == "ip" else "dense_neg_l2"
    return ScoreSource(kind, q, x, int(x.shape[0]))


def adc_source(luts, codes, *, lut_is_distance: bool = False) -> ScoreSource:
    """Asymmetric (ADC) scores over product-quantization codes.

    score[q, n] = sum_m luts[q, m, codes[n, m]], summed over m in order 0..M-1 in float32
    (negated when `lut_is_distance`).

    Args:
      luts: [Q, M, K] float lookup tables (similarities, or distances with `lut_is_distance`).
      codes: [N, M] integer codes in [0, K) (uint8 for K <= 256).
      lut_is_distance: the LUT holds distances (lower = closer); scores are their negation.

    Returns:
      A `ScoreSource`.

    Raises:
      ValueError: wrong shapes, non-integer or out-of-range codes, non-finite LUT.

    References:
      Jegou et al., TPAMI 2011, Sec. IV-A, Eq. 13 (ADC).
    """
    lut, c = _as_array(luts, "luts"), _as_array(codes, "codes")
    if lut.ndim != 3 or c.ndim != 2 or lut.shape[1] != c.shape[1]:
        raise ValueError(
            f"adc_source needs luts [Q, M, K] and codes [N, M] with the same M; got "
            f"{tuple(lut.shape)} and {tuple(c.shape)}."
        )
    if not jnp.issubdtype(c.dtype, jnp.integer):
        raise ValueError(f"codes must be integers (uint8 for K <= 256), got {c.dtype}.")
    if c.shape[0] and (int(jnp.min(c)) < 0 or int(jnp.max(c)) >= lut.shape[2]):
        raise ValueError(
            f"codes must lie in [0, K={lut.shape[2]}); got values in "
            f"[{int(jnp.min(c))}, {int(jnp.max(c))}]. Check that codes and LUTs match."
        )
    _check_finite(lut, "luts")
    return ScoreSource("adc", lut, c, int(c.shape[0]), negate=bool(lut_is_distance))


def hamming_source(query_packed, db_packed, *, num_bits: int) -> ScoreSource:
    """Scores from Hamming distances between packed binary codes (score = -distance).

    Args:
      query_packed: [Q, W] unsigned words (uint32 from `pack_bits`, or uint8/uint16) holding
        0/1 bits, least significant bit first.
      db_packed: [N, W] words of the same dtype.
      num_bits: b, the code length; distances lie in 0..b.

    Returns:
      A `ScoreSource`.

    Raises:
      ValueError: wrong shapes or dtypes, b larger than the words hold, or bits set beyond b
        (which would make distances exceed b).
    """
    q, x = _as_array(query_packed, "query_packed"), _as_array(db_packed, "db_packed")
    if q.ndim != 2 or x.ndim != 2 or q.shape[1] != x.shape[1] or q.dtype != x.dtype:
        raise ValueError(
            f"hamming_source needs query_packed [Q, W] and db_packed [N, W] with the same W and "
            f"dtype; got {tuple(q.shape)} {q.dtype} and {tuple(x.shape)} {x.dtype}."
        )
    if not jnp.issubdtype(q.dtype, jnp.unsignedinteger):
        raise ValueError(
            f"Packed codes must be unsigned integers (use pack_bits), got {q.dtype}. Pack 0/1 "
            f"bits, never +-1 values."
        )
    word_bits = jnp.iinfo(q.dtype).bits
    b = int(num_bits)
    if not 1 <= b <= word_bits * q.shape[1]:
        raise ValueError(f"num_bits={num_bits} must lie in [1, {word_bits * q.shape[1]}].")
    spare = word_bits * q.shape[1] - b
    if spare:
        # Bits beyond b must be zero, or distances could exceed b and be lost.
        keep = (1 << (word_bits - spare)) - 1
        for arr, name in ((q, "query_packed"), (x, "db_packed")):
            if arr.shape[0] and bool(jnp.any(jnp.asarray(arr)[:, -1] > keep)):
                raise ValueError(
                    f"{name} has bits set beyond num_bits={b}; pack exactly b bits (pack_bits)."
                )
    return ScoreSource("hamming", q, x, int(x.shape[0]), num_bits=b)


def scores_source(scores, *, higher_is_better: bool = True) -> ScoreSource:
    """A precomputed score matrix (convenience; the matrix already is Q x N on some device).

    Args:
      scores: [Q, N] float scores (or distances with `higher_is_better=False`).
      higher_is_better: False for distances, which are negated.

    Returns:
      A `ScoreSource`.

    Raises:
      ValueError: not 2-D. NaN or Inf scores are reported when metrics are computed.
    """
    s = _as_array(scores, "scores")
    if s.ndim != 2:
        raise ValueError(f"scores must be [Q, N], got shape {tuple(s.shape)}.")
    return ScoreSource("scores", s, None, int(s.shape[1]), negate=not higher_is_better)


# ---------------------------------------------------------------------------------------------
# Pure jnp math (NumPy twins in reference.py).
# ---------------------------------------------------------------------------------------------


def pack_bits(bits: Shaped[Array, "n b"]) -> Shaped[Array, "n w"]:
    """Packs 0/1 bits into uint32 words, least significant bit first (bit i -> word i // 32).

    Args:
      bits: [n, b] array of 0/1 (bool or int). Non-zero counts as 1.

    Returns:
      [n, ceil(b / 32)] uint32 words; unused high bits of the last word are 0.

    Examples:
      >>> pack_bits(jnp.array([[1, 0, 1]])).tolist()
      [[5]]
    """
    bits = jnp.asarray(bits) != 0
    n, b = bits.shape
    w = -(-b // 32)
    bits = jnp.pad(bits, ((0, 0), (0, 32 * w - b))).reshape(n, w, 32).astype(jnp.uint32)
    return jnp.sum(bits << jnp.arange(32, dtype=jnp.uint32), axis=-1, dtype=jnp.uint32)


def tie_permutation(num_items: int, seed: int) -> np.ndarray:
    """The database order used for `ties="random"`: `np.random.default_rng(seed).permutation`.

    Item `perm[0]` ranks first among tied items, then `perm[1]`, and so on; every query uses
    the same permutation.

    Args:
      num_items: N.
      seed: integer seed.

    Returns:
      [N] int64 permutation of 0..N-1.
    """
    return np.random.default_rng(seed).permutation(num_items)


def hamming_distances(
    query_packed: Shaped[Array, "q w"], db_packed: Shaped[Array, "n w"]
) -> Int[Array, "q n"]:
    """Hamming distances between packed codes: popcount(q XOR x) summed over words.

    Args:
      query_packed: [q, w] unsigned words.
      db_packed: [n, w] unsigned words of the same dtype.

    Returns:
      [q, n] int32 distances.
    """
    x = lax.population_count(query_packed[:, None, :] ^ db_packed[None, :, :])  # [q, n, w]
    return jnp.sum(x.astype(jnp.int32), axis=-1)


def adc_scores(luts: Float[Array, "q m k"], codes: Shaped[Array, "n m"]) -> Float[Array, "q n"]:
    """ADC scores sum_m luts[q, m, codes[n, m]], accumulated over m in order in float32.

    Args:
      luts: [q, M, K] float32 lookup tables.
      codes: [n, M] integer codes in [0, K) (values outside are clamped into it).

    Returns:
      [q, n] float32 scores.

    References:
      Jegou et al., TPAMI 2011, Sec. IV-A, Eq. 13.
    """
    q, num_m, k = luts.shape
    flat = luts.reshape(q, num_m * k)
    # Codes are checked to lie in [0, K) when a source is built, so a clamped gather (much
    # faster on XLA:CPU than the bounds-filled default) never changes a value.
    idx = codes.astype(jnp.int32) + k * jnp.arange(num_m, dtype=jnp.int32)  # [n, M]
    out = jnp.take(flat, idx[:, 0], axis=1, mode="clip")  # [q, n]
    for m in range(1, num_m):  # M is small and static; fixed order keeps sums exact
        out = out + jnp.take(flat, idx[:, m], axis=1, mode="clip")
    return out.astype(jnp.float32)


def dense_scores(
    query_feats: Float[Array, "q d"], db_feats: Float[Array, "n d"], metric: str = "ip"
) -> Float[Array, "q n"]:
    """Inner-product or negative squared-L2 scores in float32 with full-precision matmuls.

    Args:
      query_feats: [q, d] float features.
      db_feats: [n, d] float features.
      metric: `"ip"` or `"neg_l2"`.

    Returns:
      [q, n] float32 scores.
    """
    q = query_feats.astype(jnp.float32)
    x = db_feats.astype(jnp.float32)
    ip = jnp.einsum("qd,nd->qn", q, x, precision=lax.Precision.HIGHEST)  # [q, n]
    if metric == "ip":
        return ip
    q2 = jnp.sum(q * q, axis=1)[:, None]  # [q, 1]
    x2 = jnp.sum(x * x, axis=1)[None, :]  # [1, n]
    return -(q2 + x2 - 2.0 * ip)


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


# ---------------------------------------------------------------------------------------------
# Jitted kernels.
# ---------------------------------------------------------------------------------------------


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


def _block_keys(plan: _Plan, qd, xd):
    """Ascending int32 sort keys for one (query chunk, database chunk) block, bad-score flags."""
    if plan.kind == "hamming":
        return hamming_distances(qd, xd), None
    if plan.kind == "adc":
        s = adc_scores(qd, xd)
    elif plan.kind == "scores":
        s = lax.dynamic_slice_in_dim(qd, xd * plan.db_chunk, plan.db_chunk, axis=1)
        s = s.astype(jnp.float32)
    else:
        s = dense_scores(qd, xd, "ip" if plan.kind == "dense_ip" else "neg_l2")
    return order_keys(s if plan.negate else -s), ~jnp.isfinite(s)


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
        key, nonfinite = _block_keys(plan, qd, j if plan.kind == "scores" else d)
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
        out = distance_rank_stats(
            keys,
            rel_idx,
            num_rel,
            num_levels=plan.num_bits + 1,
            block=plan.block,
            cuts=plan.cuts,
        )
    else:
        out = relevant_rank_stats(
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
        dist = hamming_distances(qd, d)
        tot, rel = distance_histograms(dist, relevance(ql, lab), v, plan.num_bits)
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


# ---------------------------------------------------------------------------------------------
# Host side: validation, chunking, padding, and the float64 finish.
# ---------------------------------------------------------------------------------------------


def _check_option(value, allowed, name):
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}.")


def _prepare_labels(query_labels, db_labels, num_queries, num_items):
    ql, dl = _as_array(query_labels, "query_labels"), _as_array(db_labels, "db_labels")
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
        return jnp.asarray(ql).astype(jnp.int32), jnp.asarray(dl).astype(jnp.int32), False
    if ql.shape[1] != dl.shape[1]:
        raise ValueError(
            f"Multi-hot labels need the same number of classes: {ql.shape[1]} vs {dl.shape[1]}."
        )
    to_bf16 = lambda x: (jnp.asarray(x) != 0).astype(jnp.bfloat16)  # noqa: E731
    return to_bf16(ql), to_bf16(dl), True


def _normalize_ks(ks, name, allow_all):
    out = []
    for k in tuple(ks):
        if isinstance(k, bool) or not isinstance(k, int | np.integer):
            raise ValueError(f"{name} must hold ints, got {k!r}.")
        if k == -1 and allow_all:
            out.append(-1)
        elif k >= 1:
            out.append(int(k))
        else:
            allowed = "-1 (all) or K >= 1" if allow_all else "K >= 1"
            raise ValueError(f"{name} entries must be {allowed}, got {k}.")
    return tuple(out)


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


def _run(source, ql, dl, multi, *, path, expected, cuts, ties, seed, query_chunk, db_chunk, mesh):
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
    out = jax.device_get(_kernel(plan)(*args))
    out = {k: np.asarray(v)[:nq_total] for k, v in out.items()}
    if "bad" in out and out["bad"].any():
        raise ValueError(
            f"{int(out['bad'].sum())} scores are NaN or Inf (queries "
            f"{np.flatnonzero(out['bad'])[:5].tolist()}...); check features, LUTs or scores."
        )
    return out


_H_SMALL = np.concatenate([[0.0], np.cumsum(1.0 / np.arange(1, 65))])  # H(0..64)


def _harmonic(n):
    """Harmonic numbers H(n) in float64 (exact table below 64, asymptotic series above)."""
    n = np.asarray(n, np.float64)
    x = np.maximum(n, 1.0)
    big = (
        np.log(x)
        + np.euler_gamma
        + 1 / (2 * x)
        - 1 / (12 * x**2)
        + 1 / (120 * x**4)
        - 1 / (252 * x**6)
    )
    return np.where(n < 64, _H_SMALL[np.clip(n, 0, 64).astype(np.int64)], big)


def _harmonic_diff(start, m):
    """sum_{p=1}^{m} 1 / (start + p) = H(start + m) - H(start), accurate for large start."""
    start = np.asarray(start, np.float64)
    m = np.asarray(m, np.float64)
    x = np.maximum(start, 1.0)
    y = x + m
    series = (
        np.log1p(m / x)
        - m / (2 * x * y)
        - (1 / y**2 - 1 / x**2) / 12
        + (1 / y**4 - 1 / x**4) / 120
        - (1 / y**6 - 1 / x**6) / 252
    )
    return np.where(start >= 64, series, _harmonic(start + m) - _harmonic(start))


def _group_sums(A, m, a, t, trel):
    """Expected precision sum over the first m ranks of a tie group (float64), and helpers.

    Returns (dh, j, g): dh = sum_p 1/(A+p), j = sum_p (p-1)/(A+p) over p = 1..m, and
    g = sum_p E[rel prec] at rank A + p = (trel/t) ((a+1) dh + (trel-1)/(t-1) j).
    """
    dh = _harmonic_diff(A, m)
    j = m - (A + 1.0) * dh
    frac = np.divide(trel, t, out=np.zeros_like(dh), where=t > 0)
    slope = np.divide(trel - 1.0, t - 1.0, out=np.zeros_like(dh), where=t > 1)
    return dh, j, frac * ((a + 1.0) * dh + slope * j)


def _expected_ap_rik(A, t, a, trel, s_above, m, dh, j):
    """E[AP@K] with denominator = hits in the top K when rank K may cut a tie group.

    The hits h taken from the cut group (its first m ranks) are hypergeometric; given h they
    sit uniformly among those m ranks, so their expected precision sum is
    G(h) = (h/m) ((a+1) dh + (h-1)/(m-1) j). Groups are ordered independently, so
    E[AP] = sum_h P(h) (S_above + G(h)) / (a + h), with AP = 0 when a + h = 0.
    """
    h_lo = np.maximum(0, m - (t - trel))
    h_hi = np.minimum(m, trel)
    width = int((h_hi - h_lo).max(initial=0)) + 1
    out = np.empty(A.shape, np.float64)
    step = max(1, (1 << 22) // width)
    for i in range(0, A.size, step):
        sl = slice(i, i + step)
        lo, hi = h_lo[sl, None], h_hi[sl, None]
        h = lo + np.arange(width)[None, :]  # [rows, width]
        ok = h <= hi
        nxt = h < hi  # log P(h+1) - log P(h) for consecutive admissible h
        tt, rr, mm = t[sl, None], trel[sl, None], m[sl, None]

        def safe(x, nxt=nxt):  # log of 1 where the step is not admissible
            return np.where(nxt, x, 1.0)

        step_log = np.where(
            nxt,
            np.log(safe(rr - h))
            + np.log(safe(mm - h))
            - np.log(h + 1.0)
            - np.log(safe(tt - rr - mm + h + 1.0)),
            0.0,
        )
        logw = np.concatenate([np.zeros_like(step_log[:, :1]), np.cumsum(step_log, 1)[:, :-1]], 1)
        logw = np.where(ok, logw, -np.inf)
        w = np.exp(logw - logw.max(axis=1, keepdims=True))
        w /= w.sum(axis=1, keepdims=True)
        coef = np.where(mm > 1, (h - 1.0) / np.maximum(mm - 1.0, 1.0), 0.0)
        g = (h / mm) * ((a[sl, None] + 1.0) * dh[sl, None] + coef * j[sl, None])
        den = a[sl, None] + h
        val = np.where(ok & (den > 0), (s_above[sl, None] + g) / np.maximum(den, 1), 0.0)
        out[sl] = np.sum(w * val, axis=1)
    return out


def _cut_metrics(stats, j, K, expected, denominator):
    """Per-query (expected) hits@K, AP@K for rank cut K (column j of the cut statistics)."""
    R = stats["R"].astype(np.float64)
    if not expected:
        hits = stats["hits"][:, j].astype(np.float64)
        s_k = stats["S"][:, j].astype(np.float64)
        ap_rik = np.divide(s_k, hits, out=np.zeros_like(s_k), where=hits > 0)
    else:
        A, t, a, trel = (stats[k][:, j].astype(np.float64) for k in ("A", "t", "a", "trel"))
        s_above = stats["S_above"][:, j].astype(np.float64)
        m = K - A
        dh, jj, g = _group_sums(A, m, a, t, trel)
        hits = a + m * trel / t
        s_k = s_above + g
        ap_rik = (
            _expected_ap_rik(A, t, a, trel, s_above, m, dh, jj)
            if denominator == "relevant_in_topk"
            else None
        )
    if denominator == "min_relevant_k":
        den = np.minimum(R, K)
        ap = np.divide(s_k, den, out=np.zeros_like(s_k), where=den > 0)
    else:
        ap = ap_rik
    return hits, ap


def _hist_stats(tot, rel, cuts):
    """Tie-group statistics (as `relevant_rank_stats` with expected=True) from histograms."""
    tot = tot.astype(np.float64)
    rel = rel.astype(np.float64)
    cum_t, cum_r = np.cumsum(tot, 1), np.cumsum(rel, 1)
    A, a = cum_t - tot, cum_r - rel
    _, _, g = _group_sums(A, tot, a, tot, rel)  # whole-group expected precision sums
    cum_g = np.cumsum(g, 1)
    out = {"R": cum_r[:, -1], "ap_sum": cum_g[:, -1]}
    cols = {k: [] for k in ("A", "t", "a", "trel", "S_above")}
    rows = np.arange(tot.shape[0])
    for K in cuts:
        grp = np.sum(cum_t < K, axis=1)  # the distance whose group holds rank K
        for name, arr in (("A", A), ("t", tot), ("a", a), ("trel", rel), ("S_above", cum_g - g)):
            cols[name].append(arr[rows, grp])
    for name, v in cols.items():
        out[name] = np.stack(v, 1) if v else np.zeros((tot.shape[0], 0))
    return out


def _mean(values, has_rel, empty):
    if empty == "skip":
        return float(values[has_rel].mean()) if has_rel.any() else float("nan")
    return float(values.mean())


def _conventions(source, *, denominator, empty, ties, seed, multi_label, extra=None):
    conv = {
        "denominator": denominator,
        "empty": empty,
        "ties": ties,
        "k_rule": "K=-1 is 'all'; K > N is clipped to N",
        "relevance": "shares >= 1 label" if multi_label else "same class id",
        "score": source.kind + (" (negated distance)" if source.negate else ""),
    }
    if ties == "random":
        conv["seed"] = int(seed)
    if extra:
        conv.update(extra)
    return conv


def format_metrics(result: dict[str, Any]) -> str:
    """One line with every number and the conventions it was computed under."""
    nums = ", ".join(f"{k}={v:.4f}" for k, v in result.items() if k != "conventions")
    conv = ", ".join(f"{k}={v}" for k, v in result.get("conventions", {}).items())
    return f"{nums} [{conv}]"


def _validate_common(source, denominator, empty, ties):
    if not isinstance(source, ScoreSource):
        raise ValueError(
            f"source must be a ScoreSource (dense_source, adc_source, hamming_source, "
            f"scores_source); got {type(source).__name__}."
        )
    _check_option(denominator, DENOMINATORS, "denominator")
    _check_option(empty, EMPTY_RULES, "empty")
    _check_option(ties, TIE_RULES, "ties")
    if source.num_items == 0:
        raise ValueError("The database is empty (N = 0); there is nothing to rank.")
    if source.num_queries == 0:
        raise ValueError("There are no queries (Q = 0).")


def _rank_stats(source, ql, dl, multi, cuts, ties, seed, query_chunk, db_chunk, mesh):
    """Per-query rank statistics via the histogram path (Hamming, expected) or the rank path."""
    expected = ties == "expected"
    if source.kind == "hamming" and expected:
        h = _run(
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
        return _hist_stats(h["tot"], h["rel"], cuts), h
    return _run(
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


def retrieval_metrics(
    source: ScoreSource,
    query_labels,
    db_labels,
    *,
    map_ks: Sequence[int] = (-1,),
    precision_ks: Sequence[int] = (5,),
    recall_ks: Sequence[int] = (),
    radius: int | None = None,
    denominator: str = "relevant_in_topk",
    empty: str = "zero",
    ties: str = "stable",
    seed: int = 0,
    query_chunk: int | None = None,
    db_chunk: int | None = None,
    mesh: jax.sharding.Mesh | None = None,
) -> dict[str, Any]:
    """mAP@K, precision@K, recall@K (and Hamming-radius P/R) with explicit conventions.

    Defaults: mAP over the whole database (`map_ks=(-1,)`), `denominator="relevant_in_topk"`,
    `empty="zero"`, `ties="stable"` (ties ranked by database index), K > N clipped to N.

    Args:
      source: a `ScoreSource`.
      query_labels: [Q] int class ids, or [Q, C] multi-hot.
      db_labels: [N] int class ids, or [N, C] multi-hot (same kind as the queries).
      map_ks: cut-offs for mAP; -1 means all (key `map@all`), K >= 1 gives `map@K`.
      precision_ks: cut-offs for precision@K (hits in the top K / min(K, N)), keys `p@K`.
      recall_ks: cut-offs for recall@K (hits in the top K / relevant in the database), `r@K`.
      radius: Hamming sources only: also report precision and recall of the items within
        distance <= radius (keys `p@rR`, `r@rR`; precision 0 when nothing is within radius).
      denominator: AP@K denominator, `"relevant_in_topk"` or `"min_relevant_k"`.
      empty: `"zero"` (queries without any relevant item count as 0) or `"skip"` (left out of
        every mean; NaN if all are left out).
      ties: `"stable"`, `"random"` (with `seed`) or `"expected"` (exact tie-aware expectation).
      seed: seed of the `ties="random"` permutation (`tie_permutation`).
      query_chunk: queries per device per step (None: sized to a memory budget).
      db_chunk: database items per streamed chunk (None: about 16k; <= 32767 for Hamming).
      mesh: optional one-axis "data" mesh; queries are sharded over it.

    Returns:
      Dict of Python floats keyed `map@all`, `map@K`, `p@K`, `r@K` (`p@rR`, `r@rR`), plus
      `conventions`: a dict describing the options used, to be written next to the numbers.

    Raises:
      ValueError: unknown option, empty database or query set, mismatched or unknown label
        kinds, bad K, radius on a non-Hamming source, NaN/Inf scores.

    Examples:
      >>> src = scores_source(jnp.array([[3.0, 2.0, 1.0]]))
      >>> res = retrieval_metrics(src, jnp.array([1]), jnp.array([0, 1, 1]))
      >>> round(res["map@all"], 4)  # (1/2 + 2/3) / 2
      0.5833
    """
    _validate_common(source, denominator, empty, ties)
    n = source.num_items
    map_ks = _normalize_ks(map_ks, "map_ks", True)
    precision_ks = _normalize_ks(precision_ks, "precision_ks", False)
    recall_ks = _normalize_ks(recall_ks, "recall_ks", False)
    if radius is not None and source.kind != "hamming":
        raise ValueError(f"radius metrics need a hamming_source, got a {source.kind} source.")
    if radius is not None and not 0 <= int(radius) <= source.num_bits:
        raise ValueError(f"radius must lie in [0, {source.num_bits}], got {radius}.")
    ql, dl, multi = _prepare_labels(query_labels, db_labels, source.num_queries, n)
    clip = lambda k: min(k, n)  # noqa: E731
    cuts = tuple(
        sorted(
            {clip(k) for k in map_ks if k != -1}
            | {clip(k) for k in precision_ks}
            | {clip(k) for k in recall_ks}
        )
    )
    stats, hist = _rank_stats(source, ql, dl, multi, cuts, ties, seed, query_chunk, db_chunk, mesh)
    R = np.asarray(stats["R"], np.float64)
    has_rel = R > 0
    col = {K: i for i, K in enumerate(cuts)}
    result: dict[str, Any] = {}
    cache = {}

    def cut(K):
        if K not in cache:
            cache[K] = _cut_metrics(stats, col[K], K, ties == "expected", denominator)
        return cache[K]

    for k in map_ks:
        if k == -1:
            ap = np.divide(
                stats["ap_sum"].astype(np.float64), R, out=np.zeros_like(R), where=has_rel
            )
            result["map@all"] = _mean(ap, has_rel, empty)
        else:
            result[f"map@{k}"] = _mean(cut(clip(k))[1], has_rel, empty)
    for k in precision_ks:
        result[f"p@{k}"] = _mean(cut(clip(k))[0] / clip(k), has_rel, empty)
    for k in recall_ks:
        hits = cut(clip(k))[0]
        result[f"r@{k}"] = _mean(
            np.divide(hits, R, out=np.zeros_like(R), where=has_rel), has_rel, empty
        )
    extra = None
    if radius is not None:
        pr = _radius_curves(source, ql, dl, multi, query_chunk, db_chunk, mesh, hist)
        result[f"p@r{radius}"] = _mean(pr["precision"][:, radius], pr["has_rel"], empty)
        result[f"r@r{radius}"] = _mean(pr["recall"][:, radius], pr["has_rel"], empty)
        extra = {"radius_precision_when_nothing_retrieved": 0.0}
    result["conventions"] = _conventions(
        source,
        denominator=denominator,
        empty=empty,
        ties=ties,
        seed=seed,
        multi_label=multi,
        extra=extra,
    )
    return result


def _radius_curves(source, ql, dl, multi, query_chunk, db_chunk, mesh, hist=None):
    """Per-query precision and recall of the items within each radius 0..b."""
    h = hist
    if h is None:
        h = _run(
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


def hamming_radius_pr(
    source: ScoreSource,
    query_labels,
    db_labels,
    *,
    radius: int = 2,
    empty: str = "zero",
    query_chunk: int | None = None,
    db_chunk: int | None = None,
    mesh: jax.sharding.Mesh | None = None,
) -> dict[str, Any]:
    """Precision and recall of the items within Hamming distance <= radius (default 2).

    Per query, precision = relevant retrieved / retrieved, and **0 when nothing lies within
    the radius**; recall = relevant retrieved / relevant in the database. Means follow `empty`
    (queries without relevant items count as 0, or are skipped). Ties do not matter here.

    Args:
      source: a `hamming_source`.
      query_labels: [Q] ids or [Q, C] multi-hot.
      db_labels: [N] ids or [N, C] multi-hot.
      radius: Hamming radius r in 0..b.
      empty: `"zero"` or `"skip"`.
      query_chunk: queries per device per step (None: automatic).
      db_chunk: database items per chunk (<= 32767; None: automatic).
      mesh: optional "data" mesh.

    Returns:
      {"precision": float, "recall": float, "conventions": dict}.

    Raises:
      ValueError: non-Hamming source, radius outside 0..b, bad labels or options.
    """
    _validate_common(source, DENOMINATORS[0], empty, "stable")
    if source.kind != "hamming":
        raise ValueError(f"hamming_radius_pr needs a hamming_source, got {source.kind}.")
    if not 0 <= int(radius) <= source.num_bits:
        raise ValueError(f"radius must lie in [0, {source.num_bits}], got {radius}.")
    ql, dl, multi = _prepare_labels(query_labels, db_labels, source.num_queries, source.num_items)
    pr = _radius_curves(source, ql, dl, multi, query_chunk, db_chunk, mesh)
    return {
        "precision": _mean(pr["precision"][:, radius], pr["has_rel"], empty),
        "recall": _mean(pr["recall"][:, radius], pr["has_rel"], empty),
        "conventions": {
            "radius": int(radius),
            "precision_when_nothing_retrieved": 0.0,
            "empty": empty,
            "relevance": "shares >= 1 label" if multi else "same class id",
        },
    }


def pr_curve(
    source: ScoreSource,
    query_labels,
    db_labels,
    *,
    by: str = "rank",
    cutoffs: Sequence[int] | None = None,
    empty: str = "zero",
    ties: str = "stable",
    seed: int = 0,
    query_chunk: int | None = None,
    db_chunk: int | None = None,
    mesh: jax.sharding.Mesh | None = None,
) -> dict[str, Any]:
    """Mean precision-recall curve by rank cut-off or by Hamming radius.

    `by="rank"`: at each cut-off K (clipped to N), precision = hits in the top K / K and
    recall = hits / relevant, under the tie rule `ties`. `by="radius"` (Hamming only): at each
    radius r = 0..b, the items within distance <= r (precision 0 when none; ties irrelevant).

    Args:
      source: a `ScoreSource` (a `hamming_source` for `by="radius"`).
      query_labels: [Q] ids or [Q, C] multi-hot.
      db_labels: [N] ids or [N, C] multi-hot.
      by: `"rank"` or `"radius"`.
      cutoffs: rank cut-offs (default: 100 ranks spread evenly over 1..N).
      empty: `"zero"` or `"skip"` for queries without relevant items.
      ties: `"stable"`, `"random"` or `"expected"` (rank curves only).
      seed: seed for `ties="random"`.
      query_chunk: queries per device per step.
      db_chunk: database items per chunk.
      mesh: optional "data" mesh.

    Returns:
      {"precision": [P] float64, "recall": [P] float64, "cutoffs" or "radius": [P] int64,
      "conventions": dict}.

    Raises:
      ValueError: unknown `by`, radius curve for a non-Hamming source, bad cut-offs or options.
    """
    _validate_common(source, DENOMINATORS[0], empty, ties)
    _check_option(by, ("rank", "radius"), "by")
    n = source.num_items
    ql, dl, multi = _prepare_labels(query_labels, db_labels, source.num_queries, n)
    if by == "radius":
        if source.kind != "hamming":
            raise ValueError(f"by='radius' needs a hamming_source, got {source.kind}.")
        pr = _radius_curves(source, ql, dl, multi, query_chunk, db_chunk, mesh)
        has = pr["has_rel"]
        return {
            "precision": np.array([_mean(c, has, empty) for c in pr["precision"].T]),
            "recall": np.array([_mean(c, has, empty) for c in pr["recall"].T]),
            "radius": np.arange(source.num_bits + 1),
            "conventions": {
                "by": "radius",
                "empty": empty,
                "precision_when_nothing_retrieved": 0.0,
            },
        }
    if cutoffs is None:
        cutoffs = np.unique(np.linspace(1, n, num=min(n, 100)).round().astype(np.int64))
    ks = _normalize_ks(tuple(int(c) for c in cutoffs), "cutoffs", False)
    cuts = tuple(sorted({min(k, n) for k in ks}))
    stats, _ = _rank_stats(source, ql, dl, multi, cuts, ties, seed, query_chunk, db_chunk, mesh)
    R = np.asarray(stats["R"], np.float64)
    has = R > 0
    col = {K: i for i, K in enumerate(cuts)}
    prec, rec = [], []
    for k in ks:
        hits, _ = _cut_metrics(
            stats, col[min(k, n)], min(k, n), ties == "expected", "min_relevant_k"
        )
        prec.append(_mean(hits / min(k, n), has, empty))
        rec.append(_mean(np.divide(hits, R, out=np.zeros_like(R), where=has), has, empty))
    return {
        "precision": np.asarray(prec),
        "recall": np.asarray(rec),
        "cutoffs": np.asarray(ks, np.int64),
        "conventions": _conventions(
            source,
            denominator="n/a",
            empty=empty,
            ties=ties,
            seed=seed,
            multi_label=multi,
            extra={"by": "rank"},
        ),
    }


def map_from_scores(
    scores,
    query_labels,
    db_labels,
    *,
    k: int = -1,
    higher_is_better: bool = True,
    denominator: str = "relevant_in_topk",
    empty: str = "zero",
    ties: str = "stable",
    seed: int = 0,
    mesh: jax.sharding.Mesh | None = None,
) -> float:
    """mAP@k of a [Q, N] score (or distance) matrix; defaults as in `retrieval_metrics`.

    Args:
      scores: [Q, N] scores (higher = better), or distances with `higher_is_better=False`.
      query_labels: [Q] ids or [Q, C] multi-hot.
      db_labels: [N] ids or [N, C] multi-hot.
      k: cut-off, -1 for all (K > N is clipped to N).
      higher_is_better: False when `scores` are distances.
      denominator: `"relevant_in_topk"` or `"min_relevant_k"`.
      empty: `"zero"` or `"skip"`.
      ties: `"stable"`, `"random"` or `"expected"`.
      seed: seed for `ties="random"`.
      mesh: optional "data" mesh.

    Returns:
      The mAP as a Python float.

    Raises:
      ValueError: as `retrieval_metrics`.

    Examples:
      >>> map_from_scores(jnp.array([[1.0, 1.0]]), jnp.array([0]), jnp.array([1, 0]),
      ...                 ties="expected")
      0.75
    """
    src = scores_source(scores, higher_is_better=higher_is_better)
    res = retrieval_metrics(
        src,
        query_labels,
        db_labels,
        map_ks=(k,),
        precision_ks=(),
        denominator=denominator,
        empty=empty,
        ties=ties,
        seed=seed,
        mesh=mesh,
    )
    return res["map@all" if k == -1 else f"map@{k}"]


def conventions_note() -> str:
    """Short text stating the defaults, for logs next to reported numbers."""
    return (
        "mAP conventions: denominator=relevant_in_topk, empty=zero, ties=stable (by database "
        "index), K=-1 is all, K>N clipped to N; Hamming-radius precision is 0 when nothing is "
        "retrieved."
    )


__all__ = [
    "DENOMINATORS",
    "EMPTY_RULES",
    "TIE_RULES",
    "adc_scores",
    "adc_source",
    "conventions_note",
    "dense_scores",
    "dense_source",
    "distance_histograms",
    "distance_rank_stats",
    "expected_group_share",
    "format_metrics",
    "hamming_distances",
    "hamming_radius_pr",
    "hamming_source",
    "map_from_scores",
    "order_keys",
    "pack_bits",
    "pr_curve",
    "relevance",
    "relevant_rank_stats",
    "retrieval_metrics",
    "scores_source",
    "ScoreSource",
    "tie_permutation",
]
