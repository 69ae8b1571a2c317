r"""
``SAFNode``: the Spike Accumulation Forwarding neuron for SpikingJelly 2.0.
"""

from __future__ import annotations

import math
import sys
import warnings
from typing import Callable, Optional

import torch
import torch.nn as nn
from spikingjelly.activation_based import base, neuron, surrogate

from . import functional as saf_functional
from .backends import REGISTRY, BackendSelectable

__all__ = ["SAFNode", "SpikeTap", "SAFPrecisionWarning", "RESET_SENTENCE"]

#: When to reset, said the same way everywhere.
RESET_SENTENCE = ("Call spikingjelly.activation_based.functional.reset_net(net) before every new "
                  "sequence (every new sample or batch).")


class SpikeTap(nn.Identity):
    r"""
    **API Language** - 中文 | English

    * **中文**: 一个恒等模块。有钩子（监视器）时，``SAFNode`` 把瞬时脉冲 :math:`S[t]` 送入它，因此 SpikingJelly 的
      监视器可以直接记录脉冲：``monitor.OutputMonitor(net, instance=SpikeTap)``。没有钩子时不产生任何开销。
    * **English**: an identity module that ``SAFNode`` feeds with its instantaneous spikes
      :math:`S[t]` whenever a hook is attached, so SpikingJelly monitors record spikes directly:
      ``monitor.OutputMonitor(net, instance=SpikeTap)``. With no hook it costs nothing.
    """

    def is_observed(self) -> bool:
        return bool(self._forward_hooks or self._forward_pre_hooks)


class SAFPrecisionWarning(UserWarning):
    """A ``SAFNode`` below float64 reached a weight sum :math:`c[t]` at which its spikes may differ
    from the LIF network's more than an LIF network's own rounding would
    (:func:`spikingjelly_saf.functional.exceeds_precision_limit`), or was given a threshold that
    float32 cannot hold."""


_FLOAT32_TINY = float(torch.finfo(torch.float32).tiny)
_FLOAT32_MAX = float(torch.finfo(torch.float32).max)


#: Why a SAF neuron's numbers cannot be tensors, said the same way everywhere.
FIXED_LEAK_SENTENCE = (
    "SAF needs one fixed leak per layer: a neuron's output rate is weighted with its own leak, "
    "which the next neuron integrates with, so a learnable or per-neuron tau (ParametricLIFNode) "
    "cannot be expressed. Pass a number, e.g. tau=2.0; to learn tau, train SpikingJelly's "
    "ParametricLIFNode with BPTT instead.")


def _float_argument(name: str, value) -> float:
    if isinstance(value, torch.Tensor):
        why = (FIXED_LEAK_SENTENCE if name == "tau" else
               f"A SAFNode's {name} is one Python number for the whole layer; pass e.g. {name}=1.0.")
        raise TypeError(f"{name} must be a number, not a {type(value).__name__}. {why}")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a real number, got {value!r} ({type(value).__name__}).")
    return float(value)


def _bool_argument(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r} ({type(value).__name__}).")
    return value


def check_tau(value) -> float:
    """``tau`` as a float, or a clear error: a real number >= 1 (``math.inf`` for IF)."""
    value = _float_argument("tau", value)
    if math.isnan(value) or value < 1.0:
        raise ValueError(
            f"tau must be >= 1 (tau=1 is memoryless, tau=math.inf is an IF neuron), got {value}. "
            "tau < 1 gives a negative leak 1 - 1/tau, which is not a leaky neuron."
        )
    return value


def check_sequence(module: nn.Module, x_seq: torch.Tensor) -> None:
    """Multi-step input: a floating tensor ``[T, N, *]`` with ``T >= 1``."""
    if x_seq.dim() < 2:
        raise ValueError(
            f"{module._get_name()} in step_mode='m' expects an input of shape [T, N, *] (rank >= 2), "
            f"got shape {tuple(x_seq.shape)}. Add the time dimension first, or use step_mode='s'."
        )
    if x_seq.shape[0] == 0:
        raise ValueError(f"{module._get_name()} got an empty sequence (T=0, shape {tuple(x_seq.shape)}); "
                         "a sequence needs at least one time step.")


class SAFNode(BackendSelectable, neuron.BaseNode):
    r"""
    **API Language** - :ref:`中文 <SAFNode-cn>` | :ref:`English <SAFNode-en>`

    ----

    .. _SAFNode-cn:

    * **中文**

    脉冲累积前向（SAF）神经元，可直接替换 ``neuron.LIFNode`` （软复位）。输入是上一层对前一个神经元
    输出 :math:`\bar A` 的作用 :math:`I[t]`，输出是本神经元的加权发放率 :math:`\bar A[t]`。其脉冲与相同权重的
    LIF 网络完全一致（``docs/theory.md`` 定理 1）。状态为 :math:`\bar A[t-1]` 与 :math:`c[t-1]` （编码了步数），
    ``v`` 是与之等价的 LIF 膜电位（复位后），读取时才由最后一步的输入算出。在每个新序列之前调用
    ``spikingjelly.activation_based.functional.reset_net(net)``。16 位输入在 float32 中计算，状态保持 float32。

    :param tau: 膜时间常数，:math:`\tau \ge 1`；``math.inf`` 表示 IF 神经元
    :param decay_input: 输入是否也除以 ``tau`` （``True``/``False``）
    :param v_threshold: 阈值电压，正且有限
    :param v_reset: 必须为 ``None`` （软复位）；SAF 无法表达硬复位
    :param surrogate_function: 任意 SpikingJelly 替代函数（脉冲层面），或
        :class:`spikingjelly_saf.surrogate.SpikeRepresentation` （表示层面，SAF-F）
    :param detach_reset: 为兼容而接受（``True``/``False``）；SAF 的在线梯度本就不经过复位
    :param step_mode: ``'s'`` 或 ``'m'``
    :param store_v_seq: 是否记录与之等价的 LIF 膜电位 ``v_seq``
    :param backend: ``'auto'`` （默认：按输入所在设备选择融合内核——CUDA 上 CuPy、Triton，CPU 上由 CUDA 源码编译的
        ``'cpp'``——没有时用 ``'torch'``；环境变量 ``SAF_BACKEND`` 可强制指定），或明确的 ``'torch'``、``'cpp'``、
        ``'cupy'``、``'triton'`` （见 ``supported_backends`` 与 ``docs/backends.md``）

    Shape:
        - 单步模式：输入 :math:`I[t]` ``[N, *]``，输出 :math:`\bar A[t]` ``[N, *]``
        - 多步模式：输入 ``[T, N, *]``，输出 ``[T, N, *]``
        - 状态 ``abar`` 与输入同形，``weight_sum`` 为 Python 浮点数 :math:`c[t-1]`

    Example::

        >>> import torch
        >>> from spikingjelly.activation_based import functional
        >>> from spikingjelly_saf import SAFNode, functional as saf_functional
        >>> node = SAFNode(tau=2.0, step_mode="m")
        >>> abar_seq = node(torch.rand(4, 3, 8, dtype=torch.float64))  # [T, N, *] -> [T, N, *]
        >>> spike_seq = saf_functional.recover_instantaneous_seq(abar_seq, node.decay)  # 与 LIFNode 相同的脉冲
        >>> functional.reset_net(node)

    ----

    .. _SAFNode-en:

    * **English**

    The Spike Accumulation Forwarding neuron, a drop-in for a soft-reset ``neuron.LIFNode``. Its
    input is :math:`I[t]`, the layer applied to the previous neuron's output :math:`\bar A`; its
    output is its own weighted firing rate :math:`\bar A[t]`. Its spikes are exactly those of
    the LIF network with the same weights (``docs/theory.md``, Theorem 1). The state is
    :math:`\bar A[t-1]` and :math:`c[t-1]`, which encodes the step count; ``v`` is the equivalent
    LIF membrane (after reset), computed from the last step's input when read. Call
    ``spikingjelly.activation_based.functional.reset_net(net)`` before every new sequence. 16-bit
    inputs are computed in float32, and the state stays float32.

    :param tau: membrane time constant, :math:`\tau \ge 1`; ``math.inf`` gives an IF neuron
    :param decay_input: whether the input is divided by ``tau`` too (``True``/``False``)
    :param v_threshold: threshold voltage, positive and finite
    :param v_reset: must be ``None`` (soft reset); SAF cannot express a hard reset
    :param surrogate_function: any SpikingJelly surrogate (acts at spike level), or
        :class:`spikingjelly_saf.surrogate.SpikeRepresentation` (representation level, SAF-F)
    :param detach_reset: accepted for compatibility (``True``/``False``); SAF's online gradient never
        passes through the reset
    :param step_mode: ``'s'`` or ``'m'``
    :param store_v_seq: record the equivalent LIF membrane (after reset) in ``v_seq``
    :param backend: ``'auto'`` (default: the fused kernels of the input's device, CuPy then Triton
        on CUDA and ``'cpp'``, the CUDA source compiled for the CPU, on CPU, else ``'torch'``; the
        environment variable ``SAF_BACKEND`` forces one), or explicitly ``'torch'``, ``'cpp'``,
        ``'cupy'`` or ``'triton'``, in both step modes (see ``supported_backends`` and
        ``docs/backends.md``)

    Shape:
        - single-step mode: input :math:`I[t]` ``[N, *]``, output :math:`\bar A[t]` ``[N, *]``
        - multi-step mode: input ``[T, N, *]``, output ``[T, N, *]``
        - state: ``abar`` has the input's shape; ``weight_sum`` is the Python float :math:`c[t-1]`

    Example::

        >>> import torch
        >>> from spikingjelly.activation_based import functional
        >>> from spikingjelly_saf import SAFNode, functional as saf_functional
        >>> node = SAFNode(tau=2.0, step_mode="m")
        >>> abar_seq = node(torch.rand(4, 3, 8, dtype=torch.float64))  # [T, N, *] -> [T, N, *]
        >>> spike_seq = saf_functional.recover_instantaneous_seq(abar_seq, node.decay)  # LIF's spikes
        >>> functional.reset_net(node)
    """

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
        backend: str = "auto",
    ):
        self._check_v_reset(v_reset)
        _float_argument("tau", tau)  # before nn.Module would register an nn.Parameter tau
        detach_reset = _bool_argument("detach_reset", detach_reset)
        store_v_seq = _bool_argument("store_v_seq", store_v_seq)
        super().__init__(self._check_v_threshold(v_threshold), None, surrogate_function, detach_reset,
                         step_mode, store_v_seq)
        # SAF's state is (Abar, c); the LIF membrane follows from them and the last input, so it is
        # computed only when read (the property ``v``) instead of costing tensor work every step.
        del self.v
        self.register_memory("abar", 0.0)
        self.register_memory("weight_sum", 0.0)
        self.register_memory("last_input", 0.0)
        self._decay_input = _bool_argument("decay_input", decay_input)
        self.tau = tau
        self.spikes = SpikeTap()
        self.backend = backend
        self._precision_warned = False

    _NUMBERS = ("tau", "v_threshold", "v_reset")

    def __setattr__(self, name: str, value) -> None:
        # nn.Module registers an nn.Parameter before a property setter could refuse it.
        if name in self._NUMBERS and isinstance(value, torch.Tensor):
            _float_argument(name, value)
        if name == "surrogate_function" and not callable(value):
            raise TypeError(
                f"surrogate_function must be callable (a SpikingJelly surrogate object such as "
                f"surrogate.Sigmoid()), got {value!r}.")
        super().__setattr__(name, value)

    # ---- parameters (validated on every assignment) --------------------------------------------
    @staticmethod
    def _check_v_threshold(value) -> float:
        value = _float_argument("v_threshold", value)
        if not value > 0.0 or math.isinf(value):
            raise ValueError(f"v_threshold must be positive and finite, got {value}.")
        if value < sys.float_info.min:
            raise ValueError(f"v_threshold={value} is below the smallest normal float64 "
                             f"({sys.float_info.min:.4g}); every tensor type rounds it towards 0, so the "
                             "neuron would fire at any positive input.")
        if not _FLOAT32_TINY <= value <= _FLOAT32_MAX:
            warnings.warn(f"v_threshold={value} lies outside float32's normal range "
                          f"({_FLOAT32_TINY:.4g} .. {_FLOAT32_MAX:.4g}): in a float32 network it becomes "
                          "0 or inf (fires at every step or never). Use float64 or a threshold in range.",
                          SAFPrecisionWarning, stacklevel=3)
        return value

    @staticmethod
    def _check_v_reset(value) -> None:
        if value is not None:
            raise ValueError(
                f"v_reset={value!r} asks for a hard reset, which is not linear in the spike train, "
                "so spike accumulation cannot express it. SAF needs the soft reset: pass v_reset=None."
            )

    @property
    def v_threshold(self) -> float:
        return self._v_threshold

    @v_threshold.setter
    def v_threshold(self, value) -> None:
        self._v_threshold = self._check_v_threshold(value)
        self.__dict__.pop("_params", None)

    @property
    def v_reset(self) -> None:
        return None

    @v_reset.setter
    def v_reset(self, value) -> None:
        self._check_v_reset(value)

    @property
    def tau(self) -> float:
        return self._tau

    @tau.setter
    def tau(self, value) -> None:
        value = check_tau(value)
        if math.isinf(value) and self._decay_input:
            raise ValueError("tau=math.inf with decay_input=True scales every input to zero; "
                             "use decay_input=False for an IF neuron.")
        self._tau = value
        self.__dict__.pop("_params", None)

    @property
    def decay_input(self) -> bool:
        return self._decay_input

    @decay_input.setter
    def decay_input(self, value) -> None:
        value = _bool_argument("decay_input", value)
        if value and math.isinf(self._tau):
            raise ValueError("decay_input=True with tau=math.inf scales every input to zero; "
                             "use decay_input=False for an IF neuron.")
        self._decay_input = value
        self.__dict__.pop("_params", None)

    @property
    def decay(self) -> float:
        r"""The leak :math:`\lambda = 1 - 1/\tau`."""
        return saf_functional.decay_factor(self._tau)

    @property
    def input_scale(self) -> float:
        return saf_functional.input_scale_factor(self._tau, self._decay_input)

    @property
    def params(self) -> saf_functional.SAFParameters:
        """The layer's constants as :class:`~spikingjelly_saf.functional.SAFParameters` (made again after
        ``tau``, ``v_threshold`` or ``decay_input`` changes)."""
        found = self.__dict__.get("_params")
        if found is None:
            found = saf_functional.SAFParameters(self.decay, self._v_threshold, self.input_scale)
            self.__dict__["_params"] = found
        return found

    def extra_repr(self) -> str:
        return (
            f"tau={self._tau}, decay_input={self._decay_input}, v_threshold={self._v_threshold}, "
            f"step_mode={self.step_mode}, backend={self._backend}"
        )

    # ---- state ------------------------------------------------------------------------------
    @property
    def v(self):
        r"""The equivalent LIF membrane after reset, :math:`V[t] = c[t] (s I[t] - V_{th} \bar A[t])`,
        in the state dtype; ``0.0`` before the first step."""
        memories = self.__dict__["_memories"]
        if "last_input" not in memories:
            # BaseNode.__init__ asks hasattr(self, "v") before registering its own membrane.
            raise AttributeError("v")
        if not isinstance(memories["last_input"], torch.Tensor):
            return 0.0
        with torch.no_grad():
            abar = memories["abar"]
            return saf_functional.lif_membrane_after_reset(memories["last_input"].to(abar.dtype), abar,
                                              memories["weight_sum"], self._v_threshold, self.input_scale)

    def materialize_states(self, inputs, states, step_mode):
        x = inputs[0]
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            raise TypeError(
                f"{self._get_name()} expects a floating-point tensor input, got "
                f"{x.dtype if isinstance(x, torch.Tensor) else type(x).__name__}. "
                "Convert it first, e.g. x.float()."
            )
        if step_mode == "m":
            check_sequence(self, x)
        neuron_shape = x.shape[1:] if step_mode == "m" else x.shape
        state_dtype = saf_functional.compute_dtype(x.dtype)
        abar, weight_sum, last_input = states
        if not isinstance(abar, torch.Tensor):
            abar = torch.zeros(neuron_shape, dtype=state_dtype, device=x.device)
        elif abar.shape != neuron_shape:
            raise ValueError(
                f"{self._get_name()} received an input of neuron shape {tuple(neuron_shape)} but holds a "
                f"state of shape {tuple(abar.shape)} from earlier steps. {RESET_SENTENCE}"
            )
        elif abar.dtype != state_dtype or abar.device != x.device:
            abar = abar.to(dtype=state_dtype, device=x.device)
        return abar, weight_sum, last_input

    # ---- functional transitions -------------------------------------------------------------
    def single_step_forward(self, x: torch.Tensor, *args, **kwargs):
        # BaseNode's and MemoryModule's single step for SAF's three memories, in one frame: every
        # step of every layer of a single-step network runs it. The general path records v_seq.
        if args or kwargs or self.store_v_seq:
            return super().single_step_forward(x, *args, **kwargs)
        memories = self._memories
        states = self.materialize_states((x,), (memories["abar"], memories["weight_sum"], memories["last_input"]),
                                         "s")
        (output,), (memories["abar"], memories["weight_sum"], memories["last_input"]) = \
            self.single_step_functional_forward((x,), states)
        return output

    def single_step_functional_forward(self, inputs, states, **kwargs):
        x = inputs[0]
        abar_prev, weight_sum_prev, _ = states
        abar, state = REGISTRY.single_step(self._backend, x, saf_functional.SAFState(abar_prev, weight_sum_prev),
                                           self.params, self.surrogate_function)
        self._check_precision(state.weight_sum, x.dtype)
        if self.spikes.is_observed():
            self._observe(abar.unsqueeze(0), abar_prev, weight_sum_prev)
        return (self._output(abar, x),), (state.abar, state.weight_sum, x.detach())

    def multi_step_functional_forward(self, inputs, states, **kwargs):
        x_seq = inputs[0]
        abar_prev, weight_sum_prev, _ = states
        abar_seq, state = REGISTRY.multi_step(self._backend, x_seq, saf_functional.SAFState(abar_prev, weight_sum_prev),
                                              self.params, self.surrogate_function)
        self._check_precision(state.weight_sum, x_seq.dtype)
        if self.spikes.is_observed():
            self._observe(abar_seq, abar_prev, weight_sum_prev)
        last_input = x_seq[-1].detach().clone()  # a view would keep the whole input sequence alive
        return (self._output(abar_seq, x_seq),), (state.abar, state.weight_sum, last_input)

    def _check_precision(self, weight_sum: float, dtype: torch.dtype) -> None:
        if self._precision_warned or not saf_functional.exceeds_precision_limit(weight_sum, dtype):
            return
        self._precision_warned = True
        warnings.warn(
            f"SAFNode(tau={self._tau}) in {dtype} reached c[t] = {weight_sum:g} > "
            f"{saf_functional.PRECISION_WEIGHT_SUM_LIMIT:g}: its membrane scales the rounding of its "
            f"input by c[t], about {math.sqrt(weight_sum):.0f} times an LIF neuron's rounding error at "
            "this precision, so spikes near the threshold may differ from the LIF network's. Run the "
            "model in float64 (model.double()) where exact spikes matter, or use a finite tau "
            f"(c[t] < tau). Warned once per neuron.", SAFPrecisionWarning, stacklevel=3)

    def multi_step_forward(self, x_seq: torch.Tensor, *args, **kwargs):
        # BaseNode records v_seq by looping the single step, which would bypass a fused backend;
        # every step's membrane follows from the outputs instead.
        weight_sum_prev = self.weight_sum
        abar_seq = base.MemoryModule.multi_step_forward(self, x_seq, *args, **kwargs)
        if self.store_v_seq:
            with torch.no_grad():
                sums = saf_functional.weight_sums(weight_sum_prev, self.decay, x_seq.shape[0])
                self.v_seq = torch.stack([
                    saf_functional.lif_membrane_after_reset(x, abar, c, self._v_threshold, self.input_scale)
                    for x, abar, c in zip(x_seq, abar_seq, sums)
                ])
        return abar_seq

    @staticmethod
    def _output(abar: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The output in the input's dtype; under autocast, in the (float32) compute dtype."""
        if abar.dtype == x.dtype or torch.is_autocast_enabled(x.device.type):
            return abar
        return abar.to(x.dtype)

    def _observe(self, abar_seq, abar_prev, weight_sum_prev) -> None:
        """Feed the spike tap (from the compute-dtype outputs); called only when someone is looking."""
        with torch.no_grad():
            spike_seq = saf_functional.recover_instantaneous_seq(abar_seq, self.decay, weight_sum_prev, abar_prev)
            if getattr(self.surrogate_function, "spiking", True):
                spike_seq = spike_seq.round()
        self.spikes(spike_seq if self.step_mode == "m" else spike_seq[0])
