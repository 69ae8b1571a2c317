r"""
The host side of the CUDA kernels of :mod:`.kernel_source`: output buffers, grid sizes and kernel
arguments, without CuPy.

:mod:`.cupy_backend` launches with CuPy on the GPU; the test that executes the CUDA source on the CPU
(``tests/library/test_cuda_source_on_cpu.py``) passes the emulated launch of :mod:`.cpu_source`
instead, so that both run this same code. A ``launch(kernel_name, grid, block, args)`` receives the
arguments as ``ctypes`` values in the kernel's parameter order (pointers as ``c_void_p``, ``None``
for a null pointer).
"""

from __future__ import annotations

import ctypes
from typing import Callable

import torch

from .custom_ops import new_saved

__all__ = ["THREADS", "forward", "backward"]

#: Threads per block of both kernels.
THREADS = 256

Launch = Callable[[str, int, int, tuple], None]


def _pointer(tensor: torch.Tensor) -> ctypes.c_void_p:
    return ctypes.c_void_p(tensor.data_ptr())


def forward(input_seq, abar_prev, coefficients, v_threshold, gain, code_id, save, launch: Launch):
    """``forward_impl`` of :mod:`.custom_ops`: one thread per neuron, so ``ceil(N / THREADS)`` blocks."""
    steps, neurons = input_seq.shape
    abar_seq = torch.empty_like(input_seq)
    saved = new_saved(input_seq, code_id, save)
    if abar_seq.numel() == 0:
        return abar_seq, saved
    args = (
        _pointer(input_seq), _pointer(abar_prev), _pointer(coefficients), _pointer(abar_seq),
        _pointer(saved) if save else ctypes.c_void_p(None), ctypes.c_int(steps), ctypes.c_longlong(neurons),
        ctypes.c_float(v_threshold), ctypes.c_float(gain),
    )
    launch("saf_forward", (neurons + THREADS - 1) // THREADS, THREADS, args)
    return abar_seq, saved


def backward(grad_abar_seq, saved, input_scale, gain, max_blocks: int, launch: Launch):
    """``backward_impl`` of :mod:`.custom_ops`: a grid-stride loop over at most ``max_blocks`` blocks
    (the CuPy backend: 32 per multiprocessor)."""
    grad_input = torch.empty_like(grad_abar_seq)
    numel = grad_input.numel()
    if numel == 0:
        return grad_input
    blocks = min((numel + THREADS - 1) // THREADS, max_blocks)
    args = (_pointer(grad_abar_seq), _pointer(saved), _pointer(grad_input), ctypes.c_longlong(numel),
            ctypes.c_float(input_scale), ctypes.c_float(gain))
    launch("saf_backward", blocks, THREADS, args)
    return grad_input
