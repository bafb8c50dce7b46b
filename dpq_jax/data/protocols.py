"""Named retrieval protocols: seeded split index arrays, saved with checksums.

A protocol turns a label array and a seed into index arrays (into the data source):

* `train`: what the model is fitted on;
* `val_query` / `val_database`: for model selection, carved from the training side;
* `query` / `database`: the reported evaluation, never used for model selection.

Splits are computed once, saved as `<split_dir>/<protocol>_seed<seed>.npz` with a sha256
checksum, and reused from the file afterwards, so a result can always be traced back to the
exact split (the checksum goes into checkpoints and logs).

Protocols live in a dict (`PROTOCOLS`); add one with `register_protocol(name, fn)` where
`fn(labels, seed) -> dict` of the five index arrays. A protocol that follows a release split
declares a keyword `partition`: it then receives `{partition name: sorted indices}`, taken from
the labels of a `ReleaseSource` (`PartitionedLabels`) or passed to `get_splits`.

Paper protocols (PROTOCOLS.md), with the source index layout each expects:

| name | source partitions | train (+ validation) | query | database |
|---|---|---|---|---|
| `fmnist` | `train` (60,000), `test` (10,000) | train file | 100/class of test | train file |
| `cifar10_dpq` | any (60,000) | 500/class | 100/class | the rest (54,000) |
| `cifar10_dsh` | `train`, `test` | train file | test file | train file |
| `cifar10_all` | any (60,000) | 500/class | 100/class | all but queries (59,000) |
| `nuswide21` | any, multi-hot | 10,000 of database | 5,000 | all but queries |
| `imagenet100` | `train`, `val` | 100/class of train | val | train |
| `inshop` | `train`, `query`, `gallery` | train | query | gallery |
| `faces_seen` | `train`, `test` (or one: 10% per identity held out) | train | test | train |
| `faces_unseen` | `source_cross_train`, `target_*` | source ids | target test | target train |

Validation is always carved from the training side and never touches the queries: the
published training count is that of `train ∪ val_query ∪ val_database`, which
`check_published` compares (with `query` and `database`) against `PUBLISHED_SIZES`; it raises on
a mismatch for fixed releases and logs a warning for web-crawled ones whose copies differ
(NUS-WIDE, ImageNet-100, In-shop). The generic `holdout` protocol serves users' own data.

Example:
  >>> labels = np.repeat(np.arange(40), 10)
  >>> print(get_splits("orl_seen", labels, seed=0).summary())
  orl_seen seed=0: train=240 val_query=40 val_database=240 query=120 database=280
"""

import dataclasses
import hashlib
import inspect
import pathlib
from collections.abc import Callable, Sequence

import numpy as np
from absl import logging

from dpq_jax import io_utils
from dpq_jax.data.release_source import partition_indices

SPLIT_NAMES = ("train", "val_query", "val_database", "query", "database")
_FORMAT = "dpq_jax.splits.v1"


@dataclasses.dataclass(eq=False)
class Splits:
    """The index arrays of one protocol instance.

    Attributes:
      protocol: protocol name.
      seed: the seed the splits were drawn with.
      train, val_query, val_database, query, database: sorted, unique int64 index arrays
        into the data source.

    Raises:
      ValueError: (on construction) an array that is not 1-D sorted unique non-negative
        integers, or overlapping splits (see `check`).
    """

    protocol: str
    seed: int
    train: np.ndarray
    val_query: np.ndarray
    val_database: np.ndarray
    query: np.ndarray
    database: np.ndarray

    def __post_init__(self):
        for name in SPLIT_NAMES:
            setattr(self, name, _as_index_array(getattr(self, name), name))
        self.seed = int(self.seed)
        self.check()

    def arrays(self) -> dict[str, np.ndarray]:
        """The five index arrays by name."""
        return {name: getattr(self, name) for name in SPLIT_NAMES}

    def check(self, num_examples: int | None = None) -> None:
        """Checks the protocol invariants.

        Query items are in no other split (`query ∩ database = ∅`, and the query never leaks
        into training or validation); validation queries are not in the training set or the
        validation database.

        Args:
          num_examples: if given, every index must also be `< num_examples`.

        Raises:
          ValueError: naming the overlapping splits or the out-of-range index.
        """
        disjoint = [("query", other) for other in SPLIT_NAMES if other != "query"]
        disjoint += [("val_query", "train"), ("val_query", "val_database")]
        for a, b in disjoint:
            common = np.intersect1d(getattr(self, a), getattr(self, b))
            if common.size:
                raise ValueError(
                    f"Splits {self.protocol!r}: {a} and {b} share {common.size} indices "
                    f"(e.g. {common[:5].tolist()}); they must be disjoint."
                )
        if num_examples is not None:
            for name, array in self.arrays().items():
                if array.size and array[-1] >= num_examples:
                    raise ValueError(
                        f"Splits {self.protocol!r}: {name} holds index {array[-1]} but the data "
                        f"source has {num_examples} examples; the split file belongs to "
                        "another dataset. Use another split_dir or delete the file."
                    )

    def checksum(self) -> str:
        """sha256 over the names and little-endian int64 bytes of the five arrays."""
        digest = hashlib.sha256()
        for name, array in self.arrays().items():
            digest.update(f"{name}:{array.size};".encode())
            digest.update(array.astype("<i8").tobytes())
        return digest.hexdigest()

    def summary(self) -> str:
        """One line of split sizes, e.g. `orl_seen seed=0: train=240 ... database=280`."""
        counts = " ".join(f"{name}={getattr(self, name).size}" for name in SPLIT_NAMES)
        return f"{self.protocol} seed={self.seed}: {counts}"

    def save(self, path: str | pathlib.Path) -> None:
        """Writes the arrays, protocol, seed and checksum to a `.npz` file (atomically); `path`
        may be local or a URI (`gs://...`)."""
        path = io_utils.as_path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        io_utils.write_npz(
            path,
            {
                "format": np.array(_FORMAT),
                "protocol": np.array(self.protocol),
                "seed": np.array(self.seed, np.int64),
                "checksum": np.array(self.checksum()),
                **self.arrays(),
            },
        )

    @classmethod
    def load(cls, path: str | pathlib.Path) -> "Splits":
        """Reads a file written by `save` and verifies its checksum.

        Raises:
          FileNotFoundError: no such file.
          ValueError: unreadable, foreign (not a dpq_jax split file) or corrupt (checksum
            mismatch or broken invariants) file; the message names the path.
        """
        path = io_utils.as_path(path)
        contents, _ = io_utils.read_npz(
            path, what="split file", fix="Delete it to recompute the splits."
        )
        missing = [
            k for k in ("format", "protocol", "seed", "checksum", *SPLIT_NAMES) if k not in contents
        ]
        if missing or str(contents["format"]) != _FORMAT:
            raise ValueError(
                f"{path} is not a dpq_jax split file (format {_FORMAT}); missing {missing}. "
                "Delete it or point split_dir elsewhere."
            )
        try:
            splits = cls(
                protocol=str(contents["protocol"]),
                seed=int(contents["seed"]),
                **{name: contents[name] for name in SPLIT_NAMES},
            )
        except ValueError as e:
            raise ValueError(f"Split file {path} is corrupt: {e}") from e
        if splits.checksum() != str(contents["checksum"]):
            raise ValueError(
                f"Split file {path} is corrupt: checksum {splits.checksum()} does not match "
                f"the stored {contents['checksum']}. Delete it to recompute the splits."
            )
        return splits


def _as_index_array(array, name: str) -> np.ndarray:
    array = np.asarray(array)
    if array.ndim != 1 or (array.size and not np.issubdtype(array.dtype, np.integer)):
        raise ValueError(
            f"Split {name} must be a 1-D integer array; got {array.dtype}{list(array.shape)}."
        )
    array = array.astype(np.int64)
    if array.size and (array[0] < 0 or np.any(np.diff(array) <= 0)):
        raise ValueError(f"Split {name} must hold sorted, unique, non-negative indices.")
    return array


def _identity_groups(labels: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """Sorted class ids and, for each, the sorted indices of its examples."""
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"Identity protocols need single-label integer labels [N]; got {labels.dtype}"
            f"{list(labels.shape)}."
        )
    classes = np.unique(labels)
    return classes, [np.flatnonzero(labels == c) for c in classes]


def _take_per_identity(groups, rng, counts, what) -> list[list[np.ndarray]]:
    """Shuffles each group and cuts it into pieces of `counts` (the last takes the rest)."""
    pieces = []
    for group in groups:
        if group.size <= sum(counts):
            raise ValueError(
                f"{what} needs more than {sum(counts)} images per identity; one identity has "
                f"{group.size}."
            )
        order = rng.permutation(group)
        cuts = np.cumsum(counts)
        pieces.append(np.split(order, cuts))
    return pieces


def _sorted_union(arrays) -> np.ndarray:
    arrays = list(arrays)
    return np.sort(np.concatenate(arrays)) if arrays else np.zeros((0,), np.int64)


def orl_seen(
    labels: np.ndarray, seed: int, num_query: int = 3, num_val_query: int = 1
) -> dict[str, np.ndarray]:
    """Seen-identity protocol: every identity is in both query and database.

    Per identity (seeded): `num_query` images are queries, the rest form the database. Of the
    database images, `num_val_query` are held out as validation queries and the others are
    the training set, which is also the validation database. `database = train ∪ val_query`.
    ORL (40 x 10): train 240, val_query 40, query 120, database 280.

    Args:
      labels: int `[N]` identity ids.
      seed: NumPy seed.
      num_query, num_val_query: per-identity counts.

    Returns:
      dict of the five sorted int64 index arrays.

    Raises:
      ValueError: labels not `[N]` integers, or an identity with too few images.
    """
    _, groups = _identity_groups(labels)
    rng = np.random.default_rng(seed)
    pieces = _take_per_identity(groups, rng, (num_query, num_val_query), "orl_seen")
    query = _sorted_union(p[0] for p in pieces)
    val_query = _sorted_union(p[1] for p in pieces)
    train = _sorted_union(p[2] for p in pieces)
    return {
        "train": train,
        "val_query": val_query,
        "val_database": train,
        "query": query,
        "database": _sorted_union([train, val_query]),
    }


def orl_unseen(
    labels: np.ndarray,
    seed: int,
    num_unseen: int = 10,
    num_query: int = 3,
    num_val_identities: int = 6,
    num_val_query: int = 3,
) -> dict[str, np.ndarray]:
    """Unseen-identity protocol: query, database and validation identities never appear in
    training, so model selection measures generalisation to new faces, as the test does.

    `num_unseen` identities are held out (seeded); per held-out identity `num_query` images
    are queries and the rest the database. Of the other identities, `num_val_identities`
    (seeded) are held out for validation: per validation identity `num_val_query` images are
    validation queries and the rest the validation database. Every image of the remaining
    identities is the training set. ORL (40 x 10): train 240 (24 ids), val_query 18,
    val_database 42 (6 ids), query 30, database 70 (10 ids).

    The query and database of a seed are those of the earlier version of this protocol (drawn
    first, from the same stream), so test numbers of one seed share their test set. The
    training set differs (it was 9 images of each of the 30 other identities, validated on
    their 10th), so numbers of models trained before are not directly comparable.

    Args:
      labels: int `[N]` identity ids.
      seed: NumPy seed.
      num_unseen: identities held out for the query/database evaluation.
      num_query: queries per held-out identity.
      num_val_identities: identities held out for validation (>= 1).
      num_val_query: validation queries per validation identity.

    Returns:
      dict of the five sorted int64 index arrays.

    Raises:
      ValueError: labels not `[N]` integers, `num_val_identities` < 1, no identity left to
        train on, or an identity with too few images.
    """
    classes, groups = _identity_groups(labels)
    if num_val_identities < 1:
        raise ValueError(
            "orl_unseen validates on held-out identities and needs num_val_identities >= 1; "
            f"got {num_val_identities}."
        )
    if classes.size <= num_unseen + num_val_identities:
        raise ValueError(
            f"orl_unseen holds out {num_unseen} test and {num_val_identities} validation "
            f"identities and needs more than {num_unseen + num_val_identities}; the labels "
            f"have {classes.size}."
        )
    rng = np.random.default_rng(seed)
    unseen = np.zeros(classes.size, bool)
    unseen[rng.choice(classes.size, size=num_unseen, replace=False)] = True
    held = _take_per_identity(
        [g for g, u in zip(groups, unseen) if u], rng, (num_query,), "orl_unseen"
    )
    # Drawn after the test split, so a seed's test split does not depend on validation.
    is_val = np.zeros(classes.size, bool)
    is_val[rng.choice(np.flatnonzero(~unseen), size=num_val_identities, replace=False)] = True
    val = _take_per_identity(
        [g for g, v in zip(groups, is_val) if v], rng, (num_val_query,), "orl_unseen"
    )
    return {
        "train": _sorted_union(g for g, u, v in zip(groups, unseen, is_val) if not (u or v)),
        "val_query": _sorted_union(p[0] for p in val),
        "val_database": _sorted_union(p[1] for p in val),
        "query": _sorted_union(p[0] for p in held),
        "database": _sorted_union(p[1] for p in held),
    }


# ----------------------------------------------------------------------------------------------
# Paper protocols (PROTOCOLS.md) and a generic hold-out for users' data
# ----------------------------------------------------------------------------------------------
def _need_partitions(partition, names: Sequence[str], protocol: str) -> list[np.ndarray]:
    """The index arrays of the named partitions; raises naming what is missing."""
    missing = [n for n in names if partition is None or n not in partition]
    if missing:
        have = "none" if partition is None else sorted(partition)
        raise ValueError(
            f"Protocol {protocol!r} needs the source partitions {list(names)}; missing "
            f"{missing} (the labels carry: {have}). Load the data with its dpq_jax loader (its "
            "labels carry the partition) or pass get_splits(..., partition={name: indices})."
        )
    return [np.asarray(partition[n], np.int64) for n in names]


def _single_labels(labels, protocol: str) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"Protocol {protocol!r} needs single-label class ids [N]; got "
            f"{labels.dtype}{list(labels.shape)}."
        )
    return labels


def _per_class(labels, pool, per_class: int, rng, protocol: str) -> np.ndarray:
    """`per_class` seeded indices of each class (sorted class order) from the sorted `pool`.

    Raises:
      ValueError: a class of the pool has fewer than `per_class` members.
    """
    pool = np.asarray(pool, np.int64)
    chosen = []
    for c in np.unique(labels[pool]):
        members = pool[labels[pool] == c]
        if members.size < per_class:
            raise ValueError(
                f"Protocol {protocol!r} takes {per_class} images of class {c} but the pool "
                f"holds {members.size}; is this the right dataset?"
            )
        chosen.append(rng.choice(members, size=per_class, replace=False))
    return _sorted_union(chosen)


def _sample(pool, k: int, rng, protocol: str) -> np.ndarray:
    pool = np.asarray(pool, np.int64)
    if k > pool.size:
        raise ValueError(f"Protocol {protocol!r} samples {k} items from a pool of {pool.size}.")
    return np.sort(rng.choice(pool, size=k, replace=False))


def fmnist(
    labels: np.ndarray,
    seed: int,
    *,
    partition: dict[str, np.ndarray] | None = None,
    query_per_class: int = 100,
    val_query_per_class: int = 100,
    val_database_per_class: int = 1000,
) -> dict[str, np.ndarray]:
    """Fashion-MNIST benchmark: database = the training file, queries = 100 test images/class.

    Source layout (`load_fashion_mnist`): partition `train` = indices 0..59,999 (the
    `train-*` files), `test` = 60,000..69,999 (`t10k-*`). Seeded: `query_per_class` test images
    per class are the queries (1,000); the database is the whole training file (60,000).
    Validation is carved from the training file: `val_query_per_class` per class (1,000) are
    validation queries, removed from `train` (59,000); the validation database is
    `val_database_per_class` per class of `train` (10,000, to keep validation cheap).

    Args:
      labels: int `[N]` class ids.
      seed: NumPy seed.
      partition: `{"train": ..., "test": ...}` source partitions.
      query_per_class, val_query_per_class, val_database_per_class: per-class counts.

    Returns:
      dict of the five sorted int64 index arrays.

    Raises:
      ValueError: missing partitions, non-integer labels, or a class with too few images.
    """
    labels = _single_labels(labels, "fmnist")
    train_file, test_file = _need_partitions(partition, ("train", "test"), "fmnist")
    rng = np.random.default_rng(seed)
    query = _per_class(labels, test_file, query_per_class, rng, "fmnist")
    val_query = _per_class(labels, train_file, val_query_per_class, rng, "fmnist")
    train = np.setdiff1d(train_file, val_query)
    val_database = _per_class(labels, train, val_database_per_class, rng, "fmnist")
    return {
        "train": train,
        "val_query": val_query,
        "val_database": val_database,
        "query": query,
        "database": np.sort(train_file),
    }


def _cifar10_sampled(labels, seed, train_per_class, query_per_class, val_query_per_class, name):
    labels = _single_labels(labels, name)
    rng = np.random.default_rng(seed)
    everything = np.arange(labels.size)
    query = _per_class(labels, everything, query_per_class, rng, name)
    rest = np.setdiff1d(everything, query)
    train_side = _per_class(labels, rest, train_per_class, rng, name)
    val_query = _per_class(labels, train_side, val_query_per_class, rng, name)
    train = np.setdiff1d(train_side, val_query)
    return query, rest, train_side, val_query, train


def cifar10_dpq(
    labels: np.ndarray,
    seed: int,
    train_per_class: int = 500,
    query_per_class: int = 100,
    val_query_per_class: int = 50,
) -> dict[str, np.ndarray]:
    """CIFAR-10 as in DVSQ / DPQ: 5,000 train, 1,000 queries, database = the other 54,000.

    Over all 60,000 images (seeded): `query_per_class` per class are queries; of the rest,
    `train_per_class` per class form the training side, and everything else is the database
    (it excludes training images and queries). `val_query_per_class` per class of the training
    side are validation queries (train = 4,500, validation database = train).

    Args:
      labels: int `[N]` class ids.
      seed: NumPy seed.
      train_per_class, query_per_class, val_query_per_class: per-class counts.

    Returns:
      dict of the five sorted int64 index arrays.

    Raises:
      ValueError: non-integer labels or a class with too few images.
    """
    query, rest, train_side, val_query, train = _cifar10_sampled(
        labels, seed, train_per_class, query_per_class, val_query_per_class, "cifar10_dpq"
    )
    return {
        "train": train,
        "val_query": val_query,
        "val_database": train,
        "query": query,
        "database": np.setdiff1d(rest, train_side),
    }


def cifar10_all(
    labels: np.ndarray,
    seed: int,
    train_per_class: int = 500,
    query_per_class: int = 100,
    val_query_per_class: int = 50,
) -> dict[str, np.ndarray]:
    """CIFAR-10 as in DeepHash-pytorch `cifar10-1`: database = all but the queries (59,000).

    Same sampling as `cifar10_dpq`, but the database keeps the training images.

    Args:
      labels: int `[N]` class ids.
      seed: NumPy seed.
      train_per_class, query_per_class, val_query_per_class: per-class counts.

    Returns:
      dict of the five sorted int64 index arrays.

    Raises:
      ValueError: non-integer labels or a class with too few images.
    """
    query, rest, _, val_query, train = _cifar10_sampled(
        labels, seed, train_per_class, query_per_class, val_query_per_class, "cifar10_all"
    )
    return {
        "train": train,
        "val_query": val_query,
        "val_database": train,
        "query": query,
        "database": rest,
    }


def cifar10_dsh(
    labels: np.ndarray,
    seed: int,
    *,
    partition: dict[str, np.ndarray] | None = None,
    val_query_per_class: int = 100,
    val_database_per_class: int = 500,
) -> dict[str, np.ndarray]:
    """CIFAR-10 as in DSH / TQL: train = database = the 50,000 training images, queries = the
    10,000 test images.

    Validation: `val_query_per_class` training images per class (1,000) leave `train`; the
    validation database is `val_database_per_class` per class of `train` (5,000).

    Args:
      labels: int `[N]` class ids.
      seed: NumPy seed.
      partition: `{"train": ..., "test": ...}` (`load_cifar10`: 0..49,999 and 50,000..59,999).
      val_query_per_class, val_database_per_class: per-class counts.

    Returns:
      dict of the five sorted int64 index arrays.

    Raises:
      ValueError: missing partitions, non-integer labels or a class with too few images.
    """
    labels = _single_labels(labels, "cifar10_dsh")
    train_file, test_file = _need_partitions(partition, ("train", "test"), "cifar10_dsh")
    rng = np.random.default_rng(seed)
    val_query = _per_class(labels, train_file, val_query_per_class, rng, "cifar10_dsh")
    train = np.setdiff1d(train_file, val_query)
    return {
        "train": train,
        "val_query": val_query,
        "val_database": _per_class(labels, train, val_database_per_class, rng, "cifar10_dsh"),
        "query": np.sort(test_file),
        "database": np.sort(train_file),
    }


def nuswide21(
    labels: np.ndarray,
    seed: int,
    num_query: int = 5000,
    num_train: int = 10000,
    num_val_query: int = 1000,
) -> dict[str, np.ndarray]:
    """NUS-WIDE (21 concepts) as in DVSQ / DPQ / HashNet: 5,000 random queries, the rest is the
    database (190,834), and 10,000 random database images are the training side.

    `num_val_query` of the training side are validation queries (train = 9,000, validation
    database = train). Relevance: at least one shared concept (multi-hot labels).

    Args:
      labels: int `[N, C]` multi-hot labels.
      seed: NumPy seed.
      num_query, num_train, num_val_query: counts.

    Returns:
      dict of the five sorted int64 index arrays.

    Raises:
      ValueError: labels that are not `[N, C]`, or counts larger than the data.
    """
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(
            f"Protocol 'nuswide21' needs multi-hot labels [N, C]; got shape {labels.shape}."
        )
    rng = np.random.default_rng(seed)
    everything = np.arange(labels.shape[0])
    query = _sample(everything, num_query, rng, "nuswide21")
    database = np.setdiff1d(everything, query)
    train_side = _sample(database, num_train, rng, "nuswide21")
    val_query = _sample(train_side, num_val_query, rng, "nuswide21")
    train = np.setdiff1d(train_side, val_query)
    return {
        "train": train,
        "val_query": val_query,
        "val_database": train,
        "query": query,
        "database": database,
    }


def imagenet100(
    labels: np.ndarray,
    seed: int,
    *,
    partition: dict[str, np.ndarray] | None = None,
    train_per_class: int = 100,
    val_query_per_class: int = 10,
) -> dict[str, np.ndarray]:
    """ImageNet-100 as in HashNet / DPQ: database = the training images of the 100 classes
    (128,564), queries = their validation images (5,000), 100 per class of the database train.

    `val_query_per_class` of the training side are validation queries (train = 9,000,
    validation database = train).

    Args:
      labels: int `[N]` class ids.
      seed: NumPy seed.
      partition: `{"train": ..., "val": ...}` (`load_imagenet100`).
      train_per_class, val_query_per_class: per-class counts.

    Returns:
      dict of the five sorted int64 index arrays.

    Raises:
      ValueError: missing partitions, non-integer labels or a class with too few images.
    """
    labels = _single_labels(labels, "imagenet100")
    train_file, val_file = _need_partitions(partition, ("train", "val"), "imagenet100")
    rng = np.random.default_rng(seed)
    train_side = _per_class(labels, train_file, train_per_class, rng, "imagenet100")
    val_query = _per_class(labels, train_side, val_query_per_class, rng, "imagenet100")
    train = np.setdiff1d(train_side, val_query)
    return {
        "train": train,
        "val_query": val_query,
        "val_database": train,
        "query": np.sort(val_file),
        "database": np.sort(train_file),
    }


def _held_out_identities(labels, pool, rng, num_val, protocol):
    """Splits `pool` by identity: `num_val` identities (with >= 2 images) are held out; one
    image of each is a validation query, the rest their validation database."""
    classes, counts = np.unique(labels[pool], return_counts=True)
    eligible = classes[counts >= 2]
    num_val = min(num_val, eligible.size)
    if num_val < 1:
        raise ValueError(f"Protocol {protocol!r}: no identity has 2 images to validate on.")
    held = np.sort(rng.choice(eligible, size=num_val, replace=False))
    is_held = np.isin(labels[pool], held)
    val_pool = pool[is_held]
    val_query = _per_class(labels, val_pool, 1, rng, protocol)
    return pool[~is_held], val_query, np.setdiff1d(val_pool, val_query)


def inshop(
    labels: np.ndarray,
    seed: int,
    *,
    partition: dict[str, np.ndarray] | None = None,
    num_val_items: int = 300,
) -> dict[str, np.ndarray]:
    """DeepFashion In-shop (TQL): train = the `train` images (25,882 of 3,997 items), queries
    = `query` (14,218), database = `gallery` (12,612); test items are unseen in training.

    Validation mimics that: `num_val_items` training items (with >= 2 images, seeded) are held
    out of `train`; one image of each is a validation query, their other images the
    validation database.

    Args:
      labels: int `[N]` item ids.
      seed: NumPy seed.
      partition: `{"train", "query", "gallery"}` (`load_inshop`).
      num_val_items: held-out training items.

    Returns:
      dict of the five sorted int64 index arrays.

    Raises:
      ValueError: missing partitions or non-integer labels.
    """
    labels = _single_labels(labels, "inshop")
    train_file, query, gallery = _need_partitions(
        partition, ("train", "query", "gallery"), "inshop"
    )
    rng = np.random.default_rng(seed)
    train, val_query, val_database = _held_out_identities(
        labels, np.sort(train_file), rng, num_val_items, "inshop"
    )
    return {
        "train": train,
        "val_query": val_query,
        "val_database": val_database,
        "query": np.sort(query),
        "database": np.sort(gallery),
    }


def faces_seen(
    labels: np.ndarray,
    seed: int,
    *,
    partition: dict[str, np.ndarray] | None = None,
    test_fraction: float = 0.1,
) -> dict[str, np.ndarray]:
    """Seen identities (DDH, DCBH, DCDH, OPQN): database = the train split, queries = the test
    split, the same identities in both.

    With partitions `train` and `test` (the DDH pickles, OPQN's `train/` and `test/` folders)
    those are used. A release with a single partition (flat identity folders) gets a seeded
    split: `ceil(test_fraction * n)` images of each identity with at least 2 are queries.
    Validation: one training image per identity that has >= 2 training images is a validation
    query (left out of `train`); validation database = train. Counts are not published; they
    are logged.

    Args:
      labels: int `[N]` identity ids.
      seed: NumPy seed.
      partition: `{"train", "test"}`, or a single partition.
      test_fraction: share of each identity held out when the release has no test split.

    Returns:
      dict of the five sorted int64 index arrays.

    Raises:
      ValueError: non-integer labels, or partitions other than train/test or a single one.
    """
    labels = _single_labels(labels, "faces_seen")
    rng = np.random.default_rng(seed)
    if partition is not None and {"train", "test"} <= set(partition):
        train_file, test_file = np.sort(partition["train"]), np.sort(partition["test"])
    elif partition is None or len(partition) == 1:
        train_file, test_file = [], []
        for c in np.unique(labels):
            members = rng.permutation(np.flatnonzero(labels == c))
            k = int(np.ceil(test_fraction * members.size)) if members.size >= 2 else 0
            test_file.append(members[:k])
            train_file.append(members[k:])
        train_file, test_file = _sorted_union(train_file), _sorted_union(test_file)
    else:
        raise ValueError(
            f"Protocol 'faces_seen' needs partitions train and test (or a single one); got "
            f"{sorted(partition)}."
        )
    classes, counts = np.unique(labels[train_file], return_counts=True)
    pool = train_file[np.isin(labels[train_file], classes[counts >= 2])]
    val_query = _per_class(labels, pool, 1, rng, "faces_seen")
    train = np.setdiff1d(train_file, val_query)
    return {
        "train": train,
        "val_query": val_query,
        "val_database": train,
        "query": test_file,
        "database": train_file,
    }


def faces_unseen(
    labels: np.ndarray,
    seed: int,
    *,
    partition: dict[str, np.ndarray] | None = None,
    val_identity_fraction: float = 0.05,
) -> dict[str, np.ndarray]:
    """Unseen identities / cross-domain (OPQN `-c`): train on the source domain's identities
    (VGGFace2 `cross_train`), search the target set: database = target train, queries =
    target test. No target image and no target identity is seen in training.

    Validation holds out `val_identity_fraction` of the source identities (at least 2,
    seeded): one image each is a validation query, their other images the validation
    database, so model selection also measures unseen identities.

    Args:
      labels: int `[N]` identity ids (source and target ids disjoint, as from
        `load_cross_domain`).
      seed: NumPy seed.
      partition: `{"source_cross_train", "target_train", "target_test", ...}`.
      val_identity_fraction: share of source identities held out for validation.

    Returns:
      dict of the five sorted int64 index arrays.

    Raises:
      ValueError: missing partitions, non-integer labels, or identities shared between the
        source and the target.
    """
    labels = _single_labels(labels, "faces_unseen")
    source, target_train, target_test = _need_partitions(
        partition, ("source_cross_train", "target_train", "target_test"), "faces_unseen"
    )
    shared = np.intersect1d(
        labels[source], np.concatenate([labels[target_train], labels[target_test]])
    )
    if shared.size:
        raise ValueError(
            f"Protocol 'faces_unseen': identity ids {shared[:5].tolist()} occur in both the "
            "source and the target; build the source with load_cross_domain."
        )
    rng = np.random.default_rng(seed)
    num_ids = np.unique(labels[source]).size
    num_val = max(2, int(round(val_identity_fraction * num_ids)))
    if num_val >= num_ids:
        raise ValueError(
            f"Protocol 'faces_unseen' holds out {num_val} of {num_ids} source identities for "
            "validation and needs more identities."
        )
    train, val_query, val_database = _held_out_identities(
        labels, np.sort(source), rng, num_val, "faces_unseen"
    )
    return {
        "train": train,
        "val_query": val_query,
        "val_database": val_database,
        "query": np.sort(target_test),
        "database": np.sort(target_train),
    }


def holdout(
    labels: np.ndarray,
    seed: int,
    query_fraction: float = 0.1,
    val_fraction: float = 0.1,
) -> dict[str, np.ndarray]:
    """A generic seeded hold-out for users' data (seen classes).

    Single-label: per class with at least 3 images, `round(query_fraction * n)` (at least 1)
    are queries and `round(val_fraction * n)` (at least 1) validation queries; the rest train;
    classes with fewer images only train. Multi-label: the same fractions of a random
    permutation. database = train + validation queries; validation database = train.

    Args:
      labels: int `[N]` class ids or `[N, C]` multi-hot.
      seed: NumPy seed.
      query_fraction, val_fraction: shares held out.

    Returns:
      dict of the five sorted int64 index arrays.

    Raises:
      ValueError: fractions outside (0, 1) or summing to 1 or more.
    """
    if not (0 < query_fraction < 1 and 0 < val_fraction < 1 and query_fraction + val_fraction < 1):
        raise ValueError(
            f"holdout needs 0 < query_fraction, val_fraction and their sum < 1; got "
            f"{query_fraction}, {val_fraction}."
        )
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    if labels.ndim == 2:
        groups = [np.arange(labels.shape[0])]
    else:
        groups = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    query, val_query, train = [], [], []
    for group in groups:
        order = rng.permutation(group)
        if order.size < 3:
            train.append(order)
            continue
        q = max(1, int(round(query_fraction * order.size)))
        v = max(1, int(round(val_fraction * order.size)))
        query.append(order[:q])
        val_query.append(order[q : q + v])
        train.append(order[q + v :])
    train, val_query = _sorted_union(train), _sorted_union(val_query)
    return {
        "train": train,
        "val_query": val_query,
        "val_database": train,
        "query": _sorted_union(query),
        "database": _sorted_union([train, val_query]),
    }


ProtocolFn = Callable[..., dict[str, np.ndarray]]
PROTOCOLS: dict[str, ProtocolFn] = {
    "orl_seen": orl_seen,
    "orl_unseen": orl_unseen,
    "fmnist": fmnist,
    "cifar10_dpq": cifar10_dpq,
    "cifar10_dsh": cifar10_dsh,
    "cifar10_all": cifar10_all,
    "nuswide21": nuswide21,
    "imagenet100": imagenet100,
    "inshop": inshop,
    "faces_seen": faces_seen,
    "faces_unseen": faces_unseen,
    "holdout": holdout,
}


@dataclasses.dataclass(frozen=True)
class Published:
    """Published split sizes of a protocol (`train` counts the whole training side).

    Attributes:
      counts: `{"train" | "query" | "database": size}`.
      strict: raise on a mismatch (fixed releases) rather than warn (web-crawled releases,
        whose copies differ).
      source: where the numbers come from.
    """

    counts: dict[str, int]
    strict: bool
    source: str


PUBLISHED_SIZES: dict[str, Published] = {
    "fmnist": Published({"train": 60000, "query": 1000, "database": 60000}, True, "issue 6"),
    "cifar10_dpq": Published(
        {"train": 5000, "query": 1000, "database": 54000}, True, "DPQ README; DVSQ"
    ),
    "cifar10_dsh": Published({"train": 50000, "query": 10000, "database": 50000}, True, "DSH"),
    "cifar10_all": Published(
        {"train": 5000, "query": 1000, "database": 59000}, True, "DeepHash-pytorch cifar10-1"
    ),
    "nuswide21": Published(
        {"train": 10000, "query": 5000, "database": 190834}, False, "DPQ README; HashNet"
    ),
    "imagenet100": Published(
        {"train": 10000, "query": 5000, "database": 128564}, False, "DPQ README; HashNet"
    ),
    "inshop": Published(
        {"train": 25882, "query": 14218, "database": 12612}, False, "DeepFashion; TQL"
    ),
}


def published_counts(splits: Splits) -> dict[str, int]:
    """The sizes papers publish: `query`, `database` and `train`, the whole training side
    (train, validation queries and validation database: validation is carved from it)."""
    train_side = np.union1d(np.union1d(splits.train, splits.val_query), splits.val_database)
    return {
        "train": int(train_side.size),
        "query": int(splits.query.size),
        "database": int(splits.database.size),
    }


def check_published(splits: Splits) -> bool | None:
    """Compares the split sizes with `PUBLISHED_SIZES` and logs the result.

    Returns:
      True if they match, False on a tolerated mismatch, None if nothing is published.

    Raises:
      ValueError: a mismatch for a protocol whose sizes are fixed (`strict`).
    """
    published = PUBLISHED_SIZES.get(splits.protocol)
    if published is None:
        logging.info("Splits %s: no published sizes to check against.", splits.protocol)
        return None
    have = published_counts(splits)
    diff = {k: (have[k], v) for k, v in published.counts.items() if have[k] != v}
    if not diff:
        logging.info("Splits %s match the published sizes %s.", splits.protocol, published.counts)
        return True
    message = (
        f"Splits {splits.protocol!r} differ from the published sizes ({published.source}): "
        + ", ".join(f"{k} {got} != {want}" for k, (got, want) in diff.items())
    )
    if published.strict:
        raise ValueError(
            message + ". The data source is incomplete or not the release this protocol is "
            "defined on; check the source files (a test fixture needs its own protocol name)."
        )
    logging.warning("%s (tolerated: copies of this release differ).", message)
    return False


def register_protocol(name: str, fn: ProtocolFn) -> None:
    """Adds a protocol: `fn(labels, seed)` (plus keyword `partition` if it follows a release
    split) returns the five index arrays by name."""
    PROTOCOLS[name] = fn


def _takes_partition(fn) -> bool:
    try:
        return "partition" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def split_path(split_dir: str | pathlib.Path, protocol: str, seed: int) -> io_utils.AnyPath:
    """`<split_dir>/<protocol>_seed<seed>.npz` (`split_dir` local or a URI, `io_utils.as_path`)."""
    return io_utils.as_path(split_dir) / f"{protocol}_seed{int(seed)}.npz"


def get_splits(
    protocol: str,
    labels: np.ndarray,
    seed: int,
    split_dir: str | pathlib.Path | None = None,
    *,
    partition: dict[str, np.ndarray] | None = None,
) -> Splits:
    """The splits of a named protocol, reused from `split_dir` when saved there before.

    With `split_dir`, an existing `<split_dir>/<protocol>_seed<seed>.npz` is loaded and
    verified (its checksum, protocol, seed and index range) instead of recomputed, so the
    shipped file stays the reference even if NumPy's random streams change; otherwise the
    splits are computed and saved there. The counts and checksum are logged.

    Args:
      protocol: a name in `PROTOCOLS`.
      labels: `[N]` labels of the data source the indices point into.
      seed: split seed (independent of the training seed).
      split_dir: optional folder of split files.
      partition: `{name: indices}` of the release partitions, for protocols that follow a
        release split; default: read from `labels.partition_codes` (`PartitionedLabels`).

    Returns:
      The `Splits`.

    Raises:
      ValueError: unknown protocol, labels the protocol cannot split, a missing partition,
        split sizes that contradict the published ones (fixed releases), or a saved file that
        is corrupt, foreign or made for another protocol, seed or dataset.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(
            f"Unknown protocol {protocol!r}; known: {sorted(PROTOCOLS)}. Fix the config or "
            "add one with dpq_jax.data.protocols.register_protocol."
        )
    if partition is None:
        partition = partition_indices(labels)
    num_examples = len(labels)
    path = None if split_dir is None else split_path(split_dir, protocol, seed)
    if path is not None and path.exists():
        splits = Splits.load(path)
        if (splits.protocol, splits.seed) != (protocol, int(seed)):
            raise ValueError(
                f"Split file {path} holds protocol {splits.protocol!r} seed {splits.seed}, "
                f"not {protocol!r} seed {seed}; delete or rename it."
            )
        splits.check(num_examples)
        source = f"loaded from {path}"
    else:
        fn = PROTOCOLS[protocol]
        kwargs = {"partition": partition} if _takes_partition(fn) else {}
        splits = Splits(protocol=protocol, seed=seed, **fn(labels, seed, **kwargs))
        splits.check(num_examples)
        check_published(splits)  # Before saving: a refused split never reaches the disk.
        if path is not None:
            splits.save(path)
        source = "computed" + ("" if path is None else f", saved to {path}")
    logging.info("Splits %s (%s), sha256 %s", splits.summary(), source, splits.checksum())
    if source.startswith("loaded"):
        check_published(splits)
    return splits
