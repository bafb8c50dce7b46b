"""Input checks shared by the search modules: shapes, dtypes, value ranges, options, meshes.

Each check raises a `ValueError` that names the argument and the fix. Value ranges are only
checked on concrete arrays (NumPy inputs on the host, device arrays by one small jitted
reduction); while being traced, a check sees shapes and dtypes only.
"""

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from dpq_jax.parallel import DATA_AXIS
from dpq_jax.typing import Array

TIES = ("stable", "random")


def concrete_or_none(x) -> np.ndarray | None:
    """Returns `x` as a NumPy value when it is concrete, or None while it is being traced."""
    try:
        return np.asarray(x)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return None


@jax.jit
def _min_max(x):
    return jnp.min(x), jnp.max(x)


def value_range(x) -> tuple[float, float] | None:
    """`(min, max)` of a non-empty array when it is concrete, None while tracing.

    NumPy inputs are reduced on the host; device arrays by one small jitted reduction, so
    validating a large database does not copy it to the host. NaN propagates into the result.
    """
    if not isinstance(x, jax.Array):
        x = np.asarray(x)
        return x.min().item(), x.max().item()
    lo, hi = _min_max(x)
    lo, hi = concrete_or_none(lo), concrete_or_none(hi)
    if lo is None or hi is None:
        return None
    return lo.item(), hi.item()


def check_k(k, num_items: int, what: str = "database") -> int:
    """Validates the number of results `k` against the database size.

    Raises:
      ValueError: empty database, or `k` not an integer in `[1, num_items]`.
    """
    if num_items == 0:
        raise ValueError(f"The {what} is empty (N = 0); add items before searching.")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise ValueError(f"k must be a Python int, got {k!r} of type {type(k).__name__}.")
    k = int(k)
    if not 1 <= k <= num_items:
        raise ValueError(
            f"k = {k} is out of range for a {what} of N = {num_items} items; "
            f"ask for 1 <= k <= {num_items}."
        )
    return k


def check_chunks(chunk_size, query_chunk) -> tuple[int, int]:
    """Validates the database and query chunk sizes (positive ints)."""
    for name, value in (("chunk_size", chunk_size), ("query_chunk", query_chunk)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}.")
    return int(chunk_size), int(query_chunk)


def check_ties(ties: str, seed) -> None:
    """Validates the tie policy name and its seed."""
    if ties not in TIES:
        raise ValueError(f"ties must be one of {TIES}, got {ties!r}.")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**32:
        raise ValueError(f"seed must be an int in [0, 2**32), got {seed!r}.")


def check_mesh(mesh) -> None:
    """Validates that `mesh` is a Mesh with a `"data"` axis."""
    if not isinstance(mesh, jax.sharding.Mesh) or DATA_AXIS not in mesh.axis_names:
        raise ValueError(
            f"mesh must be a jax.sharding.Mesh with a {DATA_AXIS!r} axis; build one with "
            f"dpq_jax.parallel.make_mesh(), got {mesh!r}."
        )


def database_mesh(x) -> jax.sharding.Mesh | None:
    """The mesh of a concrete device array that is split across devices, else None.

    The single-device search functions use it to hand a database that is already sharded
    (e.g. encoded under a mesh) to the sharded search, since in explicit mode padding or
    chunking a sharded axis is a sharding type error.

    Raises:
      ValueError: `x` is split over a mesh that has no `"data"` axis.
    """
    if not isinstance(x, jax.Array):
        return None
    try:
        sharding = x.sharding
    except Exception:  # a tracer: placement is the caller's jit's business
        return None
    if not isinstance(sharding, NamedSharding) or sharding.is_fully_replicated:
        return None
    if (
        not isinstance(sharding.mesh, jax.sharding.Mesh)
        or DATA_AXIS not in sharding.mesh.axis_names
    ):
        raise ValueError(
            f"The database is sharded as {sharding.spec} over a mesh without a {DATA_AXIS!r} "
            "axis; pass a host or replicated array, or place it with parallel.data_sharding."
        )
    return sharding.mesh


def replicate_if_sharded(x):
    """`x` replicated on its mesh if it is a concrete array split across devices; else `x`.

    The single-device search functions chunk and pad their inputs, which explicit sharding
    forbids along a sharded axis; small operands (queries, tables) are simply replicated.
    """
    if not isinstance(x, jax.Array):
        return x
    try:
        sharding = x.sharding
    except Exception:  # a tracer
        return x
    if isinstance(sharding, NamedSharding) and not sharding.is_fully_replicated:
        return jax.device_put(x, NamedSharding(sharding.mesh, P()))
    return x


def check_lut(lut, name: str = "lut") -> None:
    """Validates a `[Q, M, K]` floating lookup table (finite entries when concrete)."""
    if getattr(lut, "ndim", None) != 3:
        raise ValueError(
            f"{name} must have shape [Q, M, K] (queries, codebooks, codewords), got shape "
            f"{getattr(lut, 'shape', None)}; build it with one of the lut_* functions."
        )
    if not jnp.issubdtype(lut.dtype, jnp.floating):
        raise ValueError(f"{name} must be floating point, got dtype {lut.dtype}.")
    if lut.shape[1] == 0 or lut.shape[2] == 0:
        raise ValueError(f"{name} has an empty codebook axis: shape {lut.shape}.")
    bounds = value_range(lut) if lut.size else None
    if bounds is not None and not np.all(np.isfinite(bounds)):
        raise ValueError(
            f"{name} contains NaN or infinite entries; ranking would be undefined. Check the "
            "queries and codebooks it was built from."
        )


def check_codes(codes, num_codebooks: int, codebook_size: int, name: str = "codes") -> None:
    """Validates `[N, M]` integer codes against M and K (value range only when concrete)."""
    if getattr(codes, "ndim", None) != 2:
        raise ValueError(
            f"{name} must have shape [N, M] (items, codebooks), got shape "
            f"{getattr(codes, 'shape', None)}."
        )
    if not jnp.issubdtype(codes.dtype, jnp.integer):
        raise ValueError(
            f"{name} must be an integer array (uint8 for K <= 256), got dtype {codes.dtype}."
        )
    if codes.shape[1] != num_codebooks:
        raise ValueError(
            f"{name} has {codes.shape[1]} columns but the lookup table has M = {num_codebooks} "
            "codebooks; they must match."
        )
    if codes.shape[0] == 0:
        return
    bounds = value_range(codes)
    if bounds is not None and (bounds[0] < 0 or bounds[1] >= codebook_size):
        raise ValueError(
            f"{name} must lie in [0, K) = [0, {codebook_size}), found values in "
            f"[{int(bounds[0])}, {int(bounds[1])}]; the codes do not belong to these codebooks."
        )


def check_codebooks(codebooks, name: str = "codebooks") -> None:
    """Validates `[M, K, d]` floating codebooks."""
    if getattr(codebooks, "ndim", None) != 3:
        raise ValueError(
            f"{name} must have shape [M, K, d], got shape {getattr(codebooks, 'shape', None)}."
        )
    if not jnp.issubdtype(codebooks.dtype, jnp.floating):
        raise ValueError(f"{name} must be floating point, got dtype {codebooks.dtype}.")


def check_query(query, num_codebooks: int, sub_dim: int, name: str = "query") -> Array:
    """Checks a `[Q, D]` or `[Q, M, d]` query against the codebooks; returns it as an array."""
    query = jnp.asarray(query)
    if query.ndim == 3:
        if query.shape[1:] != (num_codebooks, sub_dim):
            raise ValueError(
                f"{name} has shape {query.shape}; expected [Q, M, d] = "
                f"[Q, {num_codebooks}, {sub_dim}] to match the codebooks."
            )
        return query
    if query.ndim != 2:
        raise ValueError(f"{name} must have shape [Q, D] or [Q, M, d], got {query.shape}.")
    if query.shape[1] != num_codebooks * sub_dim:
        raise ValueError(
            f"{name} has D = {query.shape[1]} but the codebooks need D = M * d = "
            f"{num_codebooks} * {sub_dim} = {num_codebooks * sub_dim}."
        )
    return query


def check_2d(x, name: str) -> None:
    """Validates that `x` is a 2-D array."""
    if getattr(x, "ndim", None) != 2:
        raise ValueError(
            f"{name} must be a 2-D array [N, ...], got shape {getattr(x, 'shape', None)}."
        )


def check_packed(packed, name: str) -> None:
    """Validates `[N, W]` packed unsigned words with at least one word per code."""
    check_2d(packed, name)
    if not jnp.issubdtype(packed.dtype, jnp.unsignedinteger):
        raise ValueError(
            f"{name} must be packed unsigned words (uint32 from pack_bits), got dtype "
            f"{packed.dtype}; pack {{0,1}} or +-1 codes with pack_bits first."
        )
    if packed.shape[1] == 0:
        raise ValueError(f"{name} has 0 words per code.")


def check_pair(q_packed, db_packed) -> None:
    """Validates packed queries and database: same unsigned dtype and number of words."""
    check_packed(q_packed, "q_packed")
    check_packed(db_packed, "db_packed")
    if q_packed.dtype != db_packed.dtype or q_packed.shape[1] != db_packed.shape[1]:
        raise ValueError(
            f"Query codes {q_packed.dtype}{list(q_packed.shape)} and database codes "
            f"{db_packed.dtype}{list(db_packed.shape)} must have the same dtype and number of "
            "words; pack both with the same function and code length."
        )
