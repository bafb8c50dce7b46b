"""Class (identity) folders as TFDS builders: CFW-60K, VGGFace2, face sets, and users' folders.

The layout is torchvision's `ImageFolder`, which the OPQN code reads its face sets with
(`data/<dataset>/train/<identity>/*.jpg`, `.../test/<identity>/*.jpg`, and for VGGFace2 also
`cross_train/` and `cross_test/`):

    <root>/<partition>/<class>/<image>     e.g. train/n000002/0001_01.jpg
    <root>/<class>/<image>                 (flat: one partition named "images")

Class ids are the sorted union of the class folder names over all partitions (so the same
identity folder in `train/` and `test/` gets the same id). Image files are recognised by suffix
(`image_io.IMAGE_SUFFIXES`); other files are ignored, an image file outside a class folder or
a class folder without images is an error. Images are converted to RGB (or grey) and resized
to `image_size` at build time.

Builders:
  * `DpqIdentityFolders` (`dpq_identity_folders`): the face sets, one config per dataset name
    (`cfw60k`, `vggface2`, `facescrub`, `youtube_faces`), partition layout and size. Default
    source: `<manual_dir>/<dataset>/`.
  * `DpqImageFolder` (`dpq_image_folder`): a user's folder; default source
    `<manual_dir>/image_folder/`.

Sizes: faces for the 32x32 regime are stored at 35x35 (the OPQN recipe resizes to 35 and crops
32), faces for the 112x112 regime at 120x120 (resize 120, crop 112), so the configs' pp specs
start with a crop. VGGFace2 is read lazily by default (`in_memory=False`).

`load_cross_domain` combines VGGFace2's `cross_train`/`cross_test` with a target face set's
`train`/`test` into the one source of the `faces_unseen` protocol (partitions
`source_cross_train`, `source_cross_test`, `target_train`, `target_test`).

Example:
  >>> import tempfile
  >>> from PIL import Image
  >>> root = pathlib.Path(tempfile.mkdtemp())
  >>> for name in ("cats/a.png", "cats/b.png", "dogs/c.jpg"):
  ...     (root / "photos" / name).parent.mkdir(parents=True, exist_ok=True)
  ...     Image.new("RGB", (40, 30)).save(root / "photos" / name)
  >>> src = load_image_folder(root / "tfds", root / "photos", image_size=16)  # doctest: +ELLIPSIS
  Downloading and preparing dataset ...
  >>> src.partition_names, src.class_names, src.images.shape
  (('images',), ('cats', 'dogs'), (3, 16, 16, 3))
"""

import dataclasses
import pathlib
from collections.abc import Sequence

from absl import logging

from dpq_jax.data import builder_lib, image_io
from dpq_jax.data.release_source import ReleaseSource, concat_sources, select_partitions

FLAT = "images"  # the partition name of a flat folder
FACE_DATASETS = ("cfw60k", "vggface2", "facescrub", "youtube_faces")


@dataclasses.dataclass(eq=False)
class FolderConfig(builder_lib.ReleaseConfig):
    """A folder release: which dataset, which partition sub-folders, and how it is stored.

    Attributes:
      dataset: dataset name; also the sub-folder of a manual dir holding it.
      partitions: partition sub-folders in order; `()` for a flat folder; None to detect
        (`train/` + `test/` when both exist, else flat).
    """

    dataset: str = ""
    partitions: tuple[str, ...] | None = None


def folder_config(
    dataset: str,
    partitions: Sequence[str] | None,
    image_size: tuple[int, int] | int | None,
    channels: int = 3,
    encoding: str = "jpeg",
) -> FolderConfig:
    """A `FolderConfig` named `<dataset>_<layout>_<size>_<channels>_<encoding>`.

    Raises:
      ValueError: bad sizes, channels or encoding, or a partition named "all".
    """
    base = builder_lib.release_config(image_size, channels, encoding)
    if partitions is None:
        layout = "auto"
    else:
        partitions = tuple(str(p) for p in partitions)
        if any(p.lower() == "all" for p in partitions) or len(set(partitions)) != len(partitions):
            raise ValueError(f"partitions must be unique and not 'all'; got {partitions}.")
        layout = "_".join(partitions) or "flat"
    return FolderConfig(
        name=f"{dataset}_{layout}_{base.name}",
        description=f"{dataset}: {layout} layout, {base.description}",
        image_size=base.image_size,
        channels=channels,
        encoding=encoding,
        dataset=dataset,
        partitions=partitions,
    )


def detect_partitions(root: pathlib.Path, partitions: tuple[str, ...] | None) -> tuple[str, ...]:
    """The partition sub-folders to read: as given, or detected (`train`+`test`, else flat)."""
    if partitions is not None:
        return partitions
    if (root / "train").is_dir() and (root / "test").is_dir():
        return ("train", "test")
    return ()


def scan_folder(
    root: pathlib.Path, partitions: tuple[str, ...], what: str
) -> tuple[tuple[str, ...], dict[str, list[tuple[pathlib.Path, str]]]]:
    """Lists `(image path, class name)` per partition, checking the layout.

    Args:
      root: the release folder.
      partitions: partition sub-folders (`()` = flat).
      what: dataset name for messages.

    Returns:
      sorted class names, and per partition (`"images"` when flat) its images in class then
      file name order.

    Raises:
      ValueError: a missing partition folder, a folder without class sub-folders, an image
        file outside a class folder, or a class folder without images.
    """
    out = {}
    for part in partitions or (FLAT,):
        folder = root / part if partitions else root
        if not folder.is_dir():
            raise ValueError(
                f"{what}: missing folder {folder}; expected one sub-folder per class in it."
            )
        classes = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
        strays = image_io.list_images(folder)
        if strays:
            raise ValueError(
                f"{what}: image file {strays[0]} lies directly in {folder}; expected one "
                "sub-folder per class holding the images (<class>/<image>)."
            )
        if not classes:
            raise ValueError(
                f"{what}: {folder} has no class sub-folders; expected <class>/<image>."
            )
        items = []
        for class_dir in classes:
            images = image_io.list_images(class_dir)
            if not images:
                raise ValueError(
                    f"{what}: class folder {class_dir} holds no image files "
                    f"({', '.join(image_io.IMAGE_SUFFIXES)}); remove it or add images."
                )
            items += [(path, class_dir.name) for path in images]
        out[part] = items
    names = tuple(sorted({c for items in out.values() for _, c in items}))
    return names, out


class DpqIdentityFolders(builder_lib.ReleaseBuilder):
    """TFDS builder `dpq_identity_folders`: face identity folders, one config per dataset.

    Pass `config=folder_config(dataset, partitions, image_size)`; the default source is
    `<manual_dir>/<dataset>/`.
    """

    RELEASE = "identity folders"
    FINGERPRINT_CONTENT = False
    LAYOUT = """\
  <root>/train/<identity>/<image> and <root>/test/<identity>/<image> (torchvision ImageFolder,
  as in the OPQN code; VGGFace2 also cross_train/ and cross_test/), or flat
  <root>/<identity>/<image>."""
    MANUAL_DOWNLOAD_INSTRUCTIONS = LAYOUT
    BUILDER_CONFIGS = [folder_config(d, None, 35) for d in ("cfw60k",)]

    @property
    def what(self) -> str:
        return self.builder_config.dataset or self.RELEASE

    def manual_subdir(self) -> str:
        return self.builder_config.dataset

    def _partitions(self, root) -> tuple[str, ...]:
        return detect_partitions(root, self.builder_config.partitions)

    def check_layout(self, root):
        for part in self._partitions(root) or (None,):
            folder = root / part if part else root
            if not folder.is_dir() or not any(
                p.is_dir() for p in folder.iterdir() if not p.name.startswith(".")
            ):
                raise ValueError(f"{self.what}: {folder} is not a folder of class sub-folders.")

    def source_files(self, root):
        _, items = scan_folder(root, self._partitions(root), self.what)
        return [path for part in items.values() for path, _ in part]

    def read_release(self, root):
        class_names, items = scan_folder(root, self._partitions(root), self.what)
        ids = {name: i for i, name in enumerate(class_names)}
        partitions = {}
        for part, pairs in items.items():
            paths = [p for p, _ in pairs]
            partitions[part] = builder_lib.PartitionData.single(
                [ids[c] for _, c in pairs], self._reader(paths)
            )
        logging.info(
            "%s: %d classes; %s",
            self.what,
            len(class_names),
            ", ".join(f"{p}={len(v)}" for p, v in items.items()),
        )
        return builder_lib.ReleaseData(partitions=partitions, class_names=class_names)

    def _reader(self, paths):
        def image(i):
            return image_io.read_image(
                paths[i], channels=self.channels, size=self.image_size, what=self.what
            )

        return image


class DpqImageFolder(DpqIdentityFolders):
    """TFDS builder `dpq_image_folder`: a user's class folders (default
    `<manual_dir>/image_folder/`)."""

    RELEASE = "image folder"
    BUILDER_CONFIGS = [folder_config("image_folder", (), None)]


def load_image_folder(
    data_dir: str | pathlib.Path | None = None,
    source_dir: str | pathlib.Path | None = None,
    *,
    image_size: tuple[int, int] | int | None = None,
    channels: int = 3,
    partitions: Sequence[str] | None = (),
    encoding: str = "png",
    in_memory: bool | None = None,
    dataset: str = "image_folder",
) -> ReleaseSource:
    """A user's image folder (one sub-folder per class) as a `ReleaseSource`.

    Args:
      data_dir: TFDS data_dir.
      source_dir: the folder (default `<data_dir>/downloads/manual/<dataset>/`).
      image_size: `(H, W)` (or one int) to resize every image to; None keeps the size, which
        then must be the same for all images.
      channels: 3 (RGB) or 1 (grey).
      partitions: partition sub-folders (e.g. `("train", "test")`); `()` for a flat folder
        (default); None to detect `train/` + `test/`.
      encoding: "png" (lossless, default) or "jpeg" (smaller, for large photo sets).
      in_memory: hold images in memory, read lazily, or None to decide by size.
      dataset: name of the build (its own sub-folder of data_dir) and of the source.

    Returns:
      The images of all partitions, class ids = sorted class folder names.

    Raises:
      ValueError: bad layout or unreadable images (named), images of different sizes without
        `image_size`, or a data_dir built from another folder.
    """
    return builder_lib.load_release(
        DpqImageFolder,
        folder_config(dataset, partitions, image_size, channels, encoding),
        data_dir=data_dir,
        source_dir=source_dir,
        in_memory=in_memory,
        name=dataset,
    )


def load_face_folders(
    dataset: str,
    data_dir: str | pathlib.Path | None = None,
    source_dir: str | pathlib.Path | None = None,
    *,
    image_size: tuple[int, int] | int = 35,
    partitions: Sequence[str] | None = None,
    in_memory: bool | None = None,
) -> ReleaseSource:
    """A face set in identity folders (OPQN / ImageFolder layout) as a `ReleaseSource`.

    Args:
      dataset: `cfw60k`, `vggface2`, `facescrub`, `youtube_faces` (or any name: the default
        source folder is `<data_dir>/downloads/manual/<dataset>/`).
      data_dir: TFDS data_dir.
      source_dir: the dataset folder.
      image_size: stored size: 35 for the 32x32 regime, 120 for 112x112.
      partitions: partition sub-folders; None detects `train/` + `test/` (else flat).
      in_memory: hold images in memory, read lazily, or None to decide by size.

    Returns:
      The source (JPEG-stored RGB images), class ids = sorted identity folder names.

    Raises:
      ValueError: bad layout or unreadable images (named), or a data_dir built from another
        folder.
    """
    return builder_lib.load_release(
        DpqIdentityFolders,
        folder_config(dataset, partitions, image_size),
        data_dir=data_dir,
        source_dir=source_dir,
        in_memory=in_memory,
        name=dataset,
    )


def load_cfw60k(
    data_dir: str | pathlib.Path | None = None,
    source_dir: str | pathlib.Path | None = None,
    *,
    image_size: tuple[int, int] | int = 35,
    in_memory: bool | None = None,
) -> ReleaseSource:
    """CFW-60K identity folders at 35x35 (32x32 regime); `train/`+`test/` or flat.

    A flat folder gets the single partition `images`; `faces_seen` then holds out a seeded
    10% of each identity as queries. See `load_face_folders` for the arguments.
    """
    return load_face_folders(
        "cfw60k", data_dir, source_dir, image_size=image_size, in_memory=in_memory
    )


def load_vggface2(
    data_dir: str | pathlib.Path | None = None,
    source_dir: str | pathlib.Path | None = None,
    *,
    cross: bool = False,
    image_size: tuple[int, int] | int = 120,
    in_memory: bool | None = False,
) -> ReleaseSource:
    """The VGGFace2 subset (DCDH/OPQN release) at 120x120, read lazily by default.

    Args:
      data_dir: TFDS data_dir.
      source_dir: the `vggface2/` folder (default `<data_dir>/downloads/manual/vggface2/`).
      cross: read `cross_train/` + `cross_test/` (the identities of the cross-domain
        protocol) instead of `train/` + `test/`.
      image_size: stored size (120 = the OPQN resize before the 112 crop).
      in_memory: see `load_face_folders`.

    Returns:
      The source with partitions `train`, `test` (or `cross_train`, `cross_test`).
    """
    parts = ("cross_train", "cross_test") if cross else ("train", "test")
    return load_face_folders(
        "vggface2",
        data_dir,
        source_dir,
        image_size=image_size,
        partitions=parts,
        in_memory=in_memory,
    )


def load_cross_domain(
    target: str,
    data_dir: str | pathlib.Path | None = None,
    source_dir: str | pathlib.Path | None = None,
    *,
    image_size: tuple[int, int] | int = 120,
    in_memory: bool | None = False,
) -> ReleaseSource:
    """VGGFace2 (`cross_train`/`cross_test`) + a target face set (`train`/`test`), one source.

    This is the source of the `faces_unseen` protocol (OPQN's `-c` evaluation): train on
    VGGFace2's cross-domain identities, then search the target set (database = its train
    folder, queries = its test folder) at 112x112. Identity ids of the target follow those of
    VGGFace2, so the two never share an id.

    Args:
      target: the target set's folder name (`facescrub`, `cfw60k`, `youtube_faces`).
      data_dir: TFDS data_dir.
      source_dir: a folder holding `vggface2/` and `<target>/` (OPQN's `./data`); default:
        `<data_dir>/downloads/manual/`.
      image_size: stored size of both (120 for the 112 crop).
      in_memory: see `load_face_folders`.

    Returns:
      Partitions `source_cross_train`, `source_cross_test`, `target_train`, `target_test`.

    Raises:
      ValueError: missing or bad folders (named).
    """
    root = None if source_dir is None else pathlib.Path(source_dir)
    vgg = load_vggface2(
        data_dir,
        None if root is None else root / "vggface2",
        cross=True,
        image_size=image_size,
        in_memory=in_memory,
    )
    tgt = load_face_folders(
        target,
        data_dir,
        None if root is None else root / target,
        image_size=image_size,
        partitions=("train", "test"),
        in_memory=in_memory,
    )
    return concat_sources(
        [vgg, select_partitions(tgt, ("train", "test"))],
        ("source", "target"),
        name=f"vggface2_to_{target}",
    )


def load_vggface2_to_facescrub(data_dir=None, source_dir=None) -> ReleaseSource:
    """`load_cross_domain("facescrub", ...)` (registered as `vggface2_to_facescrub`)."""
    return load_cross_domain("facescrub", data_dir, source_dir)


def load_vggface2_to_cfw60k(data_dir=None, source_dir=None) -> ReleaseSource:
    """`load_cross_domain("cfw60k", ...)` (registered as `vggface2_to_cfw60k`)."""
    return load_cross_domain("cfw60k", data_dir, source_dir)


def load_vggface2_to_youtube_faces(data_dir=None, source_dir=None) -> ReleaseSource:
    """`load_cross_domain("youtube_faces", ...)` (registered as `vggface2_to_youtube_faces`)."""
    return load_cross_domain("youtube_faces", data_dir, source_dir)
