r"""
The mathematics of Spike Accumulation Forwarding, one function per formula.

**API Language** - 中文 | English

* **中文**: SAF 的全部公式，每个公式一个纯函数。模块（``SAFNode`` 等）只保存状态并选择后端。
* **English**: every SAF formula as a small pure function. Modules (``SAFNode`` and friends)
  only hold state and choose a backend; CuPy and Triton kernels implement these same functions.

Notation (SAF_SPEC): ``decay`` is :math:`\lambda = 1 - 1/\tau`, ``weight_sum`` is
:math:`c[t] = \lambda c[t-1] + 1` with :math:`c[0] = 0`, ``abar`` is the weighted firing rate
:math:`\bar A[t] = A[t] / c[t]` and ``input_current`` is :math:`I[t]`, the layer applied to the previous
neuron's :math:`\bar A`. ``input_scale`` is ``1/tau`` when ``decay_input`` is set and ``1`` otherwise.

All ``weight_sum`` values are Python floats: they are the same for every neuron of a layer.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch

__all__ = [
    "decay_factor",
    "input_scale_factor",
    "next_weight_sum",
    "weight_sums",
    "membrane_before_fire",
    "average_update",
    "saf_step",
    "saf_multi_step",
    "lif_membrane_after_reset",
    "recover_instantaneous",
    "recover_instantaneous_seq",
    "running_average",
    "representation_mapping",
    "normalised_input",
    "saf_step_representation",
    "saf_step_spike_level",
    "saf_step_representation_traceable",
    "fire_and_average",
    "heaviside",
    "spike_level_input_gradient",
    "has_explicit_backward",
]


def decay_factor(tau: float) -> float:
    r"""The leak :math:`\lambda = 1 - 1/\tau`; ``tau = inf`` gives the IF neuron (:math:`\lambda = 1`)."""
    return 1.0 - 1.0 / tau


def input_scale_factor(tau: float, decay_input: bool) -> float:
    """The factor applied to the input current: ``1/tau`` with ``decay_input``, else ``1``."""
    return 1.0 / tau if decay_input else 1.0


def next_weight_sum(weight_sum_prev: float, decay: float) -> float:
    r""":math:`c[t] = \lambda c[t-1] + 1`."""
    return decay * weight_sum_prev + 1.0


def weight_sums(weight_sum_prev: float, decay: float, steps: int) -> list[float]:
    """``[c[t0+1], ..., c[t0+steps]]`` continuing from ``c[t0] = weight_sum_prev``."""
    sums = []
    c = weight_sum_prev
    for _ in range(steps):
        c = next_weight_sum(c, decay)
        sums.append(c)
    return sums


def membrane_before_fire(
    input_current: torch.Tensor,
    abar_prev: torch.Tensor,
    weight_sum: float,
    weight_sum_prev: float,
    decay: float,
    v_threshold: float,
    input_scale: float,
) -> torch.Tensor:
    r"""The LIF membrane before firing, rebuilt from SAF's state.

    :math:`H[t] = c[t]\, s\, I[t] - V_{th} \lambda c[t-1] \bar A[t-1]`, with :math:`s` the input scale.
    It equals SpikingJelly ``LIFNode``'s :math:`H[t]` (SAF_SPEC section 2).
    """
    driven = (weight_sum * input_scale) * input_current
    if weight_sum_prev == 0.0:  # first step: nothing carried, and this saves two tensor ops
        return driven.to(torch.promote_types(driven.dtype, abar_prev.dtype))
    return driven - (v_threshold * decay * weight_sum_prev) * abar_prev


def average_update(
    spike: torch.Tensor,
    abar_prev: torch.Tensor,
    weight_sum: float,
    weight_sum_prev: float,
    decay: float,
) -> torch.Tensor:
    r""":math:`\bar A[t] = (\lambda c[t-1] \bar A[t-1] + S[t]) / c[t]`."""
    if weight_sum_prev == 0.0:
        return (spike * (1.0 / weight_sum)).to(torch.promote_types(spike.dtype, abar_prev.dtype))
    return (spike + (decay * weight_sum_prev) * abar_prev) * (1.0 / weight_sum)


def heaviside(x: torch.Tensor) -> torch.Tensor:
    """SpikingJelly's spike: ``1`` where ``x >= 0``, in ``x``'s dtype."""
    return (x >= 0).to(x.dtype)


def fire_and_average(
    input_current: torch.Tensor,
    abar_prev: torch.Tensor,
    weight_sum: float,
    weight_sum_prev: float,
    decay: float,
    v_threshold: float,
    input_scale: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""The exact SAF step without a graph: ``(abar, x)`` with :math:`x = H[t] - V_{th}`, the argument of
    every spike-level surrogate, and :math:`S[t] = \mathrm{heaviside}(x)`."""
    x = membrane_before_fire(
        input_current, abar_prev, weight_sum, weight_sum_prev, decay, v_threshold, input_scale
    ) - v_threshold
    return average_update(heaviside(x), abar_prev, weight_sum, weight_sum_prev, decay), x


def spike_level_input_gradient(grad_abar: torch.Tensor, x: torch.Tensor, surrogate_function,
                               input_scale: float) -> torch.Tensor:
    r""":math:`\partial L/\partial I[t] = \partial L/\partial \bar A[t]\; \sigma'(x)\, s`: the factor
    :math:`c[t]` of the membrane cancels against the :math:`1/c[t]` of the average."""
    grad = type(surrogate_function).backward(grad_abar, x, **surrogate_function._sg_params)
    return grad if input_scale == 1.0 else grad * input_scale


def has_explicit_backward(surrogate_function) -> bool:
    """A SpikingJelly surrogate in spiking mode with a static ``backward(grad, x, **params)``."""
    return (
        getattr(surrogate_function, "spiking", False) is True
        and callable(getattr(type(surrogate_function), "backward", None))
        and hasattr(surrogate_function, "_sg_params")
    )


class _SpikeLevelStep(torch.autograd.Function):
    """The exact step as one autograd node that saves only ``x = H - V_th``."""

    @staticmethod
    def forward(ctx, input_current, abar_prev, weight_sum_prev, decay, v_threshold, input_scale,
                surrogate_function):
        weight_sum = next_weight_sum(weight_sum_prev, decay)
        abar, x = fire_and_average(input_current, abar_prev, weight_sum, weight_sum_prev, decay,
                                   v_threshold, input_scale)
        ctx.save_for_backward(x)
        ctx.surrogate_function = surrogate_function
        ctx.input_scale = input_scale
        ctx.input_dtype = input_current.dtype
        return abar

    @staticmethod
    def backward(ctx, grad_abar):
        (x,) = ctx.saved_tensors
        grad_input = spike_level_input_gradient(grad_abar, x, ctx.surrogate_function, ctx.input_scale)
        return grad_input.to(ctx.input_dtype), None, None, None, None, None, None


def saf_step_spike_level(
    input_current: torch.Tensor,
    abar_prev: torch.Tensor,
    weight_sum_prev: float,
    decay: float,
    v_threshold: float,
    input_scale: float,
    surrogate_function,
) -> tuple[torch.Tensor, float]:
    """:func:`saf_step` for surrogates with an explicit backward: one autograd node per step, and no
    node at all without a graph (SAF-F's first T-1 steps)."""
    if torch.is_grad_enabled() and input_current.requires_grad:
        abar = _SpikeLevelStep.apply(input_current, abar_prev, weight_sum_prev, decay, v_threshold,
                                     input_scale, surrogate_function)
        return abar, next_weight_sum(weight_sum_prev, decay)
    weight_sum = next_weight_sum(weight_sum_prev, decay)
    return fire_and_average(input_current, abar_prev, weight_sum, weight_sum_prev, decay,
                            v_threshold, input_scale)[0], weight_sum


def saf_step(
    input_current: torch.Tensor,
    abar_prev: torch.Tensor,
    weight_sum_prev: float,
    decay: float,
    v_threshold: float,
    input_scale: float,
    surrogate_function: Callable[[torch.Tensor], torch.Tensor],
) -> tuple[torch.Tensor, float]:
    r"""One SAF time step with a spike-level surrogate.

    ``abar_prev`` must already be detached (SAF's online gradient treats :math:`\bar A[t-1]` as a
    constant). Autograd then gives :math:`\partial \bar A[t] / \partial I[t] = s\, \sigma'(H[t] - V_{th})`:
    the factor :math:`c[t]` of the membrane cancels against :math:`1/c[t]` of the average.

    :return: ``(abar, weight_sum)``
    """
    weight_sum = next_weight_sum(weight_sum_prev, decay)
    h = membrane_before_fire(
        input_current, abar_prev, weight_sum, weight_sum_prev, decay, v_threshold, input_scale
    )
    spike = surrogate_function(h - v_threshold)
    return average_update(spike, abar_prev, weight_sum, weight_sum_prev, decay), weight_sum


def saf_multi_step(
    input_seq: torch.Tensor,
    abar_prev: torch.Tensor,
    weight_sum_prev: float,
    decay: float,
    v_threshold: float,
    input_scale: float,
    step: Callable[..., tuple[torch.Tensor, float]],
) -> tuple[torch.Tensor, float]:
    """Run ``step`` (e.g. :func:`saf_step`) over dim 0 of ``input_seq``, detaching the carried state.

    :return: ``(abar_seq, weight_sum)`` where ``weight_sum`` is :math:`c` at the last step
    """
    abar_steps = []
    abar = abar_prev
    weight_sum = weight_sum_prev
    for input_current in input_seq:
        abar, weight_sum = step(
            input_current, abar.detach(), weight_sum, decay, v_threshold, input_scale
        )
        abar_steps.append(abar)
    return torch.stack(abar_steps), weight_sum


def lif_membrane_after_reset(
    input_current: torch.Tensor,
    abar: torch.Tensor,
    weight_sum: float,
    v_threshold: float,
    input_scale: float,
) -> torch.Tensor:
    r"""The LIF membrane after the soft reset: :math:`V[t] = c[t] (s I[t] - V_{th} \bar A[t])`."""
    return weight_sum * (input_scale * input_current - v_threshold * abar)


def recover_instantaneous(
    average: torch.Tensor,
    average_prev: Optional[torch.Tensor],
    weight_sum: float,
    weight_sum_prev: float,
    decay: float,
) -> torch.Tensor:
    r"""The instantaneous value behind a weighted average.

    :math:`o[t] = c[t] \bar O[t] - \lambda c[t-1] \bar O[t-1]`. Applied to a neuron's output it gives the
    spikes :math:`S[t]`; applied to the network output it gives the LIF/OTTT output :math:`f(S[t])`.
    ``average_prev`` is ``None`` at the first step (:math:`c[0] = 0`).
    """
    if average_prev is None or weight_sum_prev == 0.0:
        return weight_sum * average
    return weight_sum * average - (decay * weight_sum_prev) * average_prev


def recover_instantaneous_seq(
    average_seq: torch.Tensor, decay: float, weight_sum_prev: float = 0.0,
    average_prev: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """:func:`recover_instantaneous` over dim 0 of a sequence of weighted averages.

    Each previous average is detached, as in the online step: the gradient of o[t] reaches
    :math:`\bar O[t]` only, so a sum of per-step losses gives the sum of per-step SAF-E gradients.
    """
    outputs = []
    c_prev = weight_sum_prev
    prev = average_prev
    for average in average_seq:
        c = next_weight_sum(c_prev, decay)
        outputs.append(recover_instantaneous(average, prev, c, c_prev, decay))
        prev, c_prev = average.detach(), c
    return torch.stack(outputs)


def running_average(
    x: torch.Tensor,
    average_prev: Optional[torch.Tensor],
    weight_sum: float,
    weight_sum_prev: float,
    decay: float,
) -> torch.Tensor:
    r"""The weighted running average of inputs :math:`\bar x[t] = (\lambda c[t-1] \bar x[t-1] + x[t]) / c[t]`."""
    if average_prev is None or weight_sum_prev == 0.0:
        return x * (1.0 / weight_sum)
    return average_update(x, average_prev, weight_sum, weight_sum_prev, decay)


def normalised_input(input_current: torch.Tensor, v_threshold: float,
                     input_scale: float) -> torch.Tensor:
    r""":math:`u = s I / V_{th}`, the argument of every representation-level surrogate."""
    return input_current * (input_scale / v_threshold)


def representation_mapping(
    input_current: torch.Tensor, v_threshold: float, input_scale: float
) -> torch.Tensor:
    r"""Spike Representation's mapping :math:`\mathrm{clamp}(s I / V_{th}, 0, 1)`, SAF-F's surrogate primitive."""
    return torch.clamp(normalised_input(input_current, v_threshold, input_scale), 0.0, 1.0)


def _representation_forward(input_current, abar_prev, weight_sum_prev, decay, v_threshold,
                            input_scale, representation_surrogate) -> torch.Tensor:
    if representation_surrogate.spiking:
        weight_sum = next_weight_sum(weight_sum_prev, decay)
        return fire_and_average(input_current, abar_prev, weight_sum, weight_sum_prev, decay,
                                v_threshold, input_scale)[0]
    # Non-spiking mode is the rate network itself: its forward is the surrogate's primitive.
    return representation_surrogate.primitive_function(
        normalised_input(input_current, v_threshold, input_scale))


class _RepresentationStep(torch.autograd.Function):
    """Forward: the exact SAF step. Backward: a representation-level surrogate of the map I -> Abar."""

    @staticmethod
    def forward(ctx, input_current, abar_prev, weight_sum_prev, decay, v_threshold,
                input_scale, representation_surrogate):
        abar = _representation_forward(input_current, abar_prev, weight_sum_prev, decay,
                                       v_threshold, input_scale, representation_surrogate)
        slope = representation_surrogate.derivative(
            normalised_input(input_current, v_threshold, input_scale))
        # A 0/1 slope (the clamp's) is stored as bool: a quarter of float32's bytes, still exact.
        ctx.save_for_backward(slope.to(representation_surrogate.derivative_storage_dtype or slope.dtype))
        ctx.gain = input_scale / v_threshold
        ctx.grad_dtype = input_current.dtype
        return abar

    @staticmethod
    def backward(ctx, grad_abar):
        (slope,) = ctx.saved_tensors
        grad_input = grad_abar * slope.to(ctx.grad_dtype) * ctx.gain
        return grad_input, None, None, None, None, None, None


def saf_step_representation_traceable(
    input_current: torch.Tensor,
    abar_prev: torch.Tensor,
    weight_sum_prev: float,
    decay: float,
    v_threshold: float,
    input_scale: float,
    representation_surrogate,
) -> tuple[torch.Tensor, float]:
    """:func:`saf_step_representation` in plain tensor operations, for ``torch.compile``.

    The value is the exact step; ``path - path.detach()`` is zero in the forward and carries the
    surrogate slope in the backward.
    """
    gain = input_scale / v_threshold
    abar = _representation_forward(input_current.detach(), abar_prev, weight_sum_prev, decay,
                                   v_threshold, input_scale, representation_surrogate)
    slope = representation_surrogate.derivative(
        normalised_input(input_current.detach(), v_threshold, input_scale)).to(input_current.dtype)
    path = input_current * (slope * gain)
    return abar + (path - path.detach()), next_weight_sum(weight_sum_prev, decay)


def saf_step_representation(
    input_current: torch.Tensor,
    abar_prev: torch.Tensor,
    weight_sum_prev: float,
    decay: float,
    v_threshold: float,
    input_scale: float,
    representation_surrogate,
) -> tuple[torch.Tensor, float]:
    r"""One SAF time step whose gradient is a representation-level surrogate (SAF-F).

    The forward is that of :func:`saf_step` (with the surrogate in non-spiking mode, the rate
    mapping itself, so that the step is the Spike Representation network). The backward is
    :math:`\partial \bar A[t] / \partial I[t] := (s / V_{th})\, g'(s I[t] / V_{th})`, where ``g`` is the
    surrogate's primitive; for :class:`~spikingjelly_saf.surrogate.SpikeRepresentation`,
    :math:`g = \mathrm{clamp}(\cdot, 0, 1)`, the Spike Representation mapping.
    """
    if torch.is_grad_enabled() and input_current.requires_grad:
        abar = _RepresentationStep.apply(
            input_current, abar_prev, weight_sum_prev, decay, v_threshold, input_scale,
            representation_surrogate,
        )
    else:  # no graph (SAF-F's first T-1 steps): the slope would never be used
        abar = _representation_forward(input_current, abar_prev, weight_sum_prev, decay,
                                       v_threshold, input_scale, representation_surrogate)
    return abar, next_weight_sum(weight_sum_prev, decay)
