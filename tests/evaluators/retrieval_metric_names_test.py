"""`evaluators.retrieval.metric_names` (what `select_on` may name) against what the evaluator
really logs: the oracle is the key set of `RetrievalEvaluator.run` on handmade codes (its
encoder is replaced by a lookup, so no network is involved), for configs with and without
`recall_ks`, `real_valued` and `hamming_radius`, one and two code lengths."""

import numpy as np
import pytest

from dpq_jax import config_lib
from dpq_jax.evaluators import retrieval
from dpq_jax.methods import dsh, opqn

NUM_QUERY, NUM_DB, NUM_CLASSES = 12, 40, 4
LABELS = np.arange(NUM_QUERY + NUM_DB) % NUM_CLASSES


def _logged_metrics(metrics):
    """The logged retrieval metrics: every key but the code-group counts."""
    return {k for k in metrics if k.rsplit("/", 1)[-1] not in retrieval.CODE_STATS}


@pytest.mark.parametrize(
    "lengths, extra",
    [
        ((12, 24), dict(recall_ks=(1, 10), real_valued=True)),
        ((12,), dict(recall_ks=(5,), real_valued=True, hamming_radius=-1)),
        ((12, 24), dict(map_ks=(-1, 10), hamming_radius=1)),
        ((24,), {}),
    ],
)
def test_binary_names_are_the_logged_keys(lengths, extra, lookup_evaluator):
    cfg = config_lib.retrieval_eval("query", "database", log_steps=0, final=False)
    cfg.update(extra)
    rng = np.random.default_rng(0)
    relaxed = [rng.standard_normal((NUM_QUERY + NUM_DB, b)).astype(np.float32) for b in lengths]

    def outputs(indices):
        heads = tuple(r[indices] for r in relaxed)
        return {"codes": tuple((h > 0).astype(np.uint8) for h in heads), "relaxed": heads}

    ev, _ = lookup_evaluator(dsh.METHOD, lengths, cfg, LABELS, NUM_QUERY, outputs)
    logged = _logged_metrics(ev.run(state=None))
    names = retrieval.metric_names("test", cfg, "binary", lengths)
    assert len(names) == len(set(names))
    assert set(names) == logged
    assert any("real_" in n for n in logged) == bool(extra.get("real_valued"))
    assert not any("real_p@r" in n or "real_r@r" in n for n in logged)  # Euclidean: no radius


def test_pq_names_are_the_logged_keys(lookup_evaluator):
    """PQ codes are ranked by ADC: no radius metrics even with `hamming_radius` set."""
    cfg = config_lib.retrieval_eval("query", "database", log_steps=0, final=False)
    cfg.recall_ks = (3,)
    assert cfg.hamming_radius == 2
    m, k, d = 2, 4, 3
    rng = np.random.default_rng(1)
    codes = rng.integers(0, k, (NUM_QUERY + NUM_DB, m)).astype(np.uint8)
    probs = rng.dirichlet(np.ones(k), (NUM_QUERY + NUM_DB, m)).astype(np.float32)

    def outputs(indices):
        return {"codes": (codes[indices],), "probs": (probs[indices],)}

    books = rng.standard_normal((m, k, d)).astype(np.float32)
    ev, _ = lookup_evaluator(
        opqn.METHOD, (m * 2,), cfg, LABELS, NUM_QUERY, outputs, params=(books,)
    )
    logged = _logged_metrics(ev.run(state=None))
    assert set(retrieval.metric_names("test", cfg, "pq", (m * 2,))) == logged
    assert logged == {"test/map@all", "test/p@5", "test/r@3"}


def test_keys_follow_the_config_order_without_repeats():
    cfg = dict(map_ks=(-1, 5, -1), precision_ks=(5, 5), recall_ks=(5,), hamming_radius=0)
    assert retrieval.metric_keys(cfg, "binary") == (
        "map@all",
        "map@5",
        "p@5",
        "r@5",
        "p@r0",
        "r@r0",
    )
    assert retrieval.metric_keys(cfg, "pq") == ("map@all", "map@5", "p@5", "r@5")
