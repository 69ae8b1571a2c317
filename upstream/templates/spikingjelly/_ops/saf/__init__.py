"""SAF (Spike Accumulation Forwarding) operators.

``reference.py`` holds the torch reference, one small function per formula; ``backends/`` holds the
fused multi-step Triton operator. :func:`multi_step` chooses between them from the input's device,
like the other neuron operators: the torch reference on CPU; on CUDA, Triton when it is installed
(the operator itself falls back to the reference for a dtype or surrogate without a kernel), else
the reference. ``SJ_SAF_CUDA_IMPLEMENTATION=auto|triton|torch`` overrides the choice on CUDA; with
``triton`` and ``TRITON_INTERPRET=1`` the kernels also run on CPU tensors, through Triton's interpreter.
"""

import math
import os
from typing import Optional

import torch

from . import backends, reference

_ENVIRONMENT_VARIABLE = "SJ_SAF_CUDA_IMPLEMENTATION"


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
    """``'torch'`` or ``'triton'``: the implementation :func:`multi_step` uses on ``device``."""
    requested = os.environ.get(_ENVIRONMENT_VARIABLE, "auto")
    if requested not in ("auto", "triton", "torch"):
        raise ValueError(f"{_ENVIRONMENT_VARIABLE} must be auto, triton, or torch; got {requested!r}")
    # Triton's CPU interpreter (TRITON_INTERPRET=1, set before Triton is imported) runs the kernels on
    # CPU tensors when Triton is requested explicitly: a test aid, never chosen automatically.
    interpreted = requested == "triton" and os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
    if requested == "torch" or (device.type != "cuda" and not interpreted):
        return "torch"
    try:
        backends.check_backend("triton", "m")
    except RuntimeError as error:
        if requested == "triton":
            raise RuntimeError(f"{_ENVIRONMENT_VARIABLE}=triton cannot run: {error}") from error
        return "torch"
    return "triton"


def step(x, abar, weight_sum, tau, decay_input, v_threshold, surrogate_function):
    """One SAF step: ``(abar_next, (abar_next, weight_sum_next))``."""
    _check(tau, decay_input, v_threshold)
    abar_next, weight_sum_next = backends.torch_step(
        x, _abar(x, abar), float(weight_sum), reference.decay_factor(tau), float(v_threshold),
        reference.input_scale_factor(tau, decay_input), _default_surrogate(surrogate_function),
    )
    return abar_next, (abar_next.detach(), weight_sum_next)


def multi_step(x_seq, abar, weight_sum, tau, decay_input, v_threshold, surrogate_function,
               store_v_seq=False):
    """SAF over ``x_seq[T, ...]``: ``(abar_seq, (abar, weight_sum), v_seq_or_None)``."""
    _check(tau, decay_input, v_threshold)
    if x_seq.dim() < 1 or x_seq.shape[0] < 1:
        raise ValueError(f"x_seq must have shape [T, ...] with T >= 1, got {tuple(x_seq.shape)}")
    decay = reference.decay_factor(tau)
    input_scale = reference.input_scale_factor(tau, decay_input)
    abar_prev = _abar(x_seq[0], abar)
    if implementation(x_seq.device) == "triton":
        run = backends.get_multi_step("triton")
    else:
        run = backends.torch_multi_step
    abar_seq, weight_sum_next = run(x_seq, abar_prev, float(weight_sum), decay, float(v_threshold),
                                    input_scale, _default_surrogate(surrogate_function))
    v_seq = None
    if store_v_seq:
        with torch.no_grad():
            sums = reference.weight_sums(float(weight_sum), decay, x_seq.shape[0])
            v_seq = torch.stack([
                reference.lif_membrane_after_reset(x, a, c, float(v_threshold), input_scale)
                for x, a, c in zip(x_seq, abar_seq, sums)
            ])
    return abar_seq, (abar_seq[-1].detach().clone(), weight_sum_next), v_seq
