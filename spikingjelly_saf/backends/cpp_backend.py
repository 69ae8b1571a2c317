r"""
``backend='cpp'``: SAF's fused kernels on the CPU, compiled from the CUDA source.

:func:`~.cpu_source.cpu_source` (the CUDA translation unit of :mod:`.kernel_source` with a C++
prelude) is built once per surrogate code by the system's C++ compiler (:mod:`.cpu_build`, cached
on disk) and called through ``ctypes`` on the tensors' memory: one call per layer and sequence
(or step, in single-step mode), parallel over neurons.
"""

from __future__ import annotations

import ctypes
import threading

import torch

from . import cpu_build
from .cpu_source import cpu_source
from .custom_ops import new_saved
from .surrogate_codes import surrogate_code_by_id

__all__ = ["forward_impl", "backward_impl", "library"]

_libraries: dict[int, ctypes.CDLL] = {}
_lock = threading.Lock()

_POINTER, _INT, _LONG, _UINT, _FLOAT = ctypes.c_void_p, ctypes.c_int, ctypes.c_longlong, ctypes.c_uint, ctypes.c_float
_SIGNATURES = {
    "saf_cpu_forward": (_POINTER,) * 5 + (_INT, _LONG, _FLOAT, _FLOAT),
    "saf_cpu_backward": (_POINTER,) * 3 + (_LONG, _FLOAT, _FLOAT),
    "saf_launch_forward": (_UINT, _UINT) + (_POINTER,) * 5 + (_INT, _LONG, _FLOAT, _FLOAT),
    "saf_launch_backward": (_UINT, _UINT) + (_POINTER,) * 3 + (_LONG, _FLOAT, _FLOAT),
}


def library(code_id: int) -> ctypes.CDLL:
    """The built library of one surrogate code (built or loaded on first use)."""
    found = _libraries.get(code_id)
    if found is None:
        with _lock:
            found = _libraries.get(code_id)
            if found is None:
                found = cpu_build.load(cpu_source(surrogate_code_by_id(code_id)), "saf_kernels")
                for name, argtypes in _SIGNATURES.items():
                    function = getattr(found, name)
                    function.argtypes, function.restype = argtypes, None
                _libraries[code_id] = found
    return found


def forward_impl(input_seq, abar_prev, coefficients, v_threshold, gain, code_id, save):
    steps, neurons = input_seq.shape
    abar_seq = torch.empty_like(input_seq)
    saved = new_saved(input_seq, code_id, save)
    if abar_seq.numel():
        library(code_id).saf_cpu_forward(
            input_seq.data_ptr(), abar_prev.data_ptr(), coefficients.data_ptr(), abar_seq.data_ptr(),
            saved.data_ptr() if save else None, steps, neurons, v_threshold, gain)
    return abar_seq, saved


def backward_impl(grad_abar_seq, saved, input_scale, gain, code_id):
    grad_input = torch.empty_like(grad_abar_seq)
    if grad_input.numel():
        library(code_id).saf_cpu_backward(grad_abar_seq.data_ptr(), saved.data_ptr(), grad_input.data_ptr(),
                                          grad_input.numel(), input_scale, gain)
    return grad_input
