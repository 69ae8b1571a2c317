r"""
The output folder of a run: chosen and checked before anything is written, never shared by two
live runs (a lock file holding the owner's process id, released by the system when the process
dies, so a killed run leaves no stale lock), never reused by accident (a non-empty folder needs
``-resume`` or ``-overwrite``), cleaned of the temporary files an interrupted save left behind.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import socket
import time
from pathlib import Path
from typing import Optional

from .checkpoint import clean_temporaries

__all__ = ["RunDirectoryError", "RunDirectory", "LOCK_NAME", "RUN_FILES", "default_out_dir",
           "check_name"]

LOCK_NAME = ".lock"
#: What a run writes into its folder; ``-overwrite`` removes exactly these.
RUN_FILES = ("checkpoint_last.pth", "checkpoint_best.pth", "history.json", "history.csv",
             "curves.png", "firing_rates.png", "cost.png", "summary.json", "args.json",
             "lif_net.pt", "lif_exactness.json", "test_only.json", "tb")


class RunDirectoryError(ValueError):
    """The output folder cannot be used: busy, not empty, or outside where it may be."""


def check_name(flag: str, value: str) -> None:
    """Refuse a value that becomes part of a path when it could leave its folder."""
    if value in ("", ".", "..") or any(sep in value for sep in ("/", "\\", os.sep, "\0")) or (
            os.altsep and os.altsep in value):
        raise RunDirectoryError(f"{flag} {value!r}: a name, not a path; it must not contain '/', "
                                "'\\' or be '.' or '..'. Choose one of the listed models.")


def default_out_dir(args) -> Path:
    """``runs/<dataset>_<model>_<method>_T<T>_b<b>_<opt>_lr<lr>`` below the working folder."""
    for flag, value in (("-dataset", args.dataset), ("-model", args.model),
                        ("-method", args.method)):
        check_name(flag, str(value))
    return Path("runs") / (f"{args.dataset}_{args.model}_{args.method}_T{args.T}_b{args.b}_"
                           f"{args.opt}_lr{args.lr}")


def _lock_owner(path: Path) -> str:
    try:
        text = path.read_text().strip()
    except OSError:
        return "another process"
    return f"process {text}" if text else "another process"


class RunDirectory:
    """One run's output folder: :meth:`check` refuses a busy or non-empty folder without writing
    anything, :meth:`open` creates it, takes the lock and clears leftovers, :meth:`close` lets it go.
    """

    def __init__(self, path, resume: bool, overwrite: bool):
        self.path = Path(path)
        self.resume, self.overwrite = resume, overwrite
        self._lock_file = None
        self.cleaned: list = []

    @property
    def lock_path(self) -> Path:
        return self.path / LOCK_NAME

    def _busy(self) -> Optional[str]:
        """The owner of a held lock, or ``None`` when the folder is free."""
        if not self.lock_path.exists():
            return None
        try:
            handle = os.open(self.lock_path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return _lock_owner(self.lock_path)
        finally:
            os.close(handle)  # closing drops a lock taken only to test it
        return None

    def _busy_error(self, owner: str) -> RunDirectoryError:
        return RunDirectoryError(
            f"-out-dir {self.path} is in use by a live run ({owner}); wait for it to end, stop "
            f"it, or choose another -out-dir. Two runs in one folder would overwrite each "
            f"other's checkpoints.")

    def contents(self) -> list:
        if not self.path.is_dir():
            return []
        return sorted(entry.name for entry in self.path.iterdir() if entry.name != LOCK_NAME)

    def check(self) -> None:
        """Refuse a folder that a live run holds, or one with files when neither ``-resume`` nor
        ``-overwrite`` was given; writes nothing."""
        if self.path.exists() and not self.path.is_dir():
            raise RunDirectoryError(f"-out-dir {self.path} is a file, not a folder.")
        self._check_encoding()
        owner = self._busy()
        if owner is not None:
            raise self._busy_error(owner)
        self._check_contents()

    def _check_encoding(self) -> None:
        # TensorBoard's writer encodes its file names as UTF-8 and fails on any other bytes.
        try:
            str(self.path.absolute()).encode("utf-8")
        except UnicodeEncodeError:
            shown = os.fsencode(str(self.path.absolute()))
            raise RunDirectoryError(
                f"-out-dir {shown!r}: the folder's path is not valid UTF-8, and the TensorBoard log "
                "writer can only name its files in UTF-8. Choose an -out-dir whose path is UTF-8 "
                "(rename the folder).") from None

    def _check_contents(self) -> None:
        contents = [name for name in self.contents() if not name.endswith(".tmp")]
        if contents and not (self.resume or self.overwrite):
            shown = ", ".join(contents[:5]) + (", ..." if len(contents) > 5 else "")
            last = self.path / "checkpoint_last.pth"
            hint = (f"continue it with -resume {last}, " if last.is_file() else "")
            raise RunDirectoryError(
                f"-out-dir {self.path} is not empty ({shown}); {hint}pass -overwrite to replace "
                "its run, or choose another -out-dir.")

    def open(self) -> "RunDirectory":
        """Create the folder, take its lock (failing at once when another process holds it),
        remove leftover temporary files, and with ``-overwrite`` the previous run's files."""
        self.path.mkdir(parents=True, exist_ok=True)
        while True:
            handle = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(handle)
                raise self._busy_error(_lock_owner(self.lock_path)) from None
            # A run that ended between our open and our lock removed the file we locked.
            try:
                current = os.stat(self.lock_path)
            except FileNotFoundError:
                current = None
            held = os.fstat(handle)
            if current is not None and (current.st_ino, current.st_dev) == (held.st_ino, held.st_dev):
                break
            os.close(handle)
        os.ftruncate(handle, 0)
        os.write(handle, f"{os.getpid()} on {socket.gethostname()} since "
                         f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode())
        os.fsync(handle)
        self._lock_file = handle
        try:
            self._check_contents()  # another run may have filled the folder between check() and the lock
        except RunDirectoryError:
            self.close()
            raise
        self.cleaned = clean_temporaries(self.path)
        if self.overwrite and not self.resume:
            evaluations = [entry.name for entry in self.path.glob("test_only_epoch*")]
            for name in RUN_FILES + tuple(evaluations):
                target = self.path / name
                if target.is_dir():
                    shutil.rmtree(target)
                elif target.exists():
                    target.unlink()
        return self

    def close(self) -> None:
        if self._lock_file is None:
            return
        try:
            self.lock_path.unlink()
        except FileNotFoundError:
            pass
        os.close(self._lock_file)  # releases the lock
        self._lock_file = None

    def __enter__(self) -> "RunDirectory":
        return self.open()

    def __exit__(self, *exc) -> None:
        self.close()


def add_run_flags(parser) -> None:
    """The flags about the output folder and continuing a run (``-overwrite``, ``-test-only``);
    a parser that has them already is left as it is."""
    if "-overwrite" in parser._option_string_actions:
        return
    group = parser.add_argument_group("output folder and resuming")
    group.add_argument("-overwrite", action="store_true",
                       help="replace the run in a non-empty -out-dir (without it such a folder is "
                            "refused unless -resume continues its run)")
    group.add_argument("-test-only", action="store_true",
                       help="evaluate the checkpoint given with -resume (and its LIF deployment "
                            "with -deploy-lif) without training")
