"""The jitted train step: same loss and update on 1 and 8 devices, compiled once."""

import os

import chex
import jax
import numpy as np
import pytest

from dpq_jax import config_lib, parallel, registry, train

CONFIG = os.path.join(os.path.dirname(__file__), "..", "configs", "orl_opqn.py")


def _run_steps(devices, num_steps, config, batches):
    mesh = parallel.make_mesh(devices=devices)
    graphdef, state, schedule = train.build_state(config, num_classes=5, in_channels=1)
    method = registry.get("method", config.method)
    step_fn = chex.assert_max_traces(
        train.make_train_step(graphdef, method.loss_fn, config.loss, schedule), n=1
    )
    step_fn = jax.jit(step_fn, donate_argnums=(0,))
    with jax.set_mesh(mesh):
        state = jax.device_put(state, parallel.replicated(mesh))
        losses = []
        for batch in batches[:num_steps]:
            state, metrics = step_fn(state, parallel.put_batch(batch, mesh))
            losses.append(float(metrics["train/loss"]))
    chex.clear_trace_counter()
    return losses, [
        np.asarray(x)
        for x in jax.tree.leaves(jax.device_get(state))
        if hasattr(x, "dtype") and np.issubdtype(x.dtype, np.floating)
    ]


@pytest.fixture(scope="module")
def setup():
    config = config_lib.load_config(CONFIG, "runlocal")
    rng = np.random.default_rng(0)
    batches = [
        {
            "image": rng.normal(size=(16, 32, 26, 1)).astype(np.float32),
            "label": rng.integers(0, 5, size=16).astype(np.int32),
        }
        for _ in range(3)
    ]
    return config, batches


def test_one_and_eight_devices_agree(cpu_devices, setup):
    config, batches = setup
    losses_1, params_1 = _run_steps(cpu_devices[:1], 2, config, batches)
    losses_8, params_8 = _run_steps(cpu_devices, 2, config, batches)
    np.testing.assert_allclose(losses_1, losses_8, rtol=1e-5)
    assert len(params_1) == len(params_8) > 0
    for a, b in zip(params_1, params_8, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_step_compiles_once_and_loss_decreases(cpu_devices, setup):
    config, batches = setup
    same = [batches[0]] * 3
    losses, _ = _run_steps(cpu_devices, 3, config, same)  # assert_max_traces(n=1) inside
    assert losses[2] < losses[0]
