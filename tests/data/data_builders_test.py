"""Every release builder, built from tiny fixtures written in the release's exact on-disk
format, read back (in memory and lazily), split by its protocol; and bad data fails loudly."""

import functools
import gzip
import pathlib
import pickle

import numpy as np
import pytest
from PIL import Image

from dpq_jax import registry
from dpq_jax.data import (
    builder_lib,
    cifar10,
    ddh_faces,
    fashion_mnist,
    image_csv,
    image_folder,
    imagenet100,
    inshop,
    nuswide,
    protocols,
)


# ----------------------------------------------------------------------------------------------
# Fixture writers (the release formats)
# ----------------------------------------------------------------------------------------------
def write_idx(path: pathlib.Path, array: np.ndarray) -> None:
    """IDX: 00 00 08 ndim, big-endian int32 sizes, the bytes; gzip-compressed."""
    array = np.asarray(array, np.uint8)
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(s).to_bytes(4, "big") for s in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.tobytes())


def write_fmnist(root: pathlib.Path, n_train=30, n_test=20, seed=0):
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    data = {}
    for part, prefix, n in (("train", "train", n_train), ("test", "t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = np.arange(n) % 10
        write_idx(root / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", labels)
        data[part] = (images, labels)
    return data


def write_cifar(root: pathlib.Path, per_batch=6, seed=0):
    """cifar-10-batches-py: pickled dicts with bytes keys; rows R plane, G plane, B plane."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    images, labels = {}, {}
    for name in (*cifar10.TRAIN_FILES, *cifar10.TEST_FILES):
        hwc = rng.integers(0, 256, (per_batch, 32, 32, 3), dtype=np.uint8)
        y = [int(v) for v in rng.integers(0, 10, per_batch)]
        rows = hwc.transpose(0, 3, 1, 2).reshape(per_batch, 3072)  # independent of the reader
        batch = {b"batch_label": b"fixture", b"labels": y, b"data": rows, b"filenames": []}
        (root / name).write_bytes(pickle.dumps(batch, protocol=2))
        images[name], labels[name] = hwc, np.asarray(y)
    meta = {b"label_names": [n.encode() for n in cifar10.CLASS_NAMES], b"num_vis": 3072}
    (root / cifar10.META_FILE).write_bytes(pickle.dumps(meta, protocol=2))
    return images, labels


def write_ddh(root: pathlib.Path, ids=(0, 3, 529), per_id=(4, 2), seed=0):
    """train_set/ and test_set/ folders of (x, y) pickles, x rows channel-first 3x32x32."""
    rng = np.random.default_rng(seed)
    out = {}
    for part, per in zip(("train", "test"), per_id):
        folder = root / f"{part}_set"
        folder.mkdir(parents=True, exist_ok=True)
        hwc = rng.integers(0, 256, (len(ids) * per, 32, 32, 3), dtype=np.uint8)
        y = np.repeat(np.asarray(ids), per)
        rows = hwc.transpose(0, 3, 1, 2).reshape(len(y), 3072)
        half = len(y) // 2
        # Two files, read in name order; one stored as floats in 0..255 (the release does not
        # document the dtype).
        with open(folder / "part_b", "wb") as f:
            pickle.dump((rows[half:].astype(np.float32), list(y[half:])), f, protocol=2)
        with open(folder / "part_a", "wb") as f:
            pickle.dump((rows[:half], y[:half]), f, protocol=2)
        out[part] = (hwc, y)
    return out


def write_image(path: pathlib.Path, pixels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def random_pixels(rng, size=12):
    # Smooth images so that JPEG round trips stay close.
    base = rng.integers(0, 256, (3, 3, 3)).astype(np.uint8)
    return np.asarray(Image.fromarray(base).resize((size, size), Image.Resampling.BILINEAR))


# ----------------------------------------------------------------------------------------------
# Fashion-MNIST
# ----------------------------------------------------------------------------------------------
def test_fashion_mnist_fixture_round_trip(tmp_path):
    data = write_fmnist(tmp_path / "src")
    src = fashion_mnist.load_fashion_mnist(tmp_path / "tfds", tmp_path / "src")
    assert src.images.shape == (50, 28, 28, 1) and src.num_classes == 10
    np.testing.assert_array_equal(src.images[:30, ..., 0], data["train"][0])
    np.testing.assert_array_equal(src.images[30:, ..., 0], data["test"][0])
    np.testing.assert_array_equal(src.labels, np.concatenate([data["train"][1], data["test"][1]]))
    assert src.partition_names == ("train", "test")
    assert src.partition.tolist() == [0] * 30 + [1] * 20
    # A second load reads the cache; a lazy load decodes the records: all agree.
    again = fashion_mnist.load_fashion_mnist(tmp_path / "tfds", tmp_path / "src")
    lazy = fashion_mnist.load_fashion_mnist(tmp_path / "tfds", tmp_path / "src", in_memory=False)
    assert lazy.lazy and not again.lazy
    np.testing.assert_array_equal(again.images, src.images)
    np.testing.assert_array_equal(lazy[37]["image"], src.images[37])
    np.testing.assert_array_equal(np.asarray(lazy.images), src.images)
    # Without the cache the records are decoded again.
    (pathlib.Path(lazy.images.readers[0].builder.data_dir) / "dpq_images.npz").unlink()
    np.testing.assert_array_equal(
        fashion_mnist.load_fashion_mnist(tmp_path / "tfds", tmp_path / "src").images, src.images
    )
    # The protocol, at fixture scale (the published sizes are checked only for "fmnist").
    fn = functools.partial(
        protocols.fmnist, query_per_class=1, val_query_per_class=1, val_database_per_class=1
    )
    protocols.register_protocol("fmnist_tiny", fn)
    splits = protocols.get_splits("fmnist_tiny", src.labels, seed=0)
    assert splits.query.min() >= 30 and splits.query.size == 10
    np.testing.assert_array_equal(splits.database, np.arange(30))
    with pytest.raises(ValueError, match="takes 100 images of class 0 but the pool holds 2"):
        protocols.get_splits("fmnist", src.labels, seed=0)


def test_fashion_mnist_registered_and_default_dir():
    assert registry.get("dataset", "fashion_mnist") is fashion_mnist.load_fashion_mnist
    assert fashion_mnist.DEBIAN_DIR in fashion_mnist.DpqFashionMnist.DEFAULT_SOURCE_DIRS


def test_fashion_mnist_bad_files(tmp_path):
    write_fmnist(tmp_path / "src")
    path = tmp_path / "src" / "t10k-images-idx3-ubyte.gz"
    good = gzip.decompress(path.read_bytes())
    with gzip.open(path, "wb") as f:
        f.write(good[:-100])  # truncated payload
    with pytest.raises(ValueError, match="t10k-images-idx3-ubyte.gz header says shape"):
        fashion_mnist.load_fashion_mnist(tmp_path / "tfds", tmp_path / "src")
    path.write_bytes(b"not gzip at all")
    with pytest.raises(ValueError, match="cannot read .*t10k-images-idx3-ubyte.gz"):
        fashion_mnist.load_fashion_mnist(tmp_path / "tfds", tmp_path / "src")
    path.unlink()
    with pytest.raises(ValueError, match="missing file .*t10k-images-idx3-ubyte.gz"):
        fashion_mnist.load_fashion_mnist(tmp_path / "tfds", tmp_path / "src")
    write_fmnist(tmp_path / "src")
    write_idx(tmp_path / "src" / "train-labels-idx1-ubyte.gz", np.full(30, 10))
    with pytest.raises(ValueError, match="train-labels-idx1-ubyte.gz holds label 10"):
        fashion_mnist.load_fashion_mnist(tmp_path / "tfds", tmp_path / "src")


def test_missing_manual_dir_names_the_places_searched(tmp_path):
    builder = fashion_mnist.DpqFashionMnist(data_dir=str(tmp_path / "tfds"))
    builder.DEFAULT_SOURCE_DIRS = (str(tmp_path / "nowhere"),)
    with pytest.raises(ValueError, match="(?s)no source folder found.*nowhere.*Expected layout"):
        builder.download_and_prepare()


def test_rebuilt_source_is_detected(tmp_path):
    write_fmnist(tmp_path / "src", seed=0)
    fashion_mnist.load_fashion_mnist(tmp_path / "tfds", tmp_path / "src")
    write_fmnist(tmp_path / "src", seed=1)  # other pixels, same layout
    with pytest.raises(ValueError, match="built from a different source"):
        fashion_mnist.load_fashion_mnist(tmp_path / "tfds", tmp_path / "src")


# ----------------------------------------------------------------------------------------------
# CIFAR-10
# ----------------------------------------------------------------------------------------------
def test_cifar10_fixture_round_trip(tmp_path):
    root = tmp_path / "cifar-10-batches-py"
    images, labels = write_cifar(root)
    # Found through the manual dir's `cifar-10-batches-py/` sub-folder.
    builder = cifar10.DpqCifar10(data_dir=str(tmp_path / "tfds"), keep_arrays=True)
    import tensorflow_datasets as tfds

    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=tmp_path))
    src = cifar10.load_cifar10(tmp_path / "tfds", root)
    want = np.concatenate([images[n] for n in (*cifar10.TRAIN_FILES, *cifar10.TEST_FILES)])
    np.testing.assert_array_equal(src.images, want)
    assert src.images.shape == (36, 32, 32, 3)
    np.testing.assert_array_equal(
        src.labels, np.concatenate([labels[n] for n in (*cifar10.TRAIN_FILES, "test_batch")])
    )
    assert src.partition.tolist() == [0] * 30 + [1] * 6
    assert src.class_names == cifar10.CLASS_NAMES
    fn = functools.partial(protocols.cifar10_dsh, val_query_per_class=0, val_database_per_class=0)
    splits = fn(np.asarray(src.labels), 3, partition=src.partition_indices())
    np.testing.assert_array_equal(splits["query"], np.arange(30, 36))
    np.testing.assert_array_equal(splits["database"], np.arange(30))


def test_cifar10_bad_files(tmp_path):
    root = tmp_path / "c"
    write_cifar(root)
    data = (root / "data_batch_2").read_bytes()
    (root / "data_batch_2").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="cannot unpickle .*data_batch_2.*truncated"):
        cifar10.load_cifar10(tmp_path / "tfds", root)
    (root / "data_batch_2").unlink()
    with pytest.raises(ValueError, match="missing file .*data_batch_2"):
        cifar10.load_cifar10(tmp_path / "tfds", root)
    write_cifar(root)
    batch = {b"labels": [11] * 2, b"data": np.zeros((2, 3072), np.uint8)}
    (root / "test_batch").write_bytes(pickle.dumps(batch, protocol=2))
    with pytest.raises(ValueError, match="test_batch holds labels in \\[11, 11\\]; expected 0..9"):
        cifar10.load_cifar10(tmp_path / "tfds", root)
    # A pickle that would run code is refused.
    (root / "test_batch").write_bytes(pickle.dumps({b"data": pathlib.Path("x")}, protocol=2))
    with pytest.raises(ValueError, match="test_batch.*is not allowed"):
        cifar10.load_cifar10(tmp_path / "tfds", root)


# ----------------------------------------------------------------------------------------------
# DDH faces (FaceScrub, YouTube Faces)
# ----------------------------------------------------------------------------------------------
def test_ddh_facescrub_fixture_round_trip(tmp_path):
    data = write_ddh(tmp_path / "fs")
    src = ddh_faces.load_facescrub(tmp_path / "tfds", tmp_path / "fs")
    assert src.num_classes == 530 and src.image_shape == (32, 32, 3)
    # part_a then part_b (sorted names), train then test.
    np.testing.assert_array_equal(src.images, np.concatenate([data["train"][0], data["test"][0]]))
    np.testing.assert_array_equal(src.labels, np.concatenate([data["train"][1], data["test"][1]]))
    splits = protocols.get_splits("faces_seen", src.labels, seed=0)
    n_train = data["train"][1].size
    np.testing.assert_array_equal(splits.database, np.arange(n_train))
    np.testing.assert_array_equal(splits.query, np.arange(n_train, len(src)))
    # One validation query per identity, out of train; validation database = train.
    assert sorted(np.asarray(src.labels)[splits.val_query].tolist()) == [0, 3, 529]
    np.testing.assert_array_equal(np.union1d(splits.train, splits.val_query), splits.database)


def test_ddh_youtube_faces_and_bad_pickles(tmp_path):
    write_ddh(tmp_path / "yt", ids=(0, 1594))
    src = ddh_faces.load_youtube_faces(tmp_path / "tfds", tmp_path / "yt")
    assert src.num_classes == 1595 and len(src) == 12
    # Identity 1594 does not exist in FaceScrub (530 identities).
    with pytest.raises(
        ValueError, match="part_b holds identity ids in \\[1594, 1594\\]; expected 0..529"
    ):
        ddh_faces.load_facescrub(tmp_path / "tfds2", tmp_path / "yt")
    bad = tmp_path / "yt" / "test_set" / "part_b"
    bad.write_bytes(bad.read_bytes()[:50])
    with pytest.raises(ValueError, match="cannot unpickle .*part_b"):
        ddh_faces.load_youtube_faces(tmp_path / "tfds3", tmp_path / "yt")
    with open(bad, "wb") as f:
        pickle.dump((np.zeros((2, 100)), [0, 1]), f, protocol=2)
    with pytest.raises(ValueError, match="part_b holds x of shape \\(2, 100\\)"):
        ddh_faces.load_youtube_faces(tmp_path / "tfds3", tmp_path / "yt")
    (tmp_path / "nope").mkdir()
    with pytest.raises(ValueError, match="no train_set/ folder .* in .*nope"):
        ddh_faces.load_youtube_faces(tmp_path / "tfds3", tmp_path / "nope")


# ----------------------------------------------------------------------------------------------
# Identity folders (CFW-60K, VGGFace2, cross-domain), users' folders and CSV
# ----------------------------------------------------------------------------------------------
def write_identity_folders(root, parts=("train", "test"), ids=("amy", "bob", "cyd"), per=(3, 2)):
    rng = np.random.default_rng(len(str(root)))
    pixels = {}
    for part, n in zip(parts, per):
        for ident in ids:
            for j in range(n):
                path = root / part / ident / f"{j:03d}.png"
                pixels[path] = random_pixels(rng, 12)
                write_image(path, pixels[path])
    return pixels


def test_cfw60k_identity_folders(tmp_path):
    pixels = write_identity_folders(tmp_path / "cfw60k")
    (tmp_path / "cfw60k" / "train" / "amy" / "notes.txt").write_text("ignored")
    src = image_folder.load_cfw60k(tmp_path / "tfds", tmp_path / "cfw60k", image_size=12)
    assert src.class_names == ("amy", "bob", "cyd") and src.image_shape == (12, 12, 3)
    assert src.partition_names == ("train", "test") and len(src) == 15
    # Labels: sorted identity folder names; order: train then test, class then file name.
    assert np.asarray(src.labels).tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 0, 0, 1, 1, 2, 2]
    first = pixels[tmp_path / "cfw60k" / "train" / "amy" / "000.png"]
    assert np.abs(src.images[0].astype(int) - first).mean() < 10  # stored as JPEG
    splits = protocols.get_splits("faces_seen", src.labels, seed=1)
    assert splits.query.tolist() == list(range(9, 15))


def test_flat_identity_folder_gets_seeded_hold_out(tmp_path):
    root = tmp_path / "flat"
    write_identity_folders(root, parts=("",), per=(10,))
    src = image_folder.load_cfw60k(tmp_path / "tfds", root, image_size=12)
    assert src.partition_names == ("images",)
    splits = protocols.get_splits("faces_seen", src.labels, seed=0)
    labels = np.asarray(src.labels)
    assert np.bincount(labels[splits.query]).tolist() == [1, 1, 1]  # ceil(10% of 10)
    assert splits.database.size == 27


def test_cross_domain_source_and_faces_unseen(tmp_path):
    write_identity_folders(
        tmp_path / "data" / "vggface2",
        parts=("cross_train", "cross_test"),
        ids=tuple(f"n{i:06d}" for i in range(6)),
        per=(3, 1),
    )
    write_identity_folders(tmp_path / "data" / "facescrub", ids=("x", "y"), per=(3, 2))
    src = image_folder.load_cross_domain(
        "facescrub", tmp_path / "tfds", tmp_path / "data", image_size=12
    )
    assert src.lazy and src.num_classes == 8 and len(src) == 24 + 10
    assert src.partition_names == (
        "source_cross_train",
        "source_cross_test",
        "target_train",
        "target_test",
    )
    labels = np.asarray(src.labels)
    assert set(labels[src.partition_indices()["target_train"]]) == {6, 7}  # offset by VGG's 6
    splits = protocols.get_splits("faces_unseen", src.labels, seed=0)
    np.testing.assert_array_equal(splits.query, src.partition_indices()["target_test"])
    np.testing.assert_array_equal(splits.database, src.partition_indices()["target_train"])
    val_ids = set(labels[splits.val_query])
    assert len(val_ids) == 2 and not val_ids & set(labels[splits.train])  # unseen in training
    assert set(labels[splits.val_database]) == val_ids


def test_user_image_folder_and_bad_images(tmp_path):
    root = tmp_path / "mine"
    rng = np.random.default_rng(0)
    for cls, n in (("cats", 4), ("dogs", 3)):
        for j in range(n):
            write_image(root / cls / f"{j}.png", rng.integers(0, 256, (5 + j, 7, 3), np.uint8))
    with pytest.raises(ValueError, match="has shape .* pass image_size"):
        image_folder.load_image_folder(tmp_path / "tfds", root)
    src = image_folder.load_image_folder(tmp_path / "tfds", root, image_size=(6, 7), channels=1)
    assert src.images.shape == (7, 6, 7, 1) and src.class_names == ("cats", "dogs")
    splits = protocols.get_splits("holdout", src.labels, seed=0)
    assert splits.query.size == 2 and splits.val_query.size == 2
    (root / "dogs" / "9.jpg").write_bytes(b"\xff\xd8\xff garbage")
    with pytest.raises(ValueError, match="cannot read image .*dogs/9.jpg"):
        image_folder.load_image_folder(tmp_path / "tfds2", root, image_size=6)
    (root / "dogs" / "9.jpg").unlink()
    write_image(root / "stray.png", np.zeros((6, 6, 3), np.uint8))
    with pytest.raises(ValueError, match="stray.png lies directly in"):
        image_folder.load_image_folder(tmp_path / "tfds2", root, image_size=6)
    (root / "stray.png").unlink()
    (root / "empty").mkdir()
    with pytest.raises(ValueError, match="class folder .*empty holds no image files"):
        image_folder.load_image_folder(tmp_path / "tfds2", root, image_size=6)


def test_user_csv_multi_label(tmp_path):
    root = tmp_path / "shop"
    rng = np.random.default_rng(0)
    rows = [("a.png", "10"), ("b.png", "2", "10"), ("sub/c.png", "2"), ("d.png", "7", "7")]
    for row in rows:
        write_image(root / row[0], rng.integers(0, 256, (8, 8, 3), np.uint8))
    lines = ["path,labels"] + [",".join(r) for r in rows] + [""]
    (root / "labels.csv").write_text("\n".join(lines))
    src = image_csv.load_image_csv(tmp_path / "tfds", root)
    assert src.class_names == ("2", "7", "10")  # numeric order
    np.testing.assert_array_equal(src.labels, [[0, 0, 1], [1, 0, 1], [1, 0, 0], [0, 1, 0]])
    np.testing.assert_array_equal(src.images[2], np.asarray(Image.open(root / "sub" / "c.png")))
    (root / "labels.csv").write_text("a.png,10\nb.png\n")
    with pytest.raises(ValueError, match="labels.csv line 2 is 'b.png'"):
        image_csv.load_image_csv(tmp_path / "tfds2", root)
    (root / "labels.csv").write_text("a.png,cat\nmissing.png,dog\n")
    with pytest.raises(ValueError, match="missing, e.g. .*missing.png"):
        image_csv.load_image_csv(tmp_path / "tfds2", root)


# ----------------------------------------------------------------------------------------------
# NUS-WIDE, ImageNet-100, In-shop
# ----------------------------------------------------------------------------------------------
def test_nuswide_fixture(tmp_path):
    root = tmp_path / "nus"
    rng = np.random.default_rng(0)
    n = 30
    concepts = [f"c{k:02d}" for k in range(22)]
    hot = rng.random((n, 22)) < 0.3
    hot[:, 21] = False  # the least frequent concept: not among the 21 kept
    hot[5] = False  # an image without any kept concept: dropped
    hot[6, :] = False
    hot[6, 21] = True  # only the dropped concept: dropped too
    lines = []
    for i in range(n):
        rel = f"Flickr\\folder{i % 3}\\{i:04d}_{1000 + i}.jpg"
        lines.append("C:\\ImageData\\" + rel)
        write_image(
            root / "Flickr" / f"folder{i % 3}" / f"{i:04d}_{1000 + i}.jpg", random_pixels(rng, 16)
        )
    (root / "ImageList").mkdir(parents=True)
    (root / nuswide.IMAGE_LIST).write_text("\r\n".join(lines) + "\r\n")
    (root / nuswide.LABEL_DIR).mkdir(parents=True)
    for k, c in enumerate(concepts):
        (root / nuswide.LABEL_DIR / f"Labels_{c}.txt").write_text(
            "".join(f"{int(v)}\n" for v in hot[:, k])
        )
    src = nuswide.load_nuswide(tmp_path / "tfds", root, image_size=8)
    keep = [i for i in range(n) if hot[i, :21].any()]
    assert src.lazy and src.multi_label and len(src) == len(keep) == n - 2
    assert src.class_names == tuple(concepts[:21])
    np.testing.assert_array_equal(src.labels, hot[keep, :21].astype(np.int32))
    assert src[3]["image"].shape == (8, 8, 3)
    fn = functools.partial(protocols.nuswide21, num_query=5, num_train=8, num_val_query=2)
    protocols.register_protocol("nuswide21_tiny", fn)
    splits = protocols.get_splits("nuswide21_tiny", src.labels, seed=0)
    assert (splits.query.size, splits.database.size, splits.train.size) == (5, 23, 6)
    (root / nuswide.LABEL_DIR / "Labels_c03.txt").write_text("0\n" * (n - 1))
    with pytest.raises(ValueError, match="Labels_c03.txt has 29 values, expected 30"):
        nuswide.load_nuswide(tmp_path / "tfds2", root, image_size=8)


def test_imagenet100_fixture(tmp_path):
    root = tmp_path / "in100"
    rng = np.random.default_rng(0)
    wnids = ["n02", "n01", "n03"]
    (root).mkdir()
    (root / "classes.txt").write_text("# three classes\n" + "\n".join(wnids) + "\n")
    for part, per in (("train", 4), ("val", 2)):
        for w in [*wnids, "n99"]:  # n99: not listed, ignored
            for j in range(per):
                write_image(root / part / w / f"{w}_{j}.JPEG", random_pixels(rng, 10))
    src = imagenet100.load_imagenet100(tmp_path / "tfds", root, image_size=10)
    assert src.class_names == tuple(wnids) and len(src) == 18 and src.lazy
    assert np.asarray(src.labels)[:12].tolist() == [0] * 4 + [1] * 4 + [2] * 4  # list order
    fn = functools.partial(protocols.imagenet100, train_per_class=2, val_query_per_class=1)
    splits = fn(np.asarray(src.labels), 0, partition=src.partition_indices())
    np.testing.assert_array_equal(splits["query"], np.arange(12, 18))
    assert splits["train"].size == 3 and splits["val_query"].size == 3
    (root / "classes.txt").write_text("n01\nn04\n")
    with pytest.raises(ValueError, match="missing class folder .*train/n04"):
        imagenet100.load_imagenet100(tmp_path / "tfds2", root, image_size=10)


def test_inshop_fixture(tmp_path):
    root = tmp_path / "inshop"
    rng = np.random.default_rng(0)
    rows = []
    for item, status, n in (
        ("id_00000001", "train", 3),
        ("id_00000004", "train", 2),
        ("id_00000007", "query", 2),
        ("id_00000007", "gallery", 2),
        ("id_00000002", "query", 1),
        ("id_00000002", "gallery", 1),
    ):
        for j in range(n):
            name = f"img/WOMEN/Dresses/{item}/{status}_{j}_front.jpg"
            write_image(root / name, random_pixels(rng, 16))
            rows.append(f"{name} {item} {status}")
    (root / "Eval").mkdir()
    text = f"{len(rows)}\nimage_name item_id evaluation_status\n" + "\n".join(rows) + "\n"
    (root / "Eval" / "list_eval_partition.txt").write_text(text)
    src = inshop.load_inshop(tmp_path / "tfds", root, image_size=16)
    assert src.partition_names == ("train", "query", "gallery") and len(src) == 11
    assert src.class_names == ("id_00000001", "id_00000002", "id_00000004", "id_00000007")
    splits = protocols.get_splits("inshop", src.labels, seed=0)
    labels = np.asarray(src.labels)
    assert sorted(labels[splits.query].tolist()) == [1, 3, 3]
    assert splits.val_query.size == 2 and splits.train.size == 0  # both items held out
    (root / "Eval" / "list_eval_partition.txt").write_text(text.replace("11\n", "12\n", 1))
    with pytest.raises(ValueError, match="announces 12 images but lists 11"):
        inshop.load_inshop(tmp_path / "tfds2", root, image_size=16)


def test_every_registered_dataset_imports():
    for name in registry.names("dataset"):
        assert callable(registry.get("dataset", name)), name


def test_safe_unpickler_accepts_python2_style_arrays(tmp_path):
    path = tmp_path / "p"
    path.write_bytes(pickle.dumps((np.arange(4, dtype=np.float64), [1, 2]), protocol=2))
    x, y = builder_lib.load_pickle(path, "t", "x")
    np.testing.assert_array_equal(x, np.arange(4)) and (y == [1, 2])
