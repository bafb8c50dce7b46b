"""DSH: Deep Supervised Hashing (Liu, Wang, Shan & Chen, CVPR 2016) as a `HashingMethod`.

Model: a backbone (the DSH net by default: conv-pool-LRN x3, FC 500, ReLU) and one linear
FC k head per code length. Loss: DSH's pairwise contrastive loss on the relaxed codes with
margin m = 2k and the regulariser alpha || |b| - 1 ||_1, alpha = 0.01
(`dpq_jax.losses.pairwise`). Codes: sign of the relaxed codes as 0/1 bits, Hamming search.

Several code lengths (`config.model.bits = (12, 24, 36, 48)`) train one head each on the
shared trunk with the sum of the per-head losses, each with its own margin 2k; a single
length (the default) is exactly the paper's method.

Config (`model` and `loss` groups):
  model.backbone = dict(name="dsh_net", input_hw=(28, 28));  # or any registered backbone
  model.features = 500; model.bits = 12 or (12, 24, 36, 48); model.dtype = "float32";
  loss.alpha = 0.01; loss.margin_per_bit = 2.0  (m = 2k).

References:
  Liu et al., "Deep Supervised Hashing for Fast Image Retrieval", CVPR 2016, Sec. 3;
  METHODS.md §5.1.
"""

import functools
from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp
from flax import nnx

from dpq_jax.losses.pairwise import pairwise_hashing_loss
from dpq_jax.methods import base
from dpq_jax.typing import Array, Float

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
_field = functools.partial(base.field, what="DSH")
_XAVIER = nnx.initializers.xavier_uniform()


class DSHModel(nnx.Module):
    """Backbone trunk `[B, H, W, C] -> [B, F]` and one FC k head per code length."""

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
    ):
        self.backbone = base.make_backbone(
            backbone, backbone_kwargs, in_channels, features, dtype=dtype, rngs=rngs, method="DSH"
        )
        self.heads = nnx.List(
            [nnx.Linear(features, bits, kernel_init=_XAVIER, rngs=rngs) for bits in code_lengths]
        )
        self.code_lengths = code_lengths

    def __call__(self, images: Float[Array, "B H W C"]) -> tuple[Float[Array, "B k"], ...]:
        """The relaxed codes of each head, float32."""
        trunk = self.backbone(images).astype(jnp.float32)
        return tuple(head(trunk) for head in self.heads)


class DSH(base.HashingMethod):
    """DSH (see the module docstring)."""

    name = "dsh"

    def code_lengths(self, model_cfg) -> tuple[int, ...]:
        return base.as_lengths(_field(model_cfg, "bits"))

    def build(self, model_cfg, *, num_classes: int, in_channels: int, rngs: nnx.Rngs) -> DSHModel:
        """The DSH model from the config's `model` group (`num_classes` is not used: DSH has no
        classifier)."""
        del num_classes
        backbone_cfg = base.as_dict(_field(model_cfg, "backbone"))
        if "name" not in backbone_cfg:
            raise ValueError("model.backbone needs a 'name' (e.g. 'dsh_net' or 'cnn_small').")
        dtype = _field(model_cfg, "dtype", "float32")
        if dtype not in _DTYPES:
            raise ValueError(f"model.dtype must be one of {sorted(_DTYPES)}, got {dtype!r}.")
        return DSHModel(
            in_channels,
            backbone=backbone_cfg.pop("name"),
            backbone_kwargs=backbone_cfg,
            features=int(_field(model_cfg, "features", 500)),
            code_lengths=self.code_lengths(model_cfg),
            dtype=_DTYPES[dtype],
            rngs=rngs,
        )

    def loss_fn(self, model: DSHModel, batch, loss_cfg):
        """Sum over heads of DSH's loss with margin `margin_per_bit * k` (METHODS §5.1).

        Returns:
          `(loss, aux)`; aux holds per head `loss_pairs_<k>bit`, `regularizer_<k>bit` and
          `bit_balance_<k>bit` (mean |mean over the batch of sign(b)|: 0 when every bit is
          split evenly).
        """
        alpha = float(_field(loss_cfg, "alpha"))
        margin_per_bit = float(_field(loss_cfg, "margin_per_bit"))
        total, aux = 0.0, {}
        for bits, codes in zip(model.code_lengths, model(batch["image"]), strict=True):
            loss, parts = pairwise_hashing_loss(
                codes, batch["label"], margin=margin_per_bit * bits, alpha=alpha
            )
            total = total + loss
            aux[f"loss_pairs_{bits}bit"] = parts["pairs"]
            aux[f"regularizer_{bits}bit"] = parts["regularizer"]
            aux[f"bit_balance_{bits}bit"] = jnp.mean(jnp.abs(jnp.mean(jnp.sign(codes), axis=0)))
        return total, aux

    def relaxed_codes(self, model: DSHModel, images):
        return model(images)


METHOD = DSH()
