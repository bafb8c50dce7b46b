"""Tests for dpq_jax.data.pipeline: purity in (seed, step), resumption, processes, eval padding."""

import itertools

import jax
import numpy as np
from absl.testing import absltest, parameterized

from dpq_jax import parallel
from dpq_jax.data import pipeline
from dpq_jax.data.sources import ArraySource, SyntheticSource

AUG = "random_crop(8,8,pad=2)|flip_lr|value_range(0,1)"


def _source(n_classes=5, per_class=5):
    return SyntheticSource(num_classes=n_classes, per_class=per_class, shape=(8, 8, 2), seed=0)


class TrainPipelineTest(parameterized.TestCase):
    def test_batch_is_pure_in_seed_and_step(self):
        src = _source()
        idx = np.arange(3, 25)
        a = pipeline.TrainPipeline(src, idx, AUG, 8, seed=4)
        b = pipeline.TrainPipeline(src, idx, AUG, 8, seed=4)
        for step in (7, 0, 7, 3):  # Any order of access gives the same batches.
            for key in ("image", "label", "index"):
                np.testing.assert_array_equal(a.batch(step)[key], b.batch(step)[key])
        other = pipeline.TrainPipeline(src, idx, AUG, 8, seed=5)
        self.assertFalse(np.array_equal(a.batch(0)["index"], other.batch(0)["index"]))

    def test_rows_hold_the_indexed_examples(self):
        src = _source()
        pipe = pipeline.TrainPipeline(src, np.arange(25), "value_range(0,1)", 8, seed=0)
        batch = pipe.batch(2)
        self.assertEqual(batch["image"].dtype, np.float32)
        self.assertEqual(batch["label"].dtype, np.int32)
        self.assertEqual(batch["image"].shape, (8, 8, 8, 2))
        np.testing.assert_allclose(batch["image"], src.images[batch["index"]] / 255.0, atol=1e-6)
        np.testing.assert_array_equal(batch["label"], src.labels[batch["index"]])

    @parameterized.parameters((22, 8), (24, 8), (5, 8), (7, 3))
    def test_every_index_once_per_epoch_across_boundaries(self, n, batch_size):
        src = _source()
        idx = np.sort(np.random.default_rng(0).choice(len(src), n, replace=False))
        pipe = pipeline.TrainPipeline(src, idx, "", batch_size, seed=1)
        epochs = 4
        steps = -(-epochs * n // batch_size)
        stream = np.concatenate([pipe.global_indices(s) for s in range(steps)])
        orders = stream[: epochs * n].reshape(epochs, n)
        for e in range(epochs):
            np.testing.assert_array_equal(np.sort(orders[e]), idx, err_msg=f"epoch {e}")
        self.assertFalse(all(np.array_equal(orders[0], orders[e]) for e in range(1, epochs)))
        # The batches themselves carry those indices (nothing dropped at the boundary).
        got = np.concatenate([pipe.batch(s)["index"] for s in range(steps)])
        np.testing.assert_array_equal(got, stream)

    def test_process_slices_concatenate_to_global_batch(self):
        src = _source()
        idx = np.arange(25)
        whole = pipeline.TrainPipeline(src, idx, AUG, 16, seed=2)
        for step in (0, 1, 5):
            parts = [
                pipeline.TrainPipeline(
                    src, idx, AUG, 16, seed=2, process_index=p, process_count=8
                ).batch(step)
                for p in range(8)
            ]
            for key in ("image", "label", "index"):
                np.testing.assert_array_equal(
                    np.concatenate([part[key] for part in parts]), whole.batch(step)[key]
                )
            self.assertEqual(parts[3]["image"].shape[0], 2)

    def test_threads_do_not_change_batches(self):
        src = _source()
        one = pipeline.TrainPipeline(src, np.arange(25), AUG, 16, seed=2)
        three = pipeline.TrainPipeline(src, np.arange(25), AUG, 16, seed=2, num_threads=3)
        for step in (0, 4):
            np.testing.assert_array_equal(one.batch(step)["image"], three.batch(step)["image"])

    def test_each_example_gets_its_own_augmentation(self):
        src = _source(n_classes=1, per_class=2)
        pipe = pipeline.TrainPipeline(src, [0], AUG, 16, seed=0)  # 16 copies of example 0.
        images = pipe.batch(0)["image"]
        np.testing.assert_array_equal(pipe.batch(0)["index"], np.zeros(16))
        distinct = {im.tobytes() for im in images}
        self.assertGreater(len(distinct), 4)
        # Same example, same position, next step: a fresh draw.
        self.assertFalse(np.array_equal(images, pipe.batch(1)["image"]))

    @parameterized.parameters(0, 2)
    def test_resumed_iteration_equals_uninterrupted(self, prefetch):
        src = _source()
        pipe = pipeline.TrainPipeline(src, np.arange(25), AUG, 8, seed=3, prefetch=prefetch)
        full = list(itertools.islice(pipe.iterate(0), 7))
        resumed = list(itertools.islice(pipe.from_state(pipe.state(4)), 3))
        for want, got in zip(full[4:], resumed):
            np.testing.assert_array_equal(want["image"], got["image"])
            np.testing.assert_array_equal(want["index"], got["index"])
        for s, b in enumerate(full):
            np.testing.assert_array_equal(b["image"], pipe.batch(s)["image"])

    def test_multi_hot_labels(self):
        rng = np.random.default_rng(0)
        labels = rng.integers(0, 2, (12, 4)).astype(np.int32)
        src = ArraySource(rng.integers(0, 256, (12, 4, 4, 1), dtype=np.uint8), labels, 4)
        batch = pipeline.TrainPipeline(src, np.arange(12), "", 8, seed=0).batch(1)
        self.assertEqual(batch["label"].shape, (8, 4))
        np.testing.assert_array_equal(batch["label"], labels[batch["index"]])

    def test_batch_assembles_on_eight_devices(self):
        mesh = parallel.make_mesh(devices=jax.devices("cpu"))
        batch = pipeline.TrainPipeline(_source(), np.arange(25), AUG, 16, seed=0).batch(0)
        arrays = parallel.put_batch(batch, mesh)
        self.assertEqual(arrays["image"].shape, (16, 8, 8, 2))
        self.assertEqual(arrays["index"].dtype, np.int32)
        np.testing.assert_array_equal(np.asarray(arrays["image"]), batch["image"])

    def test_thread_errors_reach_the_consumer(self):
        pipe = pipeline.TrainPipeline(_source(), np.arange(25), "center_crop(9,9)", 8, seed=0)
        with self.assertRaisesRegex(ValueError, "cannot cut 9x9"):
            next(pipe.iterate(0))

    def test_bad_arguments(self):
        src = _source()
        with self.assertRaisesRegex(ValueError, "does not split over 3 processes"):
            pipeline.TrainPipeline(src, np.arange(5), "", 8, seed=0, process_count=3)
        with self.assertRaisesRegex(ValueError, r"indices must lie in \[0, 25\)"):
            pipeline.TrainPipeline(src, [0, 25], "", 8, seed=0)
        with self.assertRaisesRegex(ValueError, "at least one"):
            pipeline.TrainPipeline(src, [], "", 8, seed=0)
        with self.assertRaisesRegex(ValueError, "seed must be >= 0"):
            pipeline.TrainPipeline(src, [0], "", 8, seed=-1)
        pipe = pipeline.TrainPipeline(src, [0, 1], "", 8, seed=0)
        with self.assertRaisesRegex(ValueError, "saved with seed 9"):
            pipe.from_state({"step": 3, "seed": 9})


class CounterRngTest(absltest.TestCase):
    def test_reset_equals_a_fresh_philox_at_that_counter(self):
        key = np.array([123, 456], np.uint64)
        rng = pipeline._CounterRng(key)
        for step, j in [(0, 0), (5, 3), (0, 0), (2**40, 255), (5, 3)]:
            got = rng.at(step, j)
            # Draws that leave buffered 32-bit output behind must not leak into the next reset.
            values = [got.integers(0, 7), got.random(), got.integers(0, 2**31, dtype=np.int32)]
            fresh = np.random.Generator(np.random.Philox(key=key, counter=[step, j, 0, 0]))
            want = [fresh.integers(0, 7), fresh.random(), fresh.integers(0, 2**31, dtype=np.int32)]
            self.assertEqual(values, want)


class EvalBatchesTest(parameterized.TestCase):
    @parameterized.product(n=(15, 16, 17), process_count=(1, 8))
    def test_each_index_exactly_once(self, n, process_count):
        src = _source(n_classes=6, per_class=4)
        idx = np.random.default_rng(n).permutation(len(src))[:n]
        per_process = [
            list(pipeline.eval_batches(src, idx, "value_range(0,1)", 8, p, process_count))
            for p in range(process_count)
        ]
        self.assertTrue(all(len(b) == -(-n // 8) for b in per_process))
        # Reassemble the global batches: process slices side by side, then batches in order.
        batches = [
            {k: np.concatenate([proc[i][k] for proc in per_process]) for k in proc_batch}
            for i, proc_batch in enumerate(per_process[0])
        ]
        mask = np.concatenate([b["mask"] for b in batches])
        index = np.concatenate([b["index"] for b in batches])
        self.assertEqual(mask.size % 8, 0)
        self.assertEqual(mask.sum(), n)
        np.testing.assert_array_equal(index[mask], idx)  # Order kept, each index once.
        np.testing.assert_array_equal(index[~mask], -1)
        image = np.concatenate([b["image"] for b in batches])
        label = np.concatenate([b["label"] for b in batches])
        np.testing.assert_allclose(image[mask], src.images[idx] / 255.0, atol=1e-6)
        np.testing.assert_array_equal(label[mask], src.labels[idx])
        np.testing.assert_array_equal(image[~mask], 0.0)

    def test_empty_indices_give_no_batches(self):
        self.assertEqual(list(pipeline.eval_batches(_source(), [], "", 8)), [])


def _uneven_source():
    """Classes 0..6 with 1, 2, 3, 4, 6, 8, 9 images (class-major); class 0 cannot be drawn."""
    counts = (1, 2, 3, 4, 6, 8, 9)
    labels = np.repeat(np.arange(len(counts)), counts).astype(np.int32)
    images = np.random.default_rng(0).integers(0, 256, (labels.size, 4, 4, 1), dtype=np.uint8)
    return ArraySource(images=images, labels=labels, num_classes=len(counts)), counts


class ClassBalancedSamplerTest(parameterized.TestCase):
    def _pipe(self, src, idx, batch=16, p=4, seed=3, **kw):
        return pipeline.TrainPipeline(
            src, idx, "", batch, seed=seed, sampler="class_balanced", classes_per_batch=p, **kw
        )

    @parameterized.parameters((16, 4), (12, 6), (24, 6), (8, 2))
    def test_every_batch_has_p_classes_of_k_images(self, batch, p):
        src, counts = _uneven_source()
        idx = np.arange(len(src))
        pipe = self._pipe(src, idx, batch, p)
        k = batch // p
        for step in range(12):
            chosen = pipe.global_indices(step)
            labels = src.labels[chosen].reshape(p, k)  # class-major blocks
            np.testing.assert_array_equal(labels, labels[:, :1].repeat(k, 1))
            self.assertLen(set(labels[:, 0]), p)  # P distinct classes
            self.assertNotIn(0, labels[:, 0])  # a single-image class is never drawn
            for block, c in zip(chosen.reshape(p, k), labels[:, 0], strict=True):
                # Distinct images while the class has K; otherwise every image of it.
                if counts[c] >= k:
                    self.assertLen(set(block), k)
                else:
                    self.assertEqual(set(block), set(np.flatnonzero(src.labels == c)))
            batch_data = pipe.batch(step)
            np.testing.assert_array_equal(batch_data["index"], chosen)
            np.testing.assert_array_equal(batch_data["label"], src.labels[chosen])

    def test_indices_select_the_training_subset(self):
        src, _ = _uneven_source()
        idx = np.flatnonzero(src.labels >= 3)  # classes 3..6 only
        pipe = self._pipe(src, idx, 8, 2)
        drawn = np.concatenate([pipe.global_indices(s) for s in range(20)])
        self.assertTrue(set(drawn) <= set(idx))
        self.assertEqual(set(src.labels[drawn]), {3, 4, 5, 6})  # every class turns up

    def test_batches_are_pure_in_seed_and_step_and_resume_from_state(self):
        src, _ = _uneven_source()
        idx = np.arange(len(src))
        a, b = self._pipe(src, idx, prefetch=0), self._pipe(src, idx, prefetch=2)
        for step in (5, 0, 5, 2):  # any access order
            np.testing.assert_array_equal(a.global_indices(step), b.global_indices(step))
        self.assertFalse(
            all(
                np.array_equal(a.global_indices(s), self._pipe(src, idx, seed=4).global_indices(s))
                for s in range(3)
            )
        )
        self.assertFalse(np.array_equal(a.global_indices(0), a.global_indices(1)))
        straight = list(itertools.islice(a.iterate(0), 6))
        resumed = list(itertools.islice(b.from_state(a.state(3)), 3))
        for want, got in zip(straight[3:], resumed, strict=True):
            for key in ("image", "label", "index"):
                np.testing.assert_array_equal(got[key], want[key])

    def test_process_slices_concatenate_to_global_batch(self):
        src, _ = _uneven_source()
        idx = np.arange(len(src))
        whole = self._pipe(src, idx, 16, 4)
        for step in (0, 7):
            parts = [
                self._pipe(src, idx, 16, 4, process_index=q, process_count=4).batch(step)
                for q in range(4)
            ]
            for key in ("image", "label", "index"):
                np.testing.assert_array_equal(
                    np.concatenate([part[key] for part in parts]), whole.batch(step)[key]
                )

    def test_bad_settings_are_refused(self):
        src, _ = _uneven_source()
        idx = np.arange(len(src))
        with self.assertRaisesRegex(ValueError, "sampler must be one of"):
            pipeline.TrainPipeline(src, idx, "", 8, seed=0, sampler="balanced")
        for p in (0, 3, 8):  # does not divide 8; K = 1
            with self.assertRaisesRegex(ValueError, "classes_per_batch"):
                self._pipe(src, idx, 8, p)
        with self.assertRaisesRegex(ValueError, "only 6 of the 7 training classes"):
            self._pipe(src, idx, 14, 7)
        multi = ArraySource(
            images=src.images, labels=np.eye(7, dtype=np.int32)[src.labels], num_classes=7
        )
        with self.assertRaisesRegex(ValueError, "multi-hot"):
            self._pipe(multi, idx, 8, 2)


if __name__ == "__main__":
    absltest.main()
