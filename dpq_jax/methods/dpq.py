"""DPQ-G: Deep Progressive Quantization (Gao et al., IJCAI 2019) as a `PQMethod`: one trained
model, every code length.

Model: backbone trunk `[B, F]` (AlexNet fc7 in the paper) -> embedding x = tanh(Dense(F -> D))
(fc8, D = 300 as the word2vec label vectors), a classifier Dense(F -> C) on the trunk, L levels
of full-dimension codebooks `[L, K, D]` (`quantizers.progressive`), and label embeddings v
`[C, D]` for the adaptive margin (learnable by default; a file of vectors as an option).

Loss (`losses.dvsq`; METHODS §2.2):

    L = w_S L_S(x, v) + lambda L_C(logits) + tau (SoftDist + mu HardDist + nu JCL)(x_q)

with lambda = 0.1, tau = 1, mu = 1, nu = 0.1. `loss.stop_grad_features=True` quantizes
x_q = stop_gradient(x): the backbone and fc8 never see the quantization loss and the codebooks
see only it, which is what the released code trains (METHODS §2.6, trap 1); `False` is the
end-to-end model the paper describes.

Codes: the database is encoded once, `[N, L]` uint8. The model reports one code length per
prefix: head l (l = 1..L) is the first l columns, `l log2(K)` bits (K = 256, L = 4: 8/16/24/32
bits), scored against the first l codebooks with the progressive lookup table
(`search.luts.lut_progressive`): score = <q, sum_{i<=l} C_i[code_i]>, inner product with the raw
query embedding (AQD, the reported search) or with the query's soft quantization at l levels.

Optimizers: one optax chain from `config.optim` updates everything jointly (the default), or
`config.optim = two_stage_optim(...)` gives the reference's recipe: the encoder on its own
optimizer (SGD + momentum, exponential decay) from step 0 and the codebooks on Adam from
`codebook_start_step` (the reference: half of the epochs). Each optimizer counts its own steps,
so the codebook decay is not doubled (trap 2), and no epoch is skipped (trap 3). The reference
then alternates one encoder and one codebook step per batch; here both update on the same batch
in one step. Its gradient scaling of the new layers (x10 / x20 for fc8 and the classifier, for
fine-tuning a pretrained AlexNet) is not reproduced. The two-stage recipe is built by
`DPQ.make_optimizer`, so it takes effect where the trainer builds its optimizer through
`Method.make_optimizer`.

Config (`model` and `loss` groups):
  model.backbone = dict(name="cnn_small", ...); model.features = F; model.embedding_dim = 300;
  model.quantizer = dict(num_levels=4, codebook_size=256, assign="cosine", gamma=1.0,
                         init_std=0.01);
  model.label_embeddings = ""  (learned), "orthogonal" (fixed, every margin 1) or a path to a
    `.npy` / `.txt` file of `[C, D]` vectors;
  model.dtype = "float32";
  loss.semantic_weight = 1.0; loss.classification_weight = 0.1 (lambda);
  loss.tau = 1.0; loss.mu = 1.0; loss.nu = 0.1; loss.stop_grad_features = True.

References:
  L. Gao, X. Zhu, J. Song, Z. Zhao, H. T. Shen, "Beyond Product Quantization: Deep Progressive
  Quantization for Image Retrieval", IJCAI 2019, pp. 723-729 (arXiv 1906.06698); code
  cfm-uestc/DPQ; METHODS.md §2.
"""

import functools
import os
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from dpq_jax import config_lib
from dpq_jax.losses import dvsq
from dpq_jax.methods import base
from dpq_jax.methods import progressive as prefix_lib
from dpq_jax.quantizers import progressive
from dpq_jax.typing import Array, Float

_field = functools.partial(base.field, what="DPQ")
TWO_STAGE = "dpq_two_stage"  # `config.optim.name` of the reference's two-optimizer recipe


def load_label_embeddings(path: str, num_classes: int, dim: int) -> np.ndarray:
    """`[C, D]` float32 label vectors from a `.npy` file (or whitespace-separated `.txt`, the
    reference's `cifar_wordvec.txt` layout: one row per class).

    Raises:
      ValueError: a missing or unreadable file, or a shape other than `[num_classes, dim]`.
    """
    if not os.path.isfile(path):
        raise ValueError(
            f"model.label_embeddings: no file {path!r}; give a .npy (or .txt) of [C, D] vectors, "
            "or '' to learn the class embeddings."
        )
    try:
        vectors = np.loadtxt(path) if path.endswith(".txt") else np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise ValueError(f"model.label_embeddings: cannot read {path!r}: {e}") from e
    vectors = np.asarray(vectors, np.float32)
    if vectors.shape != (num_classes, dim):
        raise ValueError(
            f"model.label_embeddings {path!r} holds shape {vectors.shape}; this model needs "
            f"[C, D] = [{num_classes}, {dim}] (one vector per training class, D = "
            "model.embedding_dim)."
        )
    if not np.all(np.isfinite(vectors)) or np.any(np.linalg.norm(vectors, axis=1) == 0):
        raise ValueError(
            f"model.label_embeddings {path!r} has non-finite or all-zero rows; every class "
            "needs a nonzero vector (the margins are cosines)."
        )
    return vectors


ORTHOGONAL = "orthogonal"


def orthogonal_label_embeddings(num_classes: int, dim: int, seed: int = 0) -> np.ndarray:
    """`[C, D]` fixed orthonormal label vectors: every margin δ_ij = 1 − cos(v_i, v_j) is 1.

    The DVSQ loss without a semantic prior, for data sets with no word vectors (e.g.
    Fashion-MNIST): no two classes are closer than any other, and, unlike learned vectors, the
    margins cannot shrink during training. Rows of the Q factor of a seeded Gaussian matrix.

    Raises:
      ValueError: more classes than dimensions (C orthonormal vectors need D >= C).
    """
    if num_classes > dim:
        raise ValueError(
            f"model.label_embeddings='orthogonal' needs model.embedding_dim >= the number of "
            f"classes; got {dim} < {num_classes}. Raise embedding_dim or learn the vectors ('')."
        )
    gaussian = np.random.default_rng(seed).standard_normal((dim, num_classes))
    q, _ = np.linalg.qr(gaussian)  # [D, C], orthonormal columns
    return np.ascontiguousarray(q.T, dtype=np.float32)


class LabelEmbeddings(nnx.Variable):
    """Fixed label vectors read from a file (not an `nnx.Param`: no optimizer touches them)."""


class DPQModel(nnx.Module):
    """Backbone trunk, fc8 embedding (tanh), classifier, progressive quantizer, label vectors.

    Attributes:
      backbone: `images [B, H, W, C] -> [B, F]` float32.
      embed: `nnx.Linear(F, D)`; x = tanh(embed(trunk)).
      classifier: `nnx.Linear(F, C)` on the trunk.
      quantizer: `ProgressiveQuantizer(D, num_levels=L, codebook_size=K)`.
      label_embeddings: `[C, D]`, an `nnx.Param` (learned, N(0, 1) init) or `LabelEmbeddings`.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        *,
        backbone: str,
        backbone_kwargs: Mapping[str, Any],
        features: int,
        embedding_dim: int,
        num_levels: int,
        codebook_size: int,
        assign: str = "cosine",
        gamma: float = 1.0,
        init_std: float = progressive.CODEBOOK_INIT_STD,
        label_vectors: np.ndarray | None = None,
        dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        if num_classes < 1 or features < 1 or embedding_dim < 1:
            raise ValueError(
                f"num_classes ({num_classes}), model.features ({features}) and "
                f"model.embedding_dim ({embedding_dim}) must be positive."
            )
        self.backbone = base.make_backbone(
            backbone, backbone_kwargs, in_channels, features, dtype=dtype, rngs=rngs, method="DPQ"
        )
        self.embed = nnx.Linear(features, embedding_dim, rngs=rngs)  # fc8
        self.classifier = nnx.Linear(features, num_classes, rngs=rngs)
        self.quantizer = progressive.ProgressiveQuantizer(
            embedding_dim,
            num_levels=num_levels,
            codebook_size=codebook_size,
            assign=assign,
            gamma=gamma,
            init_std=init_std,
            rngs=rngs,
        )
        if label_vectors is None:
            init = jax.nn.initializers.normal(1.0)
            self.label_embeddings = nnx.Param(
                init(rngs.params(), (num_classes, embedding_dim), jnp.float32)
            )  # [C, D]
        else:
            self.label_embeddings = LabelEmbeddings(jnp.asarray(label_vectors, jnp.float32))

    def embed_images(
        self, images: Float[Array, "B H W C"]
    ) -> tuple[Float[Array, "B F"], Float[Array, "B D"]]:
        """`(trunk [B, F], x [B, D])`, float32; x = tanh(fc8(trunk)) in (-1, 1)."""
        trunk = self.backbone(images).astype(jnp.float32)
        return trunk, jnp.tanh(self.embed(trunk))


# ----------------------------------------------------------------------------------------------
# The reference's two optimizers.
# ----------------------------------------------------------------------------------------------
def two_stage_optim(
    encoder: ml_collections.ConfigDict,
    codebook: ml_collections.ConfigDict,
    *,
    codebook_start_step: int,
) -> ml_collections.ConfigDict:
    """`config.optim` for the reference's recipe: `encoder` (a `config_lib.optimizer` block)
    trains everything but the codebooks from step 0; `codebook` (another block) trains the
    codebooks from `codebook_start_step` on, counting its own steps for its schedule."""
    cfg = ml_collections.ConfigDict()
    cfg.name = TWO_STAGE
    cfg.encoder = encoder
    cfg.codebook = codebook
    cfg.codebook_start_step = int(codebook_start_step)
    return cfg


def _param_labels(params) -> Any:
    """Labels the parameters: `codebook` for the quantizer's codebooks, `encoder` for the rest."""

    def label(path, _):
        return "codebook" if "'codebooks'" in jax.tree_util.keystr(path) else "encoder"

    return jax.tree_util.tree_map_with_path(label, params)


def two_stage_transform(optim_cfg, total_steps: int):
    """`(tx, encoder schedule)` of a `two_stage_optim` config.

    tx = `optax.multi_transform`: the encoder group runs `optim.make_optimizer(encoder)` every
    step; the codebook group runs `optim.make_optimizer(codebook)` under
    `optax.transforms.conditionally_mask`, so before `codebook_start_step` its updates are zero
    and its state (moments, step count, schedule) does not move.

    Raises:
      ValueError: `codebook_start_step` outside `[0, total_steps)`.
    """
    from dpq_jax import optim

    start = int(_field(optim_cfg, "codebook_start_step", what="optim"))
    if not 0 <= start < total_steps:
        raise ValueError(
            f"optim.codebook_start_step={start} must lie in [0, total_steps={total_steps}) so "
            "the codebooks train at all."
        )
    encoder_cfg = _field(optim_cfg, "encoder", what="optim")
    encoder_tx, schedule = optim.make_optimizer(encoder_cfg, total_steps)
    codebook_tx, _ = optim.make_optimizer(
        _field(optim_cfg, "codebook", what="optim"), total_steps - start
    )
    gated = optax.transforms.conditionally_mask(codebook_tx, lambda step: step >= start)
    tx = optax.multi_transform({"encoder": encoder_tx, "codebook": gated}, _param_labels)
    return tx, schedule


# ----------------------------------------------------------------------------------------------
# The method.
# ----------------------------------------------------------------------------------------------
class DPQ(prefix_lib.ProgressiveMethod):
    """DPQ-G (see the module docstring). Query sides: `"raw"` (AQD: the raw embedding, the
    reported search) and `"soft_quantized"` (the query's soft quantization at l levels).

    Example:
      >>> METHOD.code_lengths(dict(quantizer=dict(num_levels=4, codebook_size=256)))
      (8, 16, 24, 32)
    """

    name = "dpq"
    config_name = "DPQ"
    query_sides = ("raw", "soft_quantized")

    # --- network --------------------------------------------------------------------------
    def build(self, model_cfg, *, num_classes: int, in_channels: int, rngs: nnx.Rngs) -> DPQModel:
        """The `DPQModel` of the config's `model` group (train mode).

        Raises:
          ValueError: a missing field, bad sizes, an unknown dtype or assignment, or a label
            vector file that does not hold `[num_classes, embedding_dim]` vectors.
        """
        backbone, kwargs, dtype = base.backbone_and_dtype(
            model_cfg, what="DPQ", examples="'cnn_small' or 'alexnet'"
        )
        levels, _, size = self.quantizer_sizes(model_cfg)
        quantizer = _field(model_cfg, "quantizer")
        embedding_dim = int(_field(model_cfg, "embedding_dim"))
        path = _field(model_cfg, "label_embeddings", "")
        if path == ORTHOGONAL:
            vectors = orthogonal_label_embeddings(num_classes, embedding_dim)
        else:
            vectors = load_label_embeddings(path, num_classes, embedding_dim) if path else None
        return DPQModel(
            in_channels,
            num_classes,
            backbone=backbone,
            backbone_kwargs=kwargs,
            features=int(_field(model_cfg, "features")),
            embedding_dim=embedding_dim,
            num_levels=levels,
            codebook_size=size,
            assign=_field(quantizer, "assign", "cosine"),
            gamma=float(_field(quantizer, "gamma", 1.0)),
            init_std=float(_field(quantizer, "init_std", progressive.CODEBOOK_INIT_STD)),
            label_vectors=vectors,
            dtype=dtype,
            rngs=rngs,
        )

    def make_optimizer(self, model, optim_cfg, total_steps: int):
        """The joint optimizer of `config.optim`, or the reference's two optimizers when
        `config.optim.name == "dpq_two_stage"` (`two_stage_optim`)."""
        if _field(optim_cfg, "name", what="optim") != TWO_STAGE:
            return super().make_optimizer(model, optim_cfg, total_steps)
        tx, schedule = two_stage_transform(optim_cfg, total_steps)
        return nnx.Optimizer(model, tx, wrt=nnx.Param), schedule

    def loss_fn(self, model: DPQModel, batch: Mapping[str, Array], loss_cfg: Any):
        """`w_S L_S + lambda L_C + tau (SoftDist + mu HardDist + nu JCL)` (module docstring).

        Args:
          model: a `DPQModel` (BatchNorm / Dropout follow its NNX mode).
          batch: `image [B, H, W, C]` float32 and `label` `[B]` int32 or `[B, C]` multi-hot
            (multi-hot labels use the sigmoid classification loss).
          loss_cfg: `semantic_weight`, `classification_weight` (lambda), `tau`, `mu`, `nu`,
            `stop_grad_features`.

        Returns:
          `(loss, aux)`: aux holds `loss_semantic`, `loss_classification`, `loss_soft_dist`,
          `loss_hard_dist`, `loss_jcl`, `loss_quantization`, `hard_dist_<l>level` (mean squared
          error of the l-level reconstruction, for each l) and `code_usage` (mean over levels of
          the fraction of the K codewords the batch picks).

        Raises:
          ValueError: a missing loss field, or labels of the wrong shape / out of range.
        """
        weights = {
            name: float(_field(loss_cfg, name, what="loss"))
            for name in ("semantic_weight", "classification_weight", "tau", "mu", "nu")
        }
        stop = bool(_field(loss_cfg, "stop_grad_features", what="loss"))
        labels = batch["label"]
        num_classes = model.label_embeddings[...].shape[0]
        dvsq.as_multi_hot(labels, num_classes)  # fail before the forward pass on bad labels
        trunk, x = model.embed_images(batch["image"])
        semantic = dvsq.adaptive_margin_loss(x, model.label_embeddings[...], labels)
        classification = dvsq.classification_loss(model.classifier(trunk), labels)
        x_q = jax.lax.stop_gradient(x) if stop else x
        out = model.quantizer(x_q)
        quant, parts = dvsq.quantization_loss(
            x_q, out.soft, out.hard, tau=weights["tau"], mu=weights["mu"], nu=weights["nu"]
        )
        total = (
            weights["semantic_weight"] * semantic
            + weights["classification_weight"] * classification
            + quant
        )
        used = jnp.max(jax.nn.one_hot(out.codes, model.quantizer.codebook_size), axis=0)  # [L, K]
        per_level = jnp.mean(jnp.square(x_q[:, None, :] - out.hard), axis=(0, 2))  # [L]
        aux = dict(
            loss_semantic=semantic,
            loss_classification=classification,
            loss_soft_dist=parts["soft"],
            loss_hard_dist=parts["hard"],
            loss_jcl=parts["jcl"],
            loss_quantization=quant,
            code_usage=jnp.mean(used),
            **{f"hard_dist_{i + 1}level": per_level[i] for i in range(per_level.shape[0])},
        )
        return total, aux

    # --- encoding ---------------------------------------------------------------------------
    def encode_fn(self, model: DPQModel, images) -> dict[str, Any]:
        """Database side (call `model.eval()` first): dict(feats `[B, D]` float32, codes
        `([B, L] uint8,)`): every level's code once; head l reads the first l columns."""
        _, x = model.embed_images(images)
        quantizer = model.quantizer
        codes = progressive.progressive_codes(
            x, quantizer.codebooks[...], assign=quantizer.assign, gamma=quantizer.gamma
        )
        return dict(feats=x, codes=(codes,))

    def query_fn(self, model: DPQModel, images) -> dict[str, Any]:
        """Query side (call `model.eval()` first): dict(feats `[B, D]` float32, soft `[B, L, D]`
        the soft partial sums Q^soft_l)."""
        _, x = model.embed_images(images)
        return dict(feats=x, soft=model.quantizer(x).soft)

    def codebooks_fn(self, model: DPQModel) -> tuple[Float[Array, "l K D"], ...]:
        """The first l codebooks `[l, K, D]` for each head l = 1..L."""
        books = model.quantizer.codebooks[...]
        return prefix_lib.prefix_codebooks(books, books.shape[0])


# --- Config groups (the `configs/*_dpq.py` files build theirs with these) --------------------


def model_config(
    backbone: Mapping[str, Any],
    *,
    features: int,
    levels: int,
    codebook_size: int,
    assign: str,
    gamma: float,
    label_embeddings: str,
    embedding_dim: int = 300,
    runlocal: bool = False,
) -> ml_collections.ConfigDict:
    """`config.model` of a DPQ config (METHODS §2): `backbone` with a trunk of `features`,
    x = tanh(fc8) of D = `embedding_dim` (300, the word2vec width), L = `levels` progressive
    levels of K = `codebook_size` full-dimension codewords (init N(0, 0.01²)), assignment
    `assign` ("cosine", the code; "l2", the paper) with softmax sharpness `gamma`; float32.

    Args:
      label_embeddings: "" = learned class vectors, "orthogonal" = fixed with every DVSQ margin
        1, or a .npy / .txt of [C, D] vectors.
      runlocal: the tiny sizes of a smoke run (F = 16, D = 8, K ≤ 16); the backbone is the
        caller's to shrink.

    Example:
      >>> model = model_config({"name": "cnn_small"}, features=512, levels=4, codebook_size=256,
      ...                      assign="cosine", gamma=1.0, label_embeddings="", runlocal=True)
      >>> model.features, model.embedding_dim, model.quantizer.codebook_size
      (16, 8, 16)
    """
    model = ml_collections.ConfigDict()
    model.backbone = ml_collections.ConfigDict(dict(backbone))
    model.features = 16 if runlocal else features  # trunk width F (AlexNet fc7: 4096)
    model.embedding_dim = 8 if runlocal else embedding_dim  # D of x = tanh(fc8)
    model.quantizer = ml_collections.ConfigDict()
    model.quantizer.num_levels = levels  # L: codes of l·log2(K) bits, l = 1..L
    model.quantizer.codebook_size = min(codebook_size, 16) if runlocal else codebook_size  # K
    model.quantizer.assign = assign
    model.quantizer.gamma = gamma
    model.quantizer.init_std = 0.01
    model.label_embeddings = label_embeddings
    model.dtype = "float32"
    return model


def loss_config(stop_grad_features: bool = True) -> ml_collections.ConfigDict:
    """`config.loss` of DPQ (METHODS §2, the released code's weights): the DVSQ adaptive margin,
    λ = 0.1 × softmax CE, τ = 1, soft distortion, μ = 1 × hard distortion, ν = 0.1 × the joint
    central loss; `stop_grad_features` (the released code) keeps the quantization loss out of
    the backbone, false is the paper's end-to-end model."""
    loss = ml_collections.ConfigDict()
    loss.semantic_weight = 1.0  # DVSQ adaptive margin
    loss.classification_weight = 0.1  # λ
    loss.tau = 1.0
    loss.mu = 1.0  # hard distortion
    loss.nu = 0.1  # joint central loss
    loss.stop_grad_features = stop_grad_features
    return loss


def schedule_optim(
    schedule: str, optim: ml_collections.ConfigDict, *, total_steps: int
) -> ml_collections.ConfigDict:
    """`config.optim` for a config's `schedule` argument: "joint" is `optim`, one chain for every
    parameter; "two_stage" trains the encoder with `optim` from step 0 and the codebooks with
    Adam (lr 1e-3, constant) from `total_steps // 2`, as the reference's two optimizers (the
    trainer builds it through `Method.make_optimizer`).

    Raises:
      ValueError: another schedule.
    """
    if schedule == "joint":
        return optim
    if schedule != "two_stage":
        raise ValueError(f"schedule must be 'joint' or 'two_stage', got {schedule!r}.")
    codebook = config_lib.optimizer("adam", lr=1e-3, schedule="constant")
    return two_stage_optim(optim, codebook, codebook_start_step=total_steps // 2)


METHOD = DPQ()
