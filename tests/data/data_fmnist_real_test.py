"""Fashion-MNIST built from the real IDX files (Debian's dataset-fashion-mnist); skipped when
they are absent. One build (about 20 s on 2 cores), then the `fmnist` protocol on it."""

import pathlib

import numpy as np
import pytest

from dpq_jax.data import fashion_mnist, protocols

REAL = pathlib.Path(fashion_mnist.DEBIAN_DIR)
pytestmark = pytest.mark.skipif(
    not (REAL / "train-images-idx3-ubyte.gz").exists(),
    reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)",
)


def test_real_fashion_mnist_build_and_fmnist_protocol(tmp_path):
    src = fashion_mnist.load_fashion_mnist(data_dir=tmp_path)
    assert src.images.shape == (70000, 28, 28, 1) and src.images.dtype == np.uint8
    assert src.partition_names == ("train", "test")
    labels = np.asarray(src.labels)
    # Fashion-MNIST is balanced: 6,000 training and 1,000 test images per class.
    assert np.bincount(labels[:60000]).tolist() == [6000] * 10
    assert np.bincount(labels[60000:]).tolist() == [1000] * 10
    # The stored images are the file's bytes (read here independently of the builder).
    raw = fashion_mnist.read_idx(REAL / "t10k-images-idx3-ubyte.gz", 3)
    np.testing.assert_array_equal(src.images[60000:, ..., 0], raw)
    splits = protocols.get_splits("fmnist", src.labels, seed=0, split_dir=tmp_path / "splits")
    assert protocols.check_published(splits) is True
    assert splits.query.min() >= 60000 and splits.database.size == 60000
    # A second load comes from the cache, not a rebuild.
    again = fashion_mnist.load_fashion_mnist(data_dir=tmp_path)
    np.testing.assert_array_equal(again.images[:100], src.images[:100])
