"""Test setup: 8 fake CPU devices before JAX initializes, absl flags marked parsed."""

import os

os.environ.setdefault("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in os.environ["XLA_FLAGS"]:
    os.environ["XLA_FLAGS"] += " --xla_force_host_platform_device_count=8"
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax

jax.config.update("jax_num_cpu_devices", 8)

from absl import flags

flags.FLAGS.mark_as_parsed()

import pytest


@pytest.fixture(scope="session")
def cpu_devices():
    """The 8 fake CPU devices (explicitly CPU, so a GPU backend does not change the test)."""
    devices = jax.devices("cpu")
    assert len(devices) == 8, f"expected 8 fake CPU devices, got {len(devices)}"
    return devices


@pytest.fixture(scope="module")
def fast_compile():
    """Cheaper XLA compiles for tiny nets in one test module; the flag is restored after it."""
    old = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", old)
