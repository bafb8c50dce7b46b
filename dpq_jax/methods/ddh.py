"""DDH: Discriminative Deep Hashing (Lin, Li & Tang, IJCAI 2017) as a `HashingMethod`.

Model: a backbone (the DDH trunk by default, `models/backbones/ddh_net.py`: three conv-BN-ReLU-
pool blocks and a locally-connected layer, concatenated) and, per code length k, a head

    face feature layer   f = ReLU(BN(Dense(L·k)(trunk)))              [B, L·k], L = 4
    divide-and-encode    z_i = Dense(L -> 1)(f[:, i·L:(i+1)·L])        [B, k]
    hash layer           h = tanh(BN(z))                               [B, k]
    classifier           logits = Dense(C)(h)                          [B, C]

(`quantizers/divide_and_encode.py`). The face feature layer's width depends on k, so it is part
of each head, not of the trunk. Codes: sign(h) as 0/1 bits, Hamming search.

Loss (METHODS §5.2; the reference's Keras losses and weights), per head

    L_k = CE(logits, y) + α · mean_{b,i} | |h_bi| − t |,     α = 0.01, t = 1

(`ddh_head_loss`; the regulariser is `losses.quantization.magnitude_l1`), and for the model

    L = Σ_k L_k + λ · Σ_w ‖w‖²,     λ = 1e-4,

the L2 penalty on every conv, locally-connected and dense *kernel* (not biases, not BN),
written as Keras' `W_regularizer=l2(λ)` = λ·Σw² (gradient 2λw), once for the whole model
(`losses.weight_decay.kernel_l2`). A single code length is exactly the paper's method; several
(`model.bits = (12, 24, 36, 48)`) train one head each on the shared trunk with the sum of their
losses. Batch-norm statistics are over the global batch, so 1 and 8 devices agree.

Config (`model` and `loss` groups):
  model.backbone = dict(name="ddh_net", input_hw=(32, 32));  # or any registered backbone
  model.features = 0;      # ddh_net: 0 = its concatenation (860 at 32×32); other backbones: D > 0
  model.bits = 48 or (12, 24, 36, 48); model.slice_size = 4 (L); model.dtype = "float32";
  loss.quant_weight = 0.01 (α); loss.magnitude_target = 1.0 (t); loss.kernel_l2 = 1e-4 (λ).

References:
  Lin, Li & Tang, "Discriminative Deep Hashing for Scalable Face Image Retrieval", IJCAI 2017,
  Sec. 3; reference code xjcvip007/DDH `DDH.py`; METHODS.md §5.2.
"""

from collections.abc import Mapping
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx

from dpq_jax import registry
from dpq_jax.losses.margin import check_labels
from dpq_jax.losses.quantization import magnitude_l1
from dpq_jax.losses.weight_decay import kernel_l2
from dpq_jax.methods import base
from dpq_jax.models.backbones import ddh_net
from dpq_jax.models.backbones.cnn_small import BN_EPSILON, BN_MOMENTUM
from dpq_jax.quantizers.divide_and_encode import DivideAndEncode
from dpq_jax.typing import Array, Float, Int

_GLOROT = jax.nn.initializers.xavier_uniform()  # Keras' Dense default
HASH_LAYERS = ("divide_and_encode", "dense")


def ddh_head_loss(
    logits: Float[Array, "B C"],
    codes: Float[Array, "B k"],
    labels: Int[Array, " B"],
    *,
    quant_weight: float,
    target: float = 1.0,
) -> tuple[Float[Array, ""], dict[str, Float[Array, ""]]]:
    """One head's loss: `mean_b CE(logits_b, y_b) + quant_weight · mean_{b,i} ||h_bi| − t|`.

    Per-example terms only, so no batch gathering is needed on a sharded batch.

    Args:
      logits: `[B, C]` classifier outputs on the relaxed codes.
      codes: `[B, k]` relaxed codes h (tanh outputs).
      labels: `[B]` integer class ids in [0, C).
      quant_weight: α (DDH: 0.01).
      target: t, the magnitude the codes are pulled to (DDH: 1).

    Returns:
      `(loss, parts)`: the float32 scalar, and `ce` and `quantization` (the unweighted
      regulariser).

    Example:
      >>> loss, parts = ddh_head_loss(
      ...     jnp.zeros((2, 4)), jnp.asarray([[1.0, -0.5], [0.0, 1.0]]), jnp.asarray([0, 3]),
      ...     quant_weight=0.01)
      >>> round(float(parts["ce"]), 4), float(parts["quantization"])  # log 4; (0.5 + 1) / 4
      (1.3863, 0.375)
    """
    if logits.ndim != 2 or codes.ndim != 2 or logits.shape[0] != codes.shape[0]:
        raise ValueError(
            f"logits must be [B, C] and codes [B, k] of one batch, got {tuple(logits.shape)} "
            f"and {tuple(codes.shape)}."
        )
    ce = jnp.mean(
        optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)
    )
    quantization = magnitude_l1(codes, target)
    return ce + quant_weight * quantization, {"ce": ce, "quantization": quantization}


class DDHHead(nnx.Module):
    """One code length's face feature layer, hash layer (BN, tanh) and classifier (float32)."""

    def __init__(
        self,
        in_features: int,
        bits: int,
        num_classes: int,
        *,
        slice_size: int,
        hash_layer: str,
        rngs: nnx.Rngs,
    ):
        """Builds the head.

        Args:
          in_features: width of the trunk output.
          bits: k, the code length.
          num_classes: C of the classifier.
          slice_size: L; the face feature layer is L·k wide.
          hash_layer: `"divide_and_encode"` (DDH: k Dense(L -> 1) on disjoint slices) or
            `"dense"` (DDQH: one Dense(L·k -> k)).
          rngs: `nnx.Rngs`.

        Raises:
          ValueError: an unknown hash layer or non-positive sizes.
        """
        if hash_layer not in HASH_LAYERS:
            raise ValueError(f"hash_layer must be one of {HASH_LAYERS}, got {hash_layer!r}.")
        if min(in_features, bits, num_classes, slice_size) < 1:
            raise ValueError(
                f"in_features ({in_features}), bits ({bits}), num_classes ({num_classes}) and "
                f"slice_size ({slice_size}) must be positive."
            )
        width = slice_size * bits
        bn = dict(momentum=BN_MOMENTUM, epsilon=BN_EPSILON, rngs=rngs)
        self.face = nnx.Linear(in_features, width, kernel_init=_GLOROT, rngs=rngs)
        self.face_norm = nnx.BatchNorm(width, **bn)
        if hash_layer == "divide_and_encode":
            self.encode = DivideAndEncode(bits, slice_size, rngs=rngs)
        else:
            self.encode = nnx.Linear(width, bits, kernel_init=_GLOROT, rngs=rngs)
        self.hash_norm = nnx.BatchNorm(bits, **bn)
        self.classifier = nnx.Linear(bits, num_classes, kernel_init=_GLOROT, rngs=rngs)

    def __call__(self, trunk: Float[Array, "B F"]) -> Float[Array, "B k"]:
        """The relaxed codes `h = tanh(BN(hash_layer(ReLU(BN(Dense(trunk))))))`."""
        face = jax.nn.relu(self.face_norm(self.face(trunk.astype(jnp.float32))))
        return jnp.tanh(self.hash_norm(self.encode(face)))


class DDHModel(nnx.Module):
    """Backbone trunk `[B, H, W, C] -> [B, F]` and one `DDHHead` per code length."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        *,
        backbone: str,
        backbone_kwargs: Mapping[str, Any],
        features: int,
        code_lengths: tuple[int, ...],
        slice_size: int,
        hash_layer: str,
        dtype,
        rngs: nnx.Rngs,
    ):
        if features < 0:
            raise ValueError(f"model.features must be >= 0, got {features}.")
        backbone_cls = registry.get("backbone", backbone)
        if features == 0 and not (
            isinstance(backbone_cls, type) and issubclass(backbone_cls, ddh_net.DDHNet)
        ):
            raise ValueError(
                f"model.features = 0 (the trunk's own width) works only with the ddh_net "
                f"backbone; set model.features to the width of {backbone!r}'s output (e.g. 512)."
            )
        self.backbone = base.make_backbone(
            backbone, backbone_kwargs, in_channels, features, dtype=dtype, rngs=rngs, method="DDH"
        )
        width = features or int(self.backbone.out_features)  # ddh_net reports its own width
        self.heads = nnx.List(
            [
                DDHHead(
                    width,
                    bits,
                    num_classes,
                    slice_size=slice_size,
                    hash_layer=hash_layer,
                    rngs=rngs,
                )
                for bits in code_lengths
            ]
        )
        self.code_lengths = code_lengths
        self.num_classes = num_classes

    def codes(self, images: Float[Array, "B H W C"]) -> tuple[Float[Array, "B k"], ...]:
        """The relaxed codes h of each head, float32 in (−1, 1)."""
        trunk = self.backbone(images).astype(jnp.float32)
        return tuple(head(trunk) for head in self.heads)

    def __call__(self, images):
        """`(codes, logits)`: per head the relaxed codes `[B, k]` and class logits `[B, C]`."""
        codes = self.codes(images)
        logits = tuple(head.classifier(h) for head, h in zip(self.heads, codes, strict=True))
        return codes, logits


class DDH(base.HashingMethod):
    """DDH (see the module docstring). `hash_layer` picks the per-bit encoder; DDQH
    (`dpq_jax/methods/ddqh.py`) subclasses this with a dense one."""

    name = "ddh"
    hash_layer: ClassVar[str] = "divide_and_encode"

    def _field(self, cfg, name: str, *default: Any) -> Any:
        return base.field(cfg, name, *default, what=self.name.upper())

    def code_lengths(self, model_cfg) -> tuple[int, ...]:
        return base.as_lengths(self._field(model_cfg, "bits"))

    def build(self, model_cfg, *, num_classes: int, in_channels: int, rngs: nnx.Rngs) -> DDHModel:
        """The model from the config's `model` group (train mode).

        Raises:
          ValueError: a missing field, a bad dtype or size, or `features = 0` with a backbone
            other than ddh_net.
        """
        backbone, kwargs, dtype = base.backbone_and_dtype(
            model_cfg, what=self.name.upper(), examples="'ddh_net' or 'cnn_small'"
        )
        slice_size = self._field(model_cfg, "slice_size", 4)
        if isinstance(slice_size, bool) or int(slice_size) != slice_size or slice_size < 1:
            raise ValueError(f"model.slice_size must be a positive int, got {slice_size!r}.")
        return DDHModel(
            in_channels,
            num_classes,
            backbone=backbone,
            backbone_kwargs=kwargs,
            features=int(self._field(model_cfg, "features", 0)),
            code_lengths=self.code_lengths(model_cfg),
            slice_size=int(slice_size),
            hash_layer=self.hash_layer,
            dtype=dtype,
            rngs=rngs,
        )

    def loss_fn(self, model: DDHModel, batch, loss_cfg):
        """`Σ_k [CE + α·mean||h| − t|] + λ·Σ kernels²` (METHODS §5.2).

        Returns:
          `(loss, aux)`; aux holds per head `loss_ce_<k>bit`, `quantization_<k>bit` (the
          unweighted regulariser), `accuracy_<k>bit` and `bit_balance_<k>bit` (mean |batch
          mean of sign(h)|: 0 when every bit splits the batch evenly), and `kernel_l2` (the
          unweighted Σw²).

        Raises:
          ValueError: a missing or negative loss weight, or labels that are not `[B]` ids in
            [0, C).
        """
        quant_weight = float(self._field(loss_cfg, "quant_weight"))
        target = float(self._field(loss_cfg, "magnitude_target", 1.0))
        l2_weight = float(self._field(loss_cfg, "kernel_l2"))
        if quant_weight < 0 or l2_weight < 0:
            raise ValueError(
                f"loss.quant_weight ({quant_weight}) and loss.kernel_l2 ({l2_weight}) must be >= 0."
            )
        images, labels = batch["image"], batch["label"]
        check_labels(labels, images.shape[0], model.num_classes)
        codes, logits = model(images)
        total, aux = 0.0, {}
        for bits, h, lg in zip(model.code_lengths, codes, logits, strict=True):
            loss, parts = ddh_head_loss(lg, h, labels, quant_weight=quant_weight, target=target)
            total = total + loss
            aux[f"loss_ce_{bits}bit"] = parts["ce"]
            aux[f"quantization_{bits}bit"] = parts["quantization"]
            aux[f"accuracy_{bits}bit"] = jnp.mean((jnp.argmax(lg, axis=-1) == labels) * 1.0)
            aux[f"bit_balance_{bits}bit"] = jnp.mean(jnp.abs(jnp.mean(jnp.sign(h), axis=0)))
        squares = kernel_l2(model)
        aux["kernel_l2"] = squares
        return total + l2_weight * squares, aux

    def relaxed_codes(self, model: DDHModel, images):
        return model.codes(images)


# --- Config groups (the `configs/*_ddh.py` files build theirs with these) --------------------
# They return `ml_collections.ConfigDict`s; the import sits inside because only configs use them.


def model_config(input_hw: tuple[int, int], bits: int | tuple[int, ...]):
    """`config.model` of a DDH config (METHODS §5.2): the DDH trunk on `input_hw` inputs (its
    concatenation as the feature width), per code length in `bits` a face feature layer of
    4k and divide-and-encode in slices of 4; float32 (`bfloat16` on accelerators).

    Example:
      >>> model_config((32, 32), (12, 48)).backbone.to_dict()
      {'input_hw': (32, 32), 'name': 'ddh_net'}
    """
    model = ml_collections.ConfigDict()
    model.backbone = ml_collections.ConfigDict({"name": "ddh_net", "input_hw": tuple(input_hw)})
    model.features = 0  # ddh_net: its concatenation (e.g. 860 at 32×32); other backbones: D
    model.bits = bits
    model.slice_size = 4  # divide-and-encode slices; face feature layer = 4k
    model.dtype = "float32"
    return model


def loss_config():
    """`config.loss` of DDH (the reference `DDH.py`): CE + 0.01·mean||h| − 1| per head plus
    Keras' L2 1e-4·Σw² on the kernels."""
    loss = ml_collections.ConfigDict()
    loss.quant_weight = 0.01  # weight of mean || |h| - 1 ||_1
    loss.magnitude_target = 1.0
    loss.kernel_l2 = 1e-4  # Keras l2(1e-4): 1e-4 * sum w^2 over the kernels
    return loss


METHOD = DDH()
