"""Tests for the OPQN quantizer (dpq_jax.quantizers.opqn) against quantizers/reference.py."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from dpq_jax.quantizers import codebooks, opqn
from dpq_jax.quantizers import reference as ref
from dpq_jax.quantizers import torch_init_reference as torch_ref

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


# --- initialisation -------------------------------------------------------------------------


def test_torch_fan_twin_on_hand_computed_shapes():
    # torch: [out, in] -> (in, out); >2-D multiplies both by prod(shape[2:]).
    assert torch_ref.torch_fan_in_and_fan_out((5, 7)) == (7, 5)
    assert torch_ref.torch_fan_in_and_fan_out((8, 64, 64)) == (64 * 64, 8 * 64)
    assert torch_ref.torch_fan_in_and_fan_out((3, 4, 5, 6)) == (4 * 30, 3 * 30)
    assert torch_ref.torch_xavier_uniform_bound((6, 86, 64)) == pytest.approx(
        np.sqrt(6.0 / (86 * 64 + 6 * 64))
    )
    with pytest.raises(ValueError, match="at least 2"):
        torch_ref.torch_fan_in_and_fan_out((5,))


# The reference's tensors: mlp [M, d, K] and weight [M, C, d] at 16 bits (2×256, d = 256), 36
# bits (6×64, D = 516), 48 bits (8×64, D = 512), plus 2-D and 4-D shapes.
@pytest.mark.parametrize(
    "shape", [(2, 256, 256), (6, 86, 64), (8, 64, 64), (6, 530, 86), (300, 200), (4, 3, 5, 7)]
)
def test_torch_xavier_uniform_matches_torch_bound(shape):
    bound = torch_ref.torch_xavier_uniform_bound(shape)
    values = np.asarray(opqn.torch_xavier_uniform()(jax.random.key(1), shape, jnp.float32))
    assert values.shape == shape and values.dtype == np.float32
    # Uniform on (-a, a): every value inside; the largest of n draws within 20a/n of a (fails
    # with probability e^-20); the standard deviation a / sqrt(3), within 4 standard errors.
    n = values.size
    peak = np.abs(values).max()
    assert (1 - 20 / n) * bound < peak <= bound
    np.testing.assert_allclose(values.std(), bound / np.sqrt(3), rtol=4 * np.sqrt(0.2 / n))
    gain2 = np.asarray(opqn.torch_xavier_uniform(2.0)(jax.random.key(1), shape, jnp.float32))
    assert (1 - 20 / n) * 2 * bound < np.abs(gain2).max() <= 2 * bound


def test_head_init_uses_the_reference_fans():
    # 36 bits at 32×32 (M = 6, K = 64, D = 516): a per-subspace Xavier (fans d and K) is 6×
    # wider than torch's on the whole [M, d, K] tensor.
    head = opqn.OrthoPQHead(516, num_codebooks=6, codebook_size=64, rngs=nnx.Rngs(0))
    bound = torch_ref.torch_xavier_uniform_bound((6, 86, 64))
    peak = np.abs(np.asarray(head.assign[...])).max()
    assert (1 - 20 / (6 * 86 * 64)) * bound < peak <= bound
    assert np.sqrt(6.0 / (86 + 64)) > 6 * bound


# --- head -----------------------------------------------------------------------------------


def test_head_matches_reference_and_holds_fixed_codebooks():
    head = opqn.OrthoPQHead(D, num_codebooks=M, codebook_size=K, rngs=nnx.Rngs(0))
    assert isinstance(head.codebooks, opqn.FixedCodebook)
    assert not isinstance(head.codebooks, nnx.Param)
    assert set(nnx.state(head, nnx.Param).keys()) == {"assign"}
    assign = np.asarray(head.assign[...])
    assert assign.shape == (M, D_SUB, K)
    # torch's xavier_uniform_ on the reference's mlp [M, d, K]: fans d·K and M·K.
    assert np.abs(assign).max() <= torch_ref.torch_xavier_uniform_bound((M, D_SUB, K))
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
