r"""
``backend='cupy'``: SAF's fused multi-step CUDA kernels, compiled at run time by CuPy (NVRTC).

The CUDA source comes from :mod:`.kernel_source`: one float32 module per surrogate code, cached
(16-bit tensors are converted by :class:`~spikingjelly_saf.backends.FusedBackend`). Buffers, grid
sizes and arguments are :mod:`.cuda_host`'s, the code the CPU test of the CUDA source runs too.
Kernels run on PyTorch's current CUDA stream and read and write PyTorch tensors in place (pointers
are passed directly), so there is no copy between frameworks.

This module imports CuPy; :mod:`spikingjelly_saf.backends` imports it only when ``backend='cupy'``
is first used.
"""

from __future__ import annotations

import ctypes
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

from . import cuda_host
from .kernel_source import NVRTC_OPTIONS, cuda_source
from .surrogate_codes import surrogate_code_by_id

__all__ = ["forward_impl", "backward_impl", "compiled_kernels"]

# ctypes values from cuda_host, as the NumPy scalars CuPy passes to a kernel.
_NUMPY_OF = {ctypes.c_void_p: lambda v: np.uint64(v or 0), ctypes.c_int: np.int32,
             ctypes.c_longlong: np.int64, ctypes.c_float: np.float32}


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


def _launcher(code_id: int, device_index: int):
    def launch(name, grid, block, args):
        kernel = compiled_kernels(code_id, device_index)[name]
        values = tuple(_NUMPY_OF[type(a)](a.value) for a in args)
        with cupy.cuda.Device(device_index), cupy.cuda.ExternalStream(
            torch.cuda.current_stream(device_index).cuda_stream
        ):
            kernel((grid,), (block,), values)

    return launch


def forward_impl(input_seq, abar_prev, coefficients, v_threshold, gain, code_id, save):
    return cuda_host.forward(input_seq, abar_prev, coefficients, v_threshold, gain, code_id, save,
                             _launcher(code_id, input_seq.device.index))


def backward_impl(grad_abar_seq, saved, input_scale, gain, code_id):
    device = grad_abar_seq.device.index
    return cuda_host.backward(grad_abar_seq, saved, input_scale, gain, _max_backward_blocks(device),
                              _launcher(code_id, device))
