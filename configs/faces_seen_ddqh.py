r"""DDQH on FaceScrub or YouTube Faces (DDH 32×32 release), seen identities.

DDQH (Tang, Lin, Li & Yang, IEEE TNNLS 2018; METHODS §5.3, **unverified**: no public code, the
formulation is ours from the published descriptions, see `dpq_jax/methods/ddqh.py`): DDH's
network and loss with the divide-and-encode module replaced by a dense hash layer: per code
length k, face feature layer Dense(4k) → BN → ReLU, then Dense(4k → k) → BN → tanh = h, a
softmax classifier on h; loss CE + 0.01·mean||h| − 1| + Keras L2 1e-4·Σw² on the kernels.

Data, protocol, recipe and departures: exactly `configs/faces_seen_ddh.py` (the DDH pickles;
`faces_seen`: database = train split, queries = test split; DDH trunk on 3×32×32; Adam lr 1e-3
constant, batch 256, 200 epochs, no augmentation, `deprocess_image` as
`normalize(0.507, 2.146)`; selected on the validation split), since DDQH's own training recipe
is not published in code. OPQN re-runs DDQH at its own settings ("DDQH*").

The epoch counts become steps with `train_images` (default: an estimate; the trainer prints the
real train split size on start, pass it as `:train_images=N`).

Run (GPU recommended):

  dpq-train --config=configs/faces_seen_ddqh.py:bits=48 --workdir=workdirs/facescrub_ddqh_48
  dpq-train --config=configs/faces_seen_ddqh.py:bits=12,dataset=youtube_faces \
      --workdir=workdirs/youtube_ddqh_12

Arguments: `bits` (12, 24, 36, 48), `multihead` (all four from one run), `dataset`
(facescrub | youtube_faces), `train_images`, `runlocal` (tiny).

Expected: the TNNLS paper reports mAP on both sets; since our formulation is unverified, treat
a gap to those numbers as a question about the formulation first. Not yet reproduced here (no
data on the project machines).
"""

import os

from dpq_jax import config_lib


def get_config(arg=None):
    """`configs/faces_seen_ddh.py` (same arguments, net, loss and recipe) with the DDQH method."""
    config = config_lib.load_config(
        os.path.join(os.path.dirname(__file__), "faces_seen_ddh.py"), arg
    )
    config.method = "ddqh"  # the one difference: a dense hash layer instead of divide-and-encode
    return config
