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

import math

import ml_collections

from dpq_jax import config_lib

CODE_LENGTHS = (12, 24, 36, 48)  # the DDH protocol
# deprocess_image as a normalisation on the 0..1 scale: (x - mean) / std * 0.1 = (x - mean) /
# (10 std), with the global (all pixels, all channels) mean and std.
DEPROCESS = "value_range(0,1)|normalize((0.507,),(2.146,))"
# Rough train split sizes (override with train_images=N after the first start prints it).
TRAIN_IMAGES_ESTIMATE = {"facescrub": 65000, "youtube_faces": 63800}


def get_config(arg=None):
    arg = config_lib.parse_arg(
        arg, bits=48, multihead=False, dataset="facescrub", train_images=0, runlocal=False
    )
    if arg.bits not in CODE_LENGTHS:
        raise ValueError(f"bits={arg.bits} not supported; choose one of {CODE_LENGTHS}.")
    if arg.dataset not in TRAIN_IMAGES_ESTIMATE:
        raise ValueError(f"dataset={arg.dataset!r}; choose one of {sorted(TRAIN_IMAGES_ESTIMATE)}.")
    batch_size = 256
    train_images = arg.train_images or TRAIN_IMAGES_ESTIMATE[arg.dataset]
    steps_per_epoch = math.ceil(train_images / batch_size)

    config = ml_collections.ConfigDict()
    config.seed = 0
    config.protocol = "faces_seen"

    config.input = ml_collections.ConfigDict()
    config.input.dataset = arg.dataset
    config.input.data_dir = ""  # tfds data_dir; "" = ~/tensorflow_datasets
    config.input.source_dir = ""  # a folder with train_set/ and test_set/; "" = the manual dir
    config.input.batch_size = batch_size
    config.input.eval_batch_size = 512
    config.input.pp_train = DEPROCESS  # no augmentation, as the reference
    config.input.pp_eval = DEPROCESS
    config.input.prefetch = 4

    config.method = "ddqh"
    config.model = ml_collections.ConfigDict()
    config.model.backbone = ml_collections.ConfigDict({"name": "ddh_net", "input_hw": (32, 32)})
    config.model.features = 0  # ddh_net: its concatenation (860 at 32×32); other backbones: D
    config.model.bits = CODE_LENGTHS if arg.multihead else arg.bits
    config.model.slice_size = 4  # face feature layer = 4k, as DDH
    config.model.dtype = "float32"  # "bfloat16" on accelerators

    config.loss = ml_collections.ConfigDict()
    config.loss.quant_weight = 0.01  # weight of mean || |h| - 1 ||_1
    config.loss.magnitude_target = 1.0
    config.loss.kernel_l2 = 1e-4  # Keras l2(1e-4): 1e-4 * sum w^2 over the kernels

    config.optim = config_lib.optimizer("adam", lr=1e-3, schedule="constant")
    config_lib.training(
        config,
        total_steps=200 * steps_per_epoch,
        ckpt_steps=5 * steps_per_epoch,
        log_training_steps=100,
    )
    config.evals = ml_collections.ConfigDict()
    config.evals.val = config_lib.retrieval_eval(
        "val_query", "val_database", log_steps=5 * steps_per_epoch, final=False
    )
    config.evals.test = config_lib.retrieval_eval(
        "query", "database", log_steps=0, final=True, precision_ks=(5, 50)
    )

    if arg.runlocal:
        config_lib.run_locally(config)
        config.model.backbone.widths = (4, 4, 4, 4)
    return config.lock()
