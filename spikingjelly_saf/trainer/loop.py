r"""
One epoch of training and one evaluation pass, for any method of :mod:`spikingjelly_saf.methods`.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections import OrderedDict

import torch
import torch.nn as nn
import torch.nn.functional as F
from spikingjelly.activation_based import functional, neuron

from ..methods import Method, evaluate_sequence
from ..neuron import SAFNode
from .data import to_sequence

__all__ = ["NonFiniteLossError", "ce_mse_loss", "FiringRateRecorder", "train_one_epoch", "evaluate"]


class NonFiniteLossError(RuntimeError):
    def __init__(self, epoch: int, batch: int, value: float):
        super().__init__(f"the training loss became {value} at epoch {epoch}, minibatch {batch}")
        self.epoch, self.batch, self.value = epoch, batch, value


def ce_mse_loss(num_classes: int, mse_weight: float = 0.05):
    """``f_loss(output, label) = (1 - w) CE(output, label) + w MSE(output, one_hot(label))``, the
    per-step loss of the OTTT CIFAR setup (``w = 0.05``)."""

    def f_loss(output: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        output = output.float()
        one_hot = F.one_hot(label, num_classes).to(output.dtype)
        return (1.0 - mse_weight) * F.cross_entropy(output, label) + mse_weight * F.mse_loss(output, one_hot)

    return f_loss


class FiringRateRecorder:
    """Mean firing rate per spiking layer, from forward hooks.

    SAF neurons output weighted rates, so their spikes are read from the ``spikes``
    (:class:`~spikingjelly_saf.neuron.SpikeTap`) child; every other neuron's output is its spikes.
    """

    def __init__(self, model: nn.Module):
        self.sums: "OrderedDict[str, float]" = OrderedDict()
        self.counts: "OrderedDict[str, int]" = OrderedDict()
        self._handles = []
        for name, module in model.named_modules():
            if isinstance(module, SAFNode):
                target = module.spikes
            elif isinstance(module, neuron.BaseNode):
                target = module
            else:
                continue
            name = name.removeprefix("module.")
            self.sums[name], self.counts[name] = 0.0, 0
            self._handles.append(target.register_forward_hook(self._hook(name)))

    def _hook(self, name: str):
        def record(module, inputs, output):
            spikes = output[0] if isinstance(output, (list, tuple)) else output
            self.sums[name] += float(spikes.detach().float().sum())
            self.counts[name] += spikes.numel()

        return record

    def rates(self) -> "OrderedDict[str, float]":
        return OrderedDict((k, self.sums[k] / self.counts[k] if self.counts[k] else float("nan"))
                           for k in self.sums)

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


def _autocast(device: torch.device, enabled: bool):
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.float16)


def train_one_epoch(model, method: Method, optimizer, loader, f_loss, *, epoch: int, steps: int,
                    sequence: bool, device: torch.device, grad_scaler=None, amp: bool = False,
                    progress=None, inject_nan: bool = False, all_finite=bool):
    """Train ``model`` for one pass over ``loader``; returns ``(loss_sum, correct, samples, seconds)``.

    Raises :class:`NonFiniteLossError` as soon as a minibatch's loss is NaN or infinite;
    ``all_finite(local_flag)`` turns the local check into the decision of every process.
    """
    model.train()
    loss_sum, correct, samples = 0.0, 0, 0
    start = time.perf_counter()
    for batch, (x, label) in enumerate(loader):
        x = x.to(device, non_blocking=True).float()
        label = label.to(device, non_blocking=True)
        x_seq = to_sequence(x, steps, sequence)
        if inject_nan:
            def loss_fn(output, target):
                return f_loss(output, target) * float("nan")
        else:
            loss_fn = f_loss
        with _autocast(device, amp):
            loss, y_seq = method.train_step(model, optimizer, x_seq, label, loss_fn, grad_scaler)
        functional.reset_net(model)
        value = float(loss)
        # Under DDP every process stops together: one that kept going would wait forever for the
        # gradient all-reduce of a process that already stopped.
        if not all_finite(math.isfinite(value)):
            raise NonFiniteLossError(epoch, batch, value)
        scores = method.prediction_scores(y_seq)
        loss_sum += value * label.numel()
        correct += int((scores.argmax(1) == label).sum())
        samples += label.numel()
        if progress is not None:
            elapsed = time.perf_counter() - start
            progress.set_postfix(loss=f"{loss_sum / samples:.4f}", acc=f"{correct / samples:.4f}",
                                 img_s=f"{samples / max(elapsed, 1e-9):.1f}")
            progress.update(1)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return loss_sum, correct, samples, time.perf_counter() - start


@torch.no_grad()
def evaluate(model, method: Method, loader, f_loss, *, steps: int, sequence: bool,
             device: torch.device, amp: bool = False):
    """``(loss_sum, correct, samples)`` of ``model`` on ``loader`` (eval mode, reset per minibatch)."""
    model.eval()
    loss_sum, correct, samples = 0.0, 0, 0
    for x, label in loader:
        x = x.to(device, non_blocking=True).float()
        label = label.to(device, non_blocking=True)
        with _autocast(device, amp):
            y_seq = evaluate_sequence(model, to_sequence(x, steps, sequence), method.step_mode)
        functional.reset_net(model)
        scores = method.prediction_scores(y_seq).float()
        loss_sum += float(f_loss(scores, label)) * label.numel()
        correct += int((scores.argmax(1) == label).sum())
        samples += label.numel()
    return loss_sum, correct, samples
