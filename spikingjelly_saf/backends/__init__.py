"""
Backends that run SAFNode's step functions.

Every backend implements the same contract, the multi-step function

    run(input_seq, abar_prev, weight_sum_prev, decay, v_threshold, input_scale, surrogate_function)
        -> (abar_seq, weight_sum)

with ``input_seq`` of shape ``[T, *]``, ``abar_prev`` of shape ``[*]`` (already detached), and the
gradient of :mod:`spikingjelly_saf.functional`. ``'torch'`` runs everywhere and in both step modes;
fused backends run the whole sequence in one launch and are multi-step only. Importing this package
never imports CuPy or Triton.
"""

from __future__ import annotations

import functools
from typing import Callable

from .. import functional as F
from ..surrogate import is_representation_level

__all__ = ["SUPPORTED_BACKENDS", "torch_step", "torch_multi_step", "get_multi_step", "check_backend"]

#: Backends per step mode, the same shape as SpikingJelly's ``supported_backends``.
SUPPORTED_BACKENDS = {"s": ("torch",), "m": ("torch",)}

_MULTI_STEP: dict[str, Callable] = {}
_AVAILABILITY_CHECKS: dict[str, Callable[[], None]] = {}


def torch_step(input_current, abar_prev, weight_sum_prev, decay, v_threshold, input_scale,
               surrogate_function):
    """The torch single step: spike-level or representation-level, by the surrogate's kind."""
    step = F.saf_step_representation if is_representation_level(surrogate_function) else F.saf_step
    return step(input_current, abar_prev, weight_sum_prev, decay, v_threshold, input_scale,
                surrogate_function)


def torch_multi_step(input_seq, abar_prev, weight_sum_prev, decay, v_threshold, input_scale,
                     surrogate_function):
    step = functools.partial(torch_step, surrogate_function=surrogate_function)
    return F.saf_multi_step(input_seq, abar_prev, weight_sum_prev, decay, v_threshold,
                            input_scale, step)


def register_multi_step_backend(name: str, run: Callable, availability_check: Callable[[], None]):
    """Add a fused multi-step backend. ``availability_check`` raises a clear error when it cannot run."""
    _MULTI_STEP[name] = run
    _AVAILABILITY_CHECKS[name] = availability_check
    if name not in SUPPORTED_BACKENDS["m"]:
        SUPPORTED_BACKENDS["m"] = SUPPORTED_BACKENDS["m"] + (name,)


_MULTI_STEP["torch"] = torch_multi_step


def check_backend(backend: str, step_mode: str) -> None:
    """Raise ``ValueError`` for an unknown backend and the backend's own error when it cannot run."""
    valid = SUPPORTED_BACKENDS.get(step_mode, ())
    if backend not in valid:
        raise ValueError(
            f"backend={backend!r} is not supported in step_mode={step_mode!r}; "
            f"valid backends: {', '.join(repr(b) for b in valid)}."
            + (" Fused backends run in multi-step mode: use step_mode='m'."
               if step_mode == "s" and backend in SUPPORTED_BACKENDS["m"] else "")
        )
    check = _AVAILABILITY_CHECKS.get(backend)
    if check is not None:
        check()


def get_multi_step(backend: str) -> Callable:
    return _MULTI_STEP[backend]
