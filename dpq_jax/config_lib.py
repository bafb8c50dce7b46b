"""Helpers shared by the experiment files in `configs/` (they import from here, not from each
other, so a config loads from any working directory and after installation).

After big_vision `configs/common.py` (`parse_arg`) and flax `examples/*/configs`.
"""

import importlib.util
import os

import ml_collections

from dpq_jax.search import legacy


def parse_arg(arg: str | None, lazy: bool = False, **spec) -> ml_collections.ConfigDict:
    """Parses a `--config=file.py:ARG` string such as `"bits=32,protocol=orl_unseen,runlocal"`.

    Args:
      arg: comma-separated `key=value` pairs or bare `key` (meaning True); may be None or "".
      lazy: allow keys that `spec` does not name (kept as strings).
      **spec: `key=default` or `key=(default, type)`; bare keys must be booleans.

    Returns:
      A ConfigDict with every key of `spec`, converted to the type of its default.

    Raises:
      ValueError: an unknown key, or a value that does not convert.

    Example:
      >>> parse_arg("bits=24,runlocal", bits=32, runlocal=False).bits
      24
    """
    parsed = ml_collections.ConfigDict()
    types = {}
    for key, default in spec.items():
        if isinstance(default, tuple) and len(default) == 2 and isinstance(default[1], type):
            default, types[key] = default
        else:
            types[key] = type(default)
        parsed[key] = default
    for item in filter(None, (arg or "").split(",")):
        key, eq, value = item.partition("=")
        key = key.strip()
        if key not in types and not lazy:
            raise ValueError(f"Unknown config argument {key!r}; this config takes {sorted(types)}.")
        kind = types.get(key, str)
        if not eq:
            if kind is not bool:
                raise ValueError(f"Config argument {key!r} needs a value: {key}=...")
            parsed[key] = True
        elif kind is bool:
            parsed[key] = value.strip().lower() in ("1", "true", "yes", "y")
        else:
            try:
                parsed[key] = kind(value.strip())
            except ValueError as e:
                raise ValueError(
                    f"Config argument {key}={value!r} is not a {kind.__name__}."
                ) from e
    return parsed


def load_config(path: str, arg: str | None = None) -> ml_collections.ConfigDict:
    """Loads `get_config(arg)` from a config file path (for tests and notebooks)."""
    spec = importlib.util.spec_from_file_location(
        "dpq_config_" + os.path.basename(path).removesuffix(".py"), path
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg) if arg is not None else module.get_config()


def retrieval_eval(
    query: str,
    database: str,
    *,
    log_steps: int,
    final: bool,
    precision_ks: tuple[int, ...] = (5,),
    map_ks: tuple[int, ...] = (-1,),
    query_side: str = "",
    hamming_radius: int = 2,
    hamming_packing: str = "bits",
) -> ml_collections.ConfigDict:
    """A `config.evals.<name>` entry for the retrieval evaluator (the method's search + metrics).

    Args:
      query, database: split names of the protocol (e.g. "val_query", "val_database").
      log_steps: run every this many steps; 0 runs it only for the final report.
      final: run it on the selected checkpoint for the report.
      precision_ks: cut-offs for precision@K.
      map_ks: cut-offs for mAP; -1 means the whole database.
      query_side: one of the method's query sides (e.g. OPQN: "soft_quantized", "raw",
        "l2"); "" means the method's default.
      hamming_radius: binary codes also report precision and recall within this Hamming
        distance (`p@r2`, `r@r2`); -1 turns it off.
      hamming_packing: binary codes only: `"bits"` (the correct 0/1 packing, default) or
        `"legacy_compactbit"`, which scores the DDH / DCBH reference packing bug
        (`dpq_jax.search.legacy`) to reproduce their published numbers; never for new results.
        The evaluator refuses it for PQ methods and records it in its conventions.

    Raises:
      ValueError: an unknown `hamming_packing`.
    """
    if hamming_packing not in legacy.HAMMING_PACKINGS:
        raise ValueError(
            f"hamming_packing must be one of {legacy.HAMMING_PACKINGS}, got {hamming_packing!r}."
        )
    cfg = ml_collections.ConfigDict()
    cfg.type = "retrieval"
    cfg.query = query
    cfg.database = database
    cfg.query_side = query_side
    cfg.map_ks = tuple(map_ks)
    cfg.precision_ks = tuple(precision_ks)
    cfg.denominator = "relevant_in_topk"  # equals min_relevant_k for K = all
    cfg.empty = "zero"  # queries without a relevant item count as AP 0
    cfg.ties = "stable"  # tied scores ranked by database index
    cfg.hamming_radius = hamming_radius
    cfg.hamming_packing = hamming_packing
    cfg.log_steps = log_steps
    cfg.final = final
    return cfg


def validation_and_test(
    log_steps: int, *, precision_ks: tuple[int, ...] = (5,), **kwargs
) -> ml_collections.ConfigDict:
    """`config.evals` of most experiments: `val` (validation splits every `log_steps`, the
    selection metric) and `test` (the query split, scored once for the report).

    `kwargs` go to both `retrieval_eval`s (e.g. `hamming_radius`).

    Example:
      >>> evals = validation_and_test(600, precision_ks=(100,))
      >>> (evals.val.query, evals.val.final, evals.test.query, evals.test.log_steps)
      ('val_query', False, 'query', 0)
    """
    evals = ml_collections.ConfigDict()
    evals.val = retrieval_eval(
        "val_query",
        "val_database",
        log_steps=log_steps,
        final=False,
        precision_ks=precision_ks,
        **kwargs,
    )
    evals.test = retrieval_eval(
        "query", "database", log_steps=0, final=True, precision_ks=precision_ks, **kwargs
    )
    return evals


# ----------------------------------------------------------------------------------------------
# Shared blocks: a method x protocol config holds little but its own fields.
# ----------------------------------------------------------------------------------------------
# Per-data-set inputs: (dataset, protocol, train preprocessing, eval preprocessing). The
# normalisations are each data set's pixel mean and standard deviation on the 0..1 scale.
_FMNIST_NORM = "value_range(0,1)|normalize((0.286,),(0.353,))"
_ORL_NORM = "value_range(0,1)|normalize((0.5,),(0.5,))"
_CIFAR10_NORM = "value_range(0,1)|normalize((0.491,0.482,0.447),(0.247,0.243,0.262))"
INPUTS = {
    "fmnist": ("fashion_mnist", f"flip_lr|{_FMNIST_NORM}", _FMNIST_NORM),
    "cifar10": ("cifar10", f"flip_lr|{_CIFAR10_NORM}", _CIFAR10_NORM),
    "orl": (
        "orl_faces",
        f"resize(35,29)|random_crop(32,26)|flip_lr|{_ORL_NORM}",
        f"resize(35,29)|center_crop(32,26)|{_ORL_NORM}",
    ),
    # ORL at its native 112×92, as OPQN's Resize(120) + crop(112) at the faces' aspect.
    "orl_112": (
        "orl_faces",
        f"resize(120,98)|random_crop(112,92)|flip_lr|{_ORL_NORM}",
        f"resize(120,98)|center_crop(112,92)|{_ORL_NORM}",
    ),
}


def image_input(
    dataset: str,
    *,
    batch_size: int,
    eval_batch_size: int,
    pp_train: str,
    pp_eval: str,
    prefetch: int = 2,
) -> ml_collections.ConfigDict:
    """`config.input`: a registered data set with its train and eval preprocessing strings.

    `data_dir` and `source_dir` start empty (the TFDS default and the data set's manual or
    installed copy); a run sets them with `--config.input.source_dir=...`.

    Example:
      >>> image_input("orl_faces", batch_size=64, eval_batch_size=64, pp_train="flip_lr",
      ...             pp_eval="", prefetch=4).prefetch
      4
    """
    cfg = ml_collections.ConfigDict()
    cfg.dataset = dataset
    cfg.data_dir = ""  # tfds data_dir for the built dataset; "" = ~/tensorflow_datasets
    cfg.source_dir = ""  # a folder with the release files; "" = the manual dir / installed copy
    cfg.batch_size = batch_size
    cfg.eval_batch_size = eval_batch_size
    cfg.pp_train = pp_train
    cfg.pp_eval = pp_eval
    cfg.prefetch = prefetch
    return cfg


def input_config(data: str, *, batch_size: int, eval_batch_size: int) -> ml_collections.ConfigDict:
    """`config.input` for a data set of `INPUTS` ("fmnist": 28×28 Fashion-MNIST; "orl": ORL
    faces resized to 35×29 and cropped to 32×26; "cifar10": 32×32 CIFAR-10), with flips in
    training and the data set's per-channel normalisation.

    Example:
      >>> input_config("fmnist", batch_size=256, eval_batch_size=512).dataset
      'fashion_mnist'
    """
    if data not in INPUTS:
        raise ValueError(f"Unknown input preset {data!r}; choose one of {sorted(INPUTS)}.")
    dataset, pp_train, pp_eval = INPUTS[data]
    return image_input(
        dataset,
        batch_size=batch_size,
        eval_batch_size=eval_batch_size,
        pp_train=pp_train,
        pp_eval=pp_eval,
    )


# Face sets of the `faces_seen` configs: name -> (per-channel pixel mean and std on the 0..1
# scale, a rough train split size). The statistics are OPQN data_loader.py's (METHODS §1.3):
# FaceScrub's, which it also applies to YouTube Faces, and CFW-60K's from its first commit. The
# trainer prints the real train split size on start: pass it as a config's `train_images=N`.
FACE_SETS = {
    "facescrub": ((0.639, 0.479, 0.404), (0.216, 0.183, 0.171), 65000),
    "youtube_faces": ((0.639, 0.479, 0.404), (0.216, 0.183, 0.171), 63800),
    "cfw60k": ((0.507, 0.403, 0.344), (0.259, 0.226, 0.212), 54000),
}


def face_data(
    dataset: str, train_images: int = 0, *, choices: tuple[str, ...], std_scale: float = 1
) -> tuple[str, int]:
    """The normalisation and the train split size of a face set of `FACE_SETS` (a config's
    `dataset` and `train_images` arguments).

    Args:
      dataset: the face set, one of `choices`.
      train_images: the train split size; 0 takes the set's estimate.
      choices: the face sets the config supports.
      std_scale: multiplies the std (10 gives `deprocess_image`'s ×0.1 of DDH and DCBH).

    Returns:
      `(norm, train_images)`: the op `value_range(0,1)|normalize(mean,std)` and the train split
      size.

    Raises:
      ValueError: a data set outside `choices`.

    Example:
      >>> face_data("cfw60k", choices=("facescrub", "cfw60k"))
      ('value_range(0,1)|normalize((0.507, 0.403, 0.344),(0.259, 0.226, 0.212))', 54000)
    """
    if dataset not in choices:
        raise ValueError(f"dataset={dataset!r}; choose one of {sorted(choices)}.")
    mean, std, estimate = FACE_SETS[dataset]
    if std_scale != 1:
        std = tuple(round(std_scale * s, 6) for s in std)
    return f"value_range(0,1)|normalize({mean},{std})", train_images or estimate


def cnn_small_trunk(
    input_hw: tuple[int, int], *, tiny: bool = False, widths: tuple[int, ...] = (32, 64, 128)
) -> ml_collections.ConfigDict:
    """`model.backbone` of the PQ methods' CPU configs (OPQN, progressive OPQN, DPQ-G and DPQ-KW
    on fmnist and orl share it, so their rows compare): cnn_small with 32-64-128 channels and a
    flatten head (Dense 512 + BN); `widths` sets other channels; `tiny` (runlocal): 4-8.

    Example:
      >>> cnn_small_trunk((28, 28), tiny=True).widths
      (4, 8)
    """
    return ml_collections.ConfigDict(
        {
            "name": "cnn_small",
            "widths": (4, 8) if tiny else tuple(widths),
            "pool": "flatten",
            "input_hw": tuple(input_hw),
        }
    )


# ORL input sizes of the PQ configs' `size` argument: size -> (input preset, crop (H, W),
# trunk channels).
# 112 keeps the faces' native resolution (one more conv block, narrower early channels); on
# unseen identities it ranks better than 32×26 (README, `orl_unseen` table).
ORL_SIZES = {
    32: ("orl", (32, 26), (32, 64, 128)),
    112: ("orl_112", (112, 92), (16, 32, 64, 128, 128)),
}


def orl_input_and_trunk(
    size: int, *, tiny: bool = False
) -> tuple[ml_collections.ConfigDict, ml_collections.ConfigDict]:
    """`config.input` (batch 64) and the cnn_small `model.backbone` of an ORL PQ config at
    `size` (32: 32×26 crops, 112: the native 112×92).

    Raises:
      ValueError: a size outside `ORL_SIZES`.

    Example:
      >>> cfg_input, trunk = orl_input_and_trunk(112)
      >>> cfg_input.pp_eval.split("|")[1], trunk.input_hw, trunk.widths
      ('center_crop(112,92)', (112, 92), (16, 32, 64, 128, 128))
    """
    if size not in ORL_SIZES:
        raise ValueError(f"size={size!r}; choose one of {sorted(ORL_SIZES)} (the input height).")
    preset, hw, widths = ORL_SIZES[size]
    cfg_input = input_config(preset, batch_size=64, eval_batch_size=64)
    return cfg_input, cnn_small_trunk(hw, tiny=tiny, widths=widths)


def optimizer(
    name: str = "adamw",
    *,
    lr: float,
    weight_decay: float = 0.0,
    decoupled_weight_decay: bool = True,
    schedule: str = "cosine",
    warmup_steps: int = 0,
    decay_steps: int = 0,
    decay_rate: float = 0.5,
    momentum: float = 0.9,
    grad_clip_norm: float = 0.0,
) -> ml_collections.ConfigDict:
    """`config.optim` (read by `dpq_jax.optim.make_optimizer`)."""
    cfg = ml_collections.ConfigDict()
    cfg.name = name
    cfg.lr = lr
    cfg.momentum = momentum  # sgd only
    cfg.nesterov = False
    cfg.weight_decay = weight_decay
    cfg.decoupled_weight_decay = decoupled_weight_decay
    cfg.schedule = schedule
    cfg.decay_steps = decay_steps  # step / exponential schedules
    cfg.decay_rate = decay_rate
    cfg.warmup_steps = warmup_steps
    cfg.grad_clip_norm = grad_clip_norm
    return cfg


def training(
    config: ml_collections.ConfigDict,
    *,
    total_steps: int,
    ckpt_steps: int,
    log_training_steps: int = 50,
    keep_ckpts: int = 2,
    select_on: str = "val/map@all",
) -> None:
    """Sets the run, checkpointing and logging fields of `config` in place (all devices of all
    hosts on one `"data"` mesh; the best checkpoint on validation, never on the query split)."""
    config.total_steps = total_steps
    config.mesh_num_devices = -1
    config.mesh_axis_types = "explicit"
    config.log_training_steps = log_training_steps
    config.ckpt_steps = ckpt_steps
    config.keep_ckpts = keep_ckpts
    config.select_on = select_on
    config.raw_pixel_baseline = True
    config.tensorboard = True


# Trunks any method can run on, for same-backbone comparisons (a config's `trunk=` argument):
# name -> (model.backbone, model.features, the tiny runlocal variant of both).
SHARED_TRUNKS = {
    # DCBH's VGG-like net at the CPU width 1/4: 16-32-64-128 channels, 192 features.
    "dcbh_net": (
        {"name": "dcbh_net", "width": 0.25},
        192,
        ({"name": "dcbh_net", "width": 1 / 32}, 24),
    ),
    # DSH's conv-pool-LRN net with FC 500 (28×28 inputs).
    "dsh_net": (
        {"name": "dsh_net", "input_hw": (28, 28)},
        500,
        ({"name": "dsh_net", "input_hw": (28, 28), "widths": (4, 4, 8)}, 16),
    ),
}


def shared_trunk(model: ml_collections.ConfigDict, name: str, *, tiny: bool = False) -> None:
    """Puts the trunk `name` of `SHARED_TRUNKS` into a config's `model` group in place
    (`model.backbone` and `model.features`), so every method can be compared on one backbone:
    the method keeps its own heads, hashing layer and loss.

    Example:
      >>> model = ml_collections.ConfigDict({"backbone": {"name": "x"}, "features": 0})
      >>> shared_trunk(model, "dcbh_net"); model.backbone.name, model.features
      ('dcbh_net', 192)
    """
    if name not in SHARED_TRUNKS:
        raise ValueError(f"Unknown trunk {name!r}; choose one of {sorted(SHARED_TRUNKS)}.")
    backbone, features, tiny_variant = SHARED_TRUNKS[name]
    if tiny:
        backbone, features = tiny_variant
    model.backbone = ml_collections.ConfigDict(backbone)
    model.features = features


def run_locally(config: ml_collections.ConfigDict) -> None:
    """Shrinks `config` in place to a few-second smoke run (the `runlocal` argument)."""
    config.total_steps = 4
    config.input.batch_size = 16
    config.input.eval_batch_size = 16
    config.log_training_steps = 2
    config.ckpt_steps = 2
    config.optim.warmup_steps = 0
    config.tensorboard = False
    for cfg in config.evals.values():
        if cfg.log_steps:
            cfg.log_steps = 2
