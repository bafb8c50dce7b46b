"""Atomic file writes, SHA-256 checksums, and verified `.npz` archives.

Every file dpq_jax writes outside orbax (index files, split files, image caches, JSON reports)
goes through `atomic_write`: the bytes go to a temporary file in the destination's folder,
which is renamed over the destination only once it is complete, so a crash or an exception
mid-write leaves the previous file (or none) under the final name, never a half-written one.

`.npz` archives (`write_npz` / `read_npz`) hold plain arrays (no pickles: they are read with
`allow_pickle=False`) and, optionally, a `__metadata__` entry: UTF-8 JSON (sorted keys) with the
caller's fields (`format`, `format_version`, ...) plus `"arrays"`, the dtype, shape and SHA-256
of every array as stored (`array_record`). `read_npz` checks all of it, so a truncated,
corrupt, edited, foreign or too-new file raises one ValueError that names the file, the problem
and the fix.

Example:
  >>> import tempfile
  >>> path = pathlib.Path(tempfile.mkdtemp()) / "a.npz"
  >>> _ = write_npz(path, {"x": np.arange(3)}, {"format": "demo", "format_version": 1})
  >>> arrays, meta = read_npz(path, format_name="demo")
  >>> arrays["x"].tolist(), meta["arrays"]["x"]["shape"]
  ([0, 1, 2], [3])
"""

import contextlib
import hashlib
import json
import os
import pathlib
import uuid
from collections.abc import Iterator, Mapping, Sequence
from typing import IO

import numpy as np

import dpq_jax

METADATA_KEY = "__metadata__"


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb", **open_kwargs) -> Iterator[IO]:
    """Opens a temporary file beside `path`; renames it to `path` when the block succeeds.

    The temporary file (`.<name>.<random>.tmp` in the same folder, so the rename stays on one
    file system and is atomic) is flushed to disk before `os.replace`; if the block raises, it
    is deleted and `path` keeps its old content.

    Args:
      path: the destination file; its folder must exist.
      mode: `"wb"` (default) or `"w"` (text; pass e.g. `encoding="utf-8"`).
      **open_kwargs: passed to `open`.

    Yields:
      The open temporary file.

    Examples:
      >>> import tempfile
      >>> path = pathlib.Path(tempfile.mkdtemp()) / "note.txt"
      >>> with atomic_write(path, "w", encoding="utf-8") as f:
      ...     _ = f.write("done")
      >>> path.read_text()
      'done'
    """
    if mode not in ("w", "wb", "wt"):
        raise ValueError(
            f"atomic_write writes whole files: mode must be 'w' or 'wb', got {mode!r}."
        )
    path = pathlib.Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        with open(tmp, mode.replace("w", "x"), **open_kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def array_sha256(array: np.ndarray) -> str:
    """SHA-256 hex digest of an array's bytes in C order.

    The digest covers the bytes only, not the dtype or the shape (`array_record` stores those
    next to it), so it is the `sha256` that index files have always recorded.

    Examples:
      >>> array_sha256(np.zeros(0, np.uint8))[:16]
      'e3b0c44298fc1c14'
    """
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def array_record(array: np.ndarray) -> dict:
    """`{"dtype", "shape", "sha256"}` of an array: together they pin dtype, shape and bytes.

    Examples:
      >>> record = array_record(np.arange(4, dtype=np.int32).reshape(2, 2))
      >>> record["dtype"], record["shape"]
      ('int32', [2, 2])
    """
    return {"dtype": str(array.dtype), "shape": list(array.shape), "sha256": array_sha256(array)}


def files_sha256(root: pathlib.Path, files: Sequence[pathlib.Path], *, content: bool) -> str:
    """SHA-256 over the names relative to `root` and either the bytes or the sizes of `files`.

    Sizes only (`content=False`) suit large image trees: hashing tens of GB on every load costs
    minutes, while a renamed, added, removed or resized file still changes the digest.

    Args:
      root: the folder the names are taken relative to.
      files: the files, in the order they are hashed.
      content: hash each file's bytes (True) or its size (False).

    Returns:
      The hex digest.
    """
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        if content:
            with open(path, "rb") as f:
                for chunk in iter(lambda f=f: f.read(1 << 22), b""):
                    digest.update(chunk)
        else:
            digest.update(str(path.stat().st_size).encode() + b"\0")
    return digest.hexdigest()


def write_npz(
    path: str | os.PathLike, arrays: Mapping[str, np.ndarray], metadata: dict | None = None
) -> pathlib.Path:
    """Writes `arrays` to an uncompressed `.npz` file, atomically.

    Args:
      path: the destination (the name is used as given).
      arrays: name -> array; no object arrays (they would need pickles).
      metadata: optional JSON dict (e.g. `format`, `format_version`). When given, the file
        also holds `__metadata__`: this dict plus `"arrays"`, the `array_record` of every array,
        which `read_npz` verifies.

    Returns:
      The path written.
    """
    path = pathlib.Path(path)
    entries = dict(arrays)
    if metadata is not None:
        full = {**metadata, "arrays": {name: array_record(a) for name, a in arrays.items()}}
        payload = json.dumps(full, sort_keys=True).encode("utf-8")
        entries = {METADATA_KEY: np.frombuffer(payload, np.uint8), **entries}
    with atomic_write(path) as f:
        np.savez(f, **entries)
    return path


def read_npz(
    path: str | os.PathLike,
    *,
    format_name: str | None = None,
    max_version: int = 1,
    what: str = "file",
    fix: str = "Delete it and write it again.",
) -> tuple[dict[str, np.ndarray], dict | None]:
    """Reads an `.npz` file and verifies the checksums recorded in its `__metadata__`.

    Args:
      path: the file.
      format_name: when given, the file must hold `__metadata__` with this `format` and a
        `format_version` in `[1, max_version]`; when None, a file without metadata is read as
        plain arrays (a file with metadata is still verified).
      max_version: the newest `format_version` the caller reads.
      what: what the file is, for messages (`"index"`, `"split file"`).
      fix: what the user should do about a damaged file, for messages.

    Returns:
      `(arrays, metadata)`: the arrays (without `__metadata__`) and the parsed metadata, or
      None for a file without it.

    Raises:
      FileNotFoundError: no such file.
      ValueError: naming the file, the problem and `fix`: not a readable `.npz` (truncated,
        corrupt, not an archive), a single `.npy`, foreign (no or other metadata format),
        newer format version, or arrays that disagree with their recorded dtype, shape or
        SHA-256.
    """
    path = pathlib.Path(path)

    def fail(problem: str) -> ValueError:
        return ValueError(f"Cannot read {what} {str(path)!r}: {problem} {fix}")

    if not path.is_file():
        raise FileNotFoundError(f"No {what} at {str(path)!r}.")
    try:
        archive = np.load(path, allow_pickle=False)
    except Exception as e:  # any failure to parse the container means a damaged file
        raise fail(
            f"not a readable .npz archive ({type(e).__name__}: {e}); the file is truncated, "
            f"corrupt or not a {what}."
        ) from e
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise fail(f"this is a single .npy array, not a .npz {what} archive.")
    try:
        with archive:
            arrays = {name: archive[name] for name in archive.files}
    except Exception as e:  # CRC errors, short reads, bad array headers
        raise fail(
            f"an array could not be read ({type(e).__name__}: {e}); the file is truncated or "
            "corrupt."
        ) from e
    if METADATA_KEY not in arrays:
        if format_name is not None:
            raise fail(
                f"no {METADATA_KEY!r} entry, so this .npz was not written by dpq_jax as a {what} "
                "(foreign file)."
            )
        return arrays, None
    raw = arrays.pop(METADATA_KEY)
    try:
        meta = json.loads(raw.astype(np.uint8).tobytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError, TypeError) as e:  # JSONDecodeError is a ValueError
        raise fail(f"the metadata is not valid UTF-8 JSON ({e}).") from e
    if not isinstance(meta, dict):
        raise fail(f"the metadata is a JSON {type(meta).__name__}, not an object (foreign file).")
    if format_name is not None:
        if meta.get("format") != format_name:
            raise fail(
                f"format is {meta.get('format')!r}, expected {format_name!r} (foreign file)."
            )
        version = meta.get("format_version")
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise fail(f"invalid format_version {version!r}.")
        if version > max_version:
            raise fail(
                f"format version {version} is newer than this dpq_jax ({dpq_jax.__version__}) "
                f"supports ({max_version}); upgrade dpq_jax to read it."
            )
    described = meta.get("arrays")
    if not isinstance(described, dict) or set(described) != set(arrays):
        listed = sorted(described) if isinstance(described, dict) else described
        raise fail(f"the file holds arrays {sorted(arrays)} but its metadata lists {listed}.")
    for name, a in arrays.items():
        info = described[name]
        if not isinstance(info, dict):
            raise fail(f"the metadata entry for {name!r} is malformed.")
        if info.get("dtype") != str(a.dtype) or info.get("shape") != list(a.shape):
            raise fail(
                f"array {name!r} is {a.dtype}{list(a.shape)} but the metadata says "
                f"{info.get('dtype')}{info.get('shape')}."
            )
        if info.get("sha256") != array_sha256(a):
            raise fail(f"checksum mismatch for array {name!r}; the file is corrupt or was edited.")
    return arrays, meta
