"""jaxtyping aliases shared across dpq_jax (annotations only; no runtime checking here)."""

from typing import Any

import jax
import numpy as np
from jaxtyping import Array, Bool, Float, Int, Shaped, UInt8, UInt32  # noqa: F401

PyTree = Any
ArrayLike = jax.Array | np.ndarray
Batch = dict[str, Any]
