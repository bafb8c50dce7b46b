"""TFDS built-in datasets (e.g. `cifar10`) through the same `ReleaseSource` interface.

Needs TensorFlow (`pip install dpq_jax[tf]`), imported only when a loader here is called;
TensorFlow is kept off the GPUs. The dataset must already be prepared in the data_dir (`tfds
build cifar10`, or `download=True`, which is the only place dpq_jax lets TFDS use the network).
The requested splits are read whole into memory (`batch_size=-1`) and concatenated in order,
each becoming a partition, so the protocols that follow a release split work unchanged (e.g.
`cifar10_dsh` with `splits=("train", "test")`).

Example:
  >>> src = load_tfds("cifar10", splits=("train", "test"))  # doctest: +SKIP
  >>> src.partition_names  # doctest: +SKIP
  ('train', 'test')
"""

import pathlib
from collections.abc import Sequence

import numpy as np

from dpq_jax.data.release_source import PartitionedLabels, ReleaseSource


def _import_tensorflow():
    try:
        import tensorflow as tf  # noqa: PLC0415 (optional dependency, imported on use)
    except ImportError as e:
        raise ValueError(
            "TFDS built-in datasets need TensorFlow: pip install 'dpq_jax[tf]' (tensorflow-cpu). "
            "The dpq_* builders (fashion_mnist, cifar10, ...) need no TensorFlow."
        ) from e
    tf.config.set_visible_devices([], "GPU")  # Leave the accelerators to JAX.
    return tf


def load_tfds(
    name: str,
    data_dir: str | pathlib.Path | None = None,
    *,
    splits: Sequence[str] = ("train", "test"),
    image_key: str = "image",
    label_key: str = "label",
    download: bool = False,
) -> ReleaseSource:
    """A TFDS built-in image-classification dataset as an in-memory `ReleaseSource`.

    Args:
      name: TFDS name, e.g. `"cifar10"`, `"fashion_mnist"`.
      data_dir: TFDS data_dir.
      splits: splits to read, in order; each becomes a partition of that name.
      image_key, label_key: feature names of the uint8 image and the class label.
      download: let TFDS download and prepare the dataset if it is missing.

    Returns:
      images uint8 `[N, H, W, C]`, int32 labels carrying the partitions, name `name`.

    Raises:
      ValueError: TensorFlow missing, the dataset not prepared (and `download=False`), or
        features that are not a uint8 image and an integer class label.
    """
    _import_tensorflow()
    import tensorflow_datasets as tfds  # noqa: PLC0415

    builder = tfds.builder(name, data_dir=None if data_dir is None else str(data_dir))
    if not builder.is_prepared():
        if not download:
            raise ValueError(
                f"TFDS dataset {name!r} is not prepared in {builder.data_dir}; run "
                f"`tfds build {name}` or call load_tfds(..., download=True)."
            )
        builder.download_and_prepare()
    features = builder.info.features
    if image_key not in features or label_key not in features:
        raise ValueError(
            f"TFDS dataset {name!r} has features {list(features)}; expected {image_key!r} and "
            f"{label_key!r} (pass image_key= / label_key=)."
        )
    images, labels, partition = [], [], []
    for code, split in enumerate(splits):
        data = tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1))
        x, y = np.asarray(data[image_key]), np.asarray(data[label_key])
        if x.dtype != np.uint8 or x.ndim != 4 or y.ndim != 1:
            raise ValueError(
                f"TFDS dataset {name!r} split {split!r}: {image_key} is {x.dtype}{list(x.shape)} "
                f"and {label_key} {y.dtype}{list(y.shape)}; expected uint8 [N, H, W, C] and [N]."
            )
        images.append(x)
        labels.append(y.astype(np.int32))
        partition.append(np.full(len(y), code, np.int8))
    num_classes = getattr(features[label_key], "num_classes", None)
    class_names = tuple(getattr(features[label_key], "names", ()) or ())
    labels = np.concatenate(labels)
    return ReleaseSource(
        images=np.concatenate(images),
        labels=PartitionedLabels(labels, np.concatenate(partition), splits),
        num_classes=int(num_classes or labels.max() + 1),
        name=name,
        class_names=class_names,
    )


def load_tfds_cifar10(data_dir=None, source_dir=None) -> ReleaseSource:
    """TFDS's `cifar10` (`train` then `test`); registered as dataset `tfds_cifar10`."""
    del source_dir  # TFDS built-ins live in the data_dir.
    return load_tfds("cifar10", data_dir)


def load_tfds_fashion_mnist(data_dir=None, source_dir=None) -> ReleaseSource:
    """TFDS's `fashion_mnist` (`train` then `test`); registered as `tfds_fashion_mnist`."""
    del source_dir
    return load_tfds("fashion_mnist", data_dir)
