"""Code statistics against brute-force Python oracles and the evaluator's `code_group_stats`."""

import collections
import math

import numpy as np
import pytest

from dpq_jax.analysis import code_stats
from dpq_jax.evaluators import retrieval as retrieval_eval


def test_codeword_counts_and_entropy_match_python_counting():
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 5, size=(37, 3)).astype(np.uint8)
    counts = code_stats.codeword_counts(codes, 5)
    for m in range(3):
        expected = collections.Counter(codes[:, m].tolist())
        assert counts[m].tolist() == [expected.get(k, 0) for k in range(5)]
        p = [c / 37 for c in expected.values()]
        entropy = -sum(x * math.log2(x) for x in p)
        assert code_stats.usage_entropy(counts)[m] == pytest.approx(entropy, abs=1e-12)


def test_entropy_bounds():
    uniform = np.full((1, 8), 3)
    single = np.array([[0, 9, 0, 0]])
    assert code_stats.usage_entropy(uniform)[0] == pytest.approx(3.0)
    assert code_stats.usage_entropy(single)[0] == 0.0
    assert code_stats.usage_entropy(np.zeros((2, 4)))[0] == 0.0  # empty database


def test_codes_outside_codebook_are_refused():
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        code_stats.codeword_counts(np.array([[0, 4]]), 4)
    with pytest.raises(ValueError, match=r"\[N, M\]"):
        code_stats.codeword_counts(np.zeros(3, np.uint8), 4)


def test_bit_balance_is_fraction_of_ones():
    bits = np.array([[1, 0, 0], [1, 1, 0], [0, 1, 0], [1, 1, 0]], np.uint8)
    np.testing.assert_allclose(code_stats.bit_balance(bits), [0.75, 0.75, 0.0])


@pytest.mark.parametrize("shape", [(200, 3), (64, 12), (1, 4)])
def test_group_sizes_match_dict_grouping_and_evaluator(shape):
    rng = np.random.default_rng(1)
    codes = rng.integers(0, 2, size=shape).astype(np.uint8)  # many repeats
    sizes = code_stats.code_group_sizes(codes)
    expected = sorted(collections.Counter(map(bytes, codes)).values(), reverse=True)
    assert sizes.tolist() == expected
    assert sizes.sum() == shape[0]
    assert (sizes.size, sizes[0]) == retrieval_eval.code_group_stats(codes)


def _pq_usage_oracle(codes, codebook_size):
    """Per codebook: distinct codewords by np.unique and the entropy of their frequencies."""
    used, entropy = [], []
    for m in range(codes.shape[1]):
        _, counts = np.unique(codes[:, m], return_counts=True)
        p = counts / counts.sum()
        used.append(len(counts))
        entropy.append(float(-(p * np.log2(p)).sum()))
    return used, entropy


def test_code_usage_of_handmade_pq_codes():
    # Book 0 uses 3 of 4 words (2, 1, 1 of 4 items), book 1 one word, book 2 all four once.
    codes = np.array([[0, 2, 0], [0, 2, 1], [1, 2, 2], [3, 2, 3]], np.uint8)
    usage = code_stats.code_usage(codes, "pq", 4)
    assert usage["codebook_size"] == 4 and usage["max_entropy_bits"] == 2.0
    assert usage["used_codewords"] == [3, 1, 4]
    np.testing.assert_allclose(usage["usage_entropy_bits"], [1.5, 0.0, 2.0], atol=1e-12)
    rng = np.random.default_rng(3)
    skewed = np.minimum(rng.geometric(0.3, size=(300, 5)) - 1, 15).astype(np.uint8)
    usage = code_stats.code_usage(skewed, "pq", 16)
    used, entropy = _pq_usage_oracle(skewed, 16)
    assert usage["used_codewords"] == used
    np.testing.assert_allclose(usage["usage_entropy_bits"], entropy, atol=1e-12)
    assert all(isinstance(v, float) for v in usage["usage_entropy_bits"])  # JSON-ready
    # Without K: the largest code + 1.
    assert code_stats.code_usage(codes, "pq")["codebook_size"] == 4


def test_code_usage_of_handmade_bits_and_errors():
    bits = np.array([[1, 0, 1], [1, 1, 0], [0, 1, 0], [1, 1, 0]], np.uint8)
    assert code_stats.code_usage(bits, "binary") == {"ones_fraction": [0.75, 0.75, 0.25]}
    with pytest.raises(ValueError, match="code_type"):
        code_stats.code_usage(bits, "hamming")
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        code_stats.code_usage(np.array([[0, 2]]), "pq", 2)


def test_code_group_stats_is_code_group_sizes():
    rng = np.random.default_rng(4)
    codes = rng.integers(0, 3, size=(90, 2)).astype(np.uint8)
    groups = collections.Counter(map(bytes, codes))
    assert code_stats.code_group_stats(codes) == (len(groups), max(groups.values()))
    assert retrieval_eval.code_group_stats is code_stats.code_group_stats  # one copy
    assert code_stats.code_group_stats(np.zeros((0, 3), np.uint8)) == (0, 0)
    assert code_stats.code_group_stats(np.zeros((4, 0), np.uint8)) == (1, 4)
