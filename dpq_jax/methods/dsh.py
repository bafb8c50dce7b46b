"""DSH: Deep Supervised Hashing (Liu, Wang, Shan & Chen, CVPR 2016) as a `HashingMethod`.

Model: a backbone (the DSH net by default: conv-pool-LRN x3, FC 500, ReLU) and one linear
FC k head per code length. Loss: DSH's pairwise contrastive loss on the relaxed codes with
margin m = 2k and the regulariser alpha || |b| - 1 ||_1, alpha = 0.01
(`dpq_jax.losses.pairwise`). Codes: sign of the relaxed codes as 0/1 bits, Hamming search.

Several code lengths (`config.model.bits = (12, 24, 36, 48)`) train one head each on the
shared trunk with the sum of the per-head losses, each with its own margin 2k; a single
length (the default) is exactly the paper's method.

Config (`model` and `loss` groups):
  model.backbone = dict(name="dsh_net", input_hw=(28, 28));  # or any registered backbone
  model.features = 500; model.bits = 12 or (12, 24, 36, 48); model.dtype = "float32";
  loss.alpha = 0.01; loss.margin_per_bit = 2.0  (m = 2k).

References:
  Liu et al., "Deep Supervised Hashing for Fast Image Retrieval", CVPR 2016, Sec. 3;
  METHODS.md §5.1.
"""

import functools

import jax.numpy as jnp

from dpq_jax.losses.pairwise import pairwise_hashing_loss
from dpq_jax.methods import base, multihead

_field = functools.partial(base.field, what="DSH")


class DSHModel(multihead.MultiHeadModel):
    """Backbone trunk `[B, H, W, C] -> [B, F]` and one FC k head per code length; calling it
    gives the relaxed codes of each head, float32."""

    method_name = "DSH"


class DSH(multihead.MultiHeadHashing):
    """DSH (see the module docstring); `build` gives a `DSHModel` (`num_classes` is not used:
    DSH has no classifier)."""

    name = "dsh"
    model_class = DSHModel
    backbone_examples = "'dsh_net' or 'cnn_small'"
    default_features = 500

    def loss_fn(self, model: DSHModel, batch, loss_cfg):
        """Sum over heads of DSH's loss with margin `margin_per_bit * k` (METHODS §5.1).

        Returns:
          `(loss, aux)`; aux holds per head `loss_pairs_<k>bit`, `regularizer_<k>bit` and
          `bit_balance_<k>bit` (mean |mean over the batch of sign(b)|: 0 when every bit is
          split evenly).
        """
        alpha = float(_field(loss_cfg, "alpha"))
        margin_per_bit = float(_field(loss_cfg, "margin_per_bit"))
        total, aux = 0.0, {}
        for bits, codes in zip(model.code_lengths, model(batch["image"]), strict=True):
            loss, parts = pairwise_hashing_loss(
                codes, batch["label"], margin=margin_per_bit * bits, alpha=alpha
            )
            total = total + loss
            aux[f"loss_pairs_{bits}bit"] = parts["pairs"]
            aux[f"regularizer_{bits}bit"] = parts["regularizer"]
            aux[f"bit_balance_{bits}bit"] = jnp.mean(jnp.abs(jnp.mean(jnp.sign(codes), axis=0)))
        return total, aux


METHOD = DSH()
