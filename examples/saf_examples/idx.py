r"""
Readers for the idx files of the MNIST family (MNIST, Fashion-MNIST).

The files are read where they are, gzipped (``*.gz``) or raw, from the folder given as ``root``
only:

* ``root`` itself (the original file names, e.g. ``train-images-idx3-ubyte.gz``);
* torchvision's layout below ``root``: ``root/MNIST/raw`` and ``root/FashionMNIST/raw``.

Without a ``root`` (``None``), Fashion-MNIST is read from Debian's ``dataset-fashion-mnist``
package, ``/usr/share/datasets/fashion-mnist``. A folder that lacks the files is never silently
replaced by another one.

Nothing is copied or converted on disk. A missing file raises :class:`IdxDataMissing` naming every
folder that was searched and how to obtain the files; a truncated or corrupt file raises
:class:`IdxFormatError` naming the file and what is wrong with it.
"""
from __future__ import annotations

import gzip
import math
import os
import struct
from pathlib import Path
from typing import List, Optional, Tuple, Union

import numpy as np
import torch

__all__ = ["IdxDataMissing", "IdxFormatError", "read_idx", "load_mnist_family", "candidate_folders",
           "MNIST_FAMILY", "DEBIAN_FASHION_MNIST"]

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")

# idx type byte -> big-endian numpy dtype (the format stores every multi-byte value big-endian).
_IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

_FILES = {
    True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

#: Per data set name: torchvision's folder name and the human-readable name used in messages.
MNIST_FAMILY = {
    "mnist": {"torchvision": "MNIST", "title": "MNIST"},
    "fashion_mnist": {"torchvision": "FashionMNIST", "title": "Fashion-MNIST"},
}


class IdxDataMissing(FileNotFoundError):
    """An idx file of the MNIST family was not found in any of the searched folders.

    The message lists the folders and the two ways to get the files: Debian's
    ``dataset-fashion-mnist`` package (Fashion-MNIST only) or torchvision's download (``-download``).
    """


class IdxFormatError(ValueError):
    """A file is not a valid idx file (bad magic number, unknown type, truncated data or wrong shape)."""


def _open(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def read_idx(path: Union[str, os.PathLike]) -> np.ndarray:
    r"""Read one idx file, gzipped (name ending in ``.gz``) or raw, into a numpy array.

    :param path: the file
    :return: an array with the file's dimensions and its stored element type in native byte order
        (``uint8`` for the MNIST-family images and labels)
    :raises FileNotFoundError: when ``path`` does not exist
    :raises IdxFormatError: when the header is not an idx header or the data does not match it
    """
    path = Path(path)
    try:
        with _open(path) as file:
            raw = file.read()
    except (OSError, EOFError, gzip.BadGzipFile) as error:
        if isinstance(error, FileNotFoundError):
            raise
        raise IdxFormatError(f"cannot read the idx file {path}: {error}. The file is damaged or "
                             f"not gzip-compressed although its name ends in .gz; fetch it again.") from error
    if len(raw) < 4:
        raise IdxFormatError(f"{path} is not an idx file: only {len(raw)} bytes, the header alone has 4 "
                             f"or more; the file is truncated, fetch it again.")
    zero0, zero1, type_code, ndim = struct.unpack(">BBBB", raw[:4])
    if zero0 != 0 or zero1 != 0 or type_code not in _IDX_DTYPES or ndim == 0:
        raise IdxFormatError(
            f"{path} is not an idx file: magic number 0x{raw[:4].hex()} (expected 0x0000 followed by a "
            f"type byte in {{{', '.join(f'0x{c:02x}' for c in _IDX_DTYPES)}}} and a nonzero number of "
            f"dimensions). A gzipped file must have a name ending in .gz.")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise IdxFormatError(f"{path}: the header announces {ndim} dimensions but the file ends after "
                             f"{len(raw)} bytes; the file is truncated, fetch it again.")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = _IDX_DTYPES[type_code]
    # Python integers: a crafted header's product would wrap around in int64.
    expected = math.prod(dims) * dtype.itemsize
    if len(raw) - header != expected:
        raise IdxFormatError(
            f"{path}: the header announces shape {tuple(dims)} of {dtype.newbyteorder('=').name} "
            f"({expected} data bytes) but the file holds {len(raw) - header} data bytes; "
            f"the file is truncated or corrupt, fetch it again.")
    array = np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)
    return array.astype(dtype.newbyteorder("="), copy=True)


def candidate_folders(name: str, root: Union[str, os.PathLike, None]) -> List[Path]:
    """The folders searched for data set ``name``, in order: ``root`` and torchvision's layout below
    it; without a ``root``, Debian's folder for Fashion-MNIST (and nothing for MNIST)."""
    _check_name(name)
    folders: List[Path] = []
    if root is not None:
        root = Path(root).expanduser()
        folders += [root, root / MNIST_FAMILY[name]["torchvision"] / "raw"]
    elif name == "fashion_mnist":
        folders.append(DEBIAN_FASHION_MNIST)
    return folders


def _check_name(name: str) -> None:
    if name not in MNIST_FAMILY:
        raise ValueError(f"name={name!r} is not a data set of the MNIST family; use one of "
                         f"{', '.join(repr(n) for n in MNIST_FAMILY)}.")


def _find(stem: str, folders: List[Path]) -> Optional[Path]:
    for folder in folders:
        for candidate in (folder / f"{stem}.gz", folder / stem):
            if candidate.is_file():
                return candidate
    return None


def _missing_message(name: str, stem: str, folders: List[Path]) -> str:
    title = MNIST_FAMILY[name]["title"]
    searched = ", ".join(str(f) for f in folders) if folders else "(no folder: root is None)"
    how = []
    if name == "fashion_mnist":
        how.append(f"install Debian's package (`apt-get install dataset-fashion-mnist`, files in "
                   f"{DEBIAN_FASHION_MNIST}, the folder read when no data folder is given)")
    how.append("let torchvision fetch them into the data folder (train_mnist.py with -download; needs a "
               "network)")
    how.append(f"or put the four idx files (gzipped or not) into the data folder or its "
               f"{MNIST_FAMILY[name]['torchvision']}/raw subfolder")
    return (f"{title} file {stem}[.gz] not found; searched: {searched}. To get it, " + "; ".join(how) + ".")


def load_mnist_family(name: str, root: Union[str, os.PathLike, None] = None,
                      train: bool = True) -> Tuple[torch.Tensor, torch.Tensor]:
    r"""Load one split of MNIST or Fashion-MNIST from its idx files, read in place.

    :param name: ``'mnist'`` or ``'fashion_mnist'``
    :param root: the data folder (searched itself and in torchvision's layout ``root/MNIST/raw``,
        ``root/FashionMNIST/raw``, nowhere else); ``None`` reads Fashion-MNIST from
        ``/usr/share/datasets/fashion-mnist``
    :param train: the 60,000-image training split when ``True``, the 10,000-image test split otherwise
    :return: ``(images, labels)``: ``uint8`` tensor ``[N, 28, 28]`` and ``int64`` tensor ``[N]``
    :raises IdxDataMissing: when a file is in none of the folders; the message lists them and how to
        get the files
    :raises IdxFormatError: when a file is corrupt or images and labels do not match
    """
    _check_name(name)
    folders = candidate_folders(name, root)
    image_stem, label_stem = _FILES[bool(train)]
    paths = []
    for stem in (image_stem, label_stem):
        path = _find(stem, folders)
        if path is None:
            raise IdxDataMissing(_missing_message(name, stem, folders))
        paths.append(path)
    images, labels = read_idx(paths[0]), read_idx(paths[1])
    if images.ndim != 3 or images.shape[1:] != (28, 28) or images.dtype != np.uint8:
        raise IdxFormatError(f"{paths[0]}: expected uint8 images of shape [N, 28, 28], found "
                             f"{images.dtype.name} of shape {list(images.shape)}.")
    if labels.ndim != 1 or labels.dtype != np.uint8:
        raise IdxFormatError(f"{paths[1]}: expected a uint8 label vector, found {labels.dtype.name} of "
                             f"shape {list(labels.shape)}.")
    if labels.shape[0] != images.shape[0]:
        raise IdxFormatError(f"{paths[0]} holds {images.shape[0]} images but {paths[1]} holds "
                             f"{labels.shape[0]} labels; the two files come from different splits or "
                             f"versions.")
    if labels.size and int(labels.max()) > 9:
        raise IdxFormatError(f"{paths[1]}: label {int(labels.max())} outside 0..9.")
    return torch.from_numpy(images), torch.from_numpy(labels.astype(np.int64))
