r"""
``torch.library`` registration shared by the fused backends, and what their kernels share.

Each kernel module (:mod:`.cupy_backend`, :mod:`.triton_backend`) supplies two implementations on
flat float32 tensors,

    forward_impl(input_seq[T, N], abar_prev[N], coefficients[T, 4], v_threshold, gain, code_id, save)
        (gain = input_scale / v_threshold, used by the representation-level mask)
        -> (abar_seq[T, N], saved[T, N] or an empty tensor)
    backward_impl(grad_abar_seq[T, N], saved[T, N], input_scale, gain, code_id) -> grad_input_seq

and :func:`define_backend_ops` registers them as custom operators ``spikingjelly_saf::<name>_forward``
(with a fake implementation and autograd), ``spikingjelly_saf::<name>_forward_only`` (no autograd
context, nothing saved: SAF-F's steps before the last, and inference) and
``spikingjelly_saf::<name>_backward``. ``torch.compile`` and ``torch.export`` see opaque operators.
:class:`~spikingjelly_saf.backends.FusedBackend` calls them.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import torch

from .. import functional as saf_functional
from .surrogate_codes import REPRESENTATION_LEVEL, surrogate_code_by_id

__all__ = ["coefficient_tensor", "saved_dtype", "new_saved", "define_backend_ops",
           "BackendOps"]


def coefficient_tensor(table, device: torch.device) -> torch.Tensor:
    """The kernel table as a float32 tensor on ``device``; ``table`` is a list of
    :class:`~spikingjelly_saf.functional.StepCoefficients` or an already flattened list."""
    if table and isinstance(table[0], saf_functional.StepCoefficients):
        table = [getattr(k, column) for k in table for column in saf_functional.KERNEL_COLUMNS]
    host = torch.tensor(table, dtype=torch.float32)
    if device.type == "cuda":
        # Pinned + non_blocking: the copy is queued on the stream instead of synchronising with it.
        return host.pin_memory().to(device, non_blocking=True)
    return host.to(device)


def saved_dtype(code_id: int, dtype: torch.dtype) -> torch.dtype:
    """What the forward saves for the backward: the representation mask ``0 < u < 1`` as ``uint8``
    (exact, a quarter of float32's bytes), otherwise ``x = H - V_th`` in ``dtype``."""
    return torch.uint8 if surrogate_code_by_id(code_id).level == REPRESENTATION_LEVEL else dtype


def new_saved(input_seq: torch.Tensor, code_id: int, save: bool) -> torch.Tensor:
    """The buffer a forward kernel fills with what the backward needs (empty when nothing is saved)."""
    if not save:
        return input_seq.new_empty(0)
    return torch.empty_like(input_seq, dtype=saved_dtype(code_id, input_seq.dtype))


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
        return torch.empty_like(input_seq), new_saved(input_seq, code_id, True)

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
