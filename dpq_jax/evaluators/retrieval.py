"""The retrieval evaluator: encode the query and database splits, let the method turn them into
a score source for each code length, and score the ranking with `dpq_jax.metrics`.

Configured under `config.evals.<name>` (big_vision's evaluator plug-ins; the helper is
`config_lib.retrieval_eval`): `type="retrieval"`, `query`/`database` (split names of the
protocol), `query_side` ("" = the method's default), `map_ks`, `precision_ks`, `denominator`,
`empty`, `ties`, `hamming_radius` (precision/recall within that Hamming radius, for binary
codes), `log_steps` (0: only at the end), `final` (run on the selected checkpoint for the
report).

Numbers are named `<name>/map@all`, `<name>/p@5`, ... for a model with one code length. A
model with several (`config.model.bits = (12, 24, 36, 48)`) gets `<name>/<bits>bit/map@all`
per length plus `<name>/map@all`, the mean over the lengths, which `select_on` can use.
"""

import jax
import numpy as np
from flax import nnx

from dpq_jax import encode
from dpq_jax.methods import base
from dpq_jax.metrics import retrieval as metrics_lib


class RetrievalEvaluator:
    """Retrieval of one protocol split pair with every code length of the model.

    Args:
      name: metric prefix.
      cfg: the `config.evals.<name>` ConfigDict.
      method: a `dpq_jax.methods.base.Method`.
      code_lengths: the model's code lengths (`method.code_lengths(config.model)`).
      graphdef: NNX graphdef of `(model, optimizer)`.
      source: the full data source; splits index into it.
      splits: `dpq_jax.data.protocols.Splits`.
      mesh: the `"data"` mesh.
      pp_spec: evaluation preprocessing.
      batch_size: global encoding batch (a multiple of the device count).
    """

    def __init__(
        self,
        name,
        cfg,
        *,
        method,
        code_lengths,
        graphdef,
        source,
        splits,
        mesh,
        pp_spec,
        batch_size,
    ):
        self.name, self.cfg, self.method = name, cfg, method
        self.query_side = method.check_query_side(cfg.get("query_side"))
        self.code_lengths = tuple(code_lengths)
        self.final = bool(cfg.get("final", False))
        self.source, self.mesh = source, mesh
        self.pp_spec, self.batch_size = pp_spec, batch_size
        self.query_indices = np.asarray(getattr(splits, cfg.query))
        self.db_indices = np.asarray(getattr(splits, cfg.database))
        labels = np.asarray(source.labels)
        self.query_labels = labels[self.query_indices]
        self.db_labels = labels[self.db_indices]
        self._encode = encode.make_predict_fn(graphdef, method.encode_fn)
        self._query = encode.make_predict_fn(graphdef, method.query_fn)

        @jax.jit
        def code_params(state):
            model, _ = nnx.merge(graphdef, state)
            return method.code_params(model)

        self._code_params = code_params
        self.conventions = {
            "map_k": ["all" if k == -1 else int(k) for k in cfg.map_ks],
            "denominator": cfg.denominator,
            "empty": cfg.empty,
            "ties": cfg.ties,
            "relevance": "same label" if labels.ndim == 1 else "shares >= 1 label",
            "search": method.describe_search(self.query_side),
            "query_side": self.query_side,
        }
        self.last_curves: dict[int, tuple] = {}  # bits -> (precision, recall) of the last run

    @property
    def multi_head(self) -> bool:
        return len(self.code_lengths) > 1

    def metric_prefix(self, bits: int) -> str:
        """Where the numbers of one code length are logged."""
        return f"{self.name}/{bits}bit" if self.multi_head else self.name

    def due(self, step: int, total_steps: int) -> bool:
        """Whether to run at `step` (every `log_steps`; 0 means only for the final report)."""
        del total_steps
        every = int(self.cfg.get("log_steps", 0))
        return every > 0 and step % every == 0

    def _encode_split(self, fn, state, indices):
        return encode.encode_split(
            fn,
            state,
            self.source,
            indices,
            pp_spec=self.pp_spec,
            batch_size=self.batch_size,
            mesh=self.mesh,
        )

    def run(self, state) -> dict[str, float]:
        """Encodes both splits once, scores every code length, returns the metrics."""
        database = self._encode_split(self._encode, state, self.db_indices)
        query = self._encode_split(self._query, state, self.query_indices)
        params = jax.device_get(self._code_params(state))
        metrics: dict[str, float] = {}
        for head, bits in enumerate(self.code_lengths):
            source = self.method.score_source(
                query,
                self.method.database_codes(database, head),
                head=head,
                params=base.head_params(params, head),
                query_side=self.query_side,
            )
            metrics.update(self._score(source, prefix=self.metric_prefix(bits), bits=bits))
        if self.multi_head:  # the mean over code lengths, for checkpoint selection
            first = self.metric_prefix(self.code_lengths[0]) + "/"
            for key in [k.removeprefix(first) for k in metrics if k.startswith(first)]:
                values = [metrics[f"{self.metric_prefix(b)}/{key}"] for b in self.code_lengths]
                metrics[f"{self.name}/{key}"] = float(np.mean(values))
        return metrics

    def run_raw_pixels(self) -> dict[str, float]:
        """The raw-pixel baseline on the same split: Euclidean distance between the original
        images (full resolution, values in [0, 1]), the usual "raw pixels" reference point."""
        query = self._pixels(self.query_indices)
        database = self._pixels(self.db_indices)
        source = metrics_lib.dense_source(query, database, metric="neg_l2")
        return self._score(source, prefix=f"{self.name}/raw_pixels", bits=None)

    def _pixels(self, indices) -> np.ndarray:
        images = np.asarray(self.source.images)[indices]
        return images.reshape(len(indices), -1).astype(np.float32) / 255.0

    def _score(self, source, *, prefix: str, bits: int | None) -> dict[str, float]:
        hamming = source.kind == "hamming"
        radius = self.cfg.get("hamming_radius", -1) if hamming else -1
        options = dict(empty=self.cfg.empty, ties=self.cfg.ties, mesh=self.mesh)
        result = metrics_lib.retrieval_metrics(
            source,
            self.query_labels,
            self.db_labels,
            map_ks=tuple(self.cfg.map_ks),
            precision_ks=tuple(self.cfg.precision_ks),
            radius=radius if radius >= 0 else None,
            denominator=self.cfg.denominator,
            **options,
        )
        if bits is not None and self.final:
            pr = metrics_lib.pr_curve(
                source, self.query_labels, self.db_labels, by="rank", **options
            )
            self.last_curves[bits] = (pr["precision"], pr["recall"])
        return {
            f"{prefix}/{key}": float(value) for key, value in result.items() if key != "conventions"
        }


Evaluator = RetrievalEvaluator  # the registry's name for an evaluator module's class
