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

import jax.numpy as jnp
import ml_collections

from dpq_jax import config_lib
from dpq_jax.losses import triplet
from dpq_jax.methods import base, multihead
from dpq_jax.typing import Array, Float

_field = functools.partial(base.field, what="TQL")


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


class TQLModel(multihead.MultiHeadModel):
    """Backbone trunk `[B, H, W, C] -> [B, F]` and one tanh(FC k) head per code length."""

    method_name = "TQL"

    def __call__(self, images: Float[Array, "B H W C"]) -> tuple[Float[Array, "B k"], ...]:
        """The real-valued descriptors f = tanh(Wz) of each head, float32 in (−1, 1)."""
        return tuple(jnp.tanh(z) for z in super().__call__(images))


class TQL(multihead.MultiHeadHashing):
    """TQL (see the module docstring); `build` gives a `TQLModel` (`num_classes` is not used:
    TQL has no classifier; `model.features` is required)."""

    name = "tql"
    model_class = TQLModel
    backbone_examples = "'dsh_net' or 'cnn_small'"

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


def small_image_backbones(input_hw: tuple[int, int]) -> dict[str, tuple]:
    """`model_config`'s choice of trunks for small images: `dsh_net` (conv-pool-LRN ×3, FC 500)
    at `input_hw`, and `cnn_small` (32-64-128 channels, 128 features), each with its tiny
    runlocal variant.

    Example:
      >>> small_image_backbones((28, 28))["dsh_net"][:2]
      ({'name': 'dsh_net', 'input_hw': (28, 28)}, 500)
    """
    hw = tuple(input_hw)
    return {
        "dsh_net": (
            {"name": "dsh_net", "input_hw": hw},
            500,
            ({"name": "dsh_net", "input_hw": hw, "widths": (4, 4, 8)}, 16),
        ),
        "cnn_small": (
            {"name": "cnn_small", "widths": (32, 64, 128)},
            128,
            ({"name": "cnn_small", "widths": (4, 8)}, 16),
        ),
    }


def recipe(
    config: ml_collections.ConfigDict,
    *,
    steps: int,
    evaluations: int,
    warmup_steps: int,
    precision_ks: tuple[int, ...],
    runlocal: bool,
) -> None:
    """Sets the TQL configs' training recipe (ours) on `config` in place: AdamW (lr 1e-3, cosine
    after `warmup_steps`, weight decay 4e-3) for `steps` steps; validation and a checkpoint
    `evaluations` times; the test split also ranks f by Euclidean distance (`real_map@all`).
    `runlocal` shrinks it to a smoke run (class-balanced batches of 4 classes × 4 images).

    `config.input` must be set (`runlocal` shrinks its batches).
    """
    config.optim = config_lib.optimizer(
        "adamw", lr=1e-3, weight_decay=4e-3, schedule="cosine", warmup_steps=warmup_steps
    )
    every = max(steps // evaluations, 1)
    config_lib.training(config, total_steps=steps, ckpt_steps=every)
    config.evals = config_lib.validation_and_test(every, precision_ks=precision_ks)
    config.evals.test.real_valued = True  # also rank f by Euclidean distance: real_map@all
    if runlocal:
        config_lib.run_locally(config)
        config.input.classes_per_batch = 4  # 16 = 4 classes x 4 images


def small_image_config(
    arg: ml_collections.ConfigDict,
    *,
    protocol: str,
    data: str,
    input_hw: tuple[int, int],
    evaluations: int,
    warmup_steps: int,
) -> ml_collections.ConfigDict:
    """A TQL experiment on a small-image data set (`fmnist`, `cifar10`), from a config's parsed
    arguments; the caller locks it.

    Input: `config_lib.input_config(data)` (flips, the data set's normalisation), batches of 256
    drawn by `arg.sampler` ("uniform", or "class_balanced": 8 classes × 32 images). Model: the
    `arg.backbone` of `small_image_backbones(input_hw)` with heads of `arg.bits` (0: 12 and 48).
    Loss: `loss_config(arg.quant, arg.mining)`. Training: `recipe` for `arg.steps` steps with
    `evaluations` validations, `warmup_steps` and P@100. `arg.runlocal`: a smoke run.
    """
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.protocol = protocol
    config.input = config_lib.input_config(data, batch_size=256, eval_batch_size=1024)
    config.input.sampler = arg.sampler
    config.input.classes_per_batch = 8  # class_balanced: 8 classes x 32 images
    config.method = "tql"
    backbones = small_image_backbones(input_hw)
    config.model = model_config(backbones, arg.backbone, arg.bits, runlocal=arg.runlocal)
    config.loss = loss_config(arg.quant, arg.mining)  # α = α_q = 0.5k, λ = 1
    recipe(
        config,
        steps=arg.steps,
        evaluations=evaluations,
        warmup_steps=warmup_steps,
        precision_ks=(100,),
        runlocal=arg.runlocal,
    )
    return config


METHOD = TQL()
