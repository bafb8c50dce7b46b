"""A user's CSV of `path,label[,label...]` rows as a TFDS builder (multi-label allowed).

Format (`labels.csv` by default, in the source folder):

    path,label                 <- optional header (first cell "path", any case)
    photos/a.jpg,cat
    photos/b.jpg,dog,outdoor   <- several labels: a multi-label data set (multi-hot labels)

* paths are relative to the CSV's folder (absolute paths also work);
* labels are names; if every label is an integer they are ordered numerically, else sorted
  as strings; the class ids follow that order;
* a row with a single label everywhere gives class ids `[N]`; any row with several labels
  gives multi-hot labels `[N, C]` (relevance = at least one shared label);
* repeated labels in a row count once; empty trailing cells are ignored.

The source has one partition, `images`, in row order. Protocols for it: `holdout` (seeded
per-class query/validation hold-out, or random for multi-label data), or the ORL ones.

Example:
  >>> import tempfile
  >>> from PIL import Image
  >>> root = pathlib.Path(tempfile.mkdtemp())
  >>> for name in ("a.png", "b.png", "c.png"):
  ...     Image.new("RGB", (20, 20)).save(root / name)
  >>> _ = (root / "labels.csv").write_text("a.png,cat\\nb.png,dog,outdoor\\nc.png,cat,outdoor\\n")
  >>> src = load_image_csv(root / "tfds", source_dir=root, image_size=8)  # doctest: +ELLIPSIS
  Downloading and preparing dataset ...
  >>> src.class_names, src.labels.tolist()
  (('cat', 'dog', 'outdoor'), [[1, 0, 0], [0, 1, 1], [1, 0, 1]])
"""

import csv
import dataclasses
import pathlib

from dpq_jax import io_utils
from dpq_jax.data import builder_lib, image_io
from dpq_jax.data.release_source import ReleaseSource


@dataclasses.dataclass(eq=False)
class CsvConfig(builder_lib.ReleaseConfig):
    """Attributes: dataset: build name; csv_name: the CSV's file name in the source folder."""

    dataset: str = "image_csv"
    csv_name: str = "labels.csv"


def csv_config(
    dataset: str = "image_csv",
    csv_name: str = "labels.csv",
    image_size: tuple[int, int] | int | None = None,
    channels: int = 3,
    encoding: str = "png",
) -> CsvConfig:
    """A `CsvConfig` named `<dataset>_<size>_<channels>_<encoding>`."""
    base = builder_lib.release_config(image_size, channels, encoding)
    stem = "" if csv_name == "labels.csv" else "_" + pathlib.Path(csv_name).stem
    return CsvConfig(
        name=f"{dataset}{stem}_{base.name}",
        description=f"{dataset} from {csv_name}: {base.description}",
        image_size=base.image_size,
        channels=channels,
        encoding=encoding,
        dataset=dataset,
        csv_name=csv_name,
    )


def read_label_csv(path: pathlib.Path) -> tuple[list[pathlib.Path], list[list[str]]]:
    """Image paths and label names per row.

    Raises:
      ValueError: missing file, a row without a label, or no rows (the line is named).
    """
    if not path.is_file():
        raise ValueError(f"image CSV: missing file {path}; expected rows 'path,label[,label...]'.")
    paths, labels = [], []
    with open(path, newline="") as f:
        for number, row in enumerate(csv.reader(f), 1):
            cells = [c.strip() for c in row]
            while cells and not cells[-1]:
                cells.pop()
            if not cells:
                continue
            if number == 1 and cells[0].lower() == "path":
                continue
            if len(cells) < 2 or not cells[0]:
                raise ValueError(
                    f"image CSV: {path} line {number} is {','.join(row)!r}; expected "
                    "'path,label[,label...]' with at least one label."
                )
            image = pathlib.Path(cells[0])
            paths.append(image if image.is_absolute() else path.parent / image)
            labels.append(list(dict.fromkeys(c for c in cells[1:] if c)))
    if not paths:
        raise ValueError(f"image CSV: {path} has no rows; expected 'path,label[,label...]'.")
    return paths, labels


def class_order(names) -> tuple[str, ...]:
    """Sorted label names: numerically if all are integers, else as strings."""
    names = set(names)
    try:
        return tuple(sorted(names, key=int))
    except ValueError:
        return tuple(sorted(names))


class DpqImageCsv(builder_lib.ReleaseBuilder):
    """TFDS builder `dpq_image_csv`: one split `images`; default source
    `<manual_dir>/<dataset>/` holding the CSV."""

    RELEASE = "image CSV"
    FINGERPRINT_CONTENT = False
    LAYOUT = "  <folder>/labels.csv with rows 'path,label[,label...]' (paths relative to it)."
    MANUAL_DOWNLOAD_INSTRUCTIONS = LAYOUT
    BUILDER_CONFIGS = [csv_config()]

    def manual_subdir(self) -> str:
        return self.builder_config.dataset

    def _csv(self, root) -> pathlib.Path:
        return root / self.builder_config.csv_name

    def check_layout(self, root):
        if not self._csv(root).is_file():
            raise ValueError(f"image CSV: missing {self._csv(root)}.")

    def source_files(self, root):
        paths, _ = read_label_csv(self._csv(root))
        missing = [p for p in paths if not p.is_file()]
        if missing:
            raise ValueError(
                f"image CSV: {len(missing)} images listed in {self._csv(root)} are missing, "
                f"e.g. {missing[0]}."
            )
        return [self._csv(root), *paths]

    def source_fingerprint(self, root):
        # Paths may lie outside root (absolute); name them by their full path.
        files = self.source_files(root)
        anchor = pathlib.Path(root.anchor or "/")
        return io_utils.files_sha256(anchor, [p.resolve() for p in files], content=False)

    def read_release(self, root):
        path = self._csv(root)
        paths, names = read_label_csv(path)
        self.source_files(root)  # Fails on missing images, naming one.
        classes = class_order(n for row in names for n in row)
        ids = {name: i for i, name in enumerate(classes)}
        label_lists = [[ids[n] for n in row] for row in names]
        multi = any(len(row) > 1 for row in label_lists)

        def image(i):
            return image_io.read_image(
                paths[i], channels=self.channels, size=self.image_size, what="image CSV"
            )

        part = builder_lib.PartitionData.multi(label_lists, image)
        return builder_lib.ReleaseData(
            partitions={"images": part}, class_names=classes, multi_label=multi
        )


def load_image_csv(
    data_dir: str | pathlib.Path | None = None,
    source_dir: str | pathlib.Path | None = None,
    *,
    csv_name: str = "labels.csv",
    image_size: tuple[int, int] | int | None = None,
    channels: int = 3,
    encoding: str = "png",
    in_memory: bool | None = None,
    dataset: str = "image_csv",
) -> ReleaseSource:
    """A user's `path,label[s]` CSV as a `ReleaseSource` (partition `images`).

    Args:
      data_dir: TFDS data_dir.
      source_dir: folder holding the CSV (default `<data_dir>/downloads/manual/<dataset>/`).
      csv_name: the CSV's file name.
      image_size: `(H, W)` or one int to resize to; None keeps the size (must then be equal).
      channels: 3 (RGB) or 1 (grey).
      encoding: "png" (default) or "jpeg".
      in_memory: hold images in memory, read lazily, or None to decide by size.
      dataset: build and source name.

    Returns:
      The source; labels `[N]` class ids, or `[N, C]` multi-hot when a row has several.

    Raises:
      ValueError: a bad CSV row, missing or unreadable images (named), or different image
        sizes without `image_size`.
    """
    return builder_lib.load_release(
        DpqImageCsv,
        csv_config(dataset, csv_name, image_size, channels, encoding),
        data_dir=data_dir,
        source_dir=source_dir,
        in_memory=in_memory,
        name=dataset,
    )
