r"""
The process group a run trains in: DistributedDataParallel under ``torchrun`` (gloo on CPU, nccl on
CUDA), or a single process, with the few collectives the trainer needs so that every process takes
the same decisions (stop on a non-finite value, refuse an unusable output folder).
"""

from __future__ import annotations

import gc
import os

import torch
import torch.distributed as dist

from .models import ModelChoiceError

__all__ = ["Distributed"]


class Distributed:
    """The process group under ``torchrun`` (gloo on CPU, nccl on CUDA), or a single process."""

    def __init__(self, requested_device: str):
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        device = torch.device(requested_device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ModelChoiceError(f"-device {requested_device}: no CUDA device is available; "
                                   "use -device cpu.")
        if self.world_size > 1:
            if device.type == "cuda":
                device = torch.device("cuda", local_rank)
                torch.cuda.set_device(device)
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        self.device = device

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def sum(self, *values: float) -> list:
        if not self.enabled:
            return list(values)
        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor)
        return tensor.tolist()

    def all_true(self, flag: bool) -> bool:
        if not self.enabled:
            return bool(flag)
        tensor = torch.tensor([0.0 if flag else 1.0], dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor)
        return tensor.item() == 0.0

    def gather(self, obj) -> list:
        if not self.enabled:
            return [obj]
        gathered = [None] * self.world_size
        dist.all_gather_object(gathered, obj)
        return gathered

    def close(self, finished: bool = False) -> None:
        """Tear the process group down. ``finished``: the run ended normally on every process, so
        all of them can meet once more before any leaves."""
        if not (self.enabled and dist.is_initialized()):
            return
        if finished:
            # The first process still plots and writes its summary; a process that tears gloo down
            # and exits meanwhile can abort ("terminate called without an active exception").
            dist.barrier()
        # DistributedDataParallel's reducer and comm-hook futures hold Python objects that gloo's
        # worker threads touch: free them now, not during interpreter shutdown, where a thread
        # that needs the GIL aborts the process.
        gc.collect()
        dist.destroy_process_group()

    def agree(self, error) -> None:
        """Raise on every process when the main process met ``error`` (or ``None``) in a step only
        it takes; the others raise a short error that points at the main one's message."""
        failed = self.main and error is not None
        if self.all_true(not failed):
            return
        if error is not None:
            raise error
        raise ModelChoiceError("the first process stopped; see its message.")
