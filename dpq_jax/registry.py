"""Components by name: modules found by their name, plus a table for names that are not modules.

Configs hold names; code looks the object up here, importing its module only when asked, so
`import dpq_jax` stays light and optional dependencies stay optional.

Methods, evaluators and backbones are found by module name, as big_vision finds its models and
evaluators: the name is a module of the kind's package and the object is a fixed attribute of
that module (`MODULE_KINDS`):

| kind | name `x` resolves to |
|---|---|
| `"method"` | `dpq_jax.methods.x.METHOD` (a `methods.base.Method`) |
| `"evaluator"` | `dpq_jax.evaluators.x.Evaluator` (the evaluator class) |
| `"backbone"` | `dpq_jax.models.backbones.x.Model` (the NNX module class) |

so a new `dpq_jax/methods/dsh.py` defining `METHOD` is `registry.get("method", "dsh")` with no
edit here. Datasets keep a table, since one loader module serves several names
(`"vggface2_to_cfw60k"` lives in `image_folder.py`). `register(kind, name, target)` adds an
entry of any kind (users' own backbones, methods or datasets); an entry registered under a
module kind's name takes precedence over the module.

Example:
  >>> from dpq_jax import registry
  >>> registry.get("backbone", "cnn_small").__name__
  'CNNSmall'
  >>> registry.get("backbone", "resnet9000")  # doctest: +ELLIPSIS
  Traceback (most recent call last):
  KeyError: "Unknown backbone 'resnet9000'; registered backbones: [...'cnn_small', ...]..."
"""

import importlib
import importlib.util
import pkgutil
from typing import Any

# kind -> (package, attribute): name `x` of the kind is `<package>.x.<attribute>`.
MODULE_KINDS = {
    "method": ("dpq_jax.methods", "METHOD"),
    "evaluator": ("dpq_jax.evaluators", "Evaluator"),
    "backbone": ("dpq_jax.models.backbones", "Model"),
}

# kind -> name -> object or "module:attribute" (imported on first use). Users add entries with
# `register`.
_TABLE: dict[str, dict[str, str | Any]] = {
    "dataset": {
        # Each loader takes (data_dir=None, source_dir=None) and returns an ArraySource-compatible
        # ReleaseSource (see dpq_jax/data/builder_lib.py).
        "orl_faces": "dpq_jax.data.orl:load_orl_faces",
        "fashion_mnist": "dpq_jax.data.fashion_mnist:load_fashion_mnist",
        "cifar10": "dpq_jax.data.cifar10:load_cifar10",
        "facescrub": "dpq_jax.data.ddh_faces:load_facescrub",
        "youtube_faces": "dpq_jax.data.ddh_faces:load_youtube_faces",
        "cfw60k": "dpq_jax.data.image_folder:load_cfw60k",
        "vggface2": "dpq_jax.data.image_folder:load_vggface2",
        "vggface2_to_facescrub": "dpq_jax.data.image_folder:load_vggface2_to_facescrub",
        "vggface2_to_cfw60k": "dpq_jax.data.image_folder:load_vggface2_to_cfw60k",
        "vggface2_to_youtube_faces": "dpq_jax.data.image_folder:load_vggface2_to_youtube_faces",
        "nuswide": "dpq_jax.data.nuswide:load_nuswide",
        "imagenet100": "dpq_jax.data.imagenet100:load_imagenet100",
        "inshop": "dpq_jax.data.inshop:load_inshop",
        "image_folder": "dpq_jax.data.image_folder:load_image_folder",
        "image_csv": "dpq_jax.data.image_csv:load_image_csv",
        "tfds_cifar10": "dpq_jax.data.tfds_source:load_tfds_cifar10",
        "tfds_fashion_mnist": "dpq_jax.data.tfds_source:load_tfds_fashion_mnist",
    },
}


def register(kind: str, name: str, target: str | Any) -> None:
    """Registers `target` (an object or a "module:attribute" string) under `kind`/`name`."""
    _TABLE.setdefault(kind, {})[name] = target


def names(kind: str) -> tuple[str, ...]:
    """The names of `kind`, sorted: registered ones plus, for a module kind, every module of
    its package that defines the kind's attribute (those modules are imported)."""
    found = set(_TABLE.get(kind, {}))
    if kind in MODULE_KINDS:
        package, attribute = MODULE_KINDS[kind]
        for info in pkgutil.iter_modules(importlib.import_module(package).__path__):
            if not info.ispkg and not info.name.startswith("_"):
                module = importlib.import_module(f"{package}.{info.name}")
                if hasattr(module, attribute):
                    found.add(info.name)
    return tuple(sorted(found))


def get(kind: str, name: str) -> Any:
    """Returns the object named `name` of `kind`, importing its module on first use.

    Raises:
      KeyError: unknown kind or name; the message lists the known ones.
    """
    table = _TABLE.get(kind, {})
    if name in table:
        target = table[name]
        if isinstance(target, str):
            module_name, attribute = target.split(":")
            target = getattr(importlib.import_module(module_name), attribute)
            table[name] = target
        return target
    if kind in MODULE_KINDS:
        package, attribute = MODULE_KINDS[kind]
        module_name = f"{package}.{name}"
        if name.isidentifier() and importlib.util.find_spec(module_name) is not None:
            module = importlib.import_module(module_name)
            if hasattr(module, attribute):
                return getattr(module, attribute)
            problem = f"module {module_name} defines no {attribute}"
        else:
            problem = f"no module {module_name}"
        raise KeyError(
            f"Unknown {kind} {name!r}; registered {kind}s: {list(names(kind))} ({problem}). Fix "
            f"the config's name, define {attribute} in {module_name}, or call "
            f"dpq_jax.registry.register({kind!r}, {name!r}, ...)."
        )
    if kind not in _TABLE:
        known = sorted({*MODULE_KINDS, *_TABLE})
        raise KeyError(f"Unknown registry kind {kind!r}; known kinds: {known}.")
    raise KeyError(
        f"Unknown {kind} {name!r}; registered {kind}s: {list(names(kind))}. "
        f"Fix the config's name or call dpq_jax.registry.register({kind!r}, {name!r}, ...)."
    )
