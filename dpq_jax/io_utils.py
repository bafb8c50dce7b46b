"""Paths, atomic file writes, SHA-256 checksums, and verified `.npz` archives.

Paths: every user path (workdir, data_dir, source_dir, outputs) may be local or a URI of an
object store such as `gs://bucket/run`. `as_path` turns a URI into an `etils.epath.Path`
(tf.io.gfile when TensorFlow is installed, else fsspec with gcsfs for `gs://`) and keeps a
local path a `pathlib.Path`, so local files behave exactly as they always did (fsync, flock,
`os.replace`). Both have the pathlib API (`/`, `open`, `exists`, `mkdir`, `replace`, ...).

Every file dpq_jax writes outside orbax (index files, split files, image caches, JSON reports)
goes through `atomic_write`: the bytes go to a temporary file in the destination's folder,
which is renamed over the destination only once it is complete, so a crash or an exception
mid-write leaves the previous file (or none) under the final name, never a half-written one.
In object storage the temporary object is renamed the same way (a server-side move or copy,
which replaces the destination whole); a crash between the copy and the delete of a
copy-and-delete rename leaves a stray `.<name>.<random>.tmp` object, never a damaged file.

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
import functools
import hashlib
import importlib.util
import io
import json
import os
import pathlib
import re
import shutil
import tempfile
import uuid
from collections.abc import Iterator, Mapping, Sequence
from typing import IO

import numpy as np
from etils import epath

import dpq_jax

METADATA_KEY = "__metadata__"
# URI schemes `etils.epath` reads and writes, with the fsspec package each needs (without
# TensorFlow, whose tf.io.gfile serves gs:// too).
URI_SCHEMES = {"gs": "gcsfs", "s3": "s3fs", "az": "adlfs", "hf": "huggingface_hub"}
_URI = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")

AnyPath = pathlib.Path | epath.Path


# ----------------------------------------------------------------------------------------------
# Paths
# ----------------------------------------------------------------------------------------------
def is_remote(path: str | os.PathLike) -> bool:
    """Whether `path` is a URI (`gs://bucket/run`) rather than a local path.

    Examples:
      >>> is_remote("gs://bucket/run"), is_remote("workdirs/run"), is_remote(pathlib.Path("/tmp"))
      (True, False, False)
    """
    return _URI.match(os.fspath(path)) is not None


def as_path(path: str | os.PathLike) -> AnyPath:
    """`etils.epath.Path` for a URI, `pathlib.Path` for a local path (behaviour unchanged).

    Raises:
      ValueError: a URI scheme that `etils.epath` cannot open (e.g. `file://`, `http://`), or
        one whose client is not installed (`gs://` without gcsfs or TensorFlow).

    `as_path("gs://bucket/run") / "metrics.jsonl"` is `PosixGPath('gs://bucket/run/metrics.jsonl')`.

    Examples:
      >>> as_path("workdirs/run") / "metrics.jsonl"
      PosixPath('workdirs/run/metrics.jsonl')
    """
    match = _URI.match(os.fspath(path))
    if match is None:
        return pathlib.Path(os.fspath(path))
    if match.group(1) not in URI_SCHEMES:
        raise ValueError(
            f"{os.fspath(path)!r}: {match.group(1)}:// paths are not supported; use a local "
            f"path or one of {', '.join(s + '://' for s in URI_SCHEMES)}."
        )
    _check_client(match.group(1))
    return epath.Path(path)


@functools.cache
def _check_client(scheme: str) -> None:
    package = URI_SCHEMES[scheme]
    if importlib.util.find_spec(package) is not None:
        return
    use_tf = os.environ.get("EPATH_USE_TF", "").lower() not in ("false", "no", "f", "0")
    if scheme == "gs" and use_tf and importlib.util.find_spec("tensorflow") is not None:
        return  # etils.epath uses tf.io.gfile
    extra = " ('dpq_jax[gcs]')" if scheme == "gs" else ""
    raise ValueError(f"{scheme}:// paths need the {package} package; pip install {package}{extra}.")


def abspath(path: str | os.PathLike) -> str:
    """`os.path.abspath` for a local path; a URI as given, without a trailing `/`.

    Examples:
      >>> abspath("gs://bucket/run/")
      'gs://bucket/run'
    """
    if is_remote(path):
        return os.fspath(path).rstrip("/")
    return os.path.abspath(os.fspath(path))


def read_bytes(path: str | os.PathLike) -> bytes:
    """The whole content of a local or remote file."""
    return as_path(path).read_bytes()


def move_tree(source: str | os.PathLike, target: str | os.PathLike) -> None:
    """Moves a folder to `target` (which must not exist); its parent is created.

    Local: one `os.replace` (atomic). Object storage has no folders to rename: every file is
    copied, and only then is the source deleted, so a crash part-way loses no file (it may
    leave a partial copy at `target`, or a partly deleted source beside a complete copy).
    """
    source, target = as_path(source), as_path(target)
    if isinstance(source, pathlib.Path) and isinstance(target, pathlib.Path):
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(source, target)
        return
    for relative in _files_under(source):
        (source / relative).copy(target / relative)
    source.rmtree()


def _files_under(folder: AnyPath, prefix: str = "") -> list[str]:
    """Paths (relative, `/`-separated) of the files under `folder`, via `iterdir`."""
    files = []
    for child in sorted(folder.iterdir()):
        name = f"{prefix}{child.name}"
        if child.is_dir():
            files += _files_under(child, name + "/")
        else:
            files.append(name)
    return files


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb", **open_kwargs) -> Iterator[IO]:
    """Opens a temporary file beside `path`; renames it to `path` when the block succeeds.

    The temporary file (`.<name>.<random>.tmp` in the same folder, so the rename stays on one
    file system and is atomic) is flushed to disk before `os.replace`; if the block raises, it
    is deleted and `path` keeps its old content. For a URI (`gs://...`) the temporary object
    is written in full, then renamed over `path` (`etils.epath` `replace`: a server-side move,
    or copy and delete); `path` is never open for writing, so it is either the old object or
    the complete new one.

    Args:
      path: the destination file; its folder must exist (any prefix, in object storage).
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
    path = as_path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")
    if isinstance(path, pathlib.Path):
        try:
            with open(tmp, mode.replace("w", "x"), **open_kwargs) as f:
                yield f
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return
    renamed = False
    try:
        # Written to a local temporary file first: writers may seek (zip archives, PNGs), and
        # an exception in the block must upload nothing.
        with tempfile.TemporaryFile() as local:
            f = local if "b" in mode else io.TextIOWrapper(local, **_text_options(open_kwargs))
            yield f
            f.flush()
            if f is not local:
                f.detach()  # keeps `local` open
            local.seek(0)
            with tmp.open("wb") as out:
                shutil.copyfileobj(local, out, 1 << 22)
        tmp.replace(path)
        renamed = True
    finally:
        if not renamed:
            with contextlib.suppress(OSError):
                tmp.unlink()  # best effort: the object may not exist


def _text_options(open_kwargs: dict) -> dict:
    unknown = set(open_kwargs) - {"encoding", "newline", "errors"}
    if unknown:
        raise TypeError(f"atomic_write: unsupported open arguments {sorted(unknown)}.")
    return {"encoding": "utf-8", **open_kwargs}


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


def files_sha256(root: AnyPath, files: Sequence[AnyPath], *, content: bool) -> str:
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
            with path.open("rb") as f:
                for chunk in iter(lambda f=f: f.read(1 << 22), b""):
                    digest.update(chunk)
        else:
            digest.update(str(file_size(path)).encode() + b"\0")
    return digest.hexdigest()


def file_size(path: AnyPath) -> int:
    """Size in bytes (`pathlib` stats carry `st_size`, `etils.epath` stats `length`)."""
    stat = path.stat()
    return int(stat.st_size if hasattr(stat, "st_size") else stat.length)


def write_npz(
    path: str | os.PathLike, arrays: Mapping[str, np.ndarray], metadata: dict | None = None
) -> AnyPath:
    """Writes `arrays` to an uncompressed `.npz` file, atomically.

    Args:
      path: the destination (the name is used as given).
      arrays: name -> array; no object arrays (they would need pickles).
      metadata: optional JSON dict (e.g. `format`, `format_version`). When given, the file
        also holds `__metadata__`: this dict plus `"arrays"`, the `array_record` of every array,
        which `read_npz` verifies.

    Returns:
      The path written (`as_path`).
    """
    path = as_path(path)
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
    path = as_path(path)

    def fail(problem: str) -> ValueError:
        return ValueError(f"Cannot read {what} {str(path)!r}: {problem} {fix}")

    if not path.is_file():
        raise FileNotFoundError(f"No {what} at {str(path)!r}.")
    source = path if isinstance(path, pathlib.Path) else io.BytesIO(path.read_bytes())
    try:
        archive = np.load(source, allow_pickle=False)
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
