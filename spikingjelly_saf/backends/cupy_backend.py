r"""
``backend='cupy'``: SAF's fused multi-step CUDA kernels, compiled at run time by CuPy (NVRTC).

The CUDA source comes from :mod:`.kernel_source`: one float32 module per surrogate code, cached
(16-bit tensors are converted by :class:`~spikingjelly_saf.backends.FusedBackend`).
Kernels run on PyTorch's current CUDA stream and read and write PyTorch tensors in place (pointers
are passed directly), so there is no copy between frameworks.

This module imports CuPy; :mod:`spikingjelly_saf.backends` imports it only when ``backend='cupy'``
is first used.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

try:
    import cupy
except ImportError as error:  # pragma: no cover - the availability check names the fix first
    raise ImportError(
        'backend=\'cupy\' needs CuPy: pip install "spikingjelly-saf[cupy]" (or the cupy-cudaXXx wheel '
        "matching your CUDA)."
    ) from error

from .custom_ops import new_saved
from .kernel_source import NVRTC_OPTIONS, cuda_source
from .surrogate_codes import surrogate_code_by_id

__all__ = ["forward_impl", "backward_impl", "compiled_kernels"]

_THREADS = 256


@functools.lru_cache(maxsize=None)
def compiled_kernels(code_id: int, device_index: int) -> dict:
    """The compiled kernels of one surrogate on one device, by name."""
    source = cuda_source(surrogate_code_by_id(code_id))
    with cupy.cuda.Device(device_index):
        module = cupy.RawModule(code=source, options=NVRTC_OPTIONS)
        return {name: module.get_function(name) for name in ("saf_forward", "saf_backward")}


@functools.lru_cache(maxsize=None)
def _max_backward_blocks(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count * 32


def _pointer(tensor: torch.Tensor) -> np.uint64:
    return np.uint64(tensor.data_ptr())


def _launch(kernel, blocks: int, args: tuple, device_index: int) -> None:
    with cupy.cuda.Device(device_index), cupy.cuda.ExternalStream(
        torch.cuda.current_stream(device_index).cuda_stream
    ):
        kernel((blocks,), (_THREADS,), args)


def forward_impl(input_seq, abar_prev, coefficients, v_threshold, gain, code_id, save):
    steps, neurons = input_seq.shape
    abar_seq = torch.empty_like(input_seq)
    saved = new_saved(input_seq, code_id, save)
    if abar_seq.numel() == 0:
        return abar_seq, saved
    device = input_seq.device.index
    args = (
        _pointer(input_seq), _pointer(abar_prev), _pointer(coefficients), _pointer(abar_seq),
        _pointer(saved) if save else np.uint64(0), np.int32(steps), np.int64(neurons),
        np.float32(v_threshold), np.float32(gain),
    )
    _launch(compiled_kernels(code_id, device)["saf_forward"], (neurons + _THREADS - 1) // _THREADS, args, device)
    return abar_seq, saved


def backward_impl(grad_abar_seq, saved, input_scale, gain, code_id):
    grad_input = torch.empty_like(grad_abar_seq)
    numel = grad_input.numel()
    if numel == 0:
        return grad_input
    device = grad_abar_seq.device.index
    blocks = min((numel + _THREADS - 1) // _THREADS, _max_backward_blocks(device))
    args = (_pointer(grad_abar_seq), _pointer(saved), _pointer(grad_input), np.int64(numel),
            np.float32(input_scale), np.float32(gain))
    _launch(compiled_kernels(code_id, device)["saf_backward"], blocks, args, device)
    return grad_input
