r"""
How a SAF step is differentiated, and the one step function built from the formulas.

**API Language** - 中文 | English

* **中文**: 反向传播的种类是策略对象（:class:`Gradient`）：脉冲级（经 autograd，或一个自定义节点）与表示级
  （SAF-F）。:func:`gradient_for` 在一处为替代函数选择种类；:func:`step` 是唯一的步进函数。公式本身在
  :mod:`spikingjelly_saf.functional`。
* **English**: the kind of gradient is a strategy object (:class:`Gradient`): spike level (through
  autograd, or one custom node) and representation level (SAF-F). :func:`gradient_for` picks the
  kind for a surrogate in one place; :func:`step` is the one step function. The formulas themselves
  are in :mod:`spikingjelly_saf.functional`.
"""

from __future__ import annotations

from typing import Optional

import torch

from .functional import (SAFParameters, SAFState, StepCoefficients, average_update, compute_dtype,
                         fire_and_average, membrane_before_fire, normalised_input, step_coefficients)

__all__ = [
    "Gradient",
    "SpikeLevelAutograd",
    "SpikeLevelExplicit",
    "RepresentationLevel",
    "RepresentationTraceable",
    "gradient_for",
    "step",
    "multi_step",
    "spike_level_input_gradient",
    "has_explicit_backward",
]


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


# ---- kinds of gradient -------------------------------------------------------------------------
class Gradient:
    r"""How a step is differentiated. The forward value is always the exact SAF step, unless the
    surrogate is in non-spiking mode (then the network is the smooth network the surrogate defines).

    ``abar_prev`` is constant for the gradient: SAF's online gradient treats :math:`\bar A[t-1]` as
    given (``docs/theory.md``, Theorems 2 and 3).
    """

    #: Whether a step compiled by ``torch.compile`` can run this kind (no custom autograd node).
    traceable = True

    def __init__(self, surrogate_function):
        self.surrogate_function = surrogate_function

    def value(self, input_current, abar_prev, k: StepCoefficients, params: SAFParameters) -> torch.Tensor:
        """The step without a graph (inference, and SAF-F's first T-1 steps)."""
        return fire_and_average(input_current, abar_prev, k, params.v_threshold)[0]

    def with_graph(self, input_current, abar_prev, k: StepCoefficients,
                   params: SAFParameters) -> torch.Tensor:
        raise NotImplementedError


class SpikeLevelAutograd(Gradient):
    r"""Spike level, by autograd through the surrogate: :math:`\partial \bar A[t]/\partial I[t] = s\,
    \sigma'(H[t] - V_{th})`. Works for any callable surrogate, and under ``torch.compile``."""

    def value(self, input_current, abar_prev, k, params):
        if getattr(self.surrogate_function, "spiking", False) is True:
            return super().value(input_current, abar_prev, k, params)
        with torch.no_grad():  # a non-spiking surrogate's forward is its smooth primitive
            return self.with_graph(input_current, abar_prev, k, params)

    def with_graph(self, input_current, abar_prev, k, params):
        h = membrane_before_fire(input_current, abar_prev, k)
        return average_update(self.surrogate_function(h - params.v_threshold), abar_prev, k)


class _SpikeLevelNode(torch.autograd.Function):
    """The exact step as one autograd node that saves only the membrane ``H``."""

    @staticmethod
    def forward(ctx, input_current, abar_prev, k, v_threshold, input_scale, surrogate_function):
        abar, h = fire_and_average(input_current, abar_prev, k, v_threshold)
        ctx.save_for_backward(h)
        ctx.surrogate_function, ctx.input_scale = surrogate_function, input_scale
        ctx.v_threshold, ctx.input_dtype = v_threshold, input_current.dtype
        return abar

    @staticmethod
    def backward(ctx, grad_abar):
        (h,) = ctx.saved_tensors
        grad_input = spike_level_input_gradient(grad_abar, h - ctx.v_threshold, ctx.surrogate_function,
                                                ctx.input_scale)
        return grad_input.to(ctx.input_dtype), None, None, None, None, None


class SpikeLevelExplicit(Gradient):
    """Spike level with SpikingJelly's explicit surrogate backward: one autograd node per step that
    saves one tensor (eager mode; see :func:`has_explicit_backward`)."""

    traceable = False

    def with_graph(self, input_current, abar_prev, k, params):
        return _SpikeLevelNode.apply(input_current, abar_prev, k, params.v_threshold, params.input_scale,
                                     self.surrogate_function)


class RepresentationLevel(Gradient):
    r"""Representation level (SAF-F): :math:`\partial \bar A[t] / \partial I[t] := (s / V_{th})\,
    g'(s I[t] / V_{th})` with ``g`` the surrogate's primitive (``docs/theory.md``, Theorem 3).
    One autograd node per step that saves the slope, as ``bool`` when it is 0/1."""

    traceable = False

    def value(self, input_current, abar_prev, k, params):
        if self.surrogate_function.spiking:
            return super().value(input_current, abar_prev, k, params)
        # Non-spiking mode is the rate network itself: its forward is the surrogate's primitive.
        return self.surrogate_function.primitive_function(
            normalised_input(input_current, params.v_threshold, params.input_scale))

    def slope(self, input_current, params) -> torch.Tensor:
        return self.surrogate_function.derivative(
            normalised_input(input_current, params.v_threshold, params.input_scale))

    def with_graph(self, input_current, abar_prev, k, params):
        return _RepresentationNode.apply(input_current, abar_prev, k, params, self)


class _RepresentationNode(torch.autograd.Function):
    """Forward: :meth:`RepresentationLevel.value`. Backward: the representation-level slope."""

    @staticmethod
    def forward(ctx, input_current, abar_prev, k, params, gradient):
        abar = gradient.value(input_current, abar_prev, k, params)
        slope = gradient.slope(input_current, params)
        storage = gradient.surrogate_function.derivative_storage_dtype or slope.dtype
        ctx.save_for_backward(slope.to(storage))
        ctx.gain = params.input_scale / params.v_threshold
        ctx.grad_dtype = input_current.dtype
        return abar

    @staticmethod
    def backward(ctx, grad_abar):
        (slope,) = ctx.saved_tensors
        return grad_abar * slope.to(ctx.grad_dtype) * ctx.gain, None, None, None, None


class RepresentationTraceable(RepresentationLevel):
    """:class:`RepresentationLevel` in plain tensor operations, for ``torch.compile``: the value is
    the exact step, and ``path - path.detach()`` (zero in the forward) carries the slope backward."""

    traceable = True

    def with_graph(self, input_current, abar_prev, k, params):
        detached = input_current.detach()
        abar = self.value(detached, abar_prev, k, params)
        gain = params.input_scale / params.v_threshold
        path = input_current * (self.slope(detached, params).to(input_current.dtype) * gain)
        return abar + (path - path.detach())


def gradient_for(surrogate_function, traceable: Optional[bool] = None) -> Gradient:
    """The kind of gradient for a surrogate: representation level for a
    :class:`~spikingjelly_saf.surrogate.RepresentationSurrogate`, otherwise spike level (one explicit
    node where the surrogate allows it). ``traceable`` (default: while ``torch.compile`` traces)
    picks the kinds without a custom autograd node."""
    from .surrogate import is_representation_level

    if traceable is None:
        # Dynamo cannot trace an autograd.Function that takes symbolic floats; compiled code needs no
        # hand-made node anyway, since Inductor fuses the elementwise operations itself.
        traceable = torch.compiler.is_compiling()
    if is_representation_level(surrogate_function):
        return (RepresentationTraceable if traceable else RepresentationLevel)(surrogate_function)
    if has_explicit_backward(surrogate_function) and not traceable:
        return SpikeLevelExplicit(surrogate_function)
    return SpikeLevelAutograd(surrogate_function)


# ---- the step ----------------------------------------------------------------------------------
def _as_gradient(gradient) -> Gradient:
    return gradient if isinstance(gradient, Gradient) else gradient_for(gradient)


def step(input_current: torch.Tensor, state: SAFState, params: SAFParameters,
         gradient) -> tuple[torch.Tensor, SAFState]:
    r"""
    **API Language** - 中文 | English

    * **中文**: SAF 的一步。``state.abar`` 视为常数（在线梯度）；计算在 :func:`compute_dtype` 中进行。
    * **English**: one SAF step, the only one. ``state.abar`` is treated as a constant (the online
      gradient); the step computes in :func:`compute_dtype`.

    :param input_current: :math:`I[t]`
    :param state: :math:`(\bar A[t-1], c[t-1])`; ``abar`` may be ``0.0`` before the first step
    :param params: the layer's :class:`SAFParameters`
    :param gradient: a :class:`Gradient`, or a surrogate function (then :func:`gradient_for` chooses)
    :return: ``(abar, SAFState(abar.detach(), c[t]))``; ``abar`` is :math:`\bar A[t]` in the compute dtype
    """
    gradient = _as_gradient(gradient)
    abar_prev = state.abar
    if not isinstance(abar_prev, torch.Tensor):
        abar_prev = torch.zeros((), dtype=input_current.dtype, device=input_current.device)
    dtype = compute_dtype(input_current.dtype, abar_prev.dtype)
    current, abar_prev = input_current.to(dtype), abar_prev.detach().to(dtype)
    k = step_coefficients(params, state.weight_sum)
    if torch.is_grad_enabled() and current.requires_grad:
        abar = gradient.with_graph(current, abar_prev, k, params)
    else:  # no graph: the slope or surrogate intermediate would never be used
        abar = gradient.value(current, abar_prev, k, params)
    return abar, SAFState(abar.detach(), k.weight_sum)


def multi_step(input_seq: torch.Tensor, state: SAFState, params: SAFParameters,
               gradient) -> tuple[torch.Tensor, SAFState]:
    """:func:`step` over dim 0 of ``input_seq``; returns ``(abar_seq, final state)``."""
    if input_seq.shape[0] == 0:
        raise ValueError("input_seq has T=0 steps; a SAF sequence needs at least one step.")
    gradient = _as_gradient(gradient)
    abar_steps = []
    for input_current in input_seq:
        abar, state = step(input_current, state, params, gradient)
        abar_steps.append(abar)
    return torch.stack(abar_steps), state
