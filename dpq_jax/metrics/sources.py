"""Score sources: where the retrieval metrics get their scores from.

A `ScoreSource` pairs query-side and database-side arrays with the rule that combines them:
dense features (inner product or negative squared L2), ADC over PQ codes, Hamming distances
of packed bits, or a precomputed score matrix. Higher scores rank first; distances are
negated. ADC and Hamming scores come from the search kernels (`dpq_jax.search.kernels`), so
the metrics rank exactly what the search returns.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp
import numpy as np
from jax import lax

from dpq_jax.metrics import rank_stats
from dpq_jax.search import kernels
from dpq_jax.typing import Array, Float

SOURCE_KINDS = ("dense_ip", "dense_neg_l2", "adc", "hamming", "scores")


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


def as_array(x, name: str):
    """`x` as an array (NumPy unless it already is one) with a leading batch axis."""
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
    q, x = as_array(query_feats, "query_feats"), as_array(db_feats, "db_feats")
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
    lut, c = as_array(luts, "luts"), as_array(codes, "codes")
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
      query_packed: [Q, W] unsigned words (uint32 from `dpq_jax.search.kernels.pack_bits`, or
        uint8/uint16), least significant bit first.
      db_packed: [N, W] words of the same dtype.
      num_bits: b, the code length; distances lie in 0..b.

    Returns:
      A `ScoreSource`.

    Raises:
      ValueError: wrong shapes or dtypes, b larger than the words hold, or bits set beyond b
        (which would make distances exceed b).
    """
    q, x = as_array(query_packed, "query_packed"), as_array(db_packed, "db_packed")
    if q.ndim != 2 or x.ndim != 2 or q.shape[1] != x.shape[1] or q.dtype != x.dtype:
        raise ValueError(
            f"hamming_source needs query_packed [Q, W] and db_packed [N, W] with the same W and "
            f"dtype; got {tuple(q.shape)} {q.dtype} and {tuple(x.shape)} {x.dtype}."
        )
    if not jnp.issubdtype(q.dtype, jnp.unsignedinteger):
        raise ValueError(
            f"Packed codes must be unsigned integers, got {q.dtype}; pack 0/1 bits or +-1 signs "
            f"with dpq_jax.search.kernels.pack_bits."
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
    s = as_array(scores, "scores")
    if s.ndim != 2:
        raise ValueError(f"scores must be [Q, N], got shape {tuple(s.shape)}.")
    return ScoreSource("scores", s, None, int(s.shape[1]), negate=not higher_is_better)


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


def block_keys(kind: str, negate: bool, qd, xd, db_chunk: int):
    """Ascending int32 sort keys of one (query chunk, database chunk) block, and bad-score flags.

    ADC and Hamming scores come from the search kernels (`dpq_jax.search.kernels`), so they
    are bitwise the scores the search ranks by.

    Args:
      kind: the source kind (`SOURCE_KINDS`).
      negate: the source's values are distances.
      qd: query-side block ([q, D] features, [q, M, K] LUTs, [q, W] packed bits, or the [q, N]
        score rows).
      xd: database chunk ([c, ...]), or the chunk number for precomputed scores.
      db_chunk: c, items per database chunk.

    Returns:
      ([q, c] int32 keys, lower ranks first; [q, c] bool non-finite scores, or None for
      Hamming distances): `rank_stats.order_keys` of the negated scores, or the distances.
    """
    if kind == "hamming":
        return kernels.popcount_distances(qd, xd).T, None  # [q, c]
    if kind == "adc":
        s = kernels.scores_gather(qd, xd).T  # [q, c]
    elif kind == "scores":
        s = lax.dynamic_slice_in_dim(qd, xd * db_chunk, db_chunk, axis=1).astype(jnp.float32)
    else:
        s = dense_scores(qd, xd, "ip" if kind == "dense_ip" else "neg_l2")
    return rank_stats.order_keys(s if negate else -s), ~jnp.isfinite(s)
