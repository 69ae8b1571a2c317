"""SAF (Spike Accumulation Forwarding) operators.

``reference.py`` holds the torch reference, one small function per formula; ``backends/`` holds the
fused multi-step Triton operator. :func:`multi_step` chooses between them from the input's device,
like the other neuron operators: the torch reference on CPU; on CUDA, Triton when it is installed
(the operator itself falls back to the reference for a dtype or surrogate without a kernel), else
the reference. It is the choice of ``SAFNode``'s default ``backend='auto'`` (``backends.AutomaticBackend``,
registered with the backends), made once per device. Setting ``SJ_SAF_CUDA_IMPLEMENTATION=auto|triton|torch``
forces one; with ``triton`` and ``TRITON_INTERPRET=1`` the kernels also run on CPU tensors, through
Triton's interpreter.
"""

import math
import os
from typing import Optional

import torch

from . import backends, reference

def _check(tau: float, decay_input: bool, v_threshold: float) -> None:
    if isinstance(tau, bool) or not isinstance(tau, (int, float)) or math.isnan(tau) or tau < 1:
        raise ValueError(f"tau must be a number >= 1 (math.inf for an IF neuron), got {tau!r}")
    if math.isinf(tau) and decay_input:
        raise ValueError("tau=math.inf with decay_input=True scales every input to zero")
    if not isinstance(v_threshold, (int, float)) or not 0 < v_threshold < math.inf:
        raise ValueError(f"v_threshold must be positive and finite, got {v_threshold!r}")


def _default_surrogate(surrogate_function):
    if surrogate_function is not None:
        return surrogate_function
    from ...activation_based.surrogate import Sigmoid

    return Sigmoid(alpha=4.0)


def _abar(x: torch.Tensor, abar: Optional[torch.Tensor]) -> torch.Tensor:
    if abar is None or not isinstance(abar, torch.Tensor):
        return torch.zeros_like(x)
    return abar.detach()


def implementation(device: torch.device) -> str:
    """``'torch'`` or ``'triton'``: the implementation :func:`multi_step` uses on ``device``.

    The choice of ``SAFNode``'s ``backend='auto'`` (``backends.AutomaticBackend``), made once per
    device: Triton on CUDA when it is installed, else the torch reference; ``SJ_SAF_CUDA_IMPLEMENTATION``
    forces one of them (an unknown name raises ``ValueError``, one that cannot run on ``device``
    ``RuntimeError``).
    """
    requested = os.environ.get(backends.BACKEND_ENVIRONMENT_VARIABLE, "auto")
    return backends.REGISTRY.get("auto").choose(device, requested)


def _parameters(tau, decay_input, v_threshold) -> reference.SAFParameters:
    _check(tau, decay_input, v_threshold)
    return reference.SAFParameters.from_tau(tau, float(v_threshold), bool(decay_input))


def step(x, abar, weight_sum, tau, decay_input, v_threshold, surrogate_function):
    """One SAF step: ``(abar_next, (abar_next, weight_sum_next))``."""
    params = _parameters(tau, decay_input, v_threshold)
    abar_next, state = backends.REGISTRY.single_step(
        "torch", x, reference.SAFState(_abar(x, abar), float(weight_sum)), params,
        _default_surrogate(surrogate_function))
    return abar_next, (abar_next.detach(), state.weight_sum)


def multi_step(x_seq, abar, weight_sum, tau, decay_input, v_threshold, surrogate_function,
               store_v_seq=False):
    """SAF over ``x_seq[T, ...]``: ``(abar_seq, (abar, weight_sum), v_seq_or_None)``."""
    params = _parameters(tau, decay_input, v_threshold)
    if x_seq.dim() < 1 or x_seq.shape[0] < 1:
        raise ValueError(f"x_seq must have shape [T, ...] with T >= 1, got {tuple(x_seq.shape)}")
    state = reference.SAFState(_abar(x_seq[0], abar), float(weight_sum))
    abar_seq, final = backends.REGISTRY.multi_step("auto", x_seq, state, params,
                                                   _default_surrogate(surrogate_function))
    v_seq = None
    if store_v_seq:
        with torch.no_grad():
            sums = reference.weight_sums(float(weight_sum), params.decay, x_seq.shape[0])
            v_seq = torch.stack([
                reference.lif_membrane_after_reset(x, a, c, params.v_threshold, params.input_scale)
                for x, a, c in zip(x_seq, abar_seq, sums)
            ])
    return abar_seq, (final.abar, final.weight_sum), v_seq
