"""Tests for dpq_jax.models.pretrained: torchvision and Caffe weights converted, loaded into the
NNX backbones, and the backbones' features equal to the reference nets' (max abs diff 1e-4,
float32, eval mode), for ResNet-18/50, VGG-16 (+BN), torchvision's AlexNet and Caffe's AlexNets.

Oracles: PyTorch nets written here in plain `torch.nn` with torchvision's module names (so their
`state_dict` keys are torchvision's), with random weights and BatchNorm statistics; for Caffe,
a PyTorch port of the TensorFlow AlexNet of the DVSQ / DPQ reference code (NHWC, grouped convs,
LRN, `tf.reshape` flatten) that reads the `.npy` dict as that code does. Conversions at full
width are checked for shapes (PyTorch `meta` tensors, nothing allocated); the numerical
comparisons run at reduced widths on small inputs.
"""

import functools
import os
import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional

from dpq_jax import config_lib, inference, train
from dpq_jax.data import cifar10, protocols
from dpq_jax.models import pretrained
from dpq_jax.models.backbones import alexnet, resnet, vgg

pytestmark = pytest.mark.usefixtures("fast_compile")
ATOL = 1e-4


# ----------------------------------------------------------------------------------------------
# Reference nets: torchvision's layouts in plain torch.nn (widths scaled by `width`).
# ----------------------------------------------------------------------------------------------
def _w(channels, width):
    return max(1, round(channels * width))


class TorchBasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin, planes, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or cin != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x):
        y = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(y + (x if self.downsample is None else self.downsample(x)))


class TorchBottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin, planes, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)  # v1.5: stride here
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.downsample = None
        if stride != 1 or cin != planes * 4:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, planes * 4, 1, stride, bias=False), nn.BatchNorm2d(planes * 4)
            )

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return F.relu(y + (x if self.downsample is None else self.downsample(x)))


class TorchResNet(nn.Module):
    def __init__(self, depth, width=1.0, classes=1000):
        super().__init__()
        block, counts = {
            18: (TorchBasicBlock, (2, 2, 2, 2)),
            50: (TorchBottleneck, (3, 4, 6, 3)),
        }[depth]
        planes = [_w(c, width) for c in (64, 128, 256, 512)]
        cin = planes[0]
        self.conv1 = nn.Conv2d(3, cin, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(cin)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        for stage, (p, n) in enumerate(zip(planes, counts)):
            blocks = []
            for i in range(n):
                blocks.append(block(cin, p, 2 if stage and not i else 1))
                cin = p * block.expansion
            setattr(self, f"layer{stage + 1}", nn.Sequential(*blocks))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, classes)

    def forward(self, x):  # the pooled features (torchvision's forward without fc)
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = stage(x)
        return torch.flatten(self.avgpool(x), 1)


VGG_CFG = {
    16: (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")
}


class TorchVGG(nn.Module):
    def __init__(self, depth, batch_norm, width=1.0, classes=1000):
        super().__init__()
        layers, cin = [], 3
        for v in VGG_CFG[depth]:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
                continue
            layers.append(nn.Conv2d(cin, _w(v, width), 3, padding=1))
            if batch_norm:
                layers.append(nn.BatchNorm2d(_w(v, width)))
            layers.append(nn.ReLU())
            cin = _w(v, width)
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        fc = _w(4096, width)
        self.classifier = nn.Sequential(
            nn.Linear(cin * 49, fc),
            nn.ReLU(),
            nn.Dropout(),
            nn.Linear(fc, fc),
            nn.ReLU(),
            nn.Dropout(),
            nn.Linear(fc, classes),
        )

    def forward(self, x):  # fc7 after its ReLU
        return self.classifier[:5](torch.flatten(self.avgpool(self.features(x)), 1))


class TorchAlexNet(nn.Module):
    def __init__(self, width=1.0, fc7=None, classes=1000):
        super().__init__()
        c = [_w(v, width) for v in (64, 192, 384, 256, 256)]
        self.features = nn.Sequential(
            nn.Conv2d(3, c[0], 11, 4, 2),
            nn.ReLU(),
            nn.MaxPool2d(3, 2),
            nn.Conv2d(c[0], c[1], 5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(3, 2),
            nn.Conv2d(c[1], c[2], 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(c[2], c[3], 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(c[3], c[4], 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(3, 2),
        )
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
        fc6 = _w(4096, width)
        fc7 = fc7 or fc6
        self.classifier = nn.Sequential(
            nn.Dropout(),
            nn.Linear(c[4] * 36, fc6),
            nn.ReLU(),
            nn.Dropout(),
            nn.Linear(fc6, fc7),
            nn.ReLU(),
            nn.Linear(fc7, classes),
        )

    def forward(self, x):  # fc7 after its ReLU
        return self.classifier[:6](torch.flatten(self.avgpool(self.features(x)), 1))


def randomized(model, seed=0):
    """`model` in eval mode with random BatchNorm affines and running statistics."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.weight.shape, generator=gen) * 0.5 + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.1)
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)
    return model.eval()


def convert_torch(model, arch, tmp_path):
    """Saves `model.state_dict()` as torchvision does and converts it; returns the folder."""
    pth = tmp_path / f"{arch}.pth"
    torch.save(model.state_dict(), pth)
    out = tmp_path / f"{arch}_converted"
    assert pretrained.main([f"--arch={arch}", f"--input={pth}", f"--output={out}"]) == 0
    return str(out)


def images(hw, seed=0, batch=2):
    return np.random.default_rng(seed).standard_normal((batch, *hw, 3)).astype(np.float32)


def torch_features(model, x_nhwc):
    with torch.no_grad():
        return model(torch.from_numpy(x_nhwc.transpose(0, 3, 1, 2).copy())).numpy()


def jax_features(model, x_nhwc):
    model.eval()
    return np.asarray(jax.jit(lambda m, x: m(x))(model, jnp.asarray(x_nhwc)))


def assert_same_features(got, want):
    assert got.shape == want.shape
    assert np.abs(want).max() > 0.05  # the comparison is not between near-zero vectors
    np.testing.assert_allclose(got, want, rtol=0, atol=ATOL)


# ----------------------------------------------------------------------------------------------
# torchvision: conversion equals the reference, for every architecture.
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "depth,width,hw",
    # ResNet-50's full-width layout is checked by shapes below; numerically, a narrow one on an
    # odd-sized input (uneven strides and padded pools) keeps the test fast.
    [(18, 1.0, (64, 64)), (50, 1 / 8, (45, 37))],
    ids=["resnet18", "resnet50_narrow_odd_size"],
)
def test_resnet_features_equal_torchvision(tmp_path, depth, width, hw):
    torch.manual_seed(depth)
    ref = randomized(TorchResNet(depth, width))
    path = convert_torch(ref, f"resnet{depth}", tmp_path)
    model = resnet.ResNet(3, depth=depth, width=width, pretrained=path, rngs=nnx.Rngs(0))
    x = images(hw)
    assert_same_features(jax_features(model, x), torch_features(ref, x))


@pytest.mark.parametrize("batch_norm", [False, True], ids=["vgg16", "vgg16_bn"])
def test_vgg16_features_equal_torchvision(tmp_path, batch_norm):
    width = 1 / 8  # full width holds 138M parameters; the layout is the same
    torch.manual_seed(16)
    ref = randomized(TorchVGG(16, batch_norm, width))
    arch = "vgg16_bn" if batch_norm else "vgg16"
    path = convert_torch(ref, arch, tmp_path)
    model = vgg.VGG(
        3,
        _w(4096, width),
        depth=16,
        batch_norm=batch_norm,
        width=width,
        pretrained=path,
        rngs=nnx.Rngs(0),
    )
    x = images((64, 64))  # pool5 is 2x2: the adaptive 7x7 pool has uneven bins
    assert_same_features(jax_features(model, x), torch_features(ref, x))


def test_torchvision_alexnet_features_equal_torchvision(tmp_path):
    width = 1 / 4
    torch.manual_seed(1)
    ref = randomized(TorchAlexNet(width))
    path = convert_torch(ref, "alexnet", tmp_path)
    model = alexnet.AlexNet(
        3,
        _w(4096, width),
        input_hw=(100, 100),  # pool5 is 2x2
        width=width,
        variant="torchvision",
        pretrained=path,
        rngs=nnx.Rngs(0),
    )
    x = images((100, 100))
    assert_same_features(jax_features(model, x), torch_features(ref, x))


def _abstract_shapes(model) -> dict[str, tuple[int, ...]]:
    flat = nnx.to_flat_state(nnx.state(model, nnx.Any(nnx.Param, nnx.BatchStat)))
    return {"/".join(map(str, p)): tuple(v.shape) for p, v in flat}


@pytest.mark.parametrize(
    "arch,torch_net,build",
    [
        ("resnet18", lambda: TorchResNet(18), lambda: resnet.ResNet(3, depth=18, rngs=nnx.Rngs(0))),
        ("resnet50", lambda: TorchResNet(50), lambda: resnet.ResNet(3, depth=50, rngs=nnx.Rngs(0))),
        ("vgg16", lambda: TorchVGG(16, False), lambda: vgg.VGG(3, depth=16, rngs=nnx.Rngs(0))),
        (
            "vgg16_bn",
            lambda: TorchVGG(16, True),
            lambda: vgg.VGG(3, depth=16, batch_norm=True, rngs=nnx.Rngs(0)),
        ),
        (
            "alexnet",
            lambda: TorchAlexNet(),
            lambda: alexnet.AlexNet(
                3, variant="torchvision", input_hw=(224, 224), rngs=nnx.Rngs(0)
            ),
        ),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_full_size_conversions_fill_every_parameter(arch, torch_net, build):
    with torch.device("meta"):  # shapes only: nothing allocated
        shapes = {k: tuple(v.shape) for k, v in torch_net().state_dict().items()}
    zeros = {
        k: np.broadcast_to(np.float32(0), s)
        for k, s in shapes.items()
        if not k.endswith("num_batches_tracked")
    }
    converted = {k: v.shape for k, v in pretrained.convert_torchvision(arch, zeros).items()}
    assert converted == _abstract_shapes(nnx.eval_shape(build))


# ----------------------------------------------------------------------------------------------
# Caffe AlexNet .npy (DeepHash's reference_pretrain.npy, bvlc_alexnet.npy).
# ----------------------------------------------------------------------------------------------
def caffe_npy_layers(width, seed=0):
    """A random caffe-tensorflow AlexNet dict: TF-layout convs `[kh, kw, I/g, O]`, fc `[I, O]`
    (fc6 over the HWC flatten of pool5 at 227x227), plus fc8."""
    rng = np.random.default_rng(seed)
    c = [alexnet._even_width(v, width) for v in (96, 256, 384, 384, 256)]
    fc = _w(4096, width)
    shapes = {
        "conv1": (11, 11, 3, c[0]),
        "conv2": (5, 5, c[0] // 2, c[1]),
        "conv3": (3, 3, c[1], c[2]),
        "conv4": (3, 3, c[2] // 2, c[3]),
        "conv5": (3, 3, c[3] // 2, c[4]),
        "fc6": (6 * 6 * c[4], fc),
        "fc7": (fc, fc),
        "fc8": (fc, 1000),
    }
    layers = {}
    for name, shape in shapes.items():
        fan_in = np.prod(shape[:-1])
        weights = (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)
        layers[name] = [weights, rng.standard_normal(shape[-1]).astype(np.float32) * 0.1]
    # Inputs in 0..255 make pool5 large (where LRN matters); keep fc6 and fc7 near 1.
    layers["fc6"][0] *= 0.01
    return layers


def caffe_reference(layers, x_bgr, lrn_after_pool):
    """The DPQ / DVSQ reference's TensorFlow AlexNet (NHWC, VALID conv1, SAME others, floor
    pools, TF LRN radius 2 alpha 2e-5 bias 1 beta 0.75), ported to PyTorch ops."""

    def conv(x, name, stride, pad, groups):
        weights, bias = (torch.from_numpy(np.asarray(a)) for a in layers[name])
        y = F.conv2d(
            x, weights.permute(3, 2, 0, 1), bias, stride=stride, padding=pad, groups=groups
        )
        return F.relu(y)

    def lrn(x):  # torch's LRN is alpha/size-scaled, as Caffe's: alpha 1e-4 / 5 = TF's 2e-5
        return F.local_response_norm(x, 5, alpha=1e-4, beta=0.75, k=1.0)

    def pool(x):
        return F.max_pool2d(x, 3, 2)

    def pool_lrn(x):
        return lrn(pool(x)) if lrn_after_pool else pool(lrn(x))

    with torch.no_grad():
        x = torch.from_numpy(x_bgr.transpose(0, 3, 1, 2).copy())
        x = pool_lrn(conv(x, "conv1", 4, 0, 1))
        x = pool_lrn(conv(x, "conv2", 1, 2, 2))
        x = conv(conv(x, "conv3", 1, 1, 1), "conv4", 1, 1, 2)
        x = pool(conv(x, "conv5", 1, 1, 2))
        x = x.permute(0, 2, 3, 1).reshape(x.shape[0], -1)  # tf.reshape of the NHWC pool5
        for name in ("fc6", "fc7"):
            weights, bias = (torch.from_numpy(np.asarray(a)) for a in layers[name])
            x = F.relu(x @ weights + bias)
        return x.numpy()


def caffe_blob_layout(layers):
    """The same weights as raw Caffe blobs: convs `[O, I/g, kh, kw]`, fc `[O, I]`, fc6's input
    in Caffe's CHW order."""
    out = {}
    for name, (weights, bias) in layers.items():
        if weights.ndim == 4:
            weights = weights.transpose(3, 2, 0, 1)
        elif name == "fc6":
            channels = layers["conv5"][0].shape[-1]
            side = int(np.sqrt(weights.shape[0] // channels))
            weights = weights.reshape(side, side, channels, -1).transpose(3, 2, 0, 1)
            weights = weights.reshape(weights.shape[0], -1)
        else:
            weights = weights.T
        out[name] = [np.ascontiguousarray(weights), bias]
    return out


@pytest.mark.parametrize("arch,variant", [("caffenet", "caffenet"), ("alexnet_caffe", "caffe")])
def test_caffe_alexnet_features_equal_the_reference(tmp_path, arch, variant):
    width = 1 / 8
    layers = caffe_npy_layers(width)
    npy = tmp_path / "reference_pretrain.npy"
    np.save(npy, np.asarray(layers, dtype=object), allow_pickle=True)
    out = str(tmp_path / "converted")
    assert (
        pretrained.main([f"--arch={arch}", "--source=caffe", f"--input={npy}", f"--output={out}"])
        == 0
    )
    model = alexnet.AlexNet(
        3, _w(4096, width), width=width, variant=variant, pretrained=out, rngs=nnx.Rngs(0)
    )
    # RGB images, 0..255 minus the mean, as PP_CAFFE_RGB makes them; the reference sees BGR.
    x = images((227, 227)) * 60
    want = caffe_reference(layers, x[..., ::-1], lrn_after_pool=variant == "caffenet")
    assert_same_features(jax_features(model, x), want)
    meta = pretrained.read_meta(out)
    assert (meta["channels"], meta["pp"]) == ("RGB", pretrained.PP_CAFFE_RGB)
    # The other LRN order gives other features: the variant matters.
    other = "caffe" if variant == "caffenet" else "caffenet"
    wrong = caffe_reference(layers, x[..., ::-1], lrn_after_pool=other == "caffenet")
    assert np.abs(wrong - want).max() > 10 * ATOL


def test_caffe_blob_layout_bytes_keys_and_bgr(tmp_path):
    layers = caffe_npy_layers(1 / 8, seed=3)
    tf_npy, blob_npy = tmp_path / "tf.npy", tmp_path / "blob.npy"
    np.save(tf_npy, np.asarray(layers, dtype=object), allow_pickle=True)
    # Raw Caffe blobs, Python-2-style bytes keys and {"weights", "biases"} dicts.
    blobs = {
        name.encode(): {b"weights": w, b"biases": b}
        for name, (w, b) in caffe_blob_layout(layers).items()
    }
    np.save(blob_npy, np.asarray(blobs, dtype=object), allow_pickle=True)
    a = pretrained.convert_caffe("caffenet", pretrained.read_caffe_npy(str(tf_npy)))
    b = pretrained.convert_caffe("caffenet", pretrained.read_caffe_npy(str(blob_npy)))
    assert pretrained.caffe_layout(pretrained.read_caffe_npy(str(blob_npy))) == "caffe"
    assert a.keys() == b.keys() and "fc8/kernel" not in a
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    bgr = pretrained.convert_caffe("caffenet", layers, rgb=False)
    np.testing.assert_array_equal(bgr["convs/0/kernel"], layers["conv1"][0])
    np.testing.assert_array_equal(a["convs/0/kernel"], layers["conv1"][0][:, :, ::-1])


# ----------------------------------------------------------------------------------------------
# Loading errors: one line naming the problem and the layer.
# ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def resnet18_narrow(tmp_path_factory):
    torch.manual_seed(0)
    ref = randomized(TorchResNet(18, 1 / 16))
    return convert_torch(ref, "resnet18", tmp_path_factory.mktemp("r18")), ref


def test_wrong_architecture_or_shape_is_one_line_naming_the_layer(resnet18_narrow, tmp_path):
    path, _ = resnet18_narrow
    build = functools.partial(resnet.ResNet, 3, pretrained=path, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"holds resnet18 weights .* builds .*'depth': 50") as e:
        build(depth=50, width=1 / 16)
    assert "\n" not in str(e.value)
    with pytest.raises(
        ValueError, match=r"layer bn1/bias is \(4,\) in the resnet18 weights but \(8,\)"
    ):
        build(depth=18, width=1 / 8)
    with pytest.raises(ValueError, match=r"layer conv1/kernel is \(7, 7, 3, 4\) .* \(7, 7, 1, 4\)"):
        resnet.ResNet(1, depth=18, width=1 / 16, pretrained=path, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="holds resnet18 weights"):
        vgg.VGG(3, 8, width=1 / 64, pretrained=path, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="no converted weights .*dpq-convert"):
        build(depth=18, width=1 / 16, pretrained=str(tmp_path / "missing"))
    # A checkpoint missing a layer of the net, or holding one the net lacks.
    params = pretrained.convert_torchvision(
        "resnet18",
        {k: v.numpy() for k, v in resnet18_narrow[1].state_dict().items() if v.is_floating_point()},
    )
    meta = {"arch": "resnet18", "backbone": "resnet", "architecture": {"depth": 18}}
    pretrained.save(
        str(tmp_path / "less"), {k: v for k, v in params.items() if k != "layer4/1/bn2/var"}, meta
    )
    with pytest.raises(ValueError, match="no weights for layer layer4/1/bn2/var"):
        build(depth=18, width=1 / 16, pretrained=str(tmp_path / "less"))
    pretrained.save(str(tmp_path / "more"), {**params, "layer5/0/conv1/kernel": np.zeros(3)}, meta)
    with pytest.raises(ValueError, match="weights for layer layer5/0/conv1/kernel, which this net"):
        build(depth=18, width=1 / 16, pretrained=str(tmp_path / "more"))


def test_fresh_projection_and_abstract_build(resnet18_narrow):
    path, ref = resnet18_narrow
    model = resnet.ResNet(3, 5, depth=18, width=1 / 16, pretrained=path, rngs=nnx.Rngs(0))
    plain = resnet.ResNet(3, depth=18, width=1 / 16, pretrained=path, rngs=nnx.Rngs(0))
    assert model.proj is not None and plain.proj is None and plain.features == 32
    x = images((32, 32))
    trunk = torch_features(ref, x)
    assert_same_features(jax_features(plain, x), trunk)
    kernel, bias = np.asarray(model.proj.kernel[...]), np.asarray(model.proj.bias[...])
    np.testing.assert_allclose(jax_features(model, x), trunk @ kernel + bias, rtol=1e-5, atol=ATOL)
    # Under nnx.eval_shape (config tests), loading keeps the shapes.
    abstract = nnx.eval_shape(
        lambda: resnet.ResNet(3, depth=18, width=1 / 16, pretrained=path, rngs=nnx.Rngs(0))
    )
    assert _abstract_shapes(abstract) == _abstract_shapes(plain)


def test_cli_errors_are_one_line(tmp_path, capsys, resnet18_narrow):
    path, _ = resnet18_narrow
    pth = tmp_path / "x.pth"
    torch.save({"features.0.weight": torch.zeros(4, 3, 3, 3)}, pth)
    assert pretrained.main(["--arch=resnet18", f"--input={pth}", f"--output={tmp_path / 'o'}"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "features.0" in err and "--arch" in err
    assert pretrained.main(["--arch=resnet18", f"--input={pth}", f"--output={path}"]) == 1
    assert "not empty" in capsys.readouterr().err
    args = [
        "--arch=caffenet",
        "--source=torchvision",
        f"--input={pth}",
        f"--output={tmp_path / 'p'}",
    ]
    assert pretrained.main(args) == 1
    assert "comes from caffe" in capsys.readouterr().err
    (tmp_path / "bad.pth").write_bytes(b"not a PyTorch file")
    args = ["--arch=resnet18", f"--input={tmp_path / 'bad.pth'}", f"--output={tmp_path / 'q'}"]
    assert pretrained.main(args) == 1
    assert capsys.readouterr().err.startswith("dpq-convert: error: --input")


# ----------------------------------------------------------------------------------------------
# Fine-tuning: configs/cifar10_dpq.py (runlocal) from converted torchvision AlexNet weights.
# ----------------------------------------------------------------------------------------------
CIFAR_CONFIG = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "cifar10_dpq.py")


def write_cifar(root, per_class=12, seed=0):
    """A balanced cifar-10-batches-py: 5 train pickles and a test pickle (bytes keys)."""
    root.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.repeat(np.arange(10), per_class))
    pixels = rng.integers(0, 256, (labels.size, 32, 32, 3), dtype=np.uint8)
    names = (*cifar10.TRAIN_FILES, *cifar10.TEST_FILES)
    for name, rows in zip(names, np.array_split(np.arange(labels.size), len(names))):
        batch = {
            b"batch_label": b"fixture",
            b"labels": [int(v) for v in labels[rows]],
            b"data": pixels[rows].transpose(0, 3, 1, 2).reshape(len(rows), 3072),
            b"filenames": [],
        }
        (root / name).write_bytes(pickle.dumps(batch, protocol=2))
    meta = {b"label_names": [n.encode() for n in cifar10.CLASS_NAMES], b"num_vis": 3072}
    (root / cifar10.META_FILE).write_bytes(pickle.dumps(meta, protocol=2))


def test_cifar10_dpq_fine_tunes_from_converted_alexnet(tmp_path, monkeypatch):
    # The runlocal net: AlexNet (torchvision layout) at width 1/32, fc7 = model.features = 16.
    torch.manual_seed(5)
    ref = randomized(TorchAlexNet(1 / 32, fc7=16, classes=10))
    path = convert_torch(ref, "alexnet", tmp_path)
    config = config_lib.load_config(CIFAR_CONFIG, f"runlocal,alexnet=torchvision,pretrained={path}")
    assert config.model.backbone.pretrained == path
    assert config.input.pp_eval.endswith(pretrained.PP_TORCHVISION)
    # The trainer's own builder starts the trunk from the converted weights.
    graphdef, state, _ = train.build_state(config, num_classes=10, in_channels=3)
    model, _ = nnx.merge(graphdef, state)
    x = images((67, 67), seed=7)
    want = torch_features(ref, x)
    assert_same_features(jax_features(model.backbone, x), want)

    # A few steps of the run on a CIFAR-10 fixture (its own protocol name: 12 images a class).
    write_cifar(tmp_path / "cifar-10-batches-py")
    fixture = functools.partial(
        protocols.cifar10_dpq, train_per_class=8, query_per_class=2, val_query_per_class=2
    )
    monkeypatch.setitem(protocols.PROTOCOLS, "cifar10_dpq_fixture", fixture)
    with config.unlocked():
        config.protocol = "cifar10_dpq_fixture"
        config.input.data_dir = str(tmp_path / "tfds")
        config.input.source_dir = str(tmp_path / "cifar-10-batches-py")
        for evaluator in config.evals.values():
            evaluator.precision_ks = (5,)
    workdir = str(tmp_path / "workdir")
    result = train.train_and_evaluate(config, workdir)
    assert np.isfinite(result.report["results"][0]["metrics"]["map@all"])
    _, _, trained, _ = inference.restore_model(workdir, step="latest")
    start = np.asarray(model.backbone.convs[0].kernel[...])
    moved = np.asarray(trained.backbone.convs[0].kernel[...])
    fresh = np.asarray(
        alexnet.AlexNet(
            3, 16, input_hw=(67, 67), width=1 / 32, variant="torchvision", rngs=nnx.Rngs(0)
        )
        .convs[0]
        .kernel[...]
    )
    assert not np.array_equal(moved, start)  # the trunk trained ...
    # ... from the converted weights: it stays far closer to them than to a fresh start.
    assert np.abs(moved - start).max() < 0.1 * np.abs(fresh - start).max()
