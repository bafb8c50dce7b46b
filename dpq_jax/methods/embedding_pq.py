"""The network of the PQ methods that quantize the backbone's embedding itself (OPQN, DPQ-KW,
Progressive OPQN): a backbone `[B, H, W, C] -> [B, D]` whose output is the embedding, a code
head on it, and class weights for the training loss (built by each model).
"""

from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import jax.numpy as jnp
from flax import nnx

from dpq_jax.methods import base
from dpq_jax.quantizers.opqn import torch_xavier_uniform
from dpq_jax.typing import Array, Float


class EmbeddingPQModel(nnx.Module):
    """Base of the models whose head quantizes the backbone's `[B, D]` embedding.

    Attributes (set by `_init_trunk`):
      head: the code head on the embedding.
      backbone: the registered backbone, `images [B, H, W, C] -> [B, D]` (`features` = D).
    OPQN's family adds (`_init_subspace_classifier`):
      classifier: `nnx.Param [M, C, d]`, per-subspace class weights.
      num_codebooks: M.
    """

    method_name: ClassVar[str]  # for the backbone's error messages

    def _init_trunk(
        self,
        make_head: Callable[[], nnx.Module],
        in_channels: int,
        num_classes: int,
        *,
        backbone: str,
        backbone_kwargs: Mapping[str, Any] | None,
        embedding_dim: int,
        dtype,
        rngs: nnx.Rngs,
    ) -> None:
        """Checks `num_classes`, then builds `self.head = make_head()` and the backbone, in that
        order (the order the parameters draw from `rngs`).

        Raises:
          ValueError: `num_classes` < 1, or reserved keys in `backbone_kwargs`.
          KeyError: an unknown backbone name.
        """
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}.")
        self.head = make_head()
        self.backbone = base.make_backbone(
            backbone,
            dict(backbone_kwargs or {}),
            in_channels,
            embedding_dim,
            dtype=self._backbone_dtype(dtype),
            rngs=rngs,
            method=self.method_name,
        )

    def _backbone_dtype(self, dtype):
        """The backbone's compute dtype from the `dtype` argument (default: as given)."""
        return dtype

    def _init_subspace_classifier(
        self, num_codebooks: int, num_classes: int, embedding_dim: int, *, rngs: nnx.Rngs
    ) -> None:
        """OPQN's CosFace weights `classifier [M, C, d]` (d = D / M): the reference's `weight`
        under torch's Xavier-uniform fans on the whole tensor (C d in, M d out), `U(-a, a)`,
        `a = sqrt(6 / (C d + M d))`; and `num_codebooks` = M."""
        shape = (num_codebooks, num_classes, embedding_dim // num_codebooks)
        self.classifier = nnx.Param(torch_xavier_uniform()(rngs.params(), shape, jnp.float32))
        self.num_codebooks = num_codebooks

    def embed(self, images: Float[Array, "B H W C"]) -> Float[Array, "B D"]:
        """The backbone's embedding, float32."""
        return self.backbone(images).astype(jnp.float32)
