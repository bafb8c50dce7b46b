"""Typed outputs of the quantizer heads (pytrees, so they pass through `jax.jit`)."""

import flax.struct

from dpq_jax.typing import Array, Float, UInt8


@flax.struct.dataclass
class QuantizerOutput:
    """What a product-quantization head returns for a batch.

    Attributes:
      feats: `[B, D]` float32, the continuous embedding x fed to the head.
      soft: `[B, D]` float32, the soft-quantized embedding (concatenated `s_m = C_m p_m`).
      probs: `[B, M, K]` float32, the soft assignment probabilities p_m (rows sum to 1).
      codes: `[B, M]` uint8, the hard codes (argmax assignment per subspace).
    """

    feats: Float[Array, "B D"]
    soft: Float[Array, "B D"]
    probs: Float[Array, "B M K"]
    codes: UInt8[Array, "B M"]
