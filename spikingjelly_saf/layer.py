r"""
Modules around SAF neurons: the input average in front of the first layer, and output readout.
"""

from __future__ import annotations

from typing import Optional

import torch
from spikingjelly.activation_based import base

from . import functional as F

__all__ = ["InputAverage", "OutputRecovery", "predict"]


class InputAverage(base.MemoryModule):
    def __init__(self, tau: float = 2.0, step_mode: str = "s"):
        r"""
        **API Language** - :ref:`中文 <InputAverage.__init__-cn>` | :ref:`English <InputAverage.__init__-en>`

        ----

        .. _InputAverage.__init__-cn:

        * **中文**

        放在第一层之前，把输入帧序列（事件帧）变为其加权滑动平均 :math:`\bar x[t]`，``tau`` 取第一个
        ``SAFNode`` 的值。静态图像（每步相同）经过它保持不变，因此可省略。

        ----

        .. _InputAverage.__init__-en:

        * **English**

        Put in front of the first layer for sequence inputs (event frames): it turns the frames into
        their running weighted average :math:`\bar x[t] = (\lambda c[t-1] \bar x[t-1] + x[t]) / c[t]`,
        so the first SAF neuron sees what a LIF neuron integrates. Use the ``tau`` of the first
        ``SAFNode``. A static image repeated every step passes unchanged, so it may be left out there.
        """
        super().__init__()
        self.tau = float(tau)
        if not self.tau >= 1.0:
            raise ValueError(f"tau must be >= 1, got {tau}.")
        self.step_mode = step_mode
        self.register_memory("average", None)
        self.register_memory("weight_sum", 0.0)

    def extra_repr(self) -> str:
        return f"tau={self.tau}, step_mode={self.step_mode}"

    def single_step_functional_forward(self, inputs, states, **kwargs):
        x = inputs[0]
        average_prev, weight_sum_prev = states
        decay = F.decay_factor(self.tau)
        weight_sum = F.next_weight_sum(weight_sum_prev, decay)
        average = F.running_average(x, average_prev, weight_sum, weight_sum_prev, decay)
        return (average,), (average, weight_sum)


class OutputRecovery:
    r"""Recovers the instantaneous output :math:`o[t]` from the network's weighted-average output.

    * **中文**: 从累积（加权平均）输出 :math:`\bar O[t]` 逐步恢复瞬时输出
      :math:`o[t] = c[t]\bar O[t] - \lambda c[t-1]\bar O[t-1]`，它等于 LIF/OTTT 网络的输出。
    * **English**: step by step, :math:`o[t] = c[t] \bar O[t] - \lambda c[t-1] \bar O[t-1]` with
      :math:`\bar O[t-1]` detached; it equals the LIF/OTTT network's output. ``decay`` is the leak of the
      neuron that feeds the output layer.
    """

    def __init__(self, decay: float):
        self.decay = decay
        self.reset()

    def reset(self) -> None:
        self.average_prev: Optional[torch.Tensor] = None
        self.weight_sum = 0.0

    def __call__(self, average: torch.Tensor) -> torch.Tensor:
        weight_sum_prev = self.weight_sum
        self.weight_sum = F.next_weight_sum(weight_sum_prev, self.decay)
        output = F.recover_instantaneous(
            average, self.average_prev, self.weight_sum, weight_sum_prev, self.decay
        )
        self.average_prev = average.detach()
        return output


def predict(average_output: torch.Tensor) -> torch.Tensor:
    r"""The class prediction of a SAF network: the arg-max of its last weighted-average output :math:`\bar O[T]`.

    OTTT and BPTT predict from the plain sum of per-step outputs instead; SAF predicts from the
    Spike Representation of the output, which is what SAF-F trains.
    """
    return average_output.argmax(dim=-1)
