"""Measuring peak memory on the CPU the same way everywhere (main job, trainer, benchmarks)."""

from __future__ import annotations

import resource
import sys

import torch

__all__ = ["max_rss_bytes", "warm_up_runtime"]


def max_rss_bytes() -> int:
    """The process's maximum resident set so far, in bytes (Linux reports KiB, macOS bytes)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)


def warm_up_runtime(device: torch.device | str = "cpu") -> None:
    """One tiny unrelated conv/linear forward and backward.

    The one-time start-up of the operator libraries and the autograd engine (tens of MiB, whatever
    the model) then belongs to the baseline instead of being charged to the first thing measured.
    """
    devices = [device] if torch.device(device).type == "cuda" else []
    with torch.random.fork_rng(devices=devices):  # measuring must not change what is measured
        probe = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.Flatten(),
                                    torch.nn.Linear(4 * 4 * 4, 2)).to(device)
        probe(torch.rand(2, 3, 4, 4, device=device)).sum().backward()
