"""Named retrieval protocols: seeded split index arrays, saved with checksums.

A protocol turns a label array and a seed into index arrays (into the data source):

* `train`: what the model is fitted on;
* `val_query` / `val_database`: for model selection, carved from the training side;
* `query` / `database`: the reported evaluation, never used for model selection.

Splits are computed once, saved as `<split_dir>/<protocol>_seed<seed>.npz` with a sha256
checksum, and reused from the file afterwards, so a result can always be traced back to the
exact split (the checksum goes into checkpoints and logs).

Protocols live in a dict (`PROTOCOLS`); add one with `register_protocol(name, fn)` where
`fn(labels, seed) -> dict` of the five index arrays.

Example:
  >>> labels = np.repeat(np.arange(40), 10)
  >>> print(get_splits("orl_seen", labels, seed=0).summary())
  orl_seen seed=0: train=240 val_query=40 val_database=240 query=120 database=280
"""

import dataclasses
import hashlib
import pathlib
import zipfile
from collections.abc import Callable

import numpy as np
from absl import logging

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
        """Writes the arrays, protocol, seed and checksum to a `.npz` file (atomically)."""
        path = pathlib.Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as f:
            np.savez(
                f,
                format=np.array(_FORMAT),
                protocol=np.array(self.protocol),
                seed=np.array(self.seed, np.int64),
                checksum=np.array(self.checksum()),
                **self.arrays(),
            )
        tmp.replace(path)

    @classmethod
    def load(cls, path: str | pathlib.Path) -> "Splits":
        """Reads a file written by `save` and verifies its checksum.

        Raises:
          ValueError: unreadable, foreign (not a dpq_jax split file) or corrupt (checksum
            mismatch or broken invariants) file; the message names the path.
        """
        path = pathlib.Path(path)
        try:
            with np.load(path, allow_pickle=False) as data:
                contents = {key: data[key] for key in data.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
            raise ValueError(
                f"Cannot read split file {path} ({e}); delete it to recompute the splits."
            ) from e
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
    num_val_query: int = 1,
) -> dict[str, np.ndarray]:
    """Unseen-identity protocol: query and database identities never appear in training.

    `num_unseen` identities are held out (seeded); per held-out identity `num_query` images
    are queries and the rest the database. Per remaining identity, `num_val_query` images are
    validation queries and the rest are the training set (= validation database).
    ORL (40 x 10): train 270, val_query 30, query 30, database 70.

    Args:
      labels: int `[N]` identity ids.
      seed: NumPy seed.
      num_unseen: identities held out for the query/database evaluation.
      num_query, num_val_query: per-identity counts.

    Returns:
      dict of the five sorted int64 index arrays.

    Raises:
      ValueError: labels not `[N]` integers, not more identities than `num_unseen`, or an
        identity with too few images.
    """
    classes, groups = _identity_groups(labels)
    if classes.size <= num_unseen:
        raise ValueError(
            f"orl_unseen holds out {num_unseen} identities and needs more than that; the "
            f"labels have {classes.size}."
        )
    rng = np.random.default_rng(seed)
    unseen = np.zeros(classes.size, bool)
    unseen[rng.choice(classes.size, size=num_unseen, replace=False)] = True
    held = _take_per_identity(
        [g for g, u in zip(groups, unseen) if u], rng, (num_query,), "orl_unseen"
    )
    seen = _take_per_identity(
        [g for g, u in zip(groups, unseen) if not u], rng, (num_val_query,), "orl_unseen"
    )
    train = _sorted_union(p[1] for p in seen)
    return {
        "train": train,
        "val_query": _sorted_union(p[0] for p in seen),
        "val_database": train,
        "query": _sorted_union(p[0] for p in held),
        "database": _sorted_union(p[1] for p in held),
    }


ProtocolFn = Callable[[np.ndarray, int], dict[str, np.ndarray]]
PROTOCOLS: dict[str, ProtocolFn] = {"orl_seen": orl_seen, "orl_unseen": orl_unseen}


def register_protocol(name: str, fn: ProtocolFn) -> None:
    """Adds a protocol: `fn(labels, seed)` returns the five index arrays by name."""
    PROTOCOLS[name] = fn


def split_path(split_dir: str | pathlib.Path, protocol: str, seed: int) -> pathlib.Path:
    """`<split_dir>/<protocol>_seed<seed>.npz`."""
    return pathlib.Path(split_dir) / f"{protocol}_seed{int(seed)}.npz"


def get_splits(
    protocol: str,
    labels: np.ndarray,
    seed: int,
    split_dir: str | pathlib.Path | None = None,
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

    Returns:
      The `Splits`.

    Raises:
      ValueError: unknown protocol, labels the protocol cannot split, or a saved file that
        is corrupt, foreign or made for another protocol, seed or dataset.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(
            f"Unknown protocol {protocol!r}; known: {sorted(PROTOCOLS)}. Fix the config or "
            "add one with dpq_jax.data.protocols.register_protocol."
        )
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
        splits = Splits(protocol=protocol, seed=seed, **PROTOCOLS[protocol](labels, seed))
        splits.check(num_examples)
        if path is not None:
            splits.save(path)
        source = "computed" + ("" if path is None else f", saved to {path}")
    logging.info("Splits %s (%s), sha256 %s", splits.summary(), source, splits.checksum())
    return splits
