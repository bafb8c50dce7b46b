r"""Klein & Wolf's supervised product-quantization layer (DPQ-KW): learned assignment maps and
learned codebooks, with soft and hard outputs joined by a straight-through estimator.

The embedding x `[B, D]` is split into M sub-vectors x_m `[d]`. For each subspace
(METHODS.md §5.6):

    p_m = softmax_k(x_m A_m / T)                      soft assignment, A_m `[d, K]` learned
    s_m = Σ_k p_mk c_mk = C_m p_m                     soft quantization, C_m `[K, d]` learned
    e_m = onehot(argmax_k x_m A_m)                    hard assignment
    h_m = C_m ê_m,  ê_m = e_m + p_m − sg(p_m)         hard quantization, straight-through

`sg` is `stop_gradient`. The value of ê_m is exactly e_m (`p − sg(p)` is exactly 0), so h_m is
exactly the codeword c_{m, code_m}; its gradient is that of the soft path with respect to the
assignment, ∂h_m/∂p_m = C_m, while the codebook receives the gradient of the *chosen*
codeword, ∂h_m/∂c_mk = e_mk. The reference's `MyArgmax` returns integer indices, which
`F.one_hot` turns into a constant: its hard path reaches the codebooks but never p, A or the
backbone (`straight_through=False` reproduces that, for ablations).

T is the softmax temperature (1 in the paper and the reference code). The code of an item is
`argmax_k x_m A_m`, which T does not change. The query side uses the soft quantization of the
raw query and the squared-L2 table `||s_m − c_mk||²` (`dpq_jax.search.luts.lut_l2`).

Everything is computed in float32 at HIGHEST matmul precision; the maths is in pure functions
and `KWPQHead` only holds the two parameter arrays.

References:
  B. Klein & L. Wolf, "End-to-End Supervised Product Quantization for Image Search and
  Retrieval", CVPR 2019 (arXiv 1711.08589): soft and hard representations, straight-through
  estimator. METHODS.md §5.6 (the OPQN repository's `dpq_layer.py`, and its trap).
"""

import flax.struct
import jax
import jax.numpy as jnp
from flax import nnx

from dpq_jax.quantizers.opqn import assignment_logits
from dpq_jax.quantizers.pq import MAX_CODEBOOK_SIZE, argmax_codes, soft_quantize, split_subvectors
from dpq_jax.typing import Array, Float, UInt8

# Initialisers of A and C: "normal" is the reference's torch.randn (N(0, 1)); "xavier_uniform"
# is Glorot per subspace, which starts with flatter assignments when d is large.
INITS = ("normal", "xavier_uniform")


def _check_temperature(temperature: float) -> None:
    if not temperature > 0:
        raise ValueError(f"The softmax temperature must be positive, got {temperature}.")


def soft_assign(
    x_sub: Float[Array, "B M d"], assign: Float[Array, "M d K"], temperature: float = 1.0
) -> Float[Array, "B M K"]:
    """Soft assignment `p_m = softmax_k(x_m A_m / T)` on the raw (unnormalised) sub-vectors.

    Args:
      x_sub: `[B, M, d]` sub-vectors (any float dtype; computed in float32).
      assign: `[M, d, K]` assignment maps A_m.
      temperature: T > 0 (1 in the reference).

    Returns:
      `[B, M, K]` float32 probabilities, each `[K]` row summing to 1.

    Raises:
      ValueError: the shapes do not match, or T <= 0.

    References:
      Klein & Wolf, CVPR 2019 (soft representation); METHODS.md §5.6, `p_m = softmax(x_m A_m)`.
    """
    _check_temperature(temperature)
    return jax.nn.softmax(assignment_logits(x_sub, assign) / temperature, axis=-1)


def hard_assign(logits: Float[Array, "B M K"]) -> Float[Array, "B M K"]:
    """One-hot hard assignment `e_m = onehot(argmax_k logits_mk)` (first maximum on ties).

    It is a constant for autodiff: the gradient of anything through it alone is 0.

    Args:
      logits: `[B, M, K]` assignment scores (or probabilities: the argmax is the same).

    Returns:
      `[B, M, K]` float32, exactly one 1 per `[K]` row.

    Raises:
      ValueError: logits are not `[B, M, K]`, or K > 256.
    """
    codes = argmax_codes(logits)  # [B, M] uint8
    return jax.nn.one_hot(codes, logits.shape[-1], dtype=jnp.float32)


def straight_through(
    probs: Float[Array, "B M K"], onehot: Float[Array, "B M K"], enabled: bool = True
) -> Float[Array, "B M K"]:
    """The straight-through hard assignment `ê = e + p − sg(p)`.

    Forward: exactly `onehot` (`p − sg(p)` is 0 in floating point). Backward: the identity to
    `probs`, so a loss on the hard quantization `C ê` sends p the gradient the soft path
    `C p` would get at the same output gradient. `enabled=False` returns `sg(onehot)`: the
    reference's hard path, which gives p no gradient at all.

    Args:
      probs: `[B, M, K]` soft assignments p.
      onehot: `[B, M, K]` hard assignments e (from `hard_assign`).
      enabled: use the estimator (True) or block the gradient to p (the reference).

    Returns:
      `[B, M, K]` float32 equal to `onehot`.

    Raises:
      ValueError: the shapes differ.

    References:
      Bengio, Léonard & Courville, arXiv 1308.3432 (2013), straight-through estimator;
      Klein & Wolf, CVPR 2019 (its use for the hard representation); METHODS.md §5.6 (trap).
    """
    if probs.shape != onehot.shape:
        raise ValueError(
            f"probs {tuple(probs.shape)} and onehot {tuple(onehot.shape)} must have the same "
            f"[B, M, K] shape."
        )
    onehot = jax.lax.stop_gradient(onehot.astype(jnp.float32))
    if not enabled:
        return onehot
    probs = probs.astype(jnp.float32)
    return onehot + (probs - jax.lax.stop_gradient(probs))


@flax.struct.dataclass
class KWQuantized:
    """What the DPQ-KW layer gives for a batch.

    Attributes:
      feats: `[B, D]` float32, the embedding x fed to the layer.
      soft: `[B, D]` float32, the soft quantization `[C_m p_m]_m`.
      hard: `[B, D]` float32, the hard quantization `[c_{m, code_m}]_m` (straight-through).
      probs: `[B, M, K]` float32 soft assignments p.
      codes: `[B, M]` uint8 codes `argmax_k x_m A_m`.
    """

    feats: Float[Array, "B D"]
    soft: Float[Array, "B D"]
    hard: Float[Array, "B D"]
    probs: Float[Array, "B M K"]
    codes: UInt8[Array, "B M"]


def quantize(
    feats: Float[Array, "B D"],
    assign: Float[Array, "M d K"],
    codebooks: Float[Array, "M K d"],
    *,
    temperature: float = 1.0,
    use_straight_through: bool = True,
) -> KWQuantized:
    """The DPQ-KW layer's forward pass: soft and hard quantization of a batch.

    Args:
      feats: `[B, D]` embeddings, D = M·d (any float dtype; computed in float32).
      assign: `[M, d, K]` assignment maps A_m.
      codebooks: `[M, K, d]` codewords (rows) C_m.
      temperature: softmax temperature T > 0.
      use_straight_through: pass the hard path's gradient to p (True) or not (the reference).

    Returns:
      `KWQuantized(feats, soft, hard, probs, codes)` (see its attributes for the shapes).

    Raises:
      ValueError: mismatched shapes, K > 256 or T <= 0.

    References:
      Klein & Wolf, CVPR 2019; METHODS.md §5.6 (`s = [C_m p_m]`, `h = [C_m onehot(argmax p_m)]`).
    """
    _check_temperature(temperature)
    num_codebooks, dim, size = assign.shape if assign.ndim == 3 else (None, None, None)
    if codebooks.shape != (num_codebooks, size, dim):
        raise ValueError(
            f"Assignment maps [M, d, K] {tuple(assign.shape)} do not match codebooks [M, K, d] "
            f"{tuple(codebooks.shape)}."
        )
    feats = feats.astype(jnp.float32)
    x_sub = split_subvectors(feats, assign.shape[0])  # [B, M, d]
    logits = assignment_logits(x_sub, assign)  # [B, M, K]
    probs = jax.nn.softmax(logits / temperature, axis=-1)
    codes = argmax_codes(logits)  # [B, M] uint8
    onehot = hard_assign(logits)  # [B, M, K], the same argmax
    hard_assignment = straight_through(probs, onehot, use_straight_through)
    soft = soft_quantize(probs, codebooks)  # [B, M, d]
    hard = soft_quantize(hard_assignment, codebooks)  # [B, M, d]: exact codewords
    return KWQuantized(
        feats=feats,
        soft=soft.reshape(feats.shape),
        hard=hard.reshape(feats.shape),
        probs=probs,
        codes=codes,
    )


def _init(kind: str, key, shape, in_axis: int, out_axis: int):
    if kind == "normal":
        return jax.random.normal(key, shape, jnp.float32)
    if kind == "xavier_uniform":
        init = jax.nn.initializers.xavier_uniform(
            in_axis=in_axis, out_axis=out_axis, batch_axis=(0,)
        )
        return init(key, shape, jnp.float32)
    raise ValueError(f"Unknown DPQ-KW init {kind!r}; use one of {INITS}.")


class KWPQHead(nnx.Module):
    """DPQ-KW layer: learned A `[M, d, K]` and learned codebooks C `[M, K, d]` (both `nnx.Param`).

    Attributes:
      assign: `nnx.Param [M, d, K]`, the assignment maps A_m.
      codebooks: `nnx.Param [M, K, d]`, the codewords (trained, unlike OPQN's).
      temperature: the softmax temperature T.
      use_straight_through: whether the hard path passes gradients to p.

    References:
      Klein & Wolf, CVPR 2019; METHODS.md §5.6 (`DPQ` in the OPQN repository's `dpq_layer.py`).
    """

    def __init__(
        self,
        features: int,
        *,
        num_codebooks: int,
        codebook_size: int,
        temperature: float = 1.0,
        use_straight_through: bool = True,
        init: str = "normal",
        rngs: nnx.Rngs,
    ):
        """Builds the layer.

        Args:
          features: D, the embedding width.
          num_codebooks: M, dividing D.
          codebook_size: K in [1, 256] (uint8 codes); unlike OPQN, K may exceed d = D/M.
          temperature: softmax temperature T > 0.
          use_straight_through: pass the hard path's gradient to p (False: the reference).
          init: `"normal"` (the reference's N(0, 1) for A and C) or `"xavier_uniform"`.
          rngs: `nnx.Rngs` for the parameters.

        Raises:
          ValueError: M does not divide D, K outside [1, 256], T <= 0, or an unknown init.
        """
        if num_codebooks < 1 or features % num_codebooks:
            raise ValueError(
                f"num_codebooks M={num_codebooks} must divide the embedding width "
                f"D={features}; choose M among the divisors of D."
            )
        if not 1 <= codebook_size <= MAX_CODEBOOK_SIZE:
            raise ValueError(
                f"codebook_size K={codebook_size} must be in [1, 256] so codes fit uint8."
            )
        _check_temperature(temperature)
        if init not in INITS:
            raise ValueError(f"Unknown DPQ-KW init {init!r}; use one of {INITS}.")
        dim = features // num_codebooks
        self.num_codebooks = num_codebooks
        self.codebook_size = codebook_size
        self.features = features
        self.temperature = float(temperature)
        self.use_straight_through = bool(use_straight_through)
        # Glorot fans per subspace: A_m maps d -> K; a codebook C_m [K, d] has the fans of C_m^T.
        self.assign = nnx.Param(
            _init(init, rngs.params(), (num_codebooks, dim, codebook_size), -2, -1)
        )  # [M, d, K]
        self.codebooks = nnx.Param(
            _init(init, rngs.params(), (num_codebooks, codebook_size, dim), -1, -2)
        )  # [M, K, d]

    def __call__(self, feats: Float[Array, "B D"]) -> KWQuantized:
        """Soft and hard quantization of `feats [B, D]` (see `quantize`)."""
        return quantize(
            feats,
            self.assign[...],
            self.codebooks[...],
            temperature=self.temperature,
            use_straight_through=self.use_straight_through,
        )

    def codes(self, feats: Float[Array, "B D"]) -> UInt8[Array, "B M"]:
        """Database codes `argmax_k x_m A_m` `[B, M]` uint8 of `feats [B, D]`."""
        x_sub = split_subvectors(feats.astype(jnp.float32), self.num_codebooks)
        return argmax_codes(assignment_logits(x_sub, self.assign[...]))

    def probs(self, feats: Float[Array, "B D"]) -> Float[Array, "B M K"]:
        """Soft assignments of the raw `feats [B, D]` at the layer's temperature (query side)."""
        x_sub = split_subvectors(feats.astype(jnp.float32), self.num_codebooks)
        return soft_assign(x_sub, self.assign[...], self.temperature)
