"""DCDH's losses: Gaussian-softmax centre loss, centre separation, and the regression
quantization term (Zhang, Zhe, Chen & Yan, "Deep Center-Based Dual-Constrained Hashing for
Discriminative Face Image Retrieval", Pattern Recognition 117, 107976, 2021; METHODS.md §5.5).

For relaxed codes h_i `[N, k]` (the BN output of the hash layer), labels y_i and learnable
class centres μ_c `[C, k]`:

    L1 = −1/N Σ_i log p(y_i | h_i),   p(c | h) = exp(−σ/2 ‖h − μ_c‖²) / Σ_c' exp(−σ/2 ‖h − μ_c'‖²)
    L2 = 1/(C(C−1)) Σ_{i≠j} softplus((k/2) · cos(μ_i, μ_j))
    W  = pinv(YᵀY) Yᵀ sgn(H),   B = sgn(Y W + η H)   (a constant: no gradient flows through B)
    Lq = ‖H − B‖²_F / N
    L  = L1 + 0.1 · L2 + 0.01 · Lq,   σ = 0.25, η = 0.01

Y `[N, C]` is the one-hot label matrix (multi-hot rows allowed). L1 pulls each code to its
class centre, L2 pushes the centres apart in angle, Lq pulls the codes to binary targets B
that a least-squares regression of the batch's sign codes on the labels predicts (with η·H as
the tie-breaker where the class vote is split).

Conventions, and where they differ from the reference code (mzhang367/DCDH-PyTorch,
`loss.py`, `dcdh_train.py`):

- `sgn(x) = +1 if x > 0 else −1` everywhere: `sgn(0) = −1`, the bit the search gives a zero
  relaxed value (`HashingMethod`: a 1 bit is `value > 0`), so B is always a ±1 code. PyTorch's
  `sign(0) = 0` would make a zero vote abstain and a zero target B_ij = 0.
- L1 uses an exact log-softmax. The reference computes `log(p + 1e-6)` with `p = e/(Σe +
  1e-6)`, which caps each item's loss near 13.8 and all but silences items whose p(y|h) is
  under 1e-6; the two agree wherever p(y|h) ≫ 1e-6. Multi-hot rows average −log p over the
  item's labels (rows without labels contribute 0).
- L2 averages over the C(C−1) ordered pairs i ≠ j. The reference sums softplus over all C²
  entries after zeroing the diagonal's argument, adding the constant log 2 / (C − 1) (no
  gradient). One older reference version (`Loss.py`) used μ_iᵀμ_j/2 instead of the cosine.
- The regression: `ridge = 0` (default) is the pinv of the spec; the reference code inverts
  `YᵀY + λI` with λ = 1 (`lamda`), i.e. W_c = Σ_{i∈c} sgn(h_i) / (n_c + λ) instead of / n_c.
  Both give the same B unless η|h_ij| lies between the two shrunken votes (a class vote of
  ±1 and |h_ij| > 100/(n_c + 1)); set `ridge=1.0` for the reference exactly. For one-hot
  labels `pinv(YᵀY) = diag(1/n_c)` for the classes present and 0 for the absent ones, computed
  in closed form; multi-hot labels take the pseudo-inverse (`jnp.linalg.pinv`, Hermitian).
- The regression couples the whole batch: on a batch sharded over the `"data"` mesh the codes
  and labels are gathered (`parallel.gather_batch`), so 1 and 8 devices give the same loss.
"""

import jax
import jax.numpy as jnp

from dpq_jax import parallel
from dpq_jax.losses.margin import check_labels
from dpq_jax.typing import Array, Float, Shaped

_HIGHEST = jax.lax.Precision.HIGHEST
_NORM_EPS = 1e-12  # as torch.nn.functional.normalize


def binary_sign(x: Float[Array, "..."]) -> Float[Array, "..."]:
    """`+1` where x > 0, else `−1` (so `sgn(0) = −1`, the 0 bit of the code).

    Example:
      >>> binary_sign(jnp.asarray([-2.0, 0.0, 3.0])).tolist()
      [-1.0, -1.0, 1.0]
    """
    return jnp.where(x > 0, 1.0, -1.0).astype(x.dtype)


def label_matrix(labels: Shaped[Array, "N ..."], num_classes: int) -> Float[Array, "N C"]:
    """Y: the one-hot matrix of `[N]` integer labels, or `[N, C]` multi-hot labels as 0/1.

    Raises:
      ValueError: labels neither `[N]` integers nor `[N, num_classes]`, or concrete integer
        labels outside `[0, num_classes)`.

    Example:
      >>> label_matrix(jnp.asarray([2, 0]), 3).astype(int).tolist()
      [[0, 0, 1], [1, 0, 0]]
    """
    if labels.ndim == 1:
        check_labels(labels, labels.shape[0], num_classes)  # concrete ids outside [0, C)
        return jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
    if labels.ndim == 2 and labels.shape[1] == num_classes:
        return (labels > 0).astype(jnp.float32)
    raise ValueError(
        f"labels must be [N] class ids or [N, C] multi-hot with C = {num_classes} (the number "
        f"of centres), got shape {tuple(labels.shape)}."
    )


def _check(codes, labels, centers=None) -> None:
    if codes.ndim != 2:
        raise ValueError(f"codes must be [N, k], got shape {tuple(codes.shape)}.")
    if labels.shape[0] != codes.shape[0]:
        raise ValueError(
            f"labels have {labels.shape[0]} rows for a batch of {codes.shape[0]} codes."
        )
    if centers is not None and (centers.ndim != 2 or centers.shape[1] != codes.shape[1]):
        raise ValueError(
            f"centers must be [C, k] with k = {codes.shape[1]} (the code length), got shape "
            f"{tuple(centers.shape)}."
        )


def center_log_probs(
    codes: Float[Array, "N k"], centers: Float[Array, "C k"], *, sigma: float
) -> Float[Array, "N C"]:
    """`log p(c | h_i)` of the Gaussian softmax, `p ∝ exp(−σ/2 ‖h − μ_c‖²)`.

    The `‖h‖²` part of the distance is the same for every class and cancels in the softmax, so
    the logits are `−σ/2 (‖μ_c‖² − 2 hᵀμ_c)` (no cancellation error from a large ‖h‖²).
    """
    codes = codes.astype(jnp.float32)
    centers = centers.astype(jnp.float32)
    cross = jnp.matmul(codes, centers.T, precision=_HIGHEST)  # [N, C]
    logits = -0.5 * sigma * (jnp.sum(jnp.square(centers), axis=1)[None, :] - 2.0 * cross)
    return jax.nn.log_softmax(logits, axis=-1)


def gaussian_center_loss(
    codes: Float[Array, "N k"],
    centers: Float[Array, "C k"],
    labels: Shaped[Array, "N ..."],
    *,
    sigma: float = 0.25,
) -> Float[Array, ""]:
    """L1 = −mean_i log p(y_i | h_i) (METHODS §5.5; see the module docstring).

    Args:
      codes: `[N, k]` relaxed codes H.
      centers: `[C, k]` class centres μ.
      labels: `[N]` class ids in [0, C) or `[N, C]` multi-hot (mean over an item's labels).
      sigma: σ, the precision of the Gaussians (DCDH: 0.25).

    Returns:
      Scalar float32.

    Example:
      >>> h = jnp.zeros((1, 2)); mu = jnp.asarray([[1.0, 0.0], [-1.0, 0.0]])
      >>> round(float(gaussian_center_loss(h, mu, jnp.asarray([0]))), 4)  # equidistant: log 2
      0.6931
    """
    _check(codes, labels, centers)
    if not sigma > 0:
        raise ValueError(f"sigma must be positive, got {sigma}.")
    y = label_matrix(labels, centers.shape[0])
    weights = y / jnp.maximum(jnp.sum(y, axis=1, keepdims=True), 1.0)
    log_probs = center_log_probs(codes, centers, sigma=sigma)
    return -jnp.mean(jnp.sum(weights * log_probs, axis=1))


def center_separation(centers: Float[Array, "C k"], *, scale: float | None = None):
    """L2 = mean over ordered pairs i ≠ j of `softplus(scale · cos(μ_i, μ_j))`.

    Args:
      centers: `[C, k]` class centres.
      scale: the cosine's scale; None means k/2 (DCDH's `0.5 · feat_dim`).

    Returns:
      Scalar float32; 0 for a single centre (no pairs).

    Example:
      >>> mu = jnp.asarray([[1.0, 0.0], [-1.0, 0.0]])  # opposite: softplus(-1)
      >>> round(float(center_separation(mu)), 4)
      0.3133
    """
    if centers.ndim != 2:
        raise ValueError(f"centers must be [C, k], got shape {tuple(centers.shape)}.")
    c, k = centers.shape
    if c < 2:
        return jnp.zeros((), jnp.float32)
    scale = 0.5 * k if scale is None else float(scale)
    centers = centers.astype(jnp.float32)
    # mu / max(|mu|, eps) via rsqrt of the clamped square: finite gradient at mu = 0.
    sumsq = jnp.sum(jnp.square(centers), axis=1, keepdims=True)
    unit = centers * jax.lax.rsqrt(jnp.maximum(sumsq, _NORM_EPS**2))
    cos = jnp.matmul(unit, unit.T, precision=_HIGHEST)
    off_diagonal = 1.0 - jnp.eye(c, dtype=jnp.float32)
    return jnp.sum(jax.nn.softplus(scale * cos) * off_diagonal) / (c * (c - 1))


def regression_targets(
    codes: Float[Array, "N k"],
    labels: Shaped[Array, "N ..."],
    *,
    num_classes: int,
    eta: float = 0.01,
    ridge: float = 0.0,
) -> Float[Array, "N k"]:
    """B = sgn(Y W + η H) with W = pinv(YᵀY + ridge·I) Yᵀ sgn(H), over the given batch, as a
    constant (`stop_gradient`).

    Args:
      codes: `[N, k]` relaxed codes H (the whole batch: gather it first when sharded).
      labels: `[N]` class ids or `[N, C]` multi-hot.
      num_classes: C.
      eta: η, the weight of H inside the sign (DCDH: 0.01).
      ridge: λ added to YᵀY (0: the pseudo-inverse; the reference code's λ = 1).

    Returns:
      `[N, k]` float32 ±1 targets.

    Example:
      >>> h = jnp.asarray([[0.5, -1.0], [-0.2, -3.0], [2.0, 1.0]])
      >>> regression_targets(h, jnp.asarray([0, 0, 1]), num_classes=3).tolist()  # tie: η·h
      [[1.0, -1.0], [-1.0, -1.0], [1.0, 1.0]]
    """
    _check(codes, labels)
    if ridge < 0:
        raise ValueError(f"ridge must be >= 0, got {ridge}.")
    codes = jax.lax.stop_gradient(codes.astype(jnp.float32))
    y = label_matrix(labels, num_classes)  # [N, C]
    votes = jnp.matmul(y.T, binary_sign(codes), precision=_HIGHEST)  # Yᵀ sgn(H), [C, k]
    if labels.ndim == 1:  # YᵀY = diag(n_c): its (ridged) pseudo-inverse in closed form
        diag = jnp.sum(y, axis=0) + ridge
        inverse = jnp.where(diag > 0, 1.0 / jnp.where(diag > 0, diag, 1.0), 0.0)
        w = inverse[:, None] * votes
    else:
        gram = jnp.matmul(y.T, y, precision=_HIGHEST) + ridge * jnp.eye(num_classes)
        w = jnp.matmul(jnp.linalg.pinv(gram, hermitian=True), votes, precision=_HIGHEST)
    return binary_sign(jnp.matmul(y, w, precision=_HIGHEST) + eta * codes)


def regression_quantization(
    codes: Float[Array, "N k"],
    labels: Shaped[Array, "N ..."],
    *,
    num_classes: int,
    eta: float = 0.01,
    ridge: float = 0.0,
) -> tuple[Float[Array, ""], Float[Array, "N k"]]:
    """Lq = ‖H − B‖²_F / N with B = `regression_targets` of the whole (gathered) batch.

    Returns:
      `(Lq, B)`: the float32 scalar (gradient 2(H − B)/N) and the `[N, k]` ±1 targets of the
      gathered batch.
    """
    _check(codes, labels)
    codes = parallel.gather_batch(codes.astype(jnp.float32))
    labels = parallel.gather_batch(labels)
    targets = regression_targets(codes, labels, num_classes=num_classes, eta=eta, ridge=ridge)
    return jnp.sum(jnp.square(codes - targets)) / codes.shape[0], targets


def dcdh_loss(
    codes: Float[Array, "N k"],
    centers: Float[Array, "C k"],
    labels: Shaped[Array, "N ..."],
    *,
    sigma: float = 0.25,
    separation_weight: float = 0.1,
    quantization_weight: float = 0.01,
    eta: float = 0.01,
    ridge: float = 0.0,
) -> tuple[Float[Array, ""], dict[str, Float[Array, ""]]]:
    """L = L1 + separation_weight · L2 + quantization_weight · Lq of one head.

    Returns:
      `(loss, parts)` with the unweighted `center` (L1), `separation` (L2) and `quantization`
      (Lq) terms.
    """
    _check(codes, labels, centers)
    center = gaussian_center_loss(codes, centers, labels, sigma=sigma)
    separation = center_separation(centers)
    quantization, _ = regression_quantization(
        codes, labels, num_classes=centers.shape[0], eta=eta, ridge=ridge
    )
    loss = center + separation_weight * separation + quantization_weight * quantization
    return loss, {"center": center, "separation": separation, "quantization": quantization}


def nearest_center_codes(
    codes: Float[Array, "N k"], centers: Float[Array, "C k"]
) -> Float[Array, "N k"]:
    """sgn(μ_c*) with c* the centre whose sign code is Hamming-nearest to sgn(h) (first on ties).

    The reference's `evaluation.py` / `compute_result(…, centers)` codes every image this way
    (each code snapped to a class prototype); `sgn(h)` itself is METHODS §5.5's code.

    Example:
      >>> mu = jnp.asarray([[1.0, 1.0, 1.0], [-1.0, -1.0, 1.0]])
      >>> nearest_center_codes(jnp.asarray([[-0.1, -2.0, -3.0]]), mu).tolist()
      [[-1.0, -1.0, 1.0]]
    """
    if codes.ndim != 2 or centers.ndim != 2 or centers.shape[1] != codes.shape[1]:
        raise ValueError(
            f"codes [N, k] and centers [C, k] must share k, got shapes {tuple(codes.shape)} "
            f"and {tuple(centers.shape)}."
        )
    center_bits = binary_sign(centers.astype(jnp.float32))
    agreement = jnp.matmul(binary_sign(codes.astype(jnp.float32)), center_bits.T)  # k − 2·Ham
    # A one-hot product instead of a gather: exact for ±1 entries, and it keeps the batch
    # sharding of `codes` under an explicit "data" mesh (a gather cannot resolve it).
    nearest = jax.nn.one_hot(jnp.argmax(agreement, axis=1), centers.shape[0], dtype=jnp.float32)
    return jnp.matmul(nearest, center_bits)
