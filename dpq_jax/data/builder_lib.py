"""Shared machinery of the TensorFlow-free TFDS builders for paper releases and users' data.

Each release (Fashion-MNIST, CIFAR-10, the DDH face pickles, identity folders, NUS-WIDE,
ImageNet-100, In-shop, a user's folder or CSV) has a module with a `ReleaseBuilder` subclass
that only knows how to check and read its on-disk layout (`check_layout`, `source_files`,
`read_release`). This module does the rest, the same way for all of them:

* **Where the files are.** In order: the `source_dir` argument; the `manual_dir` of the
  `download_config` (the folder itself or its sub-folder `MANUAL_SUBDIR`); the TFDS default
  manual dir `<data_dir>/downloads/manual/<MANUAL_SUBDIR>`; the builder's `DEFAULT_SOURCE_DIRS`
  (Fashion-MNIST: Debian's `/usr/share/datasets/fashion-mnist`). Nothing is ever downloaded:
  `try_download_gcs` is forced off and no URL is declared.
* **What is written.** One TFDS split per release partition (`train`, `test`, `query`, ...), in
  array_record files, examples in release order (`disable_shuffling`). Features:
  `image` (a uint8 `tfds.features.Tensor` for small fixed-size releases, else a
  `tfds.features.Image` fed PNG or JPEG bytes encoded by `image_io` (PIL), so no TensorFlow is
  needed), `label` (int64 `[n_labels]`: the example's class ids; exactly one for
  single-label releases) and `index` (int64, position in its split). The builder metadata
  records a fingerprint of the source files, the class names, the partitions and every label
  (so a loader gets the labels without reading the records).
* **How it is read.** `load_release` returns a `ReleaseSource`: the partitions concatenated in
  release order, labels as `PartitionedLabels`. Images are either held in memory (decoded once;
  afterwards cached as `dpq_images.npz` beside the array_record files) or, for large releases,
  `LazyImages` that read and decode each record on access through `tfds.data_source`
  (`in_memory=None` chooses: in memory up to `MAX_IN_MEMORY_BYTES`).

Large releases are resized at build time (`image_size`), stored as JPEG (quality 95), and read
lazily, so the host never holds them: NUS-WIDE at 256x256 is about 38 GB as raw uint8 but a few
GB of JPEG on disk, decoded at about 1-2 ms per image.

Every problem with the source data (missing folder, wrong layout, truncated file, unreadable
image, label out of range) raises ValueError naming the file and what was expected.

Paths: `data_dir` and `source_dir` may be local or URIs (`gs://...`, `io_utils.as_path`); TFDS
writes and reads a remote data_dir itself, and the image cache goes through `io_utils`. A
release reader gets its `root` as a `pathlib.Path` (local) or an `etils.epath.Path` (remote),
so it must open files with `path.open()` / `path.read_bytes()`, never the builtin `open`.
"""

import base64
import dataclasses
import pathlib
import pickle
import threading
import zlib
from collections.abc import Callable, Sequence

import numpy as np
import tensorflow_datasets as tfds
from absl import logging

from dpq_jax import io_utils
from dpq_jax.data import image_io
from dpq_jax.data.release_source import LazyImages, PartitionedLabels, ReleaseSource

# in_memory=None loads a release into host memory when its uint8 pixels take at most this.
MAX_IN_MEMORY_BYTES = 1 << 30
_CACHE_NAME = "dpq_images.npz"


# ----------------------------------------------------------------------------------------------
# What a release reader returns
# ----------------------------------------------------------------------------------------------
@dataclasses.dataclass
class PartitionData:
    """One partition of a release as read from its source files.

    Attributes:
      label_ids: int64 `[sum(label_counts)]`, the class ids of all examples back to back.
      label_counts: int64 `[n]`, how many class ids each example has (1 for single-label).
      image: `i -> uint8 [H, W, C]`, the i-th image (read and resized on demand).
    """

    label_ids: np.ndarray
    label_counts: np.ndarray
    image: Callable[[int], np.ndarray]

    @property
    def size(self) -> int:
        return int(self.label_counts.size)

    @classmethod
    def single(cls, labels, image: Callable[[int], np.ndarray]) -> "PartitionData":
        """A single-label partition from `[n]` class ids."""
        labels = np.asarray(labels, np.int64).reshape(-1)
        return cls(labels, np.ones(labels.size, np.int64), image)

    @classmethod
    def multi(cls, label_lists: Sequence[Sequence[int]], image) -> "PartitionData":
        """A multi-label partition from one list of class ids per example."""
        counts = np.asarray([len(ids) for ids in label_lists], np.int64)
        ids = np.fromiter((i for ids in label_lists for i in ids), np.int64, int(counts.sum()))
        return cls(ids, counts, image)

    def labels_of(self, i: int) -> np.ndarray:
        start = int(self.label_counts[:i].sum()) if i else 0
        return self.label_ids[start : start + int(self.label_counts[i])]


@dataclasses.dataclass
class ReleaseData:
    """A whole release: partitions in release order, class names, and whether multi-label."""

    partitions: dict[str, PartitionData]
    class_names: tuple[str, ...]
    multi_label: bool = False


# ----------------------------------------------------------------------------------------------
# File helpers (errors name the file and the expectation)
# ----------------------------------------------------------------------------------------------
class _NumpyUnpickler(pickle.Unpickler):
    """Unpickles NumPy arrays, lists, dicts, strings and numbers; refuses any other global.

    Release pickles are data; refusing other globals means a tampered file cannot run code.
    """

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),  # bytes written by Python 3 at protocol 2
        ("copy_reg", "_reconstructor"),
        ("copyreg", "_reconstructor"),
        ("__builtin__", "object"),
        ("builtins", "object"),
    }

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(
            f"global {module}.{name} is not allowed (only NumPy arrays and plain data)"
        )


def load_pickle(path: pathlib.Path, what: str, expected: str):
    """Loads a (Python 2 or 3) data pickle safely.

    Args:
      path: the file.
      what: dataset name for messages.
      expected: what the file should hold, for messages.

    Returns:
      The unpickled object (Python 2 strings decoded as latin-1).

    Raises:
      ValueError: missing, truncated or foreign file; the message names it.
    """
    try:
        with io_utils.as_path(path).open("rb") as f:
            return _NumpyUnpickler(f, encoding="latin1").load()
    except FileNotFoundError as e:
        raise ValueError(f"{what}: missing file {path}; expected {expected}.") from e
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as e:
        raise ValueError(
            f"{what}: cannot unpickle {path} ({type(e).__name__}: {e}); the file is truncated "
            f"or not the release's pickle. Expected {expected}. Download it again."
        ) from e


def encode_array(array: np.ndarray) -> dict:
    """A JSON-able dict holding an array (zlib + base64), for builder metadata."""
    array = np.ascontiguousarray(array)
    return {
        "dtype": array.dtype.str,
        "shape": list(array.shape),
        "zlib_b64": base64.b64encode(zlib.compress(array.tobytes(), 6)).decode("ascii"),
    }


def decode_array(blob: dict) -> np.ndarray:
    data = zlib.decompress(base64.b64decode(blob["zlib_b64"]))
    return np.frombuffer(data, np.dtype(blob["dtype"])).reshape(blob["shape"]).copy()


# ----------------------------------------------------------------------------------------------
# The builder base class
# ----------------------------------------------------------------------------------------------
@dataclasses.dataclass(eq=False)
class ReleaseConfig(tfds.core.BuilderConfig):
    """How a release is stored.

    Attributes:
      image_size: `(H, W)` every image is resized to at build time; None keeps the release's
        size (then all images must have one size).
      channels: 3 (RGB) or 1 (grey).
      encoding: "raw" (uint8 tensors, fixed size: fastest to build and read, for small
        releases), "png" (lossless, compressed) or "jpeg" (quality 95, for large photo releases).
    """

    image_size: tuple[int, int] | None = None
    channels: int = 3
    encoding: str = "png"


def release_config(
    image_size: tuple[int, int] | int | None, channels: int, encoding: str, prefix: str = ""
) -> ReleaseConfig:
    """A `ReleaseConfig` named after its parameters, e.g. `"112x112_rgb_jpeg"`.

    Each set of parameters gets its own sub-folder of the TFDS data_dir, so builds at
    different sizes never overwrite each other.

    Raises:
      ValueError: a non-positive size, channels not 1 or 3, or an unknown encoding.
    """
    if isinstance(image_size, int):
        image_size = (image_size, image_size)
    if image_size is not None:
        image_size = tuple(int(s) for s in image_size)
        if len(image_size) != 2 or min(image_size) < 1:
            raise ValueError(f"image_size must be (H, W) with positive sizes; got {image_size}.")
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 (grey) or 3 (RGB); got {channels}.")
    if encoding not in ("png", "jpeg", "raw"):
        raise ValueError(f"encoding must be 'png', 'jpeg' or 'raw'; got {encoding!r}.")
    if encoding == "raw" and image_size is None:
        raise ValueError("encoding='raw' stores fixed-size uint8 tensors; give image_size.")
    size = "orig" if image_size is None else f"{image_size[0]}x{image_size[1]}"
    name = f"{prefix}{size}_{'rgb' if channels == 3 else 'grey'}_{encoding}"
    return ReleaseConfig(
        name=name,
        description=f"images {size}, {channels} channel(s), {encoding}",
        image_size=image_size,
        channels=channels,
        encoding=encoding,
    )


class ReleaseBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Base of the release builders: locating the source, writing, metadata (see module doc).

    Subclasses set `RELEASE`, `MANUAL_SUBDIR`, `LAYOUT` (a description of the expected files,
    shown in errors), optionally `DEFAULT_SOURCE_DIRS` and `FINGERPRINT_CONTENT`, and implement
    `check_layout`, `source_files` and `read_release`.

    Args:
      source_dir: optional folder holding the release; overrides every other location.
      keep_arrays: keep the written images in memory (`kept`) for the loader: True, False, or
        None (keep while they take at most `MAX_IN_MEMORY_BYTES`).
      **kwargs: passed to `tfds.core.GeneratorBasedBuilder` (`data_dir`, `config`, ...);
        `file_format` defaults to `"array_record"`.
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    RELEASE = "release"
    MANUAL_SUBDIR = ""
    LAYOUT = ""
    DEFAULT_SOURCE_DIRS: tuple[str, ...] = ()
    FINGERPRINT_CONTENT = True
    HOMEPAGE = ""
    DESCRIPTION = ""

    def __init__(
        self,
        *,
        source_dir: str | pathlib.Path | None = None,
        keep_arrays: bool | None = False,
        **kwargs,
    ):
        self._source_dir = None if source_dir is None else io_utils.as_path(source_dir)
        self._manual_dir = None
        self.keep_arrays = keep_arrays
        self.kept: dict[str, np.ndarray] | None = None
        self.just_built = False
        kwargs.setdefault("file_format", "array_record")
        config = kwargs.get("config")
        if isinstance(config, tfds.core.BuilderConfig):
            # TFDS refuses a new config object named like a registered one; config names encode
            # every parameter, so the registered object is the same configuration.
            for registered in self.BUILDER_CONFIGS:
                if registered.name == config.name:
                    kwargs["config"] = registered
        super().__init__(**kwargs)

    # -- hooks for subclasses ------------------------------------------------------------------
    def manual_subdir(self) -> str:
        """Sub-folder of a manual dir that holds the release (default `MANUAL_SUBDIR`)."""
        return self.MANUAL_SUBDIR

    def check_layout(self, root: pathlib.Path) -> None:
        """Raises ValueError naming the first missing or malformed file under `root`."""
        raise NotImplementedError

    def source_files(self, root: pathlib.Path) -> list[pathlib.Path]:
        """The files whose names (and bytes, if `FINGERPRINT_CONTENT`) identify the source."""
        raise NotImplementedError

    def read_release(self, root: pathlib.Path) -> ReleaseData:
        """Reads labels (and prepares image readers) of every partition."""
        raise NotImplementedError

    # -- TFDS ----------------------------------------------------------------------------------
    @property
    def image_size(self) -> tuple[int, int] | None:
        return self.builder_config.image_size

    @property
    def channels(self) -> int:
        return self.builder_config.channels

    def _info(self) -> tfds.core.DatasetInfo:
        size = self.image_size or (None, None)
        if self.builder_config.encoding == "raw":
            image = tfds.features.Tensor(shape=(*size, self.channels), dtype=np.uint8)
        else:
            image = tfds.features.Image(
                shape=(*size, self.channels), encoding_format=self.builder_config.encoding
            )
        # DatasetInfo directly (not dataset_info_from_configs, which reads files beside the
        # module).
        return tfds.core.DatasetInfo(
            builder=self,
            description=self.DESCRIPTION or self.RELEASE,
            features=tfds.features.FeaturesDict(
                {
                    "image": image,
                    "label": tfds.features.Tensor(shape=(None,), dtype=np.int64),
                    "index": tfds.features.Tensor(shape=(), dtype=np.int64),
                }
            ),
            homepage=self.HOMEPAGE or None,
            disable_shuffling=True,
            metadata=tfds.core.MetadataDict(),
        )

    def download_and_prepare(self, *, download_config=None, **kwargs) -> None:
        """Builds the dataset unless the data_dir holds it already; never uses the network.

        Args:
          download_config: optional `tfds.download.DownloadConfig`; its `manual_dir` (if set)
            is searched for the release unless `source_dir` was given. `try_download_gcs` is
            forced off.
          **kwargs: passed to `tfds.core.GeneratorBasedBuilder.download_and_prepare`.

        Raises:
          ValueError: no source folder with the expected layout, or bad source data.
        """
        config = download_config or tfds.download.DownloadConfig()
        config = dataclasses.replace(config, try_download_gcs=False)
        self._manual_dir = (
            None if config.manual_dir is None else io_utils.as_path(config.manual_dir)
        )
        super().download_and_prepare(download_config=config, **kwargs)

    def candidate_dirs(self) -> list[pathlib.Path]:
        """Folders searched for the release, in order (see module doc)."""
        if self._source_dir is not None:
            return [self._source_dir]
        sub = [self.manual_subdir()] if self.manual_subdir() else []
        if self._manual_dir is not None:
            return [self._manual_dir / s for s in sub] + [self._manual_dir]
        manual = self.data_dir_root / "downloads" / "manual"
        found = [io_utils.as_path(manual / s) for s in sub]
        return found + [io_utils.as_path(d) for d in self.DEFAULT_SOURCE_DIRS]

    def find_source_dir(self) -> pathlib.Path | None:
        """The first candidate folder with a valid layout, or None."""
        for path in self.candidate_dirs():
            try:
                self.check_layout(path)
            except ValueError:
                continue
            return path
        return None

    def resolve_source_dir(self) -> pathlib.Path:
        """The folder to read.

        Raises:
          ValueError: an explicit `source_dir` with a wrong layout (its problem is named), or
            no candidate folder with the layout (the folders searched are listed).
        """
        candidates = self.candidate_dirs()
        if self._source_dir is not None:
            self._check_layout_verbose(self._source_dir)
            return self._source_dir
        found = self.find_source_dir()
        if found is not None:
            return found
        problems = []
        for path in candidates:
            try:
                self._check_layout_verbose(path)
            except ValueError as e:
                problems.append(f"  {path}: {e}")
        raise ValueError(
            f"{self.RELEASE}: no source folder found (missing manual_dir?). Searched:\n"
            + "\n".join(problems)
            + f"\nExpected layout:\n{self.LAYOUT}\nPass source_dir=<folder>, or "
            "download_config=tfds.download.DownloadConfig(manual_dir=<folder>), or put the "
            f"release in {candidates[0] if candidates else '<data_dir>/downloads/manual'}."
        )

    def _check_layout_verbose(self, path: pathlib.Path) -> None:
        if not path.is_dir():
            raise ValueError(
                f"{self.RELEASE}: source folder {path} does not exist or is not a directory."
            )
        self.check_layout(path)

    def source_fingerprint(self, root: pathlib.Path) -> str:
        return io_utils.files_sha256(
            root, self.source_files(root), content=self.FINGERPRINT_CONTENT
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # Nothing is downloaded.
        root = self.resolve_source_dir()
        release = self.read_release(root)
        _check_release(release, self.RELEASE, root)
        self.just_built = True
        self._shape = None if self.image_size is None else (*self.image_size, self.channels)
        total = sum(p.size for p in release.partitions.values())
        self._keep_budget = total
        self.kept = {} if self.keep_arrays is not False else None
        metadata = self.info.metadata
        metadata["source_sha256"] = self.source_fingerprint(root)
        metadata["source_dir"] = str(root)
        metadata["class_names"] = list(release.class_names)
        metadata["multi_label"] = bool(release.multi_label)
        metadata["partitions"] = [
            {
                "name": name,
                "size": part.size,
                "label_ids": encode_array(part.label_ids),
                "label_counts": encode_array(part.label_counts),
            }
            for name, part in release.partitions.items()
        ]
        if self._shape is not None:
            metadata["image_shape"] = list(self._shape)
        logging.info(
            "%s: building from %s: %s",
            self.RELEASE,
            root,
            ", ".join(f"{n}={p.size}" for n, p in release.partitions.items()),
        )
        return {
            name: self._generate_examples(name, part) for name, part in release.partitions.items()
        }

    def _generate_examples(self, name: str, part: PartitionData):
        starts = np.concatenate([[0], np.cumsum(part.label_counts)])
        for i in range(part.size):
            image = part.image(i)
            self._check_image(image, name, i)
            encoding = self.builder_config.encoding
            data = image if encoding == "raw" else image_io.encode_image(image, encoding)
            self._keep(name, part.size, i, image, data)
            yield (
                i,
                {
                    "image": data,
                    "label": part.label_ids[starts[i] : starts[i + 1]],
                    "index": i,
                },
            )

    def _check_image(self, image: np.ndarray, name: str, i: int) -> None:
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != self.channels:
            raise ValueError(
                f"{self.RELEASE}: image {i} of {name} is {image.dtype}{list(image.shape)}; "
                f"expected uint8 [H, W, {self.channels}]."
            )
        if self._shape is None:
            self._shape = tuple(image.shape)
            self.info.metadata["image_shape"] = list(self._shape)
        elif tuple(image.shape) != self._shape:
            raise ValueError(
                f"{self.RELEASE}: image {i} of {name} has shape {tuple(image.shape)} but earlier "
                f"images have {self._shape}; pass image_size=(H, W) to resize all images."
            )

    def _keep(self, name, n, i, image, data) -> None:
        if self.kept is None:
            return
        if name not in self.kept:
            nbytes = self._keep_budget * int(np.prod(image.shape))
            if self.keep_arrays is None and nbytes > MAX_IN_MEMORY_BYTES:
                self.kept = None
                return
            self.kept[name] = np.empty((n, *image.shape), np.uint8)
        # What a reader will decode (JPEG is lossy), so a fresh and a cached load agree.
        lossy = self.builder_config.encoding == "jpeg"
        self.kept[name][i] = image_io.decode_image(data, self.channels) if lossy else image


def _check_release(release: ReleaseData, what: str, root: pathlib.Path) -> None:
    num_classes = len(release.class_names)
    if not release.partitions:
        raise ValueError(f"{what}: {root} holds no partitions.")
    for name, part in release.partitions.items():
        if part.size == 0:
            raise ValueError(f"{what}: partition {name!r} in {root} holds no images.")
        if part.label_ids.size and (
            part.label_ids.min() < 0 or part.label_ids.max() >= num_classes
        ):
            raise ValueError(
                f"{what}: partition {name!r} in {root} has class ids in "
                f"[{part.label_ids.min()}, {part.label_ids.max()}]; expected [0, {num_classes})."
            )
        if not release.multi_label and np.any(part.label_counts != 1):
            raise ValueError(f"{what}: partition {name!r} has examples without exactly one label.")


# ----------------------------------------------------------------------------------------------
# Reading a built release
# ----------------------------------------------------------------------------------------------
class SplitReader:
    """Reads and decodes records of one split; thread-safe (one data source per thread).

    Each record's `index` and `label` are checked against the position and the labels in the
    builder metadata, so a data_dir whose records are out of order or altered fails loudly.

    Args:
      builder: a prepared `ReleaseBuilder`.
      split: the split name.
      image_shape: `(H, W, C)` expected of every image.
      label_ids, label_counts: the split's labels from the metadata.
    """

    def __init__(self, builder, split: str, image_shape, label_ids, label_counts):
        self.builder = builder
        self.split = split
        self.image_shape = tuple(image_shape)
        self.label_ids = label_ids
        self.starts = np.concatenate([[0], np.cumsum(label_counts)])
        self._raw = builder.builder_config.encoding == "raw"
        self._local = threading.local()
        self._lock = threading.Lock()

    def _source(self):
        source = getattr(self._local, "source", None)
        if source is None:
            # Encoded images are decoded here (PIL, checked); raw tensors need no decoding.
            decoders = None if self._raw else {"image": tfds.decode.SkipDecoding()}
            with self._lock:
                source = self.builder.as_data_source(split=self.split, decoders=decoders)
            self._local.source = source
        return source

    def __call__(self, record: int) -> np.ndarray:
        example = self._source()[record]
        want = self.label_ids[self.starts[record] : self.starts[record + 1]]
        if int(example["index"]) != record or not np.array_equal(example["label"], want):
            raise ValueError(
                f"{self.builder.RELEASE}: record {record} of split {self.split!r} in "
                f"{self.builder.data_dir} holds index {int(example['index'])} / labels "
                f"{np.asarray(example['label']).tolist()}, expected {record} / {want.tolist()}; "
                "the folder is corrupt. Delete it to rebuild."
            )
        if self._raw:
            image = np.asarray(example["image"], np.uint8)
        else:
            image = image_io.decode_image(example["image"], self.image_shape[-1])
        if image.shape != self.image_shape:
            raise ValueError(
                f"{self.builder.RELEASE}: record {record} of split {self.split!r} decodes to "
                f"{image.shape}, expected {self.image_shape}; delete {self.builder.data_dir}."
            )
        return image


def load_release(
    builder_cls: type[ReleaseBuilder],
    config: ReleaseConfig,
    *,
    data_dir: str | pathlib.Path | None,
    source_dir: str | pathlib.Path | None,
    in_memory: bool | None,
    name: str,
    builder_kwargs: dict | None = None,
) -> ReleaseSource:
    """Builds a release on first use and returns its `ReleaseSource`.

    Args:
      builder_cls: the release's builder class.
      config: its builder config (image size, channels, encoding).
      data_dir: TFDS data_dir (default: TFDS's, `~/tensorflow_datasets` or `$TFDS_DATA_DIR`).
      source_dir: folder holding the release (default: see `ReleaseBuilder.candidate_dirs`).
      in_memory: hold the images in memory (True), read them lazily (False), or decide by size
        (None: in memory up to `MAX_IN_MEMORY_BYTES`).
      name: the source's name.
      builder_kwargs: extra keyword arguments of the builder class.

    Returns:
      The partitions concatenated in release order; labels are `PartitionedLabels`.

    Raises:
      ValueError: bad or missing source data, a data_dir built from a different source, or a
        corrupt data_dir.
    """
    builder = builder_cls(
        data_dir=None if data_dir is None else str(data_dir),
        config=config,
        source_dir=source_dir,
        keep_arrays=in_memory,
        **(builder_kwargs or {}),
    )
    builder.download_and_prepare()
    if not builder.just_built:
        _check_same_source(builder)
    meta = builder.info.metadata
    try:
        parts = meta["partitions"]
        class_names = tuple(meta["class_names"])
        multi_label = bool(meta["multi_label"])
        image_shape = tuple(int(s) for s in meta["image_shape"])
    except (KeyError, TypeError) as e:
        raise ValueError(
            f"{builder.RELEASE}: {builder.data_dir} lacks dpq_jax metadata ({e}); delete it to "
            "rebuild."
        ) from e
    num_classes = len(class_names)
    labels, partition, readers, rows = [], [], [], []
    for code, part in enumerate(parts):
        ids, counts = decode_array(part["label_ids"]), decode_array(part["label_counts"])
        n = int(part["size"])
        if counts.size != n or builder.info.splits[part["name"]].num_examples != n:
            raise ValueError(
                f"{builder.RELEASE}: split {part['name']!r} of {builder.data_dir} does not hold "
                f"{n} examples; delete the folder to rebuild."
            )
        labels.append(_labels_array(ids, counts, num_classes, multi_label))
        partition.append(np.full(n, code, np.int8))
        readers.append(SplitReader(builder, part["name"], image_shape, ids, counts))
        rows.append(np.stack([np.full(n, code), np.arange(n)], axis=1))
    lazy = LazyImages(readers, np.concatenate(rows), image_shape)
    if in_memory is None:
        in_memory = lazy.nbytes <= MAX_IN_MEMORY_BYTES
    names = [p["name"] for p in parts]
    images = _in_memory_images(builder, names, lazy, meta) if in_memory else lazy
    source = ReleaseSource(
        images=images,
        labels=PartitionedLabels(np.concatenate(labels), np.concatenate(partition), names),
        num_classes=num_classes,
        name=name,
        class_names=class_names,
    )
    logging.info("Loaded %s", source.summary())
    return source


def _labels_array(ids, counts, num_classes, multi_label) -> np.ndarray:
    if not multi_label:
        return ids.astype(np.int32)
    hot = np.zeros((counts.size, num_classes), np.int32)
    hot[np.repeat(np.arange(counts.size), counts), ids] = 1
    return hot


def _in_memory_images(builder, names, lazy: LazyImages, meta) -> np.ndarray:
    """The images as one array: kept from this build, else the cache, else decoded (cached)."""
    kept = builder.kept
    if kept is not None and all(n in kept for n in names):
        images = np.concatenate([kept[n] for n in names])
        _write_cache(builder, images, meta)
        return images
    cache = io_utils.as_path(builder.data_dir) / _CACHE_NAME
    if cache.exists():
        try:
            data, _ = io_utils.read_npz(cache, what="image cache", fix="It is rebuilt.")
            if str(data["source_sha256"]) == meta["source_sha256"] and (
                data["images"].shape == lazy.shape
            ):
                return data["images"]
        except (ValueError, KeyError) as e:
            logging.warning("%s: ignoring unreadable cache %s (%s).", builder.RELEASE, cache, e)
    images = lazy.load()
    _write_cache(builder, images, meta)
    return images


def _write_cache(builder, images: np.ndarray, meta) -> None:
    cache = io_utils.as_path(builder.data_dir) / _CACHE_NAME
    try:
        io_utils.write_npz(
            cache, {"images": images, "source_sha256": np.array(meta["source_sha256"])}
        )
    except OSError as e:  # A read-only data_dir still works, only slower to load.
        logging.info("%s: could not write %s (%s).", builder.RELEASE, cache, e)


def _check_same_source(builder: ReleaseBuilder) -> None:
    """Fails if the data_dir was built from another source than the one found now.

    Skipped (with a log line) when no source folder is found: the built data_dir is then the
    only copy and is used as is.
    """
    stored = builder.info.metadata.get("source_sha256") if builder.info.metadata else None
    source = builder.find_source_dir()
    if source is None:
        logging.info(
            "%s: no source folder to verify %s against.", builder.RELEASE, builder.data_dir
        )
        return
    current = builder.source_fingerprint(source)
    if stored != current:
        raise ValueError(
            f"{builder.RELEASE}: {builder.data_dir} was built from a different source "
            f"({builder.info.metadata.get('source_dir') if builder.info.metadata else '?'}) than "
            f"{source}. Pass another data_dir or delete {builder.data_dir} to rebuild."
        )
