"""Search indexes: a PQ-coded or binary database, exact search, and verified `.npz` files.

`PQIndex` holds codebooks (`[M, K, d]`, or `[L, K, D]` for progressive residual levels), uint8
codes `[N, M]` and int64 item ids `[N]`; `BinaryIndex` holds packed uint32 codes `[N, W]`. Both
keep host (NumPy) arrays and search with the jitted functions of `adc.py` and `hamming.py`,
optionally over a mesh.

File format (`save` / `load_index`): one `.npz` written with `numpy.savez` (no pickle, loaded
with `allow_pickle=False`), holding the arrays plus a `__metadata__` entry with UTF-8 JSON:
`format` ("dpq_jax.index"), `format_version`, `kind` ("pq" or "binary"), method, metric,
code length, sizes, the dtype, shape and sha256 of every array as stored, and an optional
`extra` dict of the caller's own JSON metadata (`load_index_metadata`). `load_index`
checks all of it, so a truncated, corrupt, tampered, foreign or too-new file raises a
ValueError that names the file and the problem. Files are written to a temporary name and
renamed, so a crash never leaves a half-written index under the final name. Paths may be local
or URIs such as `gs://bucket/index.npz` (`io_utils.as_path`). K <= 16 codes are
stored two per byte (`pack_nibbles`) by default.
"""

import dataclasses
import functools
import json

import jax
import jax.numpy as jnp
import numpy as np

import dpq_jax
from dpq_jax import io_utils
from dpq_jax.search import adc, checks, hamming, kernels
from dpq_jax.typing import Array, Int, UInt8

FORMAT = "dpq_jax.index"
FORMAT_VERSION = 1
METRICS = ("ip", "l2")


# --------------------------------------------------------------------------------------------
# 4-bit code packing.
# --------------------------------------------------------------------------------------------


def pack_nibbles(codes: Int[Array, "n m"]) -> UInt8[Array, "n half"]:
    """Packs codes in `[0, 16)` two per byte: column `2j` low nibble, column `2j + 1` high.

    Args:
      codes: `[N, M]` integer codes, each `< 16` (K <= 16).

    Returns:
      `[N, ceil(M / 2)]` uint8; an odd M leaves the last high nibble 0.

    Raises:
      ValueError: not 2-D integer, or (when concrete) codes outside `[0, 16)`.

    Examples:
      >>> pack_nibbles(jnp.array([[1, 2, 15]])).tolist()
      [[33, 15]]
    """
    codes = jnp.asarray(codes)
    if codes.ndim != 2 or not jnp.issubdtype(codes.dtype, jnp.integer):
        raise ValueError(
            f"codes must be a 2-D integer array [N, M], got {codes.dtype}{codes.shape}."
        )
    bounds = checks.value_range(codes) if codes.size else None
    if bounds is not None and (bounds[0] < 0 or bounds[1] > 15):
        raise ValueError(
            f"4-bit packing needs codes in [0, 16), found [{bounds[0]}, {bounds[1]}]; store "
            "codes with K > 16 unpacked."
        )
    return _pack_nibbles(codes)


@jax.jit
def _pack_nibbles(codes):
    num_n, num_m = codes.shape
    half = -(-num_m // 2)
    c = jnp.pad(codes.astype(jnp.uint8), ((0, 0), (0, 2 * half - num_m)))
    c = c.reshape(num_n, half, 2)  # [N, M/2, (low, high)]
    return c[:, :, 0] | (c[:, :, 1] << 4)


def unpack_nibbles(packed: UInt8[Array, "n half"], num_codebooks: int) -> UInt8[Array, "n m"]:
    """Inverse of `pack_nibbles`.

    Args:
      packed: `[N, ceil(M / 2)]` uint8.
      num_codebooks: M.

    Returns:
      `[N, M]` uint8 codes.

    Raises:
      ValueError: bad dtype or shape, or `num_codebooks` inconsistent with the byte count.
    """
    packed = jnp.asarray(packed)
    if packed.ndim != 2 or packed.dtype != jnp.uint8:
        raise ValueError(f"packed must be uint8 [N, ceil(M/2)], got {packed.dtype}{packed.shape}.")
    half = packed.shape[1]
    if not 2 * half - 1 <= num_codebooks <= 2 * half:
        raise ValueError(
            f"num_codebooks = {num_codebooks} does not match {half} packed bytes per item."
        )
    return _unpack_nibbles(packed, num_codebooks=int(num_codebooks))


@functools.partial(jax.jit, static_argnames=("num_codebooks",))
def _unpack_nibbles(packed, *, num_codebooks):
    half = packed.shape[1]
    both = jnp.stack([packed & 0xF, packed >> 4], axis=-1)  # [N, M/2, 2]
    return both.reshape(packed.shape[0], 2 * half)[:, :num_codebooks]


# --------------------------------------------------------------------------------------------
# Helpers.
# --------------------------------------------------------------------------------------------


def _check_ids(ids, num_items: int) -> np.ndarray:
    if ids is None:
        return np.arange(num_items, dtype=np.int64)
    ids = np.asarray(ids)
    if ids.shape != (num_items,) or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(
            f"ids must be an integer array of shape [N] = [{num_items}], got "
            f"{ids.dtype}{list(ids.shape)}."
        )
    return ids.astype(np.int64)


def _check_method(method) -> str:
    if not isinstance(method, str) or not method:
        raise ValueError(f"method must be a non-empty string naming the method, got {method!r}.")
    return method


def _extra_meta(extra) -> dict:
    """`{"extra": extra}` after checking that it survives a JSON round trip; `{}` for None."""
    if extra is None:
        return {}
    try:
        ok = isinstance(extra, dict) and json.loads(json.dumps(extra)) == extra
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(
            "extra must be a dict of JSON values (str keys; str, number, bool, None, list, "
            f"dict) that survives a JSON round trip unchanged (no tuples), got {extra!r:.200}."
        )
    return {"extra": extra}


def _load_kind(path, cls):
    index = load_index(path)
    if not isinstance(index, cls):
        raise ValueError(
            f"Cannot load index {str(path)!r}: it holds a {type(index).__name__}, not a "
            f"{cls.__name__}; use dpq_jax.search.index.load_index to load any kind."
        )
    return index


# --------------------------------------------------------------------------------------------
# PQ index.
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class PQIndex:
    """A PQ-coded database: codebooks, uint8 codes and item ids.

    Attributes:
      codebooks: `[M, K, d]` float32 product-quantization codebooks, or `[L, K, D]` progressive
        (residual, full-dimension) codebooks when `progressive=True`.
      codes: `[N, M]` (or `[N, L]`) uint8 codes in `[0, K)`; K <= 256.
      ids: `[N]` int64 item ids returned by `search` (default `0..N-1`).
      method: name of the method that produced the codes (e.g. "opqn", "dpq_g").
      metric: "ip" (inner product, descending) or "l2" (squared L2, ascending).
      progressive: whether `codebooks` are DPQ-G residual levels (inner product only).
    """

    codebooks: np.ndarray
    codes: np.ndarray
    ids: np.ndarray | None = None
    method: str = "pq"
    metric: str = "ip"
    progressive: bool = False

    def __post_init__(self):
        codebooks = np.asarray(self.codebooks)
        if codebooks.ndim != 3 or not np.issubdtype(codebooks.dtype, np.floating):
            raise ValueError(
                f"codebooks must be a float array [M, K, d] (or [L, K, D]), got "
                f"{codebooks.dtype}{list(codebooks.shape)}."
            )
        num_m, num_k, _ = codebooks.shape
        if not 1 <= num_k <= 256:
            raise ValueError(f"K = {num_k} codewords does not fit uint8 codes; need 1 <= K <= 256.")
        codes = np.asarray(self.codes)
        checks.check_codes(codes, num_m, num_k)
        if self.metric not in METRICS:
            raise ValueError(f"metric must be one of {METRICS}, got {self.metric!r}.")
        if self.progressive and self.metric != "ip":
            raise ValueError(
                "Progressive (residual) codes are searched by inner product only; use metric='ip'."
            )
        object.__setattr__(self, "codebooks", codebooks.astype(np.float32))
        object.__setattr__(self, "codes", codes.astype(np.uint8))
        object.__setattr__(self, "ids", _check_ids(self.ids, codes.shape[0]))
        object.__setattr__(self, "method", _check_method(self.method))
        object.__setattr__(self, "progressive", bool(self.progressive))

    @property
    def num_items(self) -> int:
        """N."""
        return self.codes.shape[0]

    @property
    def num_codebooks(self) -> int:
        """M (or L for progressive codebooks)."""
        return self.codebooks.shape[0]

    @property
    def codebook_size(self) -> int:
        """K."""
        return self.codebooks.shape[1]

    @property
    def levels(self) -> int | None:
        """L for progressive indexes, None otherwise."""
        return self.num_codebooks if self.progressive else None

    @property
    def code_bits(self) -> int:
        """Code length in bits: `M * ceil(log2 K)`."""
        return self.num_codebooks * (self.codebook_size - 1).bit_length()

    @functools.cached_property
    def _device_codes(self) -> jax.Array:
        return jnp.asarray(self.codes)

    def lut(self, queries, levels: int | None = None) -> jax.Array:
        """The lookup table `[Q, M, K]` of raw queries `[Q, D]` for this index's metric.

        Args:
          queries: `[Q, D]` float queries.
          levels: progressive indexes only: score with the first `levels` levels (default all).

        Returns:
          `[Q, M, K]` float32 table (`lut_inner_product`, `lut_l2` or `lut_progressive`).

        Raises:
          ValueError: `levels` given for a non-progressive index, or bad query shape.
        """
        if self.progressive:
            return adc.lut_progressive(
                queries, self.codebooks, self.num_codebooks if levels is None else levels
            )
        if levels is not None:
            raise ValueError("levels applies to progressive indexes only.")
        if self.metric == "l2":
            return adc.lut_l2(queries, self.codebooks)
        return adc.lut_inner_product(queries, self.codebooks)

    def search(
        self,
        queries_or_lut,
        k: int,
        *,
        levels: int | None = None,
        kernel="auto",
        chunk_size: int = adc.DEFAULT_CHUNK_SIZE,
        query_chunk: int = adc.DEFAULT_QUERY_CHUNK,
        ties: str = "stable",
        seed: int = 0,
        mesh: jax.sharding.Mesh | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-k search with raw queries `[Q, D]` or a ready lookup table `[Q, M, K]`.

        Pass a table for query sides other than the raw query, e.g.
        `adc.lut_soft_quantized(probs, codebooks)` (OPQN) or `adc.lut_l2(soft, codebooks)`
        (DPQ-KW); its order follows this index's `metric`.

        Args:
          queries_or_lut: `[Q, D]` queries or `[Q, M, K]` table.
          k: results per query, `1 <= k <= N`.
          levels: progressive indexes with raw queries: number of leading levels to use.
          kernel: see `adc.adc_topk`.
          chunk_size: see `adc.adc_topk`.
          query_chunk: see `adc.adc_topk`.
          ties: "stable" (lower position first) or "random" (seeded); see `adc.adc_topk`.
          seed: seed for `ties="random"`.
          mesh: optional mesh: search with the database split over its `"data"` axis.

        Returns:
          `(scores [Q, k] float32, ids [Q, k] int64)` as NumPy arrays, best first.

        Raises:
          ValueError: bad shapes, `k` out of range, `levels` misuse.
        """
        x = jnp.asarray(queries_or_lut)
        if x.ndim == 3:
            if levels is not None:
                raise ValueError(
                    "levels is ignored with a ready lookup table; build the table "
                    "with adc.lut_progressive(queries, codebooks, levels) instead."
                )
            if x.shape[1:] != (self.num_codebooks, self.codebook_size):
                raise ValueError(
                    f"The lookup table has shape {x.shape}; this index needs [Q, M, K] = "
                    f"[Q, {self.num_codebooks}, {self.codebook_size}]."
                )
            lut = x
        elif x.ndim == 2:
            lut = self.lut(x, levels)
        else:
            raise ValueError(
                f"Expected queries [Q, D] or a lookup table [Q, M, K], got shape {x.shape}."
            )
        options = dict(
            chunk_size=chunk_size,
            query_chunk=query_chunk,
            larger_is_better=self.metric == "ip",
            kernel=kernel,
            ties=ties,
            seed=seed,
        )
        codes = self._device_codes if mesh is None else self.codes  # host rows for a mesh
        scores, pos = adc.adc_topk(lut, codes, k, mesh=mesh, **options)
        return np.asarray(scores), self.ids[np.asarray(pos)]

    def metadata(self) -> dict:
        """The descriptive part of the saved JSON metadata."""
        return {
            "kind": "pq",
            "method": self.method,
            "metric": self.metric,
            "progressive": self.progressive,
            "code_bits": self.code_bits,
            "levels": self.levels,
            "num_items": self.num_items,
            "num_codebooks": self.num_codebooks,
            "codebook_size": self.codebook_size,
            "codeword_dim": self.codebooks.shape[2],
        }

    def save(
        self, path, *, pack_4bit: bool | None = None, extra: dict | None = None
    ) -> io_utils.AnyPath:
        """Writes the index to `path` (an `.npz`; the name is used as given).

        Args:
          path: destination file.
          pack_4bit: store codes two per byte; default: when K <= 16.
          extra: optional JSON-serializable dict stored as the metadata's `"extra"` entry
            (e.g. the retriever's checkpoint step); read it back with `load_index_metadata`.

        Returns:
          The path written.

        Raises:
          ValueError: `pack_4bit=True` with K > 16, or `extra` that is not a JSON dict.
        """
        pack_4bit = self.codebook_size <= 16 if pack_4bit is None else bool(pack_4bit)
        if pack_4bit and self.codebook_size > 16:
            raise ValueError(f"pack_4bit needs K <= 16, this index has K = {self.codebook_size}.")
        arrays = {"codebooks": self.codebooks, "ids": self.ids}
        if pack_4bit:
            arrays["codes_4bit"] = np.asarray(pack_nibbles(self.codes))
        else:
            arrays["codes"] = self.codes
        meta = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "library_version": dpq_jax.__version__,
            **self.metadata(),
            "codes_storage": "4bit" if pack_4bit else "uint8",
            **_extra_meta(extra),
        }
        return io_utils.write_npz(path, arrays, meta)

    @classmethod
    def load(cls, path) -> "PQIndex":
        """Reads and verifies an index written by `PQIndex.save` (see `load_index`).

        Raises:
          FileNotFoundError: no such file.
          ValueError: truncated, corrupt, foreign, newer-format or binary-index file.
        """
        return _load_kind(path, cls)


def _build_pq(arrays: dict[str, np.ndarray], meta: dict) -> PQIndex:
    storage = meta["codes_storage"]
    if storage == "4bit":
        codes = np.asarray(unpack_nibbles(arrays["codes_4bit"], meta["num_codebooks"]))
    elif storage == "uint8":
        codes = arrays["codes"]
    else:
        raise ValueError(f"unknown codes_storage {storage!r}")
    index = PQIndex(
        codebooks=arrays["codebooks"],
        codes=codes,
        ids=arrays["ids"],
        method=meta["method"],
        metric=meta["metric"],
        progressive=meta["progressive"],
    )
    described = {key: meta.get(key) for key in index.metadata()}
    if described != index.metadata():
        raise ValueError(f"metadata {described} disagrees with the arrays {index.metadata()}")
    return index


# --------------------------------------------------------------------------------------------
# Binary index.
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class BinaryIndex:
    """A binary-code database: packed codes (`kernels.pack_bits` layout) and item ids.

    Attributes:
      packed: `[N, ceil(b / 32)]` uint32 codes.
      num_bits: code length b.
      ids: `[N]` int64 item ids (default `0..N-1`).
      method: name of the hashing method.
    """

    packed: np.ndarray
    num_bits: int
    ids: np.ndarray | None = None
    method: str = "hash"

    def __post_init__(self):
        packed = np.asarray(self.packed)
        if packed.ndim != 2 or packed.dtype != np.uint32:
            raise ValueError(
                f"packed must be uint32 [N, W] from kernels.pack_bits, got "
                f"{packed.dtype}{list(packed.shape)}."
            )
        b = self.num_bits
        if isinstance(b, bool) or not isinstance(b, (int, np.integer)) or b < 1:
            raise ValueError(f"num_bits must be a positive int, got {b!r}.")
        words = -(-int(b) // kernels.WORD_BITS)
        if packed.shape[1] != words:
            raise ValueError(
                f"{b}-bit codes take {words} uint32 words, packed has {packed.shape[1]}."
            )
        spare = words * kernels.WORD_BITS - int(b)
        if spare and packed.size and np.any(packed[:, -1] >> np.uint32(kernels.WORD_BITS - spare)):
            raise ValueError(
                f"packed has bits set beyond bit {b}; pack the codes with kernels.pack_bits."
            )
        object.__setattr__(self, "packed", packed)
        object.__setattr__(self, "num_bits", int(b))
        object.__setattr__(self, "ids", _check_ids(self.ids, packed.shape[0]))
        object.__setattr__(self, "method", _check_method(self.method))

    @classmethod
    def from_bits(cls, bits, ids=None, method: str = "hash") -> "BinaryIndex":
        """Builds an index from `[N, b]` bits, booleans or +-1 signs (`value > 0` is a 1)."""
        bits = np.asarray(bits)
        if bits.ndim != 2:
            raise ValueError(f"bits must be 2-D [N, b], got shape {bits.shape}.")
        return cls(np.asarray(kernels.pack_bits(bits)), bits.shape[1], ids, method)

    @property
    def num_items(self) -> int:
        """N."""
        return self.packed.shape[0]

    @property
    def code_bits(self) -> int:
        """b."""
        return self.num_bits

    @functools.cached_property
    def _device_packed(self) -> jax.Array:
        return jnp.asarray(self.packed)

    def pack_queries(self, queries) -> jax.Array:
        """Packed uint32 `[Q, W]` queries from packed words or `[Q, b]` bits/signs."""
        q = jnp.asarray(queries)
        if q.ndim == 2 and q.dtype == jnp.uint32 and q.shape[1] == self.packed.shape[1]:
            return q
        if q.ndim != 2 or q.shape[1] != self.num_bits:
            raise ValueError(
                f"Queries must be packed uint32 [Q, {self.packed.shape[1]}] or bits/signs "
                f"[Q, {self.num_bits}], got {q.dtype}{list(q.shape)}."
            )
        return kernels.pack_bits(q)

    def search(
        self,
        queries,
        k: int,
        *,
        ties: str = "stable",
        seed: int = 0,
        chunk_size: int = adc.DEFAULT_CHUNK_SIZE,
        query_chunk: int = adc.DEFAULT_QUERY_CHUNK,
        mesh: jax.sharding.Mesh | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Hamming ranking; see `hamming.hamming_topk`.

        Returns:
          `(distances [Q, k] int32, ids [Q, k] int64)` NumPy arrays, nearest first.
        """
        q = self.pack_queries(queries)
        options = dict(chunk_size=chunk_size, query_chunk=query_chunk, ties=ties, seed=seed)
        packed = self._device_packed if mesh is None else self.packed  # host rows for a mesh
        dist, pos = hamming.hamming_topk(q, packed, k, mesh=mesh, **options)
        return np.asarray(dist), self.ids[np.asarray(pos)]

    def radius_search(
        self, queries, radius: int, *, max_results: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Items within Hamming `radius`; see `hamming.radius_search`.

        Returns:
          `(counts [Q], ids [Q, R] int64)` NumPy arrays, ids padded with -1.
        """
        counts, pos = hamming.radius_search(
            self.pack_queries(queries), self._device_packed, radius, max_results=max_results
        )
        pos = np.asarray(pos)
        return np.asarray(counts), np.where(pos >= 0, self.ids[np.maximum(pos, 0)], -1)

    def metadata(self) -> dict:
        """The descriptive part of the saved JSON metadata."""
        return {
            "kind": "binary",
            "method": self.method,
            "code_bits": self.num_bits,
            "num_items": self.num_items,
            "packing": "uint32-little-endian",
        }

    def save(self, path, *, extra: dict | None = None) -> io_utils.AnyPath:
        """Writes the index to `path` (an `.npz`); returns the path.

        `extra`: optional JSON-serializable dict, as for `PQIndex.save`.
        """
        arrays = {"packed": self.packed, "ids": self.ids}
        meta = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "library_version": dpq_jax.__version__,
            **self.metadata(),
            **_extra_meta(extra),
        }
        return io_utils.write_npz(path, arrays, meta)

    @classmethod
    def load(cls, path) -> "BinaryIndex":
        """Reads and verifies an index written by `BinaryIndex.save` (see `load_index`).

        Raises:
          FileNotFoundError: no such file.
          ValueError: truncated, corrupt, foreign, newer-format or PQ-index file.
        """
        return _load_kind(path, cls)


def _build_binary(arrays: dict[str, np.ndarray], meta: dict) -> BinaryIndex:
    if meta["packing"] != "uint32-little-endian":
        raise ValueError(f"unknown packing {meta['packing']!r}")
    index = BinaryIndex(arrays["packed"], meta["code_bits"], arrays["ids"], meta["method"])
    described = {key: meta.get(key) for key in index.metadata()}
    if described != index.metadata():
        raise ValueError(f"metadata {described} disagrees with the arrays {index.metadata()}")
    return index


_BUILDERS = {"pq": _build_pq, "binary": _build_binary}


def load_index_metadata(path) -> tuple[PQIndex | BinaryIndex, dict]:
    """`load_index` plus the file's verified JSON metadata (with the `"extra"` entry, if any).

    Raises:
      FileNotFoundError, ValueError: as `load_index`.
    """
    path = io_utils.as_path(path)
    arrays, meta = io_utils.read_npz(
        path, format_name=FORMAT, max_version=FORMAT_VERSION, what="index", fix="Re-export it."
    )
    return _build(path, arrays, meta), meta


def load_index(path) -> PQIndex | BinaryIndex:
    """Loads either kind of index after verifying the whole file.

    Checks, in order: the file is a readable `.npz` without pickles; it has the JSON
    `__metadata__` entry with `format == "dpq_jax.index"`; its `format_version` is not newer
    than this library's; it holds exactly the arrays the metadata lists, with the recorded
    dtypes, shapes and sha256 checksums; and the arrays agree with the recorded sizes.

    Args:
      path: the file written by `PQIndex.save` or `BinaryIndex.save`.

    Returns:
      The `PQIndex` or `BinaryIndex`.

    Raises:
      FileNotFoundError: no such file.
      ValueError: naming the file and the problem: truncated, corrupt, foreign or
        newer-format file, checksum mismatch, unknown kind or inconsistent contents.
    """
    return load_index_metadata(path)[0]


def _build(path: io_utils.AnyPath, arrays: dict[str, np.ndarray], meta: dict):
    kind = meta.get("kind")
    if kind not in _BUILDERS:
        raise ValueError(f"Cannot load index {str(path)!r}: unknown index kind {kind!r}.")
    try:
        return _BUILDERS[kind](arrays, meta)
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"Cannot load index {str(path)!r}: inconsistent contents ({e}).") from e
