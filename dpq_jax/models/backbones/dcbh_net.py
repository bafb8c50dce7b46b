"""The DCBH trunk (`FHNet` of Jang, Jeong, Lee & Cho, ACCV 2018): a VGG-like net with two
global-average-pooled branches. The descriptor layer (Dense(bits·L) → BN → ReLU) and the
block hashing are the method's heads (`dpq_jax/methods/dcbh.py`), so one trunk feeds several
code lengths.

Layout (METHODS.md §3.1; the reference's `main.py`), every conv 3×3, stride 1, SAME, no bias,
then BatchNorm (decay 0.9) → ReLU:

    [64, 64] → maxpool → [128, 128] → maxpool → [256, 256, 256] → maxpool → branch A = GAP (256)
                                             → [512, 512, 512] → maxpool → branch B = GAP (512)
    output = concat(B, A)  (768; the reference's `tf.concat([x, x_branch], 1)` order)

**Pooling.** The reference pools 2×2, stride 2, VALID (floor) on 32×32 inputs (32 → 16 → 8 → 4
→ 2). We pool 2×2, stride 2, SAME (ceil: the missing row/column is padded with −∞, so it never
wins the max), which equals VALID on every even size, hence on 32×32 exactly, and keeps odd
maps alive: 28×28 Fashion-MNIST goes 28 → 14 → 7 → 4 → 2 (VALID would give 3 → 1) and 32×26
ORL faces go 32×26 → 16×13 → 8×7 → 4×4 → 2×2. A 3×3 map pools to 2×2.

**Width.** `width` scales every conv: 1.0 is the paper's net (768 features, 7.6M conv weights
at 3 input channels); 0.25 gives 16/32/64/128 channels and 192 features for CPU runs, at about
1/16 of the FLOPs. Channel counts are `max(1, round(c · width))`.

**`features`.** The output width is fixed by the layout: 3rd-stage + 4th-stage channels (768 ·
width). The backbone contract passes a `features` argument; here it must be 0/None ("the
concat width", the recommended setting) or exactly that width — any other value is a
ValueError naming the right one. No projection is added, since DCBH's own Dense(bits·L) follows
the concat. `self.features` holds the width for the method to read.

Init: Xavier-uniform kernels (the reference's `xavier_initializer`); BatchNorm uses the
project's `BN_MOMENTUM` (0.9, the reference's decay) and `BN_EPSILON` (1e-5; TF's
`contrib.layers.batch_norm` uses 1e-3 and a zero-debiased moving mean, immaterial here).
"""

import jax
import jax.numpy as jnp
from flax import nnx

from dpq_jax.models.backbones.cnn_small import BN_EPSILON, BN_MOMENTUM
from dpq_jax.typing import Array, Float

_XAVIER = jax.nn.initializers.xavier_uniform()
# Conv widths per stage; a 2×2 max-pool closes each stage. Branch A pools stage 3, B stage 4.
STAGES = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512))
BRANCH_STAGE = 2  # index of the stage whose pooled map feeds branch A


def stage_widths(width: float = 1.0) -> tuple[tuple[int, ...], ...]:
    """The conv channels of each stage at a width multiplier.

    Example:
      >>> stage_widths(0.25)
      ((16, 16), (32, 32), (64, 64, 64), (128, 128, 128))
    """
    if not width > 0:
        raise ValueError(f"The DCBH net width multiplier must be positive, got {width}.")
    return tuple(tuple(max(1, round(c * width)) for c in stage) for stage in STAGES)


def output_width(width: float = 1.0) -> int:
    """The concat width: last channels of stage 3 (branch A) + stage 4 (branch B).

    Example:
      >>> output_width(1.0), output_width(0.25)
      (768, 192)
    """
    stages = stage_widths(width)
    return stages[BRANCH_STAGE][-1] + stages[-1][-1]


def pooled_size(size: int) -> int:
    """Output size of a 2×2, stride-2 SAME max-pool: `ceil(size / 2)`.

    Example:
      >>> [pooled_size(s) for s in (32, 28, 7, 3, 26, 13)]
      [16, 14, 4, 2, 13, 7]
    """
    return -(-size // 2)


class DCBHNet(nnx.Module):
    """The DCBH conv trunk up to the concatenated GAP branches (see the module docstring)."""

    def __init__(
        self,
        in_channels: int,
        features: int | None = None,
        *,
        width: float = 1.0,
        dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        """Builds the trunk.

        Args:
          in_channels: C of the input images `[B, H, W, C]`.
          features: 0 or None (the concat width, recommended) or exactly `output_width(width)`.
          width: channel multiplier (1.0 = the paper; 0.25 for CPU runs).
          dtype: compute dtype of the convolutions; parameters and the output are float32.
          rngs: `nnx.Rngs`.

        Raises:
          ValueError: non-positive in_channels or width, or `features` not 0/None/the concat
            width.
        """
        if in_channels < 1:
            raise ValueError(f"in_channels must be positive, got {in_channels}.")
        stages = stage_widths(width)
        out = output_width(width)
        if features not in (None, 0, out):
            raise ValueError(
                f"The DCBH net outputs its concat width {out} (768 · width {width}); set "
                f"model.features to 0 (or {out}), got {features}."
            )
        self.features = out
        self.dtype = dtype
        self.stage_sizes = tuple(len(stage) for stage in stages)
        convs, norms = [], []
        channels = in_channels
        for stage in stages:
            for c in stage:
                convs.append(
                    nnx.Conv(
                        channels,
                        c,
                        (3, 3),
                        padding="SAME",
                        use_bias=False,
                        dtype=dtype,
                        kernel_init=_XAVIER,
                        rngs=rngs,
                    )
                )
                norms.append(
                    nnx.BatchNorm(
                        c, momentum=BN_MOMENTUM, epsilon=BN_EPSILON, dtype=dtype, rngs=rngs
                    )
                )
                channels = c
        self.convs = nnx.List(convs)
        self.norms = nnx.List(norms)

    def __call__(self, x: Float[Array, "B H W C"]) -> Float[Array, "B F"]:
        """`[B, H, W, C]` images (any size) -> `[B, features]` float32 (concat of B and A)."""
        x = x.astype(self.dtype)
        layer, branch_a = 0, None
        for stage_index, size in enumerate(self.stage_sizes):
            for _ in range(size):
                x = jax.nn.relu(self.norms[layer](self.convs[layer](x)))
                layer += 1
            x = nnx.max_pool(x, (2, 2), strides=(2, 2), padding="SAME")  # ceil(H/2) x ceil(W/2)
            if stage_index == BRANCH_STAGE:
                branch_a = jnp.mean(x.astype(jnp.float32), axis=(1, 2))  # [B, C3]
        branch_b = jnp.mean(x.astype(jnp.float32), axis=(1, 2))  # [B, C4]
        return jnp.concatenate([branch_b, branch_a], axis=1)  # [B, C4 + C3]


Model = DCBHNet  # the registry's entry point (`registry.get("backbone", "dcbh_net")`)
