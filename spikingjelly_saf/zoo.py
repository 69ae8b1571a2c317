r"""
Thin adapters for SpikingJelly 2.0.0 zoo models that cannot take ``SAFNode`` as they are.

**API Language** - 中文 | English

* **中文**: 大多数模型直接 ``spiking_neuron=SAFNode`` 即可构建。本模块只处理例外：OTTT VGG 工厂的缺陷
  （``upstream/`` 中有对应补丁）、任意输入通道与宽度的 VGG-WS（``vggws``），以及把时间维平均掉的模型
  （MS-ResNet）。
* **English**: most zoo factories take ``spiking_neuron=SAFNode`` directly. This module covers the
  exceptions: the OTTT VGG factory defects (each workaround names its patch in ``upstream/``), the
  VGG-WS at any input channel count and width (:func:`vggws`, the one VGG builder of the package),
  and models whose forward averages over time (MS-ResNet), which SAF training needs step by step.
"""

from __future__ import annotations

import numbers
from copy import deepcopy
from typing import Callable, Optional

import torch
import torch.nn as nn
from spikingjelly.activation_based import layer
from spikingjelly.activation_based.model import spiking_vggws_ottt

from .neuron import SAFNode
from .recurrent import FeedbackContainer, SAFFeedbackContainer

__all__ = ["ottt_spiking_vggws", "vggws", "VGGWS", "VGGWS_CONFIG", "vggws_widths", "StepwiseOutput",
           "VGGF", "vggf"]

#: The layout of ``ottt_spiking_vggws`` (SpikingJelly's config ``"S"``): convolution widths, and
#: ``"A"`` for a 2x2 average pool.
VGGWS_CONFIG = tuple(spiking_vggws_ottt.cfgs["S"])


class _NeuronWithoutKeywords:
    """A neuron factory that drops keyword arguments meant for the model, not the neuron."""

    def __init__(self, spiking_neuron: Callable[..., nn.Module], dropped: tuple[str, ...]):
        self.spiking_neuron = spiking_neuron
        self.dropped = dropped

    def __call__(self, **kwargs) -> nn.Module:
        for name in self.dropped:
            kwargs.pop(name, None)
        return self.spiking_neuron(**kwargs)


def ottt_spiking_vggws(spiking_neuron: Callable[..., nn.Module] = SAFNode, num_classes: int = 1000,
                       light_classifier: bool = True, fc_hw: int = 1, drop_rate: float = 0.0,
                       init_weights: bool = True, **neuron_kwargs) -> nn.Module:
    r"""SpikingJelly's ``ottt_spiking_vggws`` (config ``"S"``, weight standardisation), built
    around the two defects of the 2.0.0 factory.

    * **中文**: 与 ``spikingjelly.activation_based.model.spiking_vggws_ottt.ottt_spiking_vggws`` 相同的网络，
      但可以设置 ``light_classifier`` 与 ``fc_hw``；其余关键字参数传给神经元。
    * **English**: the same network as SpikingJelly's factory, but ``light_classifier`` and ``fc_hw``
      can be set; every other keyword goes to the neuron.

    Workarounds, each removed by a patch in ``upstream/``
    (``0001-ottt-vgg-factories-fc_hw-and-light_classifier.patch``):

    * the factory hard-codes ``light_classifier=True``, so passing it raises ``TypeError: got
      multiple values``: this function builds ``OTTTSpikingVGG`` directly;
    * ``OTTTSpikingVGG`` reads ``fc_hw`` from its kwargs without removing it, then forwards the
      kwargs to every neuron (``unexpected keyword argument 'fc_hw'``): the neuron factory here
      drops ``fc_hw`` before building each neuron.
    """
    return spiking_vggws_ottt.OTTTSpikingVGG(
        cfg=spiking_vggws_ottt.cfgs["S"],
        weight_standardization=True,
        num_classes=num_classes,
        init_weights=init_weights,
        spiking_neuron=_NeuronWithoutKeywords(spiking_neuron, ("fc_hw",)),
        light_classifier=light_classifier,
        drop_rate=drop_rate,
        fc_hw=fc_hw,
        **neuron_kwargs,
    )


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    return int(value)


def vggws_widths(first_width: Optional[int] = None, width_divisor: Optional[int] = None) -> tuple:
    r"""The layer widths of :data:`VGGWS_CONFIG`, scaled one of two ways.

    * **中文**: ``first_width`` 按第一层宽度等比缩放（``round(w * first_width / 64)``）；``width_divisor``
      把每层宽度整除（``w // width_divisor``）。两者至多给一个；宽度至少为 1。
    * **English**: ``first_width`` scales every width in proportion to the first one
      (``round(w * first_width / 64)``); ``width_divisor`` divides every width (``w // width_divisor``).
      Give at most one; no width drops below 1. ``"A"`` entries (average pools) stay.
    """
    if first_width is not None and width_divisor is not None:
        raise ValueError("give first_width or width_divisor, not both: they scale the widths in two "
                         "different ways.")
    if first_width is not None:
        first_width = _positive_int("first_width", first_width)
        return tuple(w if w == "A" else max(1, round(w * first_width / VGGWS_CONFIG[0]))
                     for w in VGGWS_CONFIG)
    if width_divisor is not None:
        width_divisor = _positive_int("width_divisor", width_divisor)
        return tuple(w if w == "A" else max(1, w // width_divisor) for w in VGGWS_CONFIG)
    return VGGWS_CONFIG


class VGGWS(nn.Module):
    r"""SpikingJelly's OTTT VGG with weight standardisation (config ``"S"``) at any input channel
    count and any widths, with the light classifier.

    * **中文**: 结构、模块名、``OTTTSequential`` 容器、``Scale(2.74)`` 与初始化都与
      ``spiking_vggws_ottt.ottt_spiking_vggws`` 相同，因此 ``state_dict`` 可以互相加载；不同之处是输入通道数与
      各层宽度可以选择（DVS 帧有 2 个通道，较窄的网络需要其他宽度）。
    * **English**: layers, module names, ``OTTTSequential`` containers, ``Scale(2.74)`` after every
      neuron and the initialisation are those of SpikingJelly's ``ottt_spiking_vggws``, so at the
      default widths with 3 input channels a ``state_dict`` loads both ways. What differs: the input
      channel count (DVS frames have 2) and the widths (the classifier takes the last width instead
      of a fixed 512).

    :param widths: convolution widths, ``"A"`` for a 2x2 average pool (see :func:`vggws_widths`)
    :param in_channels: input channels
    :param num_classes: classifier outputs
    :param spiking_neuron: the neuron class or factory, called with ``neuron_kwargs`` for each layer
    :param drop_rate: ``layer.Dropout`` after each ``Scale`` when ``> 0`` (its mask lasts until
        ``reset_net``, so it keeps SAF's LIF equivalence)
    :param neuron_kwargs: keyword arguments of every neuron (deep-copied per neuron)
    """

    def __init__(self, widths=VGGWS_CONFIG, in_channels: int = 3, num_classes: int = 10,
                 spiking_neuron: Callable[..., nn.Module] = SAFNode, drop_rate: float = 0.0,
                 **neuron_kwargs):
        super().__init__()
        in_channels = _positive_int("in_channels", in_channels)
        num_classes = _positive_int("num_classes", num_classes)
        if not 0.0 <= drop_rate < 1.0:
            raise ValueError(f"drop_rate must be in [0, 1), got {drop_rate!r}.")
        if all(w == "A" for w in widths):
            raise ValueError(f"widths must contain at least one convolution width, got {widths!r}.")
        layers, channels = [], in_channels
        for width in widths:
            if width == "A":
                layers.append(layer.AvgPool2d(kernel_size=2, stride=2))
                continue
            width = _positive_int("every width", width)
            layers += [layer.WSConv2d(channels, width, kernel_size=3, padding=1),
                       spiking_neuron(**deepcopy(neuron_kwargs)), spiking_vggws_ottt.Scale(2.74)]
            if drop_rate > 0.0:
                layers.append(layer.Dropout(drop_rate))
            channels = width
        self.features = layer.OTTTSequential(*layers)
        self.classifier = layer.OTTTSequential(layer.AdaptiveAvgPool2d((1, 1)), layer.Flatten(1),
                                               layer.Linear(channels, num_classes))
        # The zoo's initialisation, in the zoo's order, so equal seeds give equal weights.
        for module in self.modules():
            if isinstance(module, layer.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                if module.bias is not None:
                    nn.init.constant_(module.bias, 0)
            elif isinstance(module, layer.Linear):
                nn.init.normal_(module.weight, 0, 0.01)
                nn.init.constant_(module.bias, 0)

    def forward(self, x):
        return self.classifier(self.features(x))


def vggws(spiking_neuron: Callable[..., nn.Module] = SAFNode, num_classes: int = 10,
          in_channels: int = 3, first_width: Optional[int] = None,
          width_divisor: Optional[int] = None, drop_rate: float = 0.0, **neuron_kwargs) -> VGGWS:
    r"""The VGG-WS of OTTT and SAF (SpikingJelly's ``ottt_spiking_vggws`` layout) for any input and width.

    * **中文**: 默认（3 通道、宽度 64..512）时与 ``ottt_spiking_vggws`` 的网络相同（同样的模块名、同样的
      初始化）。``first_width`` 把第一层宽度设为给定值并等比缩放其余各层；``width_divisor`` 把每层宽度整除。
    * **English**: at the defaults (3 channels, widths 64 .. 512) this is the network of
      ``ottt_spiking_vggws`` (same module names, same initialisation, same random draws for a
      seed). ``first_width`` sets the first width and scales the others in proportion (a trainer's
      ``-channels``); ``width_divisor`` divides every width (a benchmark's narrower VGG). Every
      other keyword goes to the neurons, e.g.
      ``vggws(SAFNode, in_channels=2, first_width=16, **get_method("saf-e").neuron_kwargs())``.

    :param spiking_neuron: the neuron class or factory (``SAFNode``, ``neuron.OTTTLIFNode``, ...)
    :param num_classes: classifier outputs
    :param in_channels: input channels (3 for images, 2 for DVS frames)
    :param first_width: width of the first convolution; the others scale with it
    :param width_divisor: divide every width by this instead (give at most one of the two)
    :param drop_rate: dropout after each layer, as in the zoo (``0`` = none)
    :return: a :class:`VGGWS`
    """
    return VGGWS(vggws_widths(first_width, width_divisor), in_channels=in_channels,
                 num_classes=num_classes, spiking_neuron=spiking_neuron, drop_rate=drop_rate,
                 **neuron_kwargs)


class VGGF(nn.Module):
    r"""
    **API Language** - :ref:`中文 <VGGF-cn>` | :ref:`English <VGGF-en>`

    ----

    .. _VGGF-cn:

    * **中文**

    OTTT 论文的 VGG-F（带反馈的 VGG-WS）：最后一个特征图经最近邻上采样与一个 3x3 卷积（``feedback``）
    延迟一步反馈到第一层神经元的输入，第 1 步没有反馈。结构与 :class:`VGGWS` 相同（``WSConv2d``、每个神经元后
    ``Scale(2.74)``、平均池化、轻量分类器），特征部分是一个反馈容器：神经元为 ``SAFNode`` 时是
    :class:`~spikingjelly_saf.recurrent.SAFFeedbackContainer`，否则是
    :class:`~spikingjelly_saf.recurrent.FeedbackContainer`（``to_saf`` / ``to_lif`` 互换两者）。反馈卷积权重初始化为
    零，与 OTTT 相同。容器内的层总是单步运行；``step_mode`` 设置容器与分类器的步进模式。

    :param widths: 卷积宽度，``"A"`` 为 2x2 平均池化（见 :func:`vggws_widths`）
    :param in_channels: 输入通道数
    :param num_classes: 类别数
    :param spiking_neuron: 神经元类或工厂（以单步模式构建）
    :param step_mode: ``'s'`` 或 ``'m'``
    :param neuron_kwargs: 每个神经元的关键字参数

    Shape:
        - 单步模式：``[N, C, H, W]`` -> ``[N, num_classes]``；多步模式：加上前导维 ``T``

    Example::

        >>> import torch
        >>> from spikingjelly_saf import SAFNode, zoo
        >>> net = zoo.vggf(SAFNode, num_classes=10, width_divisor=16, step_mode="m")
        >>> out = net(torch.rand(4, 2, 3, 32, 32))   # [T, N, C, H, W] -> [T, N, 10]

    ----

    .. _VGGF-en:

    * **English**

    The VGG-F of the OTTT paper (VGG-WS with feedback): the last feature map, upsampled
    (nearest) and passed through a 3x3 convolution (``feedback``), is fed back one step later into
    the first neuron's input; there is no feedback at step 1. Otherwise the layout of
    :class:`VGGWS` (``WSConv2d``, ``Scale(2.74)`` after every neuron, average pools, the light
    classifier). The features are a feedback container:
    :class:`~spikingjelly_saf.recurrent.SAFFeedbackContainer` when the neurons are ``SAFNode``,
    :class:`~spikingjelly_saf.recurrent.FeedbackContainer` otherwise (``to_saf`` / ``to_lif`` swap
    them). The feedback convolution's weight starts at zero, as in OTTT. The layers inside the
    container always run single-step; ``step_mode`` sets the container's and the classifier's.

    :param widths: convolution widths, ``"A"`` for a 2x2 average pool (see :func:`vggws_widths`)
    :param in_channels: input channels
    :param num_classes: classifier outputs
    :param spiking_neuron: the neuron class or factory (built single-step)
    :param step_mode: ``'s'`` or ``'m'``
    :param neuron_kwargs: keyword arguments of every neuron

    Shape:
        - single-step mode: ``[N, C, H, W]`` -> ``[N, num_classes]``; multi-step mode: with a
          leading ``T``

    Example::

        >>> import torch
        >>> from spikingjelly_saf import SAFNode, zoo
        >>> net = zoo.vggf(SAFNode, num_classes=10, width_divisor=16, step_mode="m")
        >>> out = net(torch.rand(4, 2, 3, 32, 32))   # [T, N, C, H, W] -> [T, N, 10]
    """

    def __init__(self, widths=VGGWS_CONFIG, in_channels: int = 3, num_classes: int = 10,
                 spiking_neuron: Callable[..., nn.Module] = SAFNode, step_mode: str = "s",
                 **neuron_kwargs):
        super().__init__()
        in_channels = _positive_int("in_channels", in_channels)
        num_classes = _positive_int("num_classes", num_classes)
        widths = tuple(widths)
        if not widths or widths[0] == "A":
            raise ValueError(f"widths must start with a convolution width (the layer that receives "
                             f"the feedback), got {widths!r}.")
        neuron_kwargs.pop("step_mode", None)  # inside the container every neuron runs single-step
        first = _positive_int("every width", widths[0])
        entry = layer.WSConv2d(in_channels, first, kernel_size=3, padding=1)
        body, channels, pools = [], first, 0
        for index, width in enumerate(widths):
            if width == "A":
                body.append(layer.AvgPool2d(kernel_size=2, stride=2))
                pools += 1
                continue
            if index > 0:
                width = _positive_int("every width", width)
                body.append(layer.WSConv2d(channels, width, kernel_size=3, padding=1))
            body += [spiking_neuron(**deepcopy(neuron_kwargs)), spiking_vggws_ottt.Scale(2.74)]
            channels = width
        feedback = nn.Sequential(nn.Upsample(scale_factor=2 ** pools, mode="nearest"),
                                 layer.Conv2d(channels, first, kernel_size=3, padding=1))
        body = nn.Sequential(*body)
        saf = any(isinstance(m, SAFNode) for m in body.modules())
        container = SAFFeedbackContainer if saf else FeedbackContainer
        self.features = container(entry, body, feedback, step_mode=step_mode)
        self.classifier = nn.Sequential(layer.AdaptiveAvgPool2d((1, 1), step_mode=step_mode),
                                        layer.Flatten(1, step_mode=step_mode),
                                        layer.Linear(channels, num_classes, step_mode=step_mode))
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                if module.bias is not None:
                    nn.init.constant_(module.bias, 0)
            elif isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, 0, 0.01)
                nn.init.constant_(module.bias, 0)
        # OTTT starts the feedback at zero: the network begins as the plain VGG.
        nn.init.constant_(feedback[1].weight, 0)

    def forward(self, x):
        return self.classifier(self.features(x))


def vggf(spiking_neuron: Callable[..., nn.Module] = SAFNode, num_classes: int = 10,
         in_channels: int = 3, first_width: Optional[int] = None,
         width_divisor: Optional[int] = None, step_mode: str = "s", **neuron_kwargs) -> VGGF:
    r"""OTTT's VGG-F (:class:`VGGF`) at the widths of :func:`vggws`, scaled like them.

    * **中文**: 宽度与 :func:`vggws` 相同（``first_width`` 或 ``width_divisor`` 缩放）；其余关键字参数传给神经元。
    * **English**: the widths of :func:`vggws` (scaled by ``first_width`` or ``width_divisor``);
      every other keyword goes to the neurons.
    """
    return VGGF(vggws_widths(first_width, width_divisor), in_channels=in_channels,
                num_classes=num_classes, spiking_neuron=spiking_neuron, step_mode=step_mode,
                **neuron_kwargs)


class StepwiseOutput(nn.Module):
    r"""Runs a model whose forward averages its output over time one step at a time.

    * **中文**: MS-ResNet 等模型的 ``forward`` 返回 ``[N, classes]`` （对 ``T`` 求平均），而 SAF 训练需要
      每一步的输出。本包装对 ``[T, N, *]`` 输入逐步调用模型（状态保存在神经元中），返回 ``[T, N, classes]``。
    * **English**: ``MSResNet.forward`` returns ``[N, classes]``, the mean over the ``T`` steps it was
      given, while SAF training needs every step's output. This wrapper feeds a ``[T, N, *]``
      sequence one step at a time (the neurons carry the state) and stacks the outputs to
      ``[T, N, classes]``. Parameter names gain the prefix ``"model."``.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x_seq: torch.Tensor) -> torch.Tensor:
        return torch.stack([self.model(x_seq[t:t + 1]) for t in range(x_seq.shape[0])])
