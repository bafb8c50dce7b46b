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

import math

import ml_collections

from dpq_jax import config_lib
from dpq_jax.methods import opqn

# Per-dataset normalisation (OPQN data_loader.py; CFW from the first commit).
NORMALIZE = {
    "facescrub": ((0.639, 0.479, 0.404), (0.216, 0.183, 0.171)),
    "youtube_faces": ((0.639, 0.479, 0.404), (0.216, 0.183, 0.171)),
    "cfw60k": ((0.507, 0.403, 0.344), (0.259, 0.226, 0.212)),
}
# Rough train split sizes (override with train_images=N after the first start prints it).
TRAIN_IMAGES_ESTIMATE = {"facescrub": 65000, "youtube_faces": 63800, "cfw60k": 54000}


def get_config(arg=None):
    arg = config_lib.parse_arg(arg, bits=48, dataset="facescrub", train_images=0, runlocal=False)
    if arg.dataset not in NORMALIZE:
        raise ValueError(f"dataset={arg.dataset!r}; choose one of {sorted(NORMALIZE)}.")
    # (M, K, D) at 32×32: 2×256, 4×64, 6×64 (D = 516), 8×64 (METHODS §1.1).
    num_codebooks, codebook_size, embedding_dim = opqn.reference_shape(arg.bits, 32)
    batch_size = 256
    train_images = arg.train_images or TRAIN_IMAGES_ESTIMATE[arg.dataset]
    steps_per_epoch = math.ceil(train_images / batch_size)

    config = ml_collections.ConfigDict()
    config.seed = 0
    config.protocol = "faces_seen"

    config.input = ml_collections.ConfigDict()
    config.input.dataset = arg.dataset
    config.input.data_dir = ""  # tfds data_dir; "" = ~/tensorflow_datasets
    config.input.source_dir = ""  # a folder with the release files; "" = the manual dir
    config.input.batch_size = batch_size
    config.input.eval_batch_size = 512
    mean, std = NORMALIZE[arg.dataset]
    norm = f"value_range(0,1)|normalize({mean},{std})"
    # Resize(35): shorter side to 35, aspect kept (DDH pickles are 32×32, CFW folders stored
    # at 35×35, so both come out 35×35).
    config.input.pp_train = f"resize(35)|random_crop(32,32)|flip_lr|{norm}"
    config.input.pp_eval = f"resize(35)|center_crop(32,32)|{norm}"
    config.input.prefetch = 4

    config.total_steps = 200 * steps_per_epoch

    config.method = "opqn"
    config.model = ml_collections.ConfigDict()
    config.model.backbone = ml_collections.ConfigDict(
        {"name": "sphereface20", "input_size": 32, "width_multiplier": 1.0}
    )
    config.model.embedding_dim = embedding_dim
    config.model.head = ml_collections.ConfigDict()
    config.model.head.num_codebooks = num_codebooks
    config.model.head.codebook_size = codebook_size
    config.model.head.codebook_init = "dct"
    config.model.head.seed = 0
    config.model.dtype = "float32"  # "bfloat16" on accelerators

    config.loss = ml_collections.ConfigDict()
    config.loss.scale = 20.0  # CosFace s for the 32×32 models
    config.loss.margin = 0.5
    config.loss.entropy_weight = 0.1

    config.optim = ml_collections.ConfigDict()
    config.optim.name = "sgd"
    config.optim.lr = 0.1
    config.optim.momentum = 0.9
    config.optim.nesterov = False
    config.optim.weight_decay = 5e-4
    config.optim.decoupled_weight_decay = False
    config.optim.schedule = "step"
    config.optim.decay_steps = 35 * steps_per_epoch  # ×0.5 every 35 epochs
    config.optim.decay_rate = 0.5
    config.optim.warmup_steps = 0
    config.optim.grad_clip_norm = 0.0

    config.mesh_num_devices = -1
    config.mesh_axis_types = "explicit"
    config.log_training_steps = 100
    config.ckpt_steps = 5 * steps_per_epoch
    config.keep_ckpts = 2
    config.select_on = "val/map@all"
    config.raw_pixel_baseline = True
    config.tensorboard = True

    config.evals = ml_collections.ConfigDict()
    config.evals.val = config_lib.retrieval_eval(
        "val_query", "val_database", log_steps=5 * steps_per_epoch, final=False
    )
    config.evals.test = config_lib.retrieval_eval("query", "database", log_steps=0, final=True)

    if arg.runlocal:
        config_lib.run_locally(config)
        config.optim.decay_steps = 2
        config.model.backbone.width_multiplier = 0.0625
        config.model.backbone.input_size = 32
    return config.lock()
