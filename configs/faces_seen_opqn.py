r"""OPQN on FaceScrub (DDH 32×32 release), seen identities, at the paper's sizes.

Data: the DDH pickles of FaceScrub (530 identities; `train_set/` and `test_set/` folders of
`(x, y)` pickles, rows 3×32×32), read by `dpq_jax.data.ddh_faces`. Put them in
`~/tensorflow_datasets/downloads/manual/facescrub_ddh/` (or set `--config.input.data_dir` to a
TFDS data_dir whose `downloads/manual/facescrub_ddh/` holds them). Protocol `faces_seen`:
database = the train split, queries = the test split (same identities); validation = one
training image per identity against the other training images. Set `dataset=youtube_faces`
for YouTube Faces (1595 identities) or `dataset=cfw60k` for CFW-60K identity folders.

Recipe (OPQN, Zhang, Zhe & Yan, Pattern Recognition 2023; METHODS §1): SphereFace-20 at 32×32
(strides 1,2,2,2), D = 512 (516 at 36 bits) with the paper's (M, K) per code length, fixed
orthonormal DCT codebooks, subspace CosFace s = 20, m = 0.5, entropy μ = 0.1, SGD lr 0.1,
momentum 0.9, weight decay 5e-4, batch 256, 200 epochs, ×0.5 every 35 epochs. Augmentation:
resize 35 → random crop 32 → flip; normalisation with the FaceScrub statistics.

The epoch counts become steps with `train_images` (default: an estimate; the trainer prints the
real train split size on start, pass it as `:train_images=N`).

Run (GPU recommended; a CPU run of the full schedule takes days):

  dpq-train --config=configs/faces_seen_opqn.py:bits=48 --workdir=workdirs/facescrub_48
  dpq-train --config=configs/faces_seen_opqn.py:bits=36,dataset=youtube_faces \
      --workdir=workdirs/youtube_36

Arguments: `bits` (16, 24, 36, 48), `dataset` (facescrub | youtube_faces | cfw60k),
`train_images`, `runlocal` (tiny).

Expected: the paper reports mAP@all on FaceScrub of about 0.8–0.9 (16–48 bits) with precision
@top-5 above that; not yet reproduced here (no data on the project machines).
"""

from dpq_jax import config_lib
from dpq_jax.methods import opqn

DATASETS = ("facescrub", "youtube_faces", "cfw60k")  # statistics: config_lib.FACE_SETS


def get_config(arg=None):
    arg = config_lib.parse_arg(arg, bits=48, dataset="facescrub", train_images=0, runlocal=False)
    norm, train_images = config_lib.face_data(arg.dataset, arg.train_images, choices=DATASETS)
    # Resize(35): shorter side to 35, aspect kept (DDH pickles are 32×32, CFW folders stored
    # at 35×35, so both come out 35×35).
    input_cfg = config_lib.image_input(
        arg.dataset,
        batch_size=256,
        eval_batch_size=512,
        pp_train=f"resize(35)|random_crop(32,32)|flip_lr|{norm}",
        pp_eval=f"resize(35)|center_crop(32,32)|{norm}",
        prefetch=4,
    )
    # (M, K, D) at 32×32: 2×256, 4×64, 6×64 (D = 516), 8×64 (METHODS §1.1).
    config = opqn.face_config(
        arg.bits,
        input_size=32,
        protocol="faces_seen",
        input_cfg=input_cfg,
        train_images=train_images,
        epochs=200,
        decay_epochs=35,  # ×0.5 every 35 epochs
        scale=20.0,  # CosFace s for the 32×32 models
        runlocal=arg.runlocal,
    )
    return config.lock()
