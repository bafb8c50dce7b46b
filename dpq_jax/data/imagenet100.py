"""ImageNet-100 (a class list plus ImageNet's image folders) as a TFDS builder, read lazily.

The hashing literature (HashNet, DPQ) uses 100 ImageNet classes: every training image of those
classes is the database (128,564), all their validation images are the queries (5,000), and
100 images per class sampled from the database train the model (10,000). DPQ's class list
(`choosed.json`) is missing from its repository, so the list is an input here:

    classes.txt                 one WordNet id per line (e.g. n01440764); '#' starts a comment
    train/<wnid>/<image>.JPEG   ImageNet's training folders (extra class folders are ignored,
                                so a full ILSVRC2012 train/ works)
    val/<wnid>/<image>.JPEG     the validation images sorted into class folders (the usual
                                layout made with ILSVRC2012's validation ground truth)

Class ids follow the order of `classes.txt`. Images are converted to RGB (ImageNet has a few
grey and CMYK JPEGs), resized to 256x256 (HashNet's `ResizeImage(256)`) and stored as JPEG; the
source has the partitions `train` then `val` and reads them lazily.

References:
  Z. Cao et al., "HashNet: Deep Learning to Hash by Continuation", ICCV 2017; B. Gao et al.,
  "Deep Progressive Quantization" (DPQ), 2019; METHODS.md Sec. 2.5.
"""

import pathlib

from absl import logging

from dpq_jax.data import builder_lib, image_io
from dpq_jax.data.release_source import ReleaseSource

CLASS_LIST = "classes.txt"
PARTITIONS = ("train", "val")
PUBLISHED = {"train": 128564, "val": 5000}
_LAYOUT = """\
  classes.txt (one WordNet id per line), train/<wnid>/*.JPEG, val/<wnid>/*.JPEG"""


def read_class_list(path: pathlib.Path) -> tuple[str, ...]:
    """WordNet ids from a class list, in order.

    Raises:
      ValueError: missing file, no ids, or a repeated id (line named).
    """
    if not path.is_file():
        raise ValueError(f"ImageNet-100: missing class list {path}; expected one wnid per line.")
    ids, seen = [], {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        wnid = line.split("#", 1)[0].strip()
        if not wnid:
            continue
        if wnid in seen:
            raise ValueError(
                f"ImageNet-100: {path} line {number} repeats {wnid!r} (first on line "
                f"{seen[wnid]}); each class must be listed once."
            )
        seen[wnid] = number
        ids.append(wnid)
    if not ids:
        raise ValueError(f"ImageNet-100: {path} lists no class.")
    return tuple(ids)


class DpqImagenet100(builder_lib.ReleaseBuilder):
    """TFDS builder `dpq_imagenet100`: splits `train` and `val` of the listed classes.

    Default source `<manual_dir>/imagenet100/`.
    """

    RELEASE = "ImageNet-100"
    MANUAL_SUBDIR = "imagenet100"
    FINGERPRINT_CONTENT = False
    LAYOUT = _LAYOUT
    MANUAL_DOWNLOAD_INSTRUCTIONS = _LAYOUT
    HOMEPAGE = "https://image-net.org"
    BUILDER_CONFIGS = [builder_lib.release_config(256, 3, "jpeg")]

    def check_layout(self, root):
        read_class_list(root / CLASS_LIST)
        for part in PARTITIONS:
            if not (root / part).is_dir():
                raise ValueError(f"ImageNet-100: missing folder {root / part}.")

    def _items(self, root):
        classes = read_class_list(root / CLASS_LIST)
        items = {}
        for part in PARTITIONS:
            pairs = []
            for k, wnid in enumerate(classes):
                folder = root / part / wnid
                if not folder.is_dir():
                    raise ValueError(
                        f"ImageNet-100: missing class folder {folder} (class {k} of "
                        f"{root / CLASS_LIST})."
                    )
                images = image_io.list_images(folder)
                if not images:
                    raise ValueError(f"ImageNet-100: class folder {folder} holds no images.")
                pairs += [(p, k) for p in images]
            items[part] = pairs
        return classes, items

    def source_files(self, root):
        _, items = self._items(root)
        return [root / CLASS_LIST] + [p for pairs in items.values() for p, _ in pairs]

    def read_release(self, root):
        classes, items = self._items(root)
        logging.info(
            "ImageNet-100: %d classes; %s (published for the 100-class set: %s).",
            len(classes),
            {p: len(v) for p, v in items.items()},
            PUBLISHED,
        )
        partitions = {}
        for part, pairs in items.items():
            paths = [p for p, _ in pairs]

            def image(i, paths=paths):
                return image_io.read_image(
                    paths[i], channels=3, size=self.image_size, what="ImageNet-100"
                )

            partitions[part] = builder_lib.PartitionData.single([k for _, k in pairs], image)
        return builder_lib.ReleaseData(partitions=partitions, class_names=classes)


def load_imagenet100(
    data_dir: str | pathlib.Path | None = None,
    source_dir: str | pathlib.Path | None = None,
    *,
    image_size: tuple[int, int] | int = 256,
    in_memory: bool | None = False,
) -> ReleaseSource:
    """ImageNet-100 as a lazily read `ReleaseSource` (partitions `train`, `val`).

    Args:
      data_dir: TFDS data_dir.
      source_dir: folder with `classes.txt`, `train/`, `val/` (default
        `<data_dir>/downloads/manual/imagenet100/`).
      image_size: stored size (default 256x256).
      in_memory: False (default) reads lazily; None or True load the images.

    Returns:
      The source; class ids in class-list order; name `"imagenet100"`.

    Raises:
      ValueError: missing class list or folders, unreadable images (named).
    """
    return builder_lib.load_release(
        DpqImagenet100,
        builder_lib.release_config(image_size, 3, "jpeg"),
        data_dir=data_dir,
        source_dir=source_dir,
        in_memory=in_memory,
        name="imagenet100",
    )
