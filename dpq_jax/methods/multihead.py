"""The network of the multi-head hashing methods (DSH, TQL, DCDH): a backbone trunk and one code
head per code length on the shared trunk.

`config.model.bits = (12, 24, 36, 48)` trains one head per length with the sum of the per-head
losses; a single length is the paper's method. Each method subclasses `MultiHeadModel` with its
own head (`make_head`) and activation, and `MultiHeadHashing` for the method side.
"""

from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import jax.numpy as jnp
from flax import nnx

from dpq_jax.methods import base
from dpq_jax.typing import Array, Float

XAVIER = nnx.initializers.xavier_uniform()


def linear_head(features: int, bits: int, *, rngs: nnx.Rngs) -> nnx.Linear:
    """One FC k head `[B, F] -> [B, k]` with a Xavier-uniform kernel (DSH's, TQL's)."""
    return nnx.Linear(features, bits, kernel_init=XAVIER, rngs=rngs)


class MultiHeadModel(nnx.Module):
    """Backbone trunk `[B, H, W, C] -> [B, F]` and one head `[B, F] -> [B, k]` per code length.

    Attributes:
      backbone: the registered backbone (`base.make_backbone`).
      heads: `nnx.List` of `make_head(F, k, rngs=rngs)`, one per entry of `code_lengths`.
      code_lengths: the k of each head.
    """

    method_name: ClassVar[str]  # for the backbone's error messages

    def __init__(
        self,
        in_channels: int,
        *,
        backbone: str,
        backbone_kwargs: Mapping[str, Any],
        features: int,
        code_lengths: tuple[int, ...],
        dtype,
        rngs: nnx.Rngs,
        make_head: Callable[..., nnx.Module] = linear_head,
    ):
        self.backbone = base.make_backbone(
            backbone,
            backbone_kwargs,
            in_channels,
            features,
            dtype=dtype,
            rngs=rngs,
            method=self.method_name,
        )
        self.heads = nnx.List([make_head(features, bits, rngs=rngs) for bits in code_lengths])
        self.code_lengths = code_lengths

    def __call__(self, images: Float[Array, "B H W C"]) -> tuple[Float[Array, "B k"], ...]:
        """Each head's output on the float32 trunk."""
        trunk = self.backbone(images).astype(jnp.float32)
        return tuple(head(trunk) for head in self.heads)


class MultiHeadHashing(base.HashingMethod):
    """A `HashingMethod` with a `MultiHeadModel` that returns the relaxed codes of every head.

    Code lengths come from `model.bits` (an int or a tuple); `build` reads `model.backbone`,
    `model.dtype`, `model.features` and `model.bits`, plus whatever `model_kwargs` adds.
    """

    model_class: ClassVar[type[MultiHeadModel]]
    backbone_examples: ClassVar[str]  # backbone names the missing-name error suggests
    default_features: ClassVar[int | None] = None  # model.features when unset; None: required

    def _field(self, cfg, name: str, *default: Any) -> Any:
        return base.field(cfg, name, *default, what=self.name.upper())

    def code_lengths(self, model_cfg) -> tuple[int, ...]:
        return base.as_lengths(self._field(model_cfg, "bits"))

    def model_kwargs(self, model_cfg, num_classes: int) -> dict[str, Any]:
        """The `model_class` arguments beyond `MultiHeadModel`'s (default: none; then
        `num_classes` is not used)."""
        del model_cfg, num_classes
        return {}

    def build(
        self, model_cfg, *, num_classes: int, in_channels: int, rngs: nnx.Rngs
    ) -> MultiHeadModel:
        """The `model_class` of the config's `model` group (train mode).

        Raises:
          ValueError: a missing field, a backbone without a name, an unknown dtype, or what
            `model_kwargs` rejects.
        """
        backbone, kwargs, dtype = base.backbone_and_dtype(
            model_cfg, what=self.name.upper(), examples=self.backbone_examples
        )
        extra = self.model_kwargs(model_cfg, num_classes)
        default = () if self.default_features is None else (self.default_features,)
        return self.model_class(
            in_channels,
            backbone=backbone,
            backbone_kwargs=kwargs,
            features=int(self._field(model_cfg, "features", *default)),
            code_lengths=self.code_lengths(model_cfg),
            dtype=dtype,
            rngs=rngs,
            **extra,
        )

    def relaxed_codes(self, model, images):
        return model(images)
