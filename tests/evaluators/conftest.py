"""Shared pieces of the evaluator tests: the `lookup_evaluator` fixture (with
`--import-mode=importlib` a test module cannot import this file)."""

import types

import numpy as np
import pytest

from dpq_jax.evaluators import retrieval


def make_lookup_evaluator(method, code_lengths, cfg, labels, num_query, outputs, *, params=None):
    """A `RetrievalEvaluator` named "test" without a network: `labels` of all items (the first
    `num_query` are the queries, the rest the database), encoding is the lookup
    `outputs(indices) -> encode_fn/query_fn-like dict` and the code parameters are `params`.

    Returns:
      `(evaluator, splits)`.
    """
    n = len(labels)
    source = types.SimpleNamespace(labels=labels, images=np.zeros((n, 2, 2, 1)))
    splits = types.SimpleNamespace(
        query=np.arange(num_query),
        database=np.arange(num_query, n),
        summary=lambda: {"query": num_query, "database": n - num_query},
    )
    ev = retrieval.RetrievalEvaluator(
        "test",
        cfg,
        method=method,
        code_lengths=code_lengths,
        graphdef=None,
        source=source,
        splits=splits,
        mesh=None,
        pp_spec="",
        batch_size=8,
    )
    ev._encode_split = lambda fn, state, indices: outputs(np.asarray(indices))
    ev._code_params = lambda state: params
    return ev, splits


@pytest.fixture(scope="session")
def lookup_evaluator():
    """`make_lookup_evaluator`."""
    return make_lookup_evaluator
