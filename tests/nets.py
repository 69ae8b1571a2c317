"""Small networks built twice, with SpikingJelly's neurons and with SAFNode, for the theorem tests."""

from __future__ import annotations

import math

import torch
import torch.nn as nn
from spikingjelly.activation_based import functional, layer, neuron

from torch.utils._python_dispatch import TorchDispatchMode

from spikingjelly_saf import SAFNode, recording


class Residual(nn.Module):
    """``branch(x) + x``: a residual add of two branches in the same representation."""

    def __init__(self, branch: nn.Module):
        super().__init__()
        self.branch = branch

    def forward(self, x):
        return self.branch(x) + x


def lif_factory(tau: float, decay_input: bool, v_threshold: float = 1.0, online: bool = False):
    """SpikingJelly's soft-reset LIF (OTTTLIFNode when ``online``), IFNode for tau = inf.

    LIFNode asserts tau > 1, but its equations are well defined at tau = 1 (a memoryless neuron),
    so that case is built with tau = 2 and then set to 1.
    """

    def make():
        if math.isinf(tau):
            assert not online
            return neuron.IFNode(v_threshold=v_threshold, v_reset=None)
        cls = neuron.OTTTLIFNode if online else neuron.LIFNode
        node = cls(tau=max(tau, 2.0), decay_input=decay_input, v_threshold=v_threshold,
                   v_reset=None, detach_reset=True)
        node.tau = tau
        return node

    return make


def saf_factory(tau: float, decay_input: bool, v_threshold: float = 1.0, **kwargs):
    return lambda: SAFNode(tau=tau, decay_input=decay_input, v_threshold=v_threshold, **kwargs)


def conv_net(make_neuron, container=nn.Sequential, channels: int = 2, classes: int = 3,
             with_bn: bool = True, dropout: float = 0.25) -> nn.Module:
    """Conv/linear with biases, eval BatchNorm, AvgPool, a residual add and ``layer.Dropout``."""
    blocks = [layer.Conv2d(channels, 4, 3, padding=1, bias=True)]
    if with_bn:
        blocks.append(layer.BatchNorm2d(4))
    blocks += [
        make_neuron(),
        layer.AvgPool2d(2),
        Residual(layer.Conv2d(4, 4, 3, padding=1, bias=True)),
        make_neuron(),
        layer.Dropout(dropout),
        layer.Flatten(),
        layer.Linear(4 * 4 * 4, 12, bias=True),
        make_neuron(),
        layer.Linear(12, classes, bias=True),
    ]
    return container(*blocks)


def randomise(net: nn.Module, seed: int, weight_gain: float = 1.5) -> None:
    """Random weights, biases and BatchNorm statistics (all in the net's dtype)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * weight_gain / fan_in ** 0.5)
                if m.bias is not None:
                    m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.3)
            elif isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.2)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.2)


def freeze_batchnorm(net: nn.Module) -> None:
    """Eval-mode BatchNorm: fixed statistics, the affine case of Theorem 1."""
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eval()


class SpikeRecorder(recording.SpikeRecorder):
    """The library's recorder keeping every spike tensor: LIF spikes, or SAF's recovered spikes."""

    def __init__(self, net: nn.Module):
        super().__init__(net, keep="spikes")

    def sequences(self, step_mode: str) -> list[torch.Tensor]:
        """One ``[T, *]`` tensor per neuron, in module order."""
        return [torch.stack(v) if step_mode == "s" else torch.cat(v) for v in self.spikes().values()]


def run_steps(net: nn.Module, x_seq: torch.Tensor, step_mode: str) -> torch.Tensor:
    """Feed ``x_seq`` ``[T, *]`` and return the outputs ``[T, *]``."""
    functional.set_step_mode(net, step_mode)
    if step_mode == "m":
        return net(x_seq)
    return torch.stack([net(x) for x in x_seq])

class OpRecorder(TorchDispatchMode):
    """Records which operators run, to prove that the fused kernel (not a fallback) ran."""

    def __init__(self):
        super().__init__()
        self.names = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(str(func))
        return func(*args, **(kwargs or {}))

    def count(self, fragment: str) -> int:
        return sum(fragment in name for name in self.names)
