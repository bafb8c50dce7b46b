"""Scoring kernels: ADC table sums, bit packing and Hamming distances.

The kernels score one block of queries against one chunk of the database. They are pure,
traceable and unchecked; the search entry points (`adc.py`, `hamming.py`), the exact top-k
engine (`topk.py`) and the retrieval metrics (`dpq_jax.metrics`) all call these, so every
part of the library computes the same scores bit for bit.

**Database-major layout.** The ADC kernels and `popcount_distances` return `[C, Q]` (one row
per database item), the layout that XLA:CPU vectorizes: with the table stored `[M * K, Q]`,
each code reads one contiguous row of `Q` floats per codebook, and the engine's running
maxima over runs of database rows are elementwise maxima of rows. The `[Q, C]` form (one
scalar table gather per query and code) ran 4-6x slower on the 2-core development CPU (jax
0.10.2; `BENCHMARKS.md`, "Search kernels"). The checked dense functions `adc_scores` and
`hamming_distances` return the usual `[Q, N]`.

**ADC scores** are `sum_m lut[q, m, codes[c, m]]` in float32, summed over `m` in increasing
order (the order `dpq_jax.metrics.reference.adc_scores` uses, so results are bitwise equal).
`kernel="auto"` picks `"gather"` on CPU and `"onehot"` (a dense matmul, for matrix units)
elsewhere; not measured on an accelerator.

**Bit packing** (`pack_bits`): bit `j` of a code is stored in word `j // 32`, at bit position
`j % 32` counted from the least significant bit (little-endian within each uint32 word). A
value is a 1-bit when it is `> 0`, so {0, 1} bits, booleans and {-1, +1} signs pack the same
way (+1 and 1 set the bit; -1 and 0 do not). Unused high bits of the last word are 0, so they
never add to a distance.

Why not pack the signs directly: the DDH and DCBH reference codes (`compactbit`) pack {-1, +1}
values as if they were {0, 1}: each byte is written as `sum_i s_i 2^i mod 256`, which equals
`2B + 1 mod 256` for the correct byte `B` of a full byte. Bit 7 of every full byte is lost and
partial bytes are distorted by borrows, so most distances are wrong (METHODS.md, Sec. 3.5).
`legacy_compactbit_pack` reproduces that bug for parity with published numbers only.

References:
  H. Jegou, M. Douze, C. Schmid. Product quantization for nearest neighbor search. IEEE TPAMI
  33(1), 2011, Sec. III-A, Eq. (13) (ADC) and Sec. IV (exhaustive search).
  Y. Weiss, A. Torralba, R. Fergus. Spectral Hashing. NIPS 2008 (the `compactbit` /
  `hammingDist` utilities that DDH and DCBH adapted).
"""

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax import lax

from dpq_jax.search import checks
from dpq_jax.typing import Array, Float, Int, Shaped, UInt8, UInt32

KERNELS = ("gather", "onehot")
WORD_BITS = 32

_HIGHEST = lax.Precision.HIGHEST


# --------------------------------------------------------------------------------------------
# ADC scoring kernels (database-major).
# --------------------------------------------------------------------------------------------


def scores_gather(lut: Float[Array, "q m k"], codes: Int[Array, "c m"]) -> Float[Array, "c q"]:
    """ADC scores by row gathers: `out[c, q] = sum_m lut[q, m, codes[c, m]]`.

    The table is laid out `[M * K, Q]`, so each (code, codebook) pair reads one contiguous row
    of `Q` floats; the rows are summed over `m` in increasing order, in float32. Out-of-range
    codes are clipped (callers validate concrete codes first).

    Args:
      lut: `[Q, M, K]` lookup table.
      codes: `[C, M]` integer codes of a database chunk.

    Returns:
      `[C, Q]` float32 scores (database-major).

    Examples:
      >>> lut = jnp.array([[[0.0, 1.0], [0.0, 2.0]]])  # Q=1, M=2, K=2
      >>> scores_gather(lut, jnp.array([[1, 1], [0, 1]], jnp.uint8)).tolist()
      [[3.0], [2.0]]
    """
    num_q, num_m, num_k = lut.shape
    table = jnp.transpose(lut.astype(jnp.float32), (1, 2, 0)).reshape(num_m * num_k, num_q)

    def row(m):  # [C] table rows of codebook m; converting one column at a time keeps the
        # conversion inside the gather loop (converting all [C, M] codes first made XLA:CPU
        # write them out as int32 when M = 16: 4x slower candidate re-scoring)
        return jnp.take(table, codes[:, m].astype(jnp.int32) + num_k * m, axis=0, mode="clip")

    total = row(0)  # [C, Q]
    for m in range(1, num_m):  # M is small and static; a fixed order keeps sums reproducible
        total = total + row(m)
    return total


def scores_onehot(lut: Float[Array, "q m k"], codes: Int[Array, "c m"]) -> Float[Array, "c q"]:
    """ADC scores as a matmul: `out = one_hot(codes).reshape(C, M*K) @ lut.reshape(Q, M*K).T`.

    Float32 with `Precision.HIGHEST`, so accelerators do not drop to bf16/tf32. Equal to
    `scores_gather` up to float rounding (the matmul may sum in another order).

    Args:
      lut: `[Q, M, K]` lookup table.
      codes: `[C, M]` integer codes of a database chunk.

    Returns:
      `[C, Q]` float32 scores (database-major).
    """
    onehot = jax.nn.one_hot(codes, lut.shape[2], dtype=jnp.float32)  # [C, M, K]
    return jnp.einsum(
        "cmk,qmk->cq",
        onehot,
        lut.astype(jnp.float32),
        precision=_HIGHEST,
        preferred_element_type=jnp.float32,
    )


def scores_decode(
    query: Float[Array, "q ..."], codebooks: Float[Array, "m k d"], codes: Int[Array, "c m"]
) -> Float[Array, "c q"]:
    """Inner-product scores by decoding the chunk: `out[c, q] = <[c_{m, codes[c, m]}]_m, query_q>`.

    Equal to `scores_gather(lut_inner_product(query, codebooks), codes)` up to float rounding;
    cheaper when `D < M * K`. Inner product only.

    Args:
      query: `[Q, D]` or `[Q, M, d]` queries.
      codebooks: `[M, K, d]` codewords.
      codes: `[C, M]` integer codes.

    Returns:
      `[C, Q]` float32 scores (database-major).
    """
    m, _, d = codebooks.shape
    query = jnp.asarray(query).reshape(-1, m, d).astype(jnp.float32)  # [Q, M, d]
    # recon[c, m, :] = codebooks[m, codes[c, m], :]  -> [C, M, d]
    recon = codebooks.astype(jnp.float32)[jnp.arange(m)[None, :], codes.astype(jnp.int32)]
    return jnp.einsum(
        "cmd,qmd->cq", recon, query, precision=_HIGHEST, preferred_element_type=jnp.float32
    )


def resolve_kernel(kernel: str | Callable) -> Callable:
    """The ADC kernel named by `kernel` (`"auto"`, `"gather"`, `"onehot"`) or `kernel` itself.

    Raises:
      ValueError: an unknown name.
    """
    if callable(kernel):
        return kernel
    if kernel == "auto":
        kernel = "gather" if jax.default_backend() == "cpu" else "onehot"
    if kernel == "gather":
        return scores_gather
    if kernel == "onehot":
        return scores_onehot
    raise ValueError(
        f"kernel must be 'auto', one of {KERNELS} or a callable (lut [q, M, K], codes [c, M]) "
        f"-> scores [c, q], got {kernel!r}. For decode-then-matmul scoring call decode_topk."
    )


def adc_scores(
    lut: Float[Array, "q m k"], codes: Int[Array, "n m"], *, kernel: str | Callable = "auto"
) -> Float[Array, "q n"]:
    """Dense ADC scores of every query against every item (small databases only).

    Args:
      lut: `[Q, M, K]` lookup table.
      codes: `[N, M]` integer codes in `[0, K)`.
      kernel: `"auto"`, `"gather"`, `"onehot"` or a callable `(lut, codes) -> [N, Q]`.

    Returns:
      `[Q, N]` float32 scores `sum_m lut[q, m, codes[n, m]]`.

    Raises:
      ValueError: bad shapes or dtypes, non-finite table, codes outside `[0, K)`.

    Examples:
      >>> lut = jnp.array([[[0.0, 1.0], [0.0, 2.0]]])  # Q=1, M=2, K=2
      >>> adc_scores(lut, jnp.array([[1, 1], [0, 1]], jnp.uint8)).tolist()
      [[3.0, 2.0]]
    """
    checks.check_lut(lut)
    checks.check_codes(codes, lut.shape[1], lut.shape[2])
    resolve_kernel(kernel)
    return _adc_scores(jnp.asarray(lut), jnp.asarray(codes), kernel=kernel)


@functools.partial(jax.jit, static_argnames=("kernel",))
def _adc_scores(lut, codes, *, kernel):
    return resolve_kernel(kernel)(lut.astype(jnp.float32), codes).astype(jnp.float32).T


# --------------------------------------------------------------------------------------------
# Binary codes: packing and Hamming distances.
# --------------------------------------------------------------------------------------------


def pack_bits(bits: Shaped[Array, "n b"]) -> UInt32[Array, "n w"]:
    """Packs binary codes into uint32 words, little-endian within each word.

    Args:
      bits: `[N, b]` codes: {0, 1} integers, booleans, or {-1, +1} signs (any real values are
        read as `value > 0`; so an exact 0 is a 0-bit, map it first if a method needs
        `sign(0) = +1`).

    Returns:
      `[N, ceil(b / 32)]` uint32; bit `j` is `(out[:, j // 32] >> (j % 32)) & 1`.

    Raises:
      ValueError: `bits` is not 2-D or has no columns.

    Examples:
      >>> pack_bits(jnp.array([[1, 0, 1], [-1, 1, 1]])).tolist()
      [[5], [6]]
    """
    bits = jnp.asarray(bits)
    checks.check_2d(bits, "bits")
    if bits.shape[1] == 0:
        raise ValueError("bits has 0 columns; a code needs at least one bit.")
    return _pack_bits(bits)


@jax.jit
def _pack_bits(bits):
    num_n, num_bits = bits.shape
    words = -(-num_bits // WORD_BITS)
    ones = (bits > 0).astype(jnp.uint32)
    ones = jnp.pad(ones, ((0, 0), (0, words * WORD_BITS - num_bits)))
    ones = ones.reshape(num_n, words, WORD_BITS)  # [N, W, 32]
    shifts = jnp.arange(WORD_BITS, dtype=jnp.uint32)
    # Distinct powers of two: the sum is an exact bitwise OR.
    return jnp.sum(ones << shifts, axis=-1, dtype=jnp.uint32)


def unpack_bits(packed: UInt32[Array, "n w"], num_bits: int) -> UInt8[Array, "n b"]:
    """Inverse of `pack_bits`: `[N, W]` uint32 -> `[N, num_bits]` uint8 in {0, 1}.

    Args:
      packed: `[N, W]` unsigned words from `pack_bits`.
      num_bits: code length b, `32 * (W - 1) < b <= 32 * W`.

    Returns:
      `[N, num_bits]` uint8 bits.

    Raises:
      ValueError: bad shape or dtype, or `num_bits` inconsistent with W.
    """
    packed = jnp.asarray(packed)
    checks.check_packed(packed, "packed")
    if packed.dtype != jnp.uint32:
        raise ValueError(f"packed must be uint32 words from pack_bits, got {packed.dtype}.")
    words = packed.shape[1]
    if not (WORD_BITS * (words - 1) < num_bits <= WORD_BITS * words):
        raise ValueError(
            f"num_bits = {num_bits} does not fit {words} uint32 words; expected "
            f"{WORD_BITS * (words - 1) + 1}..{WORD_BITS * words}."
        )
    return _unpack_bits(packed, num_bits=int(num_bits))


@functools.partial(jax.jit, static_argnames=("num_bits",))
def _unpack_bits(packed, *, num_bits):
    words = packed.shape[1]
    shifts = jnp.arange(WORD_BITS, dtype=jnp.uint32)
    bits = (packed.astype(jnp.uint32)[:, :, None] >> shifts) & 1  # [N, W, 32]
    return bits.reshape(packed.shape[0], words * WORD_BITS)[:, :num_bits].astype(jnp.uint8)


def popcount_distances(
    q_packed: UInt32[Array, "q w"], db_packed: UInt32[Array, "c w"]
) -> Int[Array, "c q"]:
    """Hamming distances `sum_w popcount(db[c, w] XOR q[q, w])`, database-major (unchecked).

    Words are summed one at a time (W is small and static), so the whole computation is one
    elementwise loop over `[C, Q]`.

    Args:
      q_packed: `[Q, W]` packed query codes.
      db_packed: `[C, W]` packed database codes (same unsigned dtype).

    Returns:
      `[C, Q]` int32 distances.
    """
    total = jnp.zeros((db_packed.shape[0], q_packed.shape[0]), jnp.int32)
    for w in range(q_packed.shape[1]):
        diff = db_packed[:, w][:, None] ^ q_packed[:, w][None, :]  # [C, Q]
        total = total + lax.population_count(diff).astype(jnp.int32)
    return total


def hamming_distances(
    q_packed: UInt32[Array, "q w"], db_packed: UInt32[Array, "n w"]
) -> Int[Array, "q n"]:
    """All-pairs Hamming distances `popcount(q XOR db)` summed over words.

    Works for any unsigned word type (uint32 from `pack_bits`, uint8 from
    `legacy_compactbit_pack`), as long as both sides match.

    Args:
      q_packed: `[Q, W]` packed query codes.
      db_packed: `[N, W]` packed database codes.

    Returns:
      `[Q, N]` int32 distances.

    Raises:
      ValueError: not 2-D, not unsigned, or mismatched word counts or dtypes.

    Examples:
      >>> hamming_distances(pack_bits(jnp.array([[1, 1, 0]])),
      ...                   pack_bits(jnp.array([[1, 0, 0], [0, 0, 1]]))).tolist()
      [[1, 3]]
    """
    q_packed, db_packed = jnp.asarray(q_packed), jnp.asarray(db_packed)
    checks.check_pair(q_packed, db_packed)
    return _hamming_distances(q_packed, db_packed)


@jax.jit
def _hamming_distances(q_packed, db_packed):
    return popcount_distances(q_packed, db_packed).T


def hamming_from_signs(
    q_signs: Shaped[Array, "q b"], db_signs: Shaped[Array, "n b"]
) -> Int[Array, "q n"]:
    """Hamming distances of {-1, +1} codes by a matmul: `(b - q_signs @ db_signs.T) / 2`.

    For +-1 vectors, `<q, x> = (b - H) - H`, hence `H = (b - <q, x>) / 2`. Computed in float32
    with `Precision.HIGHEST` (exact for b < 2^24) and rounded to int32.

    Args:
      q_signs: `[Q, b]` query signs in {-1, +1}.
      db_signs: `[N, b]` database signs in {-1, +1}.

    Returns:
      `[Q, N]` int32 distances.

    Raises:
      ValueError: shapes do not match, or (when concrete) entries other than -1 and +1.

    References:
      The inner-product form of the Hamming distance used by pairwise hashing losses, e.g.
      Liu et al., "Deep Supervised Hashing for Fast Image Retrieval", CVPR 2016.
    """
    q_signs, db_signs = jnp.asarray(q_signs), jnp.asarray(db_signs)
    checks.check_2d(q_signs, "q_signs")
    checks.check_2d(db_signs, "db_signs")
    if q_signs.shape[1] != db_signs.shape[1]:
        raise ValueError(
            f"q_signs has b = {q_signs.shape[1]} bits but db_signs has {db_signs.shape[1]}."
        )
    for name, x in (("q_signs", q_signs), ("db_signs", db_signs)):
        bounds = checks.value_range(_abs(x)) if x.size else None
        if bounds is not None and bounds != (1, 1):
            raise ValueError(
                f"{name} must contain only -1 and +1; map {{0,1}} bits with 2*bits-1 or use "
                "hamming_distances on packed bits."
            )
    return _from_signs(q_signs, db_signs)


_abs = jax.jit(jnp.abs)


@jax.jit
def _from_signs(q_signs, db_signs):
    dots = jnp.einsum(
        "qb,nb->qn",
        q_signs.astype(jnp.float32),
        db_signs.astype(jnp.float32),
        precision=lax.Precision.HIGHEST,
        preferred_element_type=jnp.float32,
    )
    return jnp.rint((q_signs.shape[1] - dots) / 2).astype(jnp.int32)


def legacy_compactbit_pack(signs: Shaped[Array, "n b"]) -> UInt8[Array, "n w8"]:
    """Emulates the buggy `compactbit` of the DDH / DCBH reference codes (parity only).

    The references call `compactbit` on sign codes in {-1, +1} (DDH: `sgn`, so also 0) and
    write byte `j` as `sum_i s_{8j+i} 2^i` into a uint8, which wraps modulo 256. For a full
    byte with correct 0/1 value `B` that is `2B + 1 mod 256`: bit 7 is lost and the pattern
    shifts, so Hamming distances computed on these bytes (`popcount` of XOR, as the references
    do) are wrong for most pairs. Never use this for new results; use `pack_bits`.

    Args:
      signs: `[N, b]` codes; `sign()` is applied first, as the references did, so {-1, 0, +1}
        sign codes and raw real-valued outputs give what the references stored.

    Returns:
      `[N, ceil(b / 8)]` uint8 bytes exactly as the references store them (on the usual
      platforms, where a negative value cast to uint8 wraps modulo 256); compare them with
      `hamming_distances`.

    Raises:
      ValueError: not 2-D.
    """
    signs = jnp.asarray(signs)
    checks.check_2d(signs, "signs")
    return _legacy_compactbit_pack(signs)


@jax.jit
def _legacy_compactbit_pack(signs):
    num_n, num_bits = signs.shape
    num_bytes = -(-num_bits // 8)
    s = jnp.pad(jnp.sign(signs).astype(jnp.int32), ((0, 0), (0, num_bytes * 8 - num_bits)))
    s = s.reshape(num_n, num_bytes, 8)  # [N, bytes, 8]
    weights = jnp.left_shift(1, jnp.arange(8, dtype=jnp.int32))
    value = jnp.sum(s * weights, axis=-1)  # in [-255, 255]
    return jnp.mod(value, 256).astype(jnp.uint8)
