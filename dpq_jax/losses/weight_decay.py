"""L2 weight decay written into the loss, on kernels only, as Keras and TF1 reference codes do.

`optim.optimizer(weight_decay=…, decoupled_weight_decay=False)` decays every parameter (BN
scales, biases, centres included), as PyTorch's `weight_decay` does. Keras `W_regularizer=
l2(λ)` (DDH) and TF1 `λ * tf.nn.l2_loss(w)` (DCBH) add a penalty on conv and dense kernels
only; `kernel_l2` is that sum of squares, and each method scales it by its own convention:

    Keras l2(λ):          λ * sum w²       (gradient 2λw)
    TF1 λ * l2_loss(w):   λ/2 * sum w²     (gradient λw)
"""

import jax.numpy as jnp
from flax import nnx

from dpq_jax.typing import Array, Float


def kernel_l2(model: nnx.Module, names: tuple[str, ...] = ("kernel",)) -> Float[Array, ""]:
    """Sum of squares of every `nnx.Param` of `model` whose attribute name is in `names`.

    Args:
      model: an NNX module (inside `nnx.value_and_grad`, the traced one).
      names: parameter attribute names to decay (Flax's `Conv`/`Linear` weights are "kernel").

    Returns:
      Scalar float32 `sum_w sum(w²)`; 0 when no parameter matches.
    """
    total = jnp.zeros((), jnp.float32)
    for path, value in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        if path and path[-1] in names:
            total = total + jnp.sum(jnp.square(jnp.asarray(value[...], jnp.float32)))
    return total
