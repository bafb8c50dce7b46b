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

Algorithms (all exact; nothing of size Q x N ever reaches the host):

* **Sort path** (any source, any tie rule). Queries are processed in chunks inside one jitted
  `lax.map`; for each chunk the database is streamed in chunks of `db_chunk` items (`lax.scan`)
  to build the score rows, which are sorted once on device (`lax.sort`, stable; ties by index,
  or by the random permutation applied to the database beforehand). Prefix sums over the ranked
  relevance give AP@all, AP@K, hits@K; for `"expected"`, tie groups are found on the sorted row
  (`cummax`/`cummin` of group boundaries) and the McSherry-Najork per-position expectation is
  summed. Cost O(Q N log N) time, O(query_chunk x N) device memory per device. Hamming
  distances are packed above the database index into one int32 key (`distance << 24 | index`,
  for b <= 126 and N <= 2**24), so a single-operand integer sort gives the stable order; float
  scores use a (key, index) pair sort.
* **Histogram path** (Hamming source with `ties="expected"`, and every Hamming-radius metric).
  Distances take only b+1 values, so per-query counts of all items and of relevant items at each
  distance (streamed over database chunks, O(query_chunk x (b+1)) memory, no sort) determine
  every tie-aware metric in closed form. Cost O(Q N (b+1)) simple integer work.

The last step, from per-query counts and partial sums to metric values, runs on the host in
float64 NumPy over arrays of size Q x (number of cut-offs): it needs the hypergeometric law of
the hits inside a cut tie group and harmonic-number differences, which float32 cannot hold for
N up to 10M (JAX x64 is off).

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
_DEFAULT_DB_CHUNK = 16384
# Elements of one query-chunk x database working set: sort path rows (about 40 bytes each
# across the sort and prefix sums) and histogram path (query, item) pairs per scan step.
_ROW_BUDGET = {"cpu": 1 << 21, "default": 1 << 25}
_PAIR_BUDGET = {"cpu": 1 << 22, "default": 1 << 23}
# Hamming sort keys pack the distance above a 24-bit database index (N_pad <= 2**24); the
# padding key int32 max decodes to distance 127, so real distances must stay below it.
_INDEX_BITS = 24
_MAX_PACKED_BITS = 126


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
      codes: [n, M] integer codes in [0, K).

    Returns:
      [q, n] float32 scores.

    References:
      Jegou et al., TPAMI 2011, Sec. IV-A, Eq. 13.
    """
    codes = codes.astype(jnp.int32)
    out = jnp.take(luts[:, 0, :], codes[:, 0], axis=1)  # [q, n]
    for m in range(1, luts.shape[1]):  # M is small and static; fixed order keeps sums exact
        out = out + jnp.take(luts[:, m, :], codes[:, m], axis=1)
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

    Both counts share one int32 per (query, distance): total in the low 16 bits, relevant in
    the high bits, so one compare-and-add per distance value serves both (n <= 32767).

    Args:
      dist: [q, n] int32 distances in 0..b.
      rel: [q, n] bool relevance.
      valid: [n] bool, False for padding items (not counted).
      num_bits: b.

    Returns:
      (total, relevant): two [q, b+1] int32 count arrays.
    """
    inc = jnp.where(valid[None, :], 1 + (rel.astype(jnp.int32) << 16), 0)  # [q, n]
    levels = jnp.arange(num_bits + 1, dtype=jnp.int32)
    packed = jnp.sum(
        jnp.where(dist[:, :, None] == levels, inc[:, :, None], 0), axis=1, dtype=jnp.int32
    )  # [q, b+1]
    return packed & 0xFFFF, packed >> 16


def ranked_stats(
    keys: Shaped[Array, "q n"],
    rel: Int[Array, "q n"],
    *,
    num_items: int,
    cuts: tuple[int, ...],
    expected: bool,
) -> dict[str, Array]:
    """Prefix statistics of ranked rows, from which every rank metric follows.

    Position k (1-based) holds the k-th ranked item; `keys` are ascending sort keys (negated
    scores; padding has key +inf and sorts last) and `rel` its relevance.

    Args:
      keys: [q, n_pad] ascending sort keys (any dtype; only equality of neighbours is used
        beyond the order), n_pad >= num_items.
      rel: [q, n_pad] 0/1 relevance in ranked order (0 on padding).
      num_items: N, the number of real items.
      cuts: cut-off ranks K, each in [1, N].
      expected: also compute tie-group statistics for tie-aware (expected) metrics.

    Returns:
      Dict of per-query arrays. Always `R` [q] (relevant items) and `ap_sum` [q]: the sum over
      relevant items of precision at their rank (ranked order), or with `expected` the sum over
      positions of E[rel_k * precision@k] over tie orders. Without `expected`: `hits` [q, c]
      (#relevant in the top K) and `S` [q, c] (sum of precision at hits within the top K).
      With `expected`, for the tie group containing rank K: `A` (#items ranked above it), `t`
      (its size), `a` (#relevant above), `trel` (#relevant in it), each [q, c] int32, and
      `S_above` [q, c] (expected precision sum over ranks <= A).

    References:
      McSherry & Najork, ECIR 2008 (tie-aware AP): for rank k inside a tie group with A items and a
      relevant items above it, t items and r relevant in it,
      E[rel_k prec_k] = (r / t) * (a + 1 + (k - A - 1) (r - 1) / (t - 1)) / k.
    """
    qn, n_pad = keys.shape
    rel = rel.astype(jnp.int32)
    hits = jnp.cumsum(rel, axis=1)  # [q, n_pad]
    pos = jnp.arange(1, n_pad + 1, dtype=jnp.float32)  # [n_pad]
    out = {"R": hits[:, num_items - 1]}
    kidx = np.asarray(cuts, dtype=np.int32) - 1  # static ranks -> 0-based columns
    if not expected:
        terms = rel.astype(jnp.float32) * hits.astype(jnp.float32) / pos  # [q, n_pad]
        s = jnp.cumsum(terms, axis=1)
        out["ap_sum"] = s[:, num_items - 1]
        out["hits"] = hits[:, kidx]
        out["S"] = s[:, kidx]
        return out
    k0 = jnp.arange(n_pad, dtype=jnp.int32)  # items ranked before position k0 + 1
    first = jnp.concatenate(
        [jnp.ones((qn, 1), bool), keys[:, 1:] != keys[:, :-1]], axis=1
    )  # [q, n_pad] group starts
    last = jnp.concatenate([keys[:, 1:] != keys[:, :-1], jnp.ones((qn, 1), bool)], axis=1)
    start = lax.cummax(jnp.where(first, k0, 0), axis=1)  # A: items before the group
    end = lax.cummin(jnp.where(last, k0 + 1, n_pad), axis=1, reverse=True)  # A + t
    hits0 = jnp.concatenate([jnp.zeros((qn, 1), jnp.int32), hits], axis=1)  # [q, n_pad + 1]
    a = jnp.take_along_axis(hits0, start, axis=1)
    trel = jnp.take_along_axis(hits0, end, axis=1) - a
    t = end - start
    frac = trel.astype(jnp.float32) / t.astype(jnp.float32)
    slope = (trel - 1).astype(jnp.float32) / jnp.maximum(t - 1, 1).astype(jnp.float32)
    terms = frac * ((a + 1).astype(jnp.float32) + (k0 - start).astype(jnp.float32) * slope)
    terms = terms / pos  # [q, n_pad] E[rel_k prec_k]
    s0 = jnp.concatenate([jnp.zeros((qn, 1), jnp.float32), jnp.cumsum(terms, axis=1)], axis=1)
    out["ap_sum"] = s0[:, num_items]
    a_b, e_b = start[:, kidx], end[:, kidx]  # [q, c]
    out["A"] = a_b
    out["t"] = e_b - a_b
    out["a"] = a[:, kidx]
    out["trel"] = trel[:, kidx]
    out["S_above"] = jnp.take_along_axis(s0, a_b, axis=1)
    return out


# ---------------------------------------------------------------------------------------------
# Jitted kernels.
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Plan:
    kind: str
    negate: bool
    num_bits: int
    path: str  # "sort" | "hist"
    expected: bool
    cuts: tuple[int, ...]
    num_items: int
    query_chunk: int
    db_chunk: int
    num_db_chunks: int
    mesh: Any


def _block_keys(plan: _Plan, qd, xd):
    """Ascending sort keys for one (query chunk, database chunk) block, and bad-score flags."""
    if plan.kind == "hamming":
        dist = hamming_distances(qd, xd)
        return dist.astype(jnp.float32), None
    if plan.kind == "adc":
        s = adc_scores(qd, xd)
    elif plan.kind == "scores":
        s = lax.dynamic_slice_in_dim(qd, xd * plan.db_chunk, plan.db_chunk, axis=1)
        s = s.astype(jnp.float32)
    else:
        s = dense_scores(qd, xd, "ip" if plan.kind == "dense_ip" else "neg_l2")
    key = s if plan.negate else -s
    key = jnp.where(key == 0, 0.0, key)  # -0.0 -> +0.0 so equal scores get equal keys
    return key, ~jnp.isfinite(s)


def _packed_hamming_sort(plan: _Plan) -> bool:
    """Whether (distance << 24 | index) fits an int32 key: one single-operand integer sort."""
    return (
        plan.kind == "hamming"
        and plan.num_bits <= _MAX_PACKED_BITS
        and (plan.num_db_chunks * plan.db_chunk <= (1 << _INDEX_BITS))
    )


def _sort_chunk(plan: _Plan, qd, ql, xd, xl, xv):
    qc = ql.shape[0]
    packed = _packed_hamming_sort(plan)

    def body(bad, xs):
        d, lab, v, j = xs
        rel = relevance(ql, lab) & v[None, :]
        if packed:
            # Distances are small ints: pack them above the database index so that a plain
            # integer sort (fast on CPU, keys-only radix on GPU) gives the stable order.
            idx = j * plan.db_chunk + jnp.arange(plan.db_chunk, dtype=jnp.int32)
            key = (hamming_distances(qd, d) << _INDEX_BITS) | idx[None, :]
            key = jnp.where(v[None, :], key, jnp.iinfo(jnp.int32).max)
            return bad, (key, rel.astype(jnp.int8))
        key, nonfinite = _block_keys(plan, qd, d)
        key = jnp.where(v[None, :], key, jnp.inf)  # padding ranks last
        if nonfinite is not None:
            bad = bad + jnp.sum(nonfinite & v[None, :], axis=1, dtype=jnp.int32)
        return bad, (key, rel.astype(jnp.int8))

    chunk_ids = jnp.arange(plan.num_db_chunks, dtype=jnp.int32)
    bad, (keys, rels) = lax.scan(body, jnp.zeros((qc,), jnp.int32), (xd, xl, xv, chunk_ids))
    n_pad = plan.num_db_chunks * plan.db_chunk
    keys = jnp.moveaxis(keys, 0, 1).reshape(qc, n_pad)  # [qc, N_pad]
    rels = jnp.moveaxis(rels, 0, 1).reshape(qc, n_pad)
    if packed:
        keys = lax.sort(keys, dimension=1)  # keys are unique: stability is implied
        order = keys & ((1 << _INDEX_BITS) - 1)
        keys = keys >> _INDEX_BITS  # the distance (padding: 127, after every real item)
    else:
        iota = lax.broadcasted_iota(jnp.int32, keys.shape, 1)
        # Stable sort: equal keys keep database order (index, or the random permutation).
        keys, order = lax.sort((keys, iota), dimension=1, is_stable=True, num_keys=1)
    rels = jnp.take_along_axis(rels, order, axis=1)
    out = ranked_stats(keys, rels, num_items=plan.num_items, cuts=plan.cuts, expected=plan.expected)
    out["bad"] = bad
    return out


def _hist_chunk(plan: _Plan, qd, ql, xd, xl, xv):
    qc = ql.shape[0]
    zeros = jnp.zeros((qc, plan.num_bits + 1), jnp.int32)

    def body(carry, xs):
        d, lab, v = xs
        dist = hamming_distances(qd, d)
        tot, rel = distance_histograms(dist, relevance(ql, lab), v, plan.num_bits)
        return (carry[0] + tot, carry[1] + rel), None

    (tot, rel), _ = lax.scan(body, (zeros, zeros), (xd, xl, xv))
    return {"tot": tot, "rel": rel}


def _local(plan: _Plan, q_data, q_lab, db_data, db_lab, db_valid):
    """Per-device work: all local query chunks against the whole database."""
    qc, nb, nc = plan.query_chunk, plan.num_db_chunks, plan.db_chunk
    nq = q_lab.shape[0] // qc
    qd = q_data.reshape((nq, qc) + q_data.shape[1:])
    ql = q_lab.reshape((nq, qc) + q_lab.shape[1:])
    xd = db_data if plan.kind == "scores" else db_data.reshape((nb, nc) + db_data.shape[1:])
    xl = db_lab.reshape((nb, nc) + db_lab.shape[1:])
    xv = db_valid.reshape(nb, nc)
    chunk = _sort_chunk if plan.path == "sort" else _hist_chunk
    out = lax.map(lambda a: chunk(plan, a[0], a[1], xd, xl, xv), (qd, ql))
    return {k: v.reshape((nq * qc,) + v.shape[2:]) for k, v in out.items()}


@functools.lru_cache(maxsize=64)
def _kernel(plan: _Plan):
    fn = functools.partial(_local, plan)
    if plan.mesh is not None:
        q_spec, db_spec = P(DATA_AXIS), P()
        fn = jax.shard_map(
            fn,
            mesh=plan.mesh,
            in_specs=(q_spec, q_spec, db_spec, db_spec, db_spec),
            out_specs=q_spec,
            check_vma=False,
        )
    return jax.jit(fn)


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


def _run(source, ql, dl, *, path, expected, cuts, ties, seed, query_chunk, db_chunk, mesh):
    """Runs one kernel over all queries; returns per-query NumPy arrays (padding dropped)."""
    n, nq_total = source.num_items, source.num_queries
    kind = source.kind
    ndev = 1 if mesh is None else int(mesh.devices.size)
    if db_chunk is None:
        nc = _balanced(n, _DEFAULT_DB_CHUNK, 8 if n >= 8 else 1)
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
    q_local = -(-nq_total // ndev)
    if query_chunk is None:
        if path == "sort":
            cap = _budget(_ROW_BUDGET, mesh) // n_pad
        else:
            cap = _budget(_PAIR_BUDGET, mesh) // nc
        qc = _balanced(q_local, min(cap, q_local))
    else:
        if int(query_chunk) < 1:
            raise ValueError(f"query_chunk must be >= 1, got {query_chunk}.")
        qc = int(query_chunk)
    nq_chunks = -(-q_local // qc)
    q_pad = ndev * nq_chunks * qc

    qdata = jnp.asarray(source.queries)
    dbdata = None if kind == "scores" else jnp.asarray(source.database)
    if ties == "random" and not expected:
        perm = jnp.asarray(tie_permutation(n, seed))
        dl = jnp.take(dl, perm, axis=0)
        if kind == "scores":
            qdata = jnp.take(qdata, perm, axis=1)
        else:
            dbdata = jnp.take(dbdata, perm, axis=0)

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

    plan = _Plan(
        kind=kind,
        negate=source.negate,
        num_bits=source.num_bits,
        path=path,
        expected=expected,
        cuts=cuts,
        num_items=n,
        query_chunk=qc,
        db_chunk=nc,
        num_db_chunks=nb,
        mesh=mesh,
    )
    args = (qdata, ql, dbdata, dl, valid)
    if mesh is not None:
        qs, rs = NamedSharding(mesh, P(DATA_AXIS)), NamedSharding(mesh, P())
        args = tuple(jax.device_put(a, s) for a, s in zip(args, (qs, qs, rs, rs, rs)))
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
    """Tie-group statistics (as `ranked_stats` with expected=True) from distance histograms."""
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


def _rank_stats(source, ql, dl, cuts, ties, seed, query_chunk, db_chunk, mesh):
    """Per-query rank statistics via the histogram path (Hamming, expected) or the sort path."""
    expected = ties == "expected"
    if source.kind == "hamming" and expected:
        h = _run(
            source,
            ql,
            dl,
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
        path="sort",
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
    stats, hist = _rank_stats(source, ql, dl, cuts, ties, seed, query_chunk, db_chunk, mesh)
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
        pr = _radius_curves(source, ql, dl, query_chunk, db_chunk, mesh, hist)
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


def _radius_curves(source, ql, dl, query_chunk, db_chunk, mesh, hist=None):
    """Per-query precision and recall of the items within each radius 0..b."""
    h = hist
    if h is None:
        h = _run(
            source,
            ql,
            dl,
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
    pr = _radius_curves(source, ql, dl, query_chunk, db_chunk, mesh)
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
        pr = _radius_curves(source, ql, dl, query_chunk, db_chunk, mesh)
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
    stats, _ = _rank_stats(source, ql, dl, cuts, ties, seed, query_chunk, db_chunk, mesh)
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
    "ScoreSource",
    "adc_scores",
    "adc_source",
    "conventions_note",
    "dense_scores",
    "dense_source",
    "distance_histograms",
    "format_metrics",
    "hamming_distances",
    "hamming_radius_pr",
    "hamming_source",
    "map_from_scores",
    "pack_bits",
    "pr_curve",
    "ranked_stats",
    "relevance",
    "retrieval_metrics",
    "scores_source",
    "tie_permutation",
]
