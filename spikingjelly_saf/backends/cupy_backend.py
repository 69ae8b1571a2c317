r"""
``backend='cupy'``: SAF's fused multi-step CUDA kernels, compiled at run time by CuPy (NVRTC).

The CUDA source comes from :mod:`.kernel_source`: one module per (surrogate code, dtype), cached.
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

from .custom_ops import define_backend_ops, make_run
from .kernel_source import NVRTC_OPTIONS, cuda_header_dirs, cuda_source
from .surrogate_codes import surrogate_code_by_id

__all__ = ["run", "ops", "compiled_kernels"]

_THREADS = 256
_DTYPE_NAMES = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}


@functools.lru_cache(maxsize=None)
def _compile_options() -> tuple[str, ...]:
    # CuPy adds the include directory of the CUDA toolkit it found; without a toolkit (pip-only
    # installs) the 16-bit headers come from the nvidia pip packages.
    if cupy.cuda.get_cuda_path():
        return NVRTC_OPTIONS
    return NVRTC_OPTIONS + tuple(f"-I{d}" for d in cuda_header_dirs()[:1])


@functools.lru_cache(maxsize=None)
def compiled_kernels(code_id: int, dtype_name: str, device_index: int) -> dict:
    """The compiled kernels of one surrogate and dtype on one device, by name."""
    source = cuda_source(surrogate_code_by_id(code_id), dtype_name)
    with cupy.cuda.Device(device_index):
        module = cupy.RawModule(code=source, options=_compile_options())
        names = ["saf_forward", "saf_backward"]
        if dtype_name != "float32":
            names += ["saf_forward_pairs", "saf_backward_pairs"]
        return {name: module.get_function(name) for name in names}


@functools.lru_cache(maxsize=None)
def _max_backward_blocks(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count * 32


def _pointer(tensor: torch.Tensor) -> np.uint64:
    return np.uint64(tensor.data_ptr())


def _pairs_allowed(tensor_dtype: torch.dtype, length: int, *tensors: torch.Tensor) -> bool:
    # half2/bfloat162 need an even length and 4-byte aligned pointers.
    return (tensor_dtype != torch.float32 and length % 2 == 0
            and all(t.data_ptr() % 4 == 0 for t in tensors))


def _launch(kernel, blocks: int, args: tuple, device_index: int) -> None:
    with cupy.cuda.Device(device_index), cupy.cuda.ExternalStream(
        torch.cuda.current_stream(device_index).cuda_stream
    ):
        kernel((blocks,), (_THREADS,), args)


def _check_device(tensor: torch.Tensor) -> None:
    if tensor.device.type != "cuda":
        raise RuntimeError(
            f"SAFNode(backend='cupy') got a tensor on {tensor.device}; the CuPy kernels run on CUDA "
            "tensors. Move the model and input to the GPU, or use backend='torch'."
        )


def _forward_impl(input_seq, abar_prev, coefficients, v_threshold, gain, code_id, save):
    code = surrogate_code_by_id(code_id)
    steps, neurons = input_seq.shape
    abar_seq = torch.empty_like(input_seq)
    saved_dtype = torch.uint8 if code.level == "representation" else input_seq.dtype
    saved = torch.empty_like(input_seq, dtype=saved_dtype) if save else abar_seq.new_empty(0)
    if abar_seq.numel() == 0:
        return abar_seq, saved
    device = input_seq.device.index
    kernels = compiled_kernels(code_id, _DTYPE_NAMES[input_seq.dtype], device)
    tensors = (input_seq, abar_prev, abar_seq) + ((saved,) if save else ())
    if _pairs_allowed(input_seq.dtype, neurons, *tensors):
        kernel, width = kernels["saf_forward_pairs"], neurons // 2
    else:
        kernel, width = kernels["saf_forward"], neurons
    args = (
        _pointer(input_seq), _pointer(abar_prev), _pointer(coefficients), _pointer(abar_seq),
        _pointer(saved) if save else np.uint64(0), np.int32(steps), np.int64(width),
        np.float32(v_threshold), np.float32(gain),
    )
    _launch(kernel, (width + _THREADS - 1) // _THREADS, args, device)
    return abar_seq, saved


def _backward_impl(grad_abar_seq, saved, input_scale, gain, code_id):
    grad_input = torch.empty_like(grad_abar_seq)
    numel = grad_input.numel()
    if numel == 0:
        return grad_input
    device = grad_abar_seq.device.index
    kernels = compiled_kernels(code_id, _DTYPE_NAMES[grad_abar_seq.dtype], device)
    if _pairs_allowed(grad_abar_seq.dtype, numel, grad_abar_seq, saved, grad_input):
        kernel, width = kernels["saf_backward_pairs"], numel // 2
    else:
        kernel, width = kernels["saf_backward"], numel
    blocks = min((width + _THREADS - 1) // _THREADS, _max_backward_blocks(device))
    args = (_pointer(grad_abar_seq), _pointer(saved), _pointer(grad_input), np.int64(width),
            np.float32(input_scale), np.float32(gain))
    _launch(kernel, blocks, args, device)
    return grad_input


#: The custom operators ``torch.ops.spikingjelly_saf.cupy_*``, registered when this module is imported.
OPS = define_backend_ops("cupy", _forward_impl, _backward_impl)


def ops():
    return OPS


#: The backend contract function for ``backend='cupy'``.
run = make_run("cupy", OPS, _check_device)
