"""The accelerator suite: dpq_jax against FAISS-GPU and PyTorch, side by side in one process.

Three sections, each timing dpq_jax and its peer on the same data in the same run:

  search   exact ADC top-100 (N = 10M, Q = 10k, M = 16, K = 256, D = 128, inner product):
           dpq_jax `adc_topk` vs FAISS-GPU `IndexIVFPQ` with nlist = nprobe = 1024 (FAISS GPU
           has no flat `IndexPQ`; all-zero coarse centroids and every list probed make it an
           exhaustive PQ scan of our codebooks and codes, never re-encoded);
           Hamming top-100 of 64-bit codes: dpq_jax `hamming_topk` vs `GpuIndexBinaryFlat`.
  metrics  mAP@all, 10k queries x 1M items (100 classes), from 64-bit Hamming codes and from
           PQ scores (M = 8, K = 256): dpq_jax `metrics.retrieval` vs the NumPy argsort
           approach of the peer projects (`benchmarks/metrics.py`; timed on a few queries and
           scaled to all).
  train    train-step img/s, batch 256, fp32 and bf16: OPQN with SphereFace-20 at 112x112
           (`configs/vggface2_seen_opqn.py`, timed by `benchmarks/train_throughput.py`) vs a
           PyTorch twin of the OPQN reference model (same layers, loss and optimizer); and a
           ResNet-50 classifier at 224x224 (1000 classes, SGD) on dpq_jax's NNX ResNet vs
           torchvision's `resnet50`. PyTorch is optional: without it (or torchvision) those rows
           say so. fp32 rows let both use TF32 (JAX's default precision on GPUs; PyTorch is
           set to match); bf16 is JAX `dtype=bfloat16` (fp32 parameters) vs `torch.autocast`.

On a GPU all three peers run (FAISS-GPU needs the bundle of /work/shared/tools/faiss-gpu-h100,
`--faiss_bundle`; see its README). On a TPU only the JAX half runs (and the host NumPy peer).
`--toy` runs every section at toy sizes on a CPU, with faiss-cpu (`IndexPQ`, `IndexBinaryFlat`)
as the search peer when installed and an exact NumPy search as well, and XLA's optimizations
off: the search and metrics sections take seconds, the train section minutes (compiling the
SphereFace-20 and ResNet-50 steps). Toy times mean nothing; toy agreement columns do.

dpq_jax times exclude compilation (the first call is reported as "compile+run" in the note) and
include moving results to the host; FAISS gets one small warm-up search; its index build is
not timed. Train rates are after one compile step (JAX) or three warm-up steps (PyTorch).

Run (sized for <= 8 minutes on one H100/H200):
  python benchmarks/device_suite.py --out workdirs/device_suite \
      --faiss_bundle /path/to/faiss_h100.tar.xz
  python benchmarks/device_suite.py --toy --out workdirs/device_suite_toy        # any CPU
Writes OUT/device_suite.json (machine, command, sizes, every row) and OUT/device_suite.md.
Options: --sections search,metrics,train  --budget_s 480 (later sections are skipped, and say
so, once the budget is spent)  --faiss_kit DIR (holds preload.py).
"""

import argparse
import contextlib
import dataclasses
import datetime
import importlib.util
import json
import os
import platform
import sys
import tarfile
import tempfile
import time
import types

import jax
import jax.numpy as jnp
import numpy as np

from dpq_jax import config_lib, parallel
from dpq_jax.data.sources import ArraySource
from dpq_jax.metrics import retrieval as rm
from dpq_jax.search import adc, faiss_export, hamming, kernels
from dpq_jax.search import index as index_lib

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
DEFAULT_KIT = "/work/shared/tools/faiss-gpu-h100"
SECTIONS = ("search", "metrics", "train")


def _load_module(name: str, path: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# benchmarks/ is a folder of scripts, not a package: load the siblings by path.
search_bench = _load_module("_dpq_bench_search", os.path.join(HERE, "search.py"))
metrics_bench = _load_module("_dpq_bench_metrics", os.path.join(HERE, "metrics.py"))
train_bench = _load_module("_dpq_bench_train", os.path.join(HERE, "train_throughput.py"))


@dataclasses.dataclass(frozen=True)
class Sizes:
    search_n: int
    search_q: int
    pq_m: int
    pq_k: int
    dim: int
    topk: int
    bits: int
    map_q: int
    map_n: int
    map_classes: int
    numpy_queries: int
    opqn_spec: str
    opqn_batch: int
    opqn_classes: int  # 0: the dataset's (VGGFace2: 8631)
    resnet_width: float
    resnet_hw: int
    resnet_batch: int
    resnet_classes: int
    steps: int
    repeats: int


FULL = Sizes(
    search_n=10_000_000,
    search_q=10_000,
    pq_m=16,
    pq_k=256,
    dim=128,
    topk=100,
    bits=64,
    map_q=10_000,
    map_n=1_000_000,
    map_classes=100,
    numpy_queries=10,
    opqn_spec="configs/vggface2_seen_opqn.py",
    opqn_batch=256,
    opqn_classes=0,
    resnet_width=1.0,
    resnet_hw=224,
    resnet_batch=256,
    resnet_classes=1000,
    steps=20,
    repeats=2,
)
TOY = Sizes(
    search_n=20_000,
    search_q=64,
    pq_m=16,
    pq_k=256,
    dim=128,
    topk=100,
    bits=64,
    map_q=200,
    map_n=5_000,
    map_classes=20,
    numpy_queries=20,
    opqn_spec="configs/vggface2_seen_opqn.py:runlocal",  # SphereFace-20 at width 1/16
    opqn_batch=16,
    opqn_classes=16,
    resnet_width=1 / 16,
    resnet_hw=64,
    resnet_batch=8,
    resnet_classes=10,
    steps=2,
    repeats=1,
)


class Recorder:
    """Collects result rows, prints each as it comes, writes JSON and Markdown.

    A row: section, case, engine, seconds (the measured work), rate and unit, speedup (dpq_jax
    rows: the peer's time over dpq_jax's, or dpq_jax's rate over the peer's; above 1 means
    dpq_jax is faster), agreement (with the peer or an exact oracle) and a note.
    """

    def __init__(self):
        self.rows: list[dict] = []

    def add(
        self,
        section,
        case,
        engine,
        *,
        seconds=None,
        rate=None,
        unit="",
        speedup=None,
        agreement="",
        note="",
    ):
        row = dict(
            section=section,
            case=case,
            engine=engine,
            seconds=seconds,
            rate=rate,
            unit=unit,
            speedup=speedup,
            agreement=agreement,
            note=note,
        )
        self.rows.append(row)
        print(" | ".join(_cells(row)), flush=True)
        return row

    def markdown(self) -> str:
        head = (
            "section",
            "case",
            "engine",
            "time (s)",
            "rate",
            "dpq_jax speed-up",
            "agreement",
            "note",
        )
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(_cells(row)) + " |" for row in self.rows]
        return "\n".join(lines) + "\n"


def _cells(row: dict) -> list[str]:
    def num(x, fmt):
        return "" if x is None else format(x, fmt)

    rate = f"{num(row['rate'], ',.4g')} {row['unit']}".strip() if row["rate"] else ""
    speedup = f"{row['speedup']:.2f}x" if row["speedup"] is not None else ""
    return [
        row["section"],
        row["case"],
        row["engine"],
        num(row["seconds"], ".3f"),
        rate,
        speedup,
        row["agreement"],
        row["note"],
    ]


@contextlib.contextmanager
def _patched(module, **attrs):
    old = {k: getattr(module, k) for k in attrs}
    for k, v in attrs.items():
        setattr(module, k, v)
    try:
        yield
    finally:
        for k, v in old.items():
            setattr(module, k, v)


# ----------------------------------------------------------------------------------------------
# Peers: FAISS and PyTorch, both optional
# ----------------------------------------------------------------------------------------------
def load_faiss(bundle: str, kit: str):
    """`(faiss or None, on_gpu, description)`; with `bundle`, the FAISS-GPU H100 kit's way."""
    try:
        if bundle:
            site = bundle
            if os.path.isfile(bundle):  # faiss_h100.tar.xz from the kit's make_bundle.sh
                site = tempfile.mkdtemp(prefix="faiss_site_")
                with tarfile.open(bundle) as tar:
                    tar.extractall(site, filter="data")
            preload = _load_module("_faiss_kit_preload", os.path.join(kit, "preload.py"))
            sys.path.insert(0, site)
            preload.preload(site)
        import faiss
    except Exception as e:  # a missing or broken FAISS only removes the FAISS rows
        return None, False, f"FAISS unavailable ({type(e).__name__}: {str(e)[:200]})"
    on_gpu = hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0
    where = f"GPU x{faiss.get_num_gpus()}" if on_gpu else "CPU"
    return faiss, on_gpu, f"faiss {faiss.__version__} ({where})"


def load_torch(toy: bool = False):
    """`(torch or None, description)`."""
    try:
        import torch
    except Exception as e:
        return None, f"PyTorch not installed ({type(e).__name__})"
    cuda = torch.cuda.is_available()
    if toy and not cuda:
        torch.set_num_threads(1)  # spinning OpenMP threads crawl on a shared 2-core CPU
    return torch, f"torch {torch.__version__} ({'CUDA' if cuda else 'CPU'})"


# ----------------------------------------------------------------------------------------------
# Search
# ----------------------------------------------------------------------------------------------
def faiss_ivfpq_exhaustive(faiss, index, nlist: int = 1024):
    """An exhaustive FAISS PQ scan of our codebooks and codes as an `IndexIVFPQ` (CPU).

    FAISS GPU has no flat `IndexPQ` (kit README), so the GPU scan is an IVFPQ over all-zero
    coarse centroids: the residual of every item is the item, so the scores are our ADC inner
    products. The codes go straight into contiguous inverted lists (never re-encoded) and
    `nprobe = nlist` scans them all.
    """
    nbits, centroids, code_bytes = faiss_export.faiss_pq_layout(index)
    m, _, d = centroids.shape
    quantizer = faiss.IndexFlatIP(m * d)
    quantizer.add(np.zeros((nlist, m * d), np.float32))
    ivf = faiss.IndexIVFPQ(quantizer, m * d, nlist, m, nbits, faiss.METRIC_INNER_PRODUCT)
    ivf.referenced_objects = [quantizer]  # the IVF index does not own its quantizer
    flat = np.ascontiguousarray(centroids, np.float32).ravel()
    faiss.copy_array_to_vector(flat, ivf.pq.centroids)
    ivf.is_trained = True
    bounds = np.linspace(0, code_bytes.shape[0], nlist + 1).astype(np.int64)
    for lst, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
        ids = np.arange(lo, hi, dtype=np.int64)
        block = np.ascontiguousarray(code_bytes[lo:hi])
        ivf.invlists.add_entries(lst, int(hi - lo), faiss.swig_ptr(ids), faiss.swig_ptr(block))
    ivf.ntotal = int(code_bytes.shape[0])
    ivf.nprobe = nlist
    return ivf


def faiss_gpu_pq(faiss, index, nlist: int = 1024):
    """`(GPU index, its resources)`: `faiss_ivfpq_exhaustive` on GPU 0 (inner product cannot
    use precomputed tables there)."""
    options = faiss.GpuClonerOptions()
    options.usePrecomputed = False
    resources = faiss.StandardGpuResources()
    gpu = faiss.index_cpu_to_gpu(resources, 0, faiss_ivfpq_exhaustive(faiss, index, nlist), options)
    gpu.nprobe = nlist
    return gpu, resources


def _numpy_adc_topk(luts, codes, k):
    """Exact top-k: float32 sums in m order (as dpq_jax), ties by lower index."""
    scores = np.zeros((luts.shape[0], codes.shape[0]), np.float32)
    for m in range(codes.shape[1]):
        scores += luts[:, m, codes[:, m]]
    ids = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return ids


def _numpy_hamming_topk(q_packed, db_packed, k):
    """Exact top-k Hamming distances of packed uint32 codes, ties by lower index."""
    differ = (q_packed[:, None, :] ^ db_packed[None, :, :]).view(np.uint8)  # [Q, N, 4W]
    dist = np.unpackbits(differ, axis=-1).sum(axis=-1, dtype=np.int64)
    order = np.argsort(dist, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(dist, order, axis=1), order


def run_search(sizes: Sizes, rec: Recorder, faiss, faiss_gpu: bool, exact_oracle: bool) -> None:
    n, q, k, m, kc, dim = (
        sizes.search_n,
        sizes.search_q,
        sizes.topk,
        sizes.pq_m,
        sizes.pq_k,
        sizes.dim,
    )
    rng = np.random.default_rng(0)
    codebooks = rng.standard_normal((m, kc, dim // m), dtype=np.float32)
    codes = rng.integers(0, kc, size=(n, m), dtype=np.uint8)
    queries = rng.standard_normal((q, dim), dtype=np.float32)
    case = f"ADC top-{k}, N={n:,}, Q={q:,}, M={m}, K={kc}"
    db, cb, qd = jnp.asarray(codes), jnp.asarray(codebooks), jnp.asarray(queries)

    def run_jax():
        lut = adc.lut_inner_product(qd, cb)
        scores, ids = adc.adc_topk(lut, db, k)
        return np.asarray(scores), np.asarray(ids)

    t_first, _ = search_bench._time(run_jax, 1)
    t_jax, (_, j_ids) = search_bench._time(run_jax, sizes.repeats)
    peer_t, agreement = None, []
    if faiss is not None:
        index = index_lib.PQIndex(codebooks, codes, method="random", metric="ip")
        t0 = time.perf_counter()
        if faiss_gpu:
            (fidx, _resources), engine = faiss_gpu_pq(faiss, index), "FAISS-GPU IVFPQ, all lists"
        else:
            fidx, engine = faiss_export.to_faiss_pq(index), "FAISS-CPU IndexPQ"
        build = time.perf_counter() - t0
        fidx.search(queries[:8], k)  # warm-up
        peer_t, (_, f_ids) = search_bench._time(lambda: fidx.search(queries, k), sizes.repeats)
        rec.add(
            "search",
            case,
            engine,
            seconds=peer_t,
            rate=q / peer_t,
            unit="queries/s",
            note=f"index build {build:.1f} s (not timed)",
        )
        agreement.append(f"same ids as FAISS {search_bench._overlap(j_ids, f_ids):.3f}")
        del fidx
    if exact_oracle:
        luts = np.asarray(adc.lut_inner_product(qd, cb))
        same = float(np.mean(_numpy_adc_topk(luts, codes, k) == j_ids))
        agreement.append(f"same ids as exact NumPy {same:.3f}")
    rec.add(
        "search",
        case,
        "dpq_jax adc_topk",
        seconds=t_jax,
        rate=q / t_jax,
        unit="queries/s",
        speedup=peer_t / t_jax if peer_t else None,
        agreement="; ".join(agreement),
        note=f"compile+run {t_first:.1f} s",
    )

    # Hamming, b bits: random packed words (every bit used when b is a multiple of 32).
    b = sizes.bits
    words = -(-b // 32)
    db_packed = rng.integers(0, 2**32, size=(n, words), dtype=np.uint32)
    q_packed = rng.integers(0, 2**32, size=(q, words), dtype=np.uint32)
    bindex = index_lib.BinaryIndex(db_packed, b)
    case = f"Hamming top-{k}, {b}-bit, N={n:,}, Q={q:,}"
    dbd, qpd = jnp.asarray(db_packed), jnp.asarray(q_packed)

    def run_jax_hamming():
        dist, ids = hamming.hamming_topk(qpd, dbd, k)
        return np.asarray(dist), np.asarray(ids)

    t_first, _ = search_bench._time(run_jax_hamming, 1)
    t_jax, (j_dist, j_ids) = search_bench._time(run_jax_hamming, sizes.repeats)
    peer_t, agreement = None, []
    if faiss is not None:
        fq = faiss_export.faiss_binary_queries(bindex, q_packed)
        if faiss_gpu:
            resources = faiss.StandardGpuResources()
            fidx = faiss.GpuIndexBinaryFlat(resources, b)
            fidx.add(faiss_export.faiss_binary_codes(db_packed, b))
            engine = "FAISS-GPU GpuIndexBinaryFlat"
        else:
            fidx, engine = faiss_export.to_faiss_binary(bindex), "FAISS-CPU IndexBinaryFlat"
        fidx.search(fq[:8], k)
        peer_t, (f_dist, f_ids) = search_bench._time(lambda: fidx.search(fq, k), sizes.repeats)
        rec.add("search", case, engine, seconds=peer_t, rate=q / peer_t, unit="queries/s")
        equal = np.array_equal(j_dist, f_dist)
        agreement.append(
            f"distances {'equal to' if equal else 'DIFFER from'} FAISS, same ids "
            f"{search_bench._overlap(j_ids, f_ids):.3f} (ids differ only among ties)"
        )
        del fidx
    if exact_oracle:
        dist, _ = _numpy_hamming_topk(q_packed, db_packed, k)
        equal = np.array_equal(dist, j_dist)
        agreement.append(f"distances {'equal to' if equal else 'DIFFER from'} exact NumPy")
    rec.add(
        "search",
        case,
        "dpq_jax hamming_topk",
        seconds=t_jax,
        rate=q / t_jax,
        unit="queries/s",
        speedup=peer_t / t_jax if peer_t else None,
        agreement="; ".join(agreement),
        note=f"compile+run {t_first:.1f} s",
    )


# ----------------------------------------------------------------------------------------------
# Retrieval metrics
# ----------------------------------------------------------------------------------------------
def run_metrics(sizes: Sizes, rec: Recorder) -> None:
    q, n, bits, pq_m, pq_k, dim = sizes.map_q, sizes.map_n, sizes.bits, 8, 256, 64
    ql, dl, q_bits, d_bits, luts, codes = metrics_bench.make_data(
        q, n, sizes.map_classes, bits, pq_m, pq_k, dim, seed=0
    )
    ham = rm.hamming_source(
        jnp.asarray(kernels.pack_bits(q_bits)),
        jnp.asarray(kernels.pack_bits(d_bits)),
        num_bits=bits,
    )
    pq = rm.adc_source(jnp.asarray(luts), jnp.asarray(codes))
    ql_dev, dl_dev = jnp.asarray(ql), jnp.asarray(dl)
    # The peers' NumPy scores (as benchmarks/metrics.py): +-1 codes by matmul, ADC by indexing.
    q_pm = np.where(q_bits, 1.0, -1.0).astype(np.float32)
    d_pm = np.where(d_bits, 1.0, -1.0).astype(np.float32)
    nq_np = min(sizes.numpy_queries, q)
    for label, src, np_fn, ties in (
        (f"{bits}-bit Hamming", ham, lambda i: -0.5 * (bits - d_pm @ q_pm[i]), "expected"),
        (f"{bits}-bit Hamming", ham, lambda i: -0.5 * (bits - d_pm @ q_pm[i]), "stable"),
        (f"PQ M={pq_m} K={pq_k}", pq, lambda i: luts[i][np.arange(pq_m), codes].sum(1), "stable"),
    ):
        case = f"mAP@all {label}, {q:,} x {n:,}, ties={ties}"

        def run(src=src, ties=ties, nq=q):
            sub = src if nq == q else dataclasses.replace(src, queries=src.queries[:nq])
            return rm.retrieval_metrics(
                sub, ql_dev[:nq], dl_dev, map_ks=(-1,), precision_ks=(), ties=ties
            )["map@all"]

        t_first, _ = metrics_bench.timed(run, 1)
        t_jax, _ = metrics_bench.timed(run, sizes.repeats)
        t_np, map_np = metrics_bench.timed(
            lambda fn=np_fn: metrics_bench.numpy_map_all(fn, ql, dl, nq_np), 1
        )
        t_np_all = t_np * q / nq_np
        map_sub = run(nq=nq_np)
        rec.add(
            "metrics",
            case,
            "NumPy argsort (peers' way)",
            seconds=t_np_all,
            rate=q / t_np_all,
            unit="queries/s",
            note=f"timed on {nq_np} queries, scaled to {q:,}",
        )
        rec.add(
            "metrics",
            case,
            "dpq_jax retrieval_metrics",
            seconds=t_jax,
            rate=q / t_jax,
            unit="queries/s",
            speedup=t_np_all / t_jax,
            agreement=f"mAP on the first {nq_np} queries: {map_sub:.6f} vs NumPy {map_np:.6f}"
            + (" (NumPy's argsort orders tied distances arbitrarily)" if src is ham else ""),
            note=f"compile+run {t_first:.1f} s",
        )


# ----------------------------------------------------------------------------------------------
# Train step
# ----------------------------------------------------------------------------------------------
def _random_source(batch: int):
    """Stands in for train_throughput's SyntheticSource: a few random images instead of one
    float64 template per class (9 GB at VGGFace2's 8,631 classes); rates do not depend on it."""

    def make(num_classes, per_class, shape, seed=0):
        del per_class
        rng = np.random.default_rng(seed)
        count = 2 * batch
        images = rng.integers(0, 256, size=(count, *shape), dtype=np.uint8)
        labels = (np.arange(count) % num_classes).astype(np.int32)
        return ArraySource(images=images, labels=labels, num_classes=num_classes, name="random")

    return make


def _opqn_geometry(spec: str):
    path, _, arg = spec.partition(":")
    config = config_lib.load_config(os.path.join(REPO, path), arg or None)
    bb = config.model.backbone
    return dict(
        input_size=int(bb.get("input_size", 112)),
        width=float(bb.get("width_multiplier", 1.0)),
        features=int(config.model.embedding_dim),
        m=int(config.model.head.num_codebooks),
        k=int(config.model.head.codebook_size),
        scale=float(config.loss.scale),
        margin=float(config.loss.margin),
        entropy=float(config.loss.entropy_weight),
        dataset=config.input.dataset,
    )


def _torch_opqn(torch, geo, num_classes):
    """A PyTorch twin of the OPQN reference model: SphereFace-20 (`resnet20_pq`) and the PQ head,
    layer for layer as `dpq_jax.models.backbones.sphereface20` (which mirrors the reference)."""
    nn, F = torch.nn, torch.nn.functional

    def width(w):
        return max(1, round(w * geo["width"]))

    class Unit(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.body = nn.Sequential(
                nn.Conv2d(c, c, 3, 1, 1, bias=False),
                nn.BatchNorm2d(c),
                nn.PReLU(c),
                nn.Conv2d(c, c, 3, 1, 1, bias=False),
                nn.BatchNorm2d(c),
                nn.PReLU(c),
            )

        def forward(self, x):
            return x + self.body(x)

    class OPQN(nn.Module):
        def __init__(self):
            super().__init__()
            layers, c, size = [], 3, geo["input_size"]
            strides = (2, 2, 2, 2) if size == 112 else (1, 2, 2, 2)
            for w, units, s in zip((64, 128, 256, 512), (1, 2, 4, 1), strides, strict=True):
                w = width(w)
                layers += [nn.Conv2d(c, w, 3, s, 1), nn.BatchNorm2d(w), nn.PReLU(w)]
                layers += [Unit(w) for _ in range(units)]
                c, size = w, (size + 2 - 3) // s + 1
            self.body = nn.Sequential(*layers)
            flat, d = c * size * size, geo["features"]
            self.head = nn.Sequential(
                nn.BatchNorm1d(flat), nn.Dropout(0.5), nn.Linear(flat, d), nn.BatchNorm1d(d)
            )
            m, k = geo["m"], geo["k"]
            sub = d // m
            q, _ = torch.linalg.qr(torch.randn(m, sub, k))
            self.register_buffer("codebooks", q.transpose(1, 2).contiguous())  # [M, K, d]
            self.classifier = nn.Parameter(torch.randn(m, num_classes, sub) * 0.01)

        def loss(self, x, y):
            feats = self.head(self.body(x).flatten(1)).float()
            m = geo["m"]
            x_sub = feats.view(feats.shape[0], m, -1)  # [B, M, d]
            logits = torch.einsum("bmd,mkd->bmk", F.normalize(x_sub, dim=-1), self.codebooks)
            probs = logits.softmax(-1)
            soft = torch.einsum("bmk,mkd->bmd", probs, self.codebooks)
            w = F.normalize(self.classifier, dim=-1)
            onehot = F.one_hot(y, w.shape[1]).float()[:, None, :]

            def cosface(v):
                cos = torch.einsum("bmd,mcd->bmc", F.normalize(v, dim=-1), w)
                z = geo["scale"] * (cos - geo["margin"] * onehot)
                return F.cross_entropy(z.flatten(0, 1), y.repeat_interleave(m))

            entropy = -(probs * probs.clamp_min(1e-12).log()).sum(-1).mean()
            return 0.5 * (cosface(x_sub) + cosface(soft)) + geo["entropy"] * entropy

    return OPQN()


def _torch_rate(torch, model, loss_fn, batch, hw, num_classes, dtype, steps, channels_last):
    """img/s of SGD train steps (momentum 0.9, weight decay 5e-4) after 3 warm-up steps."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":  # as JAX's default precision on GPUs
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(device, memory_format=fmt).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    x = torch.randn(batch, 3, hw, hw, device=device).to(memory_format=fmt)
    y = torch.randint(0, num_classes, (batch,), device=device)

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == "bfloat16"):
            loss = loss_fn(model, x, y)
        loss.backward()
        opt.step()

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(3):
        step()
    sync()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    return steps * batch / (time.perf_counter() - start)


def _jax_resnet_rate(sizes: Sizes, dtype: str, mesh) -> tuple[float, float]:
    """(img/s, compile s) of a ResNet-50 + linear classifier SGD step, data-parallel."""
    import optax
    from flax import nnx

    from dpq_jax.models.backbones import resnet  # being written elsewhere: imported lazily

    class Classifier(nnx.Module):
        def __init__(self, rngs):
            self.trunk = resnet.ResNet(
                3, depth=50, width=sizes.resnet_width, dtype=jnp.dtype(dtype), rngs=rngs
            )
            self.fc = nnx.Linear(self.trunk.trunk_features, sizes.resnet_classes, rngs=rngs)

        def __call__(self, x):
            return self.fc(self.trunk(x).astype(jnp.float32))

    model = Classifier(nnx.Rngs(0))
    tx = optax.chain(optax.add_decayed_weights(5e-4), optax.sgd(0.1, momentum=0.9))
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    graphdef, state = nnx.split((model, optimizer))

    def step(state, batch):
        model, optimizer = nnx.merge(graphdef, state)

        def loss_fn(model):
            logits = model(batch["image"])
            return optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return nnx.state((model, optimizer)), loss

    step = jax.jit(step, donate_argnums=(0,))
    rng = np.random.default_rng(0)
    b, hw = sizes.resnet_batch, sizes.resnet_hw
    batch = parallel.put_batch(
        {
            "image": rng.standard_normal((b, hw, hw, 3), dtype=np.float32),
            "label": rng.integers(0, sizes.resnet_classes, b).astype(np.int32),
        },
        mesh,
    )
    state = jax.device_put(state, parallel.replicated(mesh))
    start = time.perf_counter()
    state, loss = step(state, batch)
    jax.block_until_ready(loss)
    compile_s = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(sizes.steps):
        state, loss = step(state, batch)
    jax.block_until_ready(loss)
    return sizes.steps * b / (time.perf_counter() - start), compile_s


def run_train(
    sizes: Sizes, rec: Recorder, torch, torch_why: str, on_tpu: bool, deadline: float
) -> None:
    """Train-step rows; a row pair that would start after `deadline` (perf_counter) says so.
    One device, as the PyTorch peers use (and as the search and metrics sections do)."""
    mesh = parallel.make_mesh(1)

    def late(case):
        if time.perf_counter() < deadline:
            return False
        rec.add("train", case, "", note="skipped: the time budget is spent")
        return True

    if on_tpu:
        torch, torch_why = None, "PyTorch rows need a CUDA GPU (this is a TPU)"
    elif torch is not None and not torch.cuda.is_available() and jax.default_backend() != "cpu":
        torch, torch_why = None, "PyTorch has no CUDA here"
    # ---- OPQN, SphereFace-20 at 112x112
    path = sizes.opqn_spec.partition(":")[0]
    if not os.path.isfile(os.path.join(REPO, path)):
        rec.add("train", "OPQN SphereFace-20 @112", "dpq_jax", note=f"{path} not found: skipped")
    else:
        geo = _opqn_geometry(sizes.opqn_spec)
        shape, classes = train_bench.DATASETS[geo["dataset"]]
        classes = sizes.opqn_classes or classes
        datasets = {**train_bench.DATASETS, geo["dataset"]: (shape, classes)}
        for dtype in ("float32", "bfloat16"):
            case = (
                f"OPQN SphereFace-20 @{geo['input_size']} (width {geo['width']:g}), "
                f"batch {sizes.opqn_batch}, {classes} classes, {dtype}"
            )
            if late(case):
                continue
            peer = None
            if torch is not None:
                model = _torch_opqn(torch, geo, classes)
                peer = _torch_rate(
                    torch,
                    model,
                    lambda mdl, x, y: mdl.loss(x, y),
                    sizes.opqn_batch,
                    geo["input_size"],
                    classes,
                    dtype,
                    sizes.steps,
                    channels_last=True,
                )
                rec.add(
                    "train",
                    case,
                    "PyTorch twin of the OPQN reference (eager)",
                    rate=peer,
                    unit="img/s",
                )
            else:
                rec.add("train", case, "PyTorch twin of the OPQN reference", note=torch_why)
            args = types.SimpleNamespace(
                batch_size=sizes.opqn_batch, steps=sizes.steps, dtype=dtype
            )
            with (
                _patched(
                    train_bench, DATASETS=datasets, SyntheticSource=_random_source(sizes.opqn_batch)
                ),
                jax.set_mesh(mesh),
            ):
                res = train_bench.bench(os.path.join(REPO, sizes.opqn_spec), args, mesh)
            rate = res["train_img_per_s"]
            rec.add(
                "train",
                case,
                "dpq_jax (the dpq-train step)",
                rate=rate,
                unit="img/s",
                speedup=rate / peer if peer else None,
                note=f"compile {res['compile_s']:.1f} s; input pipeline "
                f"{res['pipeline_img_per_s']:,.0f} img/s",
            )
    # ---- ResNet-50 classifier at 224x224
    for dtype in ("float32", "bfloat16"):
        case = (
            f"ResNet-50 @{sizes.resnet_hw} (width {sizes.resnet_width:g}) classifier, "
            f"batch {sizes.resnet_batch}, {dtype}"
        )
        if late(case):
            continue
        peer = None
        if torch is None:
            rec.add("train", case, "PyTorch torchvision resnet50", note=torch_why)
        elif sizes.resnet_width != 1.0:
            rec.add(
                "train",
                case,
                "PyTorch torchvision resnet50",
                note="toy width: torchvision's resnet50 has no width multiplier; skipped",
            )
        else:
            try:
                import torchvision
            except ImportError:
                rec.add(
                    "train", case, "PyTorch torchvision resnet50", note="torchvision not installed"
                )
            else:
                model = torchvision.models.resnet50(num_classes=sizes.resnet_classes)
                peer = _torch_rate(
                    torch,
                    model,
                    lambda mdl, x, y: torch.nn.functional.cross_entropy(mdl(x).float(), y),
                    sizes.resnet_batch,
                    sizes.resnet_hw,
                    sizes.resnet_classes,
                    dtype,
                    sizes.steps,
                    channels_last=True,
                )
                rec.add(
                    "train", case, "PyTorch torchvision resnet50 (eager)", rate=peer, unit="img/s"
                )
        try:
            rate, compile_s = _jax_resnet_rate(sizes, dtype, mesh)
        except ImportError as e:
            rec.add("train", case, "dpq_jax NNX ResNet-50", note=f"not available ({e})")
            continue
        rec.add(
            "train",
            case,
            "dpq_jax NNX ResNet-50",
            rate=rate,
            unit="img/s",
            speedup=rate / peer if peer else None,
            note=f"compile {compile_s:.1f} s",
        )


# ----------------------------------------------------------------------------------------------
def _machine() -> dict:
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(
                (ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu
            )
    except OSError:
        pass
    dev = jax.devices()[0]
    return {
        "backend": jax.default_backend(),
        "devices": f"{jax.device_count()} x {dev.device_kind}",
        "cpu": f"{cpu}, {os.cpu_count()} cores",
        "python": platform.python_version(),
        "jax": jax.__version__,
        "numpy": np.__version__,
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", default="workdirs/device_suite", help="folder for the JSON and .md")
    p.add_argument("--toy", action="store_true", help="toy sizes, for a CPU")
    p.add_argument("--sections", default=",".join(SECTIONS))
    p.add_argument("--budget_s", type=float, default=480.0, help="skip sections after this")
    p.add_argument("--faiss_bundle", default="", help="faiss_h100.tar.xz or its unpacked dir")
    p.add_argument("--faiss_kit", default=DEFAULT_KIT, help="folder with the kit's preload.py")
    args = p.parse_args(argv)
    sections = [s for s in args.sections.split(",") if s]
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        p.error(f"--sections: unknown {unknown}; choose from {','.join(SECTIONS)}")
    # Toy compiles dominate a CPU run: XLA's optimizations are off, so toy times mean nothing.
    old = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", bool(args.toy) or old)
    try:
        return _run(args, sections, sys.argv[1:] if argv is None else list(argv))
    finally:
        jax.config.update("jax_disable_most_optimizations", old)


def _run(args, sections: list[str], argv: list[str]) -> int:
    sizes = TOY if args.toy else FULL
    start = time.perf_counter()
    backend = jax.default_backend()
    on_tpu = backend == "tpu"
    if on_tpu:
        faiss, faiss_gpu, faiss_why = None, False, "FAISS rows need a GPU or CPU (this is a TPU)"
    else:
        faiss, faiss_gpu, faiss_why = load_faiss(args.faiss_bundle, args.faiss_kit)
        if faiss is not None and backend == "gpu" and not faiss_gpu:
            faiss, faiss_why = None, f"{faiss_why}: no FAISS GPU, the CPU scan would not finish"
    torch, torch_why = (None, "not on TPU") if on_tpu else load_torch(args.toy)
    meta = {
        "date_utc": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M"),
        "command": " ".join(["python", "benchmarks/device_suite.py", *argv]),
        "toy": args.toy,
        "machine": _machine(),
        "peers": {"faiss": faiss_why, "torch": torch_why},
        "sizes": dataclasses.asdict(sizes),
        "section_seconds": {},
    }
    print(json.dumps({k: meta[k] for k in ("machine", "peers")}), flush=True)
    rec = Recorder()
    runners = {
        "search": lambda: run_search(sizes, rec, faiss, faiss_gpu, exact_oracle=args.toy),
        "metrics": lambda: run_metrics(sizes, rec),
        "train": lambda: run_train(
            sizes, rec, torch, torch_why, on_tpu, deadline=start + args.budget_s
        ),
    }
    for name in sections:
        if time.perf_counter() - start > args.budget_s:
            rec.add(name, "(all)", "", note=f"skipped: the {args.budget_s:.0f} s budget is spent")
            continue
        t0 = time.perf_counter()
        runners[name]()
        meta["section_seconds"][name] = round(time.perf_counter() - t0, 1)
    meta["total_seconds"] = round(time.perf_counter() - start, 1)
    meta["machine"]["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "device_suite.json"), "w") as f:
        json.dump({**meta, "rows": rec.rows}, f, indent=1)
    md = (
        f"Device suite, {meta['date_utc']} UTC, {meta['machine']['devices']} "
        f"({meta['machine']['backend']}), jax {jax.__version__}; {faiss_why}; {torch_why}; "
        f"{meta['total_seconds']} s in all.\n\nCommand: `{meta['command']}`\n\n" + rec.markdown()
    )
    with open(os.path.join(args.out, "device_suite.md"), "w") as f:
        f.write(md)
    print(f"\nwrote {args.out}/device_suite.json and .md in {meta['total_seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
