"""Tests for dpq_jax.data.protocols: split invariants, counts, seeding, split files."""

import hashlib
import pathlib

import numpy as np
from absl.testing import absltest, parameterized

from dpq_jax.data import protocols

# ORL-shaped labels, but shuffled, so the splits must group by label and not by position.
LABELS = np.random.default_rng(7).permutation(np.repeat(np.arange(40), 10))

# protocol -> (expected sizes, per-identity counts as {split: {identities: images}}).
EXPECTED = {
    "orl_seen": {"train": 240, "val_query": 40, "val_database": 240, "query": 120, "database": 280},
    "orl_unseen": {"train": 270, "val_query": 30, "val_database": 270, "query": 30, "database": 70},
}


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
        self.assertEqual(sets["train"], sets["val_database"])
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
        seen = set(range(40)) - held
        self.assertEqual(_per_identity(s.train), dict.fromkeys(seen, 9))
        self.assertEqual(_per_identity(s.val_query), dict.fromkeys(seen, 1))

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
