r"""
Recording the spikes of every neuron layer of a network, SAF or not.

:class:`SpikeRecorder` is the one recorder that training loops, the exactness check, the benchmarks
and :mod:`spikingjelly_saf.health` use. A :class:`~spikingjelly_saf.neuron.SAFNode` outputs its
weighted firing rate, so its spikes are read from its ``spikes``
(:class:`~spikingjelly_saf.neuron.SpikeTap`) child; every other SpikingJelly neuron's output is its
spikes (OTTT's ``[spike, trace]`` list gives the spike; DSR's spikes of height ``V_th`` count as
one spike each).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Optional

import torch
import torch.nn as nn
from spikingjelly.activation_based import neuron

from ._validation import require_module
from .neuron import SAFNode

__all__ = ["SpikeRecorder", "spiking_layers", "unwrapped_name"]

_DSR_TYPES = tuple(getattr(neuron, name) for name in ("DSRIFNode", "DSRLIFNode")
                   if hasattr(neuron, name))


def unwrapped_name(name: str) -> str:
    """A module or parameter name without the prefixes that wrappers add: DistributedDataParallel's
    ``module.`` and ``torch.compile``'s ``_orig_mod.``."""
    for prefix in ("module.", "_orig_mod."):
        while name.startswith(prefix):
            name = name[len(prefix):]
    return name


def spiking_layers(model: nn.Module) -> "OrderedDict[str, nn.Module]":
    """Every neuron layer of ``model`` by clean name (no ``module.`` prefix), in module order."""
    layers = OrderedDict()
    for name, module in model.named_modules():
        if isinstance(module, (SAFNode, neuron.BaseNode) + _DSR_TYPES):
            layers[unwrapped_name(name) or type(module).__name__] = module
    return layers


class SpikeRecorder:
    r"""Forward hooks that record the spikes of every neuron layer.

    * **中文**: 记录每个神经元层的脉冲。``SAFNode`` 的脉冲取自其 ``spikes`` 子模块，其它 SpikingJelly
      神经元取其输出。``keep="rates"`` 只累计发放率，``keep="spikes"`` 还保留每次调用的脉冲张量。
      可作为上下文管理器使用，退出时移除钩子。
    * **English**: records the spikes of every neuron layer: a ``SAFNode``'s from its ``spikes``
      child, any other SpikingJelly neuron's from its output. ``keep="rates"`` only accumulates
      firing rates (spikes per neuron and step); ``keep="spikes"`` also keeps each call's spike
      tensor (detached copies), ``[B, *]`` per call in single-step mode and ``[k, B, *]`` in
      multi-step mode. Layer names are clean (no ``module.`` prefix of
      ``DistributedDataParallel``). Use it as a context manager to remove the hooks on exit.

    :param model: the network
    :param keep: ``"rates"`` or ``"spikes"``
    """

    def __init__(self, model: nn.Module, keep: str = "rates"):
        require_module(model, "SpikeRecorder")
        if keep not in ("rates", "spikes"):
            raise ValueError(f"keep must be 'rates' or 'spikes', got {keep!r}.")
        self.keep = keep
        self._sums: "OrderedDict[str, float]" = OrderedDict()
        self._counts: "OrderedDict[str, int]" = OrderedDict()
        self._spikes: "OrderedDict[str, list]" = OrderedDict()
        self._multi_step: dict = {}
        self._handles = []
        for name, module in spiking_layers(model).items():
            target = module.spikes if isinstance(module, SAFNode) else module
            self._handles.append(target.register_forward_hook(self._hook(name, module)))
        self.clear()

    @property
    def names(self) -> tuple:
        """The recorded layers' names, in module order."""
        return tuple(self._sums)

    def _hook(self, name: str, node: nn.Module):
        self._sums[name], self._counts[name], self._spikes[name] = 0.0, 0, []
        is_dsr = isinstance(node, _DSR_TYPES)

        def record(_module, _inputs, output):
            spikes = output[0] if isinstance(output, (list, tuple)) else output
            if not isinstance(spikes, torch.Tensor):
                return
            spikes = spikes.detach()
            if is_dsr:
                spikes = (spikes != 0).to(torch.float32)
            self._sums[name] += float(spikes.float().sum())
            self._counts[name] += spikes.numel()
            if self.keep == "spikes":
                self._spikes[name].append(spikes.clone())
                self._multi_step[name] = getattr(node, "step_mode", "s") == "m"

        return record

    def rates(self) -> "OrderedDict[str, float]":
        """Mean spikes per neuron and step of each layer since the last :meth:`clear`
        (``nan`` for a layer that did not run)."""
        return OrderedDict((k, self._sums[k] / self._counts[k] if self._counts[k] else float("nan"))
                           for k in self._sums)

    def spikes(self) -> "OrderedDict[str, list[torch.Tensor]]":
        """Each layer's recorded spike tensors, one per call (``keep="spikes"`` only)."""
        if self.keep != "spikes":
            raise ValueError('spikes() needs SpikeRecorder(model, keep="spikes").')
        return OrderedDict((k, list(v)) for k, v in self._spikes.items())

    def spike_seq(self) -> "OrderedDict[str, torch.Tensor]":
        """Each layer's spikes over time, ``[T, B, *]``, whichever step mode recorded them
        (``keep="spikes"`` only; layers that did not run are left out)."""
        out = OrderedDict()
        for name, tensors in self.spikes().items():
            if tensors:
                joined = torch.cat if self._multi_step.get(name) else torch.stack
                out[name] = joined(tensors, 0)
        return out

    def clear(self) -> None:
        """Forget what was recorded; the hooks stay."""
        for name in self._sums:
            self._sums[name], self._counts[name], self._spikes[name] = 0.0, 0, []

    def remove(self) -> None:
        """Remove the hooks; what was recorded stays readable."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def __enter__(self) -> "SpikeRecorder":
        return self

    def __exit__(self, *exc) -> Optional[bool]:
        self.remove()
        return None
