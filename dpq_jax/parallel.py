"""The one module that knows the mesh axis names.

Data parallelism is `jax.jit` over arrays placed with `NamedSharding` on a one-axis `"data"`
mesh: the batch is split over `P("data")`, parameters and optimizer state are replicated
`P()`. The compiler averages gradients across devices; BatchNorm sees global-batch statistics.
Everything here is a no-op friendly helper: pure functions still run without a mesh.
"""

from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

DATA_AXIS = "data"

_AXIS_TYPES = {"explicit": AxisType.Explicit, "auto": AxisType.Auto}


def make_mesh(
    num_devices: int = -1, axis_types: str = "explicit", devices=None
) -> jax.sharding.Mesh:
    """A one-axis `"data"` mesh over `num_devices` devices (-1: all devices of all hosts).

    Args:
      num_devices: how many devices to use; -1 means `jax.device_count()`.
      axis_types: `"explicit"` (JAX's default; collectives stay visible) or `"auto"`.
      devices: optional explicit device list (tests pass `jax.devices("cpu")`).

    Raises:
      ValueError: unknown axis type, or more devices asked for than exist.
    """
    if axis_types not in _AXIS_TYPES:
        raise ValueError(
            f"mesh_axis_types must be one of {sorted(_AXIS_TYPES)}, got {axis_types!r}."
        )
    devices = list(jax.devices() if devices is None else devices)
    n = len(devices) if num_devices in (-1, None) else int(num_devices)
    if n > len(devices) or n < 1:
        raise ValueError(f"Asked for a mesh of {n} devices but {len(devices)} are available.")
    return jax.sharding.Mesh(
        np.asarray(devices[:n]), (DATA_AXIS,), axis_types=(_AXIS_TYPES[axis_types],)
    )


def data_sharding(mesh: jax.sharding.Mesh) -> NamedSharding:
    """Leading (batch) axis split over `"data"`."""
    return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
    """Fully replicated placement (parameters, optimizer state, small tables)."""
    return NamedSharding(mesh, P())


def check_batch_size(global_batch_size: int, mesh: jax.sharding.Mesh) -> int:
    """Returns the per-process batch size; raises if the batch does not split evenly.

    Raises:
      ValueError: `global_batch_size` is not a multiple of the device count.
    """
    n = mesh.devices.size
    if global_batch_size % n:
        raise ValueError(
            f"Global batch size {global_batch_size} is not divisible by the {n} devices of the "
            f"mesh; set --config.input.batch_size to a multiple of {n}."
        )
    return global_batch_size // jax.process_count()


def put_batch(batch: Mapping[str, Any], mesh: jax.sharding.Mesh) -> dict[str, jax.Array]:
    """Assembles global arrays sharded `P("data")` from this process's slice of the batch.

    Each host passes only its own rows (`[B / process_count, ...]`); works unchanged on one
    device, many local devices, or a multi-host slice.
    """
    sharding = data_sharding(mesh)
    return {
        key: jax.make_array_from_process_local_data(sharding, np.asarray(value))
        for key, value in batch.items()
    }


def mesh_is_set() -> bool:
    """Whether a mesh context is active (`jax.set_mesh`)."""
    return not jax.sharding.get_abstract_mesh().empty


def gather_batch(x: jax.Array) -> jax.Array:
    """Replicates a batch-sharded array (for all-pairs terms); identity without a mesh.

    In explicit mode an all-pairs product of the sharded batch with itself is a sharding
    type error; resharding one side to `P()` makes the communication explicit.
    """
    if not mesh_is_set():
        return x
    return jax.sharding.reshard(x, P())


def to_host(tree: Any) -> Any:
    """NumPy copies of the arrays in `tree`, gathered from every process where needed.

    An array sharded over devices of other processes (a multi-host `P("data")` result) cannot
    be read by `jax.device_get`; it is all-gathered first, so every process gets the whole
    value. On one process this is `jax.device_get`. With several processes, all of them must
    call it together, in the same order (it is a collective).
    """

    def get(x):
        if isinstance(x, jax.Array) and not (x.is_fully_addressable or x.is_fully_replicated):
            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return np.asarray(jax.device_get(x))

    return jax.tree.map(get, tree)
