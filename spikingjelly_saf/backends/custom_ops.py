r"""
``torch.library`` registration shared by the fused backends, and their common host-side code.

Each fused backend supplies two implementations on flat tensors,

    forward_impl(input_seq[T, N], abar_prev[N], coefficients[T, 4], v_threshold, gain, code_id, save)
        (gain = input_scale / v_threshold, used by the representation-level mask)
        -> (abar_seq[T, N], saved[T, N] or an empty tensor)
    backward_impl(grad_abar_seq[T, N], saved[T, N], input_scale, gain, code_id) -> grad_input_seq

and :func:`define_backend_ops` registers them as custom operators ``spikingjelly_saf::<name>_forward``
(with a fake implementation and autograd), ``spikingjelly_saf::<name>_forward_only`` (no autograd
context, nothing saved: SAF-F's steps before the last and inference) and
``spikingjelly_saf::<name>_backward``. ``torch.compile`` and ``torch.export`` see opaque operators.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import torch

from .. import functional as F
from .surrogate_codes import REPRESENTATION_LEVEL, resolve_surrogate_code, surrogate_code_by_id

__all__ = ["KERNEL_DTYPES", "step_coefficients", "define_backend_ops", "BackendOps", "make_run"]

#: dtypes with fused kernels; anything else (float64) runs on the torch backend.
KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def step_coefficients(weight_sum_prev: float, decay: float, v_threshold: float,
                      input_scale: float, steps: int) -> list[float]:
    r"""The flattened ``[T, 4]`` table ``(c[t] s, V_th lam c[t-1], lam c[t-1], 1/c[t])``.

    The products are the exact Python expressions of :func:`~spikingjelly_saf.functional.membrane_before_fire`
    and :func:`~spikingjelly_saf.functional.average_update`, evaluated in double precision; stored as
    float32 they are the values PyTorch multiplies by.
    """
    table = []
    previous = weight_sum_prev
    for current in F.weight_sums(weight_sum_prev, decay, steps):
        table += [current * input_scale, v_threshold * decay * previous, decay * previous, 1.0 / current]
        previous = current
    return table


def coefficient_tensor(table: list[float], device: torch.device) -> torch.Tensor:
    host = torch.tensor(table, dtype=torch.float32)
    if device.type == "cuda":
        # Pinned + non_blocking: the copy is queued on the stream instead of synchronising with it.
        return host.pin_memory().to(device, non_blocking=True)
    return host.to(device)


def saved_dtype(code_id: int, dtype: torch.dtype) -> torch.dtype:
    return torch.uint8 if surrogate_code_by_id(code_id).level == REPRESENTATION_LEVEL else dtype


@dataclasses.dataclass(frozen=True)
class BackendOps:
    forward: Callable
    forward_only: Callable
    backward: Callable


def define_backend_ops(name: str, forward_impl: Callable, backward_impl: Callable) -> BackendOps:
    """Register the three custom operators of backend ``name``."""
    namespace = f"spikingjelly_saf::{name}"

    @torch.library.custom_op(f"{namespace}_forward", mutates_args=())
    def forward(input_seq: torch.Tensor, abar_prev: torch.Tensor, coefficients: torch.Tensor,
                v_threshold: float, input_scale: float, gain: float,
                code_id: int) -> tuple[torch.Tensor, torch.Tensor]:
        return forward_impl(input_seq, abar_prev, coefficients, v_threshold, gain, code_id, True)

    @forward.register_fake
    def _(input_seq, abar_prev, coefficients, v_threshold, input_scale, gain, code_id):
        return (torch.empty_like(input_seq),
                torch.empty_like(input_seq, dtype=saved_dtype(code_id, input_seq.dtype)))

    @torch.library.custom_op(f"{namespace}_forward_only", mutates_args=())
    def forward_only(input_seq: torch.Tensor, abar_prev: torch.Tensor, coefficients: torch.Tensor,
                     v_threshold: float, gain: float, code_id: int) -> torch.Tensor:
        return forward_impl(input_seq, abar_prev, coefficients, v_threshold, gain, code_id, False)[0]

    @forward_only.register_fake
    def _(input_seq, abar_prev, coefficients, v_threshold, gain, code_id):
        return torch.empty_like(input_seq)

    @torch.library.custom_op(f"{namespace}_backward", mutates_args=())
    def backward(grad_abar_seq: torch.Tensor, saved: torch.Tensor, input_scale: float, gain: float,
                 code_id: int) -> torch.Tensor:
        return backward_impl(grad_abar_seq, saved, input_scale, gain, code_id)

    @backward.register_fake
    def _(grad_abar_seq, saved, input_scale, gain, code_id):
        return torch.empty_like(grad_abar_seq)

    def setup_context(ctx, inputs, output):
        _, _, _, _, input_scale, gain, code_id = inputs
        ctx.save_for_backward(output[1])
        ctx.input_scale, ctx.gain, ctx.code_id = input_scale, gain, code_id

    def backward_formula(ctx, grad_abar_seq, grad_saved):
        (saved,) = ctx.saved_tensors
        grad_input = backward(grad_abar_seq.contiguous(), saved, ctx.input_scale, ctx.gain,
                              ctx.code_id)
        return grad_input, None, None, None, None, None, None

    forward.register_autograd(backward_formula, setup_context=setup_context)
    return BackendOps(forward, forward_only, backward)


def make_run(backend: str, ops: BackendOps, check_input: Callable) -> Callable:
    """The backend contract ``run(...)`` of :mod:`spikingjelly_saf.backends` around ``ops``."""
    from . import torch_multi_step

    # The id depends only on the surrogate's class, parameters and registrations, never on tensors:
    # traced code (torch.compile, strict torch.export) takes it as a constant instead of tracing the
    # code generation and the registry's lock. Applied here, not at import: it loads torch._dynamo.
    surrogate_code = torch.compiler.assume_constant_result(resolve_surrogate_code)

    def run(input_seq, abar_prev, weight_sum_prev, decay, v_threshold, input_scale,
            surrogate_function):
        dtype = torch.promote_types(input_seq.dtype, abar_prev.dtype)
        code_id = surrogate_code(surrogate_function, backend)
        if code_id is None or dtype not in KERNEL_DTYPES:
            return torch_multi_step(input_seq, abar_prev, weight_sum_prev, decay, v_threshold,
                                    input_scale, surrogate_function)
        check_input(input_seq)
        steps = input_seq.shape[0]
        flat_input = input_seq.to(dtype).reshape(steps, -1).contiguous()
        flat_abar = abar_prev.to(dtype).reshape(-1).contiguous()
        table = step_coefficients(weight_sum_prev, decay, v_threshold, input_scale, steps)
        coefficients = coefficient_tensor(table, flat_input.device)
        gain = input_scale / v_threshold
        if torch.is_grad_enabled() and flat_input.requires_grad:
            abar_seq, _ = ops.forward(flat_input, flat_abar, coefficients, v_threshold, input_scale,
                                      gain, code_id)
        else:
            abar_seq = ops.forward_only(flat_input, flat_abar, coefficients, v_threshold, gain, code_id)
        weight_sum = F.weight_sums(weight_sum_prev, decay, steps)[-1] if steps else weight_sum_prev
        return abar_seq.view((steps,) + tuple(abar_prev.shape)), weight_sum

    return run
