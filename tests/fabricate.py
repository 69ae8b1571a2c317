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
