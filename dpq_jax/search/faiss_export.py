"""Export dpq_jax indexes to FAISS, for serving learned codes in a FAISS deployment.

The exported index holds OUR codebooks and OUR codes, bit for bit: the codebooks are copied
into the FAISS `ProductQuantizer` centroids and the stored codes are appended with
`add_sa_codes` (or, for binary codes, as the raw bytes FAISS stores anyway). FAISS never
re-encodes a vector, so a FAISS search ranks exactly the codes dpq_jax ranks.

- `PQIndex` (K <= 256, metric "ip" / "l2") -> `IndexPQ` (`METRIC_INNER_PRODUCT` /
  `METRIC_L2`): exact, up to float32 rounding of the table sums.
- `PQIndex` with K <= 16 -> `IndexPQFastScan` (4-bit codes, SIMD): approximate, because FAISS
  quantizes each query's lookup table to 8 bits, so near-ties may swap; re-rank its candidates
  if the exact order matters.
- `BinaryIndex` -> `IndexBinaryFlat` (Hamming): exact (ties may come back in another order).

Layouts (all checked by the tests):
- PQ codes: K <= 16 uses `nbits = 4`, two codes per byte, code `m` in the low nibble of byte
  `m // 2` when `m` is even, the high nibble when odd. This is FAISS's least-significant-bit-first
  `BitstringWriter` order and is exactly `index.pack_nibbles`. 16 < K <= 256 uses `nbits = 8`,
  one byte per code (our uint8 codes as they are).
- Codebooks: FAISS needs `ksub = 2**nbits` codewords per subspace; when K is smaller, the
  codebooks are padded with zero codewords that no stored code refers to, so scores are
  unchanged.
- Binary codes: FAISS reads bit `j` of a code from bit `j % 8` (least significant first) of
  byte `j // 8` (its `fvec2bitvec` order). Our `kernels.pack_bits` puts bit `j` at bit `j % 32`
  of uint32 word `j // 32`; the little-endian bytes of those words are therefore already in
  FAISS order, and `faiss_binary_codes` takes them as `<u4` bytes (explicitly little-endian, so
  a big-endian host converts too), keeping `ceil(b / 8)` bytes. FAISS needs a multiple of 8
  bits: the extra bits are 0 in every code and add nothing to a distance.
- Item ids: when they are not `0..N-1` the index is wrapped in `IndexIDMap` /
  `IndexBinaryIDMap`, so FAISS returns our ids.

Query side (what to pass to `index.search`):
- raw-query inner product or L2 (`query_side="raw"`): the raw embedding `[Q, D]`.
- OPQN's soft-quantized query (`query_side="soft_quantized"`): its table is the inner product
  with `s = [sum_k p_mk c_mk]_m`, so search the inner-product index with
  `s = adc.soft_quantized_vectors(probs, codebooks)`; for OPQN-l2q / Klein-Wolf
  (`query_side="l2"`), search the L2 index with the same `s`. (The probabilities themselves are
  not a vector FAISS can take.)
- binary: `faiss_binary_queries(index, bits_or_packed)`.

Serving (see also `docs/serving.md`):

    import faiss
    from dpq_jax.search import faiss_export, index as index_lib
    idx = index_lib.load_index("db.npz")
    fidx = faiss_export.to_faiss_pq(idx)                 # or to_faiss_pq_fastscan (K <= 16)
    faiss.write_index(fidx, "db.faiss")                  # serve this file
    scores, ids = faiss.read_index("db.faiss").search(query_vectors, 10)

FAISS is an optional dependency (`pip install 'dpq_jax[faiss]'`); it is imported only when an
export function runs.

References:
  J. Johnson, M. Douze, H. Jegou. Billion-scale similarity search with GPUs. IEEE TBD 2019
  (FAISS); F. Andre, A.-M. Kermarrec, N. Le Scouarnec. Quicker ADC. IEEE TPAMI 2019 (the 4-bit
  fast-scan layout of `IndexPQFastScan`).
"""

import numpy as np

from dpq_jax.search import index as index_lib
from dpq_jax.search.kernels import WORD_BITS

_FAISS_METRICS = {"ip": "METRIC_INNER_PRODUCT", "l2": "METRIC_L2"}


def import_faiss():
    """Imports FAISS, or raises ImportError telling how to install it."""
    try:
        import faiss
    except ImportError as e:
        raise ImportError(
            "FAISS export needs the optional 'faiss' package: pip install 'dpq_jax[faiss]' "
            "(or faiss-cpu / faiss-gpu)."
        ) from e
    return faiss


def _check_pq(index) -> None:
    if not isinstance(index, index_lib.PQIndex):
        raise ValueError(f"Expected a PQIndex, got {type(index).__name__}.")
    if index.progressive:
        raise ValueError(
            "A progressive (residual, full-dimension) index has no FAISS IndexPQ equivalent; "
            "only product-quantized indexes ([M, K, d] codebooks) can be exported."
        )


def _metric(index, metric):
    metric = index.metric if metric is None else metric
    if metric not in _FAISS_METRICS:
        raise ValueError(f"metric must be one of {sorted(_FAISS_METRICS)} or None, got {metric!r}.")
    return metric


def _identity_ids(ids: np.ndarray) -> bool:
    return np.array_equal(ids, np.arange(ids.shape[0]))


def faiss_pq_layout(index, nbits: int | None = None) -> tuple[int, np.ndarray, np.ndarray]:
    """The FAISS `ProductQuantizer` form of a PQ index (NumPy only, no FAISS needed).

    Args:
      index: a non-progressive `PQIndex` with `[M, K, d]` codebooks and `[N, M]` codes.
      nbits: bits per code; default 4 when K <= 16, else 8.

    Returns:
      `(nbits, centroids [M, 2**nbits, d] float32, code_bytes [N, ceil(M * nbits / 8)] uint8)`:
      the codebooks zero-padded to `2**nbits` codewords, and the codes in FAISS's
      least-significant-bit-first packing (nibble packing for 4 bits).

    Raises:
      ValueError: a progressive index, or `nbits` not 4 or 8 or too small for K.
    """
    _check_pq(index)
    num_m, num_k, d = index.codebooks.shape
    if nbits is None:
        nbits = 4 if num_k <= 16 else 8
    if nbits not in (4, 8) or num_k > 2**nbits:
        raise ValueError(
            f"nbits must be 4 (K <= 16) or 8 (K <= 256) and hold K = {num_k}, got {nbits!r}."
        )
    centroids = np.zeros((num_m, 2**nbits, d), np.float32)
    centroids[:, :num_k] = index.codebooks  # padding codewords are never referenced
    if nbits == 8:
        code_bytes = np.ascontiguousarray(index.codes, np.uint8)
    else:
        code_bytes = np.asarray(index_lib.pack_nibbles(index.codes), np.uint8)
    return nbits, centroids, code_bytes


def _bare_index_pq(faiss, metric: str, nbits: int, centroids: np.ndarray):
    num_m, _, d = centroids.shape
    fidx = faiss.IndexPQ(num_m * d, num_m, nbits, getattr(faiss, _FAISS_METRICS[metric]))
    # [M, ksub, d] row-major is the layout of ProductQuantizer::centroids.
    faiss.copy_array_to_vector(np.ascontiguousarray(centroids).ravel(), fidx.pq.centroids)
    fidx.is_trained = True  # our codebooks are the trained quantizer
    return fidx


def to_faiss_pq(index, *, metric: str | None = None, with_ids: bool | None = None):
    """A `faiss.IndexPQ` holding this index's codebooks and codes (never re-encoded).

    Args:
      index: a `PQIndex` (not progressive), K <= 256.
      metric: `"ip"` or `"l2"`; default the index's own metric.
      with_ids: wrap in `faiss.IndexIDMap` so searches return `index.ids`; default: only when
        the ids are not `0..N-1`.

    Returns:
      `faiss.IndexPQ` (or `IndexIDMap` over it). `search(x [Q, D] float32, k)` returns
      `(scores, ids)`: inner products (descending) or squared L2 distances (ascending).

    Raises:
      ImportError: FAISS is not installed.
      ValueError: a progressive index or unknown metric.
    """
    faiss = import_faiss()
    metric = _metric(index, metric)
    nbits, centroids, code_bytes = faiss_pq_layout(index)
    fidx = _bare_index_pq(faiss, metric, nbits, centroids)
    with_ids = not _identity_ids(index.ids) if with_ids is None else with_ids
    if not with_ids:
        fidx.add_sa_codes(code_bytes)
        return fidx
    mapped = faiss.IndexIDMap(fidx)
    mapped.add_sa_codes(code_bytes, np.ascontiguousarray(index.ids, np.int64))
    return mapped


def to_faiss_pq_fastscan(
    index, *, metric: str | None = None, bbs: int = 32, with_ids: bool | None = None
):
    """A `faiss.IndexPQFastScan` (4-bit codes, SIMD lookup tables) with our codebooks and codes.

    FastScan indexes have no `add_sa_codes`; the codes are appended to an `IndexPQ` and
    converted by FAISS's `IndexPQFastScan(IndexPQ)` constructor, which only repacks them into
    its blocked layout. FastScan search quantizes each query's table to 8 bits, so its ranking
    is approximate (compare by recall, or re-rank its candidates with `IndexPQ` / dpq_jax).

    Args:
      index: a `PQIndex` with K <= 16.
      metric: `"ip"` or `"l2"`; default the index's own metric.
      bbs: FAISS block size (a multiple of 32).
      with_ids: as `to_faiss_pq`.

    Returns:
      `faiss.IndexPQFastScan` (or `IndexIDMap` over it).

    Raises:
      ImportError: FAISS is not installed.
      ValueError: K > 16, a progressive index, unknown metric or bad `bbs`.
    """
    faiss = import_faiss()
    metric = _metric(index, metric)
    _check_pq(index)
    if index.codebook_size > 16:
        raise ValueError(
            f"IndexPQFastScan stores 4-bit codes (K <= 16); this index has K = "
            f"{index.codebook_size}. Use to_faiss_pq."
        )
    if isinstance(bbs, bool) or not isinstance(bbs, int) or bbs < 32 or bbs % 32:
        raise ValueError(f"bbs must be a positive multiple of 32, got {bbs!r}.")
    nbits, centroids, code_bytes = faiss_pq_layout(index, nbits=4)
    flat = _bare_index_pq(faiss, metric, nbits, centroids)
    flat.add_sa_codes(code_bytes)
    fast = faiss.IndexPQFastScan(flat, bbs)
    with_ids = not _identity_ids(index.ids) if with_ids is None else with_ids
    if not with_ids:
        # The converted index points at `flat`'s codes for its optional exact modes
        # (implem 2-4); keep `flat` alive with it.
        fast.referenced_objects = [flat]
        return fast
    # IndexIDMap needs an empty sub-index: wrap an empty twin, then move the packed codes in.
    empty = faiss.IndexPQFastScan(flat.d, flat.pq.M, 4, flat.metric_type, bbs)
    faiss.copy_array_to_vector(np.ascontiguousarray(centroids).ravel(), empty.pq.centroids)
    empty.is_trained = True
    mapped = faiss.IndexIDMap(empty)
    empty.merge_from(fast, 0)
    faiss.copy_array_to_vector(np.ascontiguousarray(index.ids, np.int64), mapped.id_map)
    mapped.ntotal = empty.ntotal
    return mapped


def faiss_binary_codes(packed: np.ndarray, num_bits: int) -> np.ndarray:
    """Our packed uint32 codes as FAISS binary codes (NumPy only, no FAISS needed).

    Args:
      packed: `[N, ceil(b / 32)]` uint32 from `kernels.pack_bits`.
      num_bits: code length b.

    Returns:
      `[N, ceil(b / 8)]` uint8: bit `j` at bit `j % 8` of byte `j // 8`, FAISS's order.

    Raises:
      ValueError: not uint32 `[N, W]`, or W does not match `num_bits`.
    """
    packed = np.asarray(packed)
    if packed.ndim != 2 or packed.dtype != np.uint32:
        raise ValueError(
            f"packed must be uint32 [N, W] from kernels.pack_bits, got "
            f"{packed.dtype}{list(packed.shape)}."
        )
    words = -(-int(num_bits) // WORD_BITS)
    if num_bits < 1 or packed.shape[1] != words:
        raise ValueError(f"{num_bits}-bit codes take {words} words, packed has {packed.shape[1]}.")
    # Little-endian bytes of each word: byte j // 8 of the code holds bits j..j+7, LSB first.
    as_bytes = np.ascontiguousarray(packed.astype("<u4")).view(np.uint8)  # [N, 4 W]
    return np.ascontiguousarray(as_bytes[:, : -(-int(num_bits) // 8)])


def faiss_binary_queries(index, queries) -> np.ndarray:
    """Queries for an exported binary index: `[Q, b]` bits/signs or packed uint32 -> bytes.

    Raises:
      ValueError: queries that do not match the index's code length.
    """
    if not isinstance(index, index_lib.BinaryIndex):
        raise ValueError(f"Expected a BinaryIndex, got {type(index).__name__}.")
    return faiss_binary_codes(np.asarray(index.pack_queries(queries)), index.num_bits)


def to_faiss_binary(index, *, with_ids: bool | None = None):
    """A `faiss.IndexBinaryFlat` (exhaustive Hamming search) holding our binary codes.

    Args:
      index: a `BinaryIndex`.
      with_ids: wrap in `faiss.IndexBinaryIDMap`; default: only when ids are not `0..N-1`.

    Returns:
      `faiss.IndexBinaryFlat` of `8 * ceil(b / 8)` bits (or `IndexBinaryIDMap` over it);
      search it with `faiss_binary_queries(index, queries)`. Distances are Hamming distances.

    Raises:
      ImportError: FAISS is not installed.
      ValueError: not a `BinaryIndex`.
    """
    faiss = import_faiss()
    if not isinstance(index, index_lib.BinaryIndex):
        raise ValueError(f"Expected a BinaryIndex, got {type(index).__name__}.")
    code_bytes = faiss_binary_codes(index.packed, index.num_bits)
    fidx = faiss.IndexBinaryFlat(8 * code_bytes.shape[1])
    with_ids = not _identity_ids(index.ids) if with_ids is None else with_ids
    if not with_ids:
        fidx.add(code_bytes)  # binary "vectors" are the codes: nothing is re-encoded
        return fidx
    mapped = faiss.IndexBinaryIDMap(fidx)
    mapped.add_with_ids(code_bytes, np.ascontiguousarray(index.ids, np.int64))
    return mapped
