r"""
``backend='triton'``: SAF's fused multi-step kernels in Triton.

The same algorithm as the CUDA kernels of :mod:`.kernel_source`: a forward kernel over ``[T, N]``
that loops over ``t`` inside each program, reads the per-step coefficient table of
:func:`spikingjelly_saf.functional.coefficient_table` and saves the surrogate derivative (or the
representation mask), and an elementwise backward kernel that multiplies by it. Everything is float32. With ``TRITON_INTERPRET=1`` (set before Triton is imported) the kernels
run on CPU tensors, which is how the test suite executes them without a GPU.

This module imports Triton; :mod:`spikingjelly_saf.backends` imports it only when
``backend='triton'`` is first used.
"""

from __future__ import annotations

import contextlib

import torch
import triton
import triton.language as tl

from .custom_ops import new_saved
from .kernel_source import GRADIENT_FLUSH_BELOW
from .surrogate_codes import REPRESENTATION_LEVEL, surrogate_code_by_id

__all__ = ["forward_impl", "backward_impl", "BUILTIN_TRITON_SURROGATES", "on_tensor_device"]

_BLOCK = 1024


# ---- surrogate derivatives fn(x, p0, p1), x in float32; p0 is alpha ----------------------------
@triton.jit
def sigmoid_derivative(x, p0, p1):
    # The derivative is even in x: a e / (1 + e)^2 with e = exp(-a|x|) <= 1 keeps its relative
    # accuracy on both sides of the threshold and cannot overflow (1 - sigmoid(a|x|) rounds to 0
    # once a|x| > ~16.6).
    e = tl.exp(-p0 * tl.abs(x))
    d = 1.0 + e
    return (p0 * e) / (d * d)


@triton.jit
def atan_derivative(x, p0, p1):
    z = x * (1.5707963267948966 * p0)
    return (0.5 * p0) / (1.0 + z * z)


@triton.jit
def piecewise_quadratic_derivative(x, p0, p1):
    # Not tl.maximum, which may return 0 for NaN: a NaN membrane gives a NaN gradient, as in torch.
    q = p0 - p0 * p0 * tl.abs(x)
    return tl.where(q < 0.0, 0.0, q)


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


# ---- kernels (float32; the host converts 16-bit tensors, see FusedBackend) ----------------------------
@triton.jit
def _saf_forward_kernel(input_ptr, abar_prev_ptr, coefficient_ptr, abar_seq_ptr, saved_ptr,
                        steps, neurons, v_threshold, gain, p0, p1, SURROGATE: tl.constexpr,
                        SAVE: tl.constexpr, REPRESENTATION: tl.constexpr, BLOCK: tl.constexpr):
    offsets = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    inside = offsets < neurons
    abar = tl.load(abar_prev_ptr + offsets, mask=inside, other=0.0)
    index = offsets  # int64: t * N + n may exceed 2^31
    for t in range(steps):
        # One row of the coefficient table: c[t] s, V_th lam c[t-1], lam c[t-1], 1 / c[t].
        k_input = tl.load(coefficient_ptr + 4 * t)
        k_reset = tl.load(coefficient_ptr + 4 * t + 1)
        k_carry = tl.load(coefficient_ptr + 4 * t + 2)
        k_average = tl.load(coefficient_ptr + 4 * t + 3)
        current = tl.load(input_ptr + index, mask=inside, other=0.0)
        over_th = (k_input * current - k_reset * abar) - v_threshold
        spike = tl.where(over_th >= 0.0, 1.0, 0.0)
        abar = (spike + k_carry * abar) * k_average
        tl.store(abar_seq_ptr + index, abar, mask=inside)
        if SAVE:
            if REPRESENTATION:
                u = current * gain
                tl.store(saved_ptr + index, ((u > 0.0) & (u < 1.0)).to(tl.uint8), mask=inside)
            else:
                tl.store(saved_ptr + index, SURROGATE(over_th, p0, p1), mask=inside)
        index += neurons


@triton.jit
def _saf_backward_kernel(grad_abar_ptr, saved_ptr, grad_input_ptr, numel, input_scale, gain, flush_below,
                         REPRESENTATION: tl.constexpr, BLOCK: tl.constexpr):
    offsets = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    inside = offsets < numel
    grad = tl.load(grad_abar_ptr + offsets, mask=inside, other=0.0)
    if REPRESENTATION:
        mask = tl.load(saved_ptr + offsets, mask=inside, other=0).to(tl.float32)
        grad_input = (grad * mask) * gain
    else:
        derivative = tl.load(saved_ptr + offsets, mask=inside, other=0.0)
        grad_input = grad * derivative * input_scale
    grad_input = tl.where(tl.abs(grad_input) < flush_below, grad_input * 0.0, grad_input)
    tl.store(grad_input_ptr + offsets, grad_input, mask=inside)


# ---- host side -----------------------------------------------------------------------------------
def _launch_options() -> dict:
    # No FMA contraction: the forward must round like PyTorch's separate multiply and add.
    return {"enable_fp_fusion": False}


def on_tensor_device(tensor: torch.Tensor):
    """The context to launch in: Triton launches on the current CUDA device, whatever the tensors'
    device, so a tensor on cuda:1 while cuda:0 is current needs its own device made current."""
    return torch.cuda.device(tensor.device) if tensor.device.type == "cuda" else contextlib.nullcontext()


def forward_impl(input_seq, abar_prev, coefficients, v_threshold, gain, code_id, save):
    code = surrogate_code_by_id(code_id)
    representation = code.level == REPRESENTATION_LEVEL
    steps, neurons = input_seq.shape
    abar_seq = torch.empty_like(input_seq)
    saved = new_saved(input_seq, code_id, save)
    if abar_seq.numel():
        grid = (triton.cdiv(neurons, _BLOCK),)
        with on_tensor_device(input_seq):
            _saf_forward_kernel[grid](
                input_seq, abar_prev, coefficients, abar_seq, saved if save else abar_seq,
                steps, neurons, float(v_threshold), float(gain), float(code.params[0]), float(code.params[1]),
                SURROGATE=sigmoid_derivative if representation else _surrogate_function(code),
                SAVE=save, REPRESENTATION=representation, BLOCK=_BLOCK, **_launch_options(),
            )
    return abar_seq, saved


def _surrogate_function(code):
    if isinstance(code.triton, str):
        return BUILTIN_TRITON_SURROGATES[code.triton]
    return code.triton


def backward_impl(grad_abar_seq, saved, input_scale, gain, code_id):
    representation = surrogate_code_by_id(code_id).level == REPRESENTATION_LEVEL
    grad_input = torch.empty_like(grad_abar_seq)
    numel = grad_input.numel()
    if numel:
        grid = (triton.cdiv(numel, _BLOCK),)
        with on_tensor_device(grad_abar_seq):
            _saf_backward_kernel[grid](
                grad_abar_seq, saved, grad_input, numel, float(input_scale), float(gain), GRADIENT_FLUSH_BELOW,
                REPRESENTATION=representation, BLOCK=_BLOCK, **_launch_options(),
            )
    return grad_input
