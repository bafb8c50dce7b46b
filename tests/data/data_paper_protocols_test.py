"""Paper protocols at their published sizes on synthetic labels, checked against independent
counting (per class, per partition, disjointness), plus the published-size checks."""

import numpy as np
import pytest

from dpq_jax.data import protocols
from dpq_jax.data.release_source import PartitionedLabels


def _partitioned(parts: dict[str, np.ndarray]) -> PartitionedLabels:
    """Concatenates per-partition labels; partition codes follow the dict order."""
    names = list(parts)
    labels = np.concatenate([parts[n] for n in names])
    codes = np.concatenate([np.full(len(parts[n]), k) for k, n in enumerate(names)])
    return PartitionedLabels(labels, codes, names)


def _counts(labels, index):
    return np.bincount(np.asarray(labels)[index], minlength=10)


def _disjoint(*arrays):
    total = np.concatenate(arrays)
    return np.unique(total).size == total.size


FMNIST_LABELS = _partitioned(
    {"train": np.tile(np.arange(10), 6000), "test": np.repeat(np.arange(10), 1000)}
)


def test_fmnist_at_published_sizes():
    splits = protocols.get_splits("fmnist", FMNIST_LABELS, seed=0)
    assert protocols.published_counts(splits) == {"train": 60000, "query": 1000, "database": 60000}
    assert protocols.check_published(splits) is True
    np.testing.assert_array_equal(splits.database, np.arange(60000))  # the training file
    assert splits.query.min() >= 60000  # queries from the test file
    assert _counts(FMNIST_LABELS, splits.query).tolist() == [100] * 10
    assert _counts(FMNIST_LABELS, splits.val_query).tolist() == [100] * 10
    assert _counts(FMNIST_LABELS, splits.val_database).tolist() == [1000] * 10
    assert splits.val_query.max() < 60000 and _disjoint(splits.train, splits.val_query)
    assert np.isin(splits.val_database, splits.train).all()
    # Seeded: the same seed gives the same split, another seed another one.
    again = protocols.get_splits("fmnist", FMNIST_LABELS, seed=0)
    other = protocols.get_splits("fmnist", FMNIST_LABELS, seed=1)
    assert again.checksum() == splits.checksum() != other.checksum()


def test_fmnist_needs_the_partition_and_checks_sizes(tmp_path):
    plain = np.asarray(FMNIST_LABELS)
    assert getattr(plain, "partition_codes", None) is None
    with pytest.raises(ValueError, match="needs the source partitions \\['train', 'test'\\]"):
        protocols.get_splits("fmnist", plain, seed=0)
    parts = {"train": np.arange(60000), "test": np.arange(60000, 70000)}
    explicit = protocols.get_splits("fmnist", plain, seed=0, partition=parts)
    from_labels = protocols.get_splits("fmnist", FMNIST_LABELS, seed=0, split_dir=tmp_path)
    assert explicit.checksum() == from_labels.checksum()
    # Reloaded from the split file, checked again.
    assert protocols.get_splits("fmnist", FMNIST_LABELS, 0, split_dir=tmp_path).checksum() == (
        explicit.checksum()
    )
    # A training file of 59,990 images: no longer the release, the strict check refuses it.
    short = {"train": np.arange(59990), "test": np.arange(60000, 70000)}
    with pytest.raises(ValueError, match="train 59990 != 60000.*database 59990 != 60000"):
        protocols.get_splits("fmnist", plain, seed=0, partition=short)


CIFAR_LABELS = np.repeat(np.arange(10), 6000)[np.random.default_rng(0).permutation(60000)]


def test_cifar10_dpq_and_all():
    dpq = protocols.get_splits("cifar10_dpq", CIFAR_LABELS, seed=0)
    assert protocols.published_counts(dpq) == {"train": 5000, "query": 1000, "database": 54000}
    assert _counts(CIFAR_LABELS, dpq.query).tolist() == [100] * 10
    train_side = np.union1d(dpq.train, dpq.val_query)
    assert _counts(CIFAR_LABELS, train_side).tolist() == [500] * 10
    assert _disjoint(dpq.query, train_side, dpq.database)  # DPQ's database excludes train
    assert np.union1d(np.union1d(dpq.query, train_side), dpq.database).size == 60000
    every = protocols.get_splits("cifar10_all", CIFAR_LABELS, seed=0)
    assert protocols.published_counts(every)["database"] == 59000
    assert np.isin(train_side, every.database).all() and _disjoint(every.query, every.database)
    # Same seed: the same queries and training side in both protocols.
    np.testing.assert_array_equal(every.query, dpq.query)


def test_cifar10_dsh_follows_the_files():
    labels = _partitioned({"train": CIFAR_LABELS[:50000], "test": CIFAR_LABELS[50000:]})
    splits = protocols.get_splits("cifar10_dsh", labels, seed=0)
    np.testing.assert_array_equal(splits.query, np.arange(50000, 60000))
    np.testing.assert_array_equal(splits.database, np.arange(50000))
    assert splits.val_query.size == 1000 and splits.val_database.size == 5000
    assert protocols.check_published(splits) is True


def test_nuswide21_published_sizes_and_multi_label():
    rng = np.random.default_rng(0)
    labels = (rng.random((195834, 21)) < 0.1).astype(np.int32)
    splits = protocols.get_splits("nuswide21", labels, seed=0)
    assert protocols.published_counts(splits) == {
        "train": 10000,
        "query": 5000,
        "database": 190834,
    }
    assert np.isin(splits.train, splits.database).all()  # train is sampled from the database
    with pytest.raises(ValueError, match="needs multi-hot labels"):
        protocols.get_splits("nuswide21", labels[:, 0], seed=0)
    # A copy of NUS-WIDE with missing images: tolerated, with a warning.
    small = protocols.get_splits("nuswide21", labels[:100000], seed=0)
    assert protocols.check_published(small) is False


def test_imagenet100_at_published_sizes():
    rng = np.random.default_rng(0)
    per_class = np.full(100, 1285)
    per_class[:64] += 1  # 128,564 training images over 100 classes
    train = np.repeat(np.arange(100), per_class)[rng.permutation(128564)]
    labels = _partitioned({"train": train, "val": np.repeat(np.arange(100), 50)})
    splits = protocols.get_splits("imagenet100", labels, seed=0)
    assert protocols.check_published(splits) is True
    assert np.bincount(np.asarray(labels)[splits.val_query]).tolist() == [10] * 100
    assert np.bincount(np.asarray(labels)[splits.train]).tolist() == [90] * 100
    assert splits.query.min() == 128564


def test_inshop_items_unseen_in_validation_and_test():
    rng = np.random.default_rng(0)
    train = rng.integers(0, 3997, 25882)
    train[:3997] = np.arange(3997)  # every item at least once
    test_items = np.arange(3997, 3997 + 3985)
    labels = _partitioned(
        {
            "train": train,
            "query": rng.choice(test_items, 14218),
            "gallery": rng.choice(test_items, 12612),
        }
    )
    splits = protocols.get_splits("inshop", labels, seed=0)
    assert protocols.check_published(splits) is True
    y = np.asarray(labels)
    held = np.unique(y[splits.val_query])
    assert held.size == 300 and not np.isin(held, y[splits.train]).any()
    assert np.isin(y[splits.val_database], held).all()


def test_faces_unseen_rejects_shared_identities():
    labels = _partitioned(
        {
            "source_cross_train": np.repeat(np.arange(40), 5),
            "target_train": np.repeat([39, 41], 3),  # 39 also in the source
            "target_test": np.array([41, 41]),
        }
    )
    with pytest.raises(ValueError, match="identity ids \\[39\\] occur in both"):
        protocols.get_splits("faces_unseen", labels, seed=0)


def test_faces_seen_rejects_other_partitions():
    labels = _partitioned({"train": np.zeros(4, int), "query": np.zeros(2, int), "x": [0]})
    with pytest.raises(ValueError, match="needs partitions train and test"):
        protocols.get_splits("faces_seen", labels, seed=0)


def test_holdout_single_and_multi_label():
    labels = np.repeat(np.arange(4), [20, 10, 2, 5])
    splits = protocols.get_splits("holdout", labels, seed=0)
    assert np.bincount(labels[splits.query], minlength=4).tolist() == [2, 1, 0, 1]
    assert not np.isin(splits.query, np.flatnonzero(labels == 2)).any()  # too small: train only
    hot = (np.random.default_rng(0).random((50, 3)) < 0.5).astype(np.int32)
    multi = protocols.get_splits("holdout", hot, seed=0)
    assert (multi.query.size, multi.val_query.size, multi.train.size) == (5, 5, 40)
    with pytest.raises(ValueError, match="holdout needs"):
        protocols.holdout(labels, 0, query_fraction=0.6, val_fraction=0.5)


def test_every_paper_protocol_is_registered():
    for name in (
        "faces_seen",
        "faces_unseen",
        "cifar10_dpq",
        "cifar10_dsh",
        "cifar10_all",
        "nuswide21",
        "imagenet100",
        "inshop",
        "fmnist",
    ):
        assert name in protocols.PROTOCOLS
