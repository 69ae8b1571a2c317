r"""
Training methods side by side: SAF-E, SAF-E-acc, SAF-F and SpikingJelly's own OTTT_O, OTTT_A,
BPTT and SLTT, plus the ReLU "ideal" that benchmarks compare against.

Each :class:`Method` says which neuron a model is built with, in which step mode it runs, how one
minibatch is trained, how a sequence is evaluated, and which output the prediction is read from.
The examples, the digits job and the benchmarks all go through this one table.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn as nn
from spikingjelly.activation_based import functional, neuron, surrogate
from spikingjelly.activation_based.learning import online_learning

from .neuron import SAFNode
from .training import saf_online_training

__all__ = ["Method", "METHOD_NAMES", "get_method", "ReLUNode", "evaluate_sequence"]


class ReLUNode(nn.Module):
    """A stateless ReLU that accepts (and ignores) a spiking neuron's keyword arguments.

    With it a zoo factory builds "the same network with ReLU in place of the neurons": the ideal
    that SAF's cost is measured against.
    """

    def __init__(self, *args, step_mode: str = "s", **kwargs):
        super().__init__()
        self.step_mode = step_mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x)


def _repeat_target(target: torch.Tensor, steps: int) -> torch.Tensor:
    return target.unsqueeze(1).expand(target.shape[0], steps, *target.shape[1:])


def evaluate_sequence(model: nn.Module, x_seq: torch.Tensor, step_mode: str) -> torch.Tensor:
    """Run ``x_seq`` ``[B, T, *]`` through a (reset) model; returns the outputs ``[B, T, *]``."""
    inputs = x_seq.transpose(0, 1)
    if step_mode == "m":
        y = model(inputs)
        y = y[0] if isinstance(y, (list, tuple)) else y
        return y.transpose(0, 1)
    outputs = []
    for x in inputs:
        y = model(x)
        outputs.append(y[0] if isinstance(y, (list, tuple)) else y)
    return torch.stack(outputs, dim=1)


@dataclass(frozen=True)
class Method:
    name: str
    neuron_type: type
    step_mode: str
    #: Keyword arguments that make the neuron the OTTT setting's soft-reset LIF.
    fixed_neuron_kwargs: dict = field(default_factory=dict)
    description: str = ""

    def neuron_kwargs(self, tau: float = 2.0, v_threshold: float = 1.0,
                      surrogate_function=None, detach_reset: bool = True) -> dict:
        """Keyword arguments for ``spiking_neuron=self.neuron_type`` in a zoo factory."""
        if self.neuron_type is ReLUNode:
            return {}
        kwargs = dict(tau=float(tau), v_threshold=float(v_threshold), v_reset=None,
                      decay_input=False, detach_reset=detach_reset,
                      surrogate_function=surrogate_function or surrogate.Sigmoid(alpha=4.0))
        kwargs.update(self.fixed_neuron_kwargs)
        return kwargs

    def prepare(self, model: nn.Module) -> nn.Module:
        functional.set_step_mode(model, self.step_mode)
        return model

    def train_step(self, model: nn.Module, optimizer: torch.optim.Optimizer, x_seq: torch.Tensor,
                   target: torch.Tensor, f_loss: Callable, grad_scaler=None):
        """Train one minibatch ``x_seq`` ``[B, T, *]``; returns ``(loss, y_seq [B, T, *])``.

        The model must be reset before the call.
        """
        steps = x_seq.shape[1]
        if self.name.startswith("saf-"):
            return saf_online_training(model, optimizer, x_seq, target, f_loss, self.name,
                                       grad_scaler=grad_scaler)
        if self.name in ("ottt-o", "ottt-a", "sltt"):
            if grad_scaler is not None:
                raise ValueError(f"-amp is not supported with method {self.name!r}: SpikingJelly's "
                                 "ottt_online_training has no gradient scaler.")
            return online_learning.ottt_online_training(
                model, optimizer, x_seq, _repeat_target(target, steps), f_loss,
                online=self.name == "ottt-o")
        # bptt, and the ideal that does the same work with ReLU: the whole sequence in one graph.
        optimizer.zero_grad()
        y_seq = evaluate_sequence(model, x_seq, self.step_mode)
        loss = f_loss(y_seq.mean(dim=1), target)
        (grad_scaler.scale(loss) if grad_scaler is not None else loss).backward()
        if grad_scaler is not None:
            grad_scaler.step(optimizer)
            grad_scaler.update()
        else:
            optimizer.step()
        return loss.detach(), y_seq.detach()

    def prediction_scores(self, y_seq: torch.Tensor) -> torch.Tensor:
        """The scores a prediction is read from: SAF's last weighted average, else the mean output."""
        return y_seq[:, -1] if self.name.startswith("saf-") else y_seq.mean(dim=1)


_METHODS = {
    m.name: m
    for m in [
        Method("saf-e", SAFNode, "s", description="SAF-E: loss and update at every step (like OTTT_O)"),
        Method("saf-e-acc", SAFNode, "m",
               description="SAF-E, one update per minibatch (like OTTT_A); T x B batched per layer"),
        Method("saf-f", SAFNode, "s",
               description="SAF-F: one loss on the final weighted average; earlier steps without a graph"),
        Method("ottt-o", neuron.OTTTLIFNode, "s",
               description="SpikingJelly OTTT, update at every step"),
        Method("ottt-a", neuron.OTTTLIFNode, "s",
               description="SpikingJelly OTTT, gradients accumulated over the minibatch"),
        Method("bptt", neuron.LIFNode, "m",
               description="backpropagation through time, SpikingJelly LIFNode multi-step"),
        Method("sltt", neuron.SLTTLIFNode, "s",
               description="SpikingJelly SLTT: per-step backward, no temporal gradient"),
        Method("ideal", ReLUNode, "m",
               description="the same network with ReLU, forward and backward T times (benchmarks)"),
    ]
}

#: The methods a training script accepts.
METHOD_NAMES = tuple(name for name in _METHODS if name != "ideal")


def get_method(name: str) -> Method:
    if name not in _METHODS:
        raise ValueError(f"method={name!r} is unknown; valid methods: {', '.join(_METHODS)}.")
    return _METHODS[name]
