"""Partition-carrying labels, lazily decoded images, concatenation; a lazy source drives the
input pipeline and the trainer's subset exactly like an in-memory one."""

import pickle

import numpy as np
import pytest

from dpq_jax.data import pipeline, release_source
from dpq_jax.data.release_source import (
    LazyImages,
    PartitionedLabels,
    ReleaseSource,
    concat_sources,
    select_partitions,
)
from dpq_jax.train import training_subset


class CountingReader:
    """A reader over an array that counts decodes (to show that views decode nothing)."""

    def __init__(self, array):
        self.array, self.calls = array, 0

    def __call__(self, record):
        self.calls += 1
        return self.array[record].copy()


def _lazy_and_eager(n=10, shape=(4, 3, 1), seed=0):
    pixels = np.random.default_rng(seed).integers(0, 256, (n, *shape), dtype=np.uint8)
    labels = PartitionedLabels(np.arange(n) % 3, [0] * (n - 3) + [1] * 3, ("train", "test"))
    reader = CountingReader(pixels)
    # Records stored in reverse order, to check the row mapping.
    lazy_images = LazyImages([reader], np.stack([np.zeros(n), np.arange(n)[::-1]], 1), shape)
    lazy = ReleaseSource(lazy_images, labels, 3, name="lazy")
    eager = ReleaseSource(pixels[::-1].copy(), labels, 3, name="eager")
    return lazy, eager, reader


def test_partitioned_labels_survive_only_on_the_original():
    labels = PartitionedLabels([5, 6, 7, 8], [1, 0, 1, 1], ("a", "b"))
    assert labels.dtype == np.int32 and labels.partition_codes.tolist() == [1, 0, 1, 1]
    assert labels[1:].partition_codes is None and (labels + 1).partition_codes is None
    assert getattr(np.asarray(labels), "partition_codes", None) is None
    copy = pickle.loads(pickle.dumps(labels))
    assert copy.partition_names == ("a", "b") and copy.partition_codes.tolist() == [1, 0, 1, 1]
    indices = release_source.partition_indices(labels)
    assert {k: v.tolist() for k, v in indices.items()} == {"a": [1], "b": [0, 2, 3]}
    with pytest.raises(ValueError, match="partition must be \\[N\\] with N = 4"):
        PartitionedLabels([1, 2, 3, 4], [0, 1], ("a", "b"))
    with pytest.raises(ValueError, match="codes must lie in \\[0, 2\\)"):
        PartitionedLabels([1, 2], [0, 2], ("a", "b"))


def test_lazy_images_index_view_and_materialize(monkeypatch):
    lazy, eager, reader = _lazy_and_eager()
    assert lazy.images.shape == eager.images.shape and len(lazy) == 10
    np.testing.assert_array_equal(lazy.images[2], eager.images[2])
    np.testing.assert_array_equal(lazy.images[-1], eager.images[-1])
    calls = reader.calls
    view = lazy.images[np.array([7, 1, 1])]
    assert isinstance(view, LazyImages) and reader.calls == calls  # a view decodes nothing
    np.testing.assert_array_equal(np.asarray(view), eager.images[[7, 1, 1]])
    np.testing.assert_array_equal(np.asarray(lazy.images[2:5]), eager.images[2:5])
    with pytest.raises(IndexError, match="out of range for 10 images"):
        lazy.images[10]
    monkeypatch.setattr(release_source, "MAX_MATERIALIZE_BYTES", 100)
    with pytest.raises(ValueError, match="raw_pixel_baseline = False"):
        np.asarray(lazy.images)


def test_lazy_source_feeds_the_pipeline_and_the_trainer_subset_like_memory():
    lazy, eager, _ = _lazy_and_eager(n=24, shape=(6, 6, 1))
    spec = "random_crop(4,4,pad=1)|flip_lr|value_range(0,1)"
    for source in (lazy, eager):
        assert source.summary().startswith(source.name)
    batches = [
        pipeline.TrainPipeline(s, np.arange(3, 20), spec, 8, seed=5, prefetch=0).batch(3)
        for s in (lazy, eager)
    ]
    np.testing.assert_array_equal(batches[0]["image"], batches[1]["image"])
    np.testing.assert_array_equal(batches[0]["label"], batches[1]["label"])
    evals = [
        list(pipeline.eval_batches(s, np.arange(0, 24, 5), "value_range(0,1)", 4))
        for s in (lazy, eager)
    ]
    for a, b in zip(*evals):
        np.testing.assert_array_equal(a["image"], b["image"])
    # The trainer's train-split subset keeps lazy images lazy and relabels identically.
    train = np.array([1, 4, 5, 9, 20])
    (sub_lazy, c1), (sub_eager, c2) = training_subset(lazy, train), training_subset(eager, train)
    assert c1 == c2 and isinstance(sub_lazy.images, LazyImages)
    np.testing.assert_array_equal(sub_lazy.labels, sub_eager.labels)
    np.testing.assert_array_equal(np.asarray(sub_lazy.images), sub_eager.images)


def test_concat_and_select_partitions():
    lazy, eager, _ = _lazy_and_eager()
    plain = ReleaseSource(np.zeros((2, 4, 3, 1), np.uint8), np.array([1, 0], np.int32), 2, "p")
    both = concat_sources([lazy, plain], ("src", "tgt"), name="both")
    assert both.partition_names == ("src_train", "src_test", "tgt")
    assert both.num_classes == 5 and isinstance(both.images, LazyImages)
    np.testing.assert_array_equal(np.asarray(both.labels)[10:], [4, 3])  # offset by 3 classes
    np.testing.assert_array_equal(both.images[3], eager.images[3])
    np.testing.assert_array_equal(both.images[11], plain.images[1])
    only = select_partitions(both, ("src_test", "tgt"))
    assert only.partition_names == ("src_test", "tgt") and len(only) == 5
    np.testing.assert_array_equal(np.asarray(only.images[:3]), eager.images[7:])
    with pytest.raises(ValueError, match="no partition\\(s\\) \\['nope'\\]"):
        select_partitions(both, ("nope",))
    with pytest.raises(ValueError, match="different image shapes"):
        concat_sources(
            [lazy, ReleaseSource(np.zeros((1, 2, 2, 1), np.uint8), np.zeros(1, np.int32), 1)],
            ("a", "b"),
            "x",
        )


def test_release_source_checks_labels():
    lazy, _, _ = _lazy_and_eager()
    with pytest.raises(ValueError, match="class ids must lie in \\[0, 2\\)"):
        ReleaseSource(lazy.images, np.asarray(lazy.labels), 2, name="bad")
    with pytest.raises(ValueError, match="labels must be an int32"):
        ReleaseSource(lazy.images, np.asarray(lazy.labels, np.int64), 3, name="bad")
