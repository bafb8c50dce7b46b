"""TQL's losses (dpq_jax.losses.triplet) against the brute-force twins of
losses/triplet_reference.py: mined triplets (hand-made cases with ties and inactive hinges),
values, gradients (finite differences with the mined triplets held fixed; the straight-through
sign) and 1 vs 8 devices."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dpq_jax import parallel
from dpq_jax.losses import pairwise, triplet
from dpq_jax.losses import triplet_reference as ref

MININGS = triplet.MININGS

# Hand-made anchor-row distances (labels 0, 0, 0, 1, 1; margin 1) with ties: anchor 0's two
# positives tie at 2, anchor 1's negatives tie at 4, and some hinges are inactive or exactly 0.
HAND_DIST = np.asarray(
    [
        [0, 2, 2, 1, 3],
        [2, 0, 4, 4, 4],
        [2, 4, 0, 7, 6],
        [1, 4, 5, 0, 1],
        [3, 4, 6, 1, 0],
    ],
    np.float32,
)
HAND_LABELS = np.asarray([0, 0, 0, 1, 1], np.int32)
# Worked out by hand from the rules in the loss's docstring: (triplets, loss).
HAND_EXPECTED = {
    "batch_hard": ({(0, 1, 3), (1, 2, 3), (2, 1, 4), (3, 4, 0), (4, 3, 0)}, (2 + 1 + 1) / 5),
    "semi_hard": (
        {(0, 1, 4), (0, 2, 4), (1, 0, 3), (1, 2, 3), (2, 0, 4), (2, 1, 4), (3, 4, 1), (4, 3, 0)},
        1 / 8,
    ),
    "batch_all": ({(0, 1, 3), (0, 2, 3), (1, 2, 3), (1, 2, 4), (3, 4, 0)}, 7 / 5),
}


def _sim(labels):
    return pairwise.similarity(jnp.asarray(labels))


def _picked(dist, labels, margin, mining):
    mask = triplet.mined_triplets(jnp.asarray(dist), _sim(labels), margin=margin, mining=mining)
    return {tuple(int(i) for i in t) for t in np.argwhere(np.asarray(mask))}


def _finite_difference(fn, x, eps=1e-6):
    x = np.asarray(x, np.float64)
    grad = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        up, down = x.copy(), x.copy()
        up[idx] += eps
        down[idx] -= eps
        grad[idx] = (fn(up) - fn(down)) / (2 * eps)
    return grad


def _codes(seed, batch=10, bits=4, scale=0.8):
    return np.tanh(np.random.default_rng(seed).normal(scale=scale, size=(batch, bits))).astype(
        np.float32
    )


LABELS10 = np.asarray([0, 1, 2, 0, 1, 2, 0, 1, 0, 2], np.int32)


# --- mining ------------------------------------------------------------------------------------
@pytest.mark.parametrize("mining", MININGS)
def test_mining_on_hand_made_triplets(mining):
    want_triplets, want_loss = HAND_EXPECTED[mining]
    assert set(ref.mine(HAND_DIST, HAND_LABELS, margin=1.0, mining=mining)) == want_triplets
    assert _picked(HAND_DIST, HAND_LABELS, 1.0, mining) == want_triplets
    loss, parts = triplet.triplet_loss(
        jnp.asarray(HAND_DIST), _sim(HAND_LABELS), margin=1.0, mining=mining
    )
    np.testing.assert_allclose(float(loss), want_loss, rtol=1e-6)
    assert float(parts["triplets"]) == len(want_triplets)


def test_no_triplet_gives_zero_loss():
    dist = jnp.asarray(HAND_DIST)
    for mining in MININGS:  # one class: no negatives at all
        loss, parts = triplet.triplet_loss(
            dist, _sim(np.zeros(5, np.int32)), margin=1, mining=mining
        )
        assert float(loss) == 0.0 and float(parts["triplets"]) == 0.0
    # Every hinge inactive: batch-all averages over nothing, the others over inactive triplets.
    loss, parts = triplet.triplet_loss(dist, _sim(HAND_LABELS), margin=-10.0, mining="batch_all")
    assert float(loss) == 0.0 and float(parts["active"]) == 0.0


@pytest.mark.parametrize("mining", MININGS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mining_on_binary_codes_with_many_ties_equals_brute_force(mining, seed):
    """±1 codes of 4 bits: distances take 5 values, so most picks are decided by the tie rule."""
    rng = np.random.default_rng(seed)
    b = np.where(rng.random((12, 4)) < 0.5, 1.0, -1.0).astype(np.float32)
    labels = rng.integers(0, 3, 12).astype(np.int32)
    dist = np.asarray(triplet.squared_distances(jnp.asarray(b), jnp.asarray(b)))
    np.testing.assert_array_equal(dist, ref.squared_distances(b, b))  # exact integers
    for margin in (0.0, 2.0, 4.0, 6.0):  # 0 and 4: hinges exactly at 0 occur
        want = ref.mine(dist, labels, margin=margin, mining=mining)
        assert _picked(dist, labels, margin, mining) == set(want)
        loss, _ = triplet.triplet_loss(
            jnp.asarray(dist), _sim(labels), margin=margin, mining=mining
        )
        np.testing.assert_allclose(
            float(loss), ref.loss_of_triplets(dist, want, margin=margin), rtol=1e-6
        )


@pytest.mark.parametrize("mining", MININGS)
def test_asymmetric_distances_and_multi_hot_labels(mining):
    rng = np.random.default_rng(3)
    dist = rng.integers(0, 6, (9, 9)).astype(np.float32)  # not symmetric, with ties
    labels = (rng.random((9, 3)) < 0.4).astype(np.int32)  # rows may share none or several
    for margin in (0.5, 3.0):
        want = ref.mine(dist, labels, margin=margin, mining=mining)
        assert _picked(dist, labels, margin, mining) == set(want)
        loss, _ = triplet.triplet_loss(
            jnp.asarray(dist), _sim(labels), margin=margin, mining=mining
        )
        np.testing.assert_allclose(
            float(loss), ref.triplet_loss(dist, labels, margin=margin, mining=mining), rtol=1e-6
        )


# --- values --------------------------------------------------------------------------------------
def test_sign_ste_is_exactly_the_sign_with_an_identity_gradient():
    f = jnp.asarray(_codes(4, 6, 5))
    b = triplet.sign_ste(f)
    np.testing.assert_array_equal(np.asarray(b), ref.sign(np.asarray(f)))
    g = jax.grad(lambda x: jnp.sum(triplet.sign_ste(x) * jnp.arange(5.0)))(f)
    np.testing.assert_array_equal(np.asarray(g), np.broadcast_to(np.arange(5.0), (6, 5)))
    assert float(triplet.sign(jnp.zeros(1))[0]) == -1.0  # 0 is a 0 bit, as the search stores it


@pytest.mark.parametrize(
    "quantization,mining", list(itertools.product(triplet.QUANTIZATIONS, MININGS))
)
def test_tql_loss_equals_the_twin(quantization, mining):
    codes = _codes(5)
    total, parts = triplet.tql_loss(
        jnp.asarray(codes),
        jnp.asarray(LABELS10),
        margin=1.0,
        quant_margin=2.0,
        quant_weight=0.5,
        quantization=quantization,
        mining=mining,
    )
    want_total, want_trip, want_quant = ref.tql_loss(
        codes,
        LABELS10,
        margin=1.0,
        quant_margin=2.0,
        quant_weight=0.5,
        quantization=quantization,
        mining=mining,
    )
    np.testing.assert_allclose(float(parts["triplet"]), want_trip, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(float(parts["quantization"]), want_quant, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(float(total), want_total, rtol=1e-5, atol=1e-7)
    assert want_trip > 0 and (quantization == "none" or want_quant > 0)  # not a vacuous check


def test_a_permutation_of_the_batch_does_not_change_the_loss():
    codes, perm = _codes(6), np.random.default_rng(0).permutation(10)
    kw = dict(margin=1.0, quant_margin=2.0, quant_weight=1.0, quantization="triplet_b")
    for mining in MININGS:  # real-valued distances: no ties, so the picks move with the items
        a, _ = triplet.tql_loss(jnp.asarray(codes), jnp.asarray(LABELS10), mining=mining, **kw)
        b, _ = triplet.tql_loss(
            jnp.asarray(codes[perm]), jnp.asarray(LABELS10[perm]), mining=mining, **kw
        )
        np.testing.assert_allclose(float(a), float(b), rtol=1e-6)


# --- gradients -----------------------------------------------------------------------------------
@pytest.mark.parametrize("mining", MININGS)
def test_triplet_term_gradient_matches_finite_differences(mining):
    codes = _codes(7)
    grad = jax.grad(
        lambda f: triplet.tql_loss(
            f,
            jnp.asarray(LABELS10),
            margin=1.0,
            quant_margin=0.0,
            quant_weight=0.0,
            quantization="none",
            mining=mining,
        )[0]
    )(jnp.asarray(codes))
    fixed = ref.mine(ref.squared_distances(codes, codes), LABELS10, margin=1.0, mining=mining)
    want = _finite_difference(
        lambda f: ref.loss_of_triplets(ref.squared_distances(f, f), fixed, margin=1.0), codes
    )
    assert np.abs(want).max() > 0
    np.testing.assert_allclose(np.asarray(grad), want, rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("variant", ["triplet_a", "triplet_b"])
@pytest.mark.parametrize("mining", MININGS)
def test_quantization_term_gradient_is_straight_through(variant, mining):
    """dL/df = dL/d(anchor f) + dL/db at b = sgn(f): the twin's finite differences in b (and
    in the real anchors for variant (b)), with the mined triplets held fixed. Margin 3 keeps
    every binary hinge away from 0 (binary distances are multiples of 4)."""
    codes = _codes(8, bits=5)
    sim = _sim(LABELS10)
    grad = jax.grad(
        lambda f: triplet.triplet_quantization_loss(
            f, sim, variant=variant, margin=3.0, mining=mining
        )[0]
    )(jnp.asarray(codes))
    b = ref.sign(codes)
    fixed = ref.mine(
        ref.quantization_distances(codes, variant), LABELS10, margin=3.0, mining=mining
    )
    anchors = b if variant == "triplet_a" else codes.astype(np.float64)

    def loss(anchor_side, item_side):
        return ref.loss_of_triplets(
            ref.squared_distances(anchor_side, item_side), fixed, margin=3.0
        )

    if variant == "triplet_a":
        want = _finite_difference(lambda x: loss(x, x), b)
    else:
        want = _finite_difference(lambda x: loss(x, b), anchors) + _finite_difference(
            lambda x: loss(anchors, x), b
        )
    assert np.abs(want).max() > 0
    np.testing.assert_allclose(np.asarray(grad), want, rtol=1e-3, atol=1e-5)


def test_pointwise_gradient_treats_the_sign_as_a_constant():
    codes = _codes(9)
    grad = jax.grad(triplet.pointwise_quantization_loss)(jnp.asarray(codes))
    np.testing.assert_allclose(
        np.asarray(grad), 2 * (codes - ref.sign(codes)) / codes.shape[0], rtol=1e-5
    )
    np.testing.assert_allclose(
        float(triplet.pointwise_quantization_loss(jnp.asarray(codes))),
        ref.pointwise_quantization_loss(codes),
        rtol=1e-6,
    )


# --- sharding ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "quantization,mining",
    [(q, "batch_hard") for q in triplet.QUANTIZATIONS]
    + [("triplet_b", "batch_all"), ("triplet_a", "semi_hard")],
)
def test_one_and_eight_devices_give_the_same_loss_and_gradients(cpu_devices, quantization, mining):
    codes = _codes(10, batch=16, bits=6)
    labels = np.random.default_rng(10).integers(0, 4, 16).astype(np.int32)

    @jax.jit
    def loss_and_grad(codes, labels):
        return jax.value_and_grad(
            lambda f: triplet.tql_loss(
                f,
                labels,
                margin=1.5,
                quant_margin=2.0,
                quant_weight=1.0,
                quantization=quantization,
                mining=mining,
            )[0]
        )(codes)

    loss1, grad1 = loss_and_grad(jnp.asarray(codes), jnp.asarray(labels))
    mesh = parallel.make_mesh(devices=cpu_devices)
    with jax.set_mesh(mesh):
        batch = parallel.put_batch({"codes": codes, "labels": labels}, mesh)
        loss8, grad8 = loss_and_grad(batch["codes"], batch["labels"])
    want = ref.tql_loss(
        codes,
        labels,
        margin=1.5,
        quant_margin=2.0,
        quant_weight=1.0,
        quantization=quantization,
        mining=mining,
    )[0]
    np.testing.assert_allclose(float(loss1), want, rtol=1e-5)
    np.testing.assert_allclose(float(loss8), float(loss1), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(grad8), np.asarray(grad1), rtol=1e-5, atol=1e-7)
    assert np.abs(np.asarray(grad1)).max() > 0


# --- bad input -----------------------------------------------------------------------------------
def test_bad_input_is_refused_with_the_field_to_fix():
    codes, labels = jnp.asarray(_codes(0)), jnp.asarray(LABELS10)
    kw = dict(margin=1.0, quant_margin=1.0, quant_weight=1.0)
    with pytest.raises(ValueError, match="loss.mining must be one of"):
        triplet.tql_loss(codes, labels, mining="hardest", **kw)
    with pytest.raises(ValueError, match="loss.quantization must be one of"):
        triplet.tql_loss(codes, labels, quantization="l2", **kw)
    with pytest.raises(ValueError, match="must be >= 0"):
        triplet.tql_loss(codes, labels, margin=-1.0, quant_margin=1.0, quant_weight=1.0)
    with pytest.raises(ValueError, match="B >= 2"):
        triplet.tql_loss(codes[:1], labels[:1], **kw)
    with pytest.raises(ValueError, match="labels have 9 rows"):
        triplet.tql_loss(codes, labels[:9], **kw)
    with pytest.raises(ValueError, match=r"\[B, B\]"):
        triplet.triplet_loss(jnp.ones((3, 4)), jnp.ones((3, 4)), margin=1.0, mining="batch_all")
