"""The retrieval evaluator: encode the query and database splits, let the method turn them into
a score source for each code length, and score the ranking with `dpq_jax.metrics`.

Configured under `config.evals.<name>` (big_vision's evaluator plug-ins; the helper is
`config_lib.retrieval_eval`): `type="retrieval"`, `query`/`database` (split names of the
protocol), `query_side` ("" = the method's default), `map_ks`, `precision_ks`, `denominator`,
`empty`, `ties`, `hamming_radius` (precision/recall within that Hamming radius, for binary
codes), `hamming_packing` (binary codes: `"bits"`, the correct 0/1 packing, or
`"legacy_compactbit"`, the DDH / DCBH packing bug, for parity with their published numbers
only; `dpq_jax.search.legacy`), `log_steps` (0: only at the end), `final` (run on the selected
checkpoint for the report), `recall_ks` (optional: recall@K = relevant items in the top K /
relevant items in the database, keys `r@K`), `real_valued` (optional, default False: also rank
the method's real-valued descriptors, `Method.real_descriptors`, by Euclidean distance and log
the same metrics as `real_map@all`, `real_p@K`, ... next to the codes' numbers, so a report row
holds both).

Numbers are named `<name>/map@all`, `<name>/p@5`, ... for a model with one code length. A
model with several (`config.model.bits = (12, 24, 36, 48)`) gets `<name>/<bits>bit/map@all`
per length plus `<name>/map@all`, the mean over the lengths, which `select_on` can use.
`metric_names` lists them from the config alone (the trainer checks `select_on` against it).

Every run also logs the code groups of each head's database codes: `<prefix>/distinct_codes`
(how many different codes the database holds) and `<prefix>/largest_code_group` (the most
items sharing one code). A network that collapses (hashing references end with a few
hundred distinct codes for 60,000 items) shows there first. They are not averaged over the
code lengths. The per-codebook usage of the last run (`last_code_usage`, per code length:
codewords used and usage entropy per codebook for PQ codes, the fraction of ones per bit for
binary codes; `dpq_jax.analysis.code_stats.code_usage`) goes into the report.
"""

import jax
import numpy as np
from flax import nnx

from dpq_jax import encode
from dpq_jax.analysis.code_stats import code_group_stats, code_usage
from dpq_jax.methods import base
from dpq_jax.metrics import retrieval as metrics_lib
from dpq_jax.search import kernels, legacy

CODE_STATS = ("distinct_codes", "largest_code_group")  # per head; never averaged over heads
REAL_PREFIX = "real_"  # metrics of the real-valued descriptors: `real_map@all`, ...


def metric_keys(cfg, code_type: str) -> tuple[str, ...]:
    """The retrieval metrics one code length of `config.evals.<name>` logs, without prefix.

    `map@all` (map_ks -1) and `map@K`, `p@K` (precision_ks), `r@K` (recall_ks), for binary codes
    with `hamming_radius` R >= 0 `p@rR` and `r@rR`, and with `real_valued` the ranking metrics
    again as `real_<key>` (Euclidean ranking: no radius metrics). Code-group counts
    (`CODE_STATS`) are logged too but are not retrieval metrics.

    Args:
      cfg: the `config.evals.<name>` ConfigDict (or a dict).
      code_type: the method's `code_type`, `"pq"` or `"binary"`.

    Example:
      >>> metric_keys(dict(map_ks=(-1,), precision_ks=(5,), recall_ks=(10,),
      ...                  real_valued=True), "pq")
      ('map@all', 'p@5', 'r@10', 'real_map@all', 'real_p@5', 'real_r@10')
    """
    ranking = ["map@all" if int(k) == -1 else f"map@{int(k)}" for k in cfg["map_ks"]]
    ranking += [f"p@{int(k)}" for k in cfg["precision_ks"]]
    ranking += [f"r@{int(k)}" for k in cfg.get("recall_ks", ())]
    keys = list(ranking)
    radius = int(cfg.get("hamming_radius", -1))
    if code_type == "binary" and radius >= 0:
        keys += [f"p@r{radius}", f"r@r{radius}"]
    if cfg.get("real_valued", False):
        keys += [REAL_PREFIX + key for key in ranking]
    return tuple(dict.fromkeys(keys))


def metric_names(name: str, cfg, code_type: str, code_lengths) -> tuple[str, ...]:
    """Every retrieval metric name the evaluator `name` logs for a model with `code_lengths`:
    `<name>/<key>` for each of `metric_keys`, and for several code lengths also
    `<name>/<bits>bit/<key>` per length (the unprefixed name is then their mean).

    Example:
      >>> cfg = dict(map_ks=(-1,), precision_ks=(), hamming_radius=2)
      >>> names = metric_names("val", cfg, "binary", (12, 48))
      >>> names[:3], len(names)
      (('val/map@all', 'val/p@r2', 'val/r@r2'), 9)
      >>> names[3:6]
      ('val/12bit/map@all', 'val/12bit/p@r2', 'val/12bit/r@r2')
    """
    keys, lengths = metric_keys(cfg, code_type), tuple(code_lengths)
    names = [f"{name}/{key}" for key in keys]
    if len(lengths) > 1:
        names += [f"{name}/{bits}bit/{key}" for bits in lengths for key in keys]
    return tuple(names)


def legacy_hamming_source(query_bits, db_bits) -> metrics_lib.ScoreSource:
    """A Hamming score source on the DDH / DCBH `compactbit` bytes of 0/1 bits (parity only).

    Args:
      query_bits: `[Q, b]` 0/1 query bits.
      db_bits: `[N, b]` 0/1 database bits.

    Returns:
      `metrics.retrieval.hamming_source` over `legacy.legacy_compactbit` bytes, with
      `num_bits = 8 * ceil(b / 8)` (borrows of a partial byte can set its padding bits).
    """
    q, db = legacy.legacy_compactbit(query_bits), legacy.legacy_compactbit(db_bits)
    return metrics_lib.hamming_source(q, db, num_bits=legacy.legacy_num_bits(np.shape(db_bits)[1]))


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

    code_stats = CODE_STATS  # per-head numbers of `run` that are not retrieval metrics

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
        self.hamming_packing = cfg.get("hamming_packing", "bits")
        if self.hamming_packing not in legacy.HAMMING_PACKINGS:
            raise ValueError(
                f"hamming_packing must be one of {legacy.HAMMING_PACKINGS}, got "
                f"{self.hamming_packing!r}."
            )
        if self.hamming_packing != "bits" and method.code_type != "binary":
            raise ValueError(
                f"hamming_packing={self.hamming_packing!r} applies to binary codes only; method "
                f"{method.name!r} has {method.code_type!r} codes, so use hamming_packing='bits'."
            )
        self.code_lengths = tuple(code_lengths)
        self.final = bool(cfg.get("final", False))
        self.real_valued = bool(cfg.get("real_valued", False))
        if self.real_valued and type(method).real_descriptors is base.Method.real_descriptors:
            raise ValueError(
                f"config.evals.{name}.real_valued is set, but method {method.name!r} has no "
                "real-valued descriptors (Method.real_descriptors); set it to False."
            )
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
        search = method.describe_search(self.query_side)
        if self.hamming_packing == "legacy_compactbit":
            search += " on legacy_compactbit bytes (DDH/DCBH packing bug; parity only)"
        self.conventions = {
            "map_k": ["all" if k == -1 else int(k) for k in cfg.map_ks],
            "denominator": cfg.denominator,
            "empty": cfg.empty,
            "ties": cfg.ties,
            "relevance": "same label" if labels.ndim == 1 else "shares >= 1 label",
            "search": search,
            "query_side": self.query_side,
        }
        if method.code_type == "binary":
            self.conventions["hamming_packing"] = self.hamming_packing
        if self.real_valued:
            self.conventions["real_valued"] = "real_* metrics: Euclidean, real-valued descriptors"
        self.last_curves: dict[int, tuple] = {}  # bits -> (precision, recall) of the last run
        self.last_code_usage: dict[int, dict] = {}  # bits -> `code_stats.code_usage` of it

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
            codes = self.method.database_codes(database, head)
            source = self._source(query, codes, head, base.head_params(params, head))
            prefix = self.metric_prefix(bits)
            metrics.update(self._score(source, prefix=prefix, bits=bits))
            if self.real_valued:
                metrics.update(self._score_real(query, database, head, prefix))
            for key, value in zip(CODE_STATS, code_group_stats(codes), strict=True):
                metrics[f"{prefix}/{key}"] = float(value)
            self.last_code_usage[bits] = self._code_usage(codes, params, head)
        if self.multi_head:  # the mean over code lengths, for checkpoint selection
            first = self.metric_prefix(self.code_lengths[0]) + "/"
            keys = [k.removeprefix(first) for k in metrics if k.startswith(first)]
            for key in [k for k in keys if k not in CODE_STATS]:
                values = [metrics[f"{self.metric_prefix(b)}/{key}"] for b in self.code_lengths]
                metrics[f"{self.name}/{key}"] = float(np.mean(values))
        return metrics

    def _score_real(self, query, database, head, prefix) -> dict[str, float]:
        """One head's real-valued descriptors ranked by Euclidean distance: `<prefix>/real_*`."""
        q = self.method.real_descriptors(query, head)
        db = self.method.real_descriptors(database, head)
        if q is None or db is None:
            raise ValueError(
                f"config.evals.{self.name}.real_valued is set, but method {self.method.name!r} "
                "gave no real-valued descriptors for its outputs; set it to False."
            )
        source = metrics_lib.dense_source(q, db, metric="neg_l2")
        scored = self._score(source, prefix=prefix, bits=None)
        return {
            f"{prefix}/{REAL_PREFIX}{k.removeprefix(prefix + '/')}": v for k, v in scored.items()
        }

    def _code_usage(self, codes, params, head) -> dict:
        """Per-codebook usage (PQ: K from the head's `[M, K, d]` codebooks) or per-bit balance."""
        head_params = base.head_params(params, head)
        codebook_size = None
        if self.method.code_type == "pq" and head_params is not None:
            codebook_size = int(np.shape(head_params)[1])
        return code_usage(codes, self.method.code_type, codebook_size)

    def _source(self, query, codes, head, params):
        """The score source of one head: the method's, or Hamming on legacy bytes."""
        if self.hamming_packing == "legacy_compactbit":
            packed = self.method.search_queries(
                query, head=head, params=params, query_side=self.query_side
            )
            query_bits = np.asarray(kernels.unpack_bits(packed, codes.shape[1]))
            return legacy_hamming_source(query_bits, codes)
        return self.method.score_source(
            query, codes, head=head, params=params, query_side=self.query_side
        )

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
            recall_ks=tuple(self.cfg.get("recall_ks", ())),
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
