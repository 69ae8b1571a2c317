r"""
Thin adapters for SpikingJelly 2.0.0 zoo models that cannot take ``SAFNode`` as they are.

**API Language** - 中文 | English

* **中文**: 大多数模型直接 ``spiking_neuron=SAFNode`` 即可构建。本模块只处理两类例外：OTTT VGG 工厂的缺陷
  （``upstream/`` 中有对应补丁），以及把时间维平均掉的模型（MS-ResNet）。
* **English**: most zoo factories take ``spiking_neuron=SAFNode`` directly. This module covers the
  exceptions: the OTTT VGG factory defects (each workaround names its patch in ``upstream/``) and
  models whose forward averages over time (MS-ResNet), which SAF training needs step by step.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn
from spikingjelly.activation_based.model import spiking_vggws_ottt

from .neuron import SAFNode

__all__ = ["ottt_spiking_vggws", "StepwiseOutput"]


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
