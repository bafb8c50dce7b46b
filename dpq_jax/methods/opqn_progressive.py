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
import numpy as np
from flax import nnx

from dpq_jax.losses.margin import check_labels
from dpq_jax.losses.opqn_progressive import prefix_margin_loss
from dpq_jax.methods import base
from dpq_jax.methods.dpq import bits_per_level
from dpq_jax.quantizers import opqn_progressive as quantizer_lib
from dpq_jax.quantizers.pq import split_subvectors
from dpq_jax.search import luts as luts_lib
from dpq_jax.typing import Array, Float

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
_field = functools.partial(base.field, what="Progressive OPQN")


class ProgressiveOPQNModel(nnx.Module):
    """Backbone + `ProgressiveOrthoHead` + per-subspace CosFace classifier weights.

    Attributes:
      backbone: the registered backbone, `images [B, H, W, C] -> [B, D]` float32.
      head: `ProgressiveOrthoHead(D, num_levels=L, num_codebooks=M, codebook_size=K)`.
      classifier: `nnx.Param [M, C, d]`, initialised as OPQN's reference (torch's Xavier fans
        on the whole tensor).
    """

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
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}.")
        self.head = quantizer_lib.ProgressiveOrthoHead(
            embedding_dim,
            num_levels=num_levels,
            num_codebooks=num_codebooks,
            codebook_size=codebook_size,
            codebook_init=codebook_init,
            seed=seed,
            gain_decay=gain_decay,
            learn_gains=learn_gains,
            rngs=rngs,
        )
        self.backbone = base.make_backbone(
            backbone,
            backbone_kwargs,
            in_channels,
            embedding_dim,
            dtype=dtype,
            rngs=rngs,
            method="Progressive OPQN",
        )
        dim = embedding_dim // num_codebooks
        # OPQN's reference `weight [M, C, d]` under torch's xavier_uniform_ fans (C d in, M d
        # out): a = sqrt(6 / (C d + M d)).
        init = jax.nn.initializers.variance_scaling(
            1.0, "fan_avg", "uniform", in_axis=1, out_axis=0
        )
        self.classifier = nnx.Param(
            init(rngs.params(), (num_codebooks, num_classes, dim), jnp.float32)
        )  # [M, C, d]
        self.num_codebooks = num_codebooks

    def __call__(self, images: Float[Array, "B H W C"]) -> quantizer_lib.ProgressiveOrthoOutput:
        """Backbone then head (training assignment, logits scaled by |x_m|)."""
        return self.head(self.backbone(images))


class ProgressiveOPQN(base.PQMethod):
    """Progressive OPQN (see the module docstring). Query sides: `"soft_quantized"` (default,
    OPQN's search) and `"raw"` (AQD with the unit target, DPQ's reported search)."""

    name = "opqn_progressive"
    query_sides = ("soft_quantized", "raw")

    # --- sizes ----------------------------------------------------------------------------
    def _sizes(self, model_cfg) -> tuple[int, int, int]:
        quantizer = _field(model_cfg, "quantizer")
        levels = int(_field(quantizer, "num_levels"))
        num_codebooks = int(_field(quantizer, "num_codebooks"))
        size = int(_field(quantizer, "codebook_size"))
        if levels < 1 or num_codebooks < 1:
            raise ValueError(
                f"model.quantizer.num_levels ({levels}) and num_codebooks ({num_codebooks}) "
                "must be >= 1."
            )
        bits_per_level(size)  # K in [2, 256]
        return levels, num_codebooks, size

    def code_lengths(self, model_cfg) -> tuple[int, ...]:
        """`(b, 2b, ..., Lb)` with b = M·ceil(log2 K): one code length per prefix of the levels.

        Example:
          >>> cfg = dict(quantizer=dict(num_levels=4, num_codebooks=1, codebook_size=256))
          >>> METHOD.code_lengths(cfg)
          (8, 16, 24, 32)
        """
        levels, num_codebooks, size = self._sizes(model_cfg)
        per_level = num_codebooks * bits_per_level(size)
        return tuple(level * per_level for level in range(1, levels + 1))

    # --- network --------------------------------------------------------------------------
    def build(
        self, model_cfg, *, num_classes: int, in_channels: int, rngs: nnx.Rngs
    ) -> ProgressiveOPQNModel:
        """The `ProgressiveOPQNModel` of the config's `model` group (train mode).

        Raises:
          ValueError: a missing field, bad sizes (K > D/M names the valid (M, K)), or an
            unknown dtype or codebook_init.
        """
        backbone_cfg = base.as_dict(_field(model_cfg, "backbone"))
        if "name" not in backbone_cfg:
            raise ValueError("model.backbone needs a 'name' (e.g. 'cnn_small' or 'sphereface20').")
        dtype = _field(model_cfg, "dtype", "float32")
        if dtype not in _DTYPES:
            raise ValueError(f"model.dtype must be one of {sorted(_DTYPES)}, got {dtype!r}.")
        levels, num_codebooks, size = self._sizes(model_cfg)
        quantizer = _field(model_cfg, "quantizer")
        return ProgressiveOPQNModel(
            in_channels,
            num_classes,
            backbone=backbone_cfg.pop("name"),
            backbone_kwargs=backbone_cfg,
            embedding_dim=int(_field(model_cfg, "embedding_dim")),
            num_levels=levels,
            num_codebooks=num_codebooks,
            codebook_size=size,
            codebook_init=_field(quantizer, "codebook_init", "dct"),
            seed=int(_field(quantizer, "seed", 0)),
            gain_decay=float(_field(quantizer, "gain_decay", quantizer_lib.DEFAULT_GAIN_DECAY)),
            learn_gains=bool(_field(quantizer, "learn_gains", True)),
            dtype=_DTYPES[dtype],
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
        feats = model.backbone(batch["image"]).astype(jnp.float32)  # [B, D]
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
        feats = model.backbone(images).astype(jnp.float32)
        return dict(feats=feats, codes=(model.head(feats).codes,))

    def query_fn(self, model: ProgressiveOPQNModel, images) -> dict[str, Any]:
        """Query side (call `model.eval()` first): dict(feats `[B, D]`, target `[B, D]` (each
        x_m/|x_m|), soft `[B, L, D]` the soft partial sums with OPQN's normalised assignment)."""
        feats = model.backbone(images).astype(jnp.float32)
        out = model.head(feats, scale_by_norm=False)
        return dict(feats=feats, target=out.target, soft=out.soft)

    def database_codes(self, database, head: int) -> np.ndarray:
        """Head l = `head + 1`: the first l levels of the stored `[N, L, M]` codes, `[N, l·M]`
        (level-major, the order of `codebooks_fn`'s books)."""
        codes = np.asarray(database["codes"][0], np.uint8)
        if codes.ndim != 3:
            raise ValueError(
                f"Progressive OPQN stores codes [N, L, M]; got shape {codes.shape}. Encode the "
                "database with this method's encode_fn."
            )
        return codes[:, : head + 1].reshape(codes.shape[0], -1)

    def codebooks_fn(self, model: ProgressiveOPQNModel) -> tuple[Float[Array, "lM K D"], ...]:
        """The first l levels' full-dimension books `[l·M, K, D]` for each head l = 1..L."""
        head = model.head
        books = quantizer_lib.full_dim_codebooks(head.codebooks[...], head.gains())
        m = model.num_codebooks
        return tuple(books[: level * m] for level in range(1, head.num_levels + 1))

    # --- search -----------------------------------------------------------------------------
    def _query_vectors(self, queries, head: int, query_side: str):
        if query_side == "raw":
            return queries["target"]
        if query_side == "soft_quantized":
            return queries["soft"][:, head]
        raise ValueError(f"query_side must be one of {self.query_sides}, got {query_side!r}.")

    def query_tables(self, queries, *, head, codebooks, query_side):
        """`[Q, l·M, K]` progressive inner-product tables `<q, alpha_i c_imk>` (in subspace m)
        for the l = head + 1 leading levels (`lut_progressive`)."""
        books = int(np.shape(codebooks)[0])
        if books % (head + 1):
            raise ValueError(f"Head {head} searches {head + 1} levels; got {books} books.")
        vectors = self._query_vectors(queries, head, query_side)
        return luts_lib.lut_progressive(vectors, codebooks, books)

    def query_vectors(self, queries, *, head, codebooks, query_side):
        """The `[Q, D]` query vectors of the tables (unit target, or l-level soft quantization)."""
        return np.asarray(self._query_vectors(queries, head, query_side), np.float32)

    def index(self, codes, *, params, ids=None, query_side):
        from dpq_jax.search import index as index_lib

        del query_side
        return index_lib.PQIndex(
            np.asarray(params, np.float32),
            codes,
            ids,
            method=self.name,
            metric="ip",
            progressive=True,
        )

    def index_matches(self, index, *, params, code_length, query_side):
        return bool(getattr(index, "progressive", False)) and super().index_matches(
            index, params=params, code_length=code_length, query_side=query_side
        )

    def describe_search(self, query_side):
        return (
            "progressive ADC (inner product, first l levels of M orthonormal books), "
            f"query side {query_side!r}"
        )


METHOD = ProgressiveOPQN()
