"""The MNIST-family idx reader on tiny fabricated files (gzipped and raw, both layouts)."""
import gzip
import struct

import numpy as np
import pytest
import torch

from saf_examples import idx


def _idx_bytes(array: np.ndarray, type_code: int = 0x08) -> bytes:
    header = struct.pack(">BBBB", 0, 0, type_code, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def _write(path, array, gz: bool, type_code: int = 0x08):
    data = _idx_bytes(array, type_code)
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        with gzip.open(f"{path}.gz", "wb") as file:
            file.write(data)
    else:
        path.write_bytes(data)


def _split(folder, train: bool, count: int, gz: bool, seed: int = 0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(count, 28, 28), dtype=np.uint8)
    labels = (np.arange(count) % 10).astype(np.uint8)
    prefix = "train" if train else "t10k"
    _write(folder / f"{prefix}-images-idx3-ubyte", images, gz)
    _write(folder / f"{prefix}-labels-idx1-ubyte", labels, gz)
    return images, labels


@pytest.mark.parametrize("gz", [True, False])
def test_read_idx_round_trip(tmp_path, gz):
    array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    _write(tmp_path / "a-idx3-ubyte", array, gz)
    read = idx.read_idx(tmp_path / ("a-idx3-ubyte.gz" if gz else "a-idx3-ubyte"))
    assert read.dtype == np.uint8 and read.shape == (2, 3, 4)
    np.testing.assert_array_equal(read, array)


def test_read_idx_big_endian_types(tmp_path):
    values = np.array([[1.5, -2.0], [3.25, 1e6]], dtype=np.float32)
    _write(tmp_path / "f", values, gz=False, type_code=0x0D)
    read = idx.read_idx(tmp_path / "f")
    assert read.dtype == np.float32
    np.testing.assert_array_equal(read, values)
    ints = np.array([1, -70000, 2 ** 30], dtype=np.int32)
    _write(tmp_path / "i", ints, gz=False, type_code=0x0C)
    np.testing.assert_array_equal(idx.read_idx(tmp_path / "i"), ints)


def test_corrupt_files_raise_clear_errors(tmp_path):
    bad_magic = tmp_path / "bad"
    bad_magic.write_bytes(b"\x12\x34\x08\x01" + b"\x00" * 8)
    with pytest.raises(idx.IdxFormatError, match="magic number 0x12340801"):
        idx.read_idx(bad_magic)
    truncated = tmp_path / "short"
    truncated.write_bytes(_idx_bytes(np.zeros((3, 28, 28), np.uint8))[:-5])
    with pytest.raises(idx.IdxFormatError, match=r"shape \(3, 28, 28\).*truncated"):
        idx.read_idx(truncated)
    raw_named_gz = tmp_path / "raw.gz"
    raw_named_gz.write_bytes(_idx_bytes(np.zeros(4, np.uint8)))
    with pytest.raises(idx.IdxFormatError, match="not gzip-compressed"):
        idx.read_idx(raw_named_gz)
    with pytest.raises(FileNotFoundError):
        idx.read_idx(tmp_path / "absent")


@pytest.mark.parametrize("layout,gz", [("root", True), ("torchvision", False)])
def test_load_mnist_family(tmp_path, layout, gz):
    folder = tmp_path if layout == "root" else tmp_path / "MNIST" / "raw"
    images, labels = _split(folder, train=True, count=12, gz=gz)
    _split(folder, train=False, count=5, gz=gz, seed=1)
    x, y = idx.load_mnist_family("mnist", tmp_path, train=True)
    assert x.dtype == torch.uint8 and tuple(x.shape) == (12, 28, 28)
    assert y.dtype == torch.int64 and y.tolist() == labels.tolist()
    assert torch.equal(x, torch.from_numpy(images))
    x_test, y_test = idx.load_mnist_family("mnist", tmp_path, train=False)
    assert tuple(x_test.shape) == (5, 28, 28) and y_test.tolist() == [0, 1, 2, 3, 4]


def test_fashion_mnist_torchvision_layout(tmp_path, monkeypatch):
    monkeypatch.setattr(idx, "DEBIAN_FASHION_MNIST", tmp_path / "no-debian")
    _split(tmp_path / "FashionMNIST" / "raw", train=False, count=3, gz=True)
    x, y = idx.load_mnist_family("fashion_mnist", tmp_path, train=False)
    assert tuple(x.shape) == (3, 28, 28) and y.tolist() == [0, 1, 2]


def test_missing_files_message(tmp_path, monkeypatch):
    monkeypatch.setattr(idx, "DEBIAN_FASHION_MNIST", tmp_path / "no-debian")
    with pytest.raises(idx.IdxDataMissing) as info:
        idx.load_mnist_family("fashion_mnist", tmp_path / "data", train=True)
    message = str(info.value)
    assert isinstance(info.value, FileNotFoundError)
    assert "train-images-idx3-ubyte" in message
    assert str(tmp_path / "data" / "FashionMNIST" / "raw") in message
    assert str(tmp_path / "no-debian") in message
    assert "apt-get install dataset-fashion-mnist" in message and "-download" in message
    with pytest.raises(idx.IdxDataMissing, match="-download") as info:
        idx.load_mnist_family("mnist", tmp_path, train=False)
    assert "apt-get" not in str(info.value)


def test_mismatched_images_and_labels(tmp_path):
    _split(tmp_path, train=True, count=4, gz=False)
    _write(tmp_path / "train-labels-idx1-ubyte", np.zeros(3, np.uint8), gz=False)
    with pytest.raises(idx.IdxFormatError, match="4 images but .* 3 labels"):
        idx.load_mnist_family("mnist", tmp_path, train=True)


def test_unknown_name():
    with pytest.raises(ValueError, match="'mnist', 'fashion_mnist'"):
        idx.load_mnist_family("cifar10", None)


@pytest.mark.parametrize("dims", [(2**16, 2**16, 2**16, 2**16), (2**32 - 1, 2**32 - 1, 2**32 - 1)])
def test_header_whose_size_overflows_int64_is_a_format_error(tmp_path, dims):
    """The product of the dimensions is taken in Python integers: in int64 2**64 wraps to 0, and an
    empty data section then matched the header."""
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(struct.pack(">BBBB", 0, 0, 0x08, len(dims)) + struct.pack(f">{len(dims)}I", *dims))
    with pytest.raises(idx.IdxFormatError, match="the header announces shape"):
        idx.read_idx(path)


def test_a_folder_given_is_the_only_folder_read(tmp_path, monkeypatch):
    """The files in Debian's folder never stand in for a data folder that lacks them; without a
    folder, Fashion-MNIST is read from Debian's."""
    debian = tmp_path / "debian"
    _split(debian, train=False, count=2, gz=True)
    monkeypatch.setattr(idx, "DEBIAN_FASHION_MNIST", debian)
    with pytest.raises(idx.IdxDataMissing) as info:
        idx.load_mnist_family("fashion_mnist", tmp_path / "mistyped", train=False)
    assert f"searched: {tmp_path / 'mistyped'}, {tmp_path / 'mistyped' / 'FashionMNIST' / 'raw'}." \
        in str(info.value)
    x, _ = idx.load_mnist_family("fashion_mnist", None, train=False)
    assert tuple(x.shape) == (2, 28, 28)
    assert idx.candidate_folders("mnist", None) == []
