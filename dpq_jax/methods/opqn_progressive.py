"""Progressive OPQN as a `PQMethod`: OPQN's fixed orthonormal codewords as residual levels, so
one trained model gives every code length, like DPQ-G.

What comes from where:

- OPQN (Zhang, Zhe & Yan, PR 2023; METHODS §1): the embedding split into M subspaces; per
  subspace K FIXED orthonormal codewords (never trained) and a learnable linear assignment
  map A_m, `p_m = softmax(x_m A_m)`, `s_m = C_m p_m`; one per-subspace CosFace classifier W
  `[M, C, d]` shared by the raw and the quantized features; the entropy regulariser; the
  query lookup table `softmax(q_m/|q_m| A_m)`, the inner product of the query's soft
  quantization with the codewords.
- DPQ-G (Gao et al., IJCAI 2019; METHODS §2): L levels, level l quantizes the residual the
  levels before it left, the residual subtracts the HARD codeword; the database is encoded
  once and its first l levels are a code by themselves; losses on every level's partial sum;
  progressive ADC, `<q, sum_{i<=l} hard_i>` with the first l levels (`search.luts.
  lut_progressive`), from the raw query (AQD) or the query's l-level soft quantization.
- Ours (`quantizers.opqn_progressive`): (1) the residual lives on the unit sphere of each
  subspace: u_1 = x_m/|x_m|, since OPQN's losses and table ignore |x_m| and unit codewords
  cannot quantize a residual of another scale; (2) every level assigns the residual's
  direction, `|x_m| (u_l/|u_l|) A_lm` (level 1 is OPQN's `x_m A_m`; DPQ's code assigns by
  cosine, also scale-free), and query tables drop |q_m| as OPQN's does (the codes are the
  same); (3) "orthonormal" for residuals: each (level, subspace) book has orthonormal rows,
  level 1 is OPQN's own codebook and levels 2..L independent random orthonormal frames
  (OPQN's DCT chain would repeat directions across levels); (4) one positive gain per level,
  alpha_l (learned, init 0.5^(l-1); `learn_gains=False` keeps them fixed), scales the fixed
  codewords so that later levels hold shrinking residuals; (5) the loss
  `1/2 (CosFace(x) + mean_l CosFace(Q^soft_l)) + mu mean_l H(p_l)` (`losses.
  opqn_progressive`), which is OPQN's loss at L = 1.

With L = 1 the model is OPQN with the same M and K: the same codebooks, assignment, loss and
codes, and a lookup table alpha_1^2 times OPQN's (the same ranking).

Codes: `[N, L, M]` uint8, encoded once; head l (l = 1..L) is the first l levels flattened
level-major, `[N, l·M]`, a code of l·M·log2(K) bits, searched with the `[l·M, K, D]`
full-dimension books of `opqn_progressive.full_dim_codebooks` (book (i, m) is alpha_i C_im in
subspace m's columns, zeros elsewhere), so the score is `<q, Q^hard_l>`. Query sides:
`"soft_quantized"` (q = the query's l-level soft quantization with OPQN's normalised
assignment; at l = 1 OPQN's probability table) and `"raw"` (q = the unit target x_m/|x_m|, the
vector the levels approximate; for M = 1 the ranking of the raw embedding).

Config (`model` and `loss` groups):
  model.backbone = dict(name="cnn_small", ...); model.embedding_dim = D (= M·K: d = K);
  model.quantizer = dict(num_levels=L, num_codebooks=M, codebook_size=K, codebook_init="dct",
                         seed=0, gain_decay=0.5, learn_gains=True);
  model.dtype = "float32"; loss.scale = 20, loss.margin = 0.5, loss.entropy_weight = 0.1.

References:
  Zhang, Zhe & Yan, "Orthonormal Product Quantization Network for Scalable Face Image
  Retrieval", Pattern Recognition 2023 (arXiv 2107.00327). Gao, Zhu, Song, Zhao & Shen,
  "Beyond Product Quantization: Deep Progressive Quantization for Image Retrieval", IJCAI 2019
  (arXiv 1906.06698). METHODS.md §1, §2.
"""

import functools
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from dpq_jax.losses.margin import check_labels
from dpq_jax.losses.opqn_progressive import prefix_margin_loss
from dpq_jax.methods import base, embedding_pq
from dpq_jax.methods import progressive as prefix_lib
from dpq_jax.quantizers import opqn_progressive as quantizer_lib
from dpq_jax.quantizers.pq import split_subvectors
from dpq_jax.typing import Array, Float

_field = functools.partial(base.field, what="Progressive OPQN")


class ProgressiveOPQNModel(embedding_pq.EmbeddingPQModel):
    """Backbone + `ProgressiveOrthoHead` + per-subspace CosFace classifier weights.

    Attributes:
      backbone: the registered backbone, `images [B, H, W, C] -> [B, D]` float32.
      head: `ProgressiveOrthoHead(D, num_levels=L, num_codebooks=M, codebook_size=K)`.
      classifier: `nnx.Param [M, C, d]`, initialised as OPQN's reference (torch's Xavier fans
        on the whole tensor).
    """

    method_name = "Progressive OPQN"

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        *,
        backbone: str,
        backbone_kwargs: Mapping[str, Any],
        embedding_dim: int,
        num_levels: int,
        num_codebooks: int,
        codebook_size: int,
        codebook_init: str = "dct",
        seed: int = 0,
        gain_decay: float = quantizer_lib.DEFAULT_GAIN_DECAY,
        learn_gains: bool = True,
        dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        self._init_trunk(
            lambda: quantizer_lib.ProgressiveOrthoHead(
                embedding_dim,
                num_levels=num_levels,
                num_codebooks=num_codebooks,
                codebook_size=codebook_size,
                codebook_init=codebook_init,
                seed=seed,
                gain_decay=gain_decay,
                learn_gains=learn_gains,
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

    def __call__(self, images: Float[Array, "B H W C"]) -> quantizer_lib.ProgressiveOrthoOutput:
        """Backbone then head (training assignment, logits scaled by |x_m|)."""
        return self.head(self.backbone(images))


class ProgressiveOPQN(prefix_lib.ProgressiveMethod):
    """Progressive OPQN (see the module docstring). Query sides: `"soft_quantized"` (default,
    OPQN's search) and `"raw"` (AQD with the unit target, DPQ's reported search).

    Example:
      >>> cfg = dict(quantizer=dict(num_levels=4, num_codebooks=2, codebook_size=16))
      >>> METHOD.code_lengths(cfg)
      (8, 16, 24, 32)
    """

    name = "opqn_progressive"
    config_name = "Progressive OPQN"
    query_sides = ("soft_quantized", "raw")
    subspace_books = True
    raw_query = "target"
    books_description = "first l levels of M orthonormal books"

    # --- network --------------------------------------------------------------------------
    def build(
        self, model_cfg, *, num_classes: int, in_channels: int, rngs: nnx.Rngs
    ) -> ProgressiveOPQNModel:
        """The `ProgressiveOPQNModel` of the config's `model` group (train mode).

        Raises:
          ValueError: a missing field, bad sizes (K > D/M names the valid (M, K)), or an
            unknown dtype or codebook_init.
        """
        backbone, kwargs, dtype = base.backbone_and_dtype(
            model_cfg, what="Progressive OPQN", examples="'cnn_small' or 'sphereface20'"
        )
        levels, num_codebooks, size = self.quantizer_sizes(model_cfg)
        quantizer = _field(model_cfg, "quantizer")
        return ProgressiveOPQNModel(
            in_channels,
            num_classes,
            backbone=backbone,
            backbone_kwargs=kwargs,
            embedding_dim=int(_field(model_cfg, "embedding_dim")),
            num_levels=levels,
            num_codebooks=num_codebooks,
            codebook_size=size,
            codebook_init=_field(quantizer, "codebook_init", "dct"),
            seed=int(_field(quantizer, "seed", 0)),
            gain_decay=float(_field(quantizer, "gain_decay", quantizer_lib.DEFAULT_GAIN_DECAY)),
            learn_gains=bool(_field(quantizer, "learn_gains", True)),
            dtype=dtype,
            rngs=rngs,
        )

    def loss_fn(self, model: ProgressiveOPQNModel, batch: Mapping[str, Array], loss_cfg: Any):
        """`1/2 (CosFace(x) + mean_l CosFace(Q^soft_l)) + mu mean_l H(p_l)`.

        Args:
          model: a `ProgressiveOPQNModel` (BatchNorm / Dropout follow its NNX mode).
          batch: `image [B, H, W, C]` float32 and `label [B]` int32.
          loss_cfg: `scale` (s), `margin` (m), `entropy_weight` (mu).

        Returns:
          `(loss, aux)`: aux holds `loss_clf_raw`, `loss_clf_quantized` (mean over prefixes),
          `loss_clf_<l>level` (prefix l), `loss_entropy`, `gain_<l>level` (alpha_l) and
          `code_usage` (mean over levels and books of the fraction of the K codewords the
          batch picks).

        Raises:
          ValueError: a missing loss field, or labels of the wrong shape / out of range.
        """
        scale = float(_field(loss_cfg, "scale", what="loss"))
        margin = float(_field(loss_cfg, "margin", what="loss"))
        entropy_weight = float(_field(loss_cfg, "entropy_weight", what="loss"))
        weights = model.classifier[...]
        labels = batch["label"]
        check_labels(labels, batch["image"].shape[0], weights.shape[1])  # before the forward
        feats = model.embed(batch["image"])  # [B, D]
        out = model.head(feats)
        batch_size, levels = out.soft.shape[:2]
        m = model.num_codebooks
        soft_prefixes = out.soft.reshape(batch_size, levels, m, -1)  # [B, L, M, d]
        total, parts = prefix_margin_loss(
            split_subvectors(feats, m),
            soft_prefixes,
            out.probs,
            weights,
            labels,
            scale=scale,
            margin=margin,
            entropy_weight=entropy_weight,
        )
        used = jnp.max(jax.nn.one_hot(out.codes, out.probs.shape[-1]), axis=0)  # [L, M, K]
        gains = model.head.gains()
        aux = dict(
            loss_clf_raw=parts["raw"],
            loss_clf_quantized=jnp.mean(parts["prefixes"]),
            loss_entropy=parts["entropy"],
            code_usage=jnp.mean(used),
            **{f"loss_clf_{i + 1}level": parts["prefixes"][i] for i in range(levels)},
            **{f"gain_{i + 1}level": gains[i] for i in range(levels)},
        )
        return total, aux

    # --- encoding ---------------------------------------------------------------------------
    def encode_fn(self, model: ProgressiveOPQNModel, images) -> dict[str, Any]:
        """Database side (call `model.eval()` first): dict(feats `[B, D]` float32, codes
        `([B, L, M] uint8,)`): every level's codes once; head l reads the first l levels."""
        feats = model.embed(images)
        return dict(feats=feats, codes=(model.head(feats).codes,))

    def query_fn(self, model: ProgressiveOPQNModel, images) -> dict[str, Any]:
        """Query side (call `model.eval()` first): dict(feats `[B, D]`, target `[B, D]` (each
        x_m/|x_m|), soft `[B, L, D]` the soft partial sums with OPQN's normalised assignment)."""
        feats = model.embed(images)
        out = model.head(feats, scale_by_norm=False)
        return dict(feats=feats, target=out.target, soft=out.soft)

    def codebooks_fn(self, model: ProgressiveOPQNModel) -> tuple[Float[Array, "lM K D"], ...]:
        """The first l levels' full-dimension books `[l·M, K, D]` for each head l = 1..L
        (book (i, m) is alpha_i C_im in subspace m's columns): the tables are
        `<q, alpha_i c_imk>`, q the unit target (`"raw"`) or the l-level soft quantization."""
        head = model.head
        books = quantizer_lib.full_dim_codebooks(head.codebooks[...], head.gains())
        return prefix_lib.prefix_codebooks(books, head.num_levels)


def model_config(
    backbone: Mapping[str, Any],
    *,
    levels: int,
    num_codebooks: int,
    codebook_size: int,
    codebook_init: str = "dct",
    gain_decay: float = 0.5,
    learn_gains: bool = True,
    runlocal: bool = False,
):
    """`config.model` (an `ml_collections.ConfigDict`) of a progressive OPQN config: `backbone`,
    D = M·K (so d = K), L = `levels` residual levels of M = `num_codebooks` books of K =
    `codebook_size` fixed orthonormal codewords (level 1 `codebook_init`: "dct" or "qr"), level
    l's initial gain `gain_decay`^(l−1) (learned unless `learn_gains` is false); float32.
    `runlocal`: K ≤ 16 (4-bit levels).

    Example:
      >>> model = model_config({"name": "cnn_small"}, levels=4, num_codebooks=2, codebook_size=256)
      >>> model.embedding_dim, model.quantizer.seed
      (512, 0)
    """
    size = min(codebook_size, 16) if runlocal else codebook_size
    model = ml_collections.ConfigDict()
    model.backbone = ml_collections.ConfigDict(dict(backbone))
    model.embedding_dim = num_codebooks * size  # D = M·K, so d = K
    model.quantizer = ml_collections.ConfigDict()
    model.quantizer.num_levels = levels  # L: codes of l·M·log2(K) bits, l = 1..L
    model.quantizer.num_codebooks = num_codebooks  # M
    model.quantizer.codebook_size = size  # K
    model.quantizer.codebook_init = codebook_init  # level 1: "dct" or "qr"
    model.quantizer.seed = 0
    model.quantizer.gain_decay = gain_decay  # initial gain of level l: decay^(l-1)
    model.quantizer.learn_gains = learn_gains
    model.dtype = "float32"
    return model


METHOD = ProgressiveOPQN()
