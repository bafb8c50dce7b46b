"""Tests for atomic writes, array checksums and verified `.npz` archives."""

import hashlib
import json

import numpy as np
import pytest

from dpq_jax import io_utils

META = {"format": "demo", "format_version": 1}


def _arrays():
    return {"codes": np.arange(12, dtype=np.uint8).reshape(3, 4), "ids": np.arange(3)}


class _Unpicklable:
    def __reduce__(self):
        raise RuntimeError("no pickles")


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "out.bin"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="disk on fire"), io_utils.atomic_write(path) as f:
        f.write(b"half of the new")
        raise RuntimeError("disk on fire")
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]
    # np.savez fails after writing the first array: the archive is never half-replaced.
    unpicklable = np.array([_Unpicklable()], dtype=object)
    with pytest.raises(RuntimeError, match="no pickles"):
        io_utils.write_npz(path, {**_arrays(), "z": unpicklable}, META)
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]


def test_successful_write_replaces_the_file(tmp_path):
    path = tmp_path / "out.txt"
    path.write_text("old")
    with io_utils.atomic_write(path, "w", encoding="utf-8") as f:
        f.write("new")
    assert path.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]
    with pytest.raises(ValueError, match="mode"), io_utils.atomic_write(path, "a"):
        pass


def test_round_trip_and_legacy_byte_layout(tmp_path):
    arrays = _arrays()
    path = io_utils.write_npz(tmp_path / "a.npz", arrays, META)
    loaded, meta = io_utils.read_npz(path, format_name="demo")
    for name, a in arrays.items():
        np.testing.assert_array_equal(loaded[name], a)
        assert meta["arrays"][name] == io_utils.array_record(a)
    # The same bytes as the index writer always produced: sorted JSON first, then the arrays.
    legacy = tmp_path / "legacy.npz"
    full = {**META, "arrays": {n: io_utils.array_record(a) for n, a in arrays.items()}}
    payload = np.frombuffer(json.dumps(full, sort_keys=True).encode("utf-8"), np.uint8)
    with open(legacy, "wb") as f:
        np.savez(f, __metadata__=payload, **arrays)
    assert path.read_bytes() == legacy.read_bytes()
    # Without metadata: plain arrays, read back as such.
    plain = io_utils.write_npz(tmp_path / "plain.npz", arrays)
    loaded, meta = io_utils.read_npz(plain)
    assert meta is None and sorted(loaded) == ["codes", "ids"]


def test_checksum_mismatch_is_detected(tmp_path):
    path = io_utils.write_npz(tmp_path / "a.npz", _arrays(), META)
    with np.load(path) as z:
        entries = {name: z[name] for name in z.files}
    entries["codes"] = entries["codes"] ^ np.uint8(1)  # same dtype and shape, other bytes
    np.savez(path, **entries)
    with pytest.raises(ValueError, match="checksum mismatch for array 'codes'") as info:
        io_utils.read_npz(path, format_name="demo", fix="Write it again.")
    assert str(path) in str(info.value) and "Write it again." in str(info.value)
    entries["codes"] = entries["codes"][:2]  # another shape than recorded
    np.savez(path, **entries)
    with pytest.raises(ValueError, match=r"uint8\[2, 4\] but the metadata says uint8\[3, 4\]"):
        io_utils.read_npz(path)


def test_foreign_damaged_and_newer_files_are_refused(tmp_path):
    def refused(path, match, **kwargs):
        with pytest.raises(ValueError, match=match) as info:
            io_utils.read_npz(path, what="demo file", **kwargs)
        assert str(path) in str(info.value) and "Cannot read demo file" in str(info.value)

    foreign = tmp_path / "foreign.npz"
    np.savez(foreign, x=np.arange(3))
    refused(foreign, "foreign", format_name="demo")
    assert io_utils.read_npz(foreign)[1] is None  # plain reads accept it

    other = io_utils.write_npz(tmp_path / "other.npz", _arrays(), {**META, "format": "x"})
    refused(other, "format is 'x', expected 'demo'", format_name="demo")
    newer = io_utils.write_npz(tmp_path / "newer.npz", _arrays(), {**META, "format_version": 3})
    refused(newer, "newer", format_name="demo", max_version=2)
    assert io_utils.read_npz(newer, format_name="demo", max_version=3)[1]["format_version"] == 3

    good = io_utils.write_npz(tmp_path / "good.npz", _arrays(), META)
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(good.read_bytes()[:200])
    refused(truncated, "truncated")
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"not an archive")
    refused(garbage, "not a readable .npz")
    single = tmp_path / "single.npy"
    np.save(single, np.arange(3))
    refused(single, "single .npy")
    with pytest.raises(FileNotFoundError):
        io_utils.read_npz(tmp_path / "missing.npz")


def test_array_sha256_covers_the_bytes_and_the_record_dtype_and_shape():
    a = np.arange(6, dtype=np.int32).reshape(2, 3)
    assert io_utils.array_sha256(a) == hashlib.sha256(a.tobytes()).hexdigest()
    assert io_utils.array_sha256(a.T) == hashlib.sha256(a.T.copy().tobytes()).hexdigest()
    same_bytes = a.reshape(3, 2)
    assert io_utils.array_sha256(same_bytes) == io_utils.array_sha256(a)
    assert io_utils.array_record(same_bytes) != io_utils.array_record(a)


def test_files_sha256_names_and_contents_or_sizes(tmp_path):
    (tmp_path / "s1").mkdir()
    files = [tmp_path / "s1" / "1.pgm", tmp_path / "s1" / "2.pgm"]
    files[0].write_bytes(b"ab")
    files[1].write_bytes(b"cd")
    digest = hashlib.sha256(b"s1/1.pgm\0ab" + b"s1/2.pgm\0cd").hexdigest()
    assert io_utils.files_sha256(tmp_path, files, content=True) == digest
    by_size = io_utils.files_sha256(tmp_path, files, content=False)
    files[1].write_bytes(b"xy")  # same size, other bytes
    assert io_utils.files_sha256(tmp_path, files, content=False) == by_size
    assert io_utils.files_sha256(tmp_path, files, content=True) != digest


def test_uris_are_told_from_local_paths_without_touching_storage(monkeypatch):
    import importlib.util
    import os
    import pathlib

    assert io_utils.is_remote("gs://b/run") and not io_utils.is_remote("runs/gs_like:x")
    assert io_utils.abspath("gs://b/run/") == "gs://b/run"
    assert io_utils.abspath("run") == os.path.abspath("run")
    assert type(io_utils.as_path("runs/x")) is type(pathlib.Path("runs/x"))  # local: pathlib
    with pytest.raises(ValueError, match="ftp:// paths are not supported.*gs://"):
        io_utils.as_path("ftp://host/run")
    find_spec = importlib.util.find_spec
    missing = ("gcsfs", "tensorflow")
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name in missing else find_spec(name)
    )
    io_utils._check_client.cache_clear()
    try:
        with pytest.raises(ValueError, match=r"gs:// paths need the gcsfs package; pip install"):
            io_utils.as_path("gs://b/run")
    finally:
        io_utils._check_client.cache_clear()
