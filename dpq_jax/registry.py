"""Name -> factory registry with lazy imports (after scenic's dataset registry).

Configs hold names; code looks the object up here, importing its module only when asked,
so `import dpq_jax` stays light and optional dependencies stay optional.

Example:
  >>> from dpq_jax import registry
  >>> registry.get("backbone", "cnn_small").__name__
  'CNNSmall'
"""

import importlib
from typing import Any

# kind -> name -> "module:attribute". Users add entries with `register`.
_TABLE: dict[str, dict[str, str | Any]] = {
    "backbone": {
        "cnn_small": "dpq_jax.models.backbones.cnn_small:CNNSmall",
        "sphereface20": "dpq_jax.models.backbones.sphereface:SphereFace20",
    },
    "head": {
        "opqn": "dpq_jax.quantizers.opqn:OrthoPQHead",
    },
    "method": {
        "opqn": "dpq_jax.methods.opqn:METHOD",
    },
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
    "evaluator": {
        "retrieval": "dpq_jax.evaluators.retrieval:RetrievalEvaluator",
    },
}


def register(kind: str, name: str, target: str | Any) -> None:
    """Registers `target` (an object or a "module:attribute" string) under `kind`/`name`."""
    _TABLE.setdefault(kind, {})[name] = target


def names(kind: str) -> tuple[str, ...]:
    """The registered names of `kind`, sorted."""
    return tuple(sorted(_TABLE.get(kind, {})))


def get(kind: str, name: str) -> Any:
    """Returns the object registered as `kind`/`name`, importing its module on first use.

    Raises:
      KeyError: unknown kind or name; the message lists what is registered.
    """
    if kind not in _TABLE:
        raise KeyError(f"Unknown registry kind {kind!r}; known kinds: {sorted(_TABLE)}.")
    table = _TABLE[kind]
    if name not in table:
        raise KeyError(
            f"Unknown {kind} {name!r}; registered {kind}s: {list(names(kind))}. "
            f"Fix the config's name or call dpq_jax.registry.register({kind!r}, {name!r}, ...)."
        )
    target = table[name]
    if isinstance(target, str):
        module_name, attr = target.split(":")
        target = getattr(importlib.import_module(module_name), attr)
        table[name] = target
    return target
