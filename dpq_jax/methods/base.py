"""The method interface: what trainers and evaluators know about a published method.

A method bundles a network builder, its training loss and its encoders (after scenic's
`BaseModel`); trainers and evaluators talk only to this interface and look methods up by name
through `dpq_jax.registry.get("method", name)`.
"""

import dataclasses
from collections.abc import Callable
from typing import Any


@dataclasses.dataclass(frozen=True)
class Method:
    """A published method as a bundle of functions.

    Attributes:
      name: registry name, e.g. `"opqn"`.
      build: `build(model_cfg, *, num_classes: int, in_channels: int, rngs: nnx.Rngs)
        -> nnx.Module`; `model_cfg` is the config's `model` group (ConfigDict or any object
        with attribute access).
      loss_fn: `loss_fn(model, batch, loss_cfg) -> (loss [] float32, aux dict[str, scalar])`;
        `batch` holds `image [B, H, W, C] float32` and `label [B] int32`; runs under `jax.jit`
        with the batch sharded `P("data")`, and without a mesh.
      encode_fn: `encode_fn(model, images [B, H, W, C]) -> dict` of database-side outputs,
        at least `feats [B, D] float32` and `codes [B, M] uint8` (PQ) or bits (hashing).
      query_fn: `query_fn(model, images [B, H, W, C]) -> dict` of query-side outputs, e.g.
        `feats [B, D] float32` and a lookup table `probs [B, M, K] float32`.
      codebooks_fn: `codebooks_fn(model) -> [M, K, d] float32` codewords for the PQ index (None
        for hashing methods).
      index_kind: `"pq"` (codes + codebooks, ADC search) or `"binary"` (Hamming search).
    """

    name: str
    build: Callable[..., Any]
    loss_fn: Callable[..., tuple[Any, dict[str, Any]]]
    encode_fn: Callable[..., dict[str, Any]]
    query_fn: Callable[..., dict[str, Any]]
    codebooks_fn: Callable[[Any], Any] | None
    index_kind: str

    def __post_init__(self):
        if self.index_kind not in ("pq", "binary"):
            raise ValueError(
                f"Method {self.name!r}: index_kind must be 'pq' or 'binary', got "
                f"{self.index_kind!r}."
            )
