r"""
Modules around SAF neurons: the input average in front of the first layer, and the output readout.

Every stateful module here is a SpikingJelly ``MemoryModule``. Call
``spikingjelly.activation_based.functional.reset_net(net)`` before every new sequence.
"""

from __future__ import annotations

from typing import Optional

import torch
from spikingjelly.activation_based import base

from . import functional as saf_functional
from .neuron import RESET_SENTENCE, check_sequence, check_tau

__all__ = ["InputAverage", "OutputRecovery", "predict"]


class InputAverage(base.MemoryModule):
    r"""
    **API Language** - :ref:`中文 <InputAverage-cn>` | :ref:`English <InputAverage-en>`

    ----

    .. _InputAverage-cn:

    * **中文**

    放在第一层之前，把输入帧序列（事件帧）变为其加权滑动平均
    :math:`\bar x[t] = (\lambda c[t-1] \bar x[t-1] + x[t]) / c[t]`，使第一个 SAF 神经元看到 LIF 神经元所积分的输入
    （``docs/theory.md``）。``tau`` 取第一个 ``SAFNode`` 的值。静态图像（每步相同）经过它保持不变，因此可省略。
    在每个新序列之前调用 ``spikingjelly.activation_based.functional.reset_net(net)``。

    :param tau: 第一个 ``SAFNode`` 的时间常数，:math:`\tau \ge 1`
    :param step_mode: ``'s'`` 或 ``'m'``

    Shape:
        - 单步模式：输入 :math:`x[t]` ``[N, *]``，输出 :math:`\bar x[t]` ``[N, *]``
        - 多步模式：输入 ``[T, N, *]``，输出 ``[T, N, *]``

    Example::

        >>> import torch
        >>> from spikingjelly_saf import InputAverage
        >>> average = InputAverage(tau=2.0, step_mode="m")
        >>> x_bar_seq = average(torch.rand(4, 2, 2, 16, 16))   # 事件帧 [T, N, C, H, W]

    ----

    .. _InputAverage-en:

    * **English**

    Put in front of the first layer for sequence inputs (event frames): it turns the frames into
    their running weighted average :math:`\bar x[t] = (\lambda c[t-1] \bar x[t-1] + x[t]) / c[t]`,
    so the first SAF neuron sees what a LIF neuron integrates (``docs/theory.md``). Use the ``tau``
    of the first ``SAFNode``. A static image repeated every step passes unchanged, so it may be left
    out there. Call ``spikingjelly.activation_based.functional.reset_net(net)`` before every new
    sequence.

    :param tau: the time constant of the first ``SAFNode``, :math:`\tau \ge 1`
    :param step_mode: ``'s'`` or ``'m'``

    Shape:
        - single-step mode: input :math:`x[t]` ``[N, *]``, output :math:`\bar x[t]` ``[N, *]``
        - multi-step mode: input ``[T, N, *]``, output ``[T, N, *]``

    Example::

        >>> import torch
        >>> from spikingjelly_saf import InputAverage
        >>> average = InputAverage(tau=2.0, step_mode="m")
        >>> x_bar_seq = average(torch.rand(4, 2, 2, 16, 16))   # event frames [T, N, C, H, W]
    """

    def __init__(self, tau: float = 2.0, step_mode: str = "s"):
        super().__init__()
        self.tau = tau
        self.step_mode = step_mode
        self.register_memory("average", None)
        self.register_memory("weight_sum", 0.0)

    @property
    def tau(self) -> float:
        return self._tau

    @tau.setter
    def tau(self, value) -> None:
        self._tau = check_tau(value)

    @property
    def decay(self) -> float:
        return saf_functional.decay_factor(self._tau)

    def extra_repr(self) -> str:
        return f"tau={self._tau}, step_mode={self.step_mode}"

    def materialize_states(self, inputs, states, step_mode):
        x = inputs[0]
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            raise TypeError(f"{self._get_name()} expects a floating-point tensor input, got "
                            f"{x.dtype if isinstance(x, torch.Tensor) else type(x).__name__}.")
        if step_mode == "m":
            check_sequence(self, x)
        frame_shape = x.shape[1:] if step_mode == "m" else x.shape
        average, weight_sum = states
        if isinstance(average, torch.Tensor) and average.shape != frame_shape:
            raise ValueError(
                f"{self._get_name()} received frames of shape {tuple(frame_shape)} but holds an average of "
                f"shape {tuple(average.shape)} from earlier steps (a new batch size?). {RESET_SENTENCE}")
        return average, weight_sum

    def single_step_functional_forward(self, inputs, states, **kwargs):
        x = inputs[0]
        average_prev, weight_sum_prev = states
        # The average is accumulated in the compute dtype (float32 for 16-bit frames), like SAFNode's state.
        dtype = saf_functional.compute_dtype(x.dtype)
        weight_sum = saf_functional.next_weight_sum(weight_sum_prev, self.decay)
        if average_prev is not None:
            average_prev = average_prev.to(dtype)
        average = saf_functional.running_average(x.to(dtype), average_prev, weight_sum, weight_sum_prev, self.decay)
        return (average.to(x.dtype),), (average, weight_sum)


class OutputRecovery(base.MemoryModule):
    r"""
    **API Language** - 中文 | English

    * **中文**: 从网络的累积（加权平均）输出 :math:`\bar O[t]` 逐步恢复瞬时输出
      :math:`o[t] = c[t]\bar O[t] - \lambda c[t-1]\bar O[t-1]` （:math:`\bar O[t-1]` 不求导），它等于 LIF/OTTT
      网络的输出（``docs/theory.md`` 定理 2）。``decay`` 是输出层之前那个神经元的泄漏 :math:`\lambda`，须显式给出。
      它是一个 ``MemoryModule``：在每个新序列之前与网络一起由 ``functional.reset_net`` 复位。
    * **English**: step by step, :math:`o[t] = c[t] \bar O[t] - \lambda c[t-1] \bar O[t-1]` with
      :math:`\bar O[t-1]` detached; it equals the LIF/OTTT network's output (``docs/theory.md``,
      Theorem 2). ``decay`` is the leak :math:`\lambda` of the neuron that feeds the output layer,
      given explicitly. It is a ``MemoryModule``: call
      ``spikingjelly.activation_based.functional.reset_net`` on it (or on a network holding it)
      before every new sequence.

    :param decay: the leak :math:`\lambda = 1 - 1/\tau` in ``[0, 1]``
    :param step_mode: ``'s'`` (one :math:`\bar O[t]` per call) or ``'m'`` (a sequence ``[T, ...]``)
    """

    def __init__(self, decay: float, step_mode: str = "s"):
        super().__init__()
        if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not 0.0 <= decay <= 1.0:
            raise ValueError(f"decay must be a number in [0, 1] (1 - 1/tau of the neuron before the output "
                             f"layer), got {decay!r}.")
        self.decay = float(decay)
        self.step_mode = step_mode
        self.register_memory("average_prev", None)
        self.register_memory("weight_sum", 0.0)

    def extra_repr(self) -> str:
        return f"decay={self.decay}, step_mode={self.step_mode}"

    def single_step_functional_forward(self, inputs, states, **kwargs):
        average = inputs[0]
        average_prev, weight_sum_prev = states
        weight_sum = saf_functional.next_weight_sum(weight_sum_prev, self.decay)
        output = saf_functional.recover_instantaneous(average, average_prev, weight_sum, weight_sum_prev, self.decay)
        return (output,), (average.detach(), weight_sum)


def predict(scores: torch.Tensor) -> torch.Tensor:
    r"""The class prediction of a SAF network: the arg-max over the last dimension of its scores.

    * **中文**: 对 :func:`~spikingjelly_saf.saf_inference` 的分数取 argmax。默认分数是输出的发放率（恢复出的瞬时
      输出在 T 上的均值），与 ``to_lif`` 部署后 LIF 网络 ``out_seq.mean(0)`` 的预测相同；
      ``saf_inference(..., readout='weighted')`` 的 :math:`\bar O[T]` 也可以传入。
    * **English**: the arg-max of the scores :func:`~spikingjelly_saf.saf_inference` returns. By
      default those are the firing rate of the output (the mean over T of the recovered
      instantaneous output, :func:`~spikingjelly_saf.functional.rate_readout`), the readout
      SpikingJelly applies to every network: the LIF network deployed with ``to_lif`` and read as
      ``out_seq.mean(0)`` predicts the same class. :math:`\bar O[T]`
      (``saf_inference(..., readout='weighted')``, SAF-F's training target) is accepted too.
    """
    if not isinstance(scores, torch.Tensor) or scores.dim() == 0:
        raise TypeError(f"predict: scores must be a tensor [..., C] with the classes last, got "
                        f"{type(scores).__name__} of shape {tuple(getattr(scores, 'shape', ()))}.")
    # argmax takes NaN for the largest score, so a NaN would pass for a prediction.
    if scores.is_floating_point() and bool(torch.isnan(scores).any()):
        raise ValueError("predict: the scores hold NaN; the network or its input is not finite.")
    return scores.argmax(dim=-1)
