"""Tests for dpq_jax.quantizers.codebooks against the NumPy twins in quantizers/reference.py."""

import numpy as np
import pytest

from dpq_jax.quantizers import codebooks
from dpq_jax.quantizers import reference as ref


def _assert_rows_orthonormal(books, atol=1e-5):
    books = np.asarray(books, np.float64)
    for m in range(books.shape[0]):
        gram = books[m] @ books[m].T  # [K, K]
        np.testing.assert_allclose(gram, np.eye(books.shape[1]), atol=atol)


@pytest.mark.parametrize("shape", [(3, 8, 16), (2, 5, 7), (1, 4, 4)])
def test_dct_matches_reference(shape):
    out = codebooks.dct_orthonormal_codebooks(*shape)
    assert out.shape == shape and out.dtype == np.float32
    np.testing.assert_allclose(np.asarray(out), ref.dct_orthonormal_codebooks(*shape), atol=1e-6)


@pytest.mark.parametrize("shape", [(3, 8, 16), (8, 64, 64), (6, 64, 86), (2, 256, 256)])
def test_dct_rows_orthonormal(shape):
    _assert_rows_orthonormal(codebooks.dct_orthonormal_codebooks(*shape))


def test_dct_first_book_is_dct_ii_and_books_are_powers():
    d, k = 16, 8
    books = np.asarray(codebooks.dct_orthonormal_codebooks(3, k, d), np.float64)
    basis = ref.dct_basis(d)
    np.testing.assert_allclose(basis.T @ basis, np.eye(d), atol=1e-12)  # the twin is orthogonal
    np.testing.assert_allclose(books[0], basis[:, :k].T, atol=1e-6)
    np.testing.assert_allclose(books[2], (basis @ basis @ basis[:, :k]).T, atol=1e-6)
    # Column 0 of the DCT-II basis is constant 1/sqrt(d).
    np.testing.assert_allclose(books[0, 0], np.full(d, 1 / np.sqrt(d)), atol=1e-6)


@pytest.mark.parametrize("shape", [(3, 8, 16), (2, 5, 7)])
def test_qr_matches_gram_schmidt_reference(shape):
    out = codebooks.random_orthonormal_codebooks(*shape, seed=3)
    assert out.shape == shape and out.dtype == np.float32
    _assert_rows_orthonormal(out)
    np.testing.assert_allclose(
        np.asarray(out), ref.random_orthonormal_codebooks(*shape, seed=3), atol=1e-5
    )


def test_qr_seeded():
    a = np.asarray(codebooks.random_orthonormal_codebooks(2, 4, 8, seed=0))
    b = np.asarray(codebooks.random_orthonormal_codebooks(2, 4, 8, seed=0))
    c = np.asarray(codebooks.random_orthonormal_codebooks(2, 4, 8, seed=1))
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 0.1


@pytest.mark.parametrize(
    "fn", [codebooks.dct_orthonormal_codebooks, codebooks.random_orthonormal_codebooks]
)
def test_k_greater_than_d_raises_with_valid_pairs(fn):
    with pytest.raises(ValueError) as err:
        fn(8, 256, 64)  # D = 512: 64-bit OPQN is impossible
    message = str(err.value)
    assert "K=256 > d=64" in message
    for pair in ("(2, 256)", "(4, 64)", "(8, 64)"):
        assert pair in message
    assert "(8, 256)" not in message
    assert "Fix" in message


def test_bad_sizes_raise():
    with pytest.raises(ValueError, match="num_codebooks"):
        codebooks.dct_orthonormal_codebooks(0, 4, 8)
    with pytest.raises(ValueError, match="codebook_init"):
        codebooks.make_codebooks("hadamard", 2, 4, 8)


def test_valid_pq_shapes_brute_force():
    for dim in (512, 516, 96):
        expected = []
        for m in range(1, dim + 1):
            for k in (16, 32, 64, 128, 256):
                if dim % m == 0 and k * m <= dim:
                    expected.append((m, k))
        assert list(codebooks.valid_pq_shapes(dim)) == expected
    shapes = codebooks.valid_pq_shapes(516)
    assert (6, 64) in shapes and (8, 64) not in shapes  # 516 = 6 * 86; 8 does not divide it
    with pytest.raises(ValueError, match="positive integer"):
        codebooks.valid_pq_shapes(0)
