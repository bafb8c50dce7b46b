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


def test_face_data_gives_opqn_statistics_and_train_sizes():
    # OPQN data_loader.py (METHODS §1.3): FaceScrub's mean and std, also used for YouTube Faces.
    norm, train_images = config_lib.face_data(
        "youtube_faces", choices=("facescrub", "youtube_faces")
    )
    assert norm == "value_range(0,1)|normalize((0.639, 0.479, 0.404),(0.216, 0.183, 0.171))"
    assert train_images == 63800  # the estimate, until a run prints the real size
    # deprocess_image's ×0.1 as the std ×10; an explicit size wins over the estimate.
    norm, train_images = config_lib.face_data("cfw60k", 1234, choices=("cfw60k",), std_scale=10)
    assert norm.endswith("normalize((0.507, 0.403, 0.344),(2.59, 2.26, 2.12))")
    assert train_images == 1234
    with pytest.raises(ValueError, match=r"dataset='cfw60k'; choose one of \['facescrub'\]"):
        config_lib.face_data("cfw60k", choices=("facescrub",))


def test_image_input_and_presets():
    cfg = config_lib.image_input(
        "vggface2", batch_size=256, eval_batch_size=128, pp_train="flip_lr", pp_eval="", prefetch=4
    )
    assert (cfg.dataset, cfg.batch_size, cfg.eval_batch_size) == ("vggface2", 256, 128)
    assert (cfg.pp_train, cfg.pp_eval, cfg.prefetch) == ("flip_lr", "", 4)
    assert cfg.data_dir == cfg.source_dir == ""  # set on the command line
    cifar = config_lib.input_config("cifar10", batch_size=256, eval_batch_size=1024)
    # CIFAR-10's per-channel mean and std on the 0..1 scale; flips in training only.
    norm = "value_range(0,1)|normalize((0.491,0.482,0.447),(0.247,0.243,0.262))"
    assert (cifar.dataset, cifar.pp_train, cifar.pp_eval) == ("cifar10", f"flip_lr|{norm}", norm)
    assert cifar.prefetch == 2
    with pytest.raises(ValueError, match="Unknown input preset 'mnist'"):
        config_lib.input_config("mnist", batch_size=8, eval_batch_size=8)


def test_cnn_small_trunk():
    trunk = config_lib.cnn_small_trunk((32, 26))
    assert trunk.to_dict() == {
        "name": "cnn_small",
        "widths": (32, 64, 128),
        "pool": "flatten",
        "input_hw": (32, 26),
    }
    assert config_lib.cnn_small_trunk([28, 28], tiny=True).widths == (4, 8)
    assert config_lib.cnn_small_trunk([28, 28]).input_hw == (28, 28)  # a tuple: overridable


@pytest.mark.parametrize("size, crop, widths", [(32, (32, 26), 3), (112, (112, 92), 5)])
def test_orl_sizes_feed_their_trunk(size, crop, widths):
    """Both ORL sizes: the train and eval pipelines turn a native 112×92 ORL image into the
    trunk's `input_hw`, and orl_opqn's `size` argument picks both."""
    import numpy as np

    from dpq_jax.data import pp

    cfg_input, trunk = config_lib.orl_input_and_trunk(size)
    image = np.random.default_rng(0).integers(0, 256, (112, 92, 1), dtype=np.uint8)
    train = pp.build(cfg_input.pp_train)(image, np.random.default_rng(1))
    evaluated = pp.build(cfg_input.pp_eval)(image, None)
    assert train.shape == evaluated.shape == (*crop, 1)
    assert tuple(trunk.input_hw) == crop and len(trunk.widths) == widths
    config = config_lib.load_config(
        os.path.join(CONFIG_DIR, "orl_opqn.py"), f"size={size},protocol=orl_unseen,bits=64"
    )
    assert config.input.pp_eval == cfg_input.pp_eval
    assert config.model.backbone.to_dict() == trunk.to_dict()
    assert (config.model.head.num_codebooks, config.model.embedding_dim) == (8, 2048)
    with pytest.raises(ValueError, match=r"size=64; choose one of \[32, 112\]"):
        config_lib.orl_input_and_trunk(64)
