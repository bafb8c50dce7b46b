"""Data sources read from built releases: partition-aware labels and lazily decoded images.

Every loader of `dpq_jax.data` returns a `ReleaseSource`: an `ArraySource` (same `images`,
`labels`, `num_classes`, `name`, `__getitem__`, `__len__`) whose examples are the release's
partitions (its files or folders: `train`, `test`, `query`, ...) concatenated in a fixed order.
Two things are added:

* `labels` is a `PartitionedLabels` array: a plain int32 array that also remembers which release
  partition each example came from (`labels.partition_codes`, `labels.partition_names`). The trainer
  hands `source.labels` to `protocols.get_splits`, so protocols that follow a release split
  (`fmnist`, `cifar10_dsh`, `faces_seen`, `imagenet100`, `inshop`, ...) find it there. Any view,
  slice or copy of the array is a plain array again (the partition is dropped), so the
  information can never go stale on a subset.
* `images` may be a `LazyImages` array-like: `[N, H, W, C]` uint8 whose rows are read from the
  TFDS array_record files and decoded only when indexed. Large releases (NUS-WIDE, ImageNet-100,
  In-shop, VGGFace2) use it so that the host never holds them whole; `images[i]` is an array,
  `images[index_array]` a lazy view, and `np.asarray(images)` materializes (refused above
  `MAX_MATERIALIZE_BYTES`, with the fix in the message).

Example:
  >>> labels = PartitionedLabels([3, 1, 2], partition=[0, 0, 1], partition_names=("train", "test"))
  >>> labels.partition_codes.tolist(), labels.partition_names, labels[:2].partition_codes is None
  ([0, 0, 1], ('train', 'test'), True)
  >>> partition_indices(labels)["test"].tolist()
  [2]
"""

import dataclasses
import threading
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from dpq_jax.data.sources import ArraySource

# np.asarray(LazyImages) above this many bytes raises instead of filling the host memory.
MAX_MATERIALIZE_BYTES = 2 << 30


class PartitionedLabels(np.ndarray):
    """int32 labels (`[N]` class ids or `[N, C]` multi-hot) that know each example's partition.

    Attributes:
      partition_codes: int8 `[N]` partition code of each example (an index into
        `partition_names`), or None on any derived array (views, slices, NumPy results).
      partition_names: names of the release partitions, e.g. `("train", "test")`.

    Raises:
      ValueError: (on construction) a partition array of another length than the labels, or a
        code outside `[0, len(partition_names))`.
    """

    partition_codes: np.ndarray | None
    partition_names: tuple[str, ...]

    def __new__(cls, labels, partition, partition_names: Sequence[str]):
        obj = np.asarray(labels, np.int32).view(cls)
        partition = np.asarray(partition, np.int8)
        names = tuple(str(n) for n in partition_names)
        if partition.shape != obj.shape[:1]:
            raise ValueError(
                f"partition must be [N] with N = {obj.shape[0]} (one code per label); got shape "
                f"{partition.shape}."
            )
        if partition.size and (partition.min() < 0 or partition.max() >= len(names)):
            raise ValueError(
                f"partition codes must lie in [0, {len(names)}) for partitions {names}; got "
                f"range [{partition.min()}, {partition.max()}]."
            )
        partition.flags.writeable = False
        obj.partition_codes = partition
        obj.partition_names = names
        return obj

    def __array_finalize__(self, obj):
        # Views and results lose the partition: only the constructed array is trusted.
        self.partition_codes = None
        self.partition_names = ()

    def __reduce__(self):
        # Pickle as a plain array plus the partition (so copies made by pickling keep it).
        return (_rebuild_labels, (np.asarray(self), self.partition_codes, self.partition_names))


def _rebuild_labels(labels, partition, names):
    if partition is None:
        return np.asarray(labels)
    return PartitionedLabels(labels, partition, names)


def partition_indices(labels) -> dict[str, np.ndarray] | None:
    """`{partition name: sorted int64 indices}` from `PartitionedLabels`, or None for others.

    Args:
      labels: labels as handed to a protocol.

    Returns:
      One entry per partition name (in order), or None when the labels carry no partition.
    """
    partition = getattr(labels, "partition_codes", None)
    if partition is None:
        return None
    return {
        name: np.flatnonzero(partition == code).astype(np.int64)
        for code, name in enumerate(labels.partition_names)
    }


class LazyImages:
    """A read-only `[N, H, W, C]` uint8 array-like whose rows are decoded on access.

    Row `i` is record `rows[i, 1]` of reader `rows[i, 0]`. Readers are callables
    `record -> uint8 [H, W, C]` (see `builder_lib.SplitReader`) and must be safe to call from
    several threads (the input pipeline prefetches in a thread).

    Args:
      readers: the readers the rows point into.
      rows: int64 `[N, 2]` of `(reader, record)`.
      image_shape: `(H, W, C)` of every decoded image.

    Raises:
      ValueError: (on construction) rows that are not `[N, 2]` or point to a missing reader.
    """

    dtype = np.dtype(np.uint8)
    ndim = 4

    def __init__(
        self,
        readers: Sequence[Callable[[int], np.ndarray]],
        rows: np.ndarray,
        image_shape: tuple[int, int, int],
    ):
        rows = np.asarray(rows, np.int64)
        if rows.ndim != 2 or rows.shape[1] != 2:
            raise ValueError(f"rows must be [N, 2] (reader, record); got shape {rows.shape}.")
        if rows.size and (rows[:, 0].min() < 0 or rows[:, 0].max() >= len(readers)):
            raise ValueError(f"rows point to readers outside [0, {len(readers)}).")
        rows.flags.writeable = False
        self.readers = tuple(readers)
        self.rows = rows
        self.image_shape = tuple(int(s) for s in image_shape)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (self.rows.shape[0], *self.image_shape)

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    def __len__(self) -> int:
        return self.rows.shape[0]

    def __repr__(self) -> str:
        return f"LazyImages(shape={self.shape}, dtype=uint8, readers={len(self.readers)})"

    def __getitem__(self, key) -> Any:
        """`images[i]` decodes one image; a slice or an index/bool array gives a lazy view."""
        if isinstance(key, (int, np.integer)):
            n = len(self)
            i = int(key)
            if not -n <= i < n:
                raise IndexError(f"image index {i} out of range for {n} images.")
            reader, record = self.rows[i % n]
            return self.readers[reader](int(record))
        if isinstance(key, tuple):
            raise IndexError(
                "LazyImages supports one index (an int, a slice or an index array); load the "
                "rows first (np.asarray(images[rows])) to index pixels."
            )
        return LazyImages(self.readers, self.rows[key], self.image_shape)

    def load(self, num_threads: int = 4) -> np.ndarray:
        """Decodes every row into one uint8 `[N, H, W, C]` array (threads share the work)."""
        out = np.empty(self.shape, np.uint8)

        def fill(part: np.ndarray) -> None:
            for i in part:
                out[i] = self[int(i)]

        parts = np.array_split(np.arange(len(self)), max(1, min(num_threads, len(self))))
        errors = []

        def guarded(part):
            try:
                fill(part)
            except Exception as e:  # Re-raised in the caller below.
                errors.append(e)

        threads = [threading.Thread(target=guarded, args=(p,)) for p in parts[1:]]
        for t in threads:
            t.start()
        guarded(parts[0])
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
        return out

    def __array__(self, dtype=None, copy=None):
        if self.nbytes > MAX_MATERIALIZE_BYTES:
            raise ValueError(
                f"Refusing to load {len(self)} lazily read images ({self.nbytes / 2**30:.1f} GiB) "
                f"into memory at once (limit {MAX_MATERIALIZE_BYTES / 2**30:.0f} GiB). Index a "
                "subset first (np.asarray(images[rows])), or for the trainer set "
                "config.raw_pixel_baseline = False."
            )
        array = self.load()
        return array if dtype is None else array.astype(dtype)


@dataclasses.dataclass(eq=False)
class ReleaseSource(ArraySource):
    """An `ArraySource` read from a built release; `images` may be `LazyImages`.

    Attributes:
      images: uint8 `[N, H, W, C]` array, or `LazyImages` (decoded on access).
      labels: int32 `[N]` class ids or `[N, C]` multi-hot; a `PartitionedLabels` when read
        from a release (then `partition` / `partition_names` are available).
      num_classes: number of classes.
      name: short dataset name.
      class_names: the release's class (identity, concept, item) names, id order.

    Raises:
      ValueError: (on construction) bad arrays (see `ArraySource`).
    """

    class_names: tuple[str, ...] = ()

    def __post_init__(self):
        if isinstance(self.images, LazyImages):
            check_labels(self.labels, len(self.images), self.num_classes, self.name)
        else:
            super().__post_init__()
        self.class_names = tuple(self.class_names)

    @property
    def lazy(self) -> bool:
        """Whether images are decoded on access rather than held in memory."""
        return isinstance(self.images, LazyImages)

    @property
    def partition(self) -> np.ndarray | None:
        """int8 `[N]` partition code per example (None after relabelling or subsetting)."""
        return getattr(self.labels, "partition_codes", None)

    @property
    def partition_names(self) -> tuple[str, ...]:
        return getattr(self.labels, "partition_names", ())

    def partition_indices(self) -> dict[str, np.ndarray] | None:
        """`{partition name: sorted indices}`; None when the labels carry no partition."""
        return partition_indices(self.labels)

    def summary(self) -> str:
        """One line: name, size, image shape, classes and per-partition counts."""
        parts = self.partition_indices() or {}
        counts = " ".join(f"{k}={v.size}" for k, v in parts.items())
        kind = "lazy" if self.lazy else "in memory"
        return (
            f"{self.name}: {len(self)} images {self.image_shape} ({kind}), {self.num_classes} "
            f"classes{' (multi-label)' if self.multi_label else ''}; {counts}"
        )


def check_labels(labels, n: int, num_classes: int, name: str) -> None:
    """Validates `[N]` class ids or `[N, C]` multi-hot int32 labels; raises ValueError."""
    if not isinstance(labels, np.ndarray) or labels.dtype != np.int32:
        got = labels.dtype if isinstance(labels, np.ndarray) else type(labels).__name__
        raise ValueError(f"{name}: labels must be an int32 NumPy array; got {got}.")
    if int(num_classes) < 1:
        raise ValueError(f"{name}: num_classes must be >= 1, got {num_classes}.")
    if labels.ndim not in (1, 2) or labels.shape[0] != n:
        raise ValueError(
            f"{name}: labels must be [N] or [N, C] with N = {n} (the number of images); got "
            f"shape {labels.shape}."
        )
    plain = np.asarray(labels)
    if plain.ndim == 1 and n and (plain.min() < 0 or plain.max() >= num_classes):
        raise ValueError(
            f"{name}: class ids must lie in [0, {num_classes}); got range [{plain.min()}, "
            f"{plain.max()}]."
        )
    if plain.ndim == 2:
        if plain.shape[1] != num_classes:
            raise ValueError(
                f"{name}: multi-hot labels have {plain.shape[1]} columns, num_classes is "
                f"{num_classes}."
            )
        if n and not np.isin(plain, (0, 1)).all():
            raise ValueError(f"{name}: multi-hot labels must contain only 0 and 1.")


def concat_sources(
    sources: Sequence[ReleaseSource],
    prefixes: Sequence[str],
    name: str,
) -> ReleaseSource:
    """Concatenates sources into one; partition `p` of source `j` becomes `prefixes[j]_p`.

    A source without partitions becomes the single partition `prefixes[j]`. Class ids of
    source `j` are offset by the classes of the sources before it, so the class spaces of
    different sources never collide (the unseen-identity protocol relies on this), while
    the partitions of one source keep sharing theirs. Images stay lazy if any source is lazy.

    Args:
      sources: single-label sources with equal image shapes.
      prefixes: one name per source.
      name: name of the result.

    Returns:
      The concatenation, labels carrying the new partitions.

    Raises:
      ValueError: no sources, a prefix count that differs, multi-label sources or different
        image shapes.
    """
    if not sources or len(sources) != len(prefixes):
        raise ValueError(
            f"concat_sources needs one prefix per source; got {len(sources)} sources and "
            f"prefixes {tuple(prefixes)}."
        )
    shapes = {tuple(s.image_shape) for s in sources}
    if len(shapes) != 1:
        raise ValueError(
            f"{name}: sources have different image shapes {sorted(shapes)}; build them at one "
            "image_size."
        )
    if any(s.multi_label for s in sources):
        raise ValueError(f"{name}: concat_sources supports single-label sources only.")
    offsets = np.cumsum([0] + [s.num_classes for s in sources])
    labels = np.concatenate([np.asarray(s.labels) + o for s, o in zip(sources, offsets)])
    names, codes = [], []
    for s, prefix in zip(sources, prefixes):
        own = getattr(s.labels, "partition_codes", None)
        if own is None:
            codes.append(np.full(len(s), len(names), np.int8))
            names.append(prefix)
        else:
            codes.append(own.astype(np.int8) + len(names))
            names += [f"{prefix}_{p}" for p in s.labels.partition_names]
    class_names = tuple(
        f"{p}/{c}"
        for s, p in zip(sources, prefixes)
        for c in (s.class_names or [str(k) for k in range(s.num_classes)])
    )
    if any(isinstance(s.images, LazyImages) for s in sources):
        readers, rows = [], []
        for s in sources:
            images = s.images
            if not isinstance(images, LazyImages):
                rows_s = np.stack([np.zeros(len(s), np.int64), np.arange(len(s))], axis=1)
                images = LazyImages([_ArrayReader(s.images)], rows_s, s.image_shape)
            rows.append(images.rows + np.array([len(readers), 0]))
            readers += images.readers
        images = LazyImages(readers, np.concatenate(rows), shapes.pop())
    else:
        images = np.concatenate([s.images for s in sources])
    return ReleaseSource(
        images=images,
        labels=PartitionedLabels(labels, np.concatenate(codes), names),
        num_classes=int(offsets[-1]),
        name=name,
        class_names=class_names,
    )


def select_partitions(source: ReleaseSource, keep: Sequence[str]) -> ReleaseSource:
    """The examples of the named partitions only, in source order (lazy images stay lazy).

    Raises:
      ValueError: the source has no partitions, or lacks one of `keep`.
    """
    parts = partition_indices(source.labels)
    missing = [k for k in keep if parts is None or k not in parts]
    if missing:
        raise ValueError(
            f"{source.name}: no partition(s) {missing}; it has {source.partition_names}."
        )
    index = np.sort(np.concatenate([parts[k] for k in keep]))
    names = [n for n in source.partition_names if n in keep]
    code_of = {n: i for i, n in enumerate(names)}
    old = np.asarray([code_of.get(n, -1) for n in source.partition_names], np.int8)
    return ReleaseSource(
        images=source.images[index],
        labels=PartitionedLabels(
            np.asarray(source.labels)[index], old[source.labels.partition_codes[index]], names
        ),
        num_classes=source.num_classes,
        name=source.name,
        class_names=source.class_names,
    )


class _ArrayReader:
    """Reader over an in-memory uint8 `[N, H, W, C]` array."""

    def __init__(self, array: np.ndarray):
        self.array = array

    def __call__(self, record: int) -> np.ndarray:
        return self.array[record]
