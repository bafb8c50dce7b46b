"""CIFAR-10 from the `cifar-10-batches-py` pickles, as a TensorFlow-free TFDS builder.

CIFAR-10 (Krizhevsky, 2009) has 60,000 colour 32x32 images of 10 classes. The "python version"
release unpacks to `cifar-10-batches-py/` with `data_batch_1` ... `data_batch_5` (10,000
images each), `test_batch` (10,000) and `batches.meta`. Each batch is a Python 2 pickle of a
dict with `data` (uint8 `[10000, 3072]`: 1024 red, then 1024 green, then 1024 blue values, each
a row-major 32x32 plane) and `labels` (10,000 ints in 0..9); `batches.meta` holds
`label_names`. The pickles are read with an unpickler that admits only NumPy arrays and plain
data.

The source (`load_cifar10`) has the partitions `train` (indices 0..49,999: batches 1..5 in
order) then `test` (50,000..59,999). `cifar10_dsh` uses them as train / query; `cifar10_dpq`
and `cifar10_all` sample from all 60,000.

Example:
  >>> src = load_cifar10(source_dir="/data/cifar-10-batches-py")  # doctest: +SKIP
  >>> src.images.shape, src.partition_names  # doctest: +SKIP
  ((60000, 32, 32, 3), ('train', 'test'))

References:
  A. Krizhevsky, "Learning Multiple Layers of Features from Tiny Images", tech. report,
  University of Toronto, 2009.
"""

import pathlib

import numpy as np

from dpq_jax.data import builder_lib
from dpq_jax.data.release_source import ReleaseSource

CLASS_NAMES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILES = ("test_batch",)
META_FILE = "batches.meta"
_LAYOUT = """\
  cifar-10-batches-py/ (this folder, or a folder holding it) with
    data_batch_1 ... data_batch_5, test_batch, batches.meta
  (Python pickles of dict(data=uint8 [10000, 3072], labels=[10000 ints]))."""


def _get(batch: dict, key: str):
    """Value of `key` in a release dict whose keys may be str (Python 2 str) or bytes."""
    if key in batch:
        return batch[key]
    if key.encode() in batch:
        return batch[key.encode()]
    raise KeyError(key)


def read_batch(path: pathlib.Path) -> tuple[np.ndarray, np.ndarray]:
    """Reads one batch pickle.

    Args:
      path: a `data_batch_*` or `test_batch` file.

    Returns:
      images uint8 `[n, 32, 32, 3]` and labels int64 `[n]`.

    Raises:
      ValueError: missing, truncated or malformed file, or labels outside 0..9.
    """
    expected = "a pickled dict with 'data' (uint8 [n, 3072]) and 'labels' (n ints in 0..9)"
    batch = builder_lib.load_pickle(path, "CIFAR-10", expected)
    try:
        data = np.asarray(_get(batch, "data"))
        labels = np.asarray(_get(batch, "labels"))
    except (KeyError, TypeError) as e:
        raise ValueError(f"CIFAR-10: {path} is not {expected} (missing {e}).") from e
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise ValueError(
            f"CIFAR-10: {path} 'data' is {data.dtype}{list(data.shape)}; expected uint8 [n, 3072]."
        )
    if labels.shape != (data.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"CIFAR-10: {path} has {data.shape[0]} images but labels of "
            f"{labels.dtype}{list(labels.shape)}; expected {data.shape[0]} ints."
        )
    if labels.size and (labels.min() < 0 or labels.max() >= len(CLASS_NAMES)):
        raise ValueError(
            f"CIFAR-10: {path} holds labels in [{labels.min()}, {labels.max()}]; expected 0..9."
        )
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)  # [n, 3, H, W] -> [n, H, W, 3]
    return np.ascontiguousarray(images), labels.astype(np.int64)


def read_cifar10(root: str | pathlib.Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """`{"train": (images, labels), "test": (...)}` from a `cifar-10-batches-py` folder.

    Raises:
      ValueError: a missing or bad file (named in the message).
    """
    root = pathlib.Path(root)
    out = {}
    for part, files in (("train", TRAIN_FILES), ("test", TEST_FILES)):
        batches = [read_batch(root / name) for name in files]
        out[part] = (
            np.concatenate([b[0] for b in batches]),
            np.concatenate([b[1] for b in batches]),
        )
    return out


class DpqCifar10(builder_lib.ReleaseBuilder):
    """TFDS builder `dpq_cifar10`: splits `train` (50,000) and `test` (10,000), 32x32x3.

    Source folder: `source_dir`, else the manual dir (or its `cifar-10-batches-py/`).
    """

    RELEASE = "CIFAR-10"
    MANUAL_SUBDIR = "cifar-10-batches-py"
    LAYOUT = _LAYOUT
    MANUAL_DOWNLOAD_INSTRUCTIONS = _LAYOUT
    HOMEPAGE = "https://www.cs.toronto.edu/~kriz/cifar.html"
    DESCRIPTION = "CIFAR-10, read from the python-version pickles."
    BUILDER_CONFIGS = [builder_lib.release_config((32, 32), 3, "raw")]

    def check_layout(self, root):
        for name in (*TRAIN_FILES, *TEST_FILES):
            if not (root / name).is_file():
                raise ValueError(f"CIFAR-10: missing file {root / name}.")

    def source_files(self, root):
        return [root / name for name in (*TRAIN_FILES, *TEST_FILES)]

    def read_release(self, root):
        data = read_cifar10(root)
        return builder_lib.ReleaseData(
            partitions={
                part: builder_lib.PartitionData.single(labels, images.__getitem__)
                for part, (images, labels) in data.items()
            },
            class_names=_class_names(root),
        )


def _class_names(root: pathlib.Path) -> tuple[str, ...]:
    """`label_names` of `batches.meta` if present (checked), else the standard names."""
    path = root / META_FILE
    if not path.exists():
        return CLASS_NAMES
    meta = builder_lib.load_pickle(path, "CIFAR-10", "a pickled dict with 'label_names'")
    try:
        names = tuple(
            n.decode() if isinstance(n, bytes) else str(n) for n in _get(meta, "label_names")
        )
    except (KeyError, TypeError) as e:
        raise ValueError(f"CIFAR-10: {path} has no 'label_names' list ({e}).") from e
    if len(names) != len(CLASS_NAMES):
        raise ValueError(f"CIFAR-10: {path} lists {len(names)} label names, expected 10.")
    return names


def load_cifar10(
    data_dir: str | pathlib.Path | None = None,
    source_dir: str | pathlib.Path | None = None,
    *,
    in_memory: bool = True,
) -> ReleaseSource:
    """CIFAR-10 as a `ReleaseSource`, building the TFDS dataset on first use.

    Args:
      data_dir: TFDS data_dir (default `~/tensorflow_datasets` or `$TFDS_DATA_DIR`).
      source_dir: the `cifar-10-batches-py` folder (default: the manual dir, see
        `DpqCifar10`).
      in_memory: hold the 184 MB of pixels in memory (default) or read them lazily.

    Returns:
      images uint8 `[60000, 32, 32, 3]` (`train` then `test`), int32 labels 0..9 carrying the
      partition, `num_classes = 10`, name `"cifar10"`.

    Raises:
      ValueError: missing or bad source files, or a data_dir built from other files.
    """
    return builder_lib.load_release(
        DpqCifar10,
        DpqCifar10.BUILDER_CONFIGS[0],
        data_dir=data_dir,
        source_dir=source_dir,
        in_memory=in_memory,
        name="cifar10",
    )
