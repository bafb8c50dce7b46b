r"""DPQ-G (Deep Progressive Quantization) on CIFAR-10 with the paper's protocol (`cifar10_dpq`):
one model, codes of 8, 16, 24 and 32 bits.

The `cifar10_dpq` protocol (DVSQ / DPQ): over all 60,000 images, 100 queries per class (1,000)
and 500 training images per class (5,000, of which 50 per class are held out as validation
queries against the other 4,500); the database is the remaining 54,000 (it excludes the
training images and the queries). mAP over the whole database (the reference's `--R=-1`),
P@100, stable ties, AP 0 for zero-hit queries; ADC with the raw query embedding (AQD). CIFAR-10
must be on disk (`cifar-10-batches-py`; `--config.input.source_dir=...` on first use).

The paper's recipe (Gao et al., IJCAI 2019; METHODS §2 and the reference code cfm-uestc/DPQ):
- AlexNet to fc7 (4096, ReLU, dropout 0.5) from Caffe's ImageNet weights (the CaffeNet layout
  of DeepHash's `reference_pretrain.npy`: each of the first two LRNs after its pool), fc8 =
  Dense(4096→300) + tanh, a classifier Dense(4096→10) on fc7; images resized to 256×256,
  random 227 crop and flip, BGR minus the ImageNet mean (no /255).
- L = 4 levels of K = 256 codewords in D = 300 (cosine-softmax, γ = 1), hard residual.
- L_S: DVSQ adaptive margin against the word2vec vectors of the class names, δ_ij = 1 −
  cos(v_i, v_j); L_C: 0.1 × softmax CE; codebooks: SoftDist + HardDist + 0.1 × JCL.
- Encoder: SGD momentum 0.9, lr 1e-3 ×0.9 every 10,000 steps; codebooks: Adam 1e-4 ×0.9
  every 10,000 steps from half of the 64 epochs; batch 256.

Pretrained weights (docs/pretrained.md): `pretrained=DIR` fine-tunes weights converted once by
`dpq-convert`; `alexnet` picks the layout they come in: `caffenet` (default, the reference's
`reference_pretrain.npy`, `dpq-convert --arch=caffenet`), `caffe` (`bvlc_alexnet.npy`,
`--arch=alexnet_caffe`) or `torchvision` (torchvision's `alexnet` .pth, `--arch=alexnet`). With
weights, inputs are preprocessed as those weights expect: Caffe's 0..255 minus the ImageNet
mean (the converter turns conv1 from BGR to RGB), torchvision's [0, 1] with the ImageNet mean
and std.

Where ours differs:
- Without `pretrained`, AlexNet starts from fresh weights and the inputs are scaled to [0, 1]
  and normalised per channel (CIFAR-10 mean and std). The reference's gradient scaling of fc8
  and the classifier ×10 (weights) / ×20 (biases) is not reproduced.
- Label embeddings: learned class vectors by default; `wordvec=PATH` reads a `.txt` / `.npy` of
  [10, 300] vectors (the reference's `cifar_wordvec.txt`) in class-id order.
- Training runs on the 4,500 non-validation images: 64 epochs = 1,125 steps of 256; the
  codebooks train from step 562. Each optimizer counts its own steps (no double-speed decay),
  no epoch is skipped, and both optimizers update on the same batch in one step (the reference
  alternates two steps). `schedule=two_stage` is the default here (the trainer builds the
  optimizer through `Method.make_optimizer`); `schedule=joint` trains everything with one Adam
  (lr 1e-4).
- Evaluation crops the centre (the reference keeps the random crop and flip at test time).
- `stop_grad_features=True` (default) is the released code (the backbone never sees the
  quantization loss); `false` is the end-to-end model the paper describes.

Run (GPU; the AlexNet at 227×227 is too slow for CPU training):

  dpq-convert --arch=caffenet --input=reference_pretrain.npy --output=weights/caffenet
  dpq-train --config=configs/cifar10_dpq.py:pretrained=weights/caffenet \
      --workdir=workdirs/cifar10_dpq --config.input.source_dir=/data/cifar-10-batches-py

Arguments: `levels` (4), `codebook_size` (256), `assign` (cosine | l2), `gamma` (1),
`stop_grad_features` (true), `schedule` (two_stage | joint), `wordvec` (path, "" = learned),
`pretrained` (a dpq-convert folder, "" = fresh weights), `alexnet` (caffenet | caffe |
torchvision), `runlocal` (tiny: 67×67 inputs and AlexNet width 1/32, so only weights converted
from a net of that size load).

Expected: not yet measured. The paper reports DPQ's CIFAR-10 mAP with a pretrained AlexNet
(its Table 1); from scratch, expect well below it.
"""

import ml_collections

from dpq_jax import config_lib
from dpq_jax.methods import dpq
from dpq_jax.models import pretrained as pretrained_lib

_CIFAR_NORM = "value_range(0,1)|normalize((0.491,0.482,0.447),(0.247,0.243,0.262))"
EPOCHS = 64
TRAIN_IMAGES = 4500  # 500 per class minus 50 per class of validation queries
BATCH = 256


def get_config(arg=None):
    arg = config_lib.parse_arg(
        arg,
        levels=4,
        codebook_size=256,
        assign="cosine",
        gamma=1.0,
        stop_grad_features=True,
        schedule="two_stage",
        wordvec="",
        pretrained="",
        alexnet="caffenet",
        runlocal=False,
    )
    if arg.schedule not in ("joint", "two_stage"):
        raise ValueError(f"schedule must be 'joint' or 'two_stage', got {arg.schedule!r}.")
    variants = ("caffenet", "caffe", "torchvision")
    if arg.alexnet not in variants:
        raise ValueError(f"alexnet must be one of {variants}, got {arg.alexnet!r}.")
    norm = _CIFAR_NORM  # fresh weights
    if arg.pretrained:  # the preprocessing the ImageNet weights were trained with
        torchvision = arg.alexnet == "torchvision"
        norm = pretrained_lib.PP_TORCHVISION if torchvision else pretrained_lib.PP_CAFFE_RGB
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.protocol = "cifar10_dpq"
    config.input = ml_collections.ConfigDict()
    config.input.dataset = "cifar10"
    config.input.data_dir = ""  # tfds data_dir for the built dataset; "" = ~/tensorflow_datasets
    config.input.source_dir = ""  # the cifar-10-batches-py folder; "" = the manual dir
    config.input.batch_size = BATCH
    config.input.eval_batch_size = BATCH
    config.input.pp_train = f"resize(256,256)|random_crop(227,227)|flip_lr|{norm}"
    config.input.pp_eval = f"resize(256,256)|center_crop(227,227)|{norm}"
    config.input.prefetch = 2

    config.method = "dpq"
    alexnet = {
        "name": "alexnet",
        "variant": arg.alexnet,
        "input_hw": (67, 67) if arg.runlocal else (227, 227),
        "width": 1 / 32 if arg.runlocal else 1.0,
        "dropout": 0.5,
        "pretrained": arg.pretrained,
    }
    config.model = dpq.model_config(
        alexnet,
        features=4096,  # fc7
        levels=arg.levels,
        codebook_size=arg.codebook_size,
        assign=arg.assign,
        gamma=arg.gamma,
        label_embeddings=arg.wordvec,
        runlocal=arg.runlocal,
    )
    config.loss = dpq.loss_config(arg.stop_grad_features)  # λ = 0.1 (--Lambda)

    total_steps = EPOCHS * TRAIN_IMAGES // BATCH  # 1,125
    # The joint fallback; the two-stage encoder optimizer replaces it below.
    config.optim = config_lib.optimizer("adam", lr=1e-4, schedule="constant")
    config_lib.training(config, total_steps=total_steps, ckpt_steps=125)
    config.evals = ml_collections.ConfigDict()
    config.evals.val = config_lib.retrieval_eval(
        "val_query", "val_database", log_steps=125, final=False, precision_ks=(100,)
    )
    config.evals.test = config_lib.retrieval_eval(
        "query", "database", log_steps=0, final=True, precision_ks=(100,)
    )

    encoder = config_lib.optimizer(
        "sgd", lr=1e-3, momentum=0.9, schedule="exponential", decay_steps=10000, decay_rate=0.9
    )
    codebook = config_lib.optimizer(
        "adam", lr=1e-4, schedule="exponential", decay_steps=10000, decay_rate=0.9
    )
    if arg.runlocal:
        config_lib.run_locally(config)
        config.input.pp_train = f"resize(70,70)|random_crop(67,67)|flip_lr|{norm}"
        config.input.pp_eval = f"resize(70,70)|center_crop(67,67)|{norm}"
    if arg.schedule == "two_stage":
        config.optim = dpq.two_stage_optim(
            encoder, codebook, codebook_start_step=config.total_steps // 2
        )
    return config.lock()
