"""Tests for dpq_jax.search.index: search, save/load round trips and rejected files."""

import json
import struct
import zipfile

import numpy as np
import pytest

from dpq_jax import parallel
from dpq_jax.search import index, kernels
from dpq_jax.search import reference as ref


def _pq_index(rng, n=40, m=3, k=16, d=2, **kwargs):
    codebooks = rng.standard_normal((m, k, d)).astype(np.float32)
    codes = rng.integers(0, k, size=(n, m)).astype(np.uint8)
    ids = 1000 + 7 * np.arange(n, dtype=np.int64)[::-1]  # not 0..N-1: ids must be mapped
    return index.PQIndex(codebooks, codes, ids, method="opqn", **kwargs)


def _binary_index(rng, n=50, b=37):
    bits = (rng.random((n, b)) < 0.5).astype(np.uint8)
    return index.BinaryIndex.from_bits(bits, ids=np.arange(n) * 3, method="dcbh"), bits


def _rewrite(path, arrays, meta):
    """Writes an .npz with the given arrays and metadata (bypassing PQIndex.save)."""
    payload = np.frombuffer(json.dumps(meta).encode("utf-8"), np.uint8)
    with open(path, "wb") as f:
        np.savez(f, __metadata__=payload, **arrays)


def _read_raw(path):
    with np.load(path, allow_pickle=False) as z:
        arrays = {name: z[name] for name in z.files}
    meta = json.loads(arrays.pop("__metadata__").tobytes().decode())
    return arrays, meta


# ---------------------------------------------------------------------------------------------
# Nibble packing.
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("m", [1, 4, 5])
def test_nibbles_round_trip_and_match_reference(m):
    codes = np.random.default_rng(m).integers(0, 16, size=(9, m)).astype(np.uint8)
    packed = np.asarray(index.pack_nibbles(codes))
    np.testing.assert_array_equal(packed, ref.pack_nibbles(codes))
    np.testing.assert_array_equal(index.unpack_nibbles(packed, m), codes)


def test_nibbles_hand_case_and_bad_input():
    np.testing.assert_array_equal(index.pack_nibbles(np.array([[1, 2, 15]])), [[0x21, 0x0F]])
    with pytest.raises(ValueError, match=r"\[0, 16\)"):
        index.pack_nibbles(np.array([[16]]))
    with pytest.raises(ValueError, match="num_codebooks"):
        index.unpack_nibbles(np.zeros((1, 2), np.uint8), 5)


# ---------------------------------------------------------------------------------------------
# Search.
# ---------------------------------------------------------------------------------------------


def test_pq_search_with_queries_and_lut_equals_bruteforce():
    rng = np.random.default_rng(0)
    idx = _pq_index(rng)
    queries = rng.standard_normal((3, 6)).astype(np.float32)
    scores, ids = idx.search(queries, 5, chunk_size=16)
    lut = ref.lut_inner_product(queries, idx.codebooks)
    ref_scores, ref_pos = ref.adc_topk(lut, idx.codes, 5)
    np.testing.assert_array_equal(ids, idx.ids[ref_pos])
    np.testing.assert_allclose(scores, ref_scores, rtol=1e-5, atol=1e-6)
    assert ids.dtype == np.int64
    # A ready table (e.g. a soft-quantized query side) is used as given.
    lut32 = lut.astype(np.float32)
    np.testing.assert_array_equal(
        idx.search(lut32, 5)[1], idx.ids[ref.adc_topk(lut32, idx.codes, 5)[1]]
    )


def test_l2_index_ranks_ascending():
    rng = np.random.default_rng(1)
    idx = _pq_index(rng, metric="l2")
    queries = rng.standard_normal((2, 6)).astype(np.float32)
    _, ids = idx.search(queries, 6)
    _, ref_pos = ref.adc_topk(ref.lut_l2(queries, idx.codebooks), idx.codes, 6, False)
    np.testing.assert_array_equal(ids, idx.ids[ref_pos])


def test_progressive_index_scores_first_levels():
    rng = np.random.default_rng(2)
    codebooks = rng.standard_normal((3, 8, 4)).astype(np.float32)  # L=3 levels, D=4
    codes = rng.integers(0, 8, size=(30, 3)).astype(np.uint8)
    idx = index.PQIndex(codebooks, codes, method="dpq_g", progressive=True)
    assert idx.levels == 3 and idx.code_bits == 9
    queries = rng.standard_normal((2, 4)).astype(np.float32)
    for levels in (1, 3):
        _, ids = idx.search(queries, 4, levels=levels)
        lut = ref.lut_progressive(queries, codebooks, levels)
        np.testing.assert_array_equal(ids, ref.adc_topk(lut, codes, 4)[1])
    with pytest.raises(ValueError, match="progressive"):
        _pq_index(rng).search(rng.standard_normal((1, 6)).astype(np.float32), 1, levels=1)


def test_pq_search_on_mesh_equals_single_device(cpu_devices):
    rng = np.random.default_rng(3)
    idx = _pq_index(rng, n=33, k=4)
    queries = rng.standard_normal((2, 6)).astype(np.float32)
    mesh = parallel.make_mesh(devices=cpu_devices)
    expected = idx.search(queries, 9, chunk_size=4)
    got = idx.search(queries, 9, chunk_size=4, mesh=mesh)
    np.testing.assert_array_equal(got[1], expected[1])
    np.testing.assert_array_equal(got[0], expected[0])


def test_binary_search_and_radius_equal_bruteforce():
    rng = np.random.default_rng(4)
    idx, bits = _binary_index(rng)
    q_bits = bits[:3].copy()
    q_bits[:, :2] ^= 1
    dist, ids = idx.search(q_bits, 8)
    ref_dist, ref_pos = ref.hamming_topk(q_bits, bits, 8)
    np.testing.assert_array_equal(dist, ref_dist)
    np.testing.assert_array_equal(ids, idx.ids[ref_pos])
    # Packed queries and +-1 queries give the same answer.
    np.testing.assert_array_equal(idx.search(kernels.pack_bits(q_bits), 8)[1], ids)
    np.testing.assert_array_equal(idx.search(2 * q_bits.astype(np.int8) - 1, 8)[1], ids)
    counts, within = idx.radius_search(q_bits, 2, max_results=4)
    ref_counts, ref_within = ref.radius_search(q_bits, bits, 2, 4)
    np.testing.assert_array_equal(counts, ref_counts)
    np.testing.assert_array_equal(within, np.where(ref_within >= 0, idx.ids[ref_within], -1))


# ---------------------------------------------------------------------------------------------
# Save / load.
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("k,storage", [(16, "4bit"), (8, "4bit"), (32, "uint8")])
def test_pq_save_load_round_trip(tmp_path, k, storage):
    rng = np.random.default_rng(k)
    idx = _pq_index(rng, m=3, k=k)
    path = idx.save(tmp_path / "pq.npz")
    arrays, meta = _read_raw(path)
    assert meta["format"] == "dpq_jax.index" and meta["codes_storage"] == storage
    assert meta["code_bits"] == 3 * int(np.log2(k)) and meta["method"] == "opqn"
    assert ("codes_4bit" in arrays) == (storage == "4bit")
    loaded = index.load_index(path)
    assert isinstance(loaded, index.PQIndex)
    np.testing.assert_array_equal(loaded.codes, idx.codes)
    np.testing.assert_array_equal(loaded.codebooks, idx.codebooks)
    np.testing.assert_array_equal(loaded.ids, idx.ids)
    assert loaded.metadata() == idx.metadata()
    queries = rng.standard_normal((2, 6)).astype(np.float32)
    np.testing.assert_array_equal(loaded.search(queries, 5)[1], idx.search(queries, 5)[1])


def test_binary_save_load_round_trip(tmp_path):
    idx, _ = _binary_index(np.random.default_rng(5))
    loaded = index.BinaryIndex.load(idx.save(tmp_path / "bin.npz"))
    np.testing.assert_array_equal(loaded.packed, idx.packed)
    np.testing.assert_array_equal(loaded.ids, idx.ids)
    assert loaded.num_bits == 37 and loaded.method == "dcbh"


def test_load_rejects_damaged_and_foreign_files(tmp_path):
    rng = np.random.default_rng(6)
    good = _pq_index(rng).save(tmp_path / "good.npz")
    blob = good.read_bytes()

    def rejected(path, match):
        with pytest.raises(ValueError, match=match) as info:
            index.load_index(path)
        assert str(path) in str(info.value)

    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(blob[: len(blob) // 2])
    rejected(truncated, "truncated")

    corrupt = tmp_path / "corrupt.npz"
    damaged = bytearray(blob)
    with zipfile.ZipFile(good) as z:
        offset = z.getinfo("codebooks.npy").header_offset
    # Local file header: 30 bytes, then the name and the extra field; then the .npy bytes.
    name_len, extra_len = struct.unpack("<HH", blob[offset + 26 : offset + 30])
    data_start = offset + 30 + name_len + extra_len
    damaged[data_start + 128 + 5] ^= 0xFF  # past the 128-byte .npy header: array data
    corrupt.write_bytes(bytes(damaged))
    rejected(corrupt, "corrupt")

    foreign = tmp_path / "foreign.npz"
    np.savez(foreign, x=np.arange(3))
    rejected(foreign, "foreign")

    npy = tmp_path / "single.npy"
    np.save(npy, np.arange(3))
    rejected(npy, "single .npy")

    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"not an archive at all")
    rejected(garbage, "not a readable")

    arrays, meta = _read_raw(good)
    wrong_sum = tmp_path / "checksum.npz"
    edited = dict(arrays)
    key = "codes_4bit"
    edited[key] = arrays[key] ^ np.uint8(1)  # same dtype and shape, different bytes
    _rewrite(wrong_sum, edited, meta)
    rejected(wrong_sum, "checksum mismatch for array 'codes_4bit'")

    newer = tmp_path / "newer.npz"
    _rewrite(newer, arrays, {**meta, "format_version": 99})
    rejected(newer, "newer")

    other_format = tmp_path / "other.npz"
    _rewrite(other_format, arrays, {**meta, "format": "someone.else"})
    rejected(other_format, "someone.else")

    lying = tmp_path / "lying.npz"
    _rewrite(lying, arrays, {**meta, "num_items": 41})
    rejected(lying, "inconsistent")

    binary = _binary_index(rng)[0].save(tmp_path / "binary.npz")
    with pytest.raises(ValueError, match="BinaryIndex"):
        index.PQIndex.load(binary)
    with pytest.raises(FileNotFoundError):
        index.load_index(tmp_path / "missing.npz")


def test_invalid_indexes_raise():
    rng = np.random.default_rng(7)
    codebooks = rng.standard_normal((2, 4, 3)).astype(np.float32)
    codes = rng.integers(0, 4, size=(5, 2)).astype(np.uint8)
    with pytest.raises(ValueError, match=r"\[0, K\)"):
        index.PQIndex(codebooks, codes + 4)
    with pytest.raises(ValueError, match="K = 300"):
        index.PQIndex(np.zeros((2, 300, 3), np.float32), codes)
    with pytest.raises(ValueError, match="ids"):
        index.PQIndex(codebooks, codes, ids=np.arange(4))
    with pytest.raises(ValueError, match="metric"):
        index.PQIndex(codebooks, codes, metric="cosine")
    with pytest.raises(ValueError, match="inner product only"):
        index.PQIndex(codebooks, codes, metric="l2", progressive=True)
    with pytest.raises(ValueError, match="pack_4bit"):
        index.PQIndex(np.zeros((2, 32, 3), np.float32), codes).save("unused.npz", pack_4bit=True)
    with pytest.raises(ValueError, match="beyond bit 3"):
        index.BinaryIndex(np.array([[8]], np.uint32), num_bits=3)
    with pytest.raises(ValueError, match="uint32"):
        index.BinaryIndex(np.array([[1]], np.int32), num_bits=3)
    idx = index.PQIndex(codebooks, codes)
    with pytest.raises(ValueError, match=r"\[Q, 2, 4\]"):
        idx.search(np.zeros((1, 2, 5), np.float32), 1)
