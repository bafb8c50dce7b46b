"""Retrieval metrics on device: mAP@K, precision/recall@K, PR curves, Hamming-radius P/R.

Every convention is an explicit option, recorded in the `conventions` entry of each result
(PROTOCOLS.md, "Metric conventions"):

* `denominator` (AP@K): `"relevant_in_topk"` (hits found in the top K; DPQ, DeepHash-pytorch,
  HashNet) or `"min_relevant_k"` (min(#relevant in the database, K)). For K = all they agree.
* `empty`: a query with no relevant item *in the whole database* counts as 0 (`"zero"`,
  default) or is left out of every mean (`"skip"`). A query that has relevant items but none in
  its top K always scores AP@K = 0.
* `ties`: `"stable"` (default; tied items ranked by database index), `"random"` (tied items
  ranked by a seeded permutation, `dpq_jax.search.topk.tie_permutation`; one permutation shared by all queries,
  so for each query the order of its ties is uniform), or `"expected"` (the exact expectation of
  the metric over all orderings of tied items; McSherry & Najork 2008).
* K: `-1` means the whole database ("all"). Any K > N is clipped to N (documented rule, no
  error): `map@1000` on a 700-item database is mAP@700 and is reported under the requested key.
* Relevance: single-label ids `[Q]`/`[N]` (same id) or multi-hot `[Q, C]`/`[N, C]` (relevant =
  shares at least one label; any non-zero entry is a label).
* Hamming radius: precision within radius r is 0 for a query that retrieves nothing.

Scores come from a `ScoreSource` (`sources.py`: dense features, ADC over PQ codes,
packed-bit Hamming, or a precomputed score matrix); higher scores rank first, distances are
negated. ADC and Hamming scores use the search kernels, and `ties="random"` the search's
`tie_permutation`, so the metrics rank exactly as `dpq_jax.search` does. Class ids of any
integer dtype and range are accepted (mapped to dense int32 ids on the host).

Layout of the package: `sources.py` (score sources), `rank_stats.py` (on-device rank
statistics), `engine.py` (the chunked / sharded engine, with the algorithms and their costs),
`finish.py` (the float64 tie-aware finish) and this module, the public API. With a mesh
(`dpq_jax.parallel.make_mesh`), queries are split over the "data" axis; results are identical
with and without a mesh.

References:
  F. McSherry and M. Najork, "Computing Information Retrieval Performance Measures Efficiently
  in the Presence of Tied Scores", ECIR 2008 (tie-aware AP: the expected precision at each rank
  of a tie group).
  H. Jegou, M. Douze, C. Schmid, "Product Quantization for Nearest Neighbor Search", TPAMI 2011
  (asymmetric distance computation, Sec. IV-A, Eq. 13).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from dpq_jax.metrics import engine, finish
from dpq_jax.metrics.sources import (
    SOURCE_KINDS,
    ScoreSource,
    adc_source,
    dense_source,
    hamming_source,
    scores_source,
)

DENOMINATORS = ("relevant_in_topk", "min_relevant_k")
EMPTY_RULES = ("zero", "skip")
TIE_RULES = ("stable", "random", "expected")


def _check_option(value, allowed, name):
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}.")


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
      >>> src = scores_source(np.array([[3.0, 2.0, 1.0]]))
      >>> res = retrieval_metrics(src, np.array([1]), np.array([0, 1, 1]))
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
    ql, dl, multi = engine.prepare_labels(query_labels, db_labels, source.num_queries, n)
    clip = lambda k: min(k, n)  # noqa: E731
    cuts = tuple(
        sorted(
            {clip(k) for k in map_ks if k != -1}
            | {clip(k) for k in precision_ks}
            | {clip(k) for k in recall_ks}
        )
    )
    stats, hist = engine.collect_stats(
        source, ql, dl, multi, cuts, ties, seed, query_chunk, db_chunk, mesh
    )
    R = np.asarray(stats["R"], np.float64)
    has_rel = R > 0
    col = {K: i for i, K in enumerate(cuts)}
    result: dict[str, Any] = {}
    cache = {}

    def cut(K):
        if K not in cache:
            cache[K] = finish.cut_metrics(stats, col[K], K, ties == "expected", denominator)
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
        pr = engine.radius_curves(source, ql, dl, multi, query_chunk, db_chunk, mesh, hist)
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
    ql, dl, multi = engine.prepare_labels(
        query_labels, db_labels, source.num_queries, source.num_items
    )
    pr = engine.radius_curves(source, ql, dl, multi, query_chunk, db_chunk, mesh)
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
    ql, dl, multi = engine.prepare_labels(query_labels, db_labels, source.num_queries, n)
    if by == "radius":
        if source.kind != "hamming":
            raise ValueError(f"by='radius' needs a hamming_source, got {source.kind}.")
        pr = engine.radius_curves(source, ql, dl, multi, query_chunk, db_chunk, mesh)
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
    stats, _ = engine.collect_stats(
        source, ql, dl, multi, cuts, ties, seed, query_chunk, db_chunk, mesh
    )
    R = np.asarray(stats["R"], np.float64)
    has = R > 0
    col = {K: i for i, K in enumerate(cuts)}
    prec, rec = [], []
    for k in ks:
        hits, _ = finish.cut_metrics(
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
      >>> map_from_scores(np.array([[1.0, 1.0]]), np.array([0]), np.array([1, 0]),
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
    "SOURCE_KINDS",
    "TIE_RULES",
    "ScoreSource",
    "adc_source",
    "conventions_note",
    "dense_source",
    "format_metrics",
    "hamming_radius_pr",
    "hamming_source",
    "map_from_scores",
    "pr_curve",
    "retrieval_metrics",
    "scores_source",
]
