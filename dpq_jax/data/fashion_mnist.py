"""Fashion-MNIST from its four original IDX `.gz` files, as a TensorFlow-free TFDS builder.

Fashion-MNIST (Xiao, Rasul & Vollgraf, 2017) has 70,000 grey 28x28 images of 10 clothing
classes: 60,000 in `train-*` and 10,000 in `t10k-*`. Debian's package `dataset-fashion-mnist`
installs the four files under `/usr/share/datasets/fashion-mnist`, which is the default source;
any folder holding them works (uncompressed copies without `.gz` too).

The source built from it (`load_fashion_mnist`) has the partitions `train` (indices
0..59,999, in file order) then `test` (60,000..69,999). The `fmnist` protocol uses that index
layout: database = the 60,000 training images, queries = 1,000 test images (100 per class).

IDX format (LeCun et al.): big-endian; magic `0x00 0x00 0x08 ndim` (0x08 = unsigned byte),
then `ndim` int32 sizes, then the bytes; images `[N, 28, 28]` row-major, labels `[N]` in 0..9.

Example:
  >>> src = load_fashion_mnist(data_dir="/tmp/tfds")  # doctest: +SKIP
  >>> src.images.shape, src.num_classes, src.partition_names  # doctest: +SKIP
  ((70000, 28, 28, 1), 10, ('train', 'test'))

References:
  H. Xiao, K. Rasul and R. Vollgraf, "Fashion-MNIST: a Novel Image Dataset for Benchmarking
  Machine Learning Algorithms", arXiv:1708.07747, 2017.
"""

import gzip
import pathlib

import numpy as np

from dpq_jax.data import builder_lib
from dpq_jax.data.release_source import ReleaseSource

DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"
CLASS_NAMES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
# partition -> (images file, labels file), without the optional ".gz".
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
PUBLISHED_SIZES = {"train": 60000, "test": 10000}
_LAYOUT = """\
  train-images-idx3-ubyte.gz  train-labels-idx1-ubyte.gz
  t10k-images-idx3-ubyte.gz   t10k-labels-idx1-ubyte.gz
  (IDX files; uncompressed copies without .gz also work). apt-get install dataset-fashion-mnist
  puts them in /usr/share/datasets/fashion-mnist."""


def _find(root: pathlib.Path, stem: str) -> pathlib.Path:
    for name in (stem + ".gz", stem):
        if (root / name).is_file():
            return root / name
    raise ValueError(f"Fashion-MNIST: missing file {root / (stem + '.gz')} (or {stem}).")


def read_idx(path: str | pathlib.Path, ndim: int) -> np.ndarray:
    """Reads an unsigned-byte IDX file (gzip-compressed if it ends in `.gz`).

    Args:
      path: the file.
      ndim: the expected number of dimensions (3 for images, 1 for labels).

    Returns:
      uint8 array of the shape in the header.

    Raises:
      ValueError: unreadable or truncated file, wrong magic number or dimension count; the
        message names the file.
    """
    path = pathlib.Path(path)
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise ValueError(
            f"Fashion-MNIST: cannot read {path} ({e}); expected a complete IDX "
            f"{'gzip ' if path.suffix == '.gz' else ''}file. Reinstall dataset-fashion-mnist."
        ) from e
    if len(data) < 4 or data[:3] != b"\x00\x00\x08" or data[3] != ndim:
        raise ValueError(
            f"Fashion-MNIST: {path} does not start with the IDX magic 00 00 08 {ndim:02x} "
            f"(unsigned bytes, {ndim} dimensions); got {data[:4].hex(' ')}."
        )
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"Fashion-MNIST: {path} is truncated inside its header.")
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    want = int(np.prod(shape))
    if len(data) - header != want:
        raise ValueError(
            f"Fashion-MNIST: {path} header says shape {shape} ({want} bytes) but holds "
            f"{len(data) - header} bytes after the header; the file is truncated or corrupt."
        )
    return np.frombuffer(data, np.uint8, offset=header).reshape(shape)


def read_fashion_mnist(root: str | pathlib.Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Reads and validates the four files.

    Args:
      root: folder holding them.

    Returns:
      `{"train": (images uint8 [N, 28, 28, 1], labels int64 [N]), "test": (...)}`.

    Raises:
      ValueError: a missing, truncated or inconsistent file, or a label outside 0..9.
    """
    root = pathlib.Path(root)
    out = {}
    for part, (image_stem, label_stem) in FILES.items():
        image_path, label_path = _find(root, image_stem), _find(root, label_stem)
        images = read_idx(image_path, 3)
        labels = read_idx(label_path, 1).astype(np.int64)
        if images.shape[1:] != (28, 28):
            raise ValueError(
                f"Fashion-MNIST: {image_path} holds {images.shape[1:]} images, expected 28x28."
            )
        if images.shape[0] != labels.shape[0]:
            raise ValueError(
                f"Fashion-MNIST: {image_path} has {images.shape[0]} images but {label_path} has "
                f"{labels.shape[0]} labels; they must match."
            )
        if labels.size and labels.max() >= len(CLASS_NAMES):
            raise ValueError(
                f"Fashion-MNIST: {label_path} holds label {labels.max()}; expected 0..9."
            )
        out[part] = (images[..., None], labels)
    return out


class DpqFashionMnist(builder_lib.ReleaseBuilder):
    """TFDS builder `dpq_fashion_mnist`: splits `train` (60,000) and `test` (10,000), 28x28x1.

    Source folder: `source_dir`, else the manual dir (or its `fashion-mnist/` sub-folder), else
    `/usr/share/datasets/fashion-mnist`. See `builder_lib` for features and metadata.
    """

    RELEASE = "Fashion-MNIST"
    MANUAL_SUBDIR = "fashion-mnist"
    DEFAULT_SOURCE_DIRS = (DEBIAN_DIR,)
    LAYOUT = _LAYOUT
    MANUAL_DOWNLOAD_INSTRUCTIONS = _LAYOUT
    HOMEPAGE = "https://github.com/zalandoresearch/fashion-mnist"
    DESCRIPTION = "Fashion-MNIST, read from the original IDX files."
    BUILDER_CONFIGS = [builder_lib.release_config((28, 28), 1, "raw")]

    def check_layout(self, root):
        for image_stem, label_stem in FILES.values():
            _find(root, image_stem)
            _find(root, label_stem)

    def source_files(self, root):
        return [_find(root, stem) for pair in FILES.values() for stem in pair]

    def read_release(self, root):
        data = read_fashion_mnist(root)
        return builder_lib.ReleaseData(
            partitions={
                part: builder_lib.PartitionData.single(labels, images.__getitem__)
                for part, (images, labels) in data.items()
            },
            class_names=CLASS_NAMES,
        )


def load_fashion_mnist(
    data_dir: str | pathlib.Path | None = None,
    source_dir: str | pathlib.Path | None = None,
    *,
    in_memory: bool = True,
) -> ReleaseSource:
    """Fashion-MNIST as a `ReleaseSource`, building the TFDS dataset on first use.

    Args:
      data_dir: TFDS data_dir (default `~/tensorflow_datasets` or `$TFDS_DATA_DIR`).
      source_dir: folder with the four IDX files (default: see `DpqFashionMnist`).
      in_memory: hold the 55 MB of pixels in memory (default) or read them lazily.

    Returns:
      images uint8 `[70000, 28, 28, 1]` (`train` then `test`, file order), int32 labels 0..9
      carrying the partition, `num_classes = 10`, name `"fashion_mnist"`.

    Raises:
      ValueError: missing or bad source files, or a data_dir built from other files.
    """
    return builder_lib.load_release(
        DpqFashionMnist,
        DpqFashionMnist.BUILDER_CONFIGS[0],
        data_dir=data_dir,
        source_dir=source_dir,
        in_memory=in_memory,
        name="fashion_mnist",
    )
