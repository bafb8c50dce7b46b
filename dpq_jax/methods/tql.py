"""TQL: Deep Hashing with Triplet Quantization Loss (Zhou, Huang, Zhang & Wang, VCIP 2017) as a
`HashingMethod`.

**The formulation is ours**: the paper (arXiv 1710.11445) has no public code and only its
abstract was available, so METHODS.md §4 designs the method from it (see `docs/tql.md` and
`dpq_jax/losses/triplet.py`). Results are not comparable with the paper's numbers until its
formulation is checked.

Model: a backbone (any registered trunk: `cnn_small`, `dsh_net`, ...) and, per code length k,
a head f = tanh(Dense(k)(trunk)), the real-valued descriptor. Codes: sgn(f) as 0/1 bits
(`f > 0` is a 1), Hamming search. f itself is offered as the real-valued descriptor
(`Method.real_descriptors`), so an evaluator with `real_valued = True` also reports Euclidean
retrieval on f (`real_map@all`, ...) next to the binary numbers: the abstract's claim is that
the binary codes lose little against it.

Loss, per head (`losses.triplet.tql_loss`), on the global batch with the chosen mining:

    L_k = L_trip(f; α = margin_per_bit · k) + λ · L_quant

with `loss.quantization` = `"triplet_a"` (the triplet loss on straight-through binary codes,
margin α_q = quant_margin_per_bit · k), `"triplet_b"` (real anchor against binary positive and
negative), `"pointwise"` (‖f − sgn f‖², the ablation the paper argues against) or `"none"`.
There is no point-wise term in the triplet variants. Several code lengths
(`model.bits = (12, 48)`) train one head each on a shared trunk with the sum of their losses.

Config (`model` and `loss` groups):
  model.backbone = dict(name="dsh_net", input_hw=(28, 28));  # or cnn_small, ...
  model.features = 500; model.bits = (12, 48); model.dtype = "float32";
  loss.mining = "batch_hard" | "batch_all" | "semi_hard";
  loss.quantization = "triplet_a" | "triplet_b" | "pointwise" | "none";
  loss.margin_per_bit = 0.5 (α = 0.5k); loss.quant_margin_per_bit = 0.5; loss.quant_weight = 1.

Triplet mining needs several images per class in a batch: on data sets with many classes and
few images each (In-shop) use the class-balanced sampler (`config.input.sampler =
"class_balanced"`, `config.input.classes_per_batch` = P; `dpq_jax.data.pipeline`).

References:
  Zhou, Huang, Zhang & Wang, "Deep Hashing with Triplet Quantization Loss", VCIP 2017
  (arXiv 1710.11445), abstract; METHODS.md §4; Schroff et al., FaceNet, CVPR 2015.
"""

import functools
from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp
import ml_collections
from flax import nnx

from dpq_jax.losses import triplet
from dpq_jax.methods import base
from dpq_jax.typing import Array, Float

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
_field = functools.partial(base.field, what="TQL")
_XAVIER = nnx.initializers.xavier_uniform()


def model_config(
    backbones: Mapping[str, tuple], name: str, bits: int, *, runlocal: bool
) -> ml_collections.ConfigDict:
    """`config.model` of a TQL config.

    Args:
      backbones: name -> `(backbone dict, trunk features, (tiny backbone dict, tiny features))`,
        the config's choices of trunk.
      name: the chosen backbone (`backbones` key).
      bits: one code length, or 0 for the two heads (12, 48).
      runlocal: use the tiny variant.

    Raises:
      ValueError: an unknown backbone name (lists the choices).
    """
    if name not in backbones:
        raise ValueError(f"backbone must be one of {sorted(backbones)}, got {name!r}.")
    backbone, features, tiny = backbones[name]
    if runlocal:
        backbone, features = tiny
    model = ml_collections.ConfigDict()
    model.backbone = ml_collections.ConfigDict(backbone)
    model.features = features
    model.bits = bits or (12, 48)
    model.dtype = "float32"
    return model


def loss_config(
    quantization: str = "triplet_a",
    mining: str = "batch_hard",
    *,
    margin_per_bit: float = 0.5,
    quant_margin_per_bit: float = 0.5,
    quant_weight: float = 1.0,
) -> ml_collections.ConfigDict:
    """`config.loss` of a TQL experiment, checked (the configs' `quant=` and `mining=`).

    Defaults (ours): α = α_q = 0.5k on squared distances whose range is 4k (for ±1 codes a
    Hamming gap of k/8 bits), λ = 1.

    Raises:
      ValueError: an unknown quantization or mining, or a negative margin or weight.

    Example:
      >>> loss_config("pointwise").quantization
      'pointwise'
    """
    triplet.check_option(quantization, triplet.QUANTIZATIONS, "loss.quantization")
    triplet.check_option(mining, triplet.MININGS, "loss.mining")
    if min(margin_per_bit, quant_margin_per_bit, quant_weight) < 0:
        raise ValueError("TQL margins and quant_weight must be >= 0.")
    cfg = ml_collections.ConfigDict()
    cfg.quantization = quantization  # triplet_a | triplet_b | pointwise | none
    cfg.mining = mining  # batch_hard | batch_all | semi_hard
    cfg.margin_per_bit = margin_per_bit  # α = margin_per_bit · k
    cfg.quant_margin_per_bit = quant_margin_per_bit  # α_q = quant_margin_per_bit · k
    cfg.quant_weight = quant_weight  # λ
    return cfg


class TQLModel(nnx.Module):
    """Backbone trunk `[B, H, W, C] -> [B, F]` and one tanh(FC k) head per code length."""

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
            backbone, backbone_kwargs, in_channels, features, dtype=dtype, rngs=rngs, method="TQL"
        )
        self.heads = nnx.List(
            [nnx.Linear(features, bits, kernel_init=_XAVIER, rngs=rngs) for bits in code_lengths]
        )
        self.code_lengths = code_lengths

    def __call__(self, images: Float[Array, "B H W C"]) -> tuple[Float[Array, "B k"], ...]:
        """The real-valued descriptors f = tanh(Wz) of each head, float32 in (−1, 1)."""
        trunk = self.backbone(images).astype(jnp.float32)
        return tuple(jnp.tanh(head(trunk)) for head in self.heads)


class TQL(base.HashingMethod):
    """TQL (see the module docstring)."""

    name = "tql"

    def code_lengths(self, model_cfg) -> tuple[int, ...]:
        return base.as_lengths(_field(model_cfg, "bits"))

    def build(self, model_cfg, *, num_classes: int, in_channels: int, rngs: nnx.Rngs) -> TQLModel:
        """The TQL model from the config's `model` group (`num_classes` is not used: TQL has no
        classifier).

        Raises:
          ValueError: a missing field, a backbone without a name, or an unknown dtype.
        """
        del num_classes
        backbone_cfg = base.as_dict(_field(model_cfg, "backbone"))
        if "name" not in backbone_cfg:
            raise ValueError("model.backbone needs a 'name' (e.g. 'dsh_net' or 'cnn_small').")
        dtype = _field(model_cfg, "dtype", "float32")
        if dtype not in _DTYPES:
            raise ValueError(f"model.dtype must be one of {sorted(_DTYPES)}, got {dtype!r}.")
        return TQLModel(
            in_channels,
            backbone=backbone_cfg.pop("name"),
            backbone_kwargs=backbone_cfg,
            features=int(_field(model_cfg, "features")),
            code_lengths=self.code_lengths(model_cfg),
            dtype=_DTYPES[dtype],
            rngs=rngs,
        )

    def loss_fn(self, model: TQLModel, batch, loss_cfg):
        """Sum over heads of `tql_loss` with margins `margin_per_bit · k` and
        `quant_margin_per_bit · k` (METHODS §4, our reading).

        Returns:
          `(loss, aux)`; aux holds per head `loss_triplet_<k>bit`, `loss_quant_<k>bit` (the
          unweighted quantization term), `active_triplets_<k>bit` (the share of the triplet
          term's triplets with a positive hinge) and `bit_balance_<k>bit` (mean |batch mean of
          sgn(f)|: 0 when every bit splits the batch evenly).

        Raises:
          ValueError: a missing field, an unknown `loss.mining` / `loss.quantization`, or a
            negative margin or weight.
        """
        mining = triplet.check_option(
            str(_field(loss_cfg, "mining")), triplet.MININGS, "loss.mining"
        )
        quantization = triplet.check_option(
            str(_field(loss_cfg, "quantization")), triplet.QUANTIZATIONS, "loss.quantization"
        )
        margin = float(_field(loss_cfg, "margin_per_bit"))
        quant_margin = float(_field(loss_cfg, "quant_margin_per_bit"))
        quant_weight = float(_field(loss_cfg, "quant_weight"))
        total, aux = 0.0, {}
        for bits, codes in zip(model.code_lengths, model(batch["image"]), strict=True):
            loss, parts = triplet.tql_loss(
                codes,
                batch["label"],
                margin=margin * bits,
                quant_margin=quant_margin * bits,
                quant_weight=quant_weight,
                quantization=quantization,
                mining=mining,
            )
            total = total + loss
            aux[f"loss_triplet_{bits}bit"] = parts["triplet"]
            aux[f"loss_quant_{bits}bit"] = parts["quantization"]
            aux[f"active_triplets_{bits}bit"] = parts["active"]
            aux[f"bit_balance_{bits}bit"] = jnp.mean(jnp.abs(jnp.mean(triplet.sign(codes), axis=0)))
        return total, aux

    def relaxed_codes(self, model: TQLModel, images):
        return model(images)


METHOD = TQL()
