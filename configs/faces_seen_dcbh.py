r"""DCBH on FaceScrub or YouTube Faces (DDH 32×32 release), seen identities, the paper's setting.

Data: the DDH pickles (FaceScrub 530 identities, YouTube Faces 1595; `train_set/` and
`test_set/` folders of `(x, y)` pickles, rows 3×32×32), read by `dpq_jax.data.ddh_faces`. Put
them in `~/tensorflow_datasets/downloads/manual/facescrub_ddh/` (or `youtube_faces_ddh/`), or
set `--config.input.data_dir` to a TFDS data_dir holding them. Protocol `faces_seen`: database
= the train split, queries = the test split (same identities); validation = one training image
per identity against the other training images.

DCBH (Jang, Jeong, Lee & Cho, ACCV 2018; METHODS §3): the full-width VGG-like DCBH net (32×32
→ pools 16, 8, 4, 2; concat of the two GAP branches, 768), per code length k a descriptor
f = ReLU(BN(Dense(6k))) (288 at 48 bits), block hashing h_i = tanh(max softmax(f_block_i) − ½),
hash and descriptor classifiers; loss CE(h) + CE(f) + 0.1·mean||h| − 0.5| + 1e-4·½Σ‖f − c_y‖²
(centres: Adam plus the explicit centre-loss update, α = 1) + 2e-4·½Σw² on conv/dense kernels.
Codes = h > 0 as 0/1 bits; Hamming mAP@all, P@5, P@50 (the code's top-50), P/R within radius 2,
all on correctly packed bits (the reference's `compactbit` corrupts distances, METHODS §3.5).

Recipe. Paper / code: Adam lr 1e-3 (constant), batch 256, 2000 epochs, batches in file order
(no shuffling), no augmentation, `deprocess_image` ((x − mean)/std × 0.1, clipped to [−1, 1],
with the split's global statistics), checkpoint on the lowest training loss. Ours: the same
optimizer, batch, epochs and no augmentation (`augment` adds OPQN's resize-35 → crop-32 → flip),
but shuffled batches (file order groups identities: biased BN statistics and centre updates) and
the checkpoint selected on validation mAP, never the query set. Normalisation: per-channel
FaceScrub statistics with the std ×10, i.e. `deprocess_image`'s ×0.1 (its clip never acts:
pixels lie within 10 std of the mean; and BN after the bias-free first conv removes the scale
in the forward pass anyway).

The epoch counts become steps with `train_images` (default: an estimate; the trainer prints the
real train split size on start, pass it as `:train_images=N`).

Run (GPU; 2000 epochs is about 500k steps of 256 at 285M multiply-adds per image):

  dpq-train --config=configs/faces_seen_dcbh.py:bits=48 --workdir=workdirs/facescrub_dcbh_48
  dpq-train --config=configs/faces_seen_dcbh.py:multihead,dataset=youtube_faces \
      --workdir=workdirs/youtube_dcbh_multi

Arguments: `bits` (12, 24, 36, 48), `multihead` (all four from one run), `dataset` (facescrub |
youtube_faces), `train_images`, `epochs` (2000, the paper), `width` (1.0, the paper),
`augment`, `runlocal` (tiny).

Expected: the paper compares with DSH, DHCQ, DDH and DDQH on both sets at 12–48 bits, with
numbers computed on the reference's corrupted packing (METHODS §3.5), so not directly comparable
with ours; not yet reproduced here (no data on the project machines).
"""

import math

import ml_collections

from dpq_jax import config_lib

BITS = (12, 24, 36, 48)
# Per-channel pixel statistics: OPQN data_loader.py's, the same for both (config_lib.FACE_SETS).
DATASETS = ("facescrub", "youtube_faces")


def get_config(arg=None):
    arg = config_lib.parse_arg(
        arg,
        bits=48,
        multihead=False,
        dataset="facescrub",
        train_images=0,
        epochs=2000,
        width=1.0,
        augment=False,
        runlocal=False,
    )
    if arg.bits not in BITS:
        raise ValueError(f"bits={arg.bits} not supported; choose one of {BITS}.")
    # std ×10: deprocess_image's ×0.1.
    norm, train_images = config_lib.face_data(
        arg.dataset, arg.train_images, choices=DATASETS, std_scale=10
    )
    if arg.epochs < 1:
        raise ValueError(f"epochs must be positive, got {arg.epochs}.")
    steps_per_epoch = math.ceil(train_images / 256)
    eval_every = max(1, min(50, arg.epochs // 4)) * steps_per_epoch  # every 50 epochs

    config = ml_collections.ConfigDict()
    config.seed = 0
    config.protocol = "faces_seen"
    augment = "resize(35,35)|random_crop(32,32)|flip_lr|" if arg.augment else ""
    config.input = config_lib.image_input(
        arg.dataset,
        batch_size=256,
        eval_batch_size=512,
        pp_train=f"{augment}{norm}",
        pp_eval=norm,
        prefetch=4,
    )

    config.method = "dcbh"
    config.model = ml_collections.ConfigDict()
    config.model.backbone = ml_collections.ConfigDict({"name": "dcbh_net", "width": arg.width})
    config.model.features = 0  # the backbone's concat width (768 · width)
    config.model.bits = BITS if arg.multihead else arg.bits
    config.model.block_size = 6
    config.model.dtype = "float32"  # "bfloat16" on accelerators

    config.loss = ml_collections.ConfigDict()
    config.loss.quant_weight = 0.1
    config.loss.quant_target = 0.5  # the code's |h| target (the paper: 1)
    config.loss.center_weight = 1e-4
    config.loss.center_reduction = "sum"  # tf.nn.l2_loss: a sum over the batch
    config.loss.center_update = True
    config.loss.center_alpha = 1.0
    config.loss.weight_decay = 2e-4  # TF1 λ·l2_loss = λ/2 Σ w² on conv/dense kernels

    config.optim = config_lib.optimizer("adam", lr=1e-3, schedule="constant")
    config_lib.training(
        config,
        total_steps=arg.epochs * steps_per_epoch,
        ckpt_steps=eval_every,
        log_training_steps=100,
    )
    config.evals = config_lib.validation_and_test(eval_every, precision_ks=(5, 50))

    if arg.runlocal:
        config_lib.run_locally(config)
        config.model.backbone.width = 1 / 32  # 2/4/8/16 channels, 24 trunk features
    return config.lock()
