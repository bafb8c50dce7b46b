"""Tests for the OPQN quantizer (dpq_jax.quantizers.opqn) against quantizers/reference.py."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from dpq_jax.quantizers import codebooks, opqn
from dpq_jax.quantizers import reference as ref

M, D_SUB, K = 3, 4, 4
D = M * D_SUB


pytestmark = pytest.mark.usefixtures("fast_compile")


def _random(shape, seed, scale=1.0):
    return (scale * np.random.default_rng(seed).standard_normal(shape)).astype(np.float32)


# --- pure functions -------------------------------------------------------------------------


def test_pure_functions_match_reference():
    x = _random((5, D), 0, scale=2.0)
    assign = _random((M, D_SUB, K), 1)
    books = np.asarray(codebooks.dct_orthonormal_codebooks(M, K, D_SUB))
    x_sub = opqn.split_subvectors(jnp.asarray(x), M)
    np.testing.assert_array_equal(np.asarray(x_sub), ref.split_subvectors(x, M))
    x_sub_np = ref.split_subvectors(x, M)
    for normalize in (False, True):
        got = opqn.soft_assign(x_sub, jnp.asarray(assign), normalize=normalize)
        np.testing.assert_allclose(
            np.asarray(got), ref.soft_assign(x_sub_np, assign, normalize), atol=1e-6
        )
    probs = ref.soft_assign(x_sub_np, assign)
    np.testing.assert_allclose(
        np.asarray(opqn.soft_quantize(jnp.asarray(probs, jnp.float32), jnp.asarray(books))),
        ref.soft_quantize(probs, books),
        atol=1e-6,
    )
    codes = opqn.hard_codes(x_sub, jnp.asarray(assign))
    assert codes.dtype == jnp.uint8 and codes.shape == (5, M)
    np.testing.assert_array_equal(np.asarray(codes), ref.hard_codes(x_sub_np, assign))
    np.testing.assert_array_equal(
        np.asarray(opqn.reconstruct(codes, jnp.asarray(books))), ref.reconstruct(codes, books)
    )
    np.testing.assert_allclose(
        np.asarray(opqn.probability_lut(x_sub, jnp.asarray(assign))),
        ref.probability_lut(x_sub_np, assign),
        atol=1e-6,
    )


def test_probabilities_and_dtypes():
    x_sub = jnp.asarray(_random((3, M, D_SUB), 2), jnp.bfloat16)
    assign = jnp.asarray(_random((M, D_SUB, K), 3))
    probs = opqn.soft_assign(x_sub, assign)
    assert probs.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(probs.sum(-1)), 1.0, rtol=1e-6)
    # Normalising x_m rescales the scores by a positive factor, so the argmax is unchanged.
    lut = opqn.probability_lut(x_sub, assign)
    np.testing.assert_array_equal(np.asarray(lut.argmax(-1)), np.asarray(probs.argmax(-1)))


@pytest.mark.parametrize("init", ["dct", "qr"])
def test_lut_score_equals_soft_query_dot_hard_reconstruction(init):
    q = _random((3, D), 4, scale=3.0)
    db = _random((6, D), 5, scale=3.0)
    assign = _random((M, D_SUB, K), 6)
    books = np.asarray(codebooks.make_codebooks(init, M, K, D_SUB, seed=2))
    lut = np.asarray(opqn.probability_lut(opqn.split_subvectors(jnp.asarray(q), M), assign))
    codes = np.asarray(opqn.hard_codes(opqn.split_subvectors(jnp.asarray(db), M), assign))
    score = np.array(
        [[sum(lut[i, m, codes[n, m]] for m in range(M)) for n in range(6)] for i in range(3)]
    )
    # Oracle: inner product of the soft-quantized query and the hard reconstruction (NumPy).
    soft_q = ref.soft_quantize(ref.probability_lut(ref.split_subvectors(q, M), assign), books)
    hard_db = ref.reconstruct(codes, books)
    oracle = soft_q.reshape(3, -1) @ hard_db.reshape(6, -1).T
    np.testing.assert_allclose(score, oracle, atol=1e-5)


def test_shape_errors():
    with pytest.raises(ValueError, match="must divide"):
        opqn.split_subvectors(jnp.zeros((2, 10)), 3)
    with pytest.raises(ValueError, match=r"\[M, d, K\]"):
        opqn.soft_assign(jnp.zeros((2, 3, 4)), jnp.zeros((2, 4, 4)))
    with pytest.raises(ValueError, match="codebooks"):
        opqn.soft_quantize(jnp.zeros((2, 3, 4)), jnp.zeros((3, 5, 4)))
    with pytest.raises(ValueError, match="codebooks"):
        opqn.reconstruct(jnp.zeros((2, 2), jnp.uint8), jnp.zeros((3, 4, 4)))
    with pytest.raises(ValueError, match="uint8"):
        opqn.hard_codes(jnp.zeros((2, 1, 300)), jnp.zeros((1, 300, 300)))


# --- head -----------------------------------------------------------------------------------


def test_head_matches_reference_and_holds_fixed_codebooks():
    head = opqn.OrthoPQHead(D, num_codebooks=M, codebook_size=K, rngs=nnx.Rngs(0))
    assert isinstance(head.codebooks, opqn.FixedCodebook)
    assert not isinstance(head.codebooks, nnx.Param)
    assert set(nnx.state(head, nnx.Param).keys()) == {"assign"}
    assign = np.asarray(head.assign[...])
    assert assign.shape == (M, D_SUB, K)
    bound = np.sqrt(6.0 / (D_SUB + K))  # Xavier-uniform per subspace
    assert np.abs(assign).max() <= bound and np.abs(assign).max() > 0.5 * bound
    books = np.asarray(head.codebooks[...])
    np.testing.assert_allclose(books, ref.dct_orthonormal_codebooks(M, K, D_SUB), atol=1e-6)

    feats = _random((4, D), 7, scale=2.0)
    out = head(jnp.asarray(feats, jnp.bfloat16))
    assert out.feats.dtype == out.soft.dtype == out.probs.dtype == jnp.float32
    assert out.codes.dtype == jnp.uint8
    assert out.soft.shape == (4, D) and out.probs.shape == (4, M, K) and out.codes.shape == (4, M)
    want = ref.ortho_pq_head(np.asarray(out.feats), assign, books)
    for name in ("soft", "probs"):
        np.testing.assert_allclose(np.asarray(getattr(out, name)), want[name], atol=1e-6)
    np.testing.assert_array_equal(np.asarray(out.codes), want["codes"])


def test_head_qr_init_and_validation():
    head = opqn.OrthoPQHead(
        D, num_codebooks=M, codebook_size=K, codebook_init="qr", seed=3, rngs=nnx.Rngs(0)
    )
    np.testing.assert_allclose(
        np.asarray(head.codebooks[...]),
        ref.random_orthonormal_codebooks(M, K, D_SUB, seed=3),
        atol=1e-5,
    )
    with pytest.raises(ValueError, match="uint8"):
        opqn.OrthoPQHead(512, num_codebooks=1, codebook_size=512, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"Valid \(M, K\)"):
        opqn.OrthoPQHead(512, num_codebooks=8, codebook_size=256, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="must divide"):
        opqn.OrthoPQHead(10, num_codebooks=3, codebook_size=2, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="codebook_init"):
        opqn.OrthoPQHead(D, num_codebooks=M, codebook_size=K, codebook_init="x", rngs=nnx.Rngs(0))
