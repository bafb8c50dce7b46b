r"""OPQN cross-domain / unseen identities: train on VGGFace2, search another face set at 112×112.

Data (OPQN's ImageFolder layout, one sub-folder per identity), under one folder, by default
`~/tensorflow_datasets/downloads/manual/`:

  vggface2/cross_train/<id>/*.jpg, vggface2/cross_test/<id>/*.jpg   (the DCDH/OPQN subset)
  <target>/train/<id>/*.jpg, <target>/test/<id>/*.jpg               (the target face set)

`dpq_jax.data.image_folder.load_cross_domain` stores both at 120×120 (JPEG, read lazily) and
joins them into one source (`vggface2_to_<target>`); the train and eval pipelines then apply
the reference's `Resize(120)` (shorter side to 120, aspect kept: a no-op on the stored squares)
and `CenterCrop(112)`. Protocol `faces_unseen`: train on the VGGFace2 `cross_train`
identities; database = target train, queries = target test (no target identity is seen in
training); validation = held-out VGGFace2 identities.

Recipe (OPQN, METHODS §1; `opqn_main.py -c`): SphereFace-20 at 112×112 (strides 2,2,2,2), the
reference's (M, K) per code length with D = M·K (`dpq_jax.methods.opqn.reference_shape`):

  bits   16        24       36       48       64
  M × K  2 × 256   4 × 64   6 × 64   8 × 64   8 × 256
  D      512       256      384      512      2048

(16/24/36 are the README's `-c` example; 64 bits is inferred, see `REFERENCE_SHAPES`), fixed
orthonormal DCT codebooks, subspace CosFace s = 40, m = 0.5, entropy μ = 0.1, SGD lr 0.1,
momentum 0.9, weight decay 5e-4, batch 256, 160 epochs, ×0.5 every 20 epochs. The cross-domain
recipe uses Resize(120) → CenterCrop(112) and no flip, also in training; inputs are normalised
to [−1, 1]. The test evaluator reports mAP@all and precision@top-5, as the reference's
`test()` does on the target sets.

The epoch counts become steps with `train_images` (the trainer prints the train split size on
start; pass it as `:train_images=N`).

Run (GPU needed):

  dpq-train --config=configs/faces_unseen_opqn.py:bits=36,target=facescrub \
      --workdir=workdirs/unseen_facescrub_36

Arguments: `bits` (16, 24, 36, 48, 64), `target` (facescrub | cfw60k | youtube_faces),
`train_images`, `runlocal` (tiny).

Expected: not yet reproduced here (no data on the project machines); OPQN reports that its
orthonormal codewords generalise better to unseen identities than learned ones.
"""

from dpq_jax import config_lib
from dpq_jax.methods import opqn

TARGETS = ("facescrub", "cfw60k", "youtube_faces")
TRAIN_IMAGES_ESTIMATE = 90000  # override with train_images=N


def get_config(arg=None):
    arg = config_lib.parse_arg(arg, bits=36, target="facescrub", train_images=0, runlocal=False)
    if arg.target not in TARGETS:
        raise ValueError(f"target={arg.target!r}; choose one of {TARGETS}.")
    norm = "value_range(0,1)|normalize((0.5,0.5,0.5),(0.5,0.5,0.5))"
    # Resize(120) keeps the aspect (shorter side 120); cross-domain training has no random
    # crop and no flip (OPQN data_loader.py, cross_eval).
    input_cfg = config_lib.image_input(
        f"vggface2_to_{arg.target}",
        batch_size=256,
        eval_batch_size=256,
        pp_train=f"resize(120)|center_crop(112,112)|{norm}",
        pp_eval=f"resize(120)|center_crop(112,112)|{norm}",
        prefetch=4,
    )
    # D = M·K, so d = K. P@5 on the target sets, as the reference's test() (top=10 only when
    # the target is VGGFace2).
    config = opqn.face_config(
        arg.bits,
        input_size=112,
        protocol="faces_unseen",
        input_cfg=input_cfg,
        train_images=arg.train_images or TRAIN_IMAGES_ESTIMATE,
        epochs=160,
        decay_epochs=20,  # ×0.5 every 20 epochs
        scale=40.0,  # CosFace s for VGGFace2 and cross-domain models
        precision_ks=(5,),
        runlocal=arg.runlocal,
    )
    config.raw_pixel_baseline = False  # the lazily read 112×112 source is too large to load
    return config.lock()
