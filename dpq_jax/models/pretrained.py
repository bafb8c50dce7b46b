r"""ImageNet-pretrained backbones: converters from torchvision `state_dict` files and Caffe
AlexNet `.npy` files to an orbax checkpoint of the NNX backbone's state, and the loader the
backbones call when built with `pretrained=PATH`.

Convert once (`dpq-convert`, docs/pretrained.md gives the download commands; nothing is
downloaded here):

    dpq-convert --arch=resnet50 --input=resnet50.pth --output=weights/resnet50
    dpq-convert --arch=caffenet --input=reference_pretrain.npy --output=weights/caffenet

then fine-tune from them with `--config.model.backbone.pretrained=weights/resnet50` (the
backbone's name and architecture arguments must match, e.g. `name="resnet", depth=50`). The
backbone loads the weights into itself once built, so the trainer, checkpoints and resumes are
unchanged; weights that do not fit the net stop the build with one line naming the layer.

A converted checkpoint is a folder: `state/` (orbax `StandardCheckpointer`: the backbone's
parameters and BatchNorm statistics, keyed by their NNX paths, e.g. `layer1/0/conv1/kernel`) and
`pretrained.json` (the arch, the backbone and its architecture arguments, the source file and
the input preprocessing the weights expect, `pp`). The classifier (torchvision's `fc` /
`classifier.6`, Caffe's `fc8`) is dropped.

Layouts: PyTorch convs `[O, I/g, kh, kw]` become `[kh, kw, I/g, O]`, linears `[O, I]` become
`[I, O]`; the first linear after a flatten (torchvision's VGG / AlexNet fc6) also has its
input reordered from PyTorch's CHW flatten to the NHWC net's HWC one. Caffe `.npy` dicts
(`layer -> [weights, biases]`, as `caffe-tensorflow` writes them: `bvlc_alexnet.npy`,
DeepHash's `reference_pretrain.npy`) hold TensorFlow-layout convs `[kh, kw, I/g, O]` and fc
weights `[I, O]` with fc6's input already in HWC order; raw Caffe blobs (`[O, I/g, kh, kw]`,
`[O, I]` with CHW fc6 inputs) are detected from conv1's shape and transposed. Caffe nets were
trained on BGR images in 0..255 minus the mean (103.939, 116.779, 123.68); conv1's input
channels are reversed by default so the converted net takes RGB (`--keep_bgr` keeps BGR).
"""

import argparse
import json
import os
import re
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

FORMAT = "dpq_jax.pretrained/1"
STATE_DIR = "state"
META_FILE = "pretrained.json"
SOURCES = ("torchvision", "caffe")
# The preprocessing (`config.input.pp_*` ops) each source's weights were trained with.
PP_TORCHVISION = "value_range(0,1)|normalize((0.485,0.456,0.406),(0.229,0.224,0.225))"
PP_CAFFE_RGB = "normalize((123.68,116.779,103.939),(1,1,1))"  # RGB 0..255 minus the mean
PP_CAFFE_BGR = "(BGR channel order) normalize((103.939,116.779,123.68),(1,1,1))"


def _archs() -> dict[str, tuple[str, dict[str, Any], str]]:
    archs = {
        "alexnet": ("alexnet", {"variant": "torchvision"}, "torchvision"),
        "alexnet_caffe": ("alexnet", {"variant": "caffe"}, "caffe"),
        "caffenet": ("alexnet", {"variant": "caffenet"}, "caffe"),
    }
    for depth in (18, 34, 50, 101, 152):
        archs[f"resnet{depth}"] = ("resnet", {"depth": depth}, "torchvision")
    for depth in (11, 13, 16, 19):
        for bn in (False, True):
            archs[f"vgg{depth}{'_bn' if bn else ''}"] = (
                "vgg",
                {"depth": depth, "batch_norm": bn},
                "torchvision",
            )
    return archs


# arch -> (registered backbone, its architecture arguments, source of the weights).
ARCHS = _archs()


# ----------------------------------------------------------------------------------------------
# Reading the source files.
# ----------------------------------------------------------------------------------------------
def read_torch_state_dict(path: str) -> dict[str, np.ndarray]:
    """The tensors of a PyTorch `state_dict` file (`torch.save(model.state_dict(), path)`), as
    float32 NumPy arrays (integer buffers such as `num_batches_tracked` are dropped).

    A checkpoint dict holding the state_dict under `state_dict` or `model` works too, and a
    `module.` prefix (DataParallel) is stripped.

    Raises:
      ImportError: PyTorch is not installed.
      ValueError: a missing or unreadable file, or one that holds no tensors.
    """
    try:
        import torch
    except ImportError as e:
        raise ImportError(
            "Reading a torchvision .pth needs PyTorch (CPU is enough): pip install torch, or "
            "pip install 'dpq_jax[torch]'."
        ) from e
    if not os.path.isfile(path):
        raise ValueError(f"--input {path!r}: no such file.")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle, zip and torch errors alike
        raise ValueError(f"--input {path!r} is not a readable PyTorch file: {e}") from e
    for key in ("state_dict", "model"):
        if isinstance(loaded, Mapping) and isinstance(loaded.get(key), Mapping):
            loaded = loaded[key]
    if not isinstance(loaded, Mapping):
        raise ValueError(f"--input {path!r} holds a {type(loaded).__name__}, not a state_dict.")
    out = {}
    for key, value in loaded.items():
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            out[key.removeprefix("module.")] = value.detach().cpu().float().numpy()
    if not out:
        raise ValueError(f"--input {path!r} holds no floating-point tensors.")
    return out


def read_caffe_npy(path: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """`{layer: (weights, biases)}` of a Caffe-converted `.npy` (a pickled dict of
    `layer -> [weights, biases]` or `layer -> {"weights": ..., "biases": ...}`; Python 2
    pickles with bytes keys work).

    Raises:
      ValueError: a missing or unreadable file, or one that is not such a dict.
    """
    if not os.path.isfile(path):
        raise ValueError(f"--input {path!r}: no such file.")
    try:
        # The reference files are pickled dicts; only open files you trust.
        loaded = np.load(path, allow_pickle=True, encoding="latin1")
        loaded = loaded.item() if isinstance(loaded, np.ndarray) else loaded
    except Exception as e:
        raise ValueError(f"--input {path!r} is not a readable .npy dict: {e}") from e
    if not isinstance(loaded, Mapping):
        raise ValueError(f"--input {path!r} holds a {type(loaded).__name__}, not a layer dict.")

    def text(key):
        return key.decode("latin1") if isinstance(key, bytes) else str(key)

    out = {}
    for name, value in loaded.items():
        if isinstance(value, Mapping):
            value = {text(k): v for k, v in value.items()}
            value = (value.get("weights"), value.get("biases"))
        if not isinstance(value, Sequence) or len(value) != 2:
            raise ValueError(
                f"--input {path!r}: layer {text(name)!r} is not [weights, biases]; expected a "
                "caffe-tensorflow .npy (bvlc_alexnet.npy, reference_pretrain.npy)."
            )
        out[text(name)] = (np.asarray(value[0], np.float32), np.asarray(value[1], np.float32))
    return out


# ----------------------------------------------------------------------------------------------
# Conversion: flat {NNX path "a/b/c": array}.
# ----------------------------------------------------------------------------------------------
def _flatten_chw(weights: np.ndarray, channels: int, what: str) -> np.ndarray:
    """`[O, C*S*S]` weights of a linear layer after a CHW flatten, as the `[S*S*C, O]` kernel
    of the same layer after an HWC flatten."""
    out, flat = weights.shape
    side = int(round((flat / channels) ** 0.5)) if channels else 0
    if channels < 1 or side * side * channels != flat:
        raise ValueError(
            f"{what}: {flat} inputs are not C x S x S with C = {channels} channels; wrong --arch?"
        )
    weights = weights.reshape(out, channels, side, side).transpose(2, 3, 1, 0)  # [S, S, C, O]
    return weights.reshape(side * side * channels, out)


def _torchvision_module(arch: str, prefix: str) -> str | None:
    """The NNX path of torchvision module `prefix` in `arch`, or None for the dropped
    classifier.

    Raises:
      ValueError: a module the arch does not have.
    """
    backbone, kwargs, _ = ARCHS[arch]
    if backbone == "resnet":
        if prefix == "fc":
            return None
        if prefix in ("conv1", "bn1"):
            return prefix
        m = re.fullmatch(r"(layer[1-4])\.(\d+)\.(conv[1-3]|bn[1-3]|downsample\.[01])", prefix)
        if m:
            part = {"downsample.0": "downsample/conv", "downsample.1": "downsample/bn"}
            return f"{m[1]}/{m[2]}/{part.get(m[3], m[3])}"
    elif backbone == "vgg":
        from dpq_jax.models.backbones import vgg

        convs = vgg.torch_feature_indices(kwargs["depth"], kwargs["batch_norm"])
        for i, (conv, norm) in enumerate(convs):
            if prefix == f"features.{conv}":
                return f"convs/{i}"
            if norm is not None and prefix == f"features.{norm}":
                return f"norms/{i}"
        table = {"classifier.0": "fc6", "classifier.3": "fc7", "classifier.6": None}
        if prefix in table:
            return table[prefix]
    else:  # torchvision's AlexNet
        table = {f"features.{j}": f"convs/{i}" for i, j in enumerate((0, 3, 6, 8, 10))}
        table.update({"classifier.1": "fc6", "classifier.4": "fc7", "classifier.6": None})
        if prefix in table:
            return table[prefix]
    raise ValueError(
        f"state_dict module {prefix!r} is not part of torchvision's {arch}; check --arch "
        f"(one of {sorted(a for a, v in ARCHS.items() if v[2] == 'torchvision')})."
    )


def convert_torchvision(arch: str, state_dict: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Maps a torchvision `state_dict` of `arch` onto the NNX backbone's parameter paths.

    Args:
      arch: a torchvision key of `ARCHS` (`resnet50`, `vgg16_bn`, `alexnet`, ...).
      state_dict: `{torch key: array}` (`read_torch_state_dict`).

    Returns:
      `{NNX path: float32 array}` in the NNX layouts (module docstring), without the
      classifier.

    Raises:
      ValueError: an arch that is not torchvision's, or a key or shape the arch does not have.

    Example:
      >>> sd = {"conv1.weight": np.zeros((64, 3, 7, 7)), "fc.weight": np.zeros((10, 512))}
      >>> {k: v.shape for k, v in convert_torchvision("resnet18", sd).items()}
      {'conv1/kernel': (7, 7, 3, 64)}
    """
    if arch not in ARCHS or ARCHS[arch][2] != "torchvision":
        raise ValueError(
            f"--arch {arch!r} has no torchvision weights; choose one of "
            f"{sorted(a for a, v in ARCHS.items() if v[2] == 'torchvision')}."
        )
    backbone = ARCHS[arch][0]
    modules: dict[str, dict[str, np.ndarray]] = {}
    for key, value in state_dict.items():
        prefix, _, name = key.rpartition(".")
        modules.setdefault(prefix, {})[name] = np.asarray(value, np.float32)
    # Output channels of the last conv, for fc6's CHW -> HWC input reorder.
    if backbone == "vgg":
        from dpq_jax.models.backbones import vgg

        kwargs = ARCHS[arch][1]
        last_conv = (
            f"features.{vgg.torch_feature_indices(kwargs['depth'], kwargs['batch_norm'])[-1][0]}"
        )
    else:
        last_conv = "features.10"  # AlexNet's conv5 (ResNets have no flatten)
    channels = modules.get(last_conv, {}).get("weight", np.zeros((0,))).shape[0]
    out: dict[str, np.ndarray] = {}
    for prefix, tensors in modules.items():
        path = _torchvision_module(arch, prefix)
        if "running_mean" in tensors:  # BatchNorm
            names = {
                "weight": "scale",
                "bias": "bias",
                "running_mean": "mean",
                "running_var": "var",
            }
        else:
            names = {"weight": "kernel", "bias": "bias"}
        unknown = sorted(set(tensors) - set(names))
        if unknown:
            raise ValueError(
                f"state_dict {prefix}.{unknown[0]} is not a tensor of torchvision's {arch}."
            )
        if path is None:
            continue
        for name, value in tensors.items():
            if name == "weight" and value.ndim == 4:  # conv [O, I/g, kh, kw] -> [kh, kw, I/g, O]
                value = value.transpose(2, 3, 1, 0)
            elif name == "weight" and value.ndim == 2:  # linear [O, I] -> [I, O]
                if path == "fc6" and backbone in ("vgg", "alexnet"):
                    value = _flatten_chw(value, channels, f"{prefix}.weight")
                else:
                    value = value.T
            out[f"{path}/{names[name]}"] = np.ascontiguousarray(value, np.float32)
    return out


CAFFE_LAYERS = ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7")


def caffe_layout(layers: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> str:
    """`"tf"` (caffe-tensorflow: conv1 `[11, 11, 3, 96]`) or `"caffe"` (raw blobs: conv1
    `[96, 3, 11, 11]`), read from conv1's shape.

    Raises:
      ValueError: no 4-d conv1, or a shape that fits neither.
    """
    conv1 = layers.get("conv1", (np.zeros(()),))[0]
    if conv1.ndim == 4 and conv1.shape[0] == conv1.shape[1] and conv1.shape[2] == 3:
        return "tf"
    if conv1.ndim == 4 and conv1.shape[2] == conv1.shape[3] and conv1.shape[1] == 3:
        return "caffe"
    raise ValueError(
        f"conv1 weights of shape {conv1.shape} are neither TensorFlow [kh, kw, 3, O] nor Caffe "
        "[O, 3, kh, kw]; expected an AlexNet .npy (bvlc_alexnet.npy, reference_pretrain.npy)."
    )


def convert_caffe(
    arch: str, layers: Mapping[str, tuple[np.ndarray, np.ndarray]], *, rgb: bool = True
) -> dict[str, np.ndarray]:
    """Maps a Caffe AlexNet `{layer: (weights, biases)}` onto the NNX AlexNet's paths.

    Args:
      arch: `"alexnet_caffe"` (bvlc_alexnet: LRN before the pools) or `"caffenet"`
        (bvlc_reference_caffenet, DeepHash's `reference_pretrain.npy`: LRN after them).
      layers: `read_caffe_npy`'s dict; conv1..conv5, fc6 and fc7 are used, fc8 is dropped.
      rgb: reverse conv1's input channels so the net takes RGB (the weights expect BGR).

    Returns:
      `{NNX path: float32 array}`.

    Raises:
      ValueError: a missing layer or a layout that cannot be read.
    """
    if arch not in ARCHS or ARCHS[arch][2] != "caffe":
        raise ValueError(f"--arch {arch!r} has no Caffe weights; choose alexnet_caffe or caffenet.")
    missing = [name for name in CAFFE_LAYERS if name not in layers]
    if missing:
        raise ValueError(
            f"The .npy has no layer {missing[0]!r} (it holds {sorted(layers)}); expected an "
            "AlexNet conv1..fc7."
        )
    layout = caffe_layout(layers)
    out = {}
    for i, name in enumerate(CAFFE_LAYERS[:5]):
        kernel, bias = layers[name]
        if layout == "caffe":
            kernel = kernel.transpose(2, 3, 1, 0)  # [O, I/g, kh, kw] -> [kh, kw, I/g, O]
        if i == 0 and rgb:
            kernel = kernel[:, :, ::-1, :]  # BGR -> RGB input channels
        out[f"convs/{i}/kernel"], out[f"convs/{i}/bias"] = kernel, bias
    channels = out["convs/4/kernel"].shape[-1]
    for name in ("fc6", "fc7"):
        kernel, bias = layers[name]
        if layout == "caffe":
            kernel = _flatten_chw(kernel, channels, name) if name == "fc6" else kernel.T
        out[f"{name}/kernel"], out[f"{name}/bias"] = kernel, bias
    return {k: np.ascontiguousarray(v, np.float32) for k, v in out.items()}


# ----------------------------------------------------------------------------------------------
# The checkpoint.
# ----------------------------------------------------------------------------------------------
def _nest(flat: Mapping[str, Any]) -> dict:
    tree: dict = {}
    for path, value in flat.items():
        node = tree
        *parents, leaf = path.split("/")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return tree


def _flat(tree: Mapping, prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(_flat(value, path + "/"))
        else:
            out[path] = value
    return out


def save(output: str, params: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> None:
    """Writes `params` (flat NNX paths) and `meta` as a converted-weights folder.

    Raises:
      ValueError: `output` exists and is not empty.
    """
    import orbax.checkpoint as ocp
    from etils import epath

    out = epath.Path(output).absolute()
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"--output {output!r} exists and is not empty; choose a new folder.")
    out.mkdir(parents=True, exist_ok=True)
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(out / STATE_DIR, _nest(params))
        checkpointer.wait_until_finished()
    # Written last: a folder with pretrained.json is complete.
    (out / META_FILE).write_text(json.dumps({"format": FORMAT, **meta}, indent=2))


def read_meta(path: str) -> dict[str, Any]:
    """The `pretrained.json` of a converted-weights folder.

    Raises:
      ValueError: no such folder, no (readable) `pretrained.json`, or another format.
    """
    from etils import epath

    meta_path = epath.Path(path) / META_FILE
    if not meta_path.exists():
        raise ValueError(
            f"model.backbone.pretrained={path!r} holds no converted weights (no {META_FILE}); "
            "convert them once with dpq-convert (docs/pretrained.md)."
        )
    try:
        meta = json.loads(meta_path.read_text())
    except ValueError as e:
        raise ValueError(f"model.backbone.pretrained={path!r}: unreadable {META_FILE}: {e}") from e
    if meta.get("format") != FORMAT:
        raise ValueError(
            f"model.backbone.pretrained={path!r} is format {meta.get('format')!r}, not {FORMAT!r}; "
            "convert the weights again with this dpq-convert."
        )
    return meta


def _checkpoint_shapes(path: str) -> dict[str, tuple[int, ...]]:
    import orbax.checkpoint as ocp
    from etils import epath

    with ocp.StandardCheckpointer() as checkpointer:
        tree = checkpointer.metadata(epath.Path(path).absolute() / STATE_DIR).item_metadata.tree
    return {k: tuple(v.shape) for k, v in _flat(tree).items()}


def check_architecture(path: str, *, backbone: str, arch: Mapping[str, Any]) -> dict[str, Any]:
    """The metadata of converted weights, checked to be of `backbone` with `arch` (backbones
    call it before building their layers, so a wrong architecture fails at once).

    Raises:
      ValueError: one line: no converted weights at `path`, or weights of another architecture.
    """
    meta = read_meta(path)
    want = {"backbone": backbone, **dict(arch)}
    have = {"backbone": meta.get("backbone"), **meta.get("architecture", {})}
    if any(have.get(k) != v for k, v in want.items()):
        raise ValueError(
            f"model.backbone.pretrained={path!r} holds {meta.get('arch')} weights ({have}), but "
            f"the config builds {want}; set model.backbone to match (docs/pretrained.md) or "
            "convert the weights of this architecture."
        )
    return meta


def load_into(
    module,
    path: str,
    *,
    backbone: str,
    arch: Mapping[str, Any],
    dont_load: Sequence[str] = (),
) -> None:
    """Loads converted weights into a freshly built backbone (in place, `nnx.update`).

    Every parameter and BatchNorm statistic of `module` must be in the checkpoint with the same
    shape, except those under a `dont_load` prefix (fresh layers such as ResNet's `proj`),
    and every array of the checkpoint must have a place in `module`.

    Args:
      module: the backbone (`nnx.Module`; abstract under `nnx.eval_shape` works too).
      path: a `dpq-convert` output folder.
      backbone: the registry name of `module` ("resnet", "vgg", "alexnet").
      arch: the architecture arguments that must match the checkpoint's (depth, batch_norm,
        variant).
      dont_load: NNX path prefixes of `module` the checkpoint does not hold.

    Raises:
      ValueError: one line: missing weights, weights of another architecture, or the first
        layer whose shape differs (named by its path).
    """
    import jax
    import orbax.checkpoint as ocp
    from etils import epath
    from flax import nnx

    meta = check_architecture(path, backbone=backbone, arch=arch)
    shapes = _checkpoint_shapes(path)
    flat = nnx.to_flat_state(nnx.state(module, nnx.Any(nnx.Param, nnx.BatchStat)))
    ours = {"/".join(map(str, p)): (p, v) for p, v in flat}
    skip = tuple(f"{prefix}/" for prefix in dont_load)
    for name, (_, variable) in ours.items():
        if f"{name}/".startswith(skip):
            continue
        if name not in shapes:
            raise ValueError(
                f"model.backbone.pretrained={path!r} has no weights for layer {name} (a "
                f"{meta.get('arch')} checkpoint); the net and the weights differ in architecture."
            )
        if tuple(variable.shape) != shapes[name]:
            raise ValueError(
                f"model.backbone.pretrained={path!r}: layer {name} is {shapes[name]} in the "
                f"{meta.get('arch')} weights but {tuple(variable.shape)} in this net; set the "
                "backbone's sizes (width, features, input_hw, in_channels) to the weights'."
            )
    extra = sorted(set(shapes) - set(ours))
    if extra:
        raise ValueError(
            f"model.backbone.pretrained={path!r} has weights for layer {extra[0]}, which this net "
            f"does not have; the net and the {meta.get('arch')} weights differ in architecture."
        )
    if any(isinstance(v.get_value(), jax.core.Tracer) for _, v in ours.values()):
        return  # an abstract build (nnx.eval_shape): the shapes are checked, values unused
    device = jax.local_devices()[0]
    target = _nest(
        {
            name: jax.ShapeDtypeStruct(
                shapes[name],
                ours[name][1].dtype,
                sharding=jax.sharding.SingleDeviceSharding(device),
            )
            for name in shapes
        }
    )
    with ocp.StandardCheckpointer() as checkpointer:
        restored = _flat(checkpointer.restore(epath.Path(path).absolute() / STATE_DIR, target))
    updates = [(ours[name][0], ours[name][1].replace(value)) for name, value in restored.items()]
    nnx.update(module, nnx.from_flat_state(updates))


# ----------------------------------------------------------------------------------------------
# dpq-convert
# ----------------------------------------------------------------------------------------------
def convert(
    arch: str,
    input_path: str,
    output: str,
    *,
    source: str = "",
    rgb: bool = True,
) -> dict[str, Any]:
    """Converts `input_path` (a torchvision `.pth` or a Caffe AlexNet `.npy`) of `arch` into a
    converted-weights folder at `output`; returns its metadata.

    Raises:
      ValueError: an unknown arch, a source that does not fit it, or unreadable input.
    """
    if arch not in ARCHS:
        raise ValueError(f"--arch {arch!r} is unknown; choose one of {sorted(ARCHS)}.")
    backbone, architecture, arch_source = ARCHS[arch]
    source = source or arch_source
    if source not in SOURCES:
        raise ValueError(f"--source {source!r} is unknown; choose one of {SOURCES}.")
    if source != arch_source:
        raise ValueError(
            f"--arch {arch} comes from {arch_source}, not --source {source}; the Caffe .npy "
            "archs are alexnet_caffe and caffenet, the others are torchvision's."
        )
    if os.path.exists(output) and (not os.path.isdir(output) or os.listdir(output)):
        raise ValueError(f"--output {output!r} exists and is not empty; choose a new folder.")
    if source == "torchvision":
        params = convert_torchvision(arch, read_torch_state_dict(input_path))
        pp = PP_TORCHVISION
    else:
        params = convert_caffe(arch, read_caffe_npy(input_path), rgb=rgb)
        pp = PP_CAFFE_RGB if rgb else PP_CAFFE_BGR
    meta = {
        "arch": arch,
        "source": source,
        "backbone": backbone,
        "architecture": architecture,
        "input_file": os.path.basename(input_path),
        "channels": "RGB" if rgb or source == "torchvision" else "BGR",
        "pp": pp,
        "num_params": int(sum(v.size for v in params.values())),
    }
    save(output, params, meta)
    return meta


def main(argv: Sequence[str] | None = None) -> int:
    """`dpq-convert`; returns the exit status (problems: one line on stderr, status 1)."""
    parser = argparse.ArgumentParser(
        prog="dpq-convert",
        description="Convert ImageNet weights (a torchvision state_dict .pth or a Caffe AlexNet "
        ".npy) into a dpq_jax backbone checkpoint for config.model.backbone.pretrained.",
    )
    parser.add_argument("--arch", required=True, choices=sorted(ARCHS))
    parser.add_argument("--source", default="", choices=("", *SOURCES), help="default: the arch's")
    parser.add_argument("--input", required=True, help="the .pth or .npy file")
    parser.add_argument("--output", required=True, help="a new folder")
    parser.add_argument(
        "--keep_bgr", action="store_true", help="Caffe: keep conv1's BGR input channel order"
    )
    args = parser.parse_args(argv)
    try:
        meta = convert(
            args.arch, args.input, args.output, source=args.source, rgb=not args.keep_bgr
        )
    except (ValueError, ImportError) as e:
        print(f"dpq-convert: error: {e}", file=sys.stderr)
        return 1
    backbone, architecture, _ = ARCHS[args.arch]
    kwargs = ", ".join(f"{k}={v!r}" for k, v in architecture.items())
    print(
        f"dpq-convert: wrote {args.arch} ({meta['num_params']:,} parameters) to {args.output}.\n"
        f"Use it with model.backbone = dict(name={backbone!r}, {kwargs}, "
        f"pretrained={args.output!r}) and inputs preprocessed as {meta['pp']!r}."
    )
    return 0


def run() -> None:
    """Console-script entry point (`dpq-convert`)."""
    sys.exit(main())


if __name__ == "__main__":
    run()
