"""IDX parsing from the header, on the real Fashion-MNIST files, and every way such a file can be bad."""

import gzip
from pathlib import Path

import numpy as np
import pytest

from vaefast.data import DataError, load_dataset
from vaefast.data.idx import read_idx

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "fashion-mnist"
EMBEDDED = Path(__file__).resolve().parents[1] / "vaefast" / "data" / "fashion_mnist"


def test_embedded_split_is_seeded_and_disjoint():
    a, b = load_dataset(None, seed=0), load_dataset(None, seed=0)
    assert a.train.shape == (9000, 1, 28, 28) and a.test.shape == (1000, 1, 28, 28)
    assert np.array_equal(a.test.numpy(), b.test.numpy())
    assert a.train.dtype.is_floating_point is False
    labels = np.bincount(np.concatenate([a.train_labels.numpy(), a.test_labels.numpy()]))
    assert labels.tolist() == [1000] * 10  # Fashion-MNIST's t10k has 1,000 images per class


@pytest.mark.skipif(not SHARED.exists(), reason="../shared data not present")
def test_full_fashion_mnist_directory():
    d = load_dataset(str(SHARED))
    assert d.train.shape == (60000, 1, 28, 28) and d.test.shape == (10000, 1, 28, 28)
    assert int(d.train[0].float().mean()) > 0


def _raw():
    return gzip.decompress((EMBEDDED / "t10k-images-idx3-ubyte.gz").read_bytes())


def test_plain_and_gzip_agree(tmp_path):
    plain = tmp_path / "images-idx3-ubyte"
    plain.write_bytes(b"\x00\x00\x08\x03" + (5).to_bytes(4, "big") + _raw()[8:16] + _raw()[16:16 + 5 * 784])
    arr = read_idx(plain)
    assert arr.shape == (5, 28, 28) and arr.dtype == np.uint8
    assert np.array_equal(arr, read_idx(EMBEDDED / "t10k-images-idx3-ubyte.gz")[:5])


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda b: b"\x12\x34" + b[2:], "wrong magic number 0x12340803"),
        (lambda b: b[:2] + b"\x07" + b[3:], "unknown IDX dtype code 0x07"),
        (lambda b: b[:10], "truncated header"),
        (lambda b: b[:-100], "truncated or corrupt"),
        (lambda b: b[:3], "too short"),
    ],
)
def test_bad_idx_files_are_named(tmp_path, mutate, match):
    bad = tmp_path / "bad-idx3-ubyte"
    bad.write_bytes(mutate(_raw()))
    with pytest.raises(DataError, match=match) as info:
        read_idx(bad)
    assert str(bad) in str(info.value)


def test_corrupt_gzip_is_named(tmp_path):
    bad = tmp_path / "bad-idx3-ubyte.gz"
    data = (EMBEDDED / "t10k-images-idx3-ubyte.gz").read_bytes()
    bad.write_bytes(data[: len(data) // 3])
    with pytest.raises(DataError, match=r"corrupt or truncated gzip file .*bad-idx3-ubyte\.gz"):
        read_idx(bad)


def test_missing_paths(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_dataset(str(tmp_path / "nope"))
    with pytest.raises(DataError, match="holds no .png, .jpg or .jpeg files"):
        load_dataset(str(tmp_path))
