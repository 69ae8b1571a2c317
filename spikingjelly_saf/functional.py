r"""
The formulas of Spike Accumulation Forwarding as small pure functions, one place per formula.

**API Language** - 中文 | English

* **中文**: SAF 的全部公式（纯函数）。参数与状态是小的类型化对象（:class:`SAFParameters`、:class:`SAFState`），
  每一步的系数来自同一张表（:func:`step_coefficients`），由 torch 路径与所有融合内核共同使用。反向传播的种类与
  唯一的步进函数见 :mod:`spikingjelly_saf.gradients`。公式见 ``docs/theory.md``。
* **English**: every SAF formula, as pure functions. Parameters and state are small typed objects
  (:class:`SAFParameters`, :class:`SAFState`); the per-step coefficients come from one table
  (:func:`step_coefficients`) that the torch path and every fused kernel consume. The kinds of
  gradient and the one step function built from these formulas are in
  :mod:`spikingjelly_saf.gradients`. The equations are in ``docs/theory.md``.

Notation (``docs/theory.md``): ``decay`` is :math:`\lambda = 1 - 1/\tau`, ``weight_sum`` is
:math:`c[t] = \lambda c[t-1] + 1` with :math:`c[0] = 0`, ``abar`` is the weighted firing rate
:math:`\bar A[t] = A[t] / c[t]` and ``input_current`` is :math:`I[t]`, the layer applied to the previous
neuron's :math:`\bar A`. ``input_scale`` :math:`s` is ``1/tau`` when ``decay_input`` is set and ``1``
otherwise. All ``weight_sum`` values are Python floats: they are the same for every neuron of a layer.

Precision: a step computes in :func:`compute_dtype`, never below float32. :math:`H[t]` is the
difference of two terms that grow like :math:`c[t]`, so 16-bit arithmetic would cancel away the
membrane at long ``T`` and large ``tau``; 16-bit inputs are therefore computed (and the state kept)
in float32.
"""

from __future__ import annotations

from typing import NamedTuple, Optional, Union

import torch

__all__ = [
    "SAFParameters",
    "SAFState",
    "StepCoefficients",
    "KERNEL_COLUMNS",
    "decay_factor",
    "input_scale_factor",
    "compute_dtype",
    "next_weight_sum",
    "weight_sums",
    "step_coefficients",
    "coefficient_table",
    "membrane_before_fire",
    "average_update",
    "fires",
    "heaviside",
    "fire_and_average",
    "normalised_input",
    "representation_mapping",
    "lif_membrane_after_reset",
    "recover_instantaneous",
    "recover_instantaneous_seq",
    "running_average",
    "weighted_average",
    "rate_readout",
]


# ---- parameters, state, coefficients -----------------------------------------------------------
def decay_factor(tau: float) -> float:
    r"""The leak :math:`\lambda = 1 - 1/\tau`; ``tau = inf`` gives the IF neuron (:math:`\lambda = 1`)."""
    return 1.0 - 1.0 / tau


def input_scale_factor(tau: float, decay_input: bool) -> float:
    """The factor applied to the input current: ``1/tau`` with ``decay_input``, else ``1``."""
    return 1.0 / tau if decay_input else 1.0


class SAFParameters(NamedTuple):
    r"""The constants of one SAF layer: leak :math:`\lambda`, threshold :math:`V_{th}`, input scale :math:`s`."""

    decay: float
    v_threshold: float = 1.0
    input_scale: float = 1.0

    @classmethod
    def from_tau(cls, tau: float, v_threshold: float = 1.0, decay_input: bool = False) -> "SAFParameters":
        return cls(decay_factor(tau), float(v_threshold), input_scale_factor(tau, decay_input))


class SAFState(NamedTuple):
    r"""The state carried between steps: :math:`\bar A[t-1]` (a tensor, or ``0.0`` before the first
    step) and :math:`c[t-1]`, which encodes the step count."""

    abar: Union[torch.Tensor, float] = 0.0
    weight_sum: float = 0.0


class StepCoefficients(NamedTuple):
    r"""The scalars of one step, from which every tensor formula of the step is built.

    The last four, in this order, are the rows of the table the fused kernels read
    (:data:`KERNEL_COLUMNS`).
    """

    weight_sum: float       #: c[t]
    weight_sum_prev: float  #: c[t-1]
    input: float            #: c[t] s, the factor of I[t] in H[t]
    reset: float            #: V_th lam c[t-1], the factor of Abar[t-1] in H[t]
    carry: float            #: lam c[t-1], the factor of Abar[t-1] in Abar[t] c[t]
    average: float          #: 1 / c[t]


#: The per-step columns the fused kernels read, in kernel order.
KERNEL_COLUMNS = ("input", "reset", "carry", "average")


def compute_dtype(*dtypes: torch.dtype) -> torch.dtype:
    """The dtype a step computes in: the promotion of ``dtypes``, at least float32 (see the module notes)."""
    result = dtypes[0]
    for dtype in dtypes[1:]:
        result = torch.promote_types(result, dtype)
    return torch.float32 if result in (torch.float16, torch.bfloat16) else result


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


def step_coefficients(params: SAFParameters, weight_sum_prev: float) -> StepCoefficients:
    r"""The coefficients of the step after :math:`c[t-1] =` ``weight_sum_prev``, in double precision."""
    weight_sum = next_weight_sum(weight_sum_prev, params.decay)
    carry = params.decay * weight_sum_prev
    return StepCoefficients(weight_sum, weight_sum_prev, weight_sum * params.input_scale,
                            params.v_threshold * params.decay * weight_sum_prev, carry, 1.0 / weight_sum)


def coefficient_table(params: SAFParameters, weight_sum_prev: float, steps: int) -> list[StepCoefficients]:
    """:func:`step_coefficients` for ``steps`` consecutive steps."""
    table = []
    for _ in range(steps):
        table.append(step_coefficients(params, weight_sum_prev))
        weight_sum_prev = table[-1].weight_sum
    return table


# ---- the formulas of one step ------------------------------------------------------------------
def membrane_before_fire(input_current: torch.Tensor, abar_prev: torch.Tensor,
                         k: StepCoefficients) -> torch.Tensor:
    r"""The LIF membrane before firing, rebuilt from SAF's state.

    :math:`H[t] = c[t]\, s\, I[t] - V_{th} \lambda c[t-1] \bar A[t-1]`; it equals SpikingJelly
    ``LIFNode``'s :math:`H[t]` (``docs/theory.md``, Theorem 1).
    """
    driven = k.input * input_current
    if k.weight_sum_prev == 0.0:  # first step: nothing carried, and this saves a tensor op
        return driven.to(torch.promote_types(driven.dtype, abar_prev.dtype))
    # Not torch.sub(..., alpha=): its fused rounding would differ from the kernels' bit for bit.
    return driven - k.reset * abar_prev


def average_update(spike: torch.Tensor, abar_prev: torch.Tensor, k: StepCoefficients) -> torch.Tensor:
    r""":math:`\bar A[t] = (\lambda c[t-1] \bar A[t-1] + S[t]) / c[t]`."""
    if k.weight_sum_prev == 0.0:
        return (spike * k.average).to(torch.promote_types(spike.dtype, abar_prev.dtype))
    return (spike + k.carry * abar_prev) * k.average


def fires(membrane: torch.Tensor, v_threshold: float) -> torch.Tensor:
    r""":math:`S[t] = \mathrm{heaviside}(H[t] - V_{th})` in the membrane's dtype, compared without
    forming the difference: for floats, :math:`a - b \ge 0` exactly when :math:`a \ge b`."""
    return (membrane >= v_threshold).to(membrane.dtype)


def heaviside(x: torch.Tensor) -> torch.Tensor:
    """SpikingJelly's spike: ``1`` where ``x >= 0``, in ``x``'s dtype."""
    return fires(x, 0.0)


def fire_and_average(input_current: torch.Tensor, abar_prev: torch.Tensor, k: StepCoefficients,
                     v_threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    r"""The exact SAF step without a graph: ``(abar, h)`` with :math:`h = H[t]`, the membrane before
    firing (:math:`h - V_{th}` is the argument of every spike-level surrogate)."""
    h = membrane_before_fire(input_current, abar_prev, k)
    return average_update(fires(h, v_threshold), abar_prev, k), h


def normalised_input(input_current: torch.Tensor, v_threshold: float, input_scale: float) -> torch.Tensor:
    r""":math:`u = s I / V_{th}`, the argument of every representation-level surrogate."""
    return input_current * (input_scale / v_threshold)


def representation_mapping(input_current: torch.Tensor, v_threshold: float,
                           input_scale: float) -> torch.Tensor:
    r"""Spike Representation's mapping :math:`\mathrm{clamp}(s I / V_{th}, 0, 1)`, SAF-F's surrogate primitive."""
    return torch.clamp(normalised_input(input_current, v_threshold, input_scale), 0.0, 1.0)


# ---- reading SAF's state -----------------------------------------------------------------------
def lif_membrane_after_reset(input_current: torch.Tensor, abar: torch.Tensor, weight_sum: float,
                             v_threshold: float, input_scale: float) -> torch.Tensor:
    r"""The LIF membrane after the soft reset: :math:`V[t] = c[t] (s I[t] - V_{th} \bar A[t])`."""
    return weight_sum * (input_scale * input_current - v_threshold * abar)


def recover_instantaneous(average: torch.Tensor, average_prev: Optional[torch.Tensor],
                          weight_sum: float, weight_sum_prev: float, decay: float) -> torch.Tensor:
    r"""The instantaneous value behind a weighted average.

    :math:`o[t] = c[t] \bar O[t] - \lambda c[t-1] \bar O[t-1]`. Applied to a neuron's output it gives the
    spikes :math:`S[t]`; applied to the network output it gives the LIF/OTTT output :math:`f(S[t])`.
    ``average_prev`` is ``None`` at the first step (:math:`c[0] = 0`).
    """
    if average_prev is None or weight_sum_prev == 0.0:
        return weight_sum * average
    return weight_sum * average - (decay * weight_sum_prev) * average_prev


def recover_instantaneous_seq(average_seq: torch.Tensor, decay: float, weight_sum_prev: float = 0.0,
                              average_prev: Optional[torch.Tensor] = None) -> torch.Tensor:
    r""":func:`recover_instantaneous` over dim 0 of a sequence of weighted averages.

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


def running_average(x: torch.Tensor, average_prev: Optional[torch.Tensor], weight_sum: float,
                    weight_sum_prev: float, decay: float) -> torch.Tensor:
    r"""The weighted running average :math:`\bar x[t] = (\lambda c[t-1] \bar x[t-1] + x[t]) / c[t]`.

    The same update as :func:`average_update`; ``average_prev`` is ``None`` at the first step.
    """
    if average_prev is None:
        average_prev, weight_sum_prev = x, 0.0  # nothing carried: the first step's coefficients ignore it
    k = StepCoefficients(weight_sum, weight_sum_prev, 0.0, 0.0, decay * weight_sum_prev, 1.0 / weight_sum)
    return average_update(x, average_prev, k)


def _check_decay(decay, caller: str) -> float:
    if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not 0.0 <= decay <= 1.0:
        raise ValueError(f"{caller}: decay={decay!r} must be a number in [0, 1] (lambda = 1 - 1/tau; "
                         "0 for tau=1, 1 for tau=inf).")
    return float(decay)


def _check_time_dim(seq, dim, caller: str) -> None:
    if not isinstance(seq, torch.Tensor):
        raise TypeError(f"{caller}: the sequence must be a tensor, got {type(seq).__name__}.")
    if isinstance(dim, bool) or not isinstance(dim, int) or not -seq.dim() <= dim < max(seq.dim(), 1):
        raise ValueError(f"{caller}: dim={dim!r} is not a dimension of a tensor of shape "
                         f"{tuple(seq.shape)}.")


def weighted_average(seq: torch.Tensor, decay: float, dim: int = 0) -> torch.Tensor:
    r"""The weighted average of a whole sequence, :math:`\bar x[T] = \sum_t \lambda^{T-t} x[t] / c[T]`.

    * **中文**: LIF 网络输出的 SAF 读出：对 ``dim`` 维（时间）做加权平均，等于 SAF 网络最后的 :math:`\bar O[T]`。
    * **English**: the SAF readout of a LIF network's outputs: the weighted average over ``dim``
      (time), which equals the SAF network's last output :math:`\bar O[T]`. Uses :func:`running_average`.
    """
    _check_time_dim(seq, dim, "weighted_average")
    decay = _check_decay(decay, "weighted_average")
    average, weight_sum = None, 0.0
    for x in seq.unbind(dim):
        weight_sum_next = next_weight_sum(weight_sum, decay)
        average = running_average(x, average, weight_sum_next, weight_sum, decay)
        weight_sum = weight_sum_next
    if average is None:
        raise ValueError(f"the sequence has no steps along dim={dim} (shape {tuple(seq.shape)}).")
    return average


def rate_readout(average_seq: torch.Tensor, decay: float, dim: int = 0, spikes: bool = False) -> torch.Tensor:
    r"""The firing-rate readout of a SAF output: the mean over time of the recovered output :math:`o[t]`.

    * **中文**: SAF 网络的默认预测分数：恢复出的瞬时输出 :math:`o[t]` 在时间维（``dim``）上的均值，即其 LIF
      孪生网络的 ``out_seq.mean(0)``。由 :math:`A[t] = c[t]\bar O[t]` 直接求得：
      :math:`\frac1T\sum_t o[t] = \frac1T\big(A[T] + (1-\lambda)\sum_{t<T} A[t]\big)`。
      ``spikes=True`` （输出层是神经元，:math:`o[t] \in \{0, 1\}`）时先把脉冲计数取整，再除以 ``T``，
      使分数与 LIF 网络的脉冲均值逐位相同，argmax（包括计数相等的并列）也完全一致。
    * **English**: the default prediction scores of a SAF network: the mean over ``dim`` (time) of the
      recovered instantaneous output :math:`o[t] = c[t]\bar O[t] - \lambda c[t-1]\bar O[t-1]`
      (:func:`recover_instantaneous`), i.e. ``out_seq.mean(0)`` of the network's LIF twin. The sum
      telescopes: with :math:`A[t] = c[t]\bar O[t] = \lambda A[t-1] + o[t]`,

      .. math:: \frac1T\sum_{t=1}^T o[t] = \frac1T\Big(A[T] + (1-\lambda)\sum_{t=1}^{T-1} A[t]\Big)

      so no step is recovered one by one. With ``spikes=True`` (the output layer is a neuron, so
      :math:`o[t] \in \{0, 1\}`) the spike count is rounded to the integer it is up to rounding
      before dividing by ``T``: the scores are then the LIF twin's ``out_seq.mean(0)`` bit for bit
      on the CPU, and on any device a strictly increasing function of the same counts, so the
      argmax is the same, ties between equal counts included.

    :param average_seq: the weighted-average outputs :math:`\bar O[1..T]`
    :param decay: :math:`\lambda` of the output (:func:`spikingjelly_saf.training.readout_decay`)
    :param dim: the time dimension of ``average_seq``
    :param spikes: the outputs are a neuron's weighted firing rates (round the spike counts)
    :return: the scores, ``average_seq`` without ``dim``
    """
    _check_time_dim(average_seq, dim, "rate_readout")
    decay = _check_decay(decay, "rate_readout")
    steps = average_seq.shape[dim]
    if steps == 0:
        raise ValueError(f"the sequence has no steps along dim={dim} (shape {tuple(average_seq.shape)}).")
    weight_sum, total, accumulated = 0.0, None, None
    for t, average in enumerate(average_seq.unbind(dim)):
        weight_sum = next_weight_sum(weight_sum, decay)
        accumulated = weight_sum * average          # A[t]
        if t < steps - 1:
            total = (1.0 - decay) * accumulated if total is None else total + (1.0 - decay) * accumulated
    total = accumulated if total is None else total + accumulated
    if spikes:
        total = total.round()
    return total / steps


#: The weight sum :math:`c[t]` above which SAF in less than float64 is warned about (see
#: :func:`exceeds_precision_limit`).
PRECISION_WEIGHT_SUM_LIMIT = 64.0


def exceeds_precision_limit(weight_sum: float, dtype: torch.dtype) -> bool:
    r"""Whether rounding makes SAF markedly less exact than LIF at this precision.

    * **中文**: :math:`H[t] = c[t] I[t] - V_{th} \lambda c[t-1] \bar A[t-1]` 把输入电流的舍入误差放大
      :math:`c[t]` 倍，约为同精度 LIF 神经元误差的 :math:`\sqrt{c[t]}` 倍。低于 float64 且 :math:`c[t] > 64`
      （超过 8 倍）时返回 ``True``。
    * **English**: :math:`H[t] = c[t] I[t] - V_{th} \lambda c[t-1] \bar A[t-1]` scales the rounding of
      the input current by :math:`c[t]`, about :math:`\sqrt{c[t]}` times the rounding error an LIF
      neuron accumulates at the same precision (the LIF membrane adds one rounding per step, which
      grow like a random walk over the :math:`\sim c[t]` steps it remembers). ``True`` below float64
      once :math:`c[t] > 64` (more than 8 times). :math:`c[t] < \tau`, so only IF neurons at long T
      and very slow leaks reach it.
    """
    return dtype != torch.float64 and weight_sum > PRECISION_WEIGHT_SUM_LIMIT
