"""Tiny data sets in the real on-disk formats, so the examples run with nothing downloaded.

* CIFAR-10 / CIFAR-100: the "python version" pickles torchvision reads
  (``cifar-10-batches-py/data_batch_1..5, test_batch, batches.meta``;
  ``cifar-100-python/train, test, meta``).
* DVS128 Gesture / CIFAR10-DVS: SpikingJelly's converted-events layout
  (``events_np/{train,test}/{0..10}/*.npz`` and ``events_np/<class name>/*.npz``), each file with
  arrays ``t, x, y, p``.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                   "truck"]


def _images(rng, count: int) -> np.ndarray:
    # Rows of 3072 uint8: 1024 red, 1024 green, 1024 blue values, as in the real batches.
    return rng.integers(0, 256, size=(count, 3 * 32 * 32), dtype=np.uint8)


def _dump(path: Path, obj) -> None:
    with open(path, "wb") as file:
        pickle.dump(obj, file, protocol=2)


def make_cifar10(root, per_batch: int = 4, test_count: int = 4, seed: int = 0) -> Path:
    """Five training batches of ``per_batch`` images and one test batch, labels cycling 0..9."""
    rng = np.random.default_rng(seed)
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(1, 6):
        labels = [(index + i) % 10 for i in range(per_batch)]
        _dump(folder / f"data_batch_{index}",
              {"batch_label": f"training batch {index} of 5", "labels": labels,
               "data": _images(rng, per_batch), "filenames": [f"img_{index}_{i}.png" for i in range(per_batch)]})
    _dump(folder / "test_batch",
          {"batch_label": "testing batch 1 of 1", "labels": [i % 10 for i in range(test_count)],
           "data": _images(rng, test_count), "filenames": [f"test_{i}.png" for i in range(test_count)]})
    _dump(folder / "batches.meta", {"label_names": CIFAR10_CLASSES, "num_cases_per_batch": per_batch,
                                    "num_vis": 3072})
    return Path(root)


def make_cifar100(root, train_count: int = 8, test_count: int = 4, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    folder = Path(root) / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    for name, count in (("train", train_count), ("test", test_count)):
        fine = [int(v) for v in rng.integers(0, 100, size=count)]
        _dump(folder / name, {"filenames": [f"{name}_{i}.png" for i in range(count)],
                              "batch_label": f"{name} batch", "fine_labels": fine,
                              "coarse_labels": [v // 5 for v in fine], "data": _images(rng, count)})
    _dump(folder / "meta", {"fine_label_names": [f"class_{i}" for i in range(100)],
                            "coarse_label_names": [f"super_{i}" for i in range(20)]})
    return Path(root)


def _write_events(path: Path, rng, count: int, size: int = 128) -> None:
    t = np.sort(rng.integers(0, 1_000_000, size=count)).astype(np.int64)
    np.savez(path, t=t, x=rng.integers(0, size, size=count).astype(np.uint16),
             y=rng.integers(0, size, size=count).astype(np.uint16),
             p=rng.integers(0, 2, size=count).astype(np.uint8))


def make_dvs128_gesture(root, per_class: int = 1, events: int = 400, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for split in ("train", "test"):
        for label in range(11):
            folder = Path(root) / "events_np" / split / str(label)
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                _write_events(folder / f"user{i:02d}_lab_{label}.npz", rng, events)
    return Path(root)


def make_cifar10_dvs(root, per_class: int = 2, events: int = 400, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for name in CIFAR10_CLASSES:
        folder = Path(root) / "events_np" / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            _write_events(folder / f"cifar10_{name}_{i}.npz", rng, events)
    return Path(root)


# ---- MNIST family: the original gzipped idx files ------------------------------------------------
MNIST_FILES = {True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
               False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def idx_bytes(array: np.ndarray) -> bytes:
    """An idx file's bytes: two zero bytes, the type byte (0x08 = uint8), the number of dimensions,
    each dimension as a big-endian uint32, then the data."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.tobytes()


def make_mnist_family(root, torchvision_name: str = None, train_count: int = 8, test_count: int = 4,
                      seed: int = 0, gzipped: bool = True) -> Path:
    """The four idx files of MNIST or Fashion-MNIST with tiny splits, labels cycling 0..9.

    ``torchvision_name`` (``"MNIST"`` or ``"FashionMNIST"``) puts them in torchvision's layout
    ``root/<name>/raw``; otherwise they lie in ``root`` itself, as in Debian's package.
    """
    import gzip

    rng = np.random.default_rng(seed)
    folder = Path(root) / torchvision_name / "raw" if torchvision_name else Path(root)
    folder.mkdir(parents=True, exist_ok=True)
    for train, count in ((True, train_count), (False, test_count)):
        images = rng.integers(0, 256, size=(count, 28, 28), dtype=np.uint8)
        labels = np.arange(count, dtype=np.uint8) % 10
        for stem, array in zip(MNIST_FILES[train], (images, labels)):
            data = idx_bytes(array)
            if gzipped:
                (folder / f"{stem}.gz").write_bytes(gzip.compress(data))
            else:
                (folder / stem).write_bytes(data)
    return Path(root)


# ---- damaged files, as a bad download or a full disk leaves them ---------------------------------
def rewrite_cifar10_batch(root, name: str = "data_batch_1", **entries) -> None:
    """Replace entries (``labels``, ``data``) of one CIFAR-10 batch of :func:`make_cifar10`."""
    path = Path(root) / "cifar-10-batches-py" / name
    with open(path, "rb") as file:
        batch = pickle.load(file, encoding="latin1")
    batch.update(entries)
    _dump(path, batch)


def truncate(path, keep: float = 0.5) -> None:
    """Cut a file to ``keep`` of its length."""
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[:int(len(data) * keep)])
