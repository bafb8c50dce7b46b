r"""DCBH: Deep Clustering and Block Hashing (Jang, Jeong, Lee & Cho, ACCV 2018) as a
`HashingMethod`.

Model (METHODS.md §3.1): a trunk (the paper's VGG-like net with two GAP branches, `dcbh_net`,
by default; any registered backbone works) and, per code length k, a head

    f = ReLU(BN(Dense(k·L)(trunk)))        the descriptor, L = 6 (k·L = 288 at 48 bits)
    h = block_hash(f)                      h_i = tanh(max softmax(f_block_i) − ½), [B, k]
    hash logits = Dense(C)(h),  descriptor logits = Dense(C)(f)
    centres c: [C, k·L], a trainable `nnx.Param` (Xavier-uniform, as the reference).

Loss per head (METHODS.md §3.2, the reference's `run()`), summed over heads:

    CE(hash logits) + CE(descriptor logits) + 0.1 · mean ||h| − t|          (t = 0.5 in the
        code, 1 in the paper: `loss.quant_target`)
      + 1e-4 · ½ Σ_b ‖f_b − c_{y_b}‖²                                   (a sum over the batch,
        `tf.nn.l2_loss`; `loss.center_reduction = "mean"` divides by B)

plus, once for the whole model, the TF1 weight decay `λ · tf.nn.l2_loss(w)` = λ/2 · Σ w² on
every conv and dense kernel (λ = 2e-4; `losses.weight_decay.kernel_l2`; BN parameters, biases
and centres are not decayed, as in the reference).

**Centres get two updates per step** (METHODS.md §3.2): the Adam step of their gradient (they
are trainable) and, with `loss.center_update = True` (the reference), the explicit centre-loss
update c_j ← c_j − α·Δc_j, Δc_j = Σ_{i: y_i=j} (c_j − f_i)/(1 + n_j), α = `loss.center_alpha`
(1 in the reference). `loss_fn` computes α·Δc from the *pre-step* centres and the batch
descriptors (gathered over the whole global batch when sharded) and stashes it in a
non-`Param` variable of the head (`CenterStep`: no gradient, no optimizer state);
`after_update`, which the trainer calls after the optimizer step, subtracts it and clears it.
Both steps are additive and each is computed from the pre-step centres (Adam's step depends on
the gradient only), so the order does not change the result. (The reference runs its
`scatter_sub` before Adam's apply via a control dependency; its graph does not order the
scatter against the forward read of the centres, which we pin to the pre-step values.)

**Codes.** The relaxed codes are h, in [tanh(1/6 − ½), tanh(½)) = [−0.32, 0.46); the bit is
h > 0, i.e. the block's softmax peak exceeds ½. The reference maps sign(0) to +1; here h = 0
gives the bit 0. h is exactly 0 only when a softmax peak is exactly ½: measure zero, in float32
only a degenerate tie of two maxima with the rest of the block underflowing in the softmax. A
flat block (all logits tied, e.g. all zeroed by the ReLU) has h = tanh(−⅓) < 0 (bit 0) and, its
tie split six ways, a zero gradient through h.

**Gradient of the block hash**: the reference's `reduce_max` passes the gradient to the arg-max
softmax entry only (split among exact ties), and from it through the block's softmax Jacobian
to all L logits of the block (`dpq_jax.quantizers.block_hash`).

Recipe. Paper and code: Adam (lr 1e-3, TF defaults), batch 256, 2000 epochs, batches in file
order with **no shuffling** and no augmentation, `deprocess_image` normalisation (global mean
and std, ×0.1, clip to [−1, 1]), checkpoint on the **lowest training loss**, test mAP every 100
epochs (the best of those test mAPs is what the code tracks). Ours: batches are shuffled (the
pickles are stored by identity, so file-order batches hold a handful of identities: biased BN
statistics, CE gradients and centre updates), and the checkpoint is selected on validation
mAP (a split carved from the training images, never the query set): the training loss mixes
in the weight decay and the quantization/centre terms and keeps falling while retrieval
overfits, and picking the best *test* mAP would select on the query set.

Config (`model` and `loss` groups):
  model.backbone = dict(name="dcbh_net", width=0.25); model.features = 0 (the backbone's
  width; set it for other backbones); model.bits = 48 or (12, 24, 36, 48); model.block_size = 6;
  model.dtype = "float32";
  loss.quant_weight = 0.1; loss.quant_target = 0.5; loss.center_weight = 1e-4;
  loss.center_reduction = "sum"; loss.center_update = True; loss.center_alpha = 1.0;
  loss.weight_decay = 2e-4.

References:
  Jang, Jeong, Lee & Cho, "Deep Clustering and Block Hashing Network for Face Image
  Retrieval", ACCV 2018 (LNCS 11366, pp. 325–339); code youngkyunJang/DCBH; METHODS.md §3.
  Wen, Zhang, Li & Qiao, "A Discriminative Feature Learning Approach for Deep Face
  Recognition", ECCV 2016 (the centre loss and its update).
"""

import functools
from collections.abc import Mapping
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax
from flax import nnx

from dpq_jax.losses.center import REDUCTIONS, center_delta, center_loss
from dpq_jax.losses.quantization import magnitude_l1
from dpq_jax.losses.weight_decay import kernel_l2
from dpq_jax.methods import base
from dpq_jax.models.backbones.cnn_small import BN_EPSILON, BN_MOMENTUM
from dpq_jax.quantizers.block_hash import BLOCK_SIZE, block_hash
from dpq_jax.typing import Array, Float, Int

_field = functools.partial(base.field, what="DCBH")
_XAVIER = nnx.initializers.xavier_uniform()


class CenterStep(nnx.Variable):
    """The pending explicit centre step α·Δc `[C, D]` (not an `nnx.Param`: no gradient and no
    optimizer state). `loss_fn` writes it, `DCBH.after_update` applies and clears it."""


@flax.struct.dataclass
class DCBHOutputs:
    """One head's outputs on a batch."""

    descriptor: Float[Array, "B D"]  # f = ReLU(BN(Dense(k·L))), D = k·L
    codes: Float[Array, "B k"]  # h, the relaxed codes
    hash_logits: Float[Array, "B C"]  # Dense(C) on h
    descriptor_logits: Float[Array, "B C"]  # Dense(C) on f


class DCBHHead(nnx.Module):
    """Descriptor Dense(k·L) → BN → ReLU, block hash, the two classifiers and the centres."""

    def __init__(
        self, in_features: int, bits: int, num_classes: int, *, block_size: int, rngs: nnx.Rngs
    ):
        dim = bits * block_size
        self.bits = bits
        self.block_size = block_size
        self.descriptor = nnx.Linear(in_features, dim, kernel_init=_XAVIER, rngs=rngs)
        self.descriptor_norm = nnx.BatchNorm(
            dim, momentum=BN_MOMENTUM, epsilon=BN_EPSILON, rngs=rngs
        )
        self.hash_classifier = nnx.Linear(bits, num_classes, kernel_init=_XAVIER, rngs=rngs)
        self.descriptor_classifier = nnx.Linear(dim, num_classes, kernel_init=_XAVIER, rngs=rngs)
        self.centers = nnx.Param(_XAVIER(rngs.params(), (num_classes, dim), jnp.float32))
        self.center_step = CenterStep(jnp.zeros((num_classes, dim), jnp.float32))

    def __call__(self, trunk: Float[Array, "B F"]) -> DCBHOutputs:
        f = jax.nn.relu(self.descriptor_norm(self.descriptor(trunk)))  # [B, k·L]
        h = block_hash(f, self.bits, block_size=self.block_size)  # [B, k]
        return DCBHOutputs(
            descriptor=f,
            codes=h,
            hash_logits=self.hash_classifier(h),
            descriptor_logits=self.descriptor_classifier(f),
        )


class DCBHModel(nnx.Module):
    """Backbone trunk `[B, H, W, C] -> [B, F]` and one `DCBHHead` per code length."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        *,
        backbone: str,
        backbone_kwargs: Mapping[str, Any],
        features: int,
        code_lengths: tuple[int, ...],
        block_size: int,
        dtype,
        rngs: nnx.Rngs,
    ):
        if num_classes < 2:
            raise ValueError(f"DCBH's classifiers need at least 2 classes, got {num_classes}.")
        if block_size < 2:
            raise ValueError(f"model.block_size (L) must be at least 2, got {block_size}.")
        self.backbone = base.make_backbone(
            backbone, backbone_kwargs, in_channels, features, dtype=dtype, rngs=rngs, method="DCBH"
        )
        trunk_width = features or getattr(self.backbone, "features", None)
        if not isinstance(trunk_width, int) or trunk_width < 1:
            raise ValueError(
                f"model.features = 0 means 'the backbone's own width', which backbone "
                f"{backbone!r} does not define; set model.features to its output width."
            )
        self.heads = nnx.List(
            [
                DCBHHead(trunk_width, bits, num_classes, block_size=block_size, rngs=rngs)
                for bits in code_lengths
            ]
        )
        self.code_lengths = code_lengths

    def __call__(self, images: Float[Array, "B H W C"]) -> tuple[DCBHOutputs, ...]:
        """Each head's outputs, float32."""
        trunk = self.backbone(images).astype(jnp.float32)
        return tuple(head(trunk) for head in self.heads)


def _cross_entropy(logits: Float[Array, "B C"], labels: Int[Array, " B"]) -> Float[Array, ""]:
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))


class DCBH(base.HashingMethod):
    """DCBH (see the module docstring)."""

    name = "dcbh"

    def code_lengths(self, model_cfg) -> tuple[int, ...]:
        return base.as_lengths(_field(model_cfg, "bits"))

    def build(self, model_cfg, *, num_classes: int, in_channels: int, rngs: nnx.Rngs) -> DCBHModel:
        """The DCBH model from the config's `model` group (train mode)."""
        backbone, kwargs, dtype = base.backbone_and_dtype(
            model_cfg, what="DCBH", examples="'dcbh_net' or 'cnn_small'"
        )
        return DCBHModel(
            in_channels,
            num_classes,
            backbone=backbone,
            backbone_kwargs=kwargs,
            features=int(_field(model_cfg, "features", 0)),
            code_lengths=self.code_lengths(model_cfg),
            block_size=int(_field(model_cfg, "block_size", BLOCK_SIZE)),
            dtype=dtype,
            rngs=rngs,
        )

    @staticmethod
    def loss_settings(loss_cfg) -> dict[str, Any]:
        """The `loss` group's values, checked (one ValueError line per bad value)."""
        get = functools.partial(base.field, loss_cfg, what="DCBH loss")
        settings = {
            "quant_weight": float(get("quant_weight")),
            "quant_target": float(get("quant_target")),
            "center_weight": float(get("center_weight")),
            "center_reduction": str(get("center_reduction", "sum")),
            "center_update": bool(get("center_update", True)),
            "center_alpha": float(get("center_alpha", 1.0)),
            "weight_decay": float(get("weight_decay", 0.0)),
        }
        for key in ("quant_weight", "center_weight", "center_alpha", "weight_decay"):
            if not settings[key] >= 0:
                raise ValueError(f"loss.{key} must be >= 0, got {settings[key]}.")
        if not settings["quant_target"] > 0:
            raise ValueError(f"loss.quant_target must be > 0, got {settings['quant_target']}.")
        if settings["center_reduction"] not in REDUCTIONS:
            raise ValueError(
                f"loss.center_reduction must be one of {REDUCTIONS}, got "
                f"{settings['center_reduction']!r}."
            )
        return settings

    def loss_fn(self, model: DCBHModel, batch, loss_cfg):
        """Sum over heads of DCBH's loss, plus the kernel weight decay (module docstring).

        Side effect: with `loss.center_update`, each head's `center_step` is set to α·Δc of
        the pre-step centres and the (global) batch; `after_update` applies it.

        Returns:
          `(loss, aux)`; aux holds per head `ce_hash_<k>bit`, `ce_descriptor_<k>bit`,
          `quantization_<k>bit` (unweighted mean ||h| − t|), `center_<k>bit` (unweighted),
          `hash_accuracy_<k>bit` and `bit_balance_<k>bit` (mean |batch mean of ±1 bits|), and
          `weight_decay` (the weighted kernel L2 term).

        Raises:
          ValueError: multi-hot labels (DCBH is single-label), or a bad `loss` value.
        """
        s = self.loss_settings(loss_cfg)
        labels = batch["label"]
        if labels.ndim != 1:
            raise ValueError(
                f"DCBH needs single-label data (class ids [B]); got labels of shape "
                f"{tuple(labels.shape)}."
            )
        total, aux = 0.0, {}
        for head, out in zip(model.heads, model(batch["image"]), strict=True):
            k = head.bits
            centers = head.centers[...]  # the pre-step centres
            ce_hash = _cross_entropy(out.hash_logits, labels)
            ce_descriptor = _cross_entropy(out.descriptor_logits, labels)
            quantization = magnitude_l1(out.codes, s["quant_target"])
            center = center_loss(out.descriptor, labels, centers, reduction=s["center_reduction"])
            total = (
                total
                + ce_hash
                + ce_descriptor
                + s["quant_weight"] * quantization
                + s["center_weight"] * center
            )
            if s["center_update"]:
                head.center_step[...] = jax.lax.stop_gradient(
                    s["center_alpha"] * center_delta(out.descriptor, labels, centers)
                )
            bits_pm = jnp.where(out.codes > 0, 1.0, -1.0)
            aux[f"ce_hash_{k}bit"] = ce_hash
            aux[f"ce_descriptor_{k}bit"] = ce_descriptor
            aux[f"quantization_{k}bit"] = quantization
            aux[f"center_{k}bit"] = center
            aux[f"hash_accuracy_{k}bit"] = jnp.mean(
                (jnp.argmax(out.hash_logits, axis=-1) == labels).astype(jnp.float32)
            )
            aux[f"bit_balance_{k}bit"] = jnp.mean(jnp.abs(jnp.mean(bits_pm, axis=0)))
        decay = 0.5 * s["weight_decay"] * kernel_l2(model)  # TF1 λ · l2_loss(w) = λ/2 Σ w²
        aux["weight_decay"] = decay
        return total + decay, aux

    def after_update(self, model: DCBHModel) -> None:
        """The explicit centre update: `c ← c − α·Δc` with the stashed step, then clears it.

        Touches nothing but each head's `centers` and `center_step`.
        """
        for head in model.heads:
            step = head.center_step[...]
            head.centers[...] = head.centers[...] - step
            head.center_step[...] = jnp.zeros_like(step)

    def relaxed_codes(self, model: DCBHModel, images):
        return tuple(out.codes for out in model(images))


METHOD = DCBH()
