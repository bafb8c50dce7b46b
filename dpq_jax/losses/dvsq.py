"""DPQ-G's losses: DVSQ's adaptive-margin semantic loss, classification, and the progressive
distortions with the joint central loss.

Feature side (trains the network that makes the embedding x):

- **Adaptive margin** (DVSQ, Cao et al. CVPR 2017; DPQ Sec. 3.1) against label embeddings v_c
  `[C, D]` (word2vec vectors in the papers):

      L_S = 1/(C P) sum_n sum_{i in Y_n} sum_{j=1..C}
                max(0, delta_ij - cos(x_n, v_i) + cos(x_n, v_j))

  with `delta_ij = 1 - cos(v_i, v_j)` and P the number of positive labels in the batch (B for
  single-label data). j runs over all classes, other positive labels included; the j = i term
  is 0.
- **Classification**: softmax cross-entropy of single labels, or sigmoid cross-entropy of
  multi-hot labels (NUS-WIDE); weighted by lambda = 0.1 in the method.

Quantization side (trains the codebooks; with `stop_grad_features` also only them):

    SoftDist = sum_l mean((x - Q^soft_l)^2)
    HardDist = sum_l mean((x - Q^hard_l)^2)
    JCL      = mean((Q^soft_L - Q^hard_L)^2)          (the "joint central loss")
    L_Q      = tau (SoftDist + mu HardDist + nu JCL),  tau = 1, mu = 1, nu = 0.1

Every mean is over the batch and the D features. All losses are pure, float32, and mean-like
over the batch, so a batch sharded over the `"data"` mesh gives the same value as one device.

References:
  L. Gao, X. Zhu, J. Song, Z. Zhao, H. T. Shen, "Beyond Product Quantization: Deep Progressive
  Quantization for Image Retrieval", IJCAI 2019 (arXiv 1906.06698), Sec. 3.1 (L_S, L_C) and
  Sec. 3.3 (progressive quantization losses); METHODS.md §2.2.
  Y. Cao, M. Long, J. Wang, S. Liu, "Deep Visual-Semantic Quantization for Efficient Image
  Retrieval", CVPR 2017 (the adaptive-margin loss).
"""

import jax
import jax.numpy as jnp

from dpq_jax.losses.margin import check_labels
from dpq_jax.typing import Array, Float, Int, Shaped

_HIGHEST = jax.lax.Precision.HIGHEST
_NORM_EPS = 1e-12


def _l2_normalize(x: Float[Array, "... D"]) -> Float[Array, "... D"]:
    sumsq = jnp.sum(jnp.square(x), axis=-1, keepdims=True)
    return x * jax.lax.rsqrt(jnp.maximum(sumsq, _NORM_EPS**2))


def cosine_matrix(a: Float[Array, "N D"], b: Float[Array, "C D"]) -> Float[Array, "N C"]:
    """`cos(a_n, b_c)` in float32, each vector divided by `max(|v|, 1e-12)`.

    Examples:
      >>> cosine_matrix(jnp.array([[2.0, 0.0]]), jnp.array([[1.0, 0.0], [0.0, 3.0]])).tolist()
      [[1.0, 0.0]]
    """
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(
            f"Expected [N, D] and [C, D] with the same D, got {tuple(a.shape)} and "
            f"{tuple(b.shape)}."
        )
    a_hat = _l2_normalize(a.astype(jnp.float32))
    b_hat = _l2_normalize(b.astype(jnp.float32))
    return jnp.einsum("nd,cd->nc", a_hat, b_hat, precision=_HIGHEST)


def label_margins(label_embeddings: Float[Array, "C D"]) -> Float[Array, "C C"]:
    """DVSQ's adaptive margins `delta_ij = 1 - cos(v_i, v_j)`, with the diagonal exactly 0.

    Args:
      label_embeddings: `[C, D]` label vectors v_c.

    Returns:
      `[C, C]` float32 margins in [0, 2]; close classes get small margins.

    References:
      Cao et al., CVPR 2017 (DVSQ), adaptive margin; DPQ Sec. 3.1; METHODS.md §2.2.

    Examples:
      >>> label_margins(jnp.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])).tolist()
      [[0.0, 1.0, 2.0], [1.0, 0.0, 1.0], [2.0, 1.0, 0.0]]
    """
    margins = 1.0 - cosine_matrix(label_embeddings, label_embeddings)
    return jnp.where(jnp.eye(margins.shape[0], dtype=bool), 0.0, margins)


def as_multi_hot(labels: Shaped[Array, "B ..."], num_classes: int) -> Float[Array, "B C"]:
    """Labels as float32 multi-hot `[B, C]`: int `[B]` one-hot, or `[B, C]` as given.

    Raises:
      ValueError: labels neither `[B]` integers (checked in `[0, C)` when concrete) nor
        `[B, C]`.
    """
    if labels.ndim == 1:
        check_labels(labels, labels.shape[0], num_classes)
        return jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
    if labels.ndim != 2 or labels.shape[1] != num_classes:
        raise ValueError(
            f"labels must be class ids [B] or multi-hot [B, C] with C = {num_classes}, got "
            f"shape {tuple(labels.shape)}."
        )
    return labels.astype(jnp.float32)


def adaptive_margin_loss(
    x: Float[Array, "B D"],
    label_embeddings: Float[Array, "C D"],
    labels: Int[Array, " B"] | Float[Array, "B C"],
    *,
    margins: Float[Array, "C C"] | None = None,
) -> Float[Array, ""]:
    """DVSQ's adaptive-margin semantic loss L_S (see the module docstring).

    Args:
      x: `[B, D]` embeddings.
      label_embeddings: `[C, D]` label vectors v_c.
      labels: `[B]` class ids or `[B, C]` multi-hot labels.
      margins: `[C, C]` delta_ij; default `label_margins(stop_gradient(label_embeddings))`.
        The margins are constants of the loss: with learnable label vectors, a gradient
        through delta would reward collapsing the classes (delta -> 0 and cos(x, v_i) ->
        cos(x, v_j) zero every term).

    Returns:
      Scalar float32 `L_S`, divided by C times the number of positive labels in the batch.

    Raises:
      ValueError: mismatched shapes or out-of-range concrete labels.

    References:
      Cao et al., CVPR 2017 (DVSQ); Gao et al., IJCAI 2019, Sec. 3.1; METHODS.md §2.2.
    """
    num_classes = label_embeddings.shape[0]
    positives = as_multi_hot(labels, num_classes)  # [B, C]
    if margins is None:
        margins = label_margins(jax.lax.stop_gradient(label_embeddings))
    if margins.shape != (num_classes, num_classes):
        raise ValueError(
            f"margins must be [C, C] = [{num_classes}, {num_classes}], got {margins.shape}."
        )
    cos = cosine_matrix(x, label_embeddings)  # [B, C]
    # hinge[b, i, j] = max(0, delta_ij - cos(x_b, v_i) + cos(x_b, v_j))
    hinge = jax.nn.relu(margins[None, :, :] - cos[:, :, None] + cos[:, None, :])  # [B, C, C]
    total = jnp.sum(positives[:, :, None] * hinge)
    count = jnp.maximum(jnp.sum(positives), 1.0)
    return total / (num_classes * count)


def classification_loss(
    logits: Float[Array, "B C"], labels: Int[Array, " B"] | Float[Array, "B C"]
) -> Float[Array, ""]:
    """Softmax cross-entropy (class ids `[B]`; mean over B) or sigmoid cross-entropy (multi-hot
    `[B, C]`; mean over B and C), in float32.

    Raises:
      ValueError: labels that match neither form.

    References:
      Gao et al., IJCAI 2019, Sec. 3.1 (L_C); METHODS.md §2.2 (`--Lambda` 0.1 weights it).

    Examples:
      >>> round(float(classification_loss(jnp.zeros((1, 4)), jnp.array([2]))), 4)  # log 4
      1.3863
    """
    if logits.ndim != 2:
        raise ValueError(f"logits must be [B, C], got shape {tuple(logits.shape)}.")
    logits = logits.astype(jnp.float32)
    targets = as_multi_hot(labels, logits.shape[1])
    if labels.ndim == 1:
        return -jnp.mean(jnp.sum(targets * jax.nn.log_softmax(logits, axis=-1), axis=-1))
    # -y log sigmoid(z) - (1 - y) log sigmoid(-z), the stable form.
    return jnp.mean(
        -targets * jax.nn.log_sigmoid(logits) - (1.0 - targets) * jax.nn.log_sigmoid(-logits)
    )


def progressive_distortions(
    x: Float[Array, "B D"], soft: Float[Array, "B L D"], hard: Float[Array, "B L D"]
) -> dict[str, Float[Array, ""]]:
    """DPQ's soft and hard distortions over every level, and the joint central loss.

    Args:
      x: `[B, D]` embeddings (stop their gradient first to train the codebooks only).
      soft: `[B, L, D]` soft partial sums Q^soft_l.
      hard: `[B, L, D]` hard partial sums Q^hard_l.

    Returns:
      dict(`soft` = sum_l mean((x - Q^soft_l)^2), `hard` = sum_l mean((x - Q^hard_l)^2),
      `jcl` = mean((Q^soft_L - Q^hard_L)^2)), scalars float32.

    Raises:
      ValueError: mismatched shapes.

    References:
      Gao et al., IJCAI 2019, Sec. 3.3; METHODS.md §2.2 (SoftDist, HardDist, JCL).
    """
    if soft.ndim != 3 or soft.shape != hard.shape or x.shape != (soft.shape[0], soft.shape[2]):
        raise ValueError(
            f"Expected x [B, D] and partial sums soft, hard [B, L, D]; got {tuple(x.shape)}, "
            f"{tuple(soft.shape)}, {tuple(hard.shape)}."
        )
    x = x.astype(jnp.float32)[:, None, :]  # [B, 1, D]
    soft, hard = soft.astype(jnp.float32), hard.astype(jnp.float32)
    per_level_soft = jnp.mean(jnp.square(x - soft), axis=(0, 2))  # [L]
    per_level_hard = jnp.mean(jnp.square(x - hard), axis=(0, 2))  # [L]
    return dict(
        soft=jnp.sum(per_level_soft),
        hard=jnp.sum(per_level_hard),
        jcl=jnp.mean(jnp.square(soft[:, -1] - hard[:, -1])),
    )


def quantization_loss(
    x: Float[Array, "B D"],
    soft: Float[Array, "B L D"],
    hard: Float[Array, "B L D"],
    *,
    tau: float = 1.0,
    mu: float = 1.0,
    nu: float = 0.1,
) -> tuple[Float[Array, ""], dict[str, Float[Array, ""]]]:
    """`tau (SoftDist + mu HardDist + nu JCL)` and its parts (`progressive_distortions`).

    Returns:
      `(loss, parts)`: the scalar float32 total and dict(soft, hard, jcl).

    References:
      Gao et al., IJCAI 2019, Sec. 3.3; METHODS.md §2.2 (tau = 1, mu = 1, nu = 0.1).
    """
    parts = progressive_distortions(x, soft, hard)
    return tau * (parts["soft"] + mu * parts["hard"] + nu * parts["jcl"]), parts
