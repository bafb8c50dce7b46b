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

import math

import ml_collections

from dpq_jax import config_lib
from dpq_jax.methods import opqn

TRAIN_IMAGES_ESTIMATE = 90000  # a guess: the subset's size is not documented; pass train_images


def get_config(arg=None):
    arg = config_lib.parse_arg(arg, bits=64, train_images=0, runlocal=False)
    num_codebooks, codebook_size, embedding_dim = opqn.reference_shape(arg.bits, 112)
    batch_size = 256
    steps_per_epoch = math.ceil((arg.train_images or TRAIN_IMAGES_ESTIMATE) / batch_size)

    config = ml_collections.ConfigDict()
    config.seed = 0
    config.protocol = "faces_seen"

    config.input = ml_collections.ConfigDict()
    config.input.dataset = "vggface2"
    config.input.data_dir = ""  # tfds data_dir; "" = ~/tensorflow_datasets
    config.input.source_dir = ""  # the vggface2/ folder; "" = the manual dir
    config.input.batch_size = batch_size
    config.input.eval_batch_size = 256
    norm = "value_range(0,1)|normalize((0.5,0.5,0.5),(0.5,0.5,0.5))"
    config.input.pp_train = f"resize(120)|random_crop(112,112)|flip_lr|{norm}"
    config.input.pp_eval = f"resize(120)|center_crop(112,112)|{norm}"
    config.input.prefetch = 4

    config.total_steps = 160 * steps_per_epoch

    config.method = "opqn"
    config.model = ml_collections.ConfigDict()
    config.model.backbone = ml_collections.ConfigDict(
        {"name": "sphereface20", "input_size": 112, "width_multiplier": 1.0}
    )
    config.model.embedding_dim = embedding_dim  # D = M·K, so d = K
    config.model.head = ml_collections.ConfigDict()
    config.model.head.num_codebooks = num_codebooks
    config.model.head.codebook_size = codebook_size
    config.model.head.codebook_init = "dct"
    config.model.head.seed = 0
    config.model.dtype = "float32"  # "bfloat16" on accelerators

    config.loss = ml_collections.ConfigDict()
    config.loss.scale = 40.0  # CosFace s for the VGGFace2 models
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
    config.optim.decay_steps = 20 * steps_per_epoch  # ×0.5 every 20 epochs
    config.optim.decay_rate = 0.5
    config.optim.warmup_steps = 0
    config.optim.grad_clip_norm = 0.0

    config.mesh_num_devices = -1
    config.mesh_axis_types = "explicit"
    config.log_training_steps = 100
    config.ckpt_steps = 5 * steps_per_epoch
    config.keep_ckpts = 2
    config.select_on = "val/map@all"
    config.raw_pixel_baseline = False  # the lazily read 112×112 source is too large to load
    config.tensorboard = True

    # P@10 on VGGFace2, as the reference's test().
    config.evals = ml_collections.ConfigDict()
    config.evals.val = config_lib.retrieval_eval(
        "val_query", "val_database", log_steps=5 * steps_per_epoch, final=False, precision_ks=(10,)
    )
    config.evals.test = config_lib.retrieval_eval(
        "query", "database", log_steps=0, final=True, precision_ks=(10,)
    )

    if arg.runlocal:
        config_lib.run_locally(config)
        config.optim.decay_steps = 2
        config.model.backbone.width_multiplier = 0.0625
    return config.lock()
