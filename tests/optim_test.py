"""`optim.make_optimizer`: each recipe's first updates against hand-computed optax rules."""

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from dpq_jax import optim


def _cfg(name, **kw):
    return ml_collections.ConfigDict({"name": name, "lr": 0.1, "schedule": "constant", **kw})


def _updates(cfg, grads_seq, params):
    tx, _ = optim.make_optimizer(cfg, total_steps=10)
    state = tx.init(params)
    out = []
    for g in grads_seq:
        u, state = tx.update(g, state, params)
        out.append(np.asarray(u))
    return out


def test_amsgrad_keeps_the_running_max_of_the_second_moment():
    params = jnp.zeros(2)
    grads = [jnp.asarray([1.0, 1.0]), jnp.asarray([0.1, 3.0])]
    got = _updates(_cfg("amsgrad"), grads, params)
    b1, b2, eps, lr = 0.9, 0.999, 1e-8, 0.1
    m = v = vmax = np.zeros(2)
    for t, (g, u) in enumerate(zip(grads, got, strict=True), start=1):
        g = np.asarray(g)
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g**2
        vmax = np.maximum(vmax, v / (1 - b2**t))  # optax: max of the bias-corrected moment
        np.testing.assert_allclose(u, -lr * (m / (1 - b1**t)) / (np.sqrt(vmax) + eps), rtol=1e-5)


def test_coupled_weight_decay_is_added_to_the_gradient():
    params = jnp.asarray([2.0, -1.0])
    (got,) = _updates(
        _cfg("sgd", momentum=0.0, weight_decay=0.5, decoupled_weight_decay=False),
        [jnp.zeros(2)],
        params,
    )
    np.testing.assert_allclose(got, -0.1 * 0.5 * np.asarray(params))


def test_unknown_optimizer_names_the_choices():
    with pytest.raises(ValueError, match="amsgrad"):
        optim.make_optimizer(_cfg("lamb"), total_steps=10)
