"""Slow, obviously correct NumPy/Python twins of `dpq_jax.metrics.retrieval` (test oracles).

Everything here loops over queries and ranks one item at a time, in plain Python, with exact
rational arithmetic (`fractions.Fraction`) for tie-aware expectations. Nothing is vectorized or
clever, so the code can be checked by reading it against the definitions:

* Ranking: items sorted by (score descending, tie key ascending); the tie key is the database
  index (`"stable"`) or the position of the item in `np.random.default_rng(seed).permutation(N)`
  (`"random"`).
* AP@K = (sum over hits in the top K of precision at that hit) / denominator, with denominator
  = hits in the top K (`"relevant_in_topk"`) or min(#relevant, K) (`"min_relevant_k"`); 0 when
  the denominator is 0. K = -1 means all; K > N is clipped to N.
* `"expected"`: the mean of the metric over all orderings of tied items, computed per rank
  from the definition of expectation (McSherry & Najork 2008); `brute_force_expected` averages
  over every ordering explicitly and checks it on tiny inputs.

References:
  F. McSherry and M. Najork, "Computing Information Retrieval Performance Measures Efficiently
  in the Presence of Tied Scores", ECIR 2008.
"""

from __future__ import annotations

import itertools
import math
import struct
from fractions import Fraction

import numpy as np


def relevance_matrix(query_labels, db_labels) -> np.ndarray:
    """[Q, N] bool: same class id (1-D labels) or at least one shared label (multi-hot)."""
    ql, dl = np.asarray(query_labels), np.asarray(db_labels)
    out = np.zeros((ql.shape[0], dl.shape[0]), bool)
    for i in range(ql.shape[0]):
        for n in range(dl.shape[0]):
            if ql.ndim == 1:
                out[i, n] = ql[i] == dl[n]
            else:
                out[i, n] = any(ql[i, c] != 0 and dl[n, c] != 0 for c in range(ql.shape[1]))
    return out


def pack_bits(bits) -> np.ndarray:
    """[n, b] codes -> [n, ceil(b/32)] uint32, bit i in word i // 32 at position i % 32.

    A value is a 1-bit when it is > 0 (as `dpq_jax.search.kernels.pack_bits`): {0, 1} bits and
    {-1, +1} signs pack the same way.
    """
    bits = np.asarray(bits)
    n, b = bits.shape
    words = np.zeros((n, -(-b // 32)), np.uint32)
    for r in range(n):
        for i in range(b):
            if bits[r, i] > 0:
                words[r, i // 32] |= np.uint32(1 << (i % 32))
    return words


def hamming_distances(query_packed, db_packed) -> np.ndarray:
    """[Q, N] int: number of differing bits, counted with Python's bin()."""
    q, x = np.asarray(query_packed), np.asarray(db_packed)
    out = np.zeros((q.shape[0], x.shape[0]), np.int64)
    for i in range(q.shape[0]):
        for n in range(x.shape[0]):
            out[i, n] = sum(bin(int(a) ^ int(b)).count("1") for a, b in zip(q[i], x[n]))
    return out


def adc_scores(luts, codes) -> np.ndarray:
    """[Q, N] float32: sum over m (in order) of luts[q, m, codes[n, m]]."""
    luts, codes = np.asarray(luts, np.float32), np.asarray(codes)
    out = np.zeros((luts.shape[0], codes.shape[0]), np.float32)
    for i in range(luts.shape[0]):
        for n in range(codes.shape[0]):
            acc = np.float32(0)
            for m in range(codes.shape[1]):
                acc = np.float32(acc + luts[i, m, codes[n, m]])
            out[i, n] = acc
    return out


def dense_scores(query_feats, db_feats, metric="ip") -> np.ndarray:
    """[Q, N] float64 inner products, or negative squared Euclidean distances."""
    q, x = np.asarray(query_feats, np.float64), np.asarray(db_feats, np.float64)
    out = np.zeros((q.shape[0], x.shape[0]))
    for i in range(q.shape[0]):
        for n in range(x.shape[0]):
            out[i, n] = q[i] @ x[n] if metric == "ip" else -np.sum((q[i] - x[n]) ** 2)
    return out


def tie_keys(num_items: int, ties: str, seed: int = 0) -> np.ndarray:
    """Secondary sort key per item: its index, or its position in the seeded permutation."""
    if ties == "random":
        perm = np.random.default_rng(seed).permutation(num_items)
        keys = np.empty(num_items, np.int64)
        keys[perm] = np.arange(num_items)
        return keys
    return np.arange(num_items)


def ranking(scores_row, keys) -> list[int]:
    """Item ids in ranked order: higher score first, then smaller tie key."""
    return sorted(range(len(scores_row)), key=lambda n: (-float(scores_row[n]), int(keys[n])))


def _clip(k, n):
    return n if k == -1 else min(k, n)


def ranked_average_precision(rel_ranked, k, denominator) -> float:
    """AP@k of one ranked 0/1 relevance list."""
    K = _clip(k, len(rel_ranked))
    hits, total = 0, 0.0
    for pos in range(1, K + 1):
        if rel_ranked[pos - 1]:
            hits += 1
            total += hits / pos
    den = hits if denominator == "relevant_in_topk" else min(int(sum(rel_ranked)), K)
    return total / den if den > 0 else 0.0


def _tie_groups(scores_row, rel_row):
    """[(t, r)] for each group of equal scores, best score first: size and #relevant."""
    groups = {}
    for s, r in zip(scores_row, rel_row):
        t, rr = groups.get(float(s), (0, 0))
        groups[float(s)] = (t + 1, rr + int(bool(r)))
    return [groups[s] for s in sorted(groups, reverse=True)]


def _expected_rel_prec(A, a, t, r, p, hits_in_group=None, m=None) -> Fraction:
    """E[rel * precision] at rank A + p of a tie group (t items, r relevant; a relevant above).

    Without `hits_in_group`: over all orderings of the group. With it: given that exactly
    `hits_in_group` relevant items fall in the group's first m ranks (uniformly placed).
    """
    if hits_in_group is None:
        n_slots, n_rel = t, r
    else:
        n_slots, n_rel = m, hits_in_group
    if n_rel == 0:
        return Fraction(0)
    p_rel = Fraction(n_rel, n_slots)
    # Given rank p is relevant, each of the p-1 earlier slots is relevant w.p.
    # (n_rel-1)/(n_slots-1): the expected number of relevant items before it in the group.
    before = Fraction((p - 1) * (n_rel - 1), n_slots - 1) if n_slots > 1 else Fraction(0)
    return p_rel * (a + 1 + before) / (A + p)


def expected_average_precision(scores_row, rel_row, k=-1, denominator="relevant_in_topk"):
    """Exact E[AP@k] over all orderings of tied items (Fractions; returns float)."""
    n = len(scores_row)
    K = _clip(k, n)
    R = int(sum(bool(r) for r in rel_row))
    A = a = 0
    s_above = Fraction(0)  # expected sum of rel*prec over ranks <= A
    for t, r in _tie_groups(scores_row, rel_row):
        if A + t < K:
            for p in range(1, t + 1):
                s_above += _expected_rel_prec(A, a, t, r, p)
            A, a = A + t, a + r
            continue
        m = K - A  # the cut falls in this group: its first m ranks are in the top K
        if denominator == "min_relevant_k":
            s = s_above + sum(_expected_rel_prec(A, a, t, r, p) for p in range(1, m + 1))
            den = min(R, K)
            return float(s / den) if den else 0.0
        total = Fraction(0)
        for h in range(0, min(m, r) + 1):
            prob = Fraction(math.comb(r, h) * math.comb(t - r, m - h), math.comb(t, m))
            if prob == 0 or a + h == 0:
                continue
            g = sum(_expected_rel_prec(A, a, t, r, p, h, m) for p in range(1, m + 1))
            total += prob * (s_above + g) / (a + h)
        return float(total)
    return 0.0  # unreachable for n >= 1


def expected_hits(scores_row, rel_row, k) -> Fraction:
    """E[#relevant in the top k] over tie orderings."""
    K = _clip(k, len(scores_row))
    A = a = 0
    for t, r in _tie_groups(scores_row, rel_row):
        if A + t >= K:
            return Fraction(a) + Fraction((K - A) * r, t)
        A, a = A + t, a + r
    return Fraction(a)


def brute_force_expected(scores_row, rel_row, metric) -> float:
    """Average of metric(ranked 0/1 list) over every ordering of tied items (tiny inputs)."""
    groups = {}
    for s, r in zip(scores_row, rel_row):
        groups.setdefault(float(s), []).append(int(bool(r)))
    ordered = [groups[s] for s in sorted(groups, reverse=True)]
    per_group = [list(itertools.permutations(g)) for g in ordered]
    total, count = 0.0, 0
    for combo in itertools.product(*per_group):
        ranked = [x for grp in combo for x in grp]
        total += metric(ranked)
        count += 1
    return total / count


def _per_query(scores, rel, ties, seed, fn):
    scores = np.asarray(scores)
    keys = tie_keys(scores.shape[1], ties, seed)
    out = []
    for i in range(scores.shape[0]):
        if ties == "expected":
            out.append(fn(scores[i], rel[i], None))
        else:
            order = ranking(scores[i], keys)
            out.append(fn(scores[i], rel[i], [int(rel[i, n]) for n in order]))
    return np.asarray(out, np.float64)


def _mean(values, has_rel, empty):
    if empty == "skip":
        return float(values[has_rel].mean()) if has_rel.any() else float("nan")
    return float(values.mean())


def retrieval_metrics(
    scores,
    query_labels,
    db_labels,
    *,
    map_ks=(-1,),
    precision_ks=(5,),
    recall_ks=(),
    denominator="relevant_in_topk",
    empty="zero",
    ties="stable",
    seed=0,
) -> dict[str, float]:
    """Oracle for `retrieval.retrieval_metrics` from a dense [Q, N] score matrix."""
    rel = relevance_matrix(query_labels, db_labels)
    scores = np.asarray(scores)
    n = scores.shape[1]
    R = rel.sum(axis=1)
    has = R > 0
    res = {}
    for k in map_ks:

        def ap_fn(s, r, ranked, k=k):
            if ties == "expected":
                return expected_average_precision(s, r, k, denominator)
            return ranked_average_precision(ranked, k, denominator)

        res["map@all" if k == -1 else f"map@{k}"] = _mean(
            _per_query(scores, rel, ties, seed, ap_fn), has, empty
        )

    def hits_fn(k):
        if ties == "expected":
            return lambda s, r, _: float(expected_hits(s, r, k))
        return lambda s, r, ranked: float(sum(ranked[: _clip(k, n)]))

    for k in precision_ks:
        h = _per_query(scores, rel, ties, seed, hits_fn(k))
        res[f"p@{k}"] = _mean(h / _clip(k, n), has, empty)
    for k in recall_ks:
        h = _per_query(scores, rel, ties, seed, hits_fn(k))
        res[f"r@{k}"] = _mean(np.where(has, h / np.maximum(R, 1), 0.0), has, empty)
    return res


def hamming_radius_pr(dist, rel, radius, empty="zero") -> tuple[float, float]:
    """Mean precision and recall of items with distance <= radius (precision 0 if none)."""
    dist, rel = np.asarray(dist), np.asarray(rel)
    precs, recs = [], []
    for i in range(dist.shape[0]):
        got = [n for n in range(dist.shape[1]) if dist[i, n] <= radius]
        good = sum(int(rel[i, n]) for n in got)
        precs.append(good / len(got) if got else 0.0)
        total = int(rel[i].sum())
        recs.append(good / total if total else 0.0)
    has = rel.sum(axis=1) > 0
    return _mean(np.asarray(precs), has, empty), _mean(np.asarray(recs), has, empty)


def pr_curve_rank(scores, rel, cutoffs, ties="stable", seed=0, empty="zero"):
    """Mean precision and recall at each rank cut-off ([P] arrays)."""
    scores, rel = np.asarray(scores), np.asarray(rel)
    n = scores.shape[1]
    R = rel.sum(axis=1)
    has = R > 0
    precs, recs = [], []
    for k in cutoffs:
        if ties == "expected":
            fn = lambda s, r, _, k=k: float(expected_hits(s, r, k))  # noqa: E731
        else:
            fn = lambda s, r, ranked, k=k: float(sum(ranked[: _clip(k, n)]))  # noqa: E731
        h = _per_query(scores, rel, ties, seed, fn)
        precs.append(_mean(h / _clip(k, n), has, empty))
        recs.append(_mean(np.where(has, h / np.maximum(R, 1), 0.0), has, empty))
    return np.asarray(precs), np.asarray(recs)


def order_keys(values) -> np.ndarray:
    """int32 keys in the order of the float32 values, from their IEEE-754 bits."""
    flat = np.asarray(values, np.float32).ravel()
    out = np.empty(flat.shape, np.int64)
    for i, v in enumerate(flat):
        v = 0.0 if v == 0 else float(v)  # -0.0 == +0.0
        (bits,) = struct.unpack("<I", struct.pack("<f", v))
        magnitude = bits & 0x7FFFFFFF  # exponent and mantissa grow with |v|
        # Positive values keep their magnitude bits; a negative value of larger magnitude is
        # smaller, so it maps further below zero.
        out[i] = magnitude if v >= 0 else -1 - magnitude
    return out.reshape(np.shape(values)).astype(np.int32)


def distance_histograms(dist, rel, valid, num_bits):
    """([q, b+1], [q, b+1]): counts of valid items, and of valid relevant items, per distance."""
    dist, rel, valid = np.asarray(dist), np.asarray(rel), np.asarray(valid)
    tot = np.zeros((dist.shape[0], num_bits + 1), np.int64)
    hit = np.zeros_like(tot)
    for i in range(dist.shape[0]):
        for n in range(dist.shape[1]):
            if valid[n]:
                tot[i, dist[i, n]] += 1
                hit[i, dist[i, n]] += int(bool(rel[i, n]))
    return tot, hit


def expected_group_share(above, size, rel_above, rel_in) -> float:
    """(1 / t) sum_{p=1}^{t} E[rel * precision] / (r / t) at rank A + p, in exact fractions."""
    A, t, a, r = int(above), int(size), int(rel_above), int(rel_in)
    total = Fraction(0)
    for p in range(1, t + 1):
        before = Fraction((p - 1) * (r - 1), t - 1) if t > 1 else Fraction(0)
        total += (a + 1 + before) / Fraction(A + p)
    return float(total / t)


def relevant_rank_stats(keys, rel_idx, num_rel, cuts, expected) -> dict[str, np.ndarray]:
    """Twin of `retrieval.relevant_rank_stats` (and, stable, of `distance_rank_stats`).

    Every item of each row is ranked explicitly.

    Items are ordered by (key, index); a row's relevant items are rel_idx[q, :num_rel[q]].
    """
    keys = np.asarray(keys)
    q, n = keys.shape
    out = {k: [] for k in ("R", "ap_sum", "hits", "S", "A", "t", "a", "trel", "S_above")}
    for i in range(q):
        rel = [0] * n
        for j in range(int(num_rel[i])):
            rel[int(rel_idx[i][j])] = 1
        order = sorted(range(n), key=lambda m, i=i: (int(keys[i, m]), m))
        ranked = [rel[m] for m in order]
        out["R"].append(sum(rel))
        if not expected:
            hits = list(itertools.accumulate(ranked))
            prec = [hits[p] / (p + 1) if ranked[p] else 0.0 for p in range(n)]
            out["ap_sum"].append(sum(prec))
            out["hits"].append([hits[K - 1] for K in cuts])
            out["S"].append([sum(prec[:K]) for K in cuts])
            continue
        groups = {}  # key -> (t, r), walked in ascending key order
        for m in range(n):
            t, r = groups.get(int(keys[i, m]), (0, 0))
            groups[int(keys[i, m])] = (t + 1, r + rel[m])
        A = a = 0
        s_groups, rows = [], []
        for key in sorted(groups):
            t, r = groups[key]
            share = expected_group_share(A, t, a, r) if r else 0.0
            s_groups.append(r * share)
            rows.append((A, t, a, r, sum(s_groups[:-1])))
            A, a = A + t, a + r
        out["ap_sum"].append(sum(s_groups))
        cut_rows = []
        for K in cuts:
            hit = [row for row in rows if row[0] < K <= row[0] + row[1]]
            A_k, t_k, a_k, r_k, s_k = hit[0]
            if r_k == 0:  # rank K in a group without relevant items
                A_k, t_k = K - 1, 1
            cut_rows.append((A_k, t_k, a_k, r_k, s_k))
        for name, col in zip(("A", "t", "a", "trel", "S_above"), zip(*cut_rows)):
            out[name].append(list(col))
    return {k: np.asarray(v, np.float64) for k, v in out.items() if v}
