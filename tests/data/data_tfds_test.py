"""TFDS built-in datasets through the `ReleaseSource` interface (needs TensorFlow; skipped
without it). Uses TFDS's mock data, so nothing is downloaded."""

import numpy as np
import pytest

from dpq_jax.data import tfds_source

pytestmark = pytest.mark.tfds


def test_tfds_cifar10_as_release_source(tmp_path):
    pytest.importorskip("tensorflow")
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=12, data_dir=str(tmp_path)):
        src = tfds_source.load_tfds("cifar10", tmp_path, download=True)
    assert src.images.dtype == np.uint8 and src.images.shape[1:] == (32, 32, 3)
    assert src.partition_names == ("train", "test") and src.num_classes == 10
    assert len(src) == 24 and src.partition_indices()["test"].tolist() == list(range(12, 24))


def test_without_tensorflow_the_error_says_what_to_install():
    try:
        import tensorflow  # noqa: F401
    except ImportError:
        with pytest.raises(ValueError, match="pip install 'dpq_jax\\[tf\\]'"):
            tfds_source.load_tfds("cifar10")
    else:
        pytest.skip("TensorFlow is installed")
