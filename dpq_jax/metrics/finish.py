"""The tie-aware finish: per-query rank statistics to metric values, in float64 on the host.

The device kernels (`rank_stats.py`) return per-query counts and partial sums. The last step
for cut-offs (and for everything on the Hamming histogram path) needs the hypergeometric law of
the hits inside a tie group cut by rank K and harmonic-number differences, which float32
cannot hold for N up to 10M (JAX x64 is off), so it runs here in NumPy over arrays of size
Q x (number of cut-offs).

References:
  F. McSherry and M. Najork, "Computing Information Retrieval Performance Measures Efficiently
  in the Presence of Tied Scores", ECIR 2008 (expected precision at each rank of a tie group).
"""

from __future__ import annotations

import numpy as np

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


def harmonic_diff(start, m):
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
    dh = harmonic_diff(A, m)
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


def cut_metrics(stats, j, K, expected, denominator):
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


def hist_stats(tot, rel, cuts):
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
