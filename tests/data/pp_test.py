"""Tests for dpq_jax.data.pp: each op against a hand-written NumPy expectation."""

import numpy as np
from absl.testing import absltest, parameterized
from PIL import Image

from dpq_jax.data import pp


def _bilinear_reference(x: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Separable triangle-filter resampling, PIL's definition of bilinear, in float64.

    Output pixel i has centre c = (i + 0.5) * in / out in input coordinates; input pixel j
    (centre j + 0.5) gets weight max(0, 1 - |j + 0.5 - c| / s) with s = max(in / out, 1)
    (the filter widens when shrinking, i.e. antialiasing); weights are normalised to sum 1.
    """

    def matrix(n_in, n_out):
        s = max(n_in / n_out, 1.0)
        c = (np.arange(n_out) + 0.5) * n_in / n_out
        w = np.maximum(0.0, 1.0 - np.abs(np.arange(n_in)[None, :] + 0.5 - c[:, None]) / s)
        return w / w.sum(axis=1, keepdims=True)  # [n_out, n_in]

    rows, cols = matrix(x.shape[0], out_h), matrix(x.shape[1], out_w)
    return np.einsum("ih,hwc,jw->ijc", rows, x.astype(np.float64), cols)


class ResizeTest(parameterized.TestCase):
    @parameterized.parameters(np.uint8, np.float32)
    def test_hand_computed(self, dtype):
        # Upsampling 2 -> 4: samples at -0.25, 0.25, 0.75, 1.25 pixels, clamped at the edges.
        up = pp.build("resize(1,4)")(np.array([[[0], [100]]], dtype))
        np.testing.assert_allclose(up[0, :, 0], [0, 25, 75, 100], atol=1e-4)
        # Shrinking 4 -> 2: triangle of half-width 2 centred at 1 and 3 (weights .75 .75 .25).
        down = pp.build("resize(2,1)")(np.array([[[0]], [[70]], [[140]], [[210]]], dtype))
        np.testing.assert_allclose(down[:, 0, 0], [50, 160], atol=1e-4)

    @parameterized.parameters(((35, 29), (16, 20)), ((7, 5), (13, 11)), ((8, 8), (8, 8)))
    def test_matches_reference(self, shape_in, shape_out):
        rng = np.random.default_rng(0)
        x = rng.integers(0, 256, (*shape_in, 3), dtype=np.uint8)
        want = _bilinear_reference(x, *shape_out)
        got_u8 = pp.resize(*shape_out)(x)
        self.assertEqual(got_u8.dtype, np.uint8)
        np.testing.assert_allclose(got_u8, want, atol=1)  # PIL rounds in fixed point.
        got_f = pp.resize(*shape_out)(x.astype(np.float32))
        self.assertEqual(got_f.dtype, np.float32)
        np.testing.assert_allclose(got_f, want, atol=1e-3)


def _torchvision_short_side(height, width, size):
    """torchvision `_compute_resized_output_size` for `Resize(size)` with an int, written out:
    the shorter edge becomes `size`, the longer one `int(size * long / short)`."""
    if width <= height:
        return int(size * height / width), size
    return size, int(size * width / height)


class ResizeShortSideTest(parameterized.TestCase):
    @parameterized.parameters(
        ((250, 180), 120),  # portrait: (int(120 * 250 / 180), 120) = (166, 120)
        ((180, 250), 120),  # landscape
        ((97, 131), 120),  # enlarged: 131 * 120 / 97 = 162.06 -> 162
        ((35, 29), 32),  # 35 * 32 / 29 = 38.62 -> 38 (truncated, not rounded)
        ((40, 40), 35),
    )
    def test_matches_pil_twin(self, shape_in, size):
        rng = np.random.default_rng(1)
        x = rng.integers(0, 256, (*shape_in, 3), dtype=np.uint8)
        out_h, out_w = _torchvision_short_side(*shape_in, size)
        self.assertEqual(pp.short_side_size(*shape_in, size), (out_h, out_w))
        self.assertEqual(min(out_h, out_w), size)
        # Twin: one PIL bilinear resize of the whole RGB image, as torchvision does on a PIL one.
        want = np.asarray(Image.fromarray(x).resize((out_w, out_h), Image.Resampling.BILINEAR))
        got = pp.build(f"resize({size})")(x)
        self.assertEqual(got.shape, (out_h, out_w, 3))
        np.testing.assert_array_equal(got, want)
        got_f = pp.resize(size)(x.astype(np.float32))
        np.testing.assert_allclose(got_f, _bilinear_reference(x, out_h, out_w), atol=1e-3)

    def test_already_at_size_is_untouched(self):
        x = np.random.default_rng(2).integers(0, 256, (120, 150, 3), dtype=np.uint8)
        self.assertIs(pp.resize(120)(x), x)  # torchvision returns the image itself
        self.assertEqual(pp.resize(112)(x).shape, (112, 140, 3))


class CropFlipTest(parameterized.TestCase):
    def test_center_crop(self):
        x = np.arange(30).reshape(5, 6, 1)
        got = pp.center_crop(3, 2)(x)
        # top = (5 - 3) // 2 = 1, left = (6 - 2) // 2 = 2.
        np.testing.assert_array_equal(got[..., 0], [[8, 9], [14, 15], [20, 21]])

    @parameterized.parameters(0, 1, 2, 3)
    def test_random_crop_with_pad(self, seed):
        x = np.arange(1, 17).reshape(4, 4, 1)
        got = pp.random_crop(3, 3, pad=1)(x, np.random.default_rng(seed))
        # Documented draws: top then left, uniform over the 4 positions of a 3-window in 6.
        r = np.random.default_rng(seed)
        top, left = r.integers(0, 4), r.integers(0, 4)
        padded = np.zeros((6, 6, 1), x.dtype)
        padded[1:5, 1:5] = x
        np.testing.assert_array_equal(got, padded[top : top + 3, left : left + 3])

    def test_random_crop_covers_all_positions(self):
        x = np.arange(20).reshape(4, 5, 1)
        rng = np.random.default_rng(0)
        corners = {tuple(pp.random_crop(2, 3)(x, rng)[0, 0]) for _ in range(200)}
        want = {(x[top, left, 0],) for top in range(3) for left in range(3)}
        self.assertEqual(corners, want)

    def test_flip_lr(self):
        x = np.arange(6).reshape(1, 3, 2)
        np.testing.assert_array_equal(
            pp.flip_lr(1.0)(x, np.random.default_rng(0)), [[[4, 5], [2, 3], [0, 1]]]
        )
        np.testing.assert_array_equal(pp.flip_lr(0.0)(x, np.random.default_rng(0)), x)
        for seed in range(8):
            flipped = np.random.default_rng(seed).random() < 0.5
            got = pp.flip_lr()(x, np.random.default_rng(seed))
            np.testing.assert_array_equal(got, x[:, ::-1] if flipped else x)


class ValueTest(absltest.TestCase):
    def test_value_range(self):
        x = np.array([0, 51, 255], np.uint8).reshape(1, 3, 1)
        np.testing.assert_allclose(pp.value_range(0, 1)(x).ravel(), [0, 0.2, 1], rtol=1e-6)
        np.testing.assert_allclose(pp.value_range(-1, 1)(x).ravel(), [-1, -0.6, 1], rtol=1e-6)
        self.assertEqual(pp.value_range(0, 1)(x).dtype, np.float32)

    def test_normalize(self):
        x = np.array([0.0, 0.5, 1.0], np.float32).reshape(1, 3, 1)
        np.testing.assert_allclose(pp.normalize((0.5,), (0.5,))(x).ravel(), [-1, 0, 1])
        rgb = np.ones((1, 1, 3), np.float32)
        got = pp.normalize((0.0, 0.5, 1.0), (1.0, 0.5, 2.0))(rgb)
        np.testing.assert_allclose(got.ravel(), [1.0, 1.0, 0.0])


class BuildTest(absltest.TestCase):
    def test_chain_matches_manual_composition(self):
        spec = "resize(35,29)|random_crop(32,26)|flip_lr|value_range(0,1)|normalize((0.5,),(0.5,))"
        x = np.random.default_rng(1).integers(0, 256, (40, 40, 1), dtype=np.uint8)
        got = pp.build(spec)(x, np.random.default_rng(5))
        r = np.random.default_rng(5)
        y = pp.resize(35, 29)(x)
        top, left = r.integers(0, 4), r.integers(0, 4)
        y = y[top : top + 32, left : left + 26]
        if r.random() < 0.5:
            y = y[:, ::-1]
        want = (y.astype(np.float32) / 255.0 - 0.5) / 0.5
        self.assertEqual(got.dtype, np.float32)
        self.assertEqual(got.shape, (32, 26, 1))
        np.testing.assert_allclose(got, want, atol=1e-6)

    def test_empty_spec_casts(self):
        x = np.full((2, 2, 1), 7, np.uint8)
        got = pp.build("")(x)
        self.assertEqual(got.dtype, np.float32)
        np.testing.assert_array_equal(got, 7.0)

    def test_parse_kwargs(self):
        self.assertEqual(
            pp.parse("random_crop(32, 32, pad=4) | flip_lr"),
            [("random_crop", (32, 32), {"pad": 4}), ("flip_lr", (), {})],
        )

    def test_errors(self):
        with self.assertRaisesRegex(ValueError, r"unknown op 'blur'.*'center_crop'"):
            pp.build("resize(8,8)|blur(3)")
        with self.assertRaisesRegex(ValueError, "cannot parse"):
            pp.build("resize(8,")
        with self.assertRaisesRegex(ValueError, "cannot parse"):
            pp.build("resize(h)")
        with self.assertRaisesRegex(ValueError, "pp op resize: bad arguments"):
            pp.build("resize(8,8,8)")
        with self.assertRaisesRegex(ValueError, "pp op resize: size must be a positive int"):
            pp.build("resize(0)")
        with self.assertRaisesRegex(ValueError, "positive int"):
            pp.build("center_crop(0,2)")
        with self.assertRaisesRegex(ValueError, "needs a np.random.Generator"):
            pp.build("flip_lr")(np.zeros((2, 2, 1), np.uint8), None)
        with self.assertRaisesRegex(ValueError, r"cannot cut 5x2 out of a 4x4"):
            pp.build("center_crop(5,2)")(np.zeros((4, 4, 1), np.uint8))
        with self.assertRaisesRegex(ValueError, "2 entries but the image has 3 channels"):
            pp.build("normalize((0.5,0.5),(1.0,))")(np.zeros((2, 2, 3), np.uint8))
        with self.assertRaisesRegex(ValueError, r"\[H, W, C\]"):
            pp.build("")(np.zeros((4, 4), np.uint8))


if __name__ == "__main__":
    absltest.main()
