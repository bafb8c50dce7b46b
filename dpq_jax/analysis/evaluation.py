"""What a workdir does not store, recomputed from its selected checkpoint: the codes of the
report's query and database splits, PR curves, precision@K, code statistics and top-k lists.

`encode_run` restores the checkpoint the report was made with (`dpq_jax.inference`), encodes
the final evaluator's query and database splits as the evaluator did (the method's
`encode_fn` / `query_fn`, evaluation preprocessing, padded data-parallel batches of
`dpq_jax.encode`) and keeps the host arrays. The functions below score them with
`dpq_jax.metrics.retrieval` under the evaluator's conventions (`empty`, `ties`, query side,
Hamming packing), so `recomputed_metrics` reproduces the report's numbers and the curves are
those of the reported model:

    run = runs.load_run("workdirs/orl_seen")
    encoded = encode_run(run)
    curves = pr_table(encoded)                # one row per code length
    rows = precision_at_k_table(encoded)      # precision@K for K = 1 .. N
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from dpq_jax.analysis import code_stats
from dpq_jax.analysis.runs import Run, RunError

ENCODE_CHUNK = 4096  # items per encode call: the progress bar's step


@dataclasses.dataclass
class EncodedRun:
    """A run's final evaluator split pair, encoded by the checkpoint of its report.

    Attributes:
      run: the `Run`.
      eval_name: the evaluator (`config.evals.<eval_name>`).
      eval_cfg: its config (a dict).
      step: the checkpoint step (the report's `selected_step`).
      config: the run's config as a ConfigDict (`inference.restore_model`).
      method: the `dpq_jax.methods.base.Method`.
      model: the restored NNX model (eval mode).
      source: the data source (`ArraySource`: `images [N, H, W, C]` uint8, `labels`).
      query_indices, db_indices: `[Q]`, `[N]` source indices of the two splits.
      query_labels, db_labels: their labels (`[Q]` ids or `[Q, C]` multi-hot).
      queries: the method's `query_fn` outputs on the queries (host arrays).
      database: the method's `encode_fn` outputs on the database (host arrays).
      params: the per-head code parameters (`method.code_params`; PQ codebooks), or None.
      query_side: the query side the evaluator used.
      mesh: the `"data"` mesh the splits were encoded and scored on.
      meta: the checkpoint's JSON metadata (`step`, `signature`; what `Retriever` needs).
    """

    run: Run
    eval_name: str
    eval_cfg: dict
    step: int
    config: Any
    method: Any
    model: Any
    source: Any
    query_indices: np.ndarray
    db_indices: np.ndarray
    query_labels: np.ndarray
    db_labels: np.ndarray
    queries: dict
    database: dict
    params: Any
    query_side: str
    mesh: Any
    meta: dict = dataclasses.field(default_factory=dict)

    @property
    def code_lengths(self) -> tuple[int, ...]:
        return tuple(self.method.code_lengths(self.config.model))

    @property
    def code_type(self) -> str:
        return self.method.code_type

    @property
    def hamming_packing(self) -> str:
        return self.eval_cfg.get("hamming_packing", "bits") or "bits"

    def codes(self, head: int) -> np.ndarray:
        """One head's stored database codes: PQ `[N, M]` or 0/1 bits `[N, b]`, uint8."""
        return self.method.database_codes(self.database, head)

    def head_params(self, head: int):
        from dpq_jax.methods import base

        return base.head_params(self.params, head)

    def score_source(self, head: int):
        """The evaluator's score source of one head (`metrics.retrieval.ScoreSource`)."""
        codes = self.codes(head)
        if self.hamming_packing == "legacy_compactbit":
            from dpq_jax.evaluators import retrieval as retrieval_eval
            from dpq_jax.search import kernels

            packed = self.method.search_queries(
                self.queries, head=head, params=self.head_params(head), query_side=self.query_side
            )
            bits = np.asarray(kernels.unpack_bits(packed, codes.shape[1]))
            return retrieval_eval.legacy_hamming_source(bits, codes)
        return self.method.score_source(
            self.queries,
            codes,
            head=head,
            params=self.head_params(head),
            query_side=self.query_side,
        )

    @property
    def options(self) -> dict:
        """The evaluator's metric options (`empty`, `ties`) and the mesh."""
        return dict(
            empty=self.eval_cfg.get("empty", "zero"),
            ties=self.eval_cfg.get("ties", "stable"),
            mesh=self.mesh,
        )


def _analysis_mesh(batch_size: int, axis_types: str):
    """A `"data"` mesh over as many local devices as divide the batch (all, usually)."""
    import jax

    from dpq_jax import parallel

    n = max(d for d in range(1, jax.local_device_count() + 1) if batch_size % d == 0)
    return parallel.make_mesh(n, axis_types, devices=jax.local_devices())


def _progress(total: int, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="img", disable=not enabled, dynamic_ncols=True)


def encode_run(
    run: Run,
    *,
    eval_name: str | None = None,
    progress: bool = True,
    data_dir: str | None = None,
) -> EncodedRun:
    """Restores the report's checkpoint and encodes the evaluator's query and database splits.

    Args:
      run: a loaded run with a report, checkpoints and splits.
      eval_name: which final evaluator's splits (default: the report's first).
      progress: show a progress bar while encoding.
      data_dir: TFDS data_dir of the data set (default: the one in the run's config).

    Returns:
      An `EncodedRun`.

    Raises:
      RunError: no report, no split file, an evaluator that is not in the report.
      FileNotFoundError / dpq_jax.checkpointing.CheckpointError: no usable checkpoint.
    """
    import jax
    from flax import nnx

    from dpq_jax import encode, inference, parallel, registry

    report = run.require_report()
    evals = run.final_evals()
    eval_name = eval_name or (evals[0] if evals else None)
    if eval_name not in evals:
        raise RunError(
            f"{run.workdir}: the report has no evaluator {eval_name!r}; it has {evals}. Pick one "
            "of those."
        )
    if run.splits is None:
        raise RunError(
            f"{run.workdir}/splits holds no split file of protocol {run.protocol!r} seed "
            f"{run.config.get('seed')}; copy the workdir with its splits/ folder."
        )
    step = int(report["selected_step"])
    config, method, model, meta = inference.restore_model(run.workdir, step=step)
    eval_cfg = config.evals[eval_name].to_dict()
    source = registry.get("dataset", config.input.dataset)(
        data_dir=data_dir or config.input.get("data_dir") or None,
        source_dir=config.input.get("source_dir") or None,
    )
    splits = run.splits
    splits.check(len(source.labels))
    if meta.get("split_checksum", splits.checksum()) != splits.checksum():
        raise RunError(
            f"{run.workdir}/splits differs from the splits the checkpoint was trained and "
            "evaluated on (another checksum); restore the workdir's own splits/ folder."
        )
    query_indices = np.asarray(getattr(splits, eval_cfg["query"]))
    db_indices = np.asarray(getattr(splits, eval_cfg["database"]))
    labels = np.asarray(source.labels)

    batch_size = int(config.input.get("eval_batch_size", config.input.batch_size))
    mesh = _analysis_mesh(batch_size, config.get("mesh_axis_types", "explicit"))
    graphdef, state = nnx.split(model)
    state = jax.device_put(state, parallel.replicated(mesh))

    def predict_fn(fn):
        @jax.jit
        def predict(state, images):
            net = nnx.merge(graphdef, state)
            net.eval()  # running BatchNorm statistics, no dropout
            return fn(net, images)

        return predict

    def encode_split(fn, indices, bar):
        parts = []
        for start in range(0, len(indices), ENCODE_CHUNK):
            chunk = indices[start : start + ENCODE_CHUNK]
            parts.append(
                encode.encode_split(
                    fn,
                    state,
                    source,
                    chunk,
                    pp_spec=str(config.input.pp_eval),
                    batch_size=batch_size,
                    mesh=mesh,
                )
            )
            bar.update(len(chunk))
        return jax.tree.map(lambda *xs: np.concatenate(xs), *parts)

    total = len(query_indices) + len(db_indices)
    with jax.set_mesh(mesh), _progress(total, f"encode {run.name}", progress) as bar:
        database = encode_split(predict_fn(method.encode_fn), db_indices, bar)
        queries = encode_split(predict_fn(method.query_fn), query_indices, bar)
        params = jax.device_get(method.code_params(model))
    return EncodedRun(
        run=run,
        eval_name=eval_name,
        eval_cfg=eval_cfg,
        step=step,
        config=config,
        method=method,
        model=model,
        source=source,
        query_indices=query_indices,
        db_indices=db_indices,
        query_labels=labels[query_indices],
        db_labels=labels[db_indices],
        queries=queries,
        database=database,
        params=params,
        query_side=method.check_query_side(eval_cfg.get("query_side")),
        mesh=mesh,
        meta=meta,
    )


# ------------------------------------------------------------------------------------------------
# Tables of the encoded run.
# ------------------------------------------------------------------------------------------------
def recomputed_metrics(encoded: EncodedRun) -> list[dict]:
    """The evaluator's metrics recomputed from the encoded splits, one row per code length:
    `{"run", "eval", "bits", "metrics"}`; they equal the report's when the checkpoint, data
    and software are those of the report."""
    from dpq_jax.metrics import retrieval as metrics_lib

    cfg = encoded.eval_cfg
    rows = []
    for head, bits in enumerate(encoded.code_lengths):
        source = encoded.score_source(head)
        radius = cfg.get("hamming_radius", -1) if source.kind == "hamming" else -1
        result = metrics_lib.retrieval_metrics(
            source,
            encoded.query_labels,
            encoded.db_labels,
            map_ks=tuple(cfg["map_ks"]),
            precision_ks=tuple(cfg["precision_ks"]),
            radius=radius if radius >= 0 else None,
            denominator=cfg["denominator"],
            **encoded.options,
        )
        result.pop("conventions")
        rows.append(
            {"run": encoded.run.name, "eval": encoded.eval_name, "bits": bits, "metrics": result}
        )
    return rows


def rank_cutoffs(num_items: int, extra: Sequence[int] = ()) -> np.ndarray:
    """Rank cut-offs for PR and precision@K curves: about 100 evenly spread over 1..N (as
    `pr_curve`'s default), 60 log-spaced ones (small K) and `extra`, sorted, unique.

    Example:
      >>> rank_cutoffs(10, extra=(5,)).tolist()
      [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]
    """
    even = np.linspace(1, num_items, num=min(num_items, 100))
    logs = np.geomspace(1, num_items, num=min(num_items, 60))
    ks = np.concatenate([even, logs, [k for k in extra if 1 <= k <= num_items]])
    return np.unique(np.round(ks).astype(np.int64))


def pr_table(encoded: EncodedRun, *, by: str = "rank") -> list[dict]:
    """Mean precision-recall curves, one row per code length.

    Args:
      encoded: an `EncodedRun`.
      by: `"rank"` (cut-offs `rank_cutoffs`, which include the report's precision Ks) or
        `"radius"` (Hamming radius 0..b; binary codes only, else no rows).

    Returns:
      Rows `{"run", "bits", "by", "x", "precision", "recall"}`: `x` holds the cut-offs K or
      radii r, `precision` and `recall` the curve `[P]` (float64).
    """
    from dpq_jax.metrics import retrieval as metrics_lib

    rows = []
    for head, bits in enumerate(encoded.code_lengths):
        source = encoded.score_source(head)
        if by == "radius" and source.kind != "hamming":
            continue
        if by == "rank":
            cutoffs = rank_cutoffs(source.num_items, encoded.eval_cfg.get("precision_ks", ()))
            curve = metrics_lib.pr_curve(
                source,
                encoded.query_labels,
                encoded.db_labels,
                by="rank",
                cutoffs=cutoffs,
                **encoded.options,
            )
            x = curve["cutoffs"]
        else:
            options = {k: v for k, v in encoded.options.items() if k != "ties"}
            curve = metrics_lib.pr_curve(
                source, encoded.query_labels, encoded.db_labels, by="radius", **options
            )
            x = curve["radius"]
        rows.append(
            {
                "run": encoded.run.name,
                "bits": bits,
                "by": by,
                "x": np.asarray(x),
                "precision": np.asarray(curve["precision"]),
                "recall": np.asarray(curve["recall"]),
            }
        )
    return rows


def precision_at_k_table(pr_rows: Sequence[dict]) -> list[dict]:
    """Precision@K from rank PR rows (`pr_table(..., by="rank")`): rows `{"run", "bits", "k",
    "precision"}`, one per cut-off."""
    return [
        {"run": r["run"], "bits": r["bits"], "k": int(k), "precision": float(p)}
        for r in pr_rows
        if r["by"] == "rank"
        for k, p in zip(r["x"], r["precision"], strict=True)
    ]


def code_usage_table(encoded: EncodedRun) -> list[dict]:
    """How each head's database codes use the code space, one row per code length.

    Rows hold `run`, `bits`, `code_type`, `group_sizes` (`[G]`, largest first),
    `distinct_codes`, `largest_code_group` and, for PQ codes, `codeword_counts` `[M, K]` and
    `entropy` `[M]` bits (maximum `max_entropy` = log2 K); for binary codes, `ones_fraction`
    `[b]` (the balance of each bit).
    """
    rows = []
    for head, bits in enumerate(encoded.code_lengths):
        codes = encoded.codes(head)
        sizes = code_stats.code_group_sizes(codes)
        row = {
            "run": encoded.run.name,
            "bits": bits,
            "code_type": encoded.code_type,
            "group_sizes": sizes,
            "distinct_codes": int(sizes.size),
            "largest_code_group": int(sizes[0]) if sizes.size else 0,
        }
        if encoded.code_type == "pq":
            codebook_size = int(np.shape(encoded.head_params(head))[1])  # [M, K, d]
            counts = code_stats.codeword_counts(codes, codebook_size)
            row.update(
                codeword_counts=counts,
                entropy=code_stats.usage_entropy(counts),
                max_entropy=float(np.log2(codebook_size)),
            )
        else:
            row["ones_fraction"] = code_stats.bit_balance(codes)
        rows.append(row)
    return rows


def relevant(query_labels, db_labels) -> np.ndarray:
    """Relevance of database items to queries under the evaluators' rule.

    Args:
      query_labels: `[Q]` class ids or `[Q, C]` multi-hot.
      db_labels: `[Q, k]` ids or `[Q, k, C]` multi-hot of each query's results.

    Returns:
      `[Q, k]` bool: same class id, or at least one shared label.

    Example:
      >>> relevant(np.array([1, 2]), np.array([[1, 2], [2, 2]])).tolist()
      [[True, False], [True, True]]
    """
    q, d = np.asarray(query_labels), np.asarray(db_labels)
    if q.ndim == 1:
        return q[:, None] == d
    return ((q[:, None, :] != 0) & (d != 0)).any(axis=-1)


def top_k_table(
    encoded: EncodedRun, *, num_queries: int = 6, k: int = 8, head: int = -1
) -> list[dict]:
    """The top-k database items of a few queries, as the run's index ranks them.

    Queries are spread evenly over the query split (deterministic). The search is the
    method's index (`Method.index`, exact, ties: lower database position first).

    Args:
      encoded: an `EncodedRun`.
      num_queries: how many queries.
      k: results per query (clipped to the database size).
      head: which code length (default the longest, as `dpq-search` serves).

    Returns:
      One row per query: `{"run", "bits", "query_index", "query_label", "result_indices"
      [k], "result_labels", "relevant" [k] bool, "scores" [k]}`; indices point into the
      data source (`encoded.source.images`).
    """
    lengths = encoded.code_lengths
    head = range(len(lengths))[head]
    num_q = len(encoded.query_indices)
    positions = np.unique(np.linspace(0, num_q - 1, num=min(num_queries, num_q)).round())
    positions = positions.astype(np.int64)
    k = min(k, len(encoded.db_indices))
    index = encoded.method.index(
        encoded.codes(head),
        params=encoded.head_params(head),
        ids=encoded.db_indices,
        query_side=encoded.query_side,
    )
    sub = _take_rows(encoded.queries, positions)
    lookup = encoded.method.search_queries(
        sub, head=head, params=encoded.head_params(head), query_side=encoded.query_side
    )
    scores, ids = index.search(lookup, k)
    labels = np.asarray(encoded.source.labels)
    rows = []
    for row, pos in enumerate(positions):
        qi = int(encoded.query_indices[pos])
        rel = relevant(labels[[qi]], labels[ids[row]][None])[0]
        rows.append(
            {
                "run": encoded.run.name,
                "bits": lengths[head],
                "query_index": qi,
                "query_label": labels[qi],
                "result_indices": np.asarray(ids[row], np.int64),
                "result_labels": labels[ids[row]],
                "relevant": rel,
                "scores": np.asarray(scores[row]),
            }
        )
    return rows


def _take_rows(tree, rows: np.ndarray):
    """Rows of every array of a (nested) query-output dict."""
    import jax

    return jax.tree.map(lambda x: np.asarray(x)[rows], tree)
