r"""DPQ-KW: Klein & Wolf's supervised product quantization as a `PQMethod` (registered "kw").

The learned-codebook baseline that OPQN argues against (METHODS.md §5.6). Not to be confused
with DPQ-G (Gao et al.'s progressive quantization).

Model: backbone -> embedding x `[B, D]` -> `KWPQHead` (`dpq_jax.quantizers.kw`): soft
assignment `p_m = softmax(x_m A_m / T)`, soft quantization `s = [C_m p_m]`, hard quantization
`h = [c_{m, argmax}]` through a straight-through estimator, with A and the codebooks C both
learned; plus one bias-free classifier `W [C, D]` shared by s and h and learned class centres
`[C, D]` (both Xavier-uniform, as the reference). Loss (`dpq_jax.losses.kw.kw_loss`):

    CE(s Wᵀ) + CE(h Wᵀ) + 0.25 · JCL(s, h, c) + 1 · Gini diversity − 0.01 · Gini sharpness.

**The straight-through path works here.** The reference's hard path gives the assignment, A and
the backbone no gradient (its `MyArgmax` returns integer indices); ours passes them the soft
path's gradient with respect to the assignment (`model.head.straight_through = True`; `False`
reproduces the reference for ablations).

Search (the reference's `PqDistRet_euclidean`): database code `argmax_k x_m A_m`; a query
becomes its soft quantization `s_m = C_m softmax(q_m A_m / T)` on the raw (unnormalised)
embedding, and the table `||s_m − c_mk||²`, ranked ascending (query side `"l2"`, the default).
Query side `"soft_quantized"` ranks by the inner product `<s_m, c_mk>` instead.

Config (`model` and `loss` groups):
  model.backbone = dict(name="cnn_small", ...); model.embedding_dim = D;
  model.head = dict(num_codebooks=M, codebook_size=K, temperature=1.0, init="normal",
  straight_through=True); model.dtype = "float32";
  loss.central_weight = 0.25; loss.diversity_weight = 1.0; loss.sharpness_weight = 0.01.

References:
  B. Klein & L. Wolf, "End-to-End Supervised Product Quantization for Image Search and
  Retrieval", CVPR 2019 (arXiv 1711.08589); the OPQN repository's `dpq.py` and
  `dpq_layer.py`; METHODS.md §5.6.
"""

import functools
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dpq_jax.losses.kw import kw_loss
from dpq_jax.losses.margin import check_labels
from dpq_jax.methods import base, embedding_pq
from dpq_jax.quantizers.kw import KWPQHead, KWQuantized
from dpq_jax.quantizers.pq import soft_quantize
from dpq_jax.search import luts as luts_lib
from dpq_jax.typing import Array, Float

_field = functools.partial(base.field, what="DPQ-KW")
_loss_field = functools.partial(base.field, what="DPQ-KW loss")
# torch.nn.init.xavier_uniform_ on a [C, D] matrix: fan_in D, fan_out C.
_XAVIER = jax.nn.initializers.xavier_uniform(in_axis=-1, out_axis=-2)


class KWModel(embedding_pq.EmbeddingPQModel):
    """Backbone + `KWPQHead` + shared classifier + class centres.

    Attributes:
      backbone: the registered backbone module, `images [B, H, W, C] -> [B, D]`.
      head: `KWPQHead(D, num_codebooks=M, codebook_size=K)` (learned A and codebooks).
      classifier: `nnx.Param [C, D]`, bias-free, shared by the soft and hard quantizations.
      centers: `nnx.Param [C, D]`, the joint central loss's class centres.
    """

    method_name = "DPQ-KW"

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
        temperature: float = 1.0,
        init: str = "normal",
        straight_through: bool = True,
        dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        """Builds the network.

        Args:
          in_channels: C of the input images.
          num_classes: number of training classes (classifier and centre rows).
          backbone: registered backbone name.
          backbone_kwargs: extra backbone arguments (not in_channels/features/dtype/rngs).
          embedding_dim: D.
          num_codebooks: M (divides D).
          codebook_size: K (<= 256).
          temperature: softmax temperature of the assignment.
          init: `"normal"` (the reference) or `"xavier_uniform"` for A and the codebooks.
          straight_through: the hard path passes gradients to the assignment.
          dtype: backbone compute dtype; the head and losses run in float32.
          rngs: `nnx.Rngs`.

        Raises:
          ValueError: invalid sizes, reserved keys in `backbone_kwargs`, or num_classes < 1.
          KeyError: an unknown backbone name.
        """
        self._init_trunk(
            lambda: KWPQHead(
                embedding_dim,
                num_codebooks=num_codebooks,
                codebook_size=codebook_size,
                temperature=temperature,
                use_straight_through=straight_through,
                init=init,
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
        shape = (num_classes, embedding_dim)
        self.classifier = nnx.Param(_XAVIER(rngs.params(), shape, jnp.float32))  # [C, D]
        self.centers = nnx.Param(_XAVIER(rngs.params(), shape, jnp.float32))  # [C, D]

    def __call__(self, images: Float[Array, "B H W C"]) -> KWQuantized:
        """Backbone then head: the head's `KWQuantized` outputs."""
        return self.head(self.embed(images))


class KW(base.PQMethod):
    """DPQ-KW (see the module docstring): one code length per model."""

    name = "kw"
    query_sides = ("l2", "soft_quantized")
    distance_sides = ("l2",)

    def code_lengths(self, model_cfg) -> tuple[int, ...]:
        """`(M · ceil(log2 K),)`, the bits of one stored code."""
        head = _field(model_cfg, "head")
        num_codebooks = int(_field(head, "num_codebooks"))
        codebook_size = int(_field(head, "codebook_size"))
        return (num_codebooks * (codebook_size - 1).bit_length(),)

    def build(self, model_cfg: Any, *, num_classes: int, in_channels: int, rngs: nnx.Rngs):
        """Builds a `KWModel` from the config's `model` group.

        Args:
          model_cfg: ConfigDict (or attribute object / mapping) with `backbone` (`name` plus
            backbone kwargs), `embedding_dim`, `head.{num_codebooks, codebook_size,
            temperature, init, straight_through}` and `dtype` ("float32" | "bfloat16").
          num_classes: C.
          in_channels: image channels.
          rngs: `nnx.Rngs`.

        Returns:
          The model, in NNX train mode.

        Raises:
          ValueError: a missing field or invalid sizes (the messages name the fix).
        """
        name, kwargs, dtype = base.backbone_and_dtype(
            model_cfg, what="DPQ-KW", examples="'cnn_small' or 'sphereface20'"
        )
        head = _field(model_cfg, "head")
        return KWModel(
            in_channels,
            num_classes,
            backbone=name,
            backbone_kwargs=kwargs,
            embedding_dim=int(_field(model_cfg, "embedding_dim")),
            num_codebooks=int(_field(head, "num_codebooks")),
            codebook_size=int(_field(head, "codebook_size")),
            temperature=float(_field(head, "temperature", 1.0)),
            init=str(_field(head, "init", "normal")),
            straight_through=bool(_field(head, "straight_through", True)),
            dtype=dtype,
            rngs=rngs,
        )

    def loss_fn(self, model: KWModel, batch: Mapping[str, Array], loss_cfg: Any):
        """DPQ-KW's training loss (`dpq_jax.losses.kw.kw_loss`).

        Args:
          model: a `KWModel` (BatchNorm/Dropout follow its NNX mode).
          batch: `image [B, H, W, C]` float32 and `label [B]` int32.
          loss_cfg: fields `central_weight` (α), `diversity_weight` (β1), `sharpness_weight`
            (β2).

        Returns:
          `(loss, aux)`: the scalar total and the scalars `loss_clf_soft`, `loss_clf_hard`,
          `loss_central`, `gini_diversity`, `gini_sharpness` and `code_usage` (mean over
          books of the fraction of the K codewords picked by at least one item of the batch).

        Raises:
          ValueError: a missing loss field, bad shapes, or concrete labels outside [0, C).

        References:
          METHODS.md §5.6.
        """
        weights = {
            name: float(_loss_field(loss_cfg, name))
            for name in ("central_weight", "diversity_weight", "sharpness_weight")
        }
        labels = batch["label"]
        classifier = model.classifier[...]
        # Fail before the (expensive) forward pass when eager labels are out of range.
        check_labels(labels, batch["image"].shape[0], classifier.shape[0])
        out = model(batch["image"])
        total, aux = kw_loss(
            out.soft, out.hard, out.probs, labels, classifier, model.centers[...], **weights
        )
        used = jnp.max(jax.nn.one_hot(out.codes, out.probs.shape[-1]), axis=0)  # [M, K]
        aux["code_usage"] = jnp.mean(used)
        return total, aux

    def encode_fn(self, model: KWModel, images: Float[Array, "B H W C"]) -> dict[str, Any]:
        """Database encoding (call `model.eval()` first).

        Returns:
          dict(feats `[B, D]` float32, codes `([B, M] uint8,)`: `argmax_k x_m A_m`).
        """
        feats = model.embed(images)
        return dict(feats=feats, codes=(model.head.codes(feats),))

    def query_fn(self, model: KWModel, images: Float[Array, "B H W C"]) -> dict[str, Any]:
        """Query encoding (call `model.eval()` first).

        Returns:
          dict(feats `[B, D]` float32, probs `([B, M, K] float32,)`: the soft assignments of
          the raw embedding, `softmax_k(q_m A_m / T)`).
        """
        feats = model.embed(images)
        return dict(feats=feats, probs=(model.head.probs(feats),))

    def codebooks_fn(self, model: KWModel) -> tuple[Float[Array, "M K d"]]:
        """The learned `[M, K, d]` float32 codebooks."""
        return (model.head.codebooks[...],)

    def query_tables(self, queries, *, head, codebooks, query_side):
        """ADC tables `[Q, M, K]` of the soft-quantized query `s_m = sum_k p_mk c_mk`.

        `"l2"`: `||s_m − c_mk||²` (ranked ascending; the reference's search);
        `"soft_quantized"`: `<s_m, c_mk>` (descending).
        """
        probs = queries["probs"][head]
        if query_side == "l2":
            soft = soft_quantize(jnp.asarray(probs), jnp.asarray(codebooks))  # [Q, M, d]
            return luts_lib.lut_l2(soft, codebooks)
        if query_side == "soft_quantized":
            return luts_lib.lut_soft_quantized(probs, codebooks)
        raise ValueError(f"query_side must be one of {self.query_sides}, got {query_side!r}.")

    def query_vectors(self, queries, *, head, codebooks, query_side):
        """The soft-quantized query `[s_1, ..., s_M]` `[Q, D]` (both query sides)."""
        del query_side
        return np.asarray(luts_lib.soft_quantized_vectors(queries["probs"][head], codebooks))


METHOD = KW()
