r"""OPQN on the VGGFace2 subset, seen identities, at 112×112 (the reference's VGGFace2 models).

Data: the DCDH/OPQN VGGFace2 subset in torchvision ImageFolder layout,
`vggface2/train/<id>/*.jpg` and `vggface2/test/<id>/*.jpg`, under
`~/tensorflow_datasets/downloads/manual/` (or `--config.input.source_dir=<the vggface2 folder>`).
`dpq_jax.data.image_folder.load_vggface2` (registered as `vggface2`) stores it at 120×120 (JPEG,
read lazily). Protocol `faces_seen`: database = the train split, queries = the test split (same
identities); validation = one training image per identity against the other training images.

Recipe (OPQN, METHODS §1; `opqn_main.py --dataset vggface2`): SphereFace-20 at 112×112 (strides
2,2,2,2), the reference's (M, K) per code length with D = M·K
(`dpq_jax.methods.opqn.reference_shape`):

  bits   24       36       48       64
  M × K  4 × 64   6 × 64   8 × 64   8 × 256
  D      256      384      512      2048

(the code lengths of the released VGGFace2 checkpoints; 64 bits is inferred, see
`REFERENCE_SHAPES`), fixed orthonormal DCT codebooks, subspace CosFace s = 40, m = 0.5, entropy
μ = 0.1, SGD lr 0.1, momentum 0.9, weight decay 5e-4, batch 256, 160 epochs, ×0.5 every 20
epochs. Augmentation: Resize(120) (shorter side, aspect kept) → RandomCrop(112) → flip; test:
Resize(120) → CenterCrop(112); inputs normalised to [−1, 1]. The reference as released gives
VGGFace2 the 32×32 transforms by mistake (METHODS §1.6, trap 2); this is the intended recipe of
its first commit. The test evaluator reports mAP@all and precision@top-10, as the reference's
`test()` does on VGGFace2.

The epoch counts become steps with `train_images` (default: a rough estimate; the trainer
prints the real train split size on start, pass it as `:train_images=N`).

Run (GPU needed):

  dpq-train --config=configs/vggface2_seen_opqn.py:bits=64 --workdir=workdirs/vggface2_64

Arguments: `bits` (24, 36, 48, 64; also 16), `train_images`, `runlocal` (tiny).

Expected: not yet reproduced here (no data on the project machines); the paper's PR figure
shows the 64-bit VGGFace2 model.
"""

from dpq_jax import config_lib
from dpq_jax.methods import opqn

TRAIN_IMAGES_ESTIMATE = 90000  # a guess: the subset's size is not documented; pass train_images


def get_config(arg=None):
    arg = config_lib.parse_arg(arg, bits=64, train_images=0, runlocal=False)
    norm = "value_range(0,1)|normalize((0.5,0.5,0.5),(0.5,0.5,0.5))"
    input_cfg = config_lib.image_input(
        "vggface2",  # source_dir: the vggface2/ folder; "" = the manual dir
        batch_size=256,
        eval_batch_size=256,
        pp_train=f"resize(120)|random_crop(112,112)|flip_lr|{norm}",
        pp_eval=f"resize(120)|center_crop(112,112)|{norm}",
        prefetch=4,
    )
    # D = M·K, so d = K. P@10 on VGGFace2, as the reference's test().
    config = opqn.face_config(
        arg.bits,
        input_size=112,
        protocol="faces_seen",
        input_cfg=input_cfg,
        train_images=arg.train_images or TRAIN_IMAGES_ESTIMATE,
        epochs=160,
        decay_epochs=20,  # ×0.5 every 20 epochs
        scale=40.0,  # CosFace s for the VGGFace2 models
        precision_ks=(10,),
        runlocal=arg.runlocal,
    )
    config.raw_pixel_baseline = False  # the lazily read 112×112 source is too large to load
    return config.lock()
