r"""
``SAFNode``: the Spike Accumulation Forwarding neuron for SpikingJelly 2.0.
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import torch
import torch.nn as nn
from spikingjelly.activation_based import neuron, surrogate

from . import backends
from . import functional as F

__all__ = ["SAFNode", "SpikeTap"]


class SpikeTap(nn.Identity):
    """The instantaneous spikes of a :class:`SAFNode`.

    * **中文**: 一个恒等模块。``SAFNode`` 把瞬时脉冲 :math:`S[t]` 送入它，因此 SpikingJelly 的监视器可以直接记录脉冲：
      ``monitor.OutputMonitor(net, instance=SpikeTap)``。
    * **English**: an identity module that ``SAFNode`` feeds with its instantaneous spikes
      :math:`S[t]` whenever a hook is attached, so SpikingJelly monitors record spikes directly:
      ``monitor.OutputMonitor(net, instance=SpikeTap)``. With no hook it costs nothing.
    """

    def is_observed(self) -> bool:
        return bool(self._forward_hooks or self._forward_pre_hooks)


def _float_argument(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a real number, got {value!r} ({type(value).__name__}).")
    return float(value)


class SAFNode(neuron.BaseNode):
    def __init__(
        self,
        tau: float = 2.0,
        decay_input: bool = False,
        v_threshold: float = 1.0,
        v_reset: Optional[float] = None,
        surrogate_function: Callable = surrogate.Sigmoid(alpha=4.0),
        detach_reset: bool = True,
        step_mode: str = "s",
        store_v_seq: bool = False,
        backend: str = "torch",
    ):
        r"""
        **API Language** - :ref:`中文 <SAFNode.__init__-cn>` | :ref:`English <SAFNode.__init__-en>`

        ----

        .. _SAFNode.__init__-cn:

        * **中文**

        脉冲累积前向（SAF）神经元，可直接替换 ``neuron.LIFNode`` （软复位）。输入是上一层对前一个神经元
        输出 :math:`\bar A` 的作用 :math:`I[t]`，输出是本神经元的加权发放率 :math:`\bar A[t]`。其脉冲与相同权重的
        LIF 网络完全一致（定理 1）。状态为 :math:`\bar A[t-1]` 与 :math:`c[t-1]` （编码了步数）。

        :param tau: 膜时间常数，:math:`\tau \ge 1`；``math.inf`` 表示 IF 神经元
        :param decay_input: 输入是否也除以 ``tau``
        :param v_threshold: 阈值电压
        :param v_reset: 必须为 ``None`` （软复位）；SAF 无法表达硬复位
        :param surrogate_function: 任意 SpikingJelly 替代函数（脉冲层面），或
            :class:`spikingjelly_saf.surrogate.SpikeRepresentation` （表示层面，SAF-F）
        :param detach_reset: 为兼容而接受；SAF 的在线梯度本就不经过复位
        :param step_mode: ``'s'`` 或 ``'m'``
        :param store_v_seq: 是否记录与之等价的 LIF 膜电位 ``v_seq``
        :param backend: ``'torch'``，或多步模式下的融合后端（见 ``supported_backends``）

        ----

        .. _SAFNode.__init__-en:

        * **English**

        The Spike Accumulation Forwarding neuron, a drop-in for a soft-reset ``neuron.LIFNode``. Its
        input is :math:`I[t]`, the layer applied to the previous neuron's output :math:`\bar A`; its
        output is its own weighted firing rate :math:`\bar A[t]`. Its spikes are exactly those of
        the LIF network with the same weights (Theorem 1). The state is :math:`\bar A[t-1]` and
        :math:`c[t-1]`, which encodes the step count.

        :param tau: membrane time constant, :math:`\tau \ge 1`; ``math.inf`` gives an IF neuron
        :param decay_input: whether the input is divided by ``tau`` too
        :param v_threshold: threshold voltage
        :param v_reset: must be ``None`` (soft reset); SAF cannot express a hard reset
        :param surrogate_function: any SpikingJelly surrogate (acts at spike level), or
            :class:`spikingjelly_saf.surrogate.SpikeRepresentation` (representation level, SAF-F)
        :param detach_reset: accepted for compatibility; SAF's online gradient never passes through
            the reset
        :param step_mode: ``'s'`` or ``'m'``
        :param store_v_seq: record the equivalent LIF membrane (after reset) in ``v_seq``
        :param backend: ``'torch'``, or a fused backend in multi-step mode (see ``supported_backends``)
        """
        if v_reset is not None:
            raise ValueError(
                f"v_reset={v_reset!r} asks for a hard reset, which is not linear in the spike train, "
                "so spike accumulation cannot express it. SAF needs the soft reset: pass v_reset=None."
            )
        if not callable(surrogate_function):
            raise TypeError(
                f"surrogate_function must be callable (a SpikingJelly surrogate object), "
                f"got {surrogate_function!r}."
            )
        v_threshold = _float_argument("v_threshold", v_threshold)
        if not v_threshold > 0.0 or math.isinf(v_threshold):
            raise ValueError(f"v_threshold must be positive and finite, got {v_threshold}.")
        super().__init__(v_threshold, None, surrogate_function, bool(detach_reset), step_mode,
                         store_v_seq)
        # BaseNode always registers a membrane memory "v"; SAF's state is (abar, weight_sum) instead.
        del self.v
        self.register_memory("abar", 0.0)
        self.register_memory("weight_sum", 0.0)
        self.decay_input = bool(decay_input)
        self.tau = tau
        self.spikes = SpikeTap()
        self.backend = backend

    # ---- parameters -------------------------------------------------------------------------
    @property
    def tau(self) -> float:
        return self._tau

    @tau.setter
    def tau(self, value) -> None:
        value = _float_argument("tau", value)
        if math.isnan(value) or value < 1.0:
            raise ValueError(
                f"tau must be >= 1 (tau=1 is memoryless, tau=math.inf is an IF neuron), got {value}. "
                "tau < 1 gives a negative leak 1 - 1/tau, which is not a leaky neuron."
            )
        if math.isinf(value) and self.decay_input:
            raise ValueError("tau=math.inf with decay_input=True scales every input to zero; "
                             "use decay_input=False for an IF neuron.")
        self._tau = value

    @property
    def decay(self) -> float:
        r"""The leak :math:`\lambda = 1 - 1/\tau`."""
        return F.decay_factor(self._tau)

    @property
    def input_scale(self) -> float:
        return F.input_scale_factor(self._tau, self.decay_input)

    @property
    def supported_backends(self) -> tuple[str, ...]:
        return backends.SUPPORTED_BACKENDS[self.step_mode]

    @property
    def backend(self) -> str:
        return self._backend

    @backend.setter
    def backend(self, value: str) -> None:
        backends.check_backend(value, self.step_mode)
        self._backend = value

    def extra_repr(self) -> str:
        return (
            f"tau={self._tau}, decay_input={self.decay_input}, v_threshold={self.v_threshold}, "
            f"step_mode={self.step_mode}, backend={self._backend}"
        )

    # ---- state ------------------------------------------------------------------------------
    def materialize_states(self, inputs, states, step_mode):
        x = inputs[0]
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            raise TypeError(
                f"{self._get_name()} expects a floating-point tensor input, got "
                f"{x.dtype if isinstance(x, torch.Tensor) else type(x).__name__}. "
                "Convert it first, e.g. x.float()."
            )
        if step_mode == "m" and x.dim() < 2:
            raise ValueError(
                f"{self._get_name()} in step_mode='m' expects an input of shape [T, N, *] (rank >= 2), "
                f"got shape {tuple(x.shape)}. Add the time dimension first, or use step_mode='s'."
            )
        neuron_shape = x.shape[1:] if step_mode == "m" else x.shape
        state_dtype = x.dtype
        if x.dtype in (torch.float16, torch.bfloat16) and torch.is_autocast_enabled(x.device.type):
            # Under autocast the accumulated rate stays in float32: it is summed over time.
            state_dtype = torch.float32
        abar, weight_sum = states
        if not isinstance(abar, torch.Tensor):
            abar = torch.zeros(neuron_shape, dtype=state_dtype, device=x.device)
        elif abar.shape != neuron_shape:
            raise ValueError(
                f"{self._get_name()} received an input of neuron shape {tuple(neuron_shape)} but holds a "
                f"state of shape {tuple(abar.shape)} from earlier steps. Call "
                "spikingjelly.activation_based.functional.reset_net(net) between sequences."
            )
        elif abar.dtype != state_dtype or abar.device != x.device:
            abar = abar.to(dtype=state_dtype, device=x.device)
        return abar, weight_sum

    # ---- functional transitions -------------------------------------------------------------
    def single_step_functional_forward(self, inputs, states, **kwargs):
        abar_prev, weight_sum_prev = states
        abar, weight_sum = backends.torch_step(
            inputs[0], abar_prev.detach(), weight_sum_prev, self.decay, self.v_threshold,
            self.input_scale, self.surrogate_function,
        )
        return (abar,), (abar.detach(), weight_sum)

    def multi_step_functional_forward(self, inputs, states, **kwargs):
        abar_prev, weight_sum_prev = states
        run = backends.get_multi_step(self._backend)
        abar_seq, weight_sum = run(
            inputs[0], abar_prev.detach(), weight_sum_prev, self.decay, self.v_threshold,
            self.input_scale, self.surrogate_function,
        )
        # clone: a view would keep the whole [T, N] output alive as state.
        return (abar_seq,), (abar_seq[-1].detach().clone(), weight_sum)

    # ---- stateful forward -------------------------------------------------------------------
    def single_step_forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._backend != "torch":
            raise ValueError(
                f"backend={self._backend!r} runs in multi-step mode only; use step_mode='m' "
                "or set backend='torch' for single-step mode."
            )
        states = self.materialize_states((x,), (self.abar, self.weight_sum), "s")
        (abar,), (self.abar, self.weight_sum) = self.single_step_functional_forward((x,), states)
        self._observe(x.unsqueeze(0), abar.unsqueeze(0), *states)
        return abar

    def multi_step_forward(self, x_seq: torch.Tensor) -> torch.Tensor:
        states = self.materialize_states((x_seq,), (self.abar, self.weight_sum), "m")
        (abar_seq,), (self.abar, self.weight_sum) = self.multi_step_functional_forward(
            (x_seq,), states
        )
        self._observe(x_seq, abar_seq, *states)
        return abar_seq

    def _observe(self, x_seq, abar_seq, abar_prev, weight_sum_prev) -> None:
        """Feed the spike tap and ``v_seq``, only when someone is looking."""
        watch_spikes = self.spikes.is_observed()
        if not (watch_spikes or self.store_v_seq):
            return
        with torch.no_grad():
            if watch_spikes:
                spike_seq = F.recover_instantaneous_seq(
                    abar_seq, self.decay, weight_sum_prev, abar_prev
                )
                if getattr(self.surrogate_function, "spiking", True):
                    spike_seq = spike_seq.round()
                self.spikes(spike_seq if self.step_mode == "m" else spike_seq[0])
            if self.store_v_seq:
                sums = F.weight_sums(weight_sum_prev, self.decay, x_seq.shape[0])
                v_seq = torch.stack([
                    F.lif_membrane_after_reset(x, abar, c, self.v_threshold, self.input_scale)
                    for x, abar, c in zip(x_seq, abar_seq, sums)
                ])
                if self.step_mode == "m":
                    self.v_seq = v_seq
                else:
                    self._append_v_seq(v_seq[0])
