"""Shared pieces of the methods' tests: the tiny end-to-end runs on ORL faces
(`*_run_test.py`, fixture `orl_runs`) and checks of the unit tests (`*_test.py`, fixture
`method_checks`). Each check compares against an oracle its caller gives (NumPy twins, brute
force) or a second computation (one vs eight devices).

Test modules get them through the fixtures (with `--import-mode=importlib` a test module cannot
import this file).
"""

import json
import os
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from dpq_jax import config_lib, inference, parallel, train
from dpq_jax.data import orl, protocols
from dpq_jax.metrics import reference as metrics_ref
from dpq_jax.search import index as index_lib
from dpq_jax.search.retriever import Retriever

CONFIG_DIR = os.path.join(os.path.dirname(__file__), "..", "..", "configs")


def tiny_orl_run(tmp_path_factory, config_file, arg, overrides=None):
    """Yields `(workdir, ORL source, TrainResult)` of a tiny run of `configs/<config_file>`.

    `overrides` maps dotted config fields (`"model.bits"`) to values. Compiles with most XLA
    optimizations off (as flax's tests do): the runs are a few steps, compile time dominates.
    Use from a module-scoped fixture with `yield from`.
    """
    jax.config.update("jax_disable_most_optimizations", True)
    try:
        data_dir = str(tmp_path_factory.mktemp("tfds"))
        source = orl.load_orl_faces(data_dir=data_dir)
        config = config_lib.load_config(os.path.join(CONFIG_DIR, config_file), arg)
        with config.unlocked():
            config.input.data_dir = data_dir
            for dotted, value in (overrides or {}).items():
                *groups, name = dotted.split(".")
                node = config
                for group in groups:
                    node = node[group]
                node[name] = value
        workdir = str(tmp_path_factory.mktemp("workdir"))
        result = train.train_and_evaluate(config, workdir)
        yield workdir, source, result
    finally:
        jax.config.update("jax_disable_most_optimizations", False)


def restore_with_splits(workdir, source):
    """`(config, method, model, meta, splits)` of a run: its restored model and the protocol
    splits it was trained and evaluated on."""
    config, method, model, meta = inference.restore_model(workdir)
    sp = protocols.get_splits(
        config.protocol, source.labels, config.seed, split_dir=os.path.join(workdir, "splits")
    )
    return config, method, model, meta, sp


def check_row_against_numpy(result, bits, scores, query_labels, db_labels, *, rtol):
    """The report's test row at `bits` holds the NumPy mAP@all and P@5 of `scores [Q, N]`
    (higher is closer)."""
    want = metrics_ref.retrieval_metrics(
        scores, query_labels, db_labels, map_ks=(-1,), precision_ks=(5,)
    )
    row = [row for row in result.report["results"] if row["bits"] == bits][0]
    np.testing.assert_allclose(row["metrics"]["map@all"], want["map@all"], rtol=rtol)
    np.testing.assert_allclose(row["metrics"]["p@5"], want["p@5"], rtol=rtol)


def check_hamming_row_against_numpy(workdir, source, result, bits):
    """The report's test row at `bits` equals a NumPy mAP@all / P@5 of a brute-force Hamming
    ranking of the restored model's codes (query and database encoded by the retriever)."""
    config, method, model, meta, sp = restore_with_splits(workdir, source)
    r = Retriever(config, method, model, meta, code_length=bits)
    db_bits, q_bits = r.encode(source.images[sp.database]), r.encode(source.images[sp.query])
    dist = (q_bits[:, None, :] != db_bits[None, :, :]).sum(-1)
    labels = np.asarray(source.labels)
    scores = -dist.astype(np.float64)
    check_row_against_numpy(result, bits, scores, labels[sp.query], labels[sp.database], rtol=1e-6)


def check_report_rows(
    workdir, result, bits, *, search, query_side, metrics, prefixes=False, train_keys=()
):
    """report.json is the run's report, with one row per code length of `bits`, each searched
    as `search...` from `query_side` and holding exactly the `metrics`; every validation log's
    `val/map@all` is the mean over the code lengths (checkpoint selection). `prefixes`: the
    lengths are prefixes of one code, so a longer one never has fewer distinct codes (it refines
    the grouping of the same items). `train_keys`: logged by training, and finite.

    Returns:
      `(report, records of metrics.jsonl)`.
    """
    report = json.load(open(os.path.join(workdir, "report.json")))
    assert report == json.loads(json.dumps(result.report))
    assert report["bits"] == list(bits)
    assert [row["bits"] for row in report["results"]] == list(bits)
    for row in report["results"]:
        assert row["search"].startswith(search)
        assert row["conventions"]["query_side"] == query_side
        assert set(row["metrics"]) == set(metrics)
    if prefixes:
        distinct = [row["code_stats"]["distinct_codes"] for row in report["results"]]
        assert distinct == sorted(distinct)
    records = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    for key in train_keys:
        logged = [m[key] for m in records if key in m]
        assert logged and np.all(np.isfinite(logged)), key
    val = [m for m in records if f"val/{bits[0]}bit/map@all" in m]
    assert val, "validation logs each code length"
    for m in val:
        np.testing.assert_allclose(
            m["val/map@all"], np.mean([m[f"val/{b}bit/map@all"] for b in bits])
        )
    return report, records


def check_prefix_rows_against_brute_force(run, make_brute, bits, *, query_side, rtol):
    """Progressive codes of a run, the test database encoded once at the longest length: for
    each prefix l (head l - 1), the index of the codes' first l levels searched with the
    method's table returns the top 20 of `brute(l, codes)` (`[Q, N]` NumPy scores, from
    `brute = make_brute(restored model, the test queries' query_fn outputs)`), and the report
    row at that length holds the NumPy mAP@all / P@5 of the brute-force ranking."""
    workdir, source, result = run
    config, method, model, meta, sp = restore_with_splits(workdir, source)
    full = Retriever(config, method, model, meta, code_length=bits[-1])
    all_codes = full.encode(source.images[sp.database])  # [N, L·M], encoded once
    assert all_codes.shape == (len(sp.database), len(bits))
    query_outputs = full.query_outputs(source.images[sp.query])
    brute = make_brute(model, query_outputs)
    params = jax.device_get(method.code_params(model))
    labels = np.asarray(source.labels)
    for level, length in enumerate(bits, start=1):
        head, codes = level - 1, all_codes[:, :level]
        want = brute(level, codes)
        lut = method.search_queries(
            query_outputs, head=head, params=params[head], query_side=query_side
        )
        prefix_index = method.index(codes, params=params[head], query_side=query_side)
        assert prefix_index.progressive and prefix_index.code_bits == length
        check_top_k(prefix_index, lut, want, 20, rtol=rtol, atol=1e-5)
        check_row_against_numpy(
            result, length, want, labels[sp.query], labels[sp.database], rtol=rtol
        )


def check_top_k(index, queries, scores, k, *, rtol, atol):
    """`index.search(queries, k)` returns the top k of the brute-force `scores [Q, N]` (higher is
    closer): the scores of the ids it returns, in descending order."""
    top, ids = index.search(queries, k)
    np.testing.assert_allclose(top, np.take_along_axis(scores, ids, 1), rtol=rtol, atol=atol)
    np.testing.assert_allclose(top, -np.sort(-scores, axis=1)[:, :k], rtol=rtol, atol=atol)


def check_saved_index_reloads(retriever, path, workdir, images):
    """`retriever` saved to `path` loads back (`Retriever.load`) at the same code length and
    answers the same searches. Returns the loaded `search.index` object."""
    saved = retriever.save(path)
    back = Retriever.load(saved, workdir)
    assert back.code_length == retriever.code_length
    for a, b in zip(back.search(images[:3], 5), retriever.search(images[:3], 5), strict=True):
        np.testing.assert_array_equal(a, b)
    return index_lib.load_index(saved)


def check_prefix_retriever(run, tmp_path, want_codes):
    """An 8-bit retriever of a progressive run stores `want_codes(retriever, images [30])`
    (its first levels' codes, from the caller's twin), saves as a progressive index of 8-bit
    codes that reloads (`check_saved_index_reloads`), and a 32-bit one (no such prefix) is
    refused. Returns the loaded index."""
    workdir, source, _ = run
    r = Retriever.from_workdir(workdir, code_length=8)
    images = source.images[:30]
    r.add(images)
    np.testing.assert_array_equal(r.encode(images), want_codes(r, images))
    loaded = check_saved_index_reloads(r, tmp_path / "db8.npz", workdir, images)
    assert loaded.progressive and loaded.code_bits == 8
    with pytest.raises(ValueError, match="code lengths"):
        Retriever.from_workdir(workdir, code_length=32)
    return loaded


@pytest.fixture(scope="session")
def orl_runs():
    """The shared pieces of the run tests: `tiny_orl_run` and the `check_*` helpers above."""
    return types.SimpleNamespace(
        tiny_orl_run=tiny_orl_run,
        check_hamming_row_against_numpy=check_hamming_row_against_numpy,
        check_report_rows=check_report_rows,
        check_prefix_rows_against_brute_force=check_prefix_rows_against_brute_force,
        check_saved_index_reloads=check_saved_index_reloads,
        check_prefix_retriever=check_prefix_retriever,
    )


# ----------------------------------------------------------------------------------------------
# Unit tests of the methods (`*_test.py`): the `method_checks` fixture.
# ----------------------------------------------------------------------------------------------
def train_step(method, loss_cfg):
    """`step(graphdef, state, batch) -> (state, loss, aux, grads)`, jitted (graphdef static):
    one functional optimizer step on `method.loss_fn(model, batch, loss_cfg)`, with `state` the
    `nnx.state((model, optimizer))` of `nnx.split((model, optimizer))`."""

    def step(graphdef, state, batch):
        model, optimizer = nnx.merge(graphdef, state)
        (loss, aux), grads = nnx.value_and_grad(
            lambda m: method.loss_fn(m, batch, loss_cfg), has_aux=True
        )(model)
        optimizer.update(model, grads)
        return nnx.state((model, optimizer)), loss, aux, grads

    return jax.jit(step, static_argnums=0)


def float_leaves(state):
    """`{path: float64 array}` of the floating-point leaves of a pytree."""
    return {
        jax.tree_util.keystr(path): np.asarray(leaf, np.float64)
        for path, leaf in jax.tree_util.tree_leaves_with_path(state)
        if jnp.issubdtype(leaf.dtype, jnp.floating)
    }


def check_one_vs_eight_devices(step, graphdef, state, batch, devices):
    """`step(graphdef, state, batch) -> (state, loss, aux, ...)` on one device and with the
    batch sharded over a mesh of the 8 `devices` gives the same loss, aux and new state."""
    state1, loss1, aux1 = step(graphdef, state, batch)[:3]
    mesh = parallel.make_mesh(devices=devices)
    with jax.set_mesh(mesh):
        sharded = parallel.put_batch(batch, mesh)
        assert len(sharded["image"].sharding.device_set) == 8
        replicated = jax.device_put(state, parallel.replicated(mesh))
        state8, loss8, aux8 = step(graphdef, replicated, sharded)[:3]
    np.testing.assert_allclose(float(loss8), float(loss1), rtol=1e-5)
    for key in aux1:
        np.testing.assert_allclose(float(aux8[key]), float(aux1[key]), rtol=1e-5, atol=1e-6)
    leaves1, leaves8 = float_leaves(state1), float_leaves(state8)
    assert leaves1.keys() == leaves8.keys()
    for key in leaves1:
        np.testing.assert_allclose(leaves8[key], leaves1[key], rtol=1e-4, atol=1e-5, err_msg=key)


def check_prefix_heads(method, database, codes, params, code_lengths, query_side):
    """Progressive codes `codes [N, L, ...]` (checked against the twin by the caller): head l - 1
    reads their first l levels, flattened level-major, and its index is progressive, has the
    head's code length and matches the method (a flat `PQIndex` of the same codes does not)."""
    codes = np.asarray(codes)
    for head, bits in enumerate(code_lengths):
        prefix = method.database_codes(database, head)
        np.testing.assert_array_equal(prefix, codes[:, : head + 1].reshape(len(codes), -1))
        index = method.index(prefix, params=params[head], query_side=query_side)
        assert index.progressive and index.code_bits == bits
        matches = dict(params=params[head], code_length=bits, query_side=query_side)
        assert method.index_matches(index, **matches)
        flat = index_lib.PQIndex(params[head], prefix, method=method.name)  # not progressive
        assert not method.index_matches(flat, **matches)


def check_prefix_search(method, queries, database, params, head, query_side, brute):
    """Head `head`'s tables, summed over the stored prefix codes, equal `brute` (`[Q, N]` NumPy
    scores), and its index returns the brute-force top 16. Returns the tables `[Q, B, K]`."""
    codes = method.database_codes(database, head)
    luts = np.asarray(
        method.query_tables(queries, head=head, codebooks=params[head], query_side=query_side)
    )
    scores = np.take_along_axis(luts[:, None, :, :], codes[None, :, :, None], 3)[..., 0]
    np.testing.assert_allclose(scores.sum(-1), brute, rtol=1e-5, atol=1e-6)
    index = method.index(codes, params=params[head], query_side=query_side)
    check_top_k(index, luts, brute, 16, rtol=1e-5, atol=1e-6)
    return luts


@pytest.fixture(scope="session")
def method_checks():
    """The shared helpers of the methods' unit tests (functions of this module)."""
    return types.SimpleNamespace(
        train_step=train_step,
        float_leaves=float_leaves,
        check_one_vs_eight_devices=check_one_vs_eight_devices,
        check_prefix_heads=check_prefix_heads,
        check_prefix_search=check_prefix_search,
    )
