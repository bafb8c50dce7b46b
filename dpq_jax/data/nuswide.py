"""NUS-WIDE restricted to its 21 most frequent concepts, as a TFDS builder (read lazily).

NUS-WIDE (Chua et al., 2009) has 269,648 Flickr images with 81 ground-truth concepts. The
hashing literature (DVSQ, DPQ, HashNet) keeps the images that carry at least one of the 21 most
frequent concepts: 195,834 images, multi-label (two images are relevant if they share a
concept). The release files used here:

    ImageList/Imagelist.txt              one image path per line, e.g.
                                         C:\\ImageData\\Flickr\\actor\\0001_2124494179.jpg
    Groundtruth/AllLabels/Labels_<c>.txt one 0/1 per line, line i = image i of Imagelist.txt
    Flickr/<folder>/<file>.jpg           the images (the part of each path after "Flickr")

The 21 concepts are the label files with the most positives (ties broken by name); pass
`concepts=` to fix them. Their names, in alphabetical order, are the class names; labels are
multi-hot `[N, 21]`. Images are resized to 256x256 (HashNet's `ResizeImage(256)`) and stored
as JPEG, and the source reads them lazily (195,834 x 256 x 256 x 3 bytes would be 38 GB).
The source has one partition, `images`, in Imagelist order; the `nuswide21` protocol samples
queries, database and training images from it.

References:
  T.-S. Chua et al., "NUS-WIDE: A Real-World Web Image Database from National University of
  Singapore", CIVR 2009; Y. Cao et al., "Deep Visual-Semantic Quantization", CVPR 2017;
  METHODS.md Sec. 2.5.
"""

import dataclasses
import hashlib
import pathlib
import re
from collections.abc import Sequence

import numpy as np
from absl import logging

from dpq_jax.data import builder_lib, image_io
from dpq_jax.data.release_source import ReleaseSource

NUM_CONCEPTS = 21
PUBLISHED_IMAGES = 195834
IMAGE_LIST = pathlib.Path("ImageList") / "Imagelist.txt"
LABEL_DIR = pathlib.Path("Groundtruth") / "AllLabels"
_LABEL_FILE = re.compile(r"^Labels_(.+)\.txt$")
_LAYOUT = """\
  ImageList/Imagelist.txt                 (269,648 image paths, one per line)
  Groundtruth/AllLabels/Labels_<concept>.txt  (one 0/1 per line, same order; at least 21 files)
  Flickr/<folder>/<image>.jpg             (the images; the part of each path after 'Flickr')"""


@dataclasses.dataclass(eq=False)
class NuswideConfig(builder_lib.ReleaseConfig):
    """Attributes: concepts: the concept names to keep (empty: the 21 most frequent)."""

    concepts: tuple[str, ...] = ()


def nuswide_config(
    image_size: tuple[int, int] | int = 256, concepts: Sequence[str] = ()
) -> NuswideConfig:
    """Config named `<size>_rgb_jpeg` (plus `_c<k>_<hash>` for an explicit concept list)."""
    base = builder_lib.release_config(image_size, 3, "jpeg")
    name = base.name
    if concepts:
        key = hashlib.sha256(",".join(sorted(concepts)).encode()).hexdigest()[:8]
        name += f"_c{len(concepts)}_{key}"
    return NuswideConfig(
        name=name,
        description=f"NUS-WIDE, {base.description}",
        image_size=base.image_size,
        channels=3,
        encoding="jpeg",
        concepts=tuple(concepts),
    )


def image_relpath(line: str) -> pathlib.PurePosixPath:
    """Imagelist entry -> path relative to the release root (`Flickr/<folder>/<file>`).

    Raises:
      ValueError: the entry has fewer than two path components.
    """
    parts = [p for p in re.split(r"[\\/]", line.strip()) if p]
    if "Flickr" in parts:
        parts = parts[parts.index("Flickr") :]
    elif len(parts) >= 2:
        parts = ["Flickr", *parts[-2:]]
    else:
        raise ValueError(f"image list entry {line!r} is not a <folder>/<file> path")
    return pathlib.PurePosixPath(*parts)


def label_files(root: pathlib.Path) -> dict[str, pathlib.Path]:
    """`{concept: Labels_<concept>.txt}` found under `Groundtruth/AllLabels`."""
    folder = root / LABEL_DIR
    if not folder.is_dir():
        return {}
    return {m.group(1): p for p in sorted(folder.iterdir()) if (m := _LABEL_FILE.match(p.name))}


def read_label_file(path: pathlib.Path, n: int) -> np.ndarray:
    """bool `[n]` from a file of n lines of 0/1.

    Raises:
      ValueError: another line count or a value other than 0/1 (the file and line are named).
    """
    values = path.read_text().split()
    if len(values) != n:
        raise ValueError(
            f"NUS-WIDE: {path} has {len(values)} values, expected {n} (one per line of "
            f"{IMAGE_LIST}); the file is truncated or from another image list."
        )
    array = np.asarray(values)
    bad = np.flatnonzero((array != "0") & (array != "1"))
    if bad.size:
        raise ValueError(
            f"NUS-WIDE: {path} line {bad[0] + 1} is {values[bad[0]]!r}; expected 0 or 1."
        )
    return array == "1"


class DpqNuswide(builder_lib.ReleaseBuilder):
    """TFDS builder `dpq_nuswide`: one split `images` of the images carrying >= 1 of the
    chosen concepts (multi-hot labels). Default source `<manual_dir>/nus-wide/`."""

    RELEASE = "NUS-WIDE"
    MANUAL_SUBDIR = "nus-wide"
    FINGERPRINT_CONTENT = False
    LAYOUT = _LAYOUT
    MANUAL_DOWNLOAD_INSTRUCTIONS = _LAYOUT
    HOMEPAGE = "https://lms.comp.nus.edu.sg/wp-content/uploads/2019/research/nuswide/NUS-WIDE.html"
    BUILDER_CONFIGS = [nuswide_config()]

    def check_layout(self, root):
        if not (root / IMAGE_LIST).is_file():
            raise ValueError(f"NUS-WIDE: missing image list {root / IMAGE_LIST}.")
        concepts = self.builder_config.concepts
        found = label_files(root)
        need = len(concepts) or NUM_CONCEPTS
        if len(found) < need:
            raise ValueError(
                f"NUS-WIDE: {root / LABEL_DIR} holds {len(found)} Labels_<concept>.txt files; "
                f"expected at least {need}."
            )
        missing = [c for c in concepts if c not in found]
        if missing:
            raise ValueError(
                f"NUS-WIDE: no label file for concepts {missing} in {root / LABEL_DIR}."
            )

    def source_files(self, root):
        return [root / IMAGE_LIST, *label_files(root).values()]

    def read_release(self, root):
        lines = [x for x in (root / IMAGE_LIST).read_text().splitlines() if x.strip()]
        files = label_files(root)
        labels = {c: read_label_file(p, len(lines)) for c, p in files.items()}
        concepts = self.builder_config.concepts
        if not concepts:
            ranked = sorted(labels, key=lambda c: (-int(labels[c].sum()), c))
            concepts = tuple(ranked[:NUM_CONCEPTS])
        concepts = tuple(sorted(concepts))
        hot = np.stack([labels[c] for c in concepts], axis=1)  # [N_all, 21]
        keep = np.flatnonzero(hot.any(axis=1))
        logging.info(
            "NUS-WIDE: concepts %s; %d of %d images carry one (published: %d).",
            concepts,
            keep.size,
            len(lines),
            PUBLISHED_IMAGES,
        )
        paths = []
        for i in keep:
            try:
                rel = image_relpath(lines[i])
            except ValueError as e:
                raise ValueError(f"NUS-WIDE: {root / IMAGE_LIST} line {i + 1}: {e}.") from e
            paths.append(root / rel)
        missing = [p for p in paths if not p.is_file()]
        if missing:
            raise ValueError(
                f"NUS-WIDE: {len(missing)} listed images are missing, e.g. {missing[0]}; "
                "expected every image of Imagelist.txt under Flickr/."
            )
        label_lists = [np.flatnonzero(hot[i]) for i in keep]

        def image(j):
            return image_io.read_image(paths[j], channels=3, size=self.image_size, what="NUS-WIDE")

        return builder_lib.ReleaseData(
            partitions={"images": builder_lib.PartitionData.multi(label_lists, image)},
            class_names=concepts,
            multi_label=True,
        )


def load_nuswide(
    data_dir: str | pathlib.Path | None = None,
    source_dir: str | pathlib.Path | None = None,
    *,
    image_size: tuple[int, int] | int = 256,
    concepts: Sequence[str] = (),
    in_memory: bool | None = False,
) -> ReleaseSource:
    """NUS-WIDE (21 concepts) as a lazily read `ReleaseSource`.

    Args:
      data_dir: TFDS data_dir.
      source_dir: the release folder (default `<data_dir>/downloads/manual/nus-wide/`).
      image_size: stored size (default 256x256).
      concepts: explicit concept names (default: the 21 most frequent).
      in_memory: False (default) reads images lazily; None or True load them.

    Returns:
      Partition `images`; labels int32 multi-hot `[N, 21]`, name `"nuswide"`.

    Raises:
      ValueError: missing or bad list/label files, missing or unreadable images (named).
    """
    return builder_lib.load_release(
        DpqNuswide,
        nuswide_config(image_size, concepts),
        data_dir=data_dir,
        source_dir=source_dir,
        in_memory=in_memory,
        name="nuswide",
    )
