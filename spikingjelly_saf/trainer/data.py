r"""
Datasets: CIFAR-10/100 through torchvision, DVS128 Gesture and CIFAR10-DVS through SpikingJelly as
``T`` frames per sample. Missing or partial data raises :class:`DataMissingError`, whose message names
the path looked at, the files expected and how to get them.
"""

from __future__ import annotations

import argparse
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torchvision
from torch.utils.data import Dataset, Subset

__all__ = ["DataMissingError", "Cutout", "DatasetInfo", "DATASETS", "build_datasets", "to_sequence"]


class DataMissingError(RuntimeError):
    """The dataset is not where the run looked, or only part of it is."""


@dataclass(frozen=True)
class DatasetInfo:
    num_classes: int
    in_channels: int
    #: Samples are frame sequences ``[T, C, H, W]`` rather than images repeated over time.
    sequence: bool


DATASETS = {
    "cifar10": DatasetInfo(10, 3, False),
    "cifar100": DatasetInfo(100, 3, False),
    "dvs128_gesture": DatasetInfo(11, 2, True),
    "cifar10_dvs": DatasetInfo(10, 2, True),
}

_CIFAR_MEAN_STD = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}


class Cutout:
    """Zero one random ``length`` x ``length`` square (clipped at the border) of a ``[C, H, W]`` tensor."""

    def __init__(self, length: int):
        self.length = int(length)

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        height, width = image.shape[-2:]
        cy = int(torch.randint(height, ()))
        cx = int(torch.randint(width, ()))
        half = self.length // 2
        image = image.clone()
        image[..., max(0, cy - half):cy + half, max(0, cx - half):cx + half] = 0.0
        return image

    def __repr__(self) -> str:
        return f"Cutout(length={self.length})"


def to_sequence(x: torch.Tensor, steps: int, sequence: bool) -> torch.Tensor:
    """A minibatch as ``[B, T, *]``: images repeated over ``steps``, frame sequences as they are."""
    if sequence:
        if x.shape[1] != steps:
            raise ValueError(f"frame sequences have {x.shape[1]} frames, expected T={steps}.")
        return x
    return x.unsqueeze(1).expand(x.shape[0], steps, *x.shape[1:])


# ---- CIFAR ---------------------------------------------------------------------------------------
_CIFAR_FILES = {
    "cifar10": ("cifar-10-batches-py",
                [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]),
    "cifar100": ("cifar-100-python", ["train", "test", "meta"]),
}


class _PresenceChecked:
    # torchvision's check hashes every file and, on failure, only says "not found or corrupted";
    # the files were checked one by one (with their names in the message) before this is built,
    # and -download still goes through torchvision's hash check.
    def _check_integrity(self) -> bool:
        return True

    def _load_meta(self) -> None:
        with open(Path(self.root) / self.base_folder / self.meta["filename"], "rb") as file:
            data = pickle.load(file, encoding="latin1")
        self.classes = data[self.meta["key"]]
        self.class_to_idx = {name: index for index, name in enumerate(self.classes)}


# Module-level classes, so data-loading workers started with "spawn" can pickle them.
class PresenceCheckedCIFAR10(_PresenceChecked, torchvision.datasets.CIFAR10):
    pass


class PresenceCheckedCIFAR100(_PresenceChecked, torchvision.datasets.CIFAR100):
    pass


def _cifar_classes(name: str):
    if name == "cifar10":
        return torchvision.datasets.CIFAR10, PresenceCheckedCIFAR10
    return torchvision.datasets.CIFAR100, PresenceCheckedCIFAR100


def _missing_cifar_message(name: str, root: Path, missing) -> str:
    folder, files = _CIFAR_FILES[name]
    archive = "cifar-10-python.tar.gz" if name == "cifar10" else "cifar-100-python.tar.gz"
    return (
        f"{name.upper().replace('CIFAR', 'CIFAR-')} data is missing or incomplete.\n"
        f"  looked in: {root / folder}\n"
        f"  missing:   {', '.join(missing)}\n"
        f"  expected:  {', '.join(files)} (the python version of the data set)\n"
        f"  to get it: rerun with -download (needs a network), or download {archive} from "
        f"https://www.cs.toronto.edu/~kriz/cifar.html and extract it into {root}."
    )


def _cifar_datasets(name: str, args: argparse.Namespace):
    import torchvision.transforms as transforms

    root = Path(args.data_dir)
    folder, files = _CIFAR_FILES[name]
    base, checked = _cifar_classes(name)
    if args.download:
        try:
            base(str(root), train=True, download=True)
        except OSError as error:  # URLError and socket errors are OSErrors
            raise DataMissingError(
                f"-download could not fetch {name} into {root} ({error}).\n"
                f"{_missing_cifar_message(name, root, files)}") from None
    missing = [f for f in files if not (root / folder / f).is_file()]
    if missing:
        raise DataMissingError(_missing_cifar_message(name, root, missing))
    mean, std = _CIFAR_MEAN_STD[name]
    train_steps = [transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(),
                   transforms.ToTensor(), transforms.Normalize(mean, std)]
    if args.cutout > 0:
        train_steps.append(Cutout(args.cutout))
    test_steps = [transforms.ToTensor(), transforms.Normalize(mean, std)]
    try:
        train = checked(str(root), train=True, transform=transforms.Compose(train_steps))
        test = checked(str(root), train=False, transform=transforms.Compose(test_steps))
    except (pickle.UnpicklingError, EOFError, KeyError, ValueError) as error:
        raise DataMissingError(
            f"{root / folder} holds unreadable files ({type(error).__name__}: {error}).\n"
            f"  expected:  {', '.join(files)}\n"
            f"  to fix it: delete {root / folder} and rerun with -download, or extract the archive "
            "from https://www.cs.toronto.edu/~kriz/cifar.html again.") from None
    return train, test


# ---- DVS -----------------------------------------------------------------------------------------
def _dvs_layout(name: str):
    if name == "dvs128_gesture":
        classes = [str(i) for i in range(11)]
        return [f"{split}/{c}" for split in ("train", "test") for c in classes]
    from spikingjelly.datasets.cifar10_dvs import CIFAR10DVS_CLASS_NAMES
    return list(CIFAR10DVS_CLASS_NAMES)


def _dvs_download_files(name: str):
    if name == "dvs128_gesture":
        from spikingjelly.datasets.dvs128_gesture import DVS128Gesture as cls
    else:
        from spikingjelly.datasets.cifar10_dvs import CIFAR10DVS as cls
    return [entry[0] for entry in cls.resource_url_md5()]


_DVS_HOWTO = {
    "dvs128_gesture": "download DvsGesture.tar.gz, gesture_mapping.csv, LICENSE.txt and README.txt "
                      "by hand from https://research.ibm.com/interactive/dvsgesture/ (IBM's terms "
                      "need a click) into {root}/download; SpikingJelly converts them on the first run",
    "cifar10_dvs": "rerun with -download (needs a network; SpikingJelly fetches the ten class zips "
                   "from figshare), or put airplane.zip ... truck.zip from "
                   "https://figshare.com/articles/dataset/CIFAR10-DVS_New/4724671 into {root}/download",
}


def _check_dvs(name: str, args: argparse.Namespace) -> None:
    root = Path(args.data_dir)
    events = root / "events_np"
    howto = _DVS_HOWTO[name].format(root=root)
    building = events.with_name("events_np.building")
    if building.exists():
        raise DataMissingError(
            f"An earlier conversion of {root / 'download'} into {events} did not finish "
            f"(marker {building}).\n  to fix it: delete {events} and {building}, then rerun.")
    if events.is_dir():
        layout = _dvs_layout(name)
        missing = [d for d in layout if not any((events / d).glob("*.npz"))]
        if missing:
            raise DataMissingError(
                f"{name} events are incomplete.\n  looked in: {events}\n"
                f"  missing:   .npz files in {', '.join(missing)}\n"
                f"  expected:  events_np/<{'split/class' if name == 'dvs128_gesture' else 'class'}>/"
                f"*.npz with arrays t, x, y, p\n  to fix it: delete {events} and {howto}.")
        return
    download = root / "download"
    files = _dvs_download_files(name)
    missing = [f for f in files if not (download / f).is_file()]
    if missing and not (args.download and name == "cifar10_dvs"):
        raise DataMissingError(
            f"{name} data is missing.\n  looked in: {events} (converted events) and {download} "
            f"(archives)\n  missing:   {', '.join(missing)}\n  to get it: {howto}.")


def _dvs_datasets(name: str, args: argparse.Namespace):
    _check_dvs(name, args)
    frames = dict(data_type="frame", frames_number=args.T, split_by="number")
    if name == "dvs128_gesture":
        from spikingjelly.datasets.dvs128_gesture import DVS128Gesture

        return (DVS128Gesture(args.data_dir, train=True, **frames),
                DVS128Gesture(args.data_dir, train=False, **frames))
    from spikingjelly.datasets.cifar10_dvs import CIFAR10DVS

    dataset = CIFAR10DVS(args.data_dir, **frames)
    return seeded_class_split(dataset, args.train_split, args.seed)


def seeded_class_split(dataset: Dataset, train_fraction: float, seed: int):
    """Per class, a seeded random ``train_fraction`` of the samples for training, the rest for test.

    Unlike ``split_to_train_test_set(random_split=True)`` it draws from its own generator, so the
    split depends on ``seed`` alone and leaves the global NumPy state untouched.
    """
    if not 0.0 < train_fraction < 1.0:
        raise ValueError(f"-train-split must be in (0, 1), got {train_fraction}.")
    labels = np.asarray([target for _, target in dataset.samples])
    generator = np.random.default_rng(seed)
    train, test = [], []
    for label in np.unique(labels):
        indices = generator.permutation(np.flatnonzero(labels == label))
        # Every class with two or more samples keeps at least one on each side.
        cut = int(round(train_fraction * len(indices)))
        if len(indices) >= 2:
            cut = min(max(cut, 1), len(indices) - 1)
        train.extend(indices[:cut].tolist())
        test.extend(indices[cut:].tolist())
    return Subset(dataset, sorted(train)), Subset(dataset, sorted(test))


def build_datasets(args: argparse.Namespace):
    """``(train_set, test_set, info)`` for ``args.dataset``."""
    if args.dataset not in DATASETS:
        raise ValueError(f"-dataset {args.dataset!r} is unknown; choose one of {', '.join(DATASETS)}.")
    if args.dataset in _CIFAR_FILES:
        train, test = _cifar_datasets(args.dataset, args)
    else:
        train, test = _dvs_datasets(args.dataset, args)
    for split, subset in (("training", train), ("test", test)):
        if len(subset) == 0:
            raise DataMissingError(f"the {split} split of {args.dataset} in {args.data_dir} is empty.")
    return train, test, DATASETS[args.dataset]
