"""DeepFashion In-shop Clothes Retrieval as a TFDS builder (partitions train/query/gallery).

The benchmark's evaluation file `list_eval_partition.txt` (in the release's `Eval/` folder)
starts with the number of images, then a header line, then one line per image:

    52712
    image_name item_id evaluation_status
    img/WOMEN/Dresses/id_00000002/02_1_front.jpg id_00000002 train

with status `train` (25,882 images of 3,997 items), `query` (14,218) or `gallery` (12,612);
query and gallery share their 3,985 items, disjoint from the training items. Image paths are
relative to the release root (`img/` from `Img/img.zip`). Class ids are the sorted item ids.
Images (256x256 in the release) are stored as JPEG and read lazily. The source has the
partitions `train`, `query`, `gallery`.

References:
  Z. Liu et al., "DeepFashion: Powering Robust Clothes Recognition and Retrieval with Rich
  Annotations", CVPR 2016.
"""

import pathlib

from absl import logging

from dpq_jax.data import builder_lib, image_io
from dpq_jax.data.release_source import ReleaseSource

PARTITIONS = ("train", "query", "gallery")
PUBLISHED = {"train": 25882, "query": 14218, "gallery": 12612, "train_items": 3997}
EVAL_FILE = "list_eval_partition.txt"
_LAYOUT = """\
  list_eval_partition.txt (or Eval/list_eval_partition.txt) and the images it lists
  (img/WOMEN/... relative to this folder)."""


def eval_file(root: pathlib.Path) -> pathlib.Path:
    """`list_eval_partition.txt` in `root` or `root/Eval`.

    Raises:
      ValueError: neither exists.
    """
    for path in (root / EVAL_FILE, root / "Eval" / EVAL_FILE):
        if path.is_file():
            return path
    raise ValueError(f"In-shop: missing {root / EVAL_FILE} (or {root / 'Eval' / EVAL_FILE}).")


def read_eval_partition(path: pathlib.Path) -> list[tuple[str, str, str]]:
    """`(image_name, item_id, status)` rows of `list_eval_partition.txt`.

    Raises:
      ValueError: a count line that does not match, a missing header, a row without three
        fields or with an unknown status (the line is named).
    """
    lines = [x for x in path.read_text().splitlines() if x.strip()]
    if len(lines) < 2:
        raise ValueError(f"In-shop: {path} is empty; expected a count line and a header.")
    try:
        count = int(lines[0].strip())
    except ValueError as e:
        raise ValueError(
            f"In-shop: {path} line 1 is {lines[0]!r}; expected the image count."
        ) from e
    if lines[1].split() != ["image_name", "item_id", "evaluation_status"]:
        raise ValueError(
            f"In-shop: {path} line 2 is {lines[1]!r}; expected 'image_name item_id "
            "evaluation_status'."
        )
    rows = []
    for number, line in enumerate(lines[2:], 3):
        fields = line.split()
        if len(fields) != 3 or fields[2] not in PARTITIONS:
            raise ValueError(
                f"In-shop: {path} line {number} is {line!r}; expected '<image> <item_id> "
                f"<{'|'.join(PARTITIONS)}>'."
            )
        rows.append(tuple(fields))
    if len(rows) != count:
        raise ValueError(
            f"In-shop: {path} announces {count} images but lists {len(rows)}; the file is "
            "truncated."
        )
    return rows


class DpqInshop(builder_lib.ReleaseBuilder):
    """TFDS builder `dpq_inshop`: splits `train`, `query`, `gallery`.

    Default source `<manual_dir>/inshop/`.
    """

    RELEASE = "In-shop"
    MANUAL_SUBDIR = "inshop"
    FINGERPRINT_CONTENT = False
    LAYOUT = _LAYOUT
    MANUAL_DOWNLOAD_INSTRUCTIONS = _LAYOUT
    HOMEPAGE = "https://mmlab.ie.cuhk.edu.hk/projects/DeepFashion/InShopRetrieval.html"
    BUILDER_CONFIGS = [builder_lib.release_config(256, 3, "jpeg")]

    def check_layout(self, root):
        eval_file(root)

    def source_files(self, root):
        path = eval_file(root)
        return [path] + [root / name for name, _, _ in read_eval_partition(path)]

    def read_release(self, root):
        path = eval_file(root)
        rows = read_eval_partition(path)
        items = tuple(sorted({item for _, item, _ in rows}))
        ids = {item: k for k, item in enumerate(items)}
        missing = [root / name for name, _, _ in rows if not (root / name).is_file()]
        if missing:
            raise ValueError(
                f"In-shop: {len(missing)} images listed in {path} are missing, e.g. "
                f"{missing[0]}; expected them relative to {root}."
            )
        partitions = {}
        for part in PARTITIONS:
            chosen = [(root / name, ids[item]) for name, item, status in rows if status == part]
            if not chosen:
                raise ValueError(f"In-shop: {path} lists no {part} image.")
            paths = [p for p, _ in chosen]

            def image(i, paths=paths):
                return image_io.read_image(
                    paths[i], channels=3, size=self.image_size, what="In-shop"
                )

            partitions[part] = builder_lib.PartitionData.single([k for _, k in chosen], image)
        logging.info(
            "In-shop: %s images, %d items (published: %s).",
            {p: v.size for p, v in partitions.items()},
            len(items),
            PUBLISHED,
        )
        return builder_lib.ReleaseData(partitions=partitions, class_names=items)


def load_inshop(
    data_dir: str | pathlib.Path | None = None,
    source_dir: str | pathlib.Path | None = None,
    *,
    image_size: tuple[int, int] | int = 256,
    in_memory: bool | None = False,
) -> ReleaseSource:
    """DeepFashion In-shop as a lazily read `ReleaseSource` (`train`, `query`, `gallery`).

    Args:
      data_dir: TFDS data_dir.
      source_dir: the release folder (default `<data_dir>/downloads/manual/inshop/`).
      image_size: stored size (default 256x256, the release's size).
      in_memory: False (default) reads lazily; None or True load the images.

    Returns:
      The source; class ids = sorted item ids; name `"inshop"`.

    Raises:
      ValueError: a missing or malformed partition file, missing or unreadable images.
    """
    return builder_lib.load_release(
        DpqInshop,
        builder_lib.release_config(image_size, 3, "jpeg"),
        data_dir=data_dir,
        source_dir=source_dir,
        in_memory=in_memory,
        name="inshop",
    )
