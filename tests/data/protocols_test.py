"""Tests for dpq_jax.data.protocols: split invariants, counts, seeding, split files."""

import dataclasses
import hashlib
import pathlib

import numpy as np
from absl.testing import absltest, parameterized

from dpq_jax import train as train_lib
from dpq_jax.data import protocols

# ORL-shaped labels, but shuffled, so the splits must group by label and not by position.
LABELS = np.random.default_rng(7).permutation(np.repeat(np.arange(40), 10))

# protocol -> (expected sizes, per-identity counts as {split: {identities: images}}).
EXPECTED = {
    "orl_seen": {"train": 240, "val_query": 40, "val_database": 240, "query": 120, "database": 280},
    "orl_unseen": {"train": 240, "val_query": 18, "val_database": 42, "query": 30, "database": 70},
}


@dataclasses.dataclass
class _Source:
    """A stand-in data source whose "images" are their own indices."""

    labels: np.ndarray
    images: np.ndarray = dataclasses.field(default_factory=lambda: np.arange(400))
    num_classes: int = 40


def _per_identity(indices):
    """{identity: count} of the examples in `indices`."""
    ids, counts = np.unique(LABELS[indices], return_counts=True)
    return dict(zip(ids.tolist(), counts.tolist()))


class ProtocolsTest(parameterized.TestCase):
    @parameterized.parameters("orl_seen", "orl_unseen")
    def test_sizes_and_invariants(self, name):
        splits = protocols.get_splits(name, LABELS, seed=0)
        got = {k: v.size for k, v in splits.arrays().items()}
        self.assertEqual(got, EXPECTED[name])
        sets = {k: set(v.tolist()) for k, v in splits.arrays().items()}
        if name == "orl_seen":
            self.assertEqual(sets["train"], sets["val_database"])
        else:  # validation identities are held out of training
            self.assertEmpty(sets["train"] & sets["val_database"])
        for a in ("train", "val_query", "database"):
            self.assertEmpty(sets["query"] & sets[a], msg=f"query overlaps {a}")
        self.assertEmpty(sets["val_query"] & sets["train"])
        for k, v in splits.arrays().items():
            self.assertEqual(v.dtype, np.int64)
            np.testing.assert_array_equal(v, np.unique(v), err_msg=f"{k} not sorted unique")
        self.assertEqual(
            splits.summary(),
            f"{name} seed=0: " + " ".join(f"{k}={v}" for k, v in EXPECTED[name].items()),
        )

    def test_orl_seen_per_identity_counts(self):
        s = protocols.get_splits("orl_seen", LABELS, seed=3)
        all_ids = set(range(40))
        self.assertEqual(_per_identity(s.query), dict.fromkeys(all_ids, 3))
        self.assertEqual(_per_identity(s.database), dict.fromkeys(all_ids, 7))
        self.assertEqual(_per_identity(s.val_query), dict.fromkeys(all_ids, 1))
        self.assertEqual(_per_identity(s.train), dict.fromkeys(all_ids, 6))
        self.assertEqual(
            set(s.database.tolist()), set(s.train.tolist()) | set(s.val_query.tolist())
        )
        self.assertEqual(set(s.database.tolist()) | set(s.query.tolist()), set(range(400)))

    def test_orl_unseen_identities_are_disjoint(self):
        s = protocols.get_splits("orl_unseen", LABELS, seed=3)
        held = set(_per_identity(s.query))
        self.assertLen(held, 10)
        self.assertEqual(_per_identity(s.query), dict.fromkeys(held, 3))
        self.assertEqual(_per_identity(s.database), dict.fromkeys(held, 7))
        val = set(_per_identity(s.val_query))
        self.assertLen(val, 6)
        self.assertEqual(_per_identity(s.val_query), dict.fromkeys(val, 3))
        self.assertEqual(_per_identity(s.val_database), dict.fromkeys(val, 7))
        train = set(range(40)) - held - val
        self.assertLen(train, 24)
        self.assertEqual(_per_identity(s.train), dict.fromkeys(train, 10))

    @parameterized.parameters(0, 1, 2, 3, 4)
    def test_orl_unseen_validates_on_identities_never_trained_on(self, seed):
        s = protocols.get_splits("orl_unseen", LABELS, seed=seed)
        train = set(LABELS[s.train].tolist())
        val = set(LABELS[s.val_query].tolist())
        test = set(LABELS[s.query].tolist())
        self.assertEqual(set(LABELS[s.val_database].tolist()), val)
        self.assertEqual(set(LABELS[s.database].tolist()), test)
        self.assertEqual((len(train), len(val), len(test)), (24, 6, 10))
        self.assertEmpty(train & val)
        self.assertEmpty(train & test)
        self.assertEmpty(val & test)
        # Every image is in exactly one split: a validation face is never trained on.
        everything = np.concatenate([s.train, s.val_query, s.val_database, s.query, s.database])
        np.testing.assert_array_equal(np.sort(everything), np.arange(400))
        # The training source holds no image of a validation or test identity.
        subset, num_classes = train_lib.training_subset(_Source(LABELS), s.train)
        self.assertEqual(num_classes, 24)
        np.testing.assert_array_equal(np.sort(subset.images), s.train)
        self.assertEmpty(set(LABELS[subset.images].tolist()) & (val | test))
        # Deterministic in the seed.
        again = protocols.get_splits("orl_unseen", LABELS, seed=seed)
        self.assertEqual(again.checksum(), s.checksum())
        other = protocols.get_splits("orl_unseen", LABELS, seed=seed + 5)
        self.assertNotEqual(set(LABELS[other.val_query].tolist()), val)

    @parameterized.parameters(0, 1, 2, 3, 4)
    def test_orl_unseen_test_split_is_the_earlier_one(self, seed):
        # The earlier protocol drew the 10 unseen identities, then 3 queries per identity in
        # identity order, first from the stream; the validation draw comes after them.
        rng = np.random.default_rng(seed)
        classes = np.unique(LABELS)
        unseen = np.sort(rng.choice(classes.size, size=10, replace=False))
        query, database = [], []
        for c in classes[unseen]:
            order = rng.permutation(np.flatnonzero(LABELS == c))
            query += order[:3].tolist()
            database += order[3:].tolist()
        s = protocols.get_splits("orl_unseen", LABELS, seed=seed)
        np.testing.assert_array_equal(s.query, np.sort(query))
        np.testing.assert_array_equal(s.database, np.sort(database))

    def test_orl_unseen_number_of_validation_identities(self):
        s = protocols.Splits(
            "orl_unseen", 1, **protocols.orl_unseen(LABELS, 1, num_val_identities=8)
        )
        self.assertLen(set(LABELS[s.val_query].tolist()), 8)
        self.assertLen(set(LABELS[s.train].tolist()), 22)
        self.assertEqual((s.val_query.size, s.val_database.size, s.train.size), (24, 56, 220))
        default = protocols.get_splits("orl_unseen", LABELS, seed=1)
        np.testing.assert_array_equal(s.query, default.query)  # the test split does not move
        with self.assertRaisesRegex(ValueError, "needs num_val_identities >= 1; got 0"):
            protocols.orl_unseen(LABELS, 0, num_val_identities=0)
        with self.assertRaisesRegex(ValueError, "10 test and 30 validation identities"):
            protocols.orl_unseen(LABELS, 0, num_val_identities=30)

    @parameterized.parameters(0, 1, 2, 3, 4)
    def test_faces_unseen_validates_on_held_out_source_identities(self, seed):
        source = np.repeat(np.arange(60), 4)
        labels = np.concatenate([source, np.repeat(np.arange(100, 110), 5)])
        part = {
            "source_cross_train": np.arange(source.size),
            "target_train": np.flatnonzero(np.tile([1, 1, 1, 0, 0], 10)) + source.size,
            "target_test": np.flatnonzero(np.tile([0, 0, 0, 1, 1], 10)) + source.size,
        }
        s = protocols.get_splits("faces_unseen", labels, seed, partition=part)
        ids = {k: set(labels[v].tolist()) for k, v in s.arrays().items()}
        self.assertEqual(ids["val_query"], ids["val_database"])
        self.assertLen(ids["val_query"], 3)  # 5% of 60, one query each
        self.assertEqual(s.val_query.size, 3)
        self.assertEmpty(ids["train"] & ids["val_query"])
        self.assertEmpty((ids["train"] | ids["val_query"]) & (ids["query"] | ids["database"]))
        self.assertEqual(ids["train"] | ids["val_query"], set(range(60)))
        again = protocols.get_splits("faces_unseen", labels, seed, partition=part)
        self.assertEqual(again.checksum(), s.checksum())

    @parameterized.parameters("orl_seen", "orl_unseen")
    def test_seeded_reproducibility(self, name):
        a = protocols.get_splits(name, LABELS, seed=5)
        b = protocols.get_splits(name, LABELS, seed=5)
        c = protocols.get_splits(name, LABELS, seed=6)
        for k in protocols.SPLIT_NAMES:
            np.testing.assert_array_equal(a.arrays()[k], b.arrays()[k])
        self.assertEqual(a.checksum(), b.checksum())
        self.assertFalse(np.array_equal(a.query, c.query))
        self.assertNotEqual(a.checksum(), c.checksum())

    def test_checksum_is_sha256_of_the_arrays(self):
        s = protocols.get_splits("orl_seen", LABELS, seed=0)
        digest = hashlib.sha256()
        for k in ("train", "val_query", "val_database", "query", "database"):
            a = getattr(s, k)
            digest.update(f"{k}:{a.size};".encode() + a.astype("<i8").tobytes())
        self.assertEqual(s.checksum(), digest.hexdigest())

    def test_save_load_round_trip_and_reuse(self):
        split_dir = pathlib.Path(self.create_tempdir().full_path)
        first = protocols.get_splits("orl_unseen", LABELS, seed=2, split_dir=split_dir)
        path = split_dir / "orl_unseen_seed2.npz"
        self.assertTrue(path.exists())
        loaded = protocols.Splits.load(path)
        self.assertEqual((loaded.protocol, loaded.seed), ("orl_unseen", 2))
        self.assertEqual(loaded.checksum(), first.checksum())
        # A saved file is the reference: get_splits returns it rather than recomputing.
        shipped = protocols.Splits("orl_unseen", 2, **{**first.arrays(), "query": first.query[:-1]})
        shipped.save(path)
        again = protocols.get_splits("orl_unseen", LABELS, seed=2, split_dir=split_dir)
        self.assertEqual(again.query.size, first.query.size - 1)
        self.assertEqual(again.checksum(), shipped.checksum())

    def test_corrupt_and_foreign_files_are_rejected(self):
        split_dir = pathlib.Path(self.create_tempdir().full_path)
        s = protocols.get_splits("orl_seen", LABELS, seed=0, split_dir=split_dir)
        path = split_dir / "orl_seen_seed0.npz"

        tampered = dict(np.load(path))
        tampered["query"] = tampered["query"][1:]  # Still valid splits, wrong checksum.
        np.savez(path, **tampered)
        with self.assertRaisesRegex(ValueError, "corrupt: checksum"):
            protocols.get_splits("orl_seen", LABELS, seed=0, split_dir=split_dir)

        path.write_bytes(path.read_bytes()[:100])
        with self.assertRaisesRegex(ValueError, "Cannot read split file"):
            protocols.Splits.load(path)

        np.savez(path, query=np.arange(3))
        with self.assertRaisesRegex(ValueError, "not a dpq_jax split file"):
            protocols.Splits.load(path)

        s.save(split_dir / "orl_unseen_seed0.npz")  # The wrong protocol under this name.
        with self.assertRaisesRegex(ValueError, "holds protocol 'orl_seen'"):
            protocols.get_splits("orl_unseen", LABELS, seed=0, split_dir=split_dir)

        s.save(split_dir / "orl_seen_seed0.npz")  # Indices beyond a smaller dataset.
        with self.assertRaisesRegex(ValueError, "another dataset"):
            protocols.get_splits("orl_seen", LABELS[:200], seed=0, split_dir=split_dir)

    def test_overlapping_splits_are_rejected(self):
        arrays = dict(train=[0, 1], val_query=[2], val_database=[0, 1], query=[1, 3], database=[4])
        with self.assertRaisesRegex(ValueError, "query and train share 1"):
            protocols.Splits("x", 0, **arrays)
        with self.assertRaisesRegex(ValueError, "sorted, unique"):
            protocols.Splits("x", 0, **{**arrays, "query": [5, 5]})

    def test_bad_inputs(self):
        with self.assertRaisesRegex(ValueError, r"Unknown protocol 'nope'.*orl_seen"):
            protocols.get_splits("nope", LABELS, seed=0)
        with self.assertRaisesRegex(ValueError, "more than 4 images per identity"):
            protocols.get_splits("orl_seen", np.repeat(np.arange(5), 4), seed=0)
        with self.assertRaisesRegex(ValueError, "needs more than"):
            protocols.get_splits("orl_unseen", np.repeat(np.arange(10), 10), seed=0)
        with self.assertRaisesRegex(ValueError, "single-label"):
            protocols.get_splits("orl_seen", np.eye(4, dtype=np.int32), seed=0)

    def test_register_protocol(self):
        def halves(labels, seed):
            del seed
            n = len(labels)
            first, second = np.arange(n // 2), np.arange(n // 2, n)
            return dict(
                train=first, val_query=[], val_database=first, query=second[:1], database=second[1:]
            )

        protocols.register_protocol("halves_test", halves)
        self.addCleanup(protocols.PROTOCOLS.pop, "halves_test")
        s = protocols.get_splits("halves_test", LABELS, seed=0)
        self.assertEqual(
            (s.train.size, s.val_query.size, s.query.size, s.database.size), (200, 0, 1, 199)
        )


if __name__ == "__main__":
    absltest.main()
