r"""
Building C++ source into a shared library at first use, with the system's C++ compiler, cached.

As PyTorch's own extensions do, the library lives in a per-user cache directory,
``$XDG_CACHE_HOME/spikingjelly_saf/cpu_kernels`` (``~/.cache/...`` by default), under a name keyed by
the SHA-256 of the source, the compiler and its flags: a changed source or compiler builds anew, and
an unchanged one loads in milliseconds. The library is written to a unique temporary name and moved
into place with :func:`os.replace`, so concurrent builds (several processes, DDP ranks) are safe: a
reader sees either no file or a complete one.

The compiler is ``$CXX`` when set, else the first of ``c++``, ``g++``, ``clang++`` on ``PATH``. The
flags (:data:`COMPILE_FLAGS`) turn FMA contraction off and keep IEEE semantics (no
``-ffast-math``); ``-fno-math-errno`` and ``-fno-trapping-math`` change no result, they only let
loops vectorize. The vector extension follows PyTorch's CPU capability (AVX2, AVX-512).
OpenMP comes from ``-fopenmp``; at load time the library shares the ``libgomp.so.1`` PyTorch has
already loaded, so both use one thread pool and ``torch.set_num_threads`` applies to both.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from typing import Optional

import torch

__all__ = ["COMPILE_FLAGS", "CpuBuildError", "compiler", "isa_flags", "cache_directory", "build", "load"]

#: Flags of every build; see the module notes.
COMPILE_FLAGS = ("-O3", "-std=c++17", "-fPIC", "-shared", "-fopenmp", "-ffp-contract=off",
                 "-fno-math-errno", "-fno-trapping-math")

_lock = threading.Lock()
_versions: dict[str, str] = {}


class CpuBuildError(RuntimeError):
    """The C++ compiler is missing or failed; the message says why and how to fix it."""


def compiler() -> Optional[str]:
    """The C++ compiler to use, or ``None`` when there is none."""
    requested = os.environ.get("CXX")
    if requested:
        return shutil.which(requested) or requested
    for name in ("c++", "g++", "clang++"):
        found = shutil.which(name)
        if found:
            return found
    return None


def isa_flags() -> tuple[str, ...]:
    """The vector-extension flags matching PyTorch's CPU capability on x86-64 (none elsewhere)."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return ()
    capability = torch.backends.cpu.get_cpu_capability()
    if capability.startswith("AVX512"):
        return ("-march=x86-64-v4",)
    if capability.startswith("AVX2"):
        return ("-march=x86-64-v3",)
    return ()


def cache_directory() -> str:
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(root, "spikingjelly_saf", "cpu_kernels")


def _version(cxx: str) -> str:
    if cxx not in _versions:
        try:
            result = subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=60)
            _versions[cxx] = result.stdout.strip()
        except OSError as error:
            raise CpuBuildError(f"the C++ compiler {cxx!r} cannot run ({error}). Install g++ or set CXX "
                                "to a working C++ compiler.") from error
    return _versions[cxx]


def build(source: str, name: str, flags: tuple[str, ...] = (), directory: Optional[str] = None) -> str:
    """The path of the shared library built from ``source`` (from the cache when it is there).

    :param name: the readable part of the file name
    :param flags: flags added to :data:`COMPILE_FLAGS` and :func:`isa_flags` (part of the key)
    :param directory: the cache directory; default :func:`cache_directory`
    :raises CpuBuildError: no compiler, or it failed (the message holds the end of its output)
    """
    cxx = compiler()
    if cxx is None:
        raise CpuBuildError("no C++ compiler found (looked for $CXX, c++, g++, clang++). Install one "
                            "(e.g. apt-get install g++) or set CXX.")
    command_flags = COMPILE_FLAGS + isa_flags() + tuple(flags)
    key = hashlib.sha256("\0".join((source, cxx, _version(cxx)) + command_flags).encode()).hexdigest()[:20]
    directory = directory or cache_directory()
    target = os.path.join(directory, f"{name}-{key}.so")
    if os.path.isfile(target):
        return target
    try:
        os.makedirs(directory, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=directory, prefix=f".{name}-") as work:
            source_path = os.path.join(work, f"{name}.cpp")
            with open(source_path, "w") as file:
                file.write(source)
            built = os.path.join(work, f"{name}.so")
            result = subprocess.run([cxx, *command_flags, source_path, "-o", built],
                                    capture_output=True, text=True, timeout=600)
            if result.returncode != 0:
                output = (result.stderr or result.stdout).strip()
                raise CpuBuildError(f"{os.path.basename(cxx)} failed to build SAF's CPU kernel "
                                    f"({name}):\n{output[-3000:]}")
            os.replace(built, target)
    except OSError as error:
        raise CpuBuildError(f"cannot build SAF's CPU kernel in {directory} ({error}). Set XDG_CACHE_HOME "
                            "to a writable directory.") from error
    return target


def load(source: str, name: str, flags: tuple[str, ...] = (), directory: Optional[str] = None) -> ctypes.CDLL:
    """:func:`build`, then load the library (one build at a time in this process)."""
    with _lock:
        return ctypes.CDLL(build(source, name, flags, directory))
