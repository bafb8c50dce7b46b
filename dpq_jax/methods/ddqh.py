"""DDQH: Discriminative Deep Quantization Hashing (Tang, Lin, Li & Yang, IEEE TNNLS 2018) as a
`HashingMethod`: DDH with a dense hash layer in place of divide-and-encode.

**The formulation is ours**, from the published descriptions: no public DDQH code exists, and
METHODS.md §5.3 marks the method **unverified**. The descriptions say DDQH drops DDH's
divide-and-encode module for a simpler (pooled or fully connected) hash layer and puts batch
normalisation after the hash layer, before tanh ("BN-quantization"). The released DDH code
(whose header names DDQH) already has BN -> tanh, so we implement, per METHODS §5.3:

    face feature layer   f = ReLU(BN(Dense(L·k)(trunk)))     (as DDH, L = 4)
    hash layer           h = tanh(BN(Dense(L·k -> k)(f)))     (replaces divide-and-encode)
    classifier           logits = Dense(C)(h)

with DDH's loss, `Σ_k [CE + 0.01·mean||h| − 1|] + 1e-4·Σ kernels²`, its trunk and its search
(sign bits, Hamming). Every piece but the hash layer is `dpq_jax/methods/ddh.py`'s; the face
layer keeps DDH's width L·k so that the hash layer is the only difference between the two.
Results are not comparable with the TNNLS paper's numbers until its formulation is checked.

Config: exactly DDH's `model` and `loss` groups (`model.slice_size` sets the face layer width
L·k), with `config.method = "ddqh"`.

References:
  Tang, Lin, Li & Yang, "Discriminative Deep Quantization Hashing for Face Image Retrieval",
  IEEE TNNLS 2018 [unverified]; METHODS.md §5.3 (and §5.2 for the shared parts).
"""

from dpq_jax.methods.ddh import DDH


class DDQH(DDH):
    """DDQH (see the module docstring): DDH with `hash_layer = "dense"`."""

    name = "ddqh"
    hash_layer = "dense"


METHOD = DDQH()
