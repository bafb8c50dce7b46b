"""DCDH: Deep Center-Based Dual-Constrained Hashing (Zhang, Zhe, Chen & Yan, Pattern
Recognition 117, 107976, 2021) as a `HashingMethod`.

Model: a backbone trunk (DCDH's attention net `dfh_net` by default: FC 1024 → BN → ReLU) and,
per code length k, a hash layer FC k → BatchNorm (no tanh) whose output H `[B, k]` is the
relaxed code, plus learnable class centres μ `[C, k]` (standard-normal init, as the reference's
`torch.randn`). Loss per head (`dpq_jax.losses.gaussian_center`, METHODS §5.5):

    L = L1 + 0.1 · L2 + 0.01 · Lq
    L1 = −mean log p(y | h),  p(c | h) ∝ exp(−σ/2 ‖h − μ_c‖²), σ = 0.25
    L2 = mean_{i≠j} softplus((k/2) cos(μ_i, μ_j))
    Lq = ‖H − B‖² / N,  B = sgn(Y pinv(YᵀY) Yᵀ sgn(H) + η H) of the whole batch, η = 0.01

Several code lengths (`config.model.bits = (12, 24, 36, 48)`) train one head (hash layer and
centres) each on the shared trunk with the sum of the per-head losses; one length is exactly
the paper's method. Codes: the sign of H as 0/1 bits, Hamming ranking (METHODS §5.5). With
`model.encode = "nearest_center"` every code is instead the sign code of the Hamming-nearest
centre, as the reference repository's `evaluation.py` scores (a parity option; it turns
retrieval into classification by prototype).

Reference recipe (32×32 FaceScrub / YouTube Faces): Adam lr 0.005 (AMSGrad on the net, plain
Adam on the centres), weight decay 1e-4 added to the gradient (PyTorch's `weight_decay`, on
every parameter including the centres), batch 256, 600 epochs (METHODS §5.5; the released
`dcdh_train.py` sets EPOCHS = 700), ×0.5 every 100 epochs, early stop when the epoch loss has
not improved for a quarter of the epochs, checkpoint of the lowest training loss. Our configs
select on validation mAP instead.

Config (`model` and `loss` groups):
  model.backbone = dict(name="dfh_net", input_hw=(32, 32));  # or any registered backbone
  model.features = 1024; model.bits = 48 or (12, 24, 36, 48); model.dtype = "float32";
  model.encode = "sign" | "nearest_center";
  loss.sigma = 0.25; loss.separation_weight = 0.1; loss.quantization_weight = 0.01;
  loss.eta = 0.01; loss.ridge = 0.0 (the reference code's λ = 1 gives the same B but for
  rare ties; see `dpq_jax.losses.gaussian_center`).

References:
  Zhang et al., "Deep Center-Based Dual-Constrained Hashing for Discriminative Face Image
  Retrieval", Pattern Recognition 117 (2021) 107976; code mzhang367/DCDH-PyTorch;
  METHODS.md §5.5.
"""

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from dpq_jax.losses import gaussian_center as gc
from dpq_jax.methods import base, multihead
from dpq_jax.models.backbones.cnn_small import BN_EPSILON, BN_MOMENTUM
from dpq_jax.models.backbones.dfh_net import XAVIER_NORMAL
from dpq_jax.typing import Array, Float

_ENCODINGS = ("sign", "nearest_center")
_field = functools.partial(base.field, what="DCDH")


class DCDHHead(nnx.Module):
    """One code length: hash layer FC k → BatchNorm (the relaxed code H) and centres `[C, k]`."""

    def __init__(self, features: int, bits: int, num_classes: int, *, rngs: nnx.Rngs):
        self.fc = nnx.Linear(features, bits, kernel_init=XAVIER_NORMAL, rngs=rngs)
        self.norm = nnx.BatchNorm(bits, momentum=BN_MOMENTUM, epsilon=BN_EPSILON, rngs=rngs)
        self.centers = nnx.Param(jax.random.normal(rngs.params(), (num_classes, bits)))

    def __call__(self, trunk: Float[Array, "B F"]) -> Float[Array, "B k"]:
        return self.norm(self.fc(trunk))


class DCDHModel(multihead.MultiHeadModel):
    """Backbone trunk `[B, H, W, C] -> [B, F]` and one `DCDHHead` per code length; calling it
    gives H of each head, float32 (BN in the model's train/eval mode)."""

    method_name = "DCDH"

    def __init__(self, in_channels: int, *, num_classes: int, encode: str, **kwargs):
        """`kwargs`: `MultiHeadModel`'s (backbone, backbone_kwargs, features, code_lengths,
        dtype, rngs); `num_classes` rows of centres per head; `encode` as `model.encode`."""
        if num_classes < 1:
            raise ValueError(f"DCDH needs at least one class for its centres, got {num_classes}.")
        head = functools.partial(DCDHHead, num_classes=num_classes)
        super().__init__(in_channels, make_head=head, **kwargs)
        self.encode = encode


class DCDH(multihead.MultiHeadHashing):
    """DCDH (see the module docstring); `build` gives a `DCDHModel`."""

    name = "dcdh"
    model_class = DCDHModel
    backbone_examples = "'dfh_net' or 'cnn_small'"
    default_features = 1024

    def model_kwargs(self, model_cfg, num_classes: int) -> dict:
        """`num_classes` sets the centres; `model.encode` the code (checked)."""
        encode = _field(model_cfg, "encode", "sign")
        if encode not in _ENCODINGS:
            raise ValueError(f"model.encode must be one of {_ENCODINGS}, got {encode!r}.")
        return dict(num_classes=int(num_classes), encode=encode)

    def loss_fn(self, model: DCDHModel, batch, loss_cfg):
        """Sum over heads of `L1 + w2·L2 + wq·Lq` (METHODS §5.5).

        Returns:
          `(loss, aux)`; aux holds per head `center_<k>bit` (L1), `separation_<k>bit` (L2),
          `quantization_<k>bit` (Lq), `center_accuracy_<k>bit` (the batch fraction whose most
          probable centre is its label; the first label of multi-hot rows) and
          `bit_balance_<k>bit` (mean |batch mean of sgn(h)|: 0 when every bit splits evenly).
        """
        sigma = float(_field(loss_cfg, "sigma"))
        separation_weight = float(_field(loss_cfg, "separation_weight"))
        quantization_weight = float(_field(loss_cfg, "quantization_weight"))
        eta = float(_field(loss_cfg, "eta"))
        ridge = float(_field(loss_cfg, "ridge", 0.0))
        labels = batch["label"]
        total, aux = 0.0, {}
        for bits, head, codes in zip(
            model.code_lengths, model.heads, model(batch["image"]), strict=True
        ):
            centers = head.centers[...]
            loss, parts = gc.dcdh_loss(
                codes,
                centers,
                labels,
                sigma=sigma,
                separation_weight=separation_weight,
                quantization_weight=quantization_weight,
                eta=eta,
                ridge=ridge,
            )
            total = total + loss
            for key, value in parts.items():
                aux[f"{key}_{bits}bit"] = value
            nearest = jnp.argmax(gc.center_log_probs(codes, centers, sigma=sigma), axis=1)
            target = labels if labels.ndim == 1 else jnp.argmax(labels, axis=1)
            aux[f"center_accuracy_{bits}bit"] = jnp.mean((nearest == target).astype(jnp.float32))
            aux[f"bit_balance_{bits}bit"] = jnp.mean(
                jnp.abs(jnp.mean(gc.binary_sign(codes), axis=0))
            )
        return total, aux

    def relaxed_codes(self, model: DCDHModel, images):
        """H per head (`encode="sign"`), or the ±1 code of the nearest centre per head."""
        codes = model(images)
        if model.encode == "nearest_center":
            return tuple(
                gc.nearest_center_codes(h, head.centers[...])
                for h, head in zip(codes, model.heads, strict=True)
            )
        return codes


METHOD = DCDH()
