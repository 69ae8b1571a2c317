r"""
Datasets: CIFAR-10/100 through torchvision, MNIST and Fashion-MNIST from their gzipped idx files read
in place, DVS128 Gesture and CIFAR10-DVS through SpikingJelly as ``T`` frames per sample. Missing,
partial or malformed data raises :class:`DataMissingError`, whose message names the path looked at,
what is wrong and how to fix it.
"""

from __future__ import annotations

import argparse
import numbers
import os
import pickle
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torchvision
from torch.utils.data import Dataset, Subset

__all__ = ["DataMissingError", "Cutout", "DatasetInfo", "DATASETS", "build_datasets", "to_sequence",
           "ImageTensorDataset", "check_event_file", "read_cifar_pickle", "CifarPickleError",
           "SafeCIFAR10", "SafeCIFAR100", "data_fingerprint", "default_data_dir"]


class DataMissingError(RuntimeError):
    """The dataset is not where the run looked, only part of it is, or a file of it is malformed."""


@dataclass(frozen=True)
class DatasetInfo:
    num_classes: int
    in_channels: int
    #: Samples are frame sequences ``[T, C, H, W]`` rather than images repeated over time.
    sequence: bool


DATASETS = {
    "cifar10": DatasetInfo(10, 3, False),
    "cifar100": DatasetInfo(100, 3, False),
    "fashion_mnist": DatasetInfo(10, 1, False),
    "mnist": DatasetInfo(10, 1, False),
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


class CifarPickleError(pickle.UnpicklingError):
    """A CIFAR pickle that asks for anything but the plain types the real files hold."""


class _CifarUnpickler(pickle.Unpickler):
    """Unpickles only what the python version of CIFAR-10/100 holds: dicts, lists, str, bytes,
    numbers and NumPy arrays. Every other global (a function or class a crafted file would call
    to run code) is refused before anything of it runs."""

    #: The globals a NumPy array (and, in protocol-2 pickles written by Python 3, a bytes object)
    #: is rebuilt with; nothing else is ever looked up.
    ALLOWED = frozenset({
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
    })

    def find_class(self, module: str, name: str):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise CifarPickleError(
            f"it asks for the Python object {module}.{name}; a CIFAR file holds only dicts, lists, "
            "strings, bytes, numbers and NumPy arrays (unpickling anything else can run code)")


def _plain(value, depth: int = 0) -> bool:
    """Whether ``value`` is built only of the types a CIFAR file holds (arrays of numbers)."""
    if depth > 8:
        return False
    if isinstance(value, np.ndarray):
        return value.dtype.kind in "biuf"
    if isinstance(value, dict):
        return all(isinstance(k, (str, bytes)) and _plain(v, depth + 1) for k, v in value.items())
    if isinstance(value, list):
        return all(_plain(v, depth + 1) for v in value)
    return isinstance(value, (str, bytes, int, float))


def read_cifar_pickle(path) -> dict:
    """One file of the python version of CIFAR-10/100, read with :class:`_CifarUnpickler`
    (``encoding='latin1'`` as torchvision reads them); a dict whose keys are str."""
    with open(path, "rb") as file:
        try:
            entry = _CifarUnpickler(file, encoding="latin1").load()
        except CifarPickleError as error:
            raise CifarPickleError(f"{path}: {error}") from None
    if not isinstance(entry, dict):
        raise ValueError(f"it holds a {type(entry).__name__}, not a dict of data and labels")
    entry = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in entry.items()}
    if not _plain(entry):
        raise ValueError("it holds values other than lists, strings, numbers and numeric arrays")
    return entry


class _SafeCIFAR:
    """torchvision's CIFAR data set with its two readers replaced: every pickle goes through
    :func:`read_cifar_pickle` instead of ``pickle.load``, and torchvision's hash check (which on
    failure only says "not found or corrupted") is left to the file-by-file check made before this
    is built, whose message names the file. Everything else (``__getitem__``, transforms, the
    ``classes`` list) is torchvision's."""

    def __init__(self, root, train: bool = True, transform=None, target_transform=None):
        torchvision.datasets.VisionDataset.__init__(self, root, transform=transform,
                                                    target_transform=target_transform)
        self.train = train
        data, self.targets = [], []
        for file_name, _ in (self.train_list if train else self.test_list):
            entry = read_cifar_pickle(Path(self.root) / self.base_folder / file_name)
            data.append(entry["data"])
            self.targets.extend(entry["labels"] if "labels" in entry else entry["fine_labels"])
        self.data = np.vstack(data).reshape(-1, 3, 32, 32).transpose((0, 2, 3, 1))
        self._load_meta()

    def _check_integrity(self) -> bool:
        return True

    def _load_meta(self) -> None:
        data = read_cifar_pickle(Path(self.root) / self.base_folder / self.meta["filename"])
        self.classes = data[self.meta["key"]]
        self.class_to_idx = {name: index for index, name in enumerate(self.classes)}


# Module-level classes, so data-loading workers started with "spawn" can pickle them.
class SafeCIFAR10(_SafeCIFAR, torchvision.datasets.CIFAR10):
    """CIFAR-10 read with the restricted unpickler (:func:`read_cifar_pickle`)."""


class SafeCIFAR100(_SafeCIFAR, torchvision.datasets.CIFAR100):
    """CIFAR-100 read with the restricted unpickler (:func:`read_cifar_pickle`)."""


def _cifar_classes(name: str):
    if name == "cifar10":
        return torchvision.datasets.CIFAR10, SafeCIFAR10
    return torchvision.datasets.CIFAR100, SafeCIFAR100


def _download_cifar(base, root: Path) -> None:
    """Fetch the archive with torchvision's downloader (its MD5 checked) unless every file is
    there with torchvision's MD5; nothing is unpickled here."""
    from torchvision.datasets.utils import check_integrity, download_and_extract_archive

    folder = root / base.base_folder
    if all(check_integrity(str(folder / name), md5) for name, md5 in base.train_list + base.test_list):
        return
    download_and_extract_archive(base.url, str(root), filename=base.filename, md5=base.tgz_md5)


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
            _download_cifar(base, root)
        except (OSError, RuntimeError) as error:  # URLError is an OSError; a bad MD5 a RuntimeError
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
    except CifarPickleError as error:
        raise DataMissingError(
            f"{root / folder}: a file was refused: {error}.\n"
            f"  to fix it: delete {root / folder} and rerun with -download, or extract the archive "
            "from https://www.cs.toronto.edu/~kriz/cifar.html again; never use CIFAR files from an "
            "untrusted source.") from None
    except (pickle.UnpicklingError, EOFError, KeyError, ValueError, TypeError, IndexError,
            AttributeError, OverflowError, MemoryError, UnicodeDecodeError) as error:
        raise DataMissingError(
            f"{root / folder} holds unreadable files ({type(error).__name__}: {error}).\n"
            f"  expected:  {', '.join(files)}\n"
            f"  to fix it: delete {root / folder} and rerun with -download, or extract the archive "
            "from https://www.cs.toronto.edu/~kriz/cifar.html again.") from None
    for split, dataset in (("training", train), ("test", test)):
        _check_cifar_content(name, split, dataset, root / folder)
    return train, test


def _check_cifar_content(name: str, split: str, dataset, folder: Path) -> None:
    """Refuse what torchvision reads without complaint but cannot train: images that are not
    bytes, labels that are not class indices or not one per image."""
    files = ", ".join(entry[0] for entry in (dataset.train_list if split == "training"
                                             else dataset.test_list))
    howto = (f"  to fix it: delete {folder} and rerun with -download, or extract the archive from "
             "https://www.cs.toronto.edu/~kriz/cifar.html again.")
    data = dataset.data
    if data.dtype != np.uint8:
        raise DataMissingError(
            f"{folder}: {files} hold {data.dtype.name} pixels; the python version of {name} stores "
            f"every pixel as one byte (uint8, 0..255).\n{howto}")
    if len(dataset.targets) != len(data):
        raise DataMissingError(
            f"{folder}: {files} hold {len(data)} images but {len(dataset.targets)} labels; every "
            f"image needs one label.\n{howto}")
    classes = DATASETS[name].num_classes
    for index, label in enumerate(dataset.targets):
        if isinstance(label, bool) or not isinstance(label, numbers.Integral):
            raise DataMissingError(
                f"{folder}: {files} hold the label {label!r} ({type(label).__name__}) at sample "
                f"{index}; labels must be class indices 0..{classes - 1}.\n{howto}")
        if not 0 <= label < classes:
            raise DataMissingError(
                f"{folder}: {files} hold the label {label} at sample {index}, outside the "
                f"{classes} classes 0..{classes - 1} of {name}.\n{howto}")


# ---- MNIST and Fashion-MNIST -------------------------------------------------------------------
def default_data_dir(dataset: str):
    """The data folder a data set reads when -data-dir is not given, or ``None``: Debian's
    ``dataset-fashion-mnist`` folder for Fashion-MNIST."""
    from . import idx

    return str(idx.DEBIAN_FASHION_MNIST) if dataset == "fashion_mnist" else None

_MNIST_MEAN_STD = {"mnist": (0.1307, 0.3081), "fashion_mnist": (0.2860, 0.3530)}


class ImageTensorDataset(Dataset):
    """uint8 images ``[N, H, W]`` and int64 labels held in memory, served as normalised float
    ``[1, H, W]`` tensors (module level, so that spawned data-loading workers can pickle it)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, mean: float, std: float):
        self.images, self.labels, self.mean, self.std = images, labels, float(mean), float(std)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        image = self.images[index].unsqueeze(0).float().div_(255.0)
        return (image - self.mean) / self.std, int(self.labels[index])


def _mnist_family_datasets(name: str, args: argparse.Namespace):
    from . import idx

    root = Path(args.data_dir)
    if args.download:
        cls = (torchvision.datasets.MNIST if name == "mnist" else torchvision.datasets.FashionMNIST)
        try:
            for train in (True, False):
                # torchvision keeps the .gz files in root/<MNIST|FashionMNIST>/raw, where idx looks.
                cls(str(root), train=train, download=True)
        except (OSError, RuntimeError) as error:  # URLError is an OSError; bad checksums raise RuntimeError
            raise DataMissingError(f"-download could not fetch {name} into {root} ({error}).") from None
    try:
        splits = [idx.load_mnist_family(name, root, train=train) for train in (True, False)]
    except (idx.IdxDataMissing, idx.IdxFormatError) as error:
        raise DataMissingError(str(error)) from None
    mean, std = _MNIST_MEAN_STD[name]
    return tuple(ImageTensorDataset(images, labels, mean, std) for images, labels in splits)


# ---- DVS -----------------------------------------------------------------------------------------
def _dvs_layout(name: str):
    if name == "dvs128_gesture":
        classes = [str(i) for i in range(11)]
        return [f"{split}/{c}" for split in ("train", "test") for c in classes]
    from spikingjelly.datasets.cifar10_dvs import CIFAR10DVS_CLASS_NAMES
    return list(CIFAR10DVS_CLASS_NAMES)


def _dvs_download_files(name: str):
    return [entry[0] for entry in _dvs_class(name).resource_url_md5()]


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


def _dvs_class(name: str):
    if name == "dvs128_gesture":
        from spikingjelly.datasets.dvs128_gesture import DVS128Gesture

        return DVS128Gesture
    from spikingjelly.datasets.cifar10_dvs import CIFAR10DVS

    return CIFAR10DVS


#: An unfinished conversion whose files changed more recently than this may still be running in a
#: process that is not one of this trainer's (SpikingJelly's marker records no owner).
STALE_MARKER_AGE_S = 120.0


def check_event_file(path, height: int = 128, width: int = 128) -> "str | None":
    """What is wrong with one SpikingJelly events file (``.npz`` with 1-D arrays ``t, x, y, p`` of
    equal length, pixels inside ``height`` x ``width``), or ``None`` when it is sound."""
    import zipfile

    try:
        with np.load(path, allow_pickle=False) as archive:
            if not isinstance(archive, np.lib.npyio.NpzFile):
                return "is a single .npy array, not an .npz archive of t, x, y, p"
            missing = [key for key in "txyp" if key not in archive.files]
            if missing:
                return (f"lacks the array(s) {', '.join(missing)} (it holds "
                        f"{', '.join(archive.files) or 'nothing'})")
            arrays = {key: archive[key] for key in "txyp"}
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as error:
        return f"cannot be read ({type(error).__name__}: {error}); it is truncated or not an .npz file"
    shapes = {key: array.shape for key, array in arrays.items()}
    if any(len(shape) != 1 for shape in shapes.values()) or len(set(shapes.values())) != 1:
        return f"has arrays of shapes {shapes}; t, x, y and p must be 1-D of one length"
    times = arrays["t"]
    if times.dtype.kind not in "biuf" or (times.dtype.kind == "f" and not np.isfinite(times).all()):
        return (f"has t values of type {times.dtype} that are not all finite numbers; timestamps must "
                "be finite (SpikingJelly orders and splits events by them)")
    for key, limit in (("x", width), ("y", height), ("p", 2)):
        values = arrays[key]
        if values.dtype.kind not in "biuf":
            return f"has {key} values of type {values.dtype}; x, y and p must be integers"
        if values.dtype.kind == "f" and values.size and not (
                np.isfinite(values).all() and (values == np.floor(values)).all()):
            bad = values[~(np.isfinite(values) & (values == np.floor(values)))][0]
            return (f"has the {key} value {bad}: pixel coordinates and polarities must be whole "
                    "numbers (SpikingJelly would truncate it into another pixel without a word)")
        if values.size and (values.min() < 0 or values.max() >= limit):
            return f"has {key} values in {values.min()}..{values.max()}, outside 0..{limit - 1}"
    return None


def _bad_event_files(events: Path, height: int, width: int, limit: int = 3) -> list:
    bad = []
    for path in sorted(events.rglob("*.npz")):
        problem = check_event_file(path, height, width)
        if problem is not None:
            bad.append(f"{path} {problem}")
            if len(bad) == limit:
                break
    return bad


def _latest_write(*paths: Path) -> float:
    latest = 0.0
    for path in paths:
        if not path.exists():
            continue
        latest = max(latest, path.stat().st_mtime)
        if path.is_dir():
            for folder, _, files in os.walk(path):
                for file in files:
                    try:
                        latest = max(latest, (Path(folder) / file).stat().st_mtime)
                    except OSError:  # removed while walking
                        pass
    return latest


class _ConversionLock:
    """An exclusive lock on ``<data-dir>/.frames.lock`` while frames are converted, so that a
    second run of this trainer waits instead of meeting a half-built folder. ``fcntl`` locks vanish
    with their process, so a killed conversion never leaves this lock behind."""

    def __init__(self, root: Path):
        self.path = root / ".frames.lock"
        self.file = None

    def __enter__(self):
        try:
            import fcntl
        except ImportError:  # not POSIX: convert without waiting for other runs
            return self
        try:
            self.file = open(self.path, "a")
        except OSError as error:
            raise DataMissingError(
                f"the events in {self.path.parent} must be converted into frames once for this T, "
                f"but the folder cannot be written ({error.strerror}: {self.path}).\n  to fix it: "
                "make the folder writable for one run, or copy the data set to a writable "
                "-data-dir.") from None
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"waiting for another process converting events into frames in {self.path.parent} "
                  f"(it holds {self.path}) ...", flush=True)
            fcntl.flock(self.file, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc) -> None:
        if self.file is not None:
            self.file.close()  # releases the lock


def _clear_stale_marker(frames: Path, marker: Path, events: Path) -> None:
    """Remove the unfinished frame conversion an earlier run left behind, unless it may be live."""
    age = time.time() - _latest_write(frames, marker)
    if age < STALE_MARKER_AGE_S:
        raise DataMissingError(
            f"{frames} is being converted from {events}, or was until {age:.0f} s ago "
            f"(SpikingJelly's marker {marker}).\n  to fix it: wait for the other process to finish; "
            f"if none is running, delete {frames} and {marker}, then rerun.")
    # Frames are derived from the events and rebuilt from them, so removing a partial set loses nothing.
    shutil.rmtree(frames, ignore_errors=True)
    marker.unlink(missing_ok=True)
    print(f"note: removed {frames}, a frame conversion an earlier run did not finish (marker "
          f"{marker}, last written {age / 60:.0f} min ago); converting again.", flush=True)


def _dvs_datasets(name: str, args: argparse.Namespace):
    _check_dvs(name, args)
    root = Path(args.data_dir)
    cls = _dvs_class(name)
    frames_options = dict(data_type="frame", frames_number=args.T, split_by="number")

    def build():
        if name == "dvs128_gesture":
            return cls(args.data_dir, train=True, **frames_options), cls(args.data_dir, train=False,
                                                                          **frames_options)
        return seeded_class_split(cls(args.data_dir, **frames_options), args.train_split, args.seed)

    frames = root / f"frames_number_{args.T}_split_by_number"
    marker = frames.with_name(f"{frames.name}.building")
    if frames.is_dir() and not marker.exists():
        return build()
    events = root / "events_np"
    with _ConversionLock(root):
        if marker.exists():
            _clear_stale_marker(frames, marker, events)
        if frames.is_dir():  # another run converted while this one waited
            return build()
        height, width = cls.get_H_W()
        # SpikingJelly folds pixels outside the frame into other pixels without a word, so every
        # file is checked once, before the only conversion for this T.
        bad = _bad_event_files(events, height, width)
        if bad:
            raise DataMissingError(_malformed_events_message(name, bad, width, height, frames))
        try:
            return build()
        except BaseException as error:
            # The conversion started here and stopped: remove what it left, so the next run
            # converts again instead of meeting SpikingJelly's "unfinished" marker.
            shutil.rmtree(frames, ignore_errors=True)
            marker.unlink(missing_ok=True)
            if not isinstance(error, Exception):
                raise
            bad = _bad_event_files(events, height, width)  # a file changed since the check
            if not bad:
                raise DataMissingError(
                    f"converting {events} into {args.T} frames per sample failed "
                    f"({type(error).__name__}: {error}); the unfinished {frames} was removed.") from None
            raise DataMissingError(_malformed_events_message(name, bad, width, height, frames)) from None


def _malformed_events_message(name: str, bad: list, width: int, height: int, frames: Path) -> str:
    return (f"{name} events are malformed, so they cannot be converted into frames:\n  "
            + "\n  ".join(bad)
            + f"\n  expected:  .npz files with 1-D arrays t, x, y, p of one length, x < {width}, "
            f"y < {height}, p in 0..1\n  to fix it: replace the file(s) with good copies (or delete "
            f"them to train without them), then rerun; nothing was written to {frames}, so the "
            "conversion starts afresh.")


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


def _labels(dataset) -> list:
    if isinstance(dataset, Subset):
        inner = _labels(dataset.dataset)
        return [int(dataset.indices[i]) for i in range(len(dataset.indices))] + \
            [inner[i] for i in dataset.indices]
    if isinstance(dataset, ImageTensorDataset):
        return dataset.labels.tolist()
    if hasattr(dataset, "targets"):
        return [int(t) for t in dataset.targets]
    if hasattr(dataset, "samples"):
        return [(Path(path).name, int(target)) for path, target in dataset.samples]
    return [len(dataset)]


def _pixels(dataset):
    if isinstance(dataset, ImageTensorDataset):
        return dataset.images.numpy()
    data = getattr(dataset, "data", None)
    return data if isinstance(data, np.ndarray) else None


def data_fingerprint(train, test) -> str:
    """SHA-256 of what a run trains and tests on: the sizes, the labels (the sample file names for
    DVS) and, for images held in memory (CIFAR, MNIST family), every pixel. Equal for the same
    files anywhere on disk; a resume compares it with the checkpoint's."""
    import hashlib

    hasher = hashlib.sha256()
    for dataset in (train, test):
        hasher.update(repr((len(dataset), _labels(dataset))).encode())
        pixels = _pixels(dataset)
        if pixels is not None:
            hasher.update(np.ascontiguousarray(pixels).tobytes())
    return hasher.hexdigest()


def build_datasets(args: argparse.Namespace):
    """``(train_set, test_set, info)`` for ``args.dataset``."""
    if args.dataset not in DATASETS:
        raise ValueError(f"-dataset {args.dataset!r} is unknown; choose one of {', '.join(DATASETS)}.")
    if args.dataset in _CIFAR_FILES:
        train, test = _cifar_datasets(args.dataset, args)
    elif args.dataset in _MNIST_MEAN_STD:
        train, test = _mnist_family_datasets(args.dataset, args)
    else:
        train, test = _dvs_datasets(args.dataset, args)
    for split, subset in (("training", train), ("test", test)):
        if len(subset) == 0:
            raise DataMissingError(f"the {split} split of {args.dataset} in {args.data_dir} is empty.")
    return train, test, DATASETS[args.dataset]
