r"""
Recurrent and feedback (delayed) connections for SAF networks.

**API Language** - 中文 | English

* **中文**: SAF 神经元接收的是层作用于加权发放率 :math:`\bar A[t] = A[t]/c[t]` 的结果。延迟一步的连接
  （循环或反馈）必须传递 :math:`(c[t-1]/c[t])\,\bar A_{src}[t-1]`，接收者才积分到与 LIF 网络完全相同的输入
  （``docs/theory.md``，"延迟连接"）；其计算图在步边界处切断（:math:`\bar A[t-1]` 不求导）。本模块提供
  SpikingJelly ``LinearRecurrentContainer`` 与 ``ElementWiseRecurrentContainer`` 的 SAF 版本，以及跨越多层的
  反馈容器（OTTT 的 VGG-F）的 LIF 版本与 SAF 版本。``to_saf`` / ``to_lif`` 互相替换它们。
* **English**: a SAF neuron receives the layer applied to the weighted rate
  :math:`\bar A[t] = A[t]/c[t]`. A connection delayed by one step (recurrent or feedback) must
  deliver :math:`(c[t-1]/c[t])\,\bar A_{src}[t-1]` for the receiver to integrate exactly what the
  LIF network integrates (``docs/theory.md``, "Delayed connections"); its graph is cut at the step
  boundary (:math:`\bar A[t-1]` detached). This module holds the SAF versions of SpikingJelly's
  ``LinearRecurrentContainer`` and ``ElementWiseRecurrentContainer``, and a feedback container
  for connections that skip back several layers (OTTT's VGG-F), in a LIF and a SAF version.
  ``to_saf`` / ``to_lif`` swap them.

Which part of a delayed connection gets the factor :math:`c[t-1]/c[t]`: the part the LIF network
evaluates only from step 2 on. SpikingJelly's containers apply their map at every step, to
:math:`y[0] = 0` at step 1, so its bias enters at every step: the factor goes on the delayed value
and the map (bias included) is applied as it is. The feedback container adds nothing at step 1
(OTTT's VGG-F), so the feedback map's bias enters from step 2 only: the factor goes on the
feedback map's output, bias included.

Every module here runs its children one step at a time: they must be in single-step mode (as
SpikingJelly's containers require); the container itself takes ``'s'`` or ``'m'``.
"""

from __future__ import annotations

import operator
from typing import Callable, Iterator, Optional

import torch
import torch.nn as nn
from spikingjelly.activation_based import base, layer

from . import functional as saf_functional
from .neuron import SAFNode

__all__ = [
    "SAFLinearRecurrentContainer",
    "SAFElementWiseRecurrentContainer",
    "FeedbackContainer",
    "SAFFeedbackContainer",
    "DELAYED_CONTAINERS",
    "SAF_DELAYED_CONTAINERS",
    "KNOWN_AFFINE_FUNCTIONS",
    "element_wise_problem",
    "delay_factor",
    "stepping_modules",
    "outside_delayed",
    "unconverted_delayed_problem",
]

#: Element-wise functions accepted without probing: each is affine in ``(y, x)`` by definition.
KNOWN_AFFINE_FUNCTIONS = (operator.add, operator.sub, torch.add, torch.sub)


def delay_factor(weight_sum_prev: float, weight_sum: float) -> float:
    r""":math:`c[t-1]/c[t]`, the factor on a value delayed by one step; ``0`` at the first step."""
    return weight_sum_prev / weight_sum


def _probe_tensors(generator: torch.Generator, shape=(3, 7)) -> list[torch.Tensor]:
    return [torch.randn(shape, dtype=torch.float64, generator=generator) for _ in range(4)]


def element_wise_problem(function: Callable) -> Optional[str]:
    r"""Why ``function(y, x)`` cannot be an exact SAF recurrence, or ``None`` when it can.

    Exactness needs ``function`` to be element-wise and affine in ``(y, x)`` jointly: the LIF neuron
    sums it over time with weights :math:`\lambda^{t-k}`, and only an affine map commutes with that
    sum. The functions of :data:`KNOWN_AFFINE_FUNCTIONS` are accepted as they are. Any other
    function (a ``lambda y, x: y + x``, say) is probed in float64: on random real tensors and on
    0/1 spike tensors it must return a floating tensor of the input's shape, commute with a
    permutation of the elements, and map affine combinations (with a weight outside ``[0, 1]``, so
    convex-only maps fail) to the same affine combination. A probe can refuse a function but not
    prove one: a function affine on these probes yet not everywhere (one that branches on its
    input's values) passes. Multiplications (SEW's AND, ``y * x``), ``max``, clamps and logic
    operators fail.
    """
    if not callable(function):
        return f"the element-wise function {function!r} is not callable."
    if any(function is known for known in KNOWN_AFFINE_FUNCTIONS):
        return None
    name = getattr(function, "__name__", type(function).__name__)
    generator = torch.Generator().manual_seed(2024)
    y1, y2, x1, x2 = _probe_tensors(generator)
    spikes = [(t > 0).to(torch.float64) for t in _probe_tensors(generator)]
    weight = 2.5
    try:
        for (ya, yb, xa, xb) in ((y1, y2, x1, x2), tuple(spikes)):
            fa, fb = function(ya, xa), function(yb, xb)
            for out in (fa, fb):
                if not isinstance(out, torch.Tensor) or not out.is_floating_point() \
                        or out.shape != ya.shape:
                    return (f"the element-wise function {name} returned "
                            f"{getattr(out, 'dtype', type(out).__name__)} of shape "
                            f"{tuple(getattr(out, 'shape', ()))} for two float64 inputs of shape "
                            f"{tuple(ya.shape)}: an exact recurrence needs a floating tensor of the "
                            "input's shape.")
            mixed = function(weight * ya + (1 - weight) * yb, weight * xa + (1 - weight) * xb)
            deviation = float((mixed - (weight * fa + (1 - weight) * fb)).abs().max())
            if not deviation <= 1e-9 * (1.0 + float(fa.abs().max()) + float(fb.abs().max())):
                return (f"the element-wise function {name} is not affine in (y, x): "
                        f"f(a*y1+(1-a)*y2, a*x1+(1-a)*x2) differs from a*f(y1,x1)+(1-a)*f(y2,x2) "
                        f"by {deviation:.3g} (a={weight}). The LIF neuron sums f(y[t-1], x[t]) over "
                        "time with its leak; only an affine f commutes with that sum, so the "
                        "weighted rates SAF forwards would give other spikes.")
            permutation = torch.randperm(ya.numel(), generator=generator)
            permuted = function(ya.flatten()[permutation].view_as(ya),
                                xa.flatten()[permutation].view_as(xa))
            if not torch.allclose(permuted.flatten(), fa.flatten()[permutation], rtol=1e-12,
                                  atol=1e-12):
                return (f"the element-wise function {name} is not element-wise: permuting the "
                        "elements of its inputs does not permute its output.")
    except Exception as error:  # a function that cannot even run on the probes is not usable
        return (f"the element-wise function {name} failed on float64 probe tensors "
                f"({type(error).__name__}: {error}).")
    return None


def _first_saf_node(module: nn.Module) -> Optional[SAFNode]:
    return next((m for m in module.modules() if isinstance(m, SAFNode)), None)


def _check_single_step(container: nn.Module, *children: nn.Module) -> None:
    for child in children:
        for m in child.modules():
            if getattr(m, "step_mode", "s") != "s":
                raise ValueError(
                    f"{type(container).__name__} runs its children one step at a time, but "
                    f"{type(m).__name__} has step_mode={m.step_mode!r}; build the children with "
                    "step_mode='s' (the container itself takes 's' or 'm').")


class _DelayedSAF:
    """What the SAF containers share: the receiver's leak and the count :math:`c[t-1]`."""

    def _receiver(self) -> SAFNode:
        node = _first_saf_node(self._receiving_module())
        if node is None:
            raise ValueError(
                f"{type(self).__name__} needs a SAFNode in {self._receiving_name()} (the neuron "
                "that receives the delayed connection): its leak sets c[t]. Build it with "
                "SAFNode, or convert a LIF network with to_saf.")
        return node

    @property
    def decay(self) -> float:
        r"""The leak :math:`\lambda` of the receiving neuron (the first ``SAFNode`` inside)."""
        return self._receiver().decay

    def _weight_sums(self, weight_sum_prev: float) -> tuple[float, float]:
        weight_sum = saf_functional.next_weight_sum(weight_sum_prev, self.decay)
        return weight_sum, delay_factor(weight_sum_prev, weight_sum)


class _SAFSpikingJellyRecurrence(_DelayedSAF):
    """The SAF twins of SpikingJelly's two containers: the delayed output, scaled by c[t-1]/c[t] and
    detached, is combined with the input by the container's own rule (:meth:`_combine`)."""

    def _receiving_module(self) -> nn.Module:
        return self.sub_module

    def _receiving_name(self) -> str:
        return "sub_module"

    def materialize_states(self, inputs, states, step_mode):
        (y,) = super().materialize_states(inputs, states[:1], step_mode)
        return (y, states[1])

    def single_step_functional_forward(self, inputs, states, **kwargs):
        x = inputs[0]
        y_prev, weight_sum_prev = states
        weight_sum, factor = self._weight_sums(weight_sum_prev)
        delayed = y_prev.detach().to(x.dtype) * factor
        y = self.sub_module(self._combine(x, delayed))
        return (y,), (y.detach(), weight_sum)


class SAFLinearRecurrentContainer(_SAFSpikingJellyRecurrence, layer.LinearRecurrentContainer):
    r"""
    **API Language** - :ref:`中文 <SAFLinearRecurrentContainer-cn>` | :ref:`English <SAFLinearRecurrentContainer-en>`

    ----

    .. _SAFLinearRecurrentContainer-cn:

    * **中文**

    SpikingJelly ``layer.LinearRecurrentContainer`` 的 SAF 版本（同样的参数与模块名 ``rc``、``sub_module``，
    ``state_dict`` 互通）。子模块接收
    :math:`i[t] = \mathrm{rc}\big([\,x[t];\ (c[t-1]/c[t])\, y[t-1]\,]\big)`，其中 :math:`y` 是子模块的（SAF）输出，
    :math:`c` 按子模块中第一个 ``SAFNode`` 的泄漏计数。于是其脉冲与同权重的 LIF 容器完全相同（定理 1 的延迟形式）。
    :math:`y[t-1]` 不求导（在线梯度）。子模块必须是单步模式；本容器可为 ``'s'`` 或 ``'m'``。状态 ``y`` 与
    ``weight_sum`` 是 ``MemoryModule`` 的 memory，``functional.reset_net`` 复位它们。

    :param sub_module: 被包含的模块（单步模式），其中须有 ``SAFNode``
    :param in_features: 输入特征数
    :param out_features: 子模块输出特征数
    :param bias: 循环线性层是否带偏置
    :param step_mode: ``'s'`` 或 ``'m'``

    Shape:
        - 单步模式：输入 ``[N, *, in_features]``，输出 ``[N, *, out_features]``
        - 多步模式：输入 ``[T, N, *, in_features]``，输出 ``[T, N, *, out_features]``

    Example::

        >>> import torch
        >>> from spikingjelly.activation_based import functional, layer
        >>> from spikingjelly_saf import SAFNode
        >>> from spikingjelly_saf.recurrent import SAFLinearRecurrentContainer
        >>> rnn = SAFLinearRecurrentContainer(torch.nn.Sequential(layer.Linear(4, 3), SAFNode()), 4, 3,
        ...                                   step_mode="m")
        >>> abar_seq = rnn(torch.rand(8, 2, 4))   # [T, N, in] -> [T, N, out]
        >>> functional.reset_net(rnn)

    ----

    .. _SAFLinearRecurrentContainer-en:

    * **English**

    The SAF version of SpikingJelly's ``layer.LinearRecurrentContainer`` (same parameters and
    module names ``rc``, ``sub_module``, so a ``state_dict`` loads both ways). The sub-module
    receives :math:`i[t] = \mathrm{rc}\big([\,x[t];\ (c[t-1]/c[t])\, y[t-1]\,]\big)`, with :math:`y`
    the sub-module's (SAF) output and :math:`c` counted with the leak of the first ``SAFNode``
    inside the sub-module; its spikes are then exactly those of the LIF container with the same
    weights (the delayed form of Theorem 1). :math:`y[t-1]` is detached (the online gradient). The
    sub-module must be in single-step mode; the container takes ``'s'`` or ``'m'``. The states
    ``y`` and ``weight_sum`` are ``MemoryModule`` memories, reset by ``functional.reset_net``.

    :param sub_module: the contained module (single-step), holding a ``SAFNode``
    :param in_features: size of each input sample
    :param out_features: size of the sub-module's output
    :param bias: whether the recurrent linear map has a bias
    :param step_mode: ``'s'`` or ``'m'``

    Shape:
        - single-step mode: input ``[N, *, in_features]``, output ``[N, *, out_features]``
        - multi-step mode: input ``[T, N, *, in_features]``, output ``[T, N, *, out_features]``

    Example::

        >>> import torch
        >>> from spikingjelly.activation_based import functional, layer
        >>> from spikingjelly_saf import SAFNode
        >>> from spikingjelly_saf.recurrent import SAFLinearRecurrentContainer
        >>> rnn = SAFLinearRecurrentContainer(torch.nn.Sequential(layer.Linear(4, 3), SAFNode()), 4, 3,
        ...                                   step_mode="m")
        >>> abar_seq = rnn(torch.rand(8, 2, 4))   # [T, N, in] -> [T, N, out]
        >>> functional.reset_net(rnn)
    """

    def __init__(self, sub_module: nn.Module, in_features: int, out_features: int, bias: bool = True,
                 step_mode: str = "s") -> None:
        super().__init__(sub_module, in_features, out_features, bias, step_mode)
        _check_single_step(self, sub_module)
        self.register_memory("weight_sum", 0.0)

    def _combine(self, x: torch.Tensor, delayed: torch.Tensor) -> torch.Tensor:
        return self.rc(torch.cat((x, delayed), dim=-1))

    def extra_repr(self) -> str:
        return f"step_mode={self.step_mode}"


class SAFElementWiseRecurrentContainer(_SAFSpikingJellyRecurrence, layer.ElementWiseRecurrentContainer):
    r"""
    **API Language** - :ref:`中文 <SAFElementWiseRecurrentContainer-cn>` | :ref:`English <SAFElementWiseRecurrentContainer-en>`

    ----

    .. _SAFElementWiseRecurrentContainer-cn:

    * **中文**

    SpikingJelly ``layer.ElementWiseRecurrentContainer`` 的 SAF 版本：子模块接收
    :math:`i[t] = f\big((c[t-1]/c[t])\, y[t-1],\ x[t]\big)`。:math:`f` 必须对 :math:`(y, x)` 逐元素且仿射
    （如 ``torch.add``、``lambda y, x: y + 0.5 * x``）；否则构造时报错并说明原因（见 :func:`element_wise_problem`）。
    :math:`y[t-1]` 不求导。子模块须为单步模式，其中须有 ``SAFNode``。

    :param sub_module: 被包含的模块（单步模式），输入与输出形状相同
    :param element_wise_function: 逐元素仿射函数 ``z = f(y, x)``
    :param step_mode: ``'s'`` 或 ``'m'``

    Shape:
        - 单步模式：输入 ``[N, *]``，输出 ``[N, *]``；多步模式：``[T, N, *]`` -> ``[T, N, *]``

    Example::

        >>> import torch
        >>> from spikingjelly_saf import SAFNode
        >>> from spikingjelly_saf.recurrent import SAFElementWiseRecurrentContainer
        >>> rnn = SAFElementWiseRecurrentContainer(SAFNode(), torch.add, step_mode="m")
        >>> abar_seq = rnn(torch.rand(8, 2, 5))

    ----

    .. _SAFElementWiseRecurrentContainer-en:

    * **English**

    The SAF version of SpikingJelly's ``layer.ElementWiseRecurrentContainer``: the sub-module
    receives :math:`i[t] = f\big((c[t-1]/c[t])\, y[t-1],\ x[t]\big)`. :math:`f` must be
    element-wise and affine in :math:`(y, x)` (``torch.add``, ``lambda y, x: y + 0.5 * x``, ...);
    anything else is refused at construction with the reason (see :func:`element_wise_problem`).
    :math:`y[t-1]` is detached. The sub-module must be single-step and hold a ``SAFNode``.

    :param sub_module: the contained module (single-step); input and output of the same shape
    :param element_wise_function: the affine element-wise function ``z = f(y, x)``
    :param step_mode: ``'s'`` or ``'m'``

    Shape:
        - single-step mode: ``[N, *]`` -> ``[N, *]``; multi-step mode: ``[T, N, *]`` -> ``[T, N, *]``

    Example::

        >>> import torch
        >>> from spikingjelly_saf import SAFNode
        >>> from spikingjelly_saf.recurrent import SAFElementWiseRecurrentContainer
        >>> rnn = SAFElementWiseRecurrentContainer(SAFNode(), torch.add, step_mode="m")
        >>> abar_seq = rnn(torch.rand(8, 2, 5))
    """

    def __init__(self, sub_module: nn.Module, element_wise_function: Callable, step_mode: str = "s"):
        problem = element_wise_problem(element_wise_function)
        if problem is not None:
            raise ValueError(f"SAFElementWiseRecurrentContainer cannot be exact: {problem} Use an "
                             "affine function such as torch.add or lambda y, x: y + x.")
        super().__init__(sub_module, element_wise_function, step_mode)
        _check_single_step(self, sub_module)
        self.register_memory("weight_sum", 0.0)

    def _combine(self, x: torch.Tensor, delayed: torch.Tensor) -> torch.Tensor:
        return self.element_wise_function(delayed, x)


class FeedbackContainer(base.MemoryModule):
    r"""
    **API Language** - :ref:`中文 <FeedbackContainer-cn>` | :ref:`English <FeedbackContainer-en>`

    ----

    .. _FeedbackContainer-cn:

    * **中文**

    跨越多层的反馈连接（OTTT 的 VGG-F），用于普通（LIF/IF）网络：
    :math:`y[t] = \mathrm{body}\big(\mathrm{entry}(x[t]) + \mathrm{feedback}(y[t-1])\big)`，第 1 步没有反馈项
    （连反馈层的偏置也没有）。:math:`y[t-1]` 保留计算图（BPTT，与 SpikingJelly 的循环容器相同）。
    ``to_saf`` 把它换成 :class:`SAFFeedbackContainer`，``to_lif`` 换回。子模块须为单步模式。

    :param entry: 输入进入第一层神经元之前的层（如第一个卷积）
    :param body: 从第一层神经元到最后一个特征图的各层；其输出 :math:`y` 也是本容器的输出
    :param feedback: 把 :math:`y[t-1]` 映射回第一层神经元输入的层（如上采样 + 卷积）
    :param step_mode: ``'s'`` 或 ``'m'``

    Shape:
        - 单步模式：输入 ``[N, *]``，输出 body 的输出 ``[N, *]``；多步模式：加上前导维 ``T``

    Example::

        >>> import torch
        >>> from spikingjelly.activation_based import layer, neuron
        >>> from spikingjelly_saf.recurrent import FeedbackContainer
        >>> loop = FeedbackContainer(layer.Linear(4, 6), torch.nn.Sequential(neuron.LIFNode(v_reset=None),
        ...                          layer.Linear(6, 3), neuron.LIFNode(v_reset=None)),
        ...                          layer.Linear(3, 6), step_mode="m")
        >>> s_seq = loop(torch.rand(8, 2, 4))

    ----

    .. _FeedbackContainer-en:

    * **English**

    A feedback connection that skips back several layers (OTTT's VGG-F), for ordinary (LIF/IF)
    networks: :math:`y[t] = \mathrm{body}\big(\mathrm{entry}(x[t]) + \mathrm{feedback}(y[t-1])\big)`,
    with no feedback term at step 1 (not even the feedback map's bias). :math:`y[t-1]` keeps its
    graph (BPTT, like SpikingJelly's recurrent containers). ``to_saf`` swaps it for
    :class:`SAFFeedbackContainer`, ``to_lif`` swaps it back. Children run single-step.

    :param entry: the layers before the first neuron (e.g. the first convolution)
    :param body: the layers from the first neuron to the last feature map; its output :math:`y` is
        the container's output
    :param feedback: the layers mapping :math:`y[t-1]` back onto the first neuron's input (e.g.
        upsampling and a convolution)
    :param step_mode: ``'s'`` or ``'m'``

    Shape:
        - single-step mode: input ``[N, *]``, output the body's ``[N, *]``; multi-step mode: with a
          leading ``T``

    Example::

        >>> import torch
        >>> from spikingjelly.activation_based import layer, neuron
        >>> from spikingjelly_saf.recurrent import FeedbackContainer
        >>> loop = FeedbackContainer(layer.Linear(4, 6), torch.nn.Sequential(neuron.LIFNode(v_reset=None),
        ...                          layer.Linear(6, 3), neuron.LIFNode(v_reset=None)),
        ...                          layer.Linear(3, 6), step_mode="m")
        >>> s_seq = loop(torch.rand(8, 2, 4))
    """

    def __init__(self, entry: nn.Module, body: nn.Module, feedback: nn.Module, step_mode: str = "s"):
        super().__init__()
        _check_single_step(self, entry, body, feedback)
        self.step_mode = step_mode
        self.entry, self.body, self.feedback = entry, body, feedback
        self.register_memory("y", None)

    def single_step_functional_forward(self, inputs, states, **kwargs):
        (y_prev,) = states
        current = self.entry(inputs[0])
        if y_prev is not None:
            current = current + self.feedback(y_prev)
        y = self.body(current)
        return (y,), (y,)


class SAFFeedbackContainer(_DelayedSAF, FeedbackContainer):
    r"""
    **API Language** - :ref:`中文 <SAFFeedbackContainer-cn>` | :ref:`English <SAFFeedbackContainer-en>`

    ----

    .. _SAFFeedbackContainer-cn:

    * **中文**

    :class:`FeedbackContainer` 的 SAF 版本（同样的模块名）：
    :math:`y[t] = \mathrm{body}\big(\mathrm{entry}(x[t]) + (c[t-1]/c[t])\,\mathrm{feedback}(y[t-1])\big)`，
    :math:`c` 按 ``body`` 中第一个 ``SAFNode`` 的泄漏计数；反馈层的输出（含偏置）整体乘以 :math:`c[t-1]/c[t]`，
    因为 LIF 网络从第 2 步起才加入它。其脉冲与 LIF 版本完全相同；:math:`y[t-1]` 不求导。

    :param entry: 第一层神经元之前的层
    :param body: 从第一层神经元到最后一个特征图（其中须有 ``SAFNode``）
    :param feedback: 反馈层
    :param step_mode: ``'s'`` 或 ``'m'``

    Shape:
        - 与 :class:`FeedbackContainer` 相同

    Example::

        >>> import torch
        >>> from spikingjelly.activation_based import layer
        >>> from spikingjelly_saf import SAFNode
        >>> from spikingjelly_saf.recurrent import SAFFeedbackContainer
        >>> loop = SAFFeedbackContainer(layer.Linear(4, 6), torch.nn.Sequential(SAFNode(), layer.Linear(6, 3),
        ...                             SAFNode()), layer.Linear(3, 6), step_mode="m")
        >>> abar_seq = loop(torch.rand(8, 2, 4))

    ----

    .. _SAFFeedbackContainer-en:

    * **English**

    The SAF version of :class:`FeedbackContainer` (same module names):
    :math:`y[t] = \mathrm{body}\big(\mathrm{entry}(x[t]) + (c[t-1]/c[t])\,\mathrm{feedback}(y[t-1])\big)`,
    with :math:`c` counted with the leak of the first ``SAFNode`` in ``body``. The whole feedback
    output, bias included, takes the factor :math:`c[t-1]/c[t]`, because the LIF network adds it
    from step 2 on only. Its spikes are exactly the LIF version's; :math:`y[t-1]` is detached.

    :param entry: the layers before the first neuron
    :param body: the layers from the first neuron to the last feature map (holding ``SAFNode``)
    :param feedback: the feedback layers
    :param step_mode: ``'s'`` or ``'m'``

    Shape:
        - as :class:`FeedbackContainer`

    Example::

        >>> import torch
        >>> from spikingjelly.activation_based import layer
        >>> from spikingjelly_saf import SAFNode
        >>> from spikingjelly_saf.recurrent import SAFFeedbackContainer
        >>> loop = SAFFeedbackContainer(layer.Linear(4, 6), torch.nn.Sequential(SAFNode(), layer.Linear(6, 3),
        ...                             SAFNode()), layer.Linear(3, 6), step_mode="m")
        >>> abar_seq = loop(torch.rand(8, 2, 4))
    """

    def __init__(self, entry: nn.Module, body: nn.Module, feedback: nn.Module, step_mode: str = "s"):
        super().__init__(entry, body, feedback, step_mode)
        self.register_memory("weight_sum", 0.0)

    def _receiving_module(self) -> nn.Module:
        return self.body

    def _receiving_name(self) -> str:
        return "body"

    def single_step_functional_forward(self, inputs, states, **kwargs):
        y_prev, weight_sum_prev = states
        weight_sum, factor = self._weight_sums(weight_sum_prev)
        current = self.entry(inputs[0])
        if y_prev is not None:
            current = current + self.feedback(y_prev.detach()) * factor
        y = self.body(current)
        return (y,), (y.detach(), weight_sum)


#: SpikingJelly's and this module's containers with a connection delayed by one step.
DELAYED_CONTAINERS = (layer.LinearRecurrentContainer, layer.ElementWiseRecurrentContainer,
                      FeedbackContainer)
#: The SAF ones among them.
SAF_DELAYED_CONTAINERS = (SAFLinearRecurrentContainer, SAFElementWiseRecurrentContainer,
                          SAFFeedbackContainer)


def outside_delayed(model: nn.Module) -> Iterator[nn.Module]:
    """Every module of ``model`` except those inside a delayed container (the containers
    themselves included): the modules whose step mode is the one the model is called in, since a
    container's children always run single-step."""
    yield model
    if isinstance(model, DELAYED_CONTAINERS):
        return
    for child in model.children():
        yield from outside_delayed(child)


def stepping_modules(model: nn.Module) -> list[nn.Module]:
    """The SAF modules that set the step mode the model is called in: every ``SAFNode`` outside a
    delayed container, and every delayed container holding one."""
    return [m for m in outside_delayed(model)
            if isinstance(m, SAFNode)
            or (isinstance(m, DELAYED_CONTAINERS) and _first_saf_node(m) is not None)]


def unconverted_delayed_problem(model: nn.Module) -> Optional[str]:
    """Why ``model`` cannot be trained as it is, when SpikingJelly's (or the LIF) delayed containers
    hold SAF neurons; ``None`` otherwise."""
    names = [name or "<model>" for name, m in model.named_modules()
             if type(m) in DELAYED_CONTAINERS and _first_saf_node(m) is not None]
    if not names:
        return None
    return (f"{', '.join(names)} hold(s) SAF neurons inside a container that feeds them Abar[t-1] "
            "unscaled (the LIF network integrates (c[t-1]/c[t]) Abar[t-1]) and keeps the graph of "
            "y[t-1] across steps, so a second step's backward would fail. Convert the model with "
            "spikingjelly_saf.to_saf(model), which swaps in the SAF twins of "
            "spikingjelly_saf.recurrent.")
