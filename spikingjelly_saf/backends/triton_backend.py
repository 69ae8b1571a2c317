r"""
``backend='triton'``: SAF's fused multi-step kernels in Triton.

The same algorithm as the CUDA kernels of :mod:`.kernel_source`: a forward kernel over ``[T, N]``
that loops over ``t`` inside each program and saves only what the surrogate needs, and an
elementwise backward kernel. With ``TRITON_INTERPRET=1`` (set before Triton is imported) the kernels
run on CPU tensors, which is how the test suite executes them without a GPU.

This module imports Triton; :mod:`spikingjelly_saf.backends` imports it only when
``backend='triton'`` is first used.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from .custom_ops import define_backend_ops, make_run
from .surrogate_codes import REPRESENTATION_LEVEL, surrogate_code_by_id

__all__ = ["run", "ops", "BUILTIN_TRITON_SURROGATES", "interpreting"]

_BLOCK = 1024


def interpreting() -> bool:
    """True when Triton runs kernels through its CPU interpreter."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


# ---- surrogate derivatives fn(x, p0, p1), x in float32; p0 is alpha ----------------------------
@triton.jit
def sigmoid_derivative(x, p0, p1):
    # The derivative is even in x; exp of a non-positive argument cannot overflow.
    s = 1.0 / (1.0 + tl.exp(-p0 * tl.abs(x)))
    return (1.0 - s) * s * p0


@triton.jit
def atan_derivative(x, p0, p1):
    z = x * (1.5707963267948966 * p0)
    return (0.5 * p0) / (1.0 + z * z)


@triton.jit
def piecewise_quadratic_derivative(x, p0, p1):
    return tl.maximum(0.0, p0 - p0 * p0 * tl.abs(x))


@triton.jit
def piecewise_exp_derivative(x, p0, p1):
    return (0.5 * p0) * tl.exp(-p0 * tl.abs(x))


@triton.jit
def soft_sign_derivative(x, p0, p1):
    z = 1.0 / p0 + tl.abs(x)
    return 1.0 / (2.0 * p0 * z * z)


@triton.jit
def super_spike_derivative(x, p0, p1):
    z = 1.0 + tl.abs(x)
    return p0 / (z * z)


@triton.jit
def erf_derivative(x, p0, p1):
    z = p0 * x
    return (0.5641895835477563 * p0) * tl.exp(-z * z)


BUILTIN_TRITON_SURROGATES = {
    "Sigmoid": sigmoid_derivative,
    "ATan": atan_derivative,
    "PiecewiseQuadratic": piecewise_quadratic_derivative,
    "PiecewiseExp": piecewise_exp_derivative,
    "SoftSign": soft_sign_derivative,
    "SuperSpike": super_spike_derivative,
    "Erf": erf_derivative,
}


# ---- kernels -------------------------------------------------------------------------------------
@triton.jit
def _storage_round(v, STORAGE: tl.constexpr):
    # PyTorch rounds the result of every eager operation to the tensor dtype (round to nearest even).
    if STORAGE == tl.bfloat16:
        # Explicit bit arithmetic: Triton's CPU interpreter does not round float32 -> bfloat16 to
        # nearest even, and on GPUs this is the same rounding as cvt.rn.bf16.f32.
        bits = v.to(tl.uint32, bitcast=True)
        rounded = (bits + (0x7FFF + ((bits >> 16) & 1))) & 0xFFFF0000
        return tl.where(v != v, v, rounded.to(tl.float32, bitcast=True))
    else:
        return v.to(STORAGE).to(tl.float32)


@triton.jit
def _saf_forward_kernel(input_ptr, abar_prev_ptr, coefficient_ptr, abar_seq_ptr, saved_ptr,
                        steps, neurons, v_threshold, gain,
                        SAVE: tl.constexpr, REPRESENTATION: tl.constexpr, BLOCK: tl.constexpr):
    storage = abar_seq_ptr.dtype.element_ty
    offsets = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    inside = offsets < neurons
    abar = tl.load(abar_prev_ptr + offsets, mask=inside, other=0.0).to(tl.float32)
    index = offsets  # int64: t * N + n may exceed 2^31
    for t in range(steps):
        k_input = tl.load(coefficient_ptr + 4 * t)
        k_reset = tl.load(coefficient_ptr + 4 * t + 1)
        k_carry = tl.load(coefficient_ptr + 4 * t + 2)
        k_average = tl.load(coefficient_ptr + 4 * t + 3)
        current = tl.load(input_ptr + index, mask=inside, other=0.0).to(tl.float32)
        h = _storage_round(_storage_round(k_input * current, storage)
                           - _storage_round(k_reset * abar, storage), storage)
        over_th = _storage_round(h - v_threshold, storage)
        spike = tl.where(over_th >= 0.0, 1.0, 0.0)
        abar = _storage_round(_storage_round(spike + _storage_round(k_carry * abar, storage), storage)
                              * k_average, storage)
        tl.store(abar_seq_ptr + index, abar.to(storage), mask=inside)  # abar is representable: exact
        if SAVE:
            if REPRESENTATION:
                u = _storage_round(current * gain, storage)
                tl.store(saved_ptr + index, ((u > 0.0) & (u < 1.0)).to(tl.uint8), mask=inside)
            else:
                tl.store(saved_ptr + index, over_th.to(storage), mask=inside)  # representable
        index += neurons


@triton.jit
def _saf_backward_kernel(grad_abar_ptr, saved_ptr, grad_input_ptr, numel, input_scale, gain,
                         p0, p1, SURROGATE: tl.constexpr, REPRESENTATION: tl.constexpr,
                         BLOCK: tl.constexpr):
    storage = grad_input_ptr.dtype.element_ty
    offsets = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    inside = offsets < numel
    grad = tl.load(grad_abar_ptr + offsets, mask=inside, other=0.0).to(tl.float32)
    if REPRESENTATION:
        mask = tl.load(saved_ptr + offsets, mask=inside, other=0).to(tl.float32)
        grad_input = _storage_round(_storage_round(grad * mask, storage) * gain, storage)
    else:
        over_th = tl.load(saved_ptr + offsets, mask=inside, other=0.0).to(tl.float32)
        grad_input = _storage_round(grad * SURROGATE(over_th, p0, p1) * input_scale, storage)
    tl.store(grad_input_ptr + offsets, grad_input.to(storage), mask=inside)


# ---- host side -----------------------------------------------------------------------------------
def _launch_options() -> dict:
    # No FMA contraction: the forward must round like PyTorch's separate multiply and add.
    return {"enable_fp_fusion": False}


def _check_device(tensor: torch.Tensor) -> None:
    if tensor.device.type == "cpu" and not interpreting():
        raise RuntimeError(
            "SAFNode(backend='triton') got a CPU tensor. Triton kernels run on a GPU; move the model and "
            "input to CUDA, use backend='torch' on CPU, or set TRITON_INTERPRET=1 before importing "
            "Triton to run the kernels through Triton's (slow) CPU interpreter."
        )


def _forward_impl(input_seq, abar_prev, coefficients, v_threshold, gain, code_id, save):
    code = surrogate_code_by_id(code_id)
    representation = code.level == REPRESENTATION_LEVEL
    steps, neurons = input_seq.shape
    abar_seq = torch.empty_like(input_seq)
    if save:
        saved = torch.empty_like(input_seq, dtype=torch.uint8 if representation else input_seq.dtype)
    else:
        saved = abar_seq.new_empty(0)
    if abar_seq.numel():
        grid = (triton.cdiv(neurons, _BLOCK),)
        _saf_forward_kernel[grid](
            input_seq, abar_prev, coefficients, abar_seq, saved if save else abar_seq,
            steps, neurons, float(v_threshold), float(gain),
            SAVE=save, REPRESENTATION=representation, BLOCK=_BLOCK, **_launch_options(),
        )
    return abar_seq, saved


def _surrogate_function(code):
    if isinstance(code.triton, str):
        return BUILTIN_TRITON_SURROGATES[code.triton]
    return code.triton


def _backward_impl(grad_abar_seq, saved, input_scale, gain, code_id):
    code = surrogate_code_by_id(code_id)
    representation = code.level == REPRESENTATION_LEVEL
    grad_input = torch.empty_like(grad_abar_seq)
    numel = grad_input.numel()
    if numel:
        grid = (triton.cdiv(numel, _BLOCK),)
        surrogate = sigmoid_derivative if representation else _surrogate_function(code)
        _saf_backward_kernel[grid](
            grad_abar_seq, saved, grad_input, numel, float(input_scale), float(gain),
            float(code.params[0]), float(code.params[1]),
            SURROGATE=surrogate, REPRESENTATION=representation, BLOCK=_BLOCK, **_launch_options(),
        )
    return grad_input


#: The custom operators ``torch.ops.spikingjelly_saf.triton_*``, registered when this module is imported.
OPS = define_backend_ops("triton", _forward_impl, _backward_impl)


def ops():
    return OPS


#: The backend contract function for ``backend='triton'``.
run = make_run("triton", OPS, _check_device)
