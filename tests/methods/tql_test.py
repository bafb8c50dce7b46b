"""TQL as a method: the model, the multi-head loss against the NumPy twins of
losses/triplet_reference.py, 1 vs 8 devices, codes and real-valued descriptors, the configs."""

import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from dpq_jax import config_lib, parallel, registry
from dpq_jax.evaluators import retrieval
from dpq_jax.losses import triplet
from dpq_jax.losses import triplet_reference as ref
from dpq_jax.methods import tql

CONFIGS = os.path.join(os.path.dirname(__file__), "..", "..", "configs")
BITS = (4, 8)


def _model_cfg(bits=BITS, backbone="cnn_small"):
    backbones = {
        "cnn_small": {"name": "cnn_small", "widths": (4, 8)},
        "dsh_net": {"name": "dsh_net", "widths": (4, 4, 8), "input_hw": (16, 16)},
    }
    return ml_collections.ConfigDict(
        {"backbone": backbones[backbone], "features": 16, "bits": bits, "dtype": "float32"}
    )


def _batch(n=16, seed=3):
    rng = np.random.default_rng(seed)
    return {
        "image": rng.normal(size=(n, 16, 16, 1)).astype(np.float32),
        "label": rng.integers(0, 4, size=n).astype(np.int32),
    }


def _build(backbone="dsh_net", bits=BITS):
    return tql.METHOD.build(
        _model_cfg(bits, backbone), num_classes=4, in_channels=1, rngs=nnx.Rngs(0)
    )


def test_registered_by_module_name_as_a_hashing_method():
    assert registry.get("method", "tql") is tql.METHOD
    assert tql.METHOD.code_type == "binary" and tql.METHOD.query_sides == ("hamming",)
    assert tql.METHOD.code_lengths(_model_cfg()) == BITS
    assert tql.METHOD.code_lengths(_model_cfg(12)) == (12,)


@pytest.mark.parametrize("quantization", triplet.QUANTIZATIONS)
def test_multi_head_loss_is_the_sum_of_the_twins(quantization):
    """Dsh_net has no batch statistics, so the codes the loss sees are `model(images)`."""
    model = _build()
    batch = {k: jnp.asarray(v) for k, v in _batch().items()}
    cfg = tql.loss_config(quantization, "batch_hard", quant_weight=0.7)
    total, aux = tql.METHOD.loss_fn(model, batch, cfg)
    want = 0.0
    for bits, f in zip(BITS, model(batch["image"]), strict=True):
        w, trip, quant = ref.tql_loss(
            np.asarray(f),
            np.asarray(batch["label"]),
            margin=0.5 * bits,
            quant_margin=0.5 * bits,
            quant_weight=0.7,
            quantization=quantization,
            mining="batch_hard",
        )
        want += w
        np.testing.assert_allclose(float(aux[f"loss_triplet_{bits}bit"]), trip, rtol=1e-5)
        np.testing.assert_allclose(float(aux[f"loss_quant_{bits}bit"]), quant, rtol=1e-5)
    np.testing.assert_allclose(float(total), want, rtol=1e-5)
    assert {"active_triplets_8bit", "bit_balance_4bit"} <= set(aux)


def test_one_and_eight_devices_give_the_same_loss_and_gradients(cpu_devices):
    """cnn_small has BatchNorm: its statistics are over the global batch on 8 devices too."""
    model = _build("cnn_small")
    graphdef, state = nnx.split(model)
    cfg = tql.loss_config("triplet_b", "semi_hard")

    @jax.jit
    def loss_and_grads(state, batch):
        def loss(params):
            return tql.METHOD.loss_fn(nnx.merge(graphdef, params), batch, cfg)[0]

        return jax.value_and_grad(loss)(state)

    batch = _batch()
    loss1, grads1 = loss_and_grads(state, {k: jnp.asarray(v) for k, v in batch.items()})
    mesh = parallel.make_mesh(devices=cpu_devices)
    with jax.set_mesh(mesh):
        loss8, grads8 = loss_and_grads(
            jax.device_put(state, parallel.replicated(mesh)), parallel.put_batch(batch, mesh)
        )
    np.testing.assert_allclose(float(loss8), float(loss1), rtol=1e-5)
    # Float32 sums over the batch in another order (BatchNorm, convolutions; the bias before
    # a BatchNorm has a gradient of pure rounding noise): tolerance relative to the largest
    # gradient; other triplets would differ at its order.
    scale = max(float(np.abs(np.asarray(a)).max()) for a in jax.tree.leaves(grads1))
    for a, b in zip(jax.tree.leaves(grads1), jax.tree.leaves(grads8), strict=True):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-4, atol=1e-5 * scale)
    assert float(loss1) > 0


def test_codes_are_the_signs_of_the_tanh_descriptors():
    model = _build("cnn_small")
    model.eval()
    images = jnp.asarray(_batch(12)["image"])
    out = jax.jit(tql.METHOD.encode_fn)(model, images)
    trunk = np.asarray(model.backbone(images))
    for head, layer in enumerate(model.heads):
        w, b = np.asarray(layer.kernel[...]), np.asarray(layer.bias[...])
        f = np.tanh(trunk.astype(np.float64) @ w + b)  # f = tanh(Wz)
        real = tql.METHOD.real_descriptors(out, head)
        assert real.shape == (12, BITS[head]) and real.dtype == np.float32
        np.testing.assert_allclose(real, f, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(
            tql.METHOD.database_codes(out, head), (f > 0).astype(np.uint8)
        )
    assert np.abs(np.asarray(out["relaxed"][1])).max() < 1.0


def test_bad_loss_settings_are_refused():
    with pytest.raises(ValueError, match="loss.quantization must be one of"):
        tql.loss_config("l1")
    with pytest.raises(ValueError, match="loss.mining must be one of"):
        tql.loss_config("triplet_a", "hardest")
    with pytest.raises(ValueError, match=">= 0"):
        tql.loss_config(quant_weight=-1.0)
    model = _build()
    batch = {k: jnp.asarray(v) for k, v in _batch().items()}
    cfg = tql.loss_config()
    cfg.mining = "hardest"
    with pytest.raises(ValueError, match="loss.mining must be one of"):
        tql.METHOD.loss_fn(model, batch, cfg)
    with pytest.raises(ValueError, match="missing the field 'margin_per_bit'"):
        tql.METHOD.loss_fn(model, batch, {"mining": "batch_hard", "quantization": "none"})


def test_the_evaluator_refuses_real_valued_for_a_method_without_descriptors():
    cfg = ml_collections.ConfigDict({"query_side": "", "real_valued": True})
    with pytest.raises(ValueError, match="real_valued is set, but method 'opqn'"):
        retrieval.RetrievalEvaluator(
            "test",
            cfg,
            method=registry.get("method", "opqn"),
            code_lengths=(16,),
            graphdef=None,
            source=None,
            splits=None,
            mesh=None,
            pp_spec="",
            batch_size=8,
        )


# --- configs ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name,arg,hw,channels",
    [
        ("fmnist_tql.py", "runlocal", (28, 28), 1),
        ("fmnist_tql.py", "runlocal,backbone=cnn_small,quant=pointwise", (28, 28), 1),
        ("fmnist_tql.py", "runlocal,trunk=dcbh_net,quant=triplet_b", (28, 28), 1),
        ("cifar10_tql.py", "runlocal,mining=semi_hard", (32, 32), 3),
        ("inshop_tql.py", "runlocal", (32, 32), 3),
        ("inshop_tql.py", "runlocal,backbone=dsh_net", (32, 32), 3),
    ],
)
def test_configs_build_models_that_give_both_heads(name, arg, hw, channels):
    config = config_lib.load_config(os.path.join(CONFIGS, name), arg)
    assert config.method == "tql" and config.model.bits == (12, 48)
    model = nnx.eval_shape(
        lambda: tql.METHOD.build(
            config.model, num_classes=10, in_channels=channels, rngs=nnx.Rngs(0)
        )
    )
    graphdef, state = nnx.split(model)

    def codes_fn(state, images):
        model = nnx.merge(graphdef, state)
        model.eval()
        return tql.METHOD.relaxed_codes(model, images)

    codes = jax.eval_shape(codes_fn, state, jax.ShapeDtypeStruct((2, *hw, channels), jnp.float32))
    assert [c.shape for c in codes] == [(2, 12), (2, 48)]
    assert config.evals.test.real_valued and not config.evals.val.get("real_valued", False)
    if config.input.sampler == "class_balanced":
        assert config.input.batch_size % config.input.classes_per_batch == 0


def test_config_arguments_reach_the_loss_and_the_input():
    fm = config_lib.load_config(os.path.join(CONFIGS, "fmnist_tql.py"), "quant=triplet_b,bits=24")
    assert (fm.loss.quantization, fm.loss.mining, fm.model.bits) == ("triplet_b", "batch_all", 24)
    assert fm.input.sampler == "uniform" and fm.protocol == "fmnist"
    shop = config_lib.load_config(os.path.join(CONFIGS, "inshop_tql.py"), "")
    assert shop.input.sampler == "class_balanced" and shop.input.batch_size == 128
    assert shop.input.classes_per_batch == 32 and shop.evals.test.recall_ks == (1, 10, 20)
    assert (shop.evals.test.query, shop.evals.test.database) == ("query", "database")
    cifar = config_lib.load_config(os.path.join(CONFIGS, "cifar10_tql.py"), "")
    assert cifar.protocol == "cifar10_dsh" and cifar.model.backbone.name == "dsh_net"
    with pytest.raises(ValueError, match="loss.quantization must be one of"):
        config_lib.load_config(os.path.join(CONFIGS, "fmnist_tql.py"), "quant=l2")
    with pytest.raises(ValueError, match="backbone must be one of"):
        config_lib.load_config(os.path.join(CONFIGS, "cifar10_tql.py"), "backbone=resnet")


def test_small_image_backbones_and_recipe():
    backbones = tql.small_image_backbones([32, 32])
    assert backbones["dsh_net"][:2] == ({"name": "dsh_net", "input_hw": (32, 32)}, 500)  # FC 500
    assert backbones["cnn_small"][:2] == ({"name": "cnn_small", "widths": (32, 64, 128)}, 128)
    config = ml_collections.ConfigDict()
    config.input = config_lib.input_config("fmnist", batch_size=256, eval_batch_size=1024)
    tql.recipe(
        config, steps=1000, evaluations=4, warmup_steps=200, precision_ks=(100,), runlocal=False
    )
    optim = config.optim  # ours: AdamW lr 1e-3, cosine, weight decay 4e-3
    assert (optim.name, optim.lr, optim.weight_decay, optim.schedule) == (
        "adamw",
        1e-3,
        4e-3,
        "cosine",
    )
    assert optim.warmup_steps == 200 and config.total_steps == 1000
    assert config.ckpt_steps == config.evals.val.log_steps == 250
    assert config.evals.test.real_valued and config.evals.test.precision_ks == (100,)
    tql.recipe(config, steps=3, evaluations=4, warmup_steps=0, precision_ks=(5,), runlocal=True)
    assert config.ckpt_steps == 2 and config.input.classes_per_batch == 4  # smoke run


def test_small_image_config():
    arg = config_lib.parse_arg(
        "",
        quant="pointwise",
        mining="batch_hard",
        bits=0,
        steps=800,
        sampler="uniform",
        backbone="cnn_small",
        runlocal=False,
    )
    config = tql.small_image_config(
        arg, protocol="fmnist", data="fmnist", input_hw=(28, 28), evaluations=8, warmup_steps=50
    )
    assert (config.protocol, config.input.dataset, config.method) == (
        "fmnist",
        "fashion_mnist",
        "tql",
    )
    assert (config.input.batch_size, config.input.sampler) == (256, "uniform")
    assert config.model.bits == (12, 48) and config.model.features == 128
    assert (config.loss.quantization, config.loss.mining) == ("pointwise", "batch_hard")
    assert config.ckpt_steps == 100 and config.optim.warmup_steps == 50
