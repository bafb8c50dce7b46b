"""Fixed orthonormal codebooks for OPQN (predefined, never trained).

Every codebook is a `[K, d]` block whose rows (codewords) are orthonormal, so the inner product
of two soft-quantized sub-vectors equals the inner product of their assignment probabilities.
All codebooks of a head are stacked as one `[M, K, d]` float32 array.

The codebooks are constants built once at model construction, so they are computed in NumPy
float64 (JAX runs float32 unless x64 is enabled) and returned as float32 JAX arrays; this keeps
`C_m = T^(m-1) C_1` orthonormal to ~1e-7 even for many books.

References:
  Zhang, Zhe & Yan, "Orthonormal Product Quantization Network for Scalable Face Image
  Retrieval", Pattern Recognition 2023 (arXiv 2107.00327), Sec. 3.2 ("Orthonormal codewords").
"""

import jax.numpy as jnp
import numpy as np

from dpq_jax.typing import Array, Float

# Codebook sizes the library offers in error messages (codes are stored as uint8, so K <= 256).
STANDARD_CODEBOOK_SIZES = (16, 32, 64, 128, 256)


def valid_pq_shapes(
    dim: int, codebook_sizes: tuple[int, ...] = STANDARD_CODEBOOK_SIZES
) -> tuple[tuple[int, int], ...]:
    """Every `(M, K)` for which orthonormal codebooks exist at embedding width `dim`.

    Orthonormal codewords need `K <= d` with `d = dim / M`, and `M` must divide `dim`.

    Args:
      dim: the embedding width D.
      codebook_sizes: the candidate K values.

    Returns:
      `(M, K)` pairs sorted by M then K, with M dividing `dim` and `K <= dim // M`.

    Raises:
      ValueError: `dim` is not a positive integer.

    Examples:
      >>> valid_pq_shapes(128)
      ((1, 16), (1, 32), (1, 64), (1, 128), (2, 16), (2, 32), (2, 64), (4, 16), (4, 32), (8, 16))
    """
    if int(dim) != dim or dim < 1:
        raise ValueError(f"Embedding width D must be a positive integer, got {dim!r}.")
    dim = int(dim)
    return tuple(
        (m, k)
        for m in range(1, dim + 1)
        if dim % m == 0
        for k in sorted(codebook_sizes)
        if k <= dim // m
    )


def _check_shape(num_codebooks: int, codebook_size: int, dim: int) -> None:
    """Raises ValueError unless `M, K, d` are positive ints with `K <= d` (orthonormality)."""
    for name, value in (
        ("num_codebooks", num_codebooks),
        ("codebook_size", codebook_size),
        ("dim", dim),
    ):
        if int(value) != value or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    if codebook_size > dim:
        total = num_codebooks * dim
        pairs = ", ".join(f"({m}, {k})" for m, k in valid_pq_shapes(total))
        raise ValueError(
            f"Orthonormal codebooks need codebook_size K <= subspace dim d, but K={codebook_size} "
            f"> d={dim} (D = M*d = {num_codebooks}*{dim} = {total}). Valid (M, K) for D={total} "
            f"with K in {STANDARD_CODEBOOK_SIZES}: {pairs}. Fix: pick one of these pairs, or "
            f"raise the embedding width to D = M*K = {num_codebooks * codebook_size}."
        )


def dct_basis(dim: int) -> np.ndarray:
    """The orthonormal DCT-II basis T `[d, d]` (float64 NumPy); columns are basis vectors.

    `T[j, k] = sqrt(2/d) cos((j + 1/2) k pi / d)`, with column 0 further divided by sqrt(2).

    Args:
      dim: the subspace dimension d.

    Returns:
      `[d, d]` float64 array with `T.T @ T = I`.
    """
    j = np.arange(dim, dtype=np.float64)[:, None]
    k = np.arange(dim, dtype=np.float64)[None, :]
    basis = np.cos((j + 0.5) * k * np.pi / dim)
    basis[:, 0] /= np.sqrt(2.0)
    return basis / np.sqrt(dim / 2.0)


def dct_orthonormal_codebooks(
    num_codebooks: int, codebook_size: int, dim: int
) -> Float[Array, "M K d"]:
    """OPQN's predefined codebooks: powers of the DCT-II basis.

    `C_1` is the first K columns of the DCT-II basis T; `C_m = T C_{m-1} = T^(m-1) C_1`. Each
    `C_m` has orthonormal columns (T is orthogonal); the result stores them as rows.

    Args:
      num_codebooks: M.
      codebook_size: K, at most `dim`.
      dim: d, the subspace dimension.

    Returns:
      `[M, K, d]` float32; `out[m, k]` is codeword k of book m, and `out[m] @ out[m].T = I_K`.

    Raises:
      ValueError: a non-positive size, or `K > d` (the message lists the valid (M, K)).

    References:
      OPQN (Zhang et al., PR 2023), Sec. 3.2; METHODS.md Sec. 1.1.
    """
    _check_shape(num_codebooks, codebook_size, dim)
    basis = dct_basis(dim)  # [d, d]
    book = basis[:, :codebook_size]  # C_1: [d, K]
    books = []
    for _ in range(num_codebooks):
        books.append(book.T)  # [K, d]
        book = basis @ book  # C_{m+1} = T C_m
    return jnp.asarray(np.stack(books), dtype=jnp.float32)  # [M, K, d]


def random_orthonormal_codebooks(
    num_codebooks: int, codebook_size: int, dim: int, seed: int = 0
) -> Float[Array, "M K d"]:
    """Random orthonormal codebooks: QR of a Gaussian, one independent draw per book.

    For each book a `[d, K]` standard normal matrix G (NumPy `default_rng(seed)`, drawn as one
    `[M, d, K]` block) is factored `G = Q R`; the signs are fixed so that `diag(R) > 0`, which
    makes Q unique (the Gram-Schmidt orthonormalisation of G's columns).

    Args:
      num_codebooks: M.
      codebook_size: K, at most `dim`.
      dim: d.
      seed: NumPy generator seed.

    Returns:
      `[M, K, d]` float32 with orthonormal rows in each book.

    Raises:
      ValueError: a non-positive size, or `K > d` (the message lists the valid (M, K)).
    """
    _check_shape(num_codebooks, codebook_size, dim)
    gauss = np.random.default_rng(seed).standard_normal((num_codebooks, dim, codebook_size))
    q, r = np.linalg.qr(gauss)  # q: [M, d, K], r: [M, K, K]
    signs = np.sign(np.diagonal(r, axis1=-2, axis2=-1))  # [M, K]
    signs = np.where(signs == 0, 1.0, signs)
    q = q * signs[:, None, :]
    return jnp.asarray(np.swapaxes(q, 1, 2), dtype=jnp.float32)  # [M, K, d]


_INITS = {"dct": dct_orthonormal_codebooks, "qr": random_orthonormal_codebooks}


def make_codebooks(
    kind: str, num_codebooks: int, codebook_size: int, dim: int, seed: int = 0
) -> Float[Array, "M K d"]:
    """Builds `[M, K, d]` orthonormal codebooks by name: `"dct"` (OPQN's) or `"qr"` (random).

    Raises:
      ValueError: unknown `kind`, or invalid sizes.
    """
    if kind == "dct":
        return dct_orthonormal_codebooks(num_codebooks, codebook_size, dim)
    if kind == "qr":
        return random_orthonormal_codebooks(num_codebooks, codebook_size, dim, seed)
    raise ValueError(f"Unknown codebook_init {kind!r}; use one of {sorted(_INITS)}.")
