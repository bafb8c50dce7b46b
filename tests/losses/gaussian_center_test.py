"""`nearest_center_codes` against a NumPy twin, on one device and on the 8-device data mesh."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dpq_jax import parallel
from dpq_jax.losses import gaussian_center as gc


def nearest_center_twin(codes: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """For each row: the ±1 sign code of the centre with the fewest differing signs (first on
    ties); sign(0) counts as +1, as `binary_sign`."""
    sign = lambda x: np.where(x >= 0, 1.0, -1.0)  # noqa: E731
    code_bits, center_bits = sign(codes), sign(centers)
    out = np.empty_like(code_bits)
    for i, row in enumerate(code_bits):
        hamming = [int((row != c).sum()) for c in center_bits]
        out[i] = center_bits[int(np.argmin(hamming))]
    return out


def _data(num=16, bits=12, classes=5, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(classes, bits)).astype(np.float32)
    centers[3] = centers[1]  # a tie: the first of the two equal centres wins
    codes = rng.normal(size=(num, bits)).astype(np.float32)
    codes[0] = centers[3]
    return codes, centers


def test_matches_twin_on_one_device():
    codes, centers = _data()
    got = np.asarray(gc.nearest_center_codes(jnp.asarray(codes), jnp.asarray(centers)))
    np.testing.assert_array_equal(got, nearest_center_twin(codes, centers))


def test_matches_twin_with_the_batch_sharded_over_eight_devices(cpu_devices):
    """A plain gather of the centre rows cannot resolve its output sharding under an explicit
    "data" mesh (this once failed when encoding a DCDH run with `encode="nearest_center"`)."""
    codes, centers = _data()
    mesh = parallel.make_mesh(devices=cpu_devices)
    with jax.set_mesh(mesh):
        got = jax.jit(gc.nearest_center_codes)(
            parallel.put_batch({"c": codes}, mesh)["c"],
            jax.device_put(jnp.asarray(centers), parallel.replicated(mesh)),
        )
    np.testing.assert_array_equal(np.asarray(got), nearest_center_twin(codes, centers))


def test_mismatched_code_length_is_one_clear_error():
    with pytest.raises(ValueError, match="must share k"):
        gc.nearest_center_codes(jnp.zeros((2, 4)), jnp.zeros((3, 5)))
