"""Image files and bytes to and from uint8 `[H, W, C]` arrays (PIL), with errors naming the file.

The one place that decodes and encodes images: the dataset builders (`builder_lib` and the
release modules) and `dpq-search` read files with `read_image`; the builders store and read
back PNG/JPEG bytes with `encode_image` / `decode_image`.

Example:
  >>> import tempfile
  >>> path = pathlib.Path(tempfile.mkdtemp()) / "a.png"
  >>> _ = path.write_bytes(encode_image(np.full((2, 3, 3), 7, np.uint8), "png"))
  >>> read_image(path, channels=1).shape
  (2, 3, 1)
"""

import io
import pathlib

import numpy as np
from PIL import Image

# Suffixes (lower case) that folder readers treat as images.
IMAGE_SUFFIXES = (
    ".jpg",
    ".jpeg",
    ".png",
    ".bmp",
    ".ppm",
    ".pgm",
    ".pbm",
    ".gif",
    ".tif",
    ".tiff",
    ".webp",
)
JPEG_QUALITY = 95
_MODES = {1: "L", 3: "RGB"}


def _mode(channels: int) -> str:
    if channels not in _MODES:
        raise ValueError(f"channels must be 1 (grey) or 3 (RGB), got {channels}.")
    return _MODES[channels]


def read_image(
    path: str | pathlib.Path,
    channels: int = 3,
    *,
    size: tuple[int, int] | None = None,
    strict: bool = False,
    what: str = "image",
) -> np.ndarray:
    """Reads an image file as uint8 `[H, W, C]`, converted to RGB (C=3) or grey (C=1).

    Args:
      path: the file.
      channels: 3 (RGB) or 1 (grey).
      size: optional `(H, W)`; the image is resized to it (PIL bilinear, antialiased).
      strict: the file must already be 8-bit grey (`channels=1`) or RGB (`channels=3`);
        anything else is refused instead of converted (for releases of a known format).
      what: what is being read (e.g. the dataset name), for error messages.

    Returns:
      uint8 `[H, W, channels]` (`[size[0], size[1], channels]` with `size`).

    Raises:
      ValueError: naming the file: missing, truncated, not an image PIL can decode, or (with
        `strict`) not in the expected mode.
    """
    mode = _mode(channels)
    try:
        with Image.open(path) as im:
            im.load()  # Decode now, so a truncated file fails here with its name.
            found, im = im.mode, im.convert(mode)
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise ValueError(
            f"{what}: cannot read image {path} ({e}); expected a complete image file "
            f"({', '.join(IMAGE_SUFFIXES)}). Replace or remove it."
        ) from e
    if strict and found != mode:
        raise ValueError(
            f"{what}: {path} is a {found!r} image; expected "
            f"{'8-bit grey' if channels == 1 else 'RGB'} ({mode!r})."
        )
    if size is not None and im.size != (size[1], size[0]):
        im = im.resize((size[1], size[0]), Image.Resampling.BILINEAR)
    pixels = np.asarray(im, np.uint8)
    return pixels.reshape(*pixels.shape[:2], channels)


def encode_image(image: np.ndarray, encoding: str) -> bytes:
    """PNG (lossless) or JPEG (quality `JPEG_QUALITY`) bytes of a uint8 `[H, W, C]` image."""
    im = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
    buffer = io.BytesIO()
    if encoding == "jpeg":
        im.save(buffer, format="JPEG", quality=JPEG_QUALITY)
    else:
        im.save(buffer, format="PNG", compress_level=3)
    return buffer.getvalue()


def decode_image(data: bytes, channels: int) -> np.ndarray:
    """uint8 `[H, W, channels]` from PNG/JPEG bytes (as written by `encode_image`)."""
    with Image.open(io.BytesIO(data)) as im:
        pixels = np.asarray(im.convert(_mode(channels)), np.uint8)
    return pixels.reshape(*pixels.shape[:2], channels)


def list_images(folder: pathlib.Path) -> list[pathlib.Path]:
    """Image files directly inside `folder` (by suffix, case-insensitive), sorted by name."""
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
