"""The method interface: everything method-specific lives behind it.

A method owns its network, its loss, its code type, its code length(s), how database items
become codes, how queries become something to score those codes with, and which query sides
it offers. The trainer, evaluator, report, retriever, index files, `dpq-search` and the FAISS
export ask the method; none of them names a method or reads a method's config fields.

Two code types exist, each owned by `dpq_jax.search`:

- `"pq"`: uint8 codes `[N, M]` plus codebooks `[M, K, d]`, searched with an ADC lookup table
  `[Q, M, K]` (`search.index.PQIndex`, `metrics.retrieval.adc_source`). Subclass `PQMethod`.
- `"binary"`: bits `[N, b]` packed 0/1, searched by Hamming distance
  (`search.index.BinaryIndex`, `metrics.retrieval.hamming_source`). Subclass `HashingMethod`.

A model may emit codes at several lengths at once (multi-head training, progressive codes):
`code_lengths(model_cfg)` is a tuple of bits and every per-code output is a tuple in that
order; "head" below is a position in that tuple.

Methods are found by module name: `config.method = "dsh"` loads `dpq_jax/methods/dsh.py` and
uses its `METHOD` (see `docs/adding_a_method.md`).
"""

import abc
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np

CODE_TYPES = ("pq", "binary")
_MISSING = object()


def field(cfg: Any, name: str, default: Any = _MISSING, *, what: str = "model") -> Any:
    """`cfg.name` of a ConfigDict / attribute object, or `cfg[name]` of a mapping.

    Raises:
      ValueError: the field is missing and has no default (names the field and group).
    """
    if isinstance(cfg, Mapping):
        if name in cfg:
            return cfg[name]
    else:
        try:
            return getattr(cfg, name)
        except (AttributeError, KeyError):
            pass
    if default is _MISSING:
        raise ValueError(f"The {what} config is missing the field {name!r}; add it to the config.")
    return default


def as_dict(cfg: Any) -> dict[str, Any]:
    """A plain dict of a ConfigDict, mapping or attribute object."""
    if hasattr(cfg, "to_dict"):  # ml_collections.ConfigDict
        return dict(cfg.to_dict())
    if isinstance(cfg, Mapping):
        return dict(cfg)
    return dict(vars(cfg))


def as_lengths(bits: Any) -> tuple[int, ...]:
    """`config.model.bits` (an int or a tuple of ints) as a tuple of positive ints.

    Example:
      >>> as_lengths(12), as_lengths((12, 48))
      ((12,), (12, 48))
    """
    values = tuple(bits) if isinstance(bits, (tuple, list)) else (bits,)
    if not values or any(isinstance(b, bool) or int(b) != b or b < 1 for b in values):
        raise ValueError(f"model.bits must be a positive int or a tuple of them, got {bits!r}.")
    if len(set(values)) != len(values):
        raise ValueError(f"model.bits repeats a code length: {bits!r}.")
    return tuple(int(b) for b in values)


class Method(abc.ABC):
    """A published method as one object (registered as `dpq_jax.methods.<name>.METHOD`).

    Network side (runs under `jax.jit`, batch sharded `P("data")` or no mesh):
      build, loss_fn, encode_fn, query_fn, code_params.
    Code side (host, after encoding): index, search_queries, score_source, faiss_queries,
      describe_search. `PQMethod` and `HashingMethod` implement it for their code type.
    """

    name: ClassVar[str]
    code_type: ClassVar[str]  # one of CODE_TYPES
    query_sides: ClassVar[tuple[str, ...]]  # the first is the default

    # --- network --------------------------------------------------------------------------
    @abc.abstractmethod
    def build(self, model_cfg: Any, *, num_classes: int, in_channels: int, rngs) -> Any:
        """The NNX model from the config's `model` group (train mode)."""

    @abc.abstractmethod
    def loss_fn(self, model, batch: Mapping[str, Any], loss_cfg: Any):
        """`(loss [] float32, aux dict of scalars)` of `batch` (`image [B, H, W, C]` float32,
        `label [B]` int32 or `[B, C]` multi-hot); several heads: the sum of their losses."""

    def after_update(self, model) -> None:
        """Non-gradient parameter updates after each optimizer step (jitted; default: none).

        `loss_fn` may stash what it needs in non-`nnx.Param` variables of the model (their
        mutations survive `nnx.value_and_grad`), e.g. DCBH's explicit centre update."""
        del model

    def make_optimizer(self, model, optim_cfg: Any, total_steps: int):
        """`(optimizer, schedule)`: the `nnx.Optimizer` over the model's `nnx.Param`s and the
        learning-rate schedule the trainer logs.

        Default: `optim.make_nnx_optimizer` (one optax chain from `config.optim`). A method with
        its own recipe overrides it (DPQ's encoder / codebook optimizers); whoever builds the
        optimizer (trainer, `inference.restore_model`) should call this, so the checkpointed
        optimizer state has the same tree in both."""
        from dpq_jax import optim

        return optim.make_nnx_optimizer(model, optim_cfg, total_steps)

    @abc.abstractmethod
    def code_lengths(self, model_cfg: Any) -> tuple[int, ...]:
        """The code length of each head in bits, e.g. `(32,)` or `(12, 24, 36, 48)`."""

    @abc.abstractmethod
    def encode_fn(self, model, images) -> dict[str, Any]:
        """Database side of `images [B, H, W, C]` (eval mode): a dict of `[B, ...]` arrays whose
        `"codes"` entry `database_codes` reads per head (by default a tuple with one code array
        per head; progressive codes store one `[B, L]` array and each head is a prefix)."""

    @abc.abstractmethod
    def query_fn(self, model, images) -> dict[str, Any]:
        """Query side of `images [B, H, W, C]` (eval mode): a dict of `[B, ...]` arrays or
        per-head tuples of them; whatever `search_queries`/`score_source` need."""

    def code_params(self, model) -> tuple[Any, ...] | None:
        """Per-head parameters the codes are searched with (PQ: codebooks), or None; jit-able.
        Pick one head's with `head_params`."""
        del model
        return None

    def real_descriptors(self, outputs: Mapping[str, Any], head: int) -> np.ndarray | None:
        """One head's real-valued descriptors `[N, d]` from `encode_fn` / `query_fn` host
        outputs, or None (the default: the method has none). An evaluator with
        `real_valued = True` ranks them by Euclidean distance as the reference the codes are
        compared with (`real_map@all`, ...)."""
        del outputs, head
        return None

    # --- query sides ------------------------------------------------------------------------
    @property
    def default_query_side(self) -> str:
        return self.query_sides[0]

    def check_query_side(self, query_side: str | None) -> str:
        """The query side to use: `query_side`, or the default when it is None or ""."""
        if not query_side:
            return self.default_query_side
        if query_side not in self.query_sides:
            raise ValueError(
                f"Method {self.name!r} has query sides {self.query_sides}, got {query_side!r}."
            )
        return query_side

    # --- code side ---------------------------------------------------------------------------
    def database_codes(self, database: Mapping[str, Any], head: int) -> np.ndarray:
        """One head's stored codes `[N, ...]` uint8 from `encode_fn`'s host outputs (PQ: codes
        `[N, M]`; binary: 0/1 bits `[N, b]`). Every reader of encoded codes (evaluator,
        retriever) goes through this, so a method may store its codes in another layout."""
        return np.asarray(database["codes"][head], np.uint8)

    @abc.abstractmethod
    def index(self, codes: np.ndarray, *, params: Any, ids=None, query_side: str):
        """A `search.index.PQIndex` or `BinaryIndex` over one head's stored codes."""

    @abc.abstractmethod
    def stored_codes(self, index) -> np.ndarray:
        """The stored codes an index was built from (the inverse of `index`)."""

    def index_matches(self, index, *, params: Any, code_length: int, query_side: str) -> bool:
        """Whether a loaded `index` holds this method's codes of `code_length` bits."""
        del params, query_side
        meta = index.metadata()
        return (
            meta["kind"] == self.code_type
            and meta["method"] == self.name
            and meta["code_bits"] == code_length
        )

    @abc.abstractmethod
    def search_queries(
        self, queries: Mapping[str, Any], *, head: int, params: Any, query_side: str
    ):
        """What the index of `head` searches with: a lookup table or packed query codes."""

    @abc.abstractmethod
    def score_source(
        self,
        queries: Mapping[str, Any],
        codes: np.ndarray,
        *,
        head: int,
        params: Any,
        query_side: str,
    ):
        """A `metrics.retrieval.ScoreSource` ranking one head's stored codes for the queries."""

    @abc.abstractmethod
    def faiss_queries(
        self, queries: Mapping[str, Any], *, head: int, params: Any, query_side: str
    ) -> np.ndarray:
        """Queries for the FAISS index that `search.faiss_export` builds from `index`."""

    @abc.abstractmethod
    def describe_search(self, query_side: str) -> str:
        """How one head is searched, for reports, e.g. `"ADC, query side 'raw'"`."""


class PQMethod(Method):
    """Product-quantization methods: codes `[N, M]` uint8 and codebooks `[M, K, d]` per head.

    Subclasses implement the network side, `codebooks_fn` and `query_tables`; the index, the
    score source and the FAISS queries follow from them.
    """

    code_type = "pq"
    distance_sides: ClassVar[tuple[str, ...]] = ()  # query sides whose tables are distances

    @abc.abstractmethod
    def codebooks_fn(self, model) -> tuple[Any, ...]:
        """One `[M, K, d]` float32 codebook array per head (jit-able)."""

    @abc.abstractmethod
    def query_tables(self, queries: Mapping[str, Any], *, head: int, codebooks, query_side: str):
        """ADC lookup tables `[Q, M, K]` of the queries (distances for `distance_sides`)."""

    @abc.abstractmethod
    def query_vectors(
        self, queries: Mapping[str, Any], *, head: int, codebooks, query_side: str
    ) -> np.ndarray:
        """`[Q, D]` vectors whose inner-product (or L2) tables equal `query_tables`."""

    def code_params(self, model) -> tuple[Any, ...]:
        return tuple(self.codebooks_fn(model))

    def metric(self, query_side: str) -> str:
        """`"l2"` (ascending) for distance tables, else `"ip"` (descending)."""
        return "l2" if query_side in self.distance_sides else "ip"

    def index(self, codes, *, params, ids=None, query_side):
        from dpq_jax.search import index as index_lib

        return index_lib.PQIndex(
            np.asarray(params, np.float32),
            codes,
            ids,
            method=self.name,
            metric=self.metric(query_side),
        )

    def stored_codes(self, index):
        return index.codes

    def index_matches(self, index, *, params, code_length, query_side):
        return (
            super().index_matches(
                index, params=params, code_length=code_length, query_side=query_side
            )
            and index.metric == self.metric(query_side)
            and np.array_equal(index.codebooks, np.asarray(params, np.float32))
        )

    def search_queries(self, queries, *, head, params, query_side):
        return self.query_tables(queries, head=head, codebooks=params, query_side=query_side)

    def score_source(self, queries, codes, *, head, params, query_side):
        from dpq_jax.metrics import retrieval as metrics_lib

        luts = self.query_tables(queries, head=head, codebooks=params, query_side=query_side)
        return metrics_lib.adc_source(luts, codes, lut_is_distance=self.metric(query_side) == "l2")

    def faiss_queries(self, queries, *, head, params, query_side):
        return self.query_vectors(queries, head=head, codebooks=params, query_side=query_side)

    def describe_search(self, query_side):
        return f"ADC, query side {query_side!r}"


class HashingMethod(Method):
    """Binary-code methods: each head gives real-valued relaxed codes `[B, b]`; the code is
    their sign as 0/1 bits (`value > 0` is a 1), packed and ranked by Hamming distance.

    Subclasses implement the network side and `relaxed_codes`.
    """

    code_type = "binary"
    query_sides = ("hamming",)

    @abc.abstractmethod
    def relaxed_codes(self, model, images) -> tuple[Any, ...]:
        """One `[B, b]` float array per head (eval mode), before the sign."""

    def encode_fn(self, model, images):
        import jax.numpy as jnp

        relaxed = tuple(r.astype(jnp.float32) for r in self.relaxed_codes(model, images))
        return {"codes": tuple((r > 0).astype(jnp.uint8) for r in relaxed), "relaxed": relaxed}

    def query_fn(self, model, images):
        return self.encode_fn(model, images)  # symmetric: queries are coded like the database

    def real_descriptors(self, outputs, head):
        """The relaxed codes (`encode_fn`'s `"relaxed"`), the values the bits are signs of."""
        relaxed = outputs.get("relaxed")
        return None if relaxed is None else np.asarray(relaxed[head], np.float32)

    def index(self, codes, *, params, ids=None, query_side):
        from dpq_jax.search import index as index_lib

        del params, query_side
        return index_lib.BinaryIndex.from_bits(codes, ids, method=self.name)

    def stored_codes(self, index):
        from dpq_jax.search import kernels

        return np.asarray(kernels.unpack_bits(index.packed, index.num_bits), np.uint8)

    def _packed_queries(self, queries, head):
        from dpq_jax.search import kernels

        return kernels.pack_bits(np.asarray(queries["codes"][head]))

    def search_queries(self, queries, *, head, params, query_side):
        return self._packed_queries(queries, head)

    def score_source(self, queries, codes, *, head, params, query_side):
        from dpq_jax.metrics import retrieval as metrics_lib
        from dpq_jax.search import kernels

        return metrics_lib.hamming_source(
            self._packed_queries(queries, head), kernels.pack_bits(codes), num_bits=codes.shape[1]
        )

    def faiss_queries(self, queries, *, head, params, query_side):
        from dpq_jax.search import faiss_export

        bits = np.asarray(queries["codes"][head])
        return faiss_export.faiss_binary_codes(self._packed_queries(queries, head), bits.shape[1])

    def describe_search(self, query_side):
        return "Hamming (0/1 bits = sign of the relaxed codes)"


# Backbone constructor arguments a method sets itself; a config's model.backbone must not.
RESERVED_BACKBONE_KEYS = ("in_channels", "features", "rngs", "dtype")


def make_backbone(
    name: str, kwargs: Mapping[str, Any], in_channels: int, features: int, *, dtype, rngs, method
):
    """The registered backbone `name` built as every method builds its trunk:
    `Model(in_channels, features, dtype=dtype, rngs=rngs, **kwargs)`.

    Raises:
      ValueError: `kwargs` (the config's `model.backbone` without its name) sets an argument the
        method sets itself; the message names them and the method.
      KeyError: an unknown backbone name.
    """
    from dpq_jax import registry

    reserved = sorted(set(kwargs) & set(RESERVED_BACKBONE_KEYS))
    if reserved:
        raise ValueError(
            f"model.backbone sets {reserved}, which {method} sets itself (from the images and "
            f"model.features / model.dtype); remove them from model.backbone."
        )
    return registry.get("backbone", name)(in_channels, features, dtype=dtype, rngs=rngs, **kwargs)


# `model.dtype` names: the backbone's compute dtype (heads and losses run in float32).
DTYPE_NAMES = ("bfloat16", "float32")


def compute_dtype(name: str) -> Any:
    """The jnp dtype of a `model.dtype` name in `DTYPE_NAMES`.

    Raises:
      ValueError: anything else (one line naming the choices).

    Example:
      >>> compute_dtype("bfloat16").__name__
      'bfloat16'
    """
    import jax.numpy as jnp

    if not isinstance(name, str) or name not in DTYPE_NAMES:
        raise ValueError(f"model.dtype must be one of {sorted(DTYPE_NAMES)}, got {name!r}.")
    return getattr(jnp, name)


def backbone_spec(model_cfg: Any, *, what: str, examples: str) -> tuple[str, dict[str, Any]]:
    """`(name, kwargs)` of `model.backbone`: its name and its other fields (the backbone's
    keyword arguments), as `make_backbone` takes them.

    Args:
      model_cfg: the config's `model` group.
      what: the method, for the missing-field message (`field`'s `what`).
      examples: backbone names the missing-name message suggests, e.g. "'dsh_net' or
        'cnn_small'".

    Raises:
      ValueError: a missing `model.backbone`, or one without a name.

    Example:
      >>> backbone_spec(dict(backbone=dict(name="cnn_small", widths=(4,))), what="DSH", examples="")
      ('cnn_small', {'widths': (4,)})
    """
    backbone_cfg = as_dict(field(model_cfg, "backbone", what=what))
    if "name" not in backbone_cfg:
        raise ValueError(f"model.backbone needs a 'name' (e.g. {examples}).")
    return backbone_cfg.pop("name"), backbone_cfg


def backbone_and_dtype(model_cfg: Any, *, what: str, examples: str) -> tuple[str, dict, Any]:
    """`(name, kwargs, dtype)`: `backbone_spec` and the jnp dtype of `model.dtype` (a name in
    `DTYPE_NAMES`, default "float32"), checked in that order.

    Raises:
      ValueError: a missing `model.backbone`, a backbone without a name, or an unknown dtype.

    Example:
      >>> cfg = dict(backbone=dict(name="cnn_small"), dtype="bfloat16")
      >>> name, kwargs, dtype = backbone_and_dtype(cfg, what="DSH", examples="")
      >>> name, kwargs, dtype.__name__
      ('cnn_small', {}, 'bfloat16')
    """
    name, kwargs = backbone_spec(model_cfg, what=what, examples=examples)
    return name, kwargs, compute_dtype(field(model_cfg, "dtype", "float32", what=what))


def head_params(params: tuple[Any, ...] | None, head: int) -> Any:
    """One head's entry of `Method.code_params` (None for methods without code parameters)."""
    return None if params is None else params[head]
