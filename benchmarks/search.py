"""Benchmark: dpq_jax exact search vs FAISS on the same codes and queries, side by side.

For each code size the script builds one random database and one query set, exports the
database to FAISS with `dpq_jax.search.faiss_export` (our codebooks and codes, never
re-encoded), and times top-k search with both engines:

  PQ, K = 256, M in --ms:  dpq_jax `adc_topk` (LUT build + exact chunked top-k)
                           vs FAISS `IndexPQ` (inner product)
  PQ, K = 16,  M in --ms:  dpq_jax `adc_topk` vs FAISS `IndexPQ` (4-bit codes) and
                           `IndexPQFastScan` (SIMD, 8-bit quantized tables: approximate)
  Hamming, b in --bits:    dpq_jax `hamming_topk` vs FAISS `IndexBinaryFlat`

It prints seconds, database codes scanned per second (N * Q / time), queries per second, the
time ratio dpq_jax / FAISS `IndexPQ` (the CPU goal: at most 3), and how many of the FAISS
top-k ids dpq_jax also returns (1.0 up to float32 near-ties; below 1 for FastScan, which is
approximate). dpq_jax times exclude compilation (a first call on the same shapes is timed
separately as "compile+run"); FAISS gets one small warm-up search. Both include moving the
results to host memory. The load average is printed before and after: on a shared machine,
compare the ratios, not the absolute rates.

Run (defaults sized for a 2-core CPU; a few minutes):
  python benchmarks/search.py
The issue's sizes, for a bigger machine (the 10M x 10k case needs ~40 GB of RAM for FAISS's
result buffers and hours on 2 cores):
  python benchmarks/search.py --n 1000000 --q 10000
  python benchmarks/search.py --n 10000000 --q 1000
  python benchmarks/search.py --n 10000000 --q 10000
Options: --cases pq,fastscan,hamming  --ms 8,16  --bits 64,128  --k 100  --dim 128
  --faiss_threads N (0: FAISS's default, all cores)  --chunk_size / --query_chunk (dpq_jax).
"""

import argparse
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from dpq_jax.search import adc, faiss_export, hamming, kernels
from dpq_jax.search import index as index_lib


def _load() -> str:
    return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def _time(fn, repeats: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def _overlap(a: np.ndarray, b: np.ndarray) -> float:
    """Mean fraction of the ids in each row of `b` that row `a` also has."""
    return float(np.mean([len(set(x) & set(y)) / len(y) for x, y in zip(a, b, strict=True)]))


class Table:
    """Collects rows and prints them aligned, with the ratio to the row's FAISS baseline."""

    def __init__(self, n: int, q: int):
        self.n, self.q = n, q
        print(
            f"{'case':<18} {'engine':<26} {'seconds':>9} {'codes/s':>10} {'queries/s':>10} "
            f"{'vs FAISS':>9} {'same ids':>9}  note"
        )

    def row(self, case, engine, seconds, baseline=None, overlap=None, note=""):
        ratio = f"{seconds / baseline:8.2f}x" if baseline else f"{'':>9}"
        same = f"{overlap:9.3f}" if overlap is not None else f"{'':>9}"
        print(
            f"{case:<18} {engine:<26} {seconds:9.3f} {self.n * self.q / seconds:10.3g} "
            f"{self.q / seconds:10.1f} {ratio} {same}  {note}",
            flush=True,
        )


def bench_pq(args, table, m: int, k_codewords: int, fastscan: bool) -> None:
    rng = np.random.default_rng(args.seed + m + k_codewords)
    d = args.dim // m
    codebooks = rng.standard_normal((m, k_codewords, d)).astype(np.float32)
    codes = rng.integers(0, k_codewords, size=(args.n, m), dtype=np.uint8)
    queries = rng.standard_normal((args.q, m * d)).astype(np.float32)
    index = index_lib.PQIndex(codebooks, codes, method="random", metric="ip")
    case = f"PQ M={m} K={k_codewords}"

    # FAISS IndexPQ: the baseline of this case.
    fidx = faiss_export.to_faiss_pq(index)
    fidx.search(queries[:8], args.k)  # warm-up
    t_faiss, (_, f_ids) = _time(lambda: fidx.search(queries, args.k), args.repeats)
    table.row(case, "faiss IndexPQ", t_faiss, note=f"{fidx.pq.nbits}-bit codes")

    # dpq_jax: LUT build + exact chunked top-k, results on the host.
    db = jnp.asarray(codes)
    cb = jnp.asarray(codebooks)
    q_dev = jnp.asarray(queries)

    def run_jax():
        lut = adc.lut_inner_product(q_dev, cb)
        scores, ids = adc.adc_topk(
            lut, db, args.k, chunk_size=args.chunk_size, query_chunk=args.query_chunk
        )
        return np.asarray(scores), np.asarray(ids)

    t_first, _ = _time(run_jax, 1)
    t_jax, (_, j_ids) = _time(run_jax, args.repeats)
    table.row(
        case,
        "dpq_jax adc_topk",
        t_jax,
        t_faiss,
        _overlap(j_ids, f_ids),
        f"compile+run {t_first:.1f}s",
    )

    if fastscan:
        fast = faiss_export.to_faiss_pq_fastscan(index)
        fast.search(queries[:8], args.k)
        t_fast, (_, s_ids) = _time(lambda: fast.search(queries, args.k), args.repeats)
        table.row(
            case,
            "faiss IndexPQFastScan",
            t_fast,
            t_faiss,
            _overlap(s_ids, f_ids),
            "8-bit LUTs: approximate",
        )


def bench_hamming(args, table, num_bits: int) -> None:
    rng = np.random.default_rng(args.seed + num_bits)
    db_bits = rng.integers(0, 2, size=(args.n, num_bits), dtype=np.uint8)
    q_bits = rng.integers(0, 2, size=(args.q, num_bits), dtype=np.uint8)
    bindex = index_lib.BinaryIndex.from_bits(db_bits, method="random")
    del db_bits
    case = f"Hamming b={num_bits}"

    fidx = faiss_export.to_faiss_binary(bindex)
    fq = faiss_export.faiss_binary_queries(bindex, q_bits)
    fidx.search(fq[:8], args.k)
    t_faiss, (f_dist, f_ids) = _time(lambda: fidx.search(fq, args.k), args.repeats)
    table.row(case, "faiss IndexBinaryFlat", t_faiss)

    db = jnp.asarray(bindex.packed)
    q_packed = kernels.pack_bits(jnp.asarray(q_bits))

    def run_jax():
        dist, ids = hamming.hamming_topk(
            q_packed, db, args.k, chunk_size=args.chunk_size, query_chunk=args.query_chunk
        )
        return np.asarray(dist), np.asarray(ids)

    t_first, _ = _time(run_jax, 1)
    t_jax, (j_dist, j_ids) = _time(run_jax, args.repeats)
    same_dist = bool(np.array_equal(j_dist, f_dist))
    table.row(
        case,
        "dpq_jax hamming_topk",
        t_jax,
        t_faiss,
        _overlap(j_ids, f_ids),
        f"compile+run {t_first:.1f}s; distances {'equal' if same_dist else 'DIFFER'} "
        "(ids differ only among ties)",
    )


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--n", type=int, default=1_000_000, help="database size N")
    p.add_argument("--q", type=int, default=1000, help="number of queries Q")
    p.add_argument("--k", type=int, default=100, help="results per query")
    p.add_argument("--dim", type=int, default=128, help="embedding dimension D = M * d")
    p.add_argument("--ms", default="8,16", help="PQ codebook counts M")
    p.add_argument("--bits", default="64,128", help="Hamming code lengths")
    p.add_argument("--cases", default="pq,fastscan,hamming")
    p.add_argument("--repeats", type=int, default=1, help="timed runs per engine (best kept)")
    p.add_argument("--faiss_threads", type=int, default=0, help="0: FAISS's default")
    p.add_argument("--chunk_size", type=int, default=adc.DEFAULT_CHUNK_SIZE)
    p.add_argument("--query_chunk", type=int, default=adc.DEFAULT_QUERY_CHUNK)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    cases = set(args.cases.split(","))
    faiss = faiss_export.import_faiss()
    if args.faiss_threads:
        faiss.omp_set_num_threads(args.faiss_threads)
    print(
        f"N={args.n} Q={args.q} k={args.k} D={args.dim} | jax {jax.__version__} on "
        f"{jax.devices()[0].platform} ({jax.devices()[0].device_kind}), faiss "
        f"{faiss.__version__} with {faiss.omp_get_max_threads()} threads | {os.cpu_count()} "
        f"CPUs, {_load()}"
    )
    table = Table(args.n, args.q)
    for m in (int(x) for x in args.ms.split(",")):
        if "pq" in cases:
            bench_pq(args, table, m, 256, fastscan=False)
        if "fastscan" in cases:
            bench_pq(args, table, m, 16, fastscan=True)
    if "hamming" in cases:
        for b in (int(x) for x in args.bits.split(",")):
            bench_hamming(args, table, b)
    print(_load())


if __name__ == "__main__":
    main()
