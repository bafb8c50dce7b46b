"""In-memory data sources: the random-access arrays every protocol split indexes into.

Small retrieval datasets (ORL faces, CIFAR-10, 32x32 face sets) fit in host memory. Loading
them once into an `ArraySource` and addressing examples by integer index makes the input order
a pure function of (seed, step), so resumption is exact and tests need no TensorFlow.

Example:
  >>> src = SyntheticSource(num_classes=3, per_class=2, shape=(4, 4, 1), seed=0)
  >>> len(src), src.images.shape, src.labels.tolist()
  (6, (6, 4, 4, 1), [0, 0, 1, 1, 2, 2])
  >>> sorted(src[5])
  ['image', 'index', 'label']
"""

import dataclasses
from typing import Any

import numpy as np


@dataclasses.dataclass(eq=False)
class ArraySource:
    """A dataset held as NumPy arrays, indexed by example number.

    Attributes:
      images: uint8 `[N, H, W, C]` pixels.
      labels: int32 `[N]` class ids in `[0, num_classes)`, or int32 multi-hot `[N, num_classes]`
        with values in {0, 1} (multi-label datasets; relevance = at least one shared label).
      num_classes: number of classes (identities).
      name: a short dataset name for logs.

    Raises:
      ValueError: (on construction) wrong dtype, rank or length, or a label out of range.
    """

    images: np.ndarray
    labels: np.ndarray
    num_classes: int
    name: str = "array_source"

    def __post_init__(self):
        _check_array_source(self.images, self.labels, self.num_classes, self.name)

    @property
    def multi_label(self) -> bool:
        """Whether labels are multi-hot `[N, C]` rather than class ids `[N]`."""
        return self.labels.ndim == 2

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """`(H, W, C)` of every image."""
        return tuple(self.images.shape[1:])

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int) -> dict[str, Any]:
        """Example `i` as `dict(image uint8 [H, W, C], label int32 [] or [C], index int)`.

        Raises:
          IndexError: `i` outside `[-N, N)`.
        """
        n = len(self)
        i = int(i)
        if not -n <= i < n:
            raise IndexError(f"{self.name}: index {i} out of range for {n} examples.")
        i %= n
        return {"image": self.images[i], "label": self.labels[i], "index": i}


def _check_array_source(images, labels, num_classes, name) -> None:
    """Validates the arrays of an `ArraySource`; raises ValueError naming the fix."""
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4:
        got = (
            f"{images.dtype} array of shape {images.shape}"
            if isinstance(images, np.ndarray)
            else type(images).__name__
        )
        raise ValueError(
            f"{name}: images must be a uint8 NumPy array [N, H, W, C]; got {got}. Add a trailing "
            "channel axis for grey images (x[..., None]) and convert with np.asarray(x, np.uint8)."
        )
    if not isinstance(labels, np.ndarray) or labels.dtype != np.int32:
        got = labels.dtype if isinstance(labels, np.ndarray) else type(labels).__name__
        raise ValueError(
            f"{name}: labels must be an int32 NumPy array; got {got}. "
            "Convert with np.asarray(labels, np.int32)."
        )
    if int(num_classes) < 1:
        raise ValueError(f"{name}: num_classes must be >= 1, got {num_classes}.")
    n = images.shape[0]
    if labels.ndim not in (1, 2) or labels.shape[0] != n:
        raise ValueError(
            f"{name}: labels must be [N] class ids or [N, C] multi-hot with N = {n} (the number "
            f"of images); got shape {labels.shape}."
        )
    if labels.ndim == 1:
        if n and (labels.min() < 0 or labels.max() >= num_classes):
            raise ValueError(
                f"{name}: class ids must lie in [0, {num_classes}); got range "
                f"[{labels.min()}, {labels.max()}]. Remap labels or raise num_classes."
            )
    else:
        if labels.shape[1] != num_classes:
            raise ValueError(
                f"{name}: multi-hot labels have {labels.shape[1]} columns but num_classes is "
                f"{num_classes}; they must match."
            )
        if n and not np.isin(labels, (0, 1)).all():
            raise ValueError(f"{name}: multi-hot labels must contain only 0 and 1.")


class SyntheticSource(ArraySource):
    """A learnable toy dataset for tests: each class is a fixed random pattern plus noise.

    Class `c` has a template drawn once from the seed; each example is
    `0.75 * template_c + 0.25 * noise`, so classes are well separated but no two images are
    equal. Examples are class-major: labels are `[0]*per_class + [1]*per_class + ...`.

    Args:
      num_classes: number of classes.
      per_class: examples per class.
      shape: `(H, W, C)` of each image.
      seed: NumPy seed for templates and noise.
      name: dataset name for logs.

    Raises:
      ValueError: non-positive sizes or a shape that is not `(H, W, C)`.
    """

    def __init__(
        self,
        num_classes: int,
        per_class: int,
        shape: tuple[int, int, int] = (8, 8, 1),
        seed: int = 0,
        name: str = "synthetic",
    ):
        shape = tuple(int(s) for s in shape)
        if num_classes < 1 or per_class < 1 or len(shape) != 3 or min(shape) < 1:
            raise ValueError(
                "SyntheticSource needs num_classes >= 1, per_class >= 1 and shape (H, W, C) "
                f"with positive sizes; got {num_classes}, {per_class}, {shape}."
            )
        rng = np.random.default_rng(seed)
        templates = rng.uniform(0.0, 255.0, size=(num_classes, *shape))  # [C, H, W, C']
        labels = np.repeat(np.arange(num_classes, dtype=np.int32), per_class)  # [N]
        noise = rng.uniform(0.0, 255.0, size=(labels.size, *shape))  # [N, H, W, C']
        images = np.rint(0.75 * templates[labels] + 0.25 * noise).astype(np.uint8)
        super().__init__(images=images, labels=labels, num_classes=num_classes, name=name)
