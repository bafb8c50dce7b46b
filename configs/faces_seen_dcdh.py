r"""DCDH on FaceScrub or YouTube Faces (DDH 32×32 release), seen identities, the paper's recipe.

Data: the DDH pickles (FaceScrub 530 identities, YouTube Faces 1595; `train_set/` and
`test_set/` folders of `(x, y)` pickles, rows 3×32×32), read by `dpq_jax.data.ddh_faces`. Put
them in `~/tensorflow_datasets/downloads/manual/facescrub_ddh/` (or `youtube_faces_ddh/`), or
set `--config.input.data_dir` to a TFDS data_dir holding them. Protocol `faces_seen`: database
= the train split, queries = the test split (same identities); validation = one training
image per identity against the other training images.

Recipe (DCDH, Zhang, Zhe, Chen & Yan, Pattern Recognition 2021; METHODS §5.5; code
mzhang367/DCDH-PyTorch): the DFHNet attention net at 32×32 (FC 2176 → 1024 → BN → ReLU), a
hash layer FC k → BN (no tanh) and learnable centres per code length; L = L1 (σ = 0.25) +
0.1·L2 + 0.01·Lq (η = 0.01); Adam lr 0.005 (AMSGrad on the net, plain Adam on the centres),
weight decay 1e-4 added to the gradient, batch 256, 600 epochs (the released code: 700), ×0.5
every 100 epochs, early stop after a quarter of the epochs without a lower epoch loss,
checkpoint of the lowest training loss; no augmentation. Input: the reference's `deprocess_image` standardises with the global mean and
std, ×0.1, clipped to ±1; here the per-channel FaceScrub statistics (the first convolutions of
both DFHNet branches are followed by BatchNorm, so the input scale does not matter).

Deviations: AMSGrad on the centres too (one optimizer); no early stop (the full 600 epochs),
the checkpoint selected on validation mAP instead of the training loss.

The epoch counts become steps with `train_images` (default: an estimate; the trainer prints the
real train split size on start, pass it as `:train_images=N`).

Run (GPU recommended):

  dpq-train --config=configs/faces_seen_dcdh.py:bits=48 --workdir=workdirs/facescrub_dcdh_48
  dpq-train --config=configs/faces_seen_dcdh.py:bits=12,dataset=youtube_faces \
      --workdir=workdirs/youtube_dcdh_12

Arguments: `bits` (12, 24, 36, 48), `multihead` (all four from one run), `dataset` (facescrub |
youtube_faces), `train_images`, `runlocal` (tiny).

Expected: the mAP@all of the DCDH paper's FaceScrub / YouTube Faces tables (numbers not
checked here; the reference's `evaluation.py` scores nearest-centre codes, `model.encode`);
not yet reproduced here (no data on the project machines).
"""

import math

import ml_collections

from dpq_jax import config_lib

# Normalisation: the FaceScrub statistics of OPQN's data_loader.py (config_lib.FACE_SETS).
DATASETS = ("facescrub", "youtube_faces")
CODE_LENGTHS = (12, 24, 36, 48)


def get_config(arg=None):
    arg = config_lib.parse_arg(
        arg, bits=48, multihead=False, dataset="facescrub", train_images=0, runlocal=False
    )
    if arg.bits not in CODE_LENGTHS:
        raise ValueError(f"bits={arg.bits} not supported; choose one of {CODE_LENGTHS}.")
    norm, train_images = config_lib.face_data(arg.dataset, arg.train_images, choices=DATASETS)
    steps_per_epoch = math.ceil(train_images / 256)

    config = ml_collections.ConfigDict()
    config.seed = 0
    config.protocol = "faces_seen"
    # The reference trains without augmentation.
    config.input = config_lib.image_input(
        arg.dataset, batch_size=256, eval_batch_size=512, pp_train=norm, pp_eval=norm, prefetch=4
    )

    config.method = "dcdh"
    config.model = ml_collections.ConfigDict()
    config.model.backbone = ml_collections.ConfigDict({"name": "dfh_net", "input_hw": (32, 32)})
    config.model.features = 1024
    config.model.bits = CODE_LENGTHS if arg.multihead else arg.bits
    config.model.dtype = "float32"  # "bfloat16" on accelerators
    config.model.encode = "sign"  # "nearest_center": the reference evaluation.py's codes

    config.loss = ml_collections.ConfigDict()
    config.loss.sigma = 0.25
    config.loss.separation_weight = 0.1
    config.loss.quantization_weight = 0.01
    config.loss.eta = 0.01
    config.loss.ridge = 0.0  # pinv(YᵀY); the reference code inverts YᵀY + 1·I

    config.optim = config_lib.optimizer(
        "amsgrad",
        lr=0.005,
        weight_decay=1e-4,
        decoupled_weight_decay=False,
        schedule="step",
        decay_steps=100 * steps_per_epoch,  # ×0.5 every 100 epochs
        decay_rate=0.5,
    )
    config_lib.training(
        config,
        total_steps=600 * steps_per_epoch,
        ckpt_steps=10 * steps_per_epoch,
        log_training_steps=100,
    )
    config.evals = ml_collections.ConfigDict()
    config.evals.val = config_lib.retrieval_eval(
        "val_query", "val_database", log_steps=10 * steps_per_epoch, final=False
    )
    config.evals.test = config_lib.retrieval_eval(
        "query", "database", log_steps=0, final=True, precision_ks=(1, 5, 10)
    )

    if arg.runlocal:
        config_lib.run_locally(config)
        config.optim.decay_steps = 2
        config.model.backbone.widths = (4, 4, 8, 8)
        config.model.features = 16
    return config.lock()
