"""Every config file loads (with and without runlocal) and its tiny model builds."""

import glob
import os

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from dpq_jax import config_lib, registry
from dpq_jax.methods import opqn

CONFIG_DIR = os.path.join(os.path.dirname(__file__), "..", "configs")
CONFIGS = sorted(glob.glob(os.path.join(CONFIG_DIR, "*.py")))


def test_there_are_configs():
    assert any(path.endswith("orl_opqn.py") for path in CONFIGS)


@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
@pytest.mark.parametrize("arg", ["", "runlocal"])
def test_config_loads_locked_with_tuples(path, arg):
    config = config_lib.load_config(path, arg)
    assert config.is_locked
    with pytest.raises(AttributeError):
        config.no_such_field_typo = 1  # locked: a typo in an override is an error
    for value in _walk(config.to_dict()):
        assert not isinstance(value, list), "sequences in configs must be tuples"
    assert config.input.batch_size % 8 == 0  # divides the 8 test devices
    assert config.method in registry.names("method")
    for evaluator in config.evals.values():
        assert evaluator.type in registry.names("evaluator")


@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
def test_runlocal_model_builds(path):
    config = config_lib.load_config(path, "runlocal")
    method = registry.get("method", config.method)
    model = nnx.eval_shape(
        lambda: method.build(config.model, num_classes=5, in_channels=1, rngs=nnx.Rngs(0))
    )
    params = nnx.state(model, nnx.Param)
    assert sum(x.size for x in __import__("jax").tree.leaves(params)) > 0


def test_parse_arg():
    arg = config_lib.parse_arg(
        "bits=24,runlocal,protocol=orl_unseen", bits=32, runlocal=False, protocol="orl_seen"
    )
    assert (arg.bits, arg.runlocal, arg.protocol) == (24, True, "orl_unseen")
    with pytest.raises(ValueError, match="Unknown config argument 'bitz'"):
        config_lib.parse_arg("bitz=3", bits=32)
    with pytest.raises(ValueError, match="not a int"):
        config_lib.parse_arg("bits=abc", bits=32)
    with pytest.raises(ValueError, match="choose one of"):
        opqn.pq_shape(40)


def test_registry_error_lists_names():
    with pytest.raises(KeyError, match=r"registered backbones: \[.*'sphereface20'.*\]"):
        registry.get("backbone", "resnet9000")
    with pytest.raises(KeyError, match=r"registered methods: \[.*'opqn'.*\].*defines no METHOD"):
        registry.get("method", "base")
    with pytest.raises(KeyError, match="known kinds"):
        registry.get("head", "opqn")


def test_registry_finds_modules_by_name_and_registered_entries(monkeypatch):
    from dpq_jax.models.backbones import cnn_small

    assert registry.get("method", "opqn") is opqn.METHOD
    assert registry.get("backbone", "cnn_small") is cnn_small.CNNSmall
    assert "base" not in registry.names("method")
    assert {"cnn_small", "sphereface20"} <= set(registry.names("backbone"))
    monkeypatch.setattr(registry, "_TABLE", {k: dict(v) for k, v in registry._TABLE.items()})
    registry.register("backbone", "my_net", "dpq_jax.models.backbones.cnn_small:CNNSmall")
    assert registry.get("backbone", "my_net") is cnn_small.CNNSmall
    assert "my_net" in registry.names("backbone")


def _walk(tree):
    if isinstance(tree, dict):
        for value in tree.values():
            yield from _walk(value)
    else:
        yield tree


@pytest.mark.parametrize("method", ["dsh", "ddh", "ddqh", "dcbh", "dcdh"])
@pytest.mark.parametrize("trunk", ["dcbh_net", "dsh_net"])
def test_fmnist_hashing_configs_build_on_every_shared_trunk(method, trunk):
    """Same-backbone rows: each method's heads on each shared trunk build and give codes."""
    config = config_lib.load_config(
        f"configs/fmnist_{method}.py", f"runlocal,multihead,trunk={trunk}"
    )
    assert config.model.backbone.name == trunk
    method_obj = registry.get("method", method)
    model = nnx.eval_shape(  # abstract: shapes only, nothing is compiled or run
        lambda: method_obj.build(config.model, num_classes=10, in_channels=1, rngs=nnx.Rngs(0))
    )
    graphdef, state = nnx.split(model)

    def codes_fn(state, images):
        model = nnx.merge(graphdef, state)
        model.eval()
        return method_obj.relaxed_codes(model, images)

    codes = jax.eval_shape(codes_fn, state, jax.ShapeDtypeStruct((2, 28, 28, 1), jnp.float32))
    assert [c.shape for c in codes] == [(2, b) for b in (12, 24, 36, 48)]


@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
@pytest.mark.parametrize("arg", ["", "runlocal"])
def test_config_passes_the_training_checks(path, arg):
    """What `train_and_evaluate` checks before touching a workdir holds for every shipped config
    (step counts, batch sizes on 8 devices, names, splits, a validation `select_on`), and every
    config takes `--config.input.source_dir` (the route for users' image folders)."""
    from dpq_jax import train

    config = config_lib.load_config(path, arg)
    train.validate_config(config, num_devices=8)
    assert config.input.source_dir == ""
    assert config.evals[config.select_on.split("/")[0]].query.startswith("val_")


def test_select_on_names_of_multi_head_and_binary_evaluators():
    from dpq_jax import train

    config = config_lib.load_config("configs/fmnist_dsh.py", "runlocal,multihead")
    names = set(train.selectable_metrics(config, "val"))
    assert {"val/map@all", "val/24bit/map@all", "val/48bit/p@r2", "val/r@r2"} <= names
    assert not {"val/20bit/map@all", "val/distinct_codes", "val/12bit/distinct_codes"} & names
    for select_on in ("val/24bit/map@all", "val/map@all", "val/p@r2"):
        with config.unlocked():
            config.select_on = select_on
        assert train.check_select_on(config) == select_on
    with config.unlocked():
        config.select_on = "val/20bit/map@all"
    with pytest.raises(ValueError, match="logs no metric '20bit/map@all'"):
        train.check_select_on(config)
    with config.unlocked():
        config.select_on = ""
    assert train.check_select_on(config) is None
    # PQ codes are ranked by ADC, not Hamming distance: no radius metrics to select on.
    opqn = config_lib.load_config("configs/orl_opqn.py", "runlocal")
    assert not any("@r" in name for name in train.selectable_metrics(opqn, "val"))
