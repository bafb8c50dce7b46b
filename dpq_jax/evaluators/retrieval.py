"""The retrieval evaluator: encode the query and database splits, build the ADC lookup tables
for the configured query side, and score the ranking with `dpq_jax.metrics`.

Configured under `config.evals.<name>` (big_vision's evaluator plug-ins): `type="retrieval"`,
`query`/`database` (split names of the protocol), `query_side`, `map_ks`, `precision_ks`,
`denominator`, `empty`, `ties`, `log_steps` (0: only at the end), `final` (run on the selected
checkpoint for the report). Numbers are named `<name>/map@all`, `<name>/p@5`, ...
"""

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dpq_jax import encode
from dpq_jax.metrics import retrieval as metrics_lib
from dpq_jax.search import adc

QUERY_SIDES = ("soft_quantized", "raw", "l2")


def build_luts(query_side: str, query: dict, codebooks) -> tuple[jax.Array, bool]:
    """ADC lookup tables `[Q, M, K]` for a query side, and whether they are distances.

    Args:
      query_side: `"soft_quantized"` (inner product with the soft-quantized query; OPQN's
        probability LUT for orthonormal codebooks, METHODS §1.4), `"raw"` (inner product with
        the raw embedding) or `"l2"` (squared distance to the soft-quantized query, OPQN-l2q
        and Klein–Wolf PQ; ranked ascending).
      query: the method's `query_fn` outputs: `feats [Q, D]` and `probs [Q, M, K]`.
      codebooks: `[M, K, d]`.
    """
    if query_side == "soft_quantized":
        return adc.lut_soft_quantized(query["probs"], codebooks), False
    if query_side == "raw":
        return adc.lut_inner_product(query["feats"], codebooks), False
    if query_side == "l2":
        soft = jnp.einsum("qmk,mkd->qmd", query["probs"], codebooks)  # s_m = Σ_k p_mk c_mk
        return adc.lut_l2(soft, codebooks), True
    raise ValueError(f"query_side must be one of {QUERY_SIDES}, got {query_side!r}.")


class RetrievalEvaluator:
    """Asymmetric (ADC) retrieval of one protocol split pair.

    Args:
      name: metric prefix.
      cfg: the `config.evals.<name>` ConfigDict.
      method: a `dpq_jax.methods.base.Method`.
      graphdef: NNX graphdef of `(model, optimizer)`.
      source: the full data source; splits index into it.
      splits: `dpq_jax.data.protocols.Splits`.
      mesh: the `"data"` mesh.
      pp_spec: evaluation preprocessing.
      batch_size: global encoding batch (a multiple of the device count).
    """

    def __init__(self, name, cfg, *, method, graphdef, source, splits, mesh, pp_spec, batch_size):
        if cfg.query_side not in QUERY_SIDES:
            raise ValueError(
                f"evals.{name}.query_side must be one of {QUERY_SIDES}, got {cfg.query_side!r}."
            )
        self.name, self.cfg = name, cfg
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
        def codebooks(state):
            model, _ = nnx.merge(graphdef, state)
            return method.codebooks_fn(model)

        self._codebooks = codebooks
        self.conventions = {
            "map_k": ["all" if k == -1 else int(k) for k in cfg.map_ks],
            "denominator": cfg.denominator,
            "empty": cfg.empty,
            "ties": cfg.ties,
            "relevance": "same label" if labels.ndim == 1 else "shares >= 1 label",
            "query_side": cfg.query_side,
        }
        self.last_curve = None

    def due(self, step: int, total_steps: int) -> bool:
        """Whether to run at `step` (every `log_steps`; 0 means only for the final report)."""
        del total_steps
        every = int(self.cfg.get("log_steps", 0))
        return every > 0 and step % every == 0

    def _metric_options(self) -> dict[str, Any]:
        return {
            "denominator": self.cfg.denominator,
            "empty": self.cfg.empty,
            "ties": self.cfg.ties,
            "mesh": self.mesh,
        }

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
        """Encodes the database to codes, searches with the query LUTs, returns the metrics."""
        database = self._encode_split(self._encode, state, self.db_indices)
        query = self._encode_split(self._query, state, self.query_indices)
        codebooks = self._codebooks(state)
        luts, is_distance = build_luts(self.cfg.query_side, query, codebooks)
        source = metrics_lib.adc_source(luts, database["codes"], lut_is_distance=is_distance)
        return self._score(source, prefix=self.name)

    def run_raw_pixels(self) -> dict[str, float]:
        """The raw-pixel baseline on the same split: Euclidean distance between the original
        images (full resolution, values in [0, 1]), the usual "raw pixels" reference point."""
        query = self._pixels(self.query_indices)
        database = self._pixels(self.db_indices)
        source = metrics_lib.dense_source(query, database, metric="neg_l2")
        return self._score(source, prefix=f"{self.name}/raw_pixels", curve=False)

    def _pixels(self, indices) -> np.ndarray:
        images = np.asarray(self.source.images)[indices]
        return images.reshape(len(indices), -1).astype(np.float32) / 255.0

    def _score(self, source, *, prefix: str, curve: bool = True) -> dict[str, float]:
        result = metrics_lib.retrieval_metrics(
            source,
            self.query_labels,
            self.db_labels,
            map_ks=tuple(self.cfg.map_ks),
            precision_ks=tuple(self.cfg.precision_ks),
            **self._metric_options(),
        )
        if curve and self.final:
            pr = metrics_lib.pr_curve(
                source,
                self.query_labels,
                self.db_labels,
                by="rank",
                empty=self.cfg.empty,
                ties=self.cfg.ties,
                mesh=self.mesh,
            )
            self.last_curve = (pr["precision"], pr["recall"])
        return {
            f"{prefix}/{key}": float(value) for key, value in result.items() if key != "conventions"
        }
