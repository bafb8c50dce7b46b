"""Tests for Progressive OPQN's quantizer (dpq_jax.quantizers.opqn_progressive) against the NumPy
twins in quantizers/opqn_progressive_reference.py, OPQN's head and DPQ's progressive search."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from dpq_jax.quantizers import codebooks as codebooks_lib
from dpq_jax.quantizers import opqn, progressive
from dpq_jax.quantizers import opqn_progressive as qp
from dpq_jax.quantizers import opqn_progressive_reference as ref
from dpq_jax.quantizers import reference as opqn_ref

pytestmark = pytest.mark.usefixtures("fast_compile")

B, L, M, K, d = 6, 3, 2, 4, 5


def _data(seed=0, levels=L):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((B, M * d)).astype(np.float32)
    assign = rng.standard_normal((levels, M, d, K)).astype(np.float32)
    books = np.asarray(qp.level_codebooks("dct", levels, M, K, d))
    gains = np.array([1.0, 0.6, 0.3][:levels], np.float32)
    return x, assign, books, gains


# --- codebooks --------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["dct", "qr"])
def test_level_codebooks_are_orthonormal_and_level_one_is_opqns(kind):
    books = np.asarray(qp.level_codebooks(kind, L, M, K, d, seed=3), np.float64)
    assert books.shape == (L, M, K, d)
    for level in range(L):
        for m in range(M):
            gram = books[level, m] @ books[level, m].T
            np.testing.assert_allclose(gram, np.eye(K), atol=1e-6)
    np.testing.assert_array_equal(
        books[0], np.asarray(codebooks_lib.make_codebooks(kind, M, K, d, 3))
    )
    np.testing.assert_allclose(books, ref.level_codebooks(kind, L, M, K, d, 3), atol=1e-6)
    one = qp.level_codebooks(kind, 1, M, K, d, seed=3)
    np.testing.assert_array_equal(np.asarray(one[0]), books[0])


def test_levels_meet_new_directions_unlike_opqns_dct_chain():
    """Why levels 2.. are random frames: OPQN's chain C_j = T^j C_1 repeats directions two books
    apart (cross-Gram T^2, |cos| up to 0.9 at d = 64)."""
    dim, levels = 64, 3
    chain = np.asarray(codebooks_lib.dct_orthonormal_codebooks(levels, dim, dim), np.float64)
    assert np.abs(chain[0] @ chain[2].T).max() > 0.85
    books = np.asarray(qp.level_codebooks("dct", levels, 1, dim, dim), np.float64)[:, 0]
    for i in range(levels):
        for j in range(i + 1, levels):
            assert np.abs(books[i] @ books[j].T).max() < 0.6, (i, j)


def test_level_codebooks_reject_bad_sizes():
    with pytest.raises(ValueError, match="K <= subspace dim"):
        qp.level_codebooks("dct", 2, 1, 8, 4)
    with pytest.raises(ValueError, match="num_levels"):
        qp.level_codebooks("dct", 0, 1, 4, 4)
    with pytest.raises(ValueError, match="codebook_init"):
        qp.level_codebooks("haar", 2, 1, 4, 4)


def test_full_dim_codebooks_match_twin_and_place_each_book_in_its_subspace():
    _, _, books, gains = _data()
    full = np.asarray(qp.full_dim_codebooks(jnp.asarray(books), jnp.asarray(gains)))
    assert full.shape == (L * M, K, M * d)
    np.testing.assert_allclose(full, ref.full_dim_codebooks(books, gains), rtol=1e-6, atol=1e-7)
    for level in range(L):
        for m in range(M):
            book = full[level * M + m]
            np.testing.assert_array_equal(np.delete(book, np.s_[m * d : (m + 1) * d], axis=1), 0)


# --- quantization -----------------------------------------------------------------------------


@pytest.mark.parametrize("scale_by_norm", [True, False])
def test_matches_numpy_twin(scale_by_norm):
    x, assign, books, gains = _data()
    out = jax.jit(lambda *a: qp.progressive_ortho_quantize(*a, scale_by_norm=scale_by_norm))(
        x, assign, books, gains
    )
    want = ref.progressive_ortho_quantize(x, assign, books, gains, scale_by_norm)
    assert out.codes.dtype == jnp.uint8 and out.codes.shape == (B, L, M)
    assert out.soft.shape == out.hard.shape == out.residuals.shape == (B, L, M * d)
    assert out.probs.shape == (B, L, M, K) and out.target.shape == (B, M * d)
    np.testing.assert_array_equal(np.asarray(out.codes), want["codes"])
    for name in ("target", "soft", "hard", "probs", "residuals"):
        np.testing.assert_allclose(
            np.asarray(getattr(out, name)), want[name], rtol=1e-5, atol=1e-5, err_msg=name
        )


def test_codes_do_not_depend_on_the_temperature():
    x, assign, books, gains = _data(1)
    train = qp.progressive_ortho_quantize(x, assign, books, gains, scale_by_norm=True)
    query = qp.progressive_ortho_quantize(x, assign, books, gains, scale_by_norm=False)
    np.testing.assert_array_equal(np.asarray(train.codes), np.asarray(query.codes))
    np.testing.assert_allclose(np.asarray(train.hard), np.asarray(query.hard), atol=1e-6)

    # The query assignment is flatter (|x_m| > 1 here): larger entropy.
    def entropy(p):
        return -np.sum(p * np.log(p), axis=-1).mean()

    assert entropy(np.asarray(query.probs)) > entropy(np.asarray(train.probs))


def test_residuals_are_the_unit_target_minus_the_hard_partial_sums():
    """u_1 = x_m/|x_m|; u_{l+1} = u_1 - Q^hard_l; Q^hard_l = sum of the first l gained codewords."""
    x, assign, books, gains = _data(2)
    out = qp.progressive_ortho_quantize(x, assign, books, gains)
    x_sub = x.reshape(B, M, d).astype(np.float64)
    target = (x_sub / np.linalg.norm(x_sub, axis=-1, keepdims=True)).reshape(B, -1)
    residuals, hard = np.asarray(out.residuals), np.asarray(out.hard)
    np.testing.assert_allclose(np.asarray(out.target), target, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(residuals[:, 0], target, rtol=1e-6, atol=1e-6)
    codes = np.asarray(out.codes)
    for level in range(L):
        np.testing.assert_allclose(
            hard[:, level], ref.reconstruct(codes[:, : level + 1], books, gains), atol=1e-6
        )
        if level + 1 < L:
            np.testing.assert_allclose(
                residuals[:, level + 1], target - hard[:, level], rtol=1e-5, atol=1e-6
            )
    # Soft partial sums are cumulative: level l adds gain_l * C_l p_l.
    soft = np.asarray(out.soft).reshape(B, L, M, d)
    probs = np.asarray(out.probs)
    for level in range(1, L):
        step = gains[level] * np.einsum("bmk,mkd->bmd", probs[:, level], books[level])
        np.testing.assert_allclose(soft[:, level] - soft[:, level - 1], step, atol=1e-5)


def test_prefix_codes_equal_the_encoding_with_the_first_levels_only():
    x, assign, books, gains = _data(3)
    full = qp.progressive_ortho_quantize(x, assign, books, gains)
    for levels in range(1, L + 1):
        part = qp.progressive_ortho_quantize(x, assign[:levels], books[:levels], gains[:levels])
        np.testing.assert_array_equal(np.asarray(part.codes), np.asarray(full.codes)[:, :levels])
        for name in ("soft", "hard", "probs"):
            np.testing.assert_allclose(
                np.asarray(getattr(part, name)),
                np.asarray(getattr(full, name))[:, :levels],
                rtol=1e-6,
                atol=1e-6,
            )


def test_flattened_codes_reconstruct_through_dpqs_progressive_books():
    """`full_dim_codebooks` + level-major codes are a DPQ-style progressive code."""
    x, assign, books, gains = _data(4)
    out = qp.progressive_ortho_quantize(x, assign, books, gains)
    full = qp.full_dim_codebooks(jnp.asarray(books), jnp.asarray(gains))
    codes = np.asarray(out.codes)
    for level in range(1, L + 1):
        flat = codes[:, :level].reshape(B, level * M)
        np.testing.assert_allclose(
            np.asarray(progressive.reconstruct_progressive(jnp.asarray(flat), full)),
            np.asarray(out.hard[:, level - 1]),
            atol=1e-6,
        )


def test_one_level_is_opqns_head():
    """L = 1: OPQN's probabilities, codes and (up to the gain) soft quantization; the query
    assignment is OPQN's normalised table."""
    x, assign, books, _ = _data(5, levels=1)
    gains = np.array([0.7], np.float32)
    out = qp.progressive_ortho_quantize(x, assign, books, gains)
    x_sub = x.reshape(B, M, d)
    np.testing.assert_allclose(
        np.asarray(out.probs[:, 0]), opqn_ref.soft_assign(x_sub, assign[0]), rtol=1e-5, atol=1e-6
    )
    np.testing.assert_array_equal(
        np.asarray(out.codes[:, 0]), opqn_ref.hard_codes(x_sub, assign[0])
    )
    s = opqn_ref.soft_quantize(opqn_ref.soft_assign(x_sub, assign[0]), books[0]).reshape(B, -1)
    np.testing.assert_allclose(np.asarray(out.soft[:, 0]), 0.7 * s, rtol=1e-5, atol=1e-6)
    query = qp.progressive_ortho_quantize(x, assign, books, gains, scale_by_norm=False)
    np.testing.assert_allclose(
        np.asarray(query.probs[:, 0]),
        opqn_ref.probability_lut(x_sub, assign[0]),
        rtol=1e-5,
        atol=1e-6,
    )


def test_zero_input_and_gradients_are_finite():
    x, assign, books, gains = _data(6)
    x[0] = 0.0

    def loss(x, assign, gains):
        out = qp.progressive_ortho_quantize(x, assign, books, gains)
        return jnp.sum(out.soft**2) + jnp.sum(out.residuals**2)

    grads = jax.grad(loss, argnums=(0, 1, 2))(
        jnp.asarray(x), jnp.asarray(assign), jnp.asarray(gains)
    )
    for g in grads:
        assert np.all(np.isfinite(np.asarray(g)))
    assert np.abs(np.asarray(grads[2])).sum() > 0  # the gains are trained through both paths


def test_rejects_mismatched_shapes():
    x, assign, books, gains = _data()
    with pytest.raises(ValueError, match="disagree"):
        qp.progressive_ortho_quantize(x, assign, books[:2], gains)
    with pytest.raises(ValueError, match=r"D must be M\*d"):
        qp.progressive_ortho_quantize(x[:, :-1], assign, books, gains)
    with pytest.raises(ValueError, match="gain_decay"):
        qp.initial_log_gains(3, 0.0)


# --- the head ---------------------------------------------------------------------------------


@pytest.mark.parametrize("learn_gains", [True, False])
def test_head_keeps_codewords_fixed_and_trains_gains_only_when_asked(learn_gains):
    head = qp.ProgressiveOrthoHead(
        M * d,
        num_levels=L,
        num_codebooks=M,
        codebook_size=K,
        learn_gains=learn_gains,
        rngs=nnx.Rngs(0),
    )
    assert isinstance(head.codebooks, opqn.FixedCodebook)
    assert head.assign[...].shape == (L, M, d, K)
    np.testing.assert_allclose(np.asarray(head.gains()), [1.0, 0.5, 0.25], rtol=1e-6)
    books0 = np.asarray(head.codebooks[...])
    gains0 = np.asarray(head.gains())
    assign0 = np.asarray(head.assign[...])
    optimizer = nnx.Optimizer(head, optax.sgd(0.5), wrt=nnx.Param)
    x = jnp.asarray(_data()[0])

    def loss(h):
        out = h(x)
        return jnp.sum((out.soft[:, -1] - x) ** 2)

    grads = nnx.grad(loss)(head)
    optimizer.update(head, grads)
    np.testing.assert_array_equal(np.asarray(head.codebooks[...]), books0)
    assert not np.array_equal(np.asarray(head.assign[...]), assign0)
    assert np.array_equal(np.asarray(head.gains()), gains0) != learn_gains
    out = head(x)
    want = ref.progressive_ortho_quantize(
        np.asarray(x), np.asarray(head.assign[...]), books0, np.asarray(head.gains())
    )
    np.testing.assert_array_equal(np.asarray(out.codes), want["codes"])


def test_head_initialises_each_level_as_opqns_reference():
    """Each level's A [M, d, K] gets torch's xavier_uniform_ fans: U(-a, a), a^2 = 6/(dK + MK)."""
    head = qp.ProgressiveOrthoHead(
        64, num_levels=2, num_codebooks=2, codebook_size=16, rngs=nnx.Rngs(0)
    )
    bound = np.sqrt(6 / (32 * 16 + 2 * 16))
    for level in np.asarray(head.assign[...]):
        assert np.abs(level).max() <= bound and np.abs(level).max() > 0.95 * bound
        np.testing.assert_allclose(level.std(), bound / np.sqrt(3), rtol=0.1)


def test_head_rejects_bad_sizes():
    with pytest.raises(ValueError, match="must divide"):
        qp.ProgressiveOrthoHead(
            10, num_levels=2, num_codebooks=3, codebook_size=2, rngs=nnx.Rngs(0)
        )
    with pytest.raises(ValueError, match=r"\[2, 256\]"):
        qp.ProgressiveOrthoHead(8, num_levels=2, num_codebooks=1, codebook_size=1, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="K <= subspace dim"):
        qp.ProgressiveOrthoHead(8, num_levels=2, num_codebooks=2, codebook_size=8, rngs=nnx.Rngs(0))
