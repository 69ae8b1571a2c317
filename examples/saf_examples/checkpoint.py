r"""
Checkpoints that are written atomically, load with ``torch.load(path, weights_only=True)`` and
resume exactly: model, optimizer, scheduler, gradient scaler, epoch, history and the state of every
random generator (Python, NumPy, torch, CUDA), all stored as tensors and plain Python values.

A checkpoint is a dict with SpikingJelly's example keys ``net``, ``optimizer``, ``lr_scheduler``,
``epoch`` and ``max_test_acc``, plus ``grad_scaler``, ``history``, ``best``, ``rng``, ``args`` and
``checksum`` (a SHA-256 of everything but the generator states, so a flipped bit in the tensor data is found at load
time: ``torch.load`` itself does not notice it).
"""

from __future__ import annotations

import errno
import hashlib
import os
import pickle
import random
import re
import tempfile
import warnings
import zipfile
from pathlib import Path
from typing import Optional

import numpy as np
import torch

__all__ = ["CheckpointError", "rng_state", "set_rng_state", "atomic_save", "atomic_write_text",
           "atomic_write_bytes",
           "save_checkpoint", "load_checkpoint", "read_checkpoint", "state_digest",
           "clean_temporaries", "REQUIRED_KEYS"]

#: What every training checkpoint holds.
REQUIRED_KEYS = ("net", "optimizer", "lr_scheduler", "epoch", "max_test_acc", "history", "best",
                 "rng", "args")
#: Second names of ``net`` and ``lr_scheduler``; left out of the checksum (same objects).
_TEMPORARY_SUFFIX = ".tmp"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: missing, empty, truncated, corrupted, not from this
    trainer, or refused by ``weights_only`` loading."""


def rng_state() -> dict:
    """Every generator's state as tensors and plain numbers (``weights_only`` loads them)."""
    version, words, gauss = random.getstate()
    name, keys, position, has_gauss, cached = np.random.get_state()
    state = {"python": {"version": int(version), "words": torch.tensor(words, dtype=torch.int64),
                        "gauss": gauss},
             "numpy": {"name": str(name), "keys": torch.from_numpy(keys.astype(np.int64)),
                       "pos": int(position), "has_gauss": int(has_gauss), "cached": float(cached)},
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    python = state["python"]
    random.setstate((python["version"], tuple(int(v) for v in python["words"].tolist()),
                     python["gauss"]))
    numpy_state = state["numpy"]
    np.random.set_state((numpy_state["name"], numpy_state["keys"].numpy().astype(np.uint32),
                         numpy_state["pos"], numpy_state["has_gauss"], numpy_state["cached"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _fsync_directory(directory: Path) -> None:
    """Make a rename inside ``directory`` durable (the new name survives a power cut)."""
    try:
        handle = os.open(directory, os.O_RDONLY)
    except OSError:  # platforms without directory handles
        return
    try:
        os.fsync(handle)
    except OSError as error:
        if error.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(handle)


def _write_temporary(write, file) -> None:
    write(file)
    file.flush()
    os.fsync(file.fileno())


def _umask() -> int:
    """The process's umask: from /proc where Linux shows it (no race with other threads creating
    files), else by setting it and setting it back."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _atomic(path: Path, write) -> None:
    path = Path(path)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.",
                                         suffix=_TEMPORARY_SUFFIX)
    try:
        # mkstemp makes the file 0600; a run's files get the mode open() would give them.
        os.fchmod(handle, 0o666 & ~_umask())
    finally:
        os.close(handle)  # reopened by name: the file object then names the file it writes
    try:
        try:
            with open(temporary, "wb") as file:
                _write_temporary(write, file)
            os.replace(temporary, path)
        except BaseException:
            if os.path.exists(temporary):
                os.unlink(temporary)
            raise
        _fsync_directory(path.parent)
    except OSError as error:
        raise OSError(error.errno, error.strerror or str(error), str(path)) from error
    except RuntimeError as error:
        # torch.save reports a failed write (a full disk) as a RuntimeError around the OSError.
        cause = _os_error_in(error)
        if cause is None:
            raise
        raise OSError(cause.errno, cause.strerror or str(cause), str(path)) from error


def _os_error_in(error: BaseException):
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, OSError):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def atomic_save(obj, path: Path) -> None:
    """``torch.save`` to a temporary file beside ``path``, fsync, ``os.replace``, fsync the folder:
    a reader sees the old file or the new one, never a half-written one, even after a kill."""
    _atomic(path, lambda file: torch.save(obj, file))


def atomic_write_text(path: Path, text: str) -> None:
    """Write a text file the way :func:`atomic_save` writes a checkpoint."""
    _atomic(path, lambda file: file.write(text.encode("utf-8")))


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write a binary file (a plot) the way :func:`atomic_save` writes a checkpoint."""
    _atomic(path, lambda file: file.write(bytes(data)))


def clean_temporaries(directory: Path) -> list:
    """Remove the temporary files an interrupted save left in ``directory``; returns their names.
    Call it only while holding the folder's lock, so that no live run's file is removed."""
    removed = []
    for entry in Path(directory).glob(f".*{_TEMPORARY_SUFFIX}"):
        if entry.is_file():
            entry.unlink()
            removed.append(entry.name)
    return sorted(removed)


def _update(hasher, obj) -> None:
    if isinstance(obj, torch.Tensor):
        tensor = obj.detach().cpu().contiguous().reshape(-1)
        hasher.update(f"T{tensor.dtype}{tuple(obj.shape)}".encode())
        hasher.update(tensor.view(torch.uint8).numpy().tobytes())
    elif isinstance(obj, dict):
        hasher.update(b"{")
        for key in sorted(obj, key=repr):
            hasher.update(repr(key).encode())
            _update(hasher, obj[key])
        hasher.update(b"}")
    elif isinstance(obj, (list, tuple)):
        hasher.update(b"[" if isinstance(obj, list) else b"(")
        for item in obj:
            _update(hasher, item)
        hasher.update(b"]")
    else:
        hasher.update(repr(obj).encode())


def state_digest(state: dict) -> str:
    """SHA-256 of a checkpoint's contents, ``checksum`` left out, and ``rng``
    too: a damaged generator state changes which random numbers follow, never the weights, and
    exact-resume tests swap it on purpose."""
    hasher = hashlib.sha256()
    _update(hasher, {k: v for k, v in state.items()
                     if k not in ("checksum", "rng")})
    return hasher.hexdigest()


def save_checkpoint(state: dict, path: Path) -> None:
    """Add the checksum to ``state`` and write it with :func:`atomic_save`."""
    state = dict(state)
    state["checksum"] = state_digest(state)
    atomic_save(state, path)


def _unpickling_problem(path: Path, error: Exception) -> str:
    text = str(error)
    found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
    if found:
        return (f"{path}: refused: it asks for the Python object {found.group(1)}, and a checkpoint "
                "may hold only tensors and plain containers (it is loaded with weights_only=True, "
                "since unpickling anything else can run code). Use only checkpoints written by "
                "this trainer.")
    operand = re.search(r"Unsupported operand \d+", text)
    reason = operand.group(0) if operand else "not a weights-only pickle"
    return (f"{path} is not a checkpoint that loads with weights_only=True (damaged, or a pickle of "
            f"another kind: {reason}).")


def read_checkpoint(path) -> dict:
    """``torch.load(path, weights_only=True)`` with every failure turned into one
    :class:`CheckpointError` sentence naming the file; nothing else is checked."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file.")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path} is empty (0 bytes): a copy or save that never finished.")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. the pickle-protocol note on a foreign file
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise CheckpointError(_unpickling_problem(path, error)) from None
    except (RuntimeError, EOFError, ValueError, zipfile.BadZipFile, KeyError, IndexError,
            TypeError, AttributeError, UnicodeDecodeError, OverflowError, MemoryError) as error:
        reason = str(error).splitlines()[0][:160] if str(error) else type(error).__name__
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint (truncated, corrupted "
                              f"or another format: {reason}).") from None
    except OSError as error:
        raise CheckpointError(f"{path} cannot be read: {error.strerror or error}.") from None


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_accuracy(value) -> bool:
    # NaN would pass a type check and then lose every comparison with a new accuracy.
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0.0 <= value <= 1.0


def _structure_problem(state: dict) -> Optional[str]:
    """What is wrong with the shape of a checkpoint's entries, or ``None``."""
    for key in ("net", "optimizer", "lr_scheduler", "best", "args"):
        if key in state and not isinstance(state[key], dict):
            return f"its {key!r} entry is a {type(state[key]).__name__}, not a dict"
    if "net" in state and not all(isinstance(v, torch.Tensor) for v in state["net"].values()):
        return "its 'net' entry holds values other than tensors"
    if "epoch" in state and not (_is_int(state["epoch"]) and state["epoch"] >= 0):
        return f"its epoch is {state['epoch']!r}, not a number of epochs"
    best = state.get("best")
    if best is not None and not (_is_int(best.get("epoch")) and _is_accuracy(best.get("test_acc"))):
        return "its 'best' entry lacks an epoch and a test accuracy (a number in [0, 1])"
    if "max_test_acc" in state and not _is_accuracy(state["max_test_acc"]):
        return f"its max_test_acc is {state['max_test_acc']!r}, not an accuracy in [0, 1]"
    history = state.get("history")
    if history is not None and not (isinstance(history, list) and
                                    all(isinstance(row, dict) for row in history)):
        return "its 'history' entry is not a list of epoch records"
    if history is not None:
        problem = _history_problem(history, state.get("epoch"))
        if problem:
            return problem
    if "rng" in state and not isinstance(state["rng"], list):
        return "its 'rng' entry is not a list of generator states"
    return None


#: What every epoch record of a checkpoint's history holds (the plots and summary read them).
HISTORY_KEYS = ("epoch", "train_loss", "train_acc", "test_loss", "test_acc", "lr", "epoch_time_s",
                "peak_memory_mib")


def _history_problem(history: list, epoch) -> Optional[str]:
    """What is wrong with the epoch records, or ``None``: one record per epoch 0..epoch, each with
    the numbers of :data:`HISTORY_KEYS` and a dict of firing rates."""
    for index, row in enumerate(history):
        missing = [key for key in HISTORY_KEYS if key not in row]
        if missing:
            return f"its history record {index} lacks {', '.join(missing)}"
        if not (_is_int(row["epoch"]) and row["epoch"] == index):
            return (f"its history record {index} is for epoch {row['epoch']!r}; the records must "
                    "be the epochs 0, 1, 2, ... in order")
        for key in HISTORY_KEYS[1:]:
            value = row[key]
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                return f"its history record {index} holds {key} {value!r}, not a number"
        rates = row.get("firing_rate", {})
        if not (isinstance(rates, dict) and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                for v in rates.values())):
            return f"its history record {index} holds firing rates that are not numbers"
    if _is_int(epoch) and len(history) != epoch + 1:
        return f"its history has {len(history)} records for the {epoch + 1} epochs it trained"
    return None


def load_checkpoint(path, expected_keys=REQUIRED_KEYS) -> dict:
    """A training checkpoint of this trainer, read safely and checked: its keys, and its checksum
    when it has one. Every problem is one :class:`CheckpointError` naming the file."""
    path = Path(path)
    state = read_checkpoint(path)
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} holds a {type(state).__name__}, not a training checkpoint "
                              "(a dict with net, optimizer, lr_scheduler, epoch, ...).")
    missing = [key for key in expected_keys if key not in state]
    if missing:
        found = ", ".join(sorted(map(str, state))[:8]) or "nothing"
        hint = (" It looks like a bare model state_dict; a run resumes only from the "
                "checkpoint_last.pth or checkpoint_best.pth a run wrote."
                if state and all(isinstance(v, torch.Tensor) for v in state.values()) else "")
        raise CheckpointError(f"{path} is not a training checkpoint of this trainer: it lacks "
                              f"{', '.join(missing)} (it holds {found}).{hint}")
    problem = _structure_problem(state)
    if problem:
        raise CheckpointError(f"{path} is not a training checkpoint of this trainer: {problem}.")
    checksum: Optional[str] = state.get("checksum")
    if checksum is None:
        raise CheckpointError(f"{path} has no checksum: every checkpoint this trainer writes has "
                              "one, so this one was written or altered by something else and its "
                              "contents cannot be verified. Resume from a checkpoint of a run.")
    if not isinstance(checksum, str) or checksum != state_digest(state):
        raise CheckpointError(f"{path} is corrupted: its contents do not match the checksum "
                              "written with it (a flipped bit or a damaged copy). Resume from "
                              "another checkpoint.")
    return state
