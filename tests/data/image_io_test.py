"""Tests for the shared image reader and the PNG/JPEG codec helpers."""

import numpy as np
import pytest
from PIL import Image

from dpq_jax.data import image_io


def _save(path, pixels):
    Image.fromarray(pixels).save(path)
    return path


def test_read_image_converts_and_resizes(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (6, 5, 3), dtype=np.uint8)
    path = _save(tmp_path / "a.png", rgb)
    np.testing.assert_array_equal(image_io.read_image(path), rgb)
    grey = image_io.read_image(path, channels=1)
    assert grey.shape == (6, 5, 1) and grey.dtype == np.uint8
    np.testing.assert_array_equal(grey[..., 0], np.asarray(Image.fromarray(rgb).convert("L")))
    assert image_io.read_image(path, size=(3, 4)).shape == (3, 4, 3)
    pgm = _save(tmp_path / "b.pgm", rgb[..., 0])
    assert image_io.read_image(pgm, channels=3).shape == (6, 5, 3)


def test_strict_refuses_another_mode(tmp_path):
    path = _save(tmp_path / "rgb.png", np.zeros((2, 2, 3), np.uint8))
    with pytest.raises(
        ValueError, match=r"faces: .*rgb\.png is a 'RGB' image; expected 8-bit grey"
    ):
        image_io.read_image(path, channels=1, strict=True, what="faces")
    assert image_io.read_image(path, channels=3, strict=True).shape == (2, 2, 3)


def test_unreadable_files_name_the_file(tmp_path):
    good = _save(tmp_path / "good.png", np.zeros((8, 8, 3), np.uint8))
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(good.read_bytes()[:40])
    text = tmp_path / "notes.jpg"
    text.write_text("not an image")
    for path in (truncated, text, tmp_path / "missing.png"):
        with pytest.raises(ValueError, match=f"mine: cannot read image .*{path.name}"):
            image_io.read_image(path, what="mine")
    with pytest.raises(ValueError, match="channels must be 1"):
        image_io.read_image(good, channels=2)


def test_encode_decode_round_trip_and_listing(tmp_path):
    image = np.random.default_rng(1).integers(0, 256, (4, 3, 1), dtype=np.uint8)
    np.testing.assert_array_equal(
        image_io.decode_image(image_io.encode_image(image, "png"), 1), image
    )
    jpeg = image_io.decode_image(image_io.encode_image(image, "jpeg"), 1)
    assert jpeg.shape == image.shape and jpeg.dtype == np.uint8
    for name in ("b.PNG", "a.jpg", "c.txt"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "d.png").mkdir()
    assert [p.name for p in image_io.list_images(tmp_path)] == ["a.jpg", "b.PNG"]
