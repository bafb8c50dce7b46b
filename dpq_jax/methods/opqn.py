"""OPQN: Orthonormal Product Quantization Network as a `Method`.

Model: backbone -> embedding x `[B, D]` -> `OrthoPQHead` (soft assignment onto fixed orthonormal
codewords) plus one CosFace classifier per subspace, `W [M, C, d]`, shared by the raw
sub-vectors x_m and the soft-quantized ones s_m. Loss:
`L = 1/2 (CosFace(x) + CosFace(s)) + mu * H(p)`.
Database items are coded `argmax_k x_m A_m`; queries become the lookup table
`softmax_k(q_m/|q_m| A_m)`, scored as `sum_m LUT[m, code_m]` (inner-product ADC, higher is
closer).

Example config (`model_cfg`):
  backbone = dict(name="cnn_small", widths=(32, 64, 128)); embedding_dim = 512;
  head = dict(num_codebooks=8, codebook_size=64, codebook_init="dct", seed=0);
  dtype = "float32"; loss: scale = 20, margin = 0.5, entropy_weight = 0.1.

References:
  Zhang, Zhe & Yan, "Orthonormal Product Quantization Network for Scalable Face Image
  Retrieval", Pattern Recognition 2023 (arXiv 2107.00327); METHODS.md Sec. 1.
"""

import functools
import math
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from dpq_jax import config_lib
from dpq_jax.losses.margin import check_labels, subspace_cosface
from dpq_jax.losses.quantization import assignment_entropy
from dpq_jax.methods import base, embedding_pq
from dpq_jax.quantizers.opqn import OrthoPQHead, hard_codes, probability_lut
from dpq_jax.quantizers.pq import soft_quantize, split_subvectors
from dpq_jax.search import luts as luts_lib
from dpq_jax.typing import Array, Float

# This project's shapes for the small ORL / Fashion-MNIST comparisons: K = 256 codewords per
# book and D = M·K (so d = K). Not the reference's table: see `REFERENCE_SHAPES`.
BITS_TO_MK = {16: (2, 256), 24: (3, 256), 32: (4, 256), 48: (6, 256), 64: (8, 256)}


def pq_shape(bits: int) -> tuple[int, int]:
    """(M, K) of an OPQN code of `bits` bits with K = 256.

    Example:
      >>> pq_shape(32)
      (4, 256)
    """
    if bits not in BITS_TO_MK:
        raise ValueError(f"bits={bits} not supported; choose one of {sorted(BITS_TO_MK)}.")
    return BITS_TO_MK[bits]


# The reference's (M, K, D) per code length and input size (METHODS §1.1; `opqn_main.py`, whose
# README trains `--len 36 --num 6 --words 64` and evaluates `--len 16 24 36 --num 2 4 6
# --words 256 64 64`, adding `-c` for the unseen protocol). 32×32 models: D = 512, 516 at 36
# bits (so that 6 divides it). 112×112 models (VGGFace2 and the unseen protocol): D = M·K, so
# each codebook is a full orthonormal basis (d = K). 48 bits is the (8, 64) of METHODS §1.1;
# 64 bits (VGGFace2 checkpoints) is not spelt out by the reference: (8, 256) with D = 2048 is
# the shape METHODS §1.1 gives for it (K <= d rules out 8×256 at D = 512).
REFERENCE_SHAPES = {
    32: {16: (2, 256, 512), 24: (4, 64, 512), 36: (6, 64, 516), 48: (8, 64, 512)},
    112: {
        16: (2, 256, 512),
        24: (4, 64, 256),
        36: (6, 64, 384),
        48: (8, 64, 512),
        64: (8, 256, 2048),
    },
}


def reference_shape(bits: int, input_size: int) -> tuple[int, int, int]:
    """(M, K, D) of the reference OPQN model with `bits`-bit codes on `input_size` images.

    Raises:
      ValueError: an input size or code length the reference does not train.

    Example:
      >>> reference_shape(36, 32), reference_shape(36, 112)
      ((6, 64, 516), (6, 64, 384))
    """
    if input_size not in REFERENCE_SHAPES:
        raise ValueError(
            f"input_size={input_size}: OPQN's models take {sorted(REFERENCE_SHAPES)} pixels."
        )
    shapes = REFERENCE_SHAPES[input_size]
    if bits not in shapes:
        raise ValueError(
            f"bits={bits} not supported at {input_size}×{input_size}; choose one of "
            f"{sorted(shapes)}."
        )
    return shapes[bits]


_field = functools.partial(base.field, what="OPQN")


def _dtype(name: Any):
    """A `model.dtype` name (`base.compute_dtype`), or a jnp dtype given to `OPQNModel`."""
    return base.compute_dtype(name) if isinstance(name, str) else name


class OPQNModel(embedding_pq.EmbeddingPQModel):
    """Backbone + `OrthoPQHead` + per-subspace CosFace classifier weights.

    Attributes:
      backbone: the registered backbone module, `images [B, H, W, C] -> [B, D]` float32.
      head: `OrthoPQHead(D, num_codebooks=M, codebook_size=K)`.
      classifier: `nnx.Param [M, C, d]`, torch's Xavier-uniform on the whole tensor (as the
        reference's `weight`): `U(-a, a)`, `a = sqrt(6 / (C d + M d))`.
    """

    method_name = "OPQN"

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        *,
        backbone: str,
        backbone_kwargs: Mapping[str, Any] | None = None,
        embedding_dim: int,
        num_codebooks: int,
        codebook_size: int,
        codebook_init: str = "dct",
        seed: int = 0,
        dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        """Builds the network.

        Args:
          in_channels: C of the input images.
          num_classes: number of training identities (classifier rows).
          backbone: registered backbone name (`"cnn_small"`, `"sphereface20"`, ...).
          backbone_kwargs: extra backbone arguments (not in_channels/features/dtype/rngs).
          embedding_dim: D.
          num_codebooks: M (divides D).
          codebook_size: K (<= D/M and <= 256).
          codebook_init: `"dct"` or `"qr"`.
          seed: seed of `"qr"` codebooks.
          dtype: backbone compute dtype; the head and losses run in float32.
          rngs: `nnx.Rngs`.

        Raises:
          ValueError: invalid sizes, reserved keys in `backbone_kwargs`, or num_classes < 1.
          KeyError: an unknown backbone name.
        """
        self._init_trunk(
            lambda: OrthoPQHead(
                embedding_dim,
                num_codebooks=num_codebooks,
                codebook_size=codebook_size,
                codebook_init=codebook_init,
                seed=seed,
                rngs=rngs,
            ),
            in_channels,
            num_classes,
            backbone=backbone,
            backbone_kwargs=backbone_kwargs,
            embedding_dim=embedding_dim,
            dtype=dtype,
            rngs=rngs,
        )
        self._init_subspace_classifier(num_codebooks, num_classes, embedding_dim, rngs=rngs)

    def _backbone_dtype(self, dtype):
        return _dtype(dtype)  # a name ("float32", "bfloat16") or a jnp dtype

    def __call__(self, images: Float[Array, "B H W C"]):
        """Backbone then head: returns the head's `QuantizerOutput`."""
        return self.head(self.backbone(images))


class OPQN(base.PQMethod):
    """OPQN: fixed orthonormal codewords, subspace CosFace, entropy regulariser (one head).

    Query sides: `"soft_quantized"` (OPQN's probability table, the reference's search),
    `"raw"` (inner product of the raw embedding with the codewords) and `"l2"` (squared
    distance of the soft-quantized query to the codewords, OPQN-l2q).
    """

    name = "opqn"
    query_sides = ("soft_quantized", "raw", "l2")
    distance_sides = ("l2",)

    def code_lengths(self, model_cfg) -> tuple[int, ...]:
        """`(M log2 K,)`: OPQN trains one code length per model."""
        head = _field(model_cfg, "head")
        num_codebooks, codebook_size = (
            int(_field(head, "num_codebooks")),
            int(_field(head, "codebook_size")),
        )
        return (int(num_codebooks * math.log2(codebook_size)),)

    def build(
        self, model_cfg: Any, *, num_classes: int, in_channels: int, rngs: nnx.Rngs
    ) -> OPQNModel:
        """Builds an `OPQNModel` from the config's `model` group.

        Args:
          model_cfg: ConfigDict (or attribute object / mapping) with `backbone` (`name` plus
            backbone kwargs), `embedding_dim`, `head.{num_codebooks, codebook_size,
            codebook_init, seed}` and `dtype` ("float32" | "bfloat16"; default "float32").
          num_classes: C, training identities.
          in_channels: image channels.
          rngs: `nnx.Rngs`.

        Returns:
          The model, in NNX train mode (BatchNorm uses batch statistics).

        Raises:
          ValueError: a missing field or invalid sizes (the messages name the fix).
        """
        name, kwargs = base.backbone_spec(
            model_cfg, what="OPQN", examples="'cnn_small' or 'sphereface20'"
        )
        head = _field(model_cfg, "head")
        return OPQNModel(
            in_channels,
            num_classes,
            backbone=name,
            backbone_kwargs=kwargs,
            embedding_dim=int(_field(model_cfg, "embedding_dim")),
            num_codebooks=int(_field(head, "num_codebooks")),
            codebook_size=int(_field(head, "codebook_size")),
            codebook_init=_field(head, "codebook_init", "dct"),
            seed=int(_field(head, "seed", 0)),
            dtype=_dtype(_field(model_cfg, "dtype", "float32")),
            rngs=rngs,
        )

    def loss_fn(self, model: OPQNModel, batch: Mapping[str, Array], loss_cfg: Any):
        """OPQN's training loss: `1/2 (CosFace(x) + CosFace(s)) + mu * H(p)`.

        BatchNorm and Dropout follow the model's NNX mode (call `model.train()` first); under
        `nnx.grad`/a functional step, the BatchNorm running statistics update in place.

        Args:
          model: an `OPQNModel`.
          batch: `image [B, H, W, C]` float32 and `label [B]` int32.
          loss_cfg: fields `scale` (s), `margin` (m) and `entropy_weight` (mu).

        Returns:
          `(loss, aux)`: the scalar float32 total, and scalars `loss_clf_raw`, `loss_clf_soft`,
          `loss_entropy` and `code_usage` (mean over books of the fraction of the K codewords
          picked by at least one item of the batch).

        Raises:
          ValueError: a missing loss field, shape mismatches, or concrete labels outside [0, C).

        References:
          OPQN Sec. 3.3; METHODS.md Sec. 1.2.
        """
        scale = float(_field(loss_cfg, "scale"))
        margin = float(_field(loss_cfg, "margin"))
        entropy_weight = float(_field(loss_cfg, "entropy_weight"))
        weights = model.classifier[...]
        labels = batch["label"]
        # Fail before the (expensive) forward pass when eager labels are out of range.
        check_labels(labels, batch["image"].shape[0], weights.shape[1])
        out = model(batch["image"])
        m = model.num_codebooks
        loss_raw = subspace_cosface(
            split_subvectors(out.feats, m), weights, labels, scale=scale, margin=margin
        )
        loss_soft = subspace_cosface(
            split_subvectors(out.soft, m), weights, labels, scale=scale, margin=margin
        )
        loss_entropy = assignment_entropy(out.probs)
        total = 0.5 * (loss_raw + loss_soft) + entropy_weight * loss_entropy
        used = jnp.max(jax.nn.one_hot(out.codes, out.probs.shape[-1]), axis=0)  # [M, K]
        aux = dict(
            loss_clf_raw=loss_raw,
            loss_clf_soft=loss_soft,
            loss_entropy=loss_entropy,
            code_usage=jnp.mean(used),
        )
        return total, aux

    def encode_fn(self, model: OPQNModel, images: Float[Array, "B H W C"]) -> dict[str, Array]:
        """Database encoding: features and codes `argmax_k x_m A_m` (call `model.eval()` first).

        Returns:
          dict(feats `[B, D]` float32, codes `([B, M] uint8,)`: one head).
        """
        feats = model.embed(images)
        codes = hard_codes(split_subvectors(feats, model.num_codebooks), model.head.assign[...])
        return dict(feats=feats, codes=(codes,))

    def query_fn(self, model: OPQNModel, images: Float[Array, "B H W C"]) -> dict[str, Array]:
        """Query encoding: features and the lookup table `softmax_k(q_m/|q_m| A_m)`.

        Score a database item as `sum_m probs[q, m, code_m]` (higher is closer). Call
        `model.eval()` first.

        Returns:
          dict(feats `[B, D]` float32, probs `([B, M, K] float32,)`: one head).
        """
        feats = model.embed(images)
        probs = probability_lut(
            split_subvectors(feats, model.num_codebooks), model.head.assign[...]
        )
        return dict(feats=feats, probs=(probs,))

    def codebooks_fn(self, model: OPQNModel) -> tuple[Float[Array, "M K d"]]:
        """The fixed `[M, K, d]` float32 codewords (rows orthonormal within each book)."""
        return (model.head.codebooks[...],)

    def query_tables(self, queries, *, head, codebooks, query_side):
        """ADC tables `[Q, M, K]` for a query side (METHODS §1.4).

        `"soft_quantized"`: OPQN's probability table, equal to the inner product of the
        soft-quantized query with the codewords because they are orthonormal; `"raw"`: inner
        product with the raw embedding; `"l2"`: squared distance to the soft-quantized query
        (ranked ascending).
        """
        if query_side == "soft_quantized":
            return luts_lib.lut_soft_quantized(queries["probs"][head], codebooks)
        if query_side == "raw":
            return luts_lib.lut_inner_product(queries["feats"], codebooks)
        if query_side == "l2":
            soft = soft_quantize(queries["probs"][head], codebooks)  # s_m = sum_k p_mk c_mk
            return luts_lib.lut_l2(soft, codebooks)
        raise ValueError(f"query_side must be one of {self.query_sides}, got {query_side!r}.")

    def query_vectors(self, queries, *, head, codebooks, query_side):
        """`"raw"`: the embedding; otherwise the soft-quantized query `[sum_k p_mk c_mk]_m`."""
        if query_side == "raw":
            return np.asarray(queries["feats"], np.float32)
        return np.asarray(luts_lib.soft_quantized_vectors(queries["probs"][head], codebooks))


# --- Config groups (the `configs/*opqn*.py` files build theirs with these) -------------------
# They return `ml_collections.ConfigDict`s; the imports sit inside because only configs use them.


def model_config(
    backbone: Mapping[str, Any], num_codebooks: int, codebook_size: int, embedding_dim: int = 0
):
    """`config.model` of an OPQN config: the `backbone` group, an embedding of D =
    `embedding_dim` (0: M·K, so d = K) and fixed DCT codebooks, M = `num_codebooks` books of
    K = `codebook_size` codewords (METHODS §1.1). float32; `--config.model.dtype=bfloat16`
    computes the backbone in bf16 on accelerators (the parameters stay float32).

    Example:
      >>> model_config({"name": "cnn_small"}, *pq_shape(32)).embedding_dim  # 4 × 256
      1024
    """
    model = ml_collections.ConfigDict()
    model.backbone = ml_collections.ConfigDict(dict(backbone))
    model.embedding_dim = embedding_dim or num_codebooks * codebook_size
    model.head = ml_collections.ConfigDict()
    model.head.num_codebooks = num_codebooks
    model.head.codebook_size = codebook_size
    model.head.codebook_init = "dct"  # or "qr" (random orthonormal)
    model.head.seed = 0
    model.dtype = "float32"
    return model


def loss_config(scale: float = 20.0):
    """`config.loss` of OPQN's subspace CosFace (METHODS §1.2): s = `scale` (the reference's
    20 for 32×32 models, 40 for VGGFace2 and cross-domain ones), m = 0.5, entropy μ = 0.1."""
    loss = ml_collections.ConfigDict()
    loss.scale = scale  # CosFace s
    loss.margin = 0.5  # CosFace m
    loss.entropy_weight = 0.1  # μ
    return loss


def optim_config(decay_steps: int, *, lr: float = 0.1):
    """`config.optim` of the reference's SGD (METHODS §1.3): momentum 0.9, L2 weight decay 5e-4
    added to the gradient, lr `lr` (0.1) halved every `decay_steps` steps."""
    return config_lib.optimizer(
        "sgd",
        lr=lr,
        weight_decay=5e-4,
        decoupled_weight_decay=False,
        schedule="step",
        decay_steps=decay_steps,
        decay_rate=0.5,
    )


def face_config(
    bits: int,
    *,
    input_size: int,
    protocol: str,
    input_cfg,
    train_images: int,
    epochs: int,
    decay_epochs: int,
    scale: float,
    precision_ks: tuple[int, ...] = (5,),
    runlocal: bool = False,
):
    """An OPQN face experiment with the reference's recipe (METHODS §1), around a face set's
    `config.input` group; the caller adds its own fields and locks it.

    SphereFace-20 at `input_size` (32: strides 1,2,2,2; 112: 2,2,2,2), the reference's (M, K, D)
    for `bits` (`reference_shape`), fixed DCT codebooks, subspace CosFace s = `scale`, m = 0.5,
    entropy μ = 0.1; SGD lr 0.1, momentum 0.9, weight decay 5e-4 for `epochs` epochs of
    `input_cfg.batch_size` images, the lr halved every `decay_epochs`; the validation split is
    scored and a checkpoint kept every 5 epochs, the best on validation mAP@all; the test split
    reports mAP@all and precision at `precision_ks`. `runlocal`: a few-step smoke run with
    SphereFace-20 at 1/16 width.

    Args:
      bits: code length.
      input_size: 32 or 112 pixels.
      protocol: `faces_seen` or `faces_unseen`.
      input_cfg: `config.input` (e.g. from `config_lib.image_input`).
      train_images: the train split size, which turns epochs into steps.
      epochs, decay_epochs: the schedule (200 / 35 for the 32×32 sets, 160 / 20 at 112×112).
      scale: CosFace s (20 at 32×32, 40 at 112×112).
      precision_ks: the evaluators' precision cut-offs.
      runlocal: shrink to a smoke run.

    Raises:
      ValueError: an input size or code length the reference does not train.
    """
    num_codebooks, codebook_size, embedding_dim = reference_shape(bits, input_size)
    steps_per_epoch = math.ceil(train_images / input_cfg.batch_size)
    backbone = {"name": "sphereface20", "input_size": input_size, "width_multiplier": 1.0}
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.protocol = protocol
    config.input = input_cfg
    config.method = "opqn"
    config.model = model_config(backbone, num_codebooks, codebook_size, embedding_dim)
    config.loss = loss_config(scale)
    config.optim = optim_config(decay_epochs * steps_per_epoch)
    config_lib.training(
        config,
        total_steps=epochs * steps_per_epoch,
        ckpt_steps=5 * steps_per_epoch,
        log_training_steps=100,
    )
    config.evals = config_lib.validation_and_test(5 * steps_per_epoch, precision_ks=precision_ks)
    if runlocal:
        config_lib.run_locally(config)
        config.optim.decay_steps = 2
        config.model.backbone.width_multiplier = 0.0625
    return config


METHOD = OPQN()
