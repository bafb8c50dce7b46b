"""FaceScrub and YouTube Faces from the DDH 32x32 pickle release, as TFDS builders.

The DDH authors (Lin, Li & Tang, IJCAI 2017) released both face sets as a train set and a test
set, each a folder of pickle files (their loader lists the folder, sorts the names and stacks
every file). Each file is a (Python 2) pickle of a pair `(x, y)`:

* `x`: `[n, 3072]` (or `[n, 3, 32, 32]`) pixels, each row a channel-first 3x32x32 image
  (red plane, green plane, blue plane, each row-major);
* `y`: `[n]` identity ids, 0..529 for FaceScrub and 0..1594 for YouTube Faces
  (`NB_CLASSES` in DDH.py).

Pixels may be stored as uint8, as floats in 0..255, or as floats in 0..1 (the release does not
document it; DDH standardises them itself): floats whose maximum is at most 1 are scaled by 255,
then all values are rounded to uint8 (values outside 0..255 are an error).

Layout accepted in the source folder (per partition, the first that exists):
`train_set/` or `train/` (folders of pickle files), or a single file named `train_set`,
`train_set.pkl`, `train.pkl`; the same with `test`. Files inside a folder are read in sorted
name order, as DDH does. The source has the partitions `train` then `test` (the `faces_seen`
protocol: database = train, queries = test). The split counts are not published; they are
logged when building and loading.

Example:
  >>> src = load_facescrub(source_dir="/data/facescrub_ddh")  # doctest: +SKIP
  >>> src.image_shape, src.num_classes  # doctest: +SKIP
  ((32, 32, 3), 530)

References:
  J. Lin, Z. Li and J. Tang, "Discriminative Deep Hashing for Scalable Face Image Retrieval",
  IJCAI 2017; METHODS.md Sec. 1.5 and 5.2.
"""

import pathlib

import numpy as np

from dpq_jax.data import builder_lib
from dpq_jax.data.release_source import ReleaseSource

FACESCRUB_IDENTITIES = 530
YOUTUBE_FACES_IDENTITIES = 1595
_EXPECTED = "a pickled pair (x, y): x [n, 3072] or [n, 3, 32, 32] pixels, y [n] identity ids"


def _layout(num_identities: int) -> str:
    return (
        "  train_set/ and test_set/ (or train/ and test/): folders of pickle files, each a\n"
        f"  pair (x, y) with x [n, 3072] channel-first 3x32x32 pixels and y [n] ids in\n"
        f"  0..{num_identities - 1}; single files train_set[.pkl] / test_set[.pkl] also work."
    )


def partition_files(root: pathlib.Path, part: str) -> list[pathlib.Path]:
    """The pickle files of partition `part` ("train" or "test") under `root`, in read order.

    Raises:
      ValueError: no folder or file for the partition, or an empty folder.
    """
    for name in (f"{part}_set", part):
        folder = root / name
        if folder.is_dir():
            files = sorted(
                p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")
            )
            if not files:
                raise ValueError(f"DDH faces: folder {folder} holds no pickle files.")
            return files
    for name in (f"{part}_set", f"{part}_set.pkl", f"{part}.pkl"):
        if (root / name).is_file():
            return [root / name]
    raise ValueError(
        f"DDH faces: no {part}_set/ folder (or {part}/, {part}_set[.pkl], {part}.pkl) in {root}."
    )


def read_ddh_pickle(
    path: pathlib.Path, num_identities: int, what: str
) -> tuple[np.ndarray, np.ndarray]:
    """One `(x, y)` file as uint8 `[n, 32, 32, 3]` images and int64 `[n]` ids.

    Raises:
      ValueError: truncated or foreign pickle, wrong shapes, pixel values outside 0..255, or
        ids outside `[0, num_identities)`; the message names the file.
    """
    obj = builder_lib.load_pickle(path, what, _EXPECTED)
    if not isinstance(obj, (tuple, list)) or len(obj) != 2:
        raise ValueError(f"{what}: {path} holds a {type(obj).__name__}; expected {_EXPECTED}.")
    x, y = np.asarray(obj[0]), np.asarray(obj[1])
    n = x.shape[0] if x.ndim else -1
    if x.ndim == 2 and x.shape[1] == 3072:
        x = x.reshape(n, 3, 32, 32)
    if x.ndim != 4 or x.shape[1:] != (3, 32, 32):
        raise ValueError(
            f"{what}: {path} holds x of shape {x.shape}; expected [n, 3072] or [n, 3, 32, 32]."
        )
    if y.shape != (n,) or not (np.issubdtype(y.dtype, np.integer) or _integral(y)):
        raise ValueError(
            f"{what}: {path} holds {n} images but y of {y.dtype}{list(y.shape)}; expected {n} "
            "integer identity ids."
        )
    y = y.astype(np.int64)
    if n and (y.min() < 0 or y.max() >= num_identities):
        raise ValueError(
            f"{what}: {path} holds identity ids in [{y.min()}, {y.max()}]; expected "
            f"0..{num_identities - 1}."
        )
    return _to_uint8(x, path, what).transpose(0, 2, 3, 1), y


def _integral(y: np.ndarray) -> bool:
    return np.issubdtype(y.dtype, np.floating) and bool(np.all(y == np.round(y)))


def _to_uint8(x: np.ndarray, path, what) -> np.ndarray:
    if x.dtype == np.uint8:
        return x
    if not np.issubdtype(x.dtype, np.number):
        raise ValueError(f"{what}: {path} holds pixels of dtype {x.dtype}; expected numbers.")
    x = x.astype(np.float64)
    if x.size and x.max() <= 1.0:
        x = x * 255.0
    if x.size and (x.min() < -0.5 or x.max() > 255.5):
        raise ValueError(
            f"{what}: {path} holds pixel values in [{x.min()}, {x.max()}]; expected 0..255 "
            "(or 0..1)."
        )
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


class _DdhFacesBuilder(builder_lib.ReleaseBuilder, skip_registration=True):
    NUM_IDENTITIES = 0
    BUILDER_CONFIGS = [builder_lib.release_config((32, 32), 3, "raw")]

    def check_layout(self, root):
        for part in ("train", "test"):
            partition_files(root, part)

    def source_files(self, root):
        return [p for part in ("train", "test") for p in partition_files(root, part)]

    def read_release(self, root):
        partitions = {}
        for part in ("train", "test"):
            pairs = [
                read_ddh_pickle(p, self.NUM_IDENTITIES, self.RELEASE)
                for p in partition_files(root, part)
            ]
            images = np.concatenate([p[0] for p in pairs])
            labels = np.concatenate([p[1] for p in pairs])
            partitions[part] = builder_lib.PartitionData.single(labels, images.__getitem__)
        return builder_lib.ReleaseData(
            partitions=partitions,
            class_names=tuple(str(i) for i in range(self.NUM_IDENTITIES)),
        )


class DpqFacescrub(_DdhFacesBuilder):
    """TFDS builder `dpq_facescrub`: the DDH FaceScrub release, splits `train` / `test`."""

    RELEASE = "FaceScrub (DDH)"
    MANUAL_SUBDIR = "facescrub_ddh"
    NUM_IDENTITIES = FACESCRUB_IDENTITIES
    LAYOUT = _layout(FACESCRUB_IDENTITIES)
    MANUAL_DOWNLOAD_INSTRUCTIONS = LAYOUT
    HOMEPAGE = "https://github.com/xjcvip007/DDH"
    DESCRIPTION = "FaceScrub, 530 identities, 32x32, as released with DDH."


class DpqYoutubeFaces(_DdhFacesBuilder):
    """TFDS builder `dpq_youtube_faces`: the DDH YouTube Faces release, `train` / `test`."""

    RELEASE = "YouTube Faces (DDH)"
    MANUAL_SUBDIR = "youtube_faces_ddh"
    NUM_IDENTITIES = YOUTUBE_FACES_IDENTITIES
    LAYOUT = _layout(YOUTUBE_FACES_IDENTITIES)
    MANUAL_DOWNLOAD_INSTRUCTIONS = LAYOUT
    HOMEPAGE = "https://github.com/xjcvip007/DDH"
    DESCRIPTION = "YouTube Faces, 1595 identities, 32x32, as released with DDH."


def load_facescrub(
    data_dir: str | pathlib.Path | None = None,
    source_dir: str | pathlib.Path | None = None,
    *,
    in_memory: bool = True,
) -> ReleaseSource:
    """FaceScrub (DDH 32x32 release) as a `ReleaseSource` (`train` then `test`).

    Args:
      data_dir: TFDS data_dir.
      source_dir: folder with `train_set/` and `test_set/` (default: the manual dir's
        `facescrub_ddh/`).
      in_memory: hold the images in memory (default) or read them lazily.

    Returns:
      images uint8 `[N, 32, 32, 3]`, int32 identity ids carrying the partition,
      `num_classes = 530`, name `"facescrub"`.

    Raises:
      ValueError: missing or bad source files (named), or a data_dir built from other files.
    """
    return builder_lib.load_release(
        DpqFacescrub,
        DpqFacescrub.BUILDER_CONFIGS[0],
        data_dir=data_dir,
        source_dir=source_dir,
        in_memory=in_memory,
        name="facescrub",
    )


def load_youtube_faces(
    data_dir: str | pathlib.Path | None = None,
    source_dir: str | pathlib.Path | None = None,
    *,
    in_memory: bool = True,
) -> ReleaseSource:
    """YouTube Faces (DDH 32x32 release) as a `ReleaseSource` (`train` then `test`).

    Args:
      data_dir: TFDS data_dir.
      source_dir: folder with `train_set/` and `test_set/` (default: the manual dir's
        `youtube_faces_ddh/`).
      in_memory: hold the images in memory (default) or read them lazily.

    Returns:
      images uint8 `[N, 32, 32, 3]`, int32 identity ids carrying the partition,
      `num_classes = 1595`, name `"youtube_faces"`.

    Raises:
      ValueError: missing or bad source files (named), or a data_dir built from other files.
    """
    return builder_lib.load_release(
        DpqYoutubeFaces,
        DpqYoutubeFaces.BUILDER_CONFIGS[0],
        data_dir=data_dir,
        source_dir=source_dir,
        in_memory=in_memory,
        name="youtube_faces",
    )
