r"""TQL's losses: a triplet loss on relaxed codes and the triplet quantization loss.

**The formulation is ours.** TQL (Zhou, Huang, Zhang & Wang, "Deep Hashing with Triplet
Quantization Loss", VCIP 2017, arXiv 1710.11445) has no public code and only its abstract was
available: it replaces the point-wise quantization loss ‖f − sgn(f)‖² by a *triplet-form*
quantization loss that only asks the ranking to survive binarisation. METHODS.md §4 turns that
into the design below; treat every detail beyond the abstract as our choice.

With relaxed codes f = tanh(Wz) `[B, k]`, b = sgn(f) (`f > 0` is +1, else −1, the bit the
search stores) and squared Euclidean distances d, for the triplets (a, p, n) that `mining`
picks (y_p = y_a, p ≠ a, y_n ≠ y_a):

    L_trip = mean_(a,p,n) max(0, d(f_a, f_p) − d(f_a, f_n) + α)                   margin α
    L_TQ   (a) = mean_(a,p,n) max(0, d(b_a, b_p) − d(b_a, b_n) + α_q)   b straight-through
           (b) = mean_(a,p,n) max(0, d(f_a, b_p) − d(f_a, b_n) + α_q)   real anchor, binary items
    L      = L_trip + λ · L_TQ                       (no ‖f − b‖² term, METHODS §4)

and, as the ablation the paper argues against, `"pointwise"`: L = L_trip + λ · mean_i
‖f_i − sgn(f_i)‖² (sgn a constant). The straight-through sign b = sgn(f) + (f − stop_grad(f))
has the value of sgn(f) exactly (so binary distances are exact multiples of 4, as Hamming
distances are) and the gradient of f.

Mining, on the *global* batch and on each term's own distance matrix (rows are anchors; the
asymmetric (b) matrix is d(f_a, b_j)):

* `"batch_all"`: every valid triplet; the loss is the mean over the hinge-active ones (t > 0),
  0 if none (Hermans, Beyer & Leibe 2017, "BA≠0").
* `"batch_hard"`: per anchor, the farthest positive and the nearest negative; mean over the
  anchors that have both (Hermans et al. 2017).
* `"semi_hard"`: per positive pair (a, p), the nearest negative farther than p
  (d_an > d_ap); if there is none, the farthest negative; mean over the pairs whose anchor has
  a negative (FaceNet, Schroff et al. 2015, Sec. 3.2; as TF-Addons' `triplet_semihard_loss`).

Ties in distance go to the lowest batch index (`argmax`/`argmin` take the first), and the
picks carry no gradient. Multi-hot labels count a pair as positive when it shares a label.

On a batch sharded over the `"data"` mesh the all-pairs distances need the whole batch, so
`tql_loss` replicates the codes and labels first (`parallel.gather_batch`, an explicit
`reshard` to `P()`): 1 and 8 devices give the same triplets, loss and gradients.

References:
  Zhou, Huang, Zhang & Wang, VCIP 2017 (arXiv 1710.11445), abstract; METHODS.md §4.
  Schroff, Kalenichenko & Philbin, "FaceNet", CVPR 2015, Eq. (1)-(4).
  Hermans, Beyer & Leibe, "In Defense of the Triplet Loss for Person Re-Identification",
  arXiv 1703.07737, 2017, Sec. 2.
"""

import jax
import jax.numpy as jnp

from dpq_jax import parallel
from dpq_jax.losses.pairwise import similarity
from dpq_jax.typing import Array, Bool, Float, Int, Shaped

MININGS = ("batch_all", "batch_hard", "semi_hard")
QUANTIZATIONS = ("triplet_a", "triplet_b", "pointwise", "none")


def check_option(value: str, allowed: tuple[str, ...], field: str) -> str:
    """`value` if it is one of `allowed`; else one ValueError naming the config field."""
    if value not in allowed:
        raise ValueError(f"{field} must be one of {allowed}, got {value!r}; set --config.{field}.")
    return value


def sign(f: Float[Array, "B k"]) -> Float[Array, "B k"]:
    """The binary code as ±1: +1 where `f > 0` (the stored 1 bit), else −1."""
    return jnp.where(f > 0, 1.0, -1.0).astype(f.dtype)


def sign_ste(f: Float[Array, "B k"]) -> Float[Array, "B k"]:
    """Straight-through sign: the value of `sign(f)` exactly, the gradient of `f`.

    Example:
      >>> x = jnp.asarray([0.3, -0.2, 0.0])
      >>> sign_ste(x).tolist(), jax.grad(lambda v: jnp.sum(2.0 * sign_ste(v)))(x).tolist()
      ([1.0, -1.0, -1.0], [2.0, 2.0, 2.0])
    """
    return jax.lax.stop_gradient(sign(f)) + (f - jax.lax.stop_gradient(f))


def squared_distances(x: Float[Array, "A k"], y: Float[Array, "B k"]) -> Float[Array, "A B"]:
    """`d[i, j] = ‖x_i − y_j‖²`, from the differences (exact for ±1 codes; no cancellation)."""
    return jnp.sum(jnp.square(x[:, None, :] - y[None, :, :]), axis=-1)


def triplet_masks(sim: Float[Array, "B B"]) -> tuple[Bool[Array, "B B"], Bool[Array, "B B"]]:
    """`(positive, negative)`: `positive[a, p]` = similar and p ≠ a; `negative[a, n]` = not
    similar and n ≠ a."""
    off_diagonal = ~jnp.eye(sim.shape[0], dtype=bool)
    return (sim > 0) & off_diagonal, (sim <= 0) & off_diagonal


def select_batch_hard(
    dist: Float[Array, "B B"], positive: Bool[Array, "B B"], negative: Bool[Array, "B B"]
) -> tuple[Int[Array, " B"], Int[Array, " B"], Bool[Array, " B"]]:
    """Per anchor the farthest positive and the nearest negative (lowest index on ties).

    Returns:
      `(pos [B], neg [B], valid [B])`: valid anchors have a positive and a negative.
    """
    d = jax.lax.stop_gradient(dist)
    pos = jnp.argmax(jnp.where(positive, d, -jnp.inf), axis=1)
    neg = jnp.argmin(jnp.where(negative, d, jnp.inf), axis=1)
    return pos, neg, positive.any(axis=1) & negative.any(axis=1)


def select_semi_hard(
    dist: Float[Array, "B B"], positive: Bool[Array, "B B"], negative: Bool[Array, "B B"]
) -> tuple[Int[Array, "B B"], Bool[Array, "B B"]]:
    """Per positive pair (a, p) the nearest negative with `d[a, n] > d[a, p]`, else the
    farthest negative (lowest index on ties).

    Returns:
      `(neg [B, B], valid [B, B])`: `neg[a, p]`; valid pairs are positive with a negative.
    """
    d = jax.lax.stop_gradient(dist)
    d_an = d[:, None, :]  # [a, 1, n]
    outside = negative[:, None, :] & (d_an > d[:, :, None])  # [a, p, n]: farther than p
    nearest_outside = jnp.argmin(jnp.where(outside, d_an, jnp.inf), axis=2)  # [a, p]
    farthest = jnp.argmax(jnp.where(negative, d, -jnp.inf), axis=1)  # [a]
    neg = jnp.where(outside.any(axis=2), nearest_outside, farthest[:, None])
    return neg, positive & negative.any(axis=1)[:, None]


def mined_triplets(
    dist: Float[Array, "B B"], sim: Float[Array, "B B"], *, margin: float, mining: str
) -> Bool[Array, "B B B"]:
    """`picked[a, p, n]`: the triplets whose hinges `triplet_loss` averages (batch-all: the
    hinge-active valid triplets). For tests and diagnostics; the loss does not build it."""
    check_option(mining, MININGS, "loss.mining")
    positive, negative = triplet_masks(sim)
    n = dist.shape[0]
    if mining == "batch_all":
        t = dist[:, :, None] - dist[:, None, :] + margin
        return positive[:, :, None] & negative[:, None, :] & (t > 0)
    if mining == "batch_hard":
        pos, neg, valid = select_batch_hard(dist, positive, negative)
        one_hot = (
            jax.nn.one_hot(pos, n, dtype=bool)[:, :, None]
            & jax.nn.one_hot(neg, n, dtype=bool)[:, None, :]
        )
        return one_hot & valid[:, None, None]
    neg, valid = select_semi_hard(dist, positive, negative)
    return jax.nn.one_hot(neg, n, dtype=bool) & valid[:, :, None]


def triplet_loss(
    dist: Float[Array, "B B"], sim: Float[Array, "B B"], *, margin: float, mining: str
) -> tuple[Float[Array, ""], dict[str, Float[Array, ""]]]:
    """The mean hinge `max(0, d[a, p] − d[a, n] + margin)` over the mined triplets.

    Args:
      dist: `[B, B]` distances, rows are anchors (need not be symmetric).
      sim: `[B, B]` 0/1 similarity (`pairwise.similarity`).
      margin: α >= 0.
      mining: one of `MININGS` (module docstring).

    Returns:
      `(loss, parts)`: the float32 scalar (0 when no triplet qualifies), `triplets` (how many
      the mean is over) and `active` (batch-all: the share of valid triplets with a positive
      hinge; otherwise the share of the mined ones).

    Example:
      >>> d = jnp.asarray([[0.0, 1.0, 3.0], [1.0, 0.0, 1.0], [3.0, 1.0, 0.0]])
      >>> sim = jnp.asarray([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
      >>> float(triplet_loss(d, sim, margin=1.0, mining="batch_hard")[0])  # (0 + 1) / 2
      0.5
    """
    check_option(mining, MININGS, "loss.mining")
    if dist.ndim != 2 or dist.shape[0] != dist.shape[1] or sim.shape != dist.shape:
        raise ValueError(
            f"dist and sim must both be [B, B], got {tuple(dist.shape)} and {tuple(sim.shape)}."
        )
    dist = dist.astype(jnp.float32)
    positive, negative = triplet_masks(sim)
    if mining == "batch_all":
        t = dist[:, :, None] - dist[:, None, :] + margin  # [a, p, n]
        valid = positive[:, :, None] & negative[:, None, :]
        active = valid & (t > 0)
        count = jnp.sum(active).astype(jnp.float32)
        loss = jnp.sum(jnp.where(active, t, 0.0)) / jnp.maximum(count, 1.0)
        num_valid = jnp.sum(valid).astype(jnp.float32)
        return loss, {"triplets": count, "active": count / jnp.maximum(num_valid, 1.0)}
    if mining == "batch_hard":
        pos, neg, valid = select_batch_hard(dist, positive, negative)
        d_ap = jnp.take_along_axis(dist, pos[:, None], axis=1)[:, 0]
        d_an = jnp.take_along_axis(dist, neg[:, None], axis=1)[:, 0]
    else:
        neg, valid = select_semi_hard(dist, positive, negative)
        d_ap = dist
        d_an = jnp.take_along_axis(dist, neg, axis=1)  # d[a, neg[a, p]]
    t = d_ap - d_an + margin
    count = jnp.sum(valid).astype(jnp.float32)
    loss = jnp.sum(jnp.where(valid, jax.nn.relu(t), 0.0)) / jnp.maximum(count, 1.0)
    num_active = jnp.sum(valid & (t > 0)).astype(jnp.float32)
    return loss, {"triplets": count, "active": num_active / jnp.maximum(count, 1.0)}


def triplet_quantization_loss(
    codes: Float[Array, "B k"],
    sim: Float[Array, "B B"],
    *,
    variant: str,
    margin: float,
    mining: str,
) -> tuple[Float[Array, ""], dict[str, Float[Array, ""]]]:
    """L_TQ: the triplet loss on binarised distances (METHODS §4; our reading).

    Args:
      codes: `[B, k]` relaxed codes f (the whole batch).
      sim: `[B, B]` 0/1 similarity.
      variant: `"triplet_a"` (d(b_a, b_j), both sides straight-through binary) or
        `"triplet_b"` (d(f_a, b_j): real anchor, straight-through binary items).
      margin: α_q >= 0.
      mining: one of `MININGS`.

    Returns:
      As `triplet_loss`.
    """
    check_option(variant, ("triplet_a", "triplet_b"), "loss.quantization")
    b = sign_ste(codes)
    anchors = b if variant == "triplet_a" else codes
    return triplet_loss(squared_distances(anchors, b), sim, margin=margin, mining=mining)


def pointwise_quantization_loss(codes: Float[Array, "B k"]) -> Float[Array, ""]:
    """`mean_i ‖f_i − sgn(f_i)‖²` with sgn a constant (the classic loss; TQL's ablation).

    Example:
      >>> f = jnp.asarray([[0.5, -1.0], [0.0, 0.9]])  # sgn(0) = -1
      >>> round(float(pointwise_quantization_loss(f)), 4)  # (0.25 + 1 + 0.01) / 2
      0.63
    """
    return jnp.mean(jnp.sum(jnp.square(codes - jax.lax.stop_gradient(sign(codes))), axis=1))


def tql_loss(
    codes: Float[Array, "B k"],
    labels: Shaped[Array, "B ..."],
    *,
    margin: float,
    quant_margin: float,
    quant_weight: float,
    quantization: str = "triplet_a",
    mining: str = "batch_hard",
) -> tuple[Float[Array, ""], dict[str, Float[Array, ""]]]:
    """TQL's loss of one head on the global batch: `L_trip + λ · L_quant` (module docstring).

    Args:
      codes: `[B, k]` relaxed codes f = tanh(Wz), B >= 2; may be sharded over `"data"`.
      labels: `[B]` integer class ids or `[B, C]` multi-hot labels.
      margin: α of the triplet loss on f.
      quant_margin: α_q of the triplet quantization loss (unused by "pointwise" and "none").
      quant_weight: λ >= 0.
      quantization: one of `QUANTIZATIONS`.
      mining: one of `MININGS`, for both triplet terms.

    Returns:
      `(loss, parts)`: the float32 scalar; `triplet`, `quantization` (unweighted; 0 for
      "none"), `triplets` and `active` (of the triplet term).

    Raises:
      ValueError: an unknown option, negative margins or weight, codes not `[B, k]` with
        B >= 2, or labels of another batch size.
    """
    check_option(quantization, QUANTIZATIONS, "loss.quantization")
    check_option(mining, MININGS, "loss.mining")
    if min(margin, quant_margin, quant_weight) < 0:
        raise ValueError(
            f"margins and weight must be >= 0, got margin={margin}, quant_margin={quant_margin}, "
            f"quant_weight={quant_weight}."
        )
    if codes.ndim != 2 or codes.shape[0] < 2:
        raise ValueError(f"codes must be [B, k] with B >= 2, got shape {tuple(codes.shape)}.")
    if labels.shape[0] != codes.shape[0]:
        raise ValueError(
            f"labels have {labels.shape[0]} rows for a batch of {codes.shape[0]} codes."
        )
    # Mining ranks the whole batch: replicate it (explicit communication on a "data" mesh).
    codes = parallel.gather_batch(codes.astype(jnp.float32))
    sim = similarity(parallel.gather_batch(labels))
    trip, parts = triplet_loss(squared_distances(codes, codes), sim, margin=margin, mining=mining)
    if quantization in ("triplet_a", "triplet_b"):
        quant, _ = triplet_quantization_loss(
            codes, sim, variant=quantization, margin=quant_margin, mining=mining
        )
    elif quantization == "pointwise":
        quant = pointwise_quantization_loss(codes)
    else:
        quant = jnp.zeros((), jnp.float32)
    return trip + quant_weight * quant, {"triplet": trip, "quantization": quant, **parts}
