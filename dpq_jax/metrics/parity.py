"""Parity modes: the evaluation behaviour of two published codes, quirks included.

These functions exist to reproduce numbers reported with those codes. They are NumPy, run on
the host and materialize Q x N arrays exactly as the originals do, so use them for parity
checks only; `dpq_jax.metrics.retrieval` is the library's metric. Both rank with NumPy's
default `np.argsort` (introsort, not stable), so the order of tied items, and hence the
number, depends on the NumPy version and CPU; given the same arrays on the same NumPy they
reproduce the originals to the last bit, because they perform the same NumPy operations on
the same dtypes.

Written from the observed behaviour of:
* DeepHash-pytorch (swuxyj/DeepHash-pytorch, `utils/tools.py`, `CalcTopMap`), used by its
  DSH, HashNet, DPSH, ... trainers (`topK=-1` for CIFAR-10, 5000 for NUS-WIDE, 1000 for
  ImageNet).
* DPQ's evaluation (thulab DeepHash-style `mAP.AQD_mAP` in the DPQ code's `Utils.py`): asymmetric
  inner-product ranking of raw query features against progressively reconstructed database
  items.
"""

from __future__ import annotations

import numpy as np


def deephash_calc_topmap(rB, qB, retrievalL, queryL, topk: int) -> float:
    """mAP@topk exactly as DeepHash-pytorch's `CalcTopMap(rB, qB, retrievalL, queryL, topk)`.

    Quirks reproduced (all differ from `retrieval.retrieval_metrics`):
      1. `topk=-1` does not mean "all": the ranked list is sliced `[0:-1]`, which drops the
         last-ranked database item. A query whose only relevant items rank last loses them.
      2. Ranking by `np.argsort` of float Hamming distances 0.5 (b - q.r) from +-1 codes: an
         unstable sort, ties in implementation-defined order (neither by index nor random).
         Codes containing 0 (e.g. `torch.sign(0) = 0`) give half-integer distances.
      3. Denominator = hits found in the top `topk` ("relevant_in_topk").
      4. Queries with no hit in the top `topk` are skipped in the sum but counted in the
         division by Q: they score 0 (`empty="zero"` in effect).
      5. Relevance = `queryL[i] . retrievalL[n] > 0`: multi-hot (or one-hot) 0/1 labels; other
         encodings (e.g. -1 entries) silently change the rule.
      6. `topk > N` silently means N (slicing), and `topk = 0` gives 0.
      Note the argument order: database codes and labels come first.

    Args:
      rB: [N, b] database codes in {-1, +1} (any float or int dtype; it is kept).
      qB: [Q, b] query codes in {-1, +1}.
      retrievalL: [N, C] database labels, one-hot or multi-hot.
      queryL: [Q, C] query labels.
      topk: cut-off; -1 for the (quirky) "all".

    Returns:
      The mAP as a Python float.

    Raises:
      ValueError: shapes that do not match (the original would fail or broadcast wrongly).
    """
    rB, qB = np.asarray(rB), np.asarray(qB)
    retrievalL, queryL = np.asarray(retrievalL), np.asarray(queryL)
    if rB.ndim != 2 or qB.ndim != 2 or rB.shape[1] != qB.shape[1]:
        raise ValueError(f"rB [N, b] and qB [Q, b] must share b; got {rB.shape}, {qB.shape}.")
    if queryL.ndim != 2 or retrievalL.shape != (rB.shape[0], queryL.shape[1]):
        raise ValueError(
            f"Labels must be [Q, C] and [N, C] one-/multi-hot; got {queryL.shape}, "
            f"{retrievalL.shape} for Q={qB.shape[0]}, N={rB.shape[0]}."
        )
    num_bits = rB.shape[1]
    total = 0.0
    for i in range(queryL.shape[0]):
        relevant = (queryL[i, :] @ retrievalL.T > 0).astype(np.float32)
        hamming = 0.5 * (num_bits - qB[i, :] @ rB.T)
        top = relevant[np.argsort(hamming)][0:topk]  # quirk 1: topk=-1 -> [0:-1]
        num_hits = int(np.sum(top))
        if num_hits == 0:
            continue  # quirk 4: skipped here, still divided by Q below
        hit_ranks = np.flatnonzero(top == 1) + 1.0
        total = total + np.mean(np.linspace(1, num_hits, num_hits) / hit_ranks)
    return float(total / queryL.shape[0])


def thulab_quantize(codes, codebook, level: int | None = None) -> np.ndarray:
    """DPQ's progressive reconstruction: sum over the first `level` codebooks, float64.

    Args:
      codes: [N, M] integer codes.
      codebook: [M, K, D] codebooks (each level spans the full dimension D).
      level: number of levels to sum (default M).

    Returns:
      [N, D] float64 reconstructions (accumulated into zeros in level order, as the original).

    Raises:
      ValueError: level outside 1..M or mismatched shapes.
    """
    codes, codebook = np.asarray(codes), np.asarray(codebook)
    num_levels = codebook.shape[0]
    level = num_levels if level is None else int(level)
    if not 1 <= level <= num_levels:
        raise ValueError(f"level must lie in [1, {num_levels}], got {level}.")
    if codes.ndim != 2 or codebook.ndim != 3 or codes.shape[1] < level:
        raise ValueError(
            f"Need codes [N, M] and codebook [M, K, D] with at least {level} code columns; got "
            f"{codes.shape} and {codebook.shape}."
        )
    out = np.zeros([codes.shape[0], codebook.shape[2]])
    for m in range(level):
        out += codebook[m, codes[:, m]]
    return out


def thulab_aqd_map(query_output, db_reconstruction, query_labels, db_labels, R: int) -> float:
    """mAP@R exactly as the DPQ / thulab-style `AQD_mAP` for one quantization level.

    Ranking by the inner product of raw query features with reconstructed database items
    (asymmetric quantizer distance), top R, AP over hits.

    Quirks reproduced:
      1. `np.argsort(-scores, axis=1)`: unstable sort, ties in implementation-defined order.
      2. Relevance: query label entries equal to 0 are replaced by -1, then an item is relevant
         if any label position is equal; for 0/1 multi-hot labels this is "shares >= 1 label".
         (The original overwrites the caller's query labels in place; this function does not.)
      3. Denominator = hits in the top R; a query with no hit in the top R scores 0 and still
         counts in the mean (`empty="zero"`).
      4. R > N makes the original fail with a broadcasting error; here it raises ValueError.
      5. The original loops over levels 4, 3, 2, 1 and prints, returning nothing; call this
         once per level with `thulab_quantize(codes, codebook, level)`.

    Args:
      query_output: [Q, D] raw query features.
      db_reconstruction: [N, D] reconstructed database items (`thulab_quantize`).
      query_labels: [Q, C] one-/multi-hot labels.
      db_labels: [N, C] one-/multi-hot labels.
      R: cut-off (1 <= R <= N).

    Returns:
      The mAP@R as a Python float.

    Raises:
      ValueError: R outside 1..N, or label shapes that do not match.
    """
    q, x = np.asarray(query_output), np.asarray(db_reconstruction)
    ql, dl = np.asarray(query_labels), np.asarray(db_labels)
    n = x.shape[0]
    if not 1 <= int(R) <= n:
        raise ValueError(
            f"R={R} must lie in [1, N={n}] (the original crashes for R > N); pass R=N for all."
        )
    if ql.ndim != 2 or dl.shape != (n, ql.shape[1]) or ql.shape[0] != q.shape[0]:
        raise ValueError(
            f"Labels must be [Q, C] and [N, C]; got {ql.shape}, {dl.shape} for Q={q.shape[0]}, "
            f"N={n}."
        )
    order = np.argsort(-q.dot(x.T), 1)
    marked = np.where(ql == 0, -1, ql)  # quirk 2, without touching the caller's array
    match = np.sum(dl[order[:, :R]] == np.expand_dims(marked, 1), 2) > 0  # [Q, R]
    hits = np.sum(match, 1)
    precision = np.cumsum(match, 1).astype(float) / np.arange(1, R + 1, 1)
    ap = np.sum(precision * match, 1) / np.where(hits == 0, -1, hits)
    ap[ap < 0] = 0
    return float(np.mean(ap))


__all__ = ["deephash_calc_topmap", "thulab_aqd_map", "thulab_quantize"]
