r"""
One epoch of training and one evaluation pass, for any method of :mod:`spikingjelly_saf.methods`.
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
import weakref
from collections import OrderedDict

import torch
import torch.distributed as dist
import torch.nn.functional as F
from spikingjelly.activation_based import functional

from ..health import FiringHealth
from ..methods import Method
from ..recording import SpikeRecorder, spiking_layers
from ..training import run_sequence
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


class FiringRateRecorder(SpikeRecorder):
    """:class:`~spikingjelly_saf.recording.SpikeRecorder` with the per-layer spike sums and counts,
    which processes under DDP add up before dividing (their test shards differ in size)."""

    @property
    def sums(self) -> "OrderedDict[str, float]":
        return OrderedDict(self._sums)

    @property
    def counts(self) -> "OrderedDict[str, int]":
        return OrderedDict(self._counts)


def _is_main_process() -> bool:
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def _autocast(device: torch.device, enabled: bool):
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.float16)


def train_one_epoch(model, method: Method, optimizer, loader, f_loss, *, epoch: int, steps: int,
                    sequence: bool, device: torch.device, grad_scaler=None, amp: bool = False,
                    progress=None, inject_nan: bool = False, all_finite=bool, on_minibatch=None):
    """Train ``model`` for one pass over ``loader``; returns ``(loss_sum, correct, samples, seconds)``.

    ``loss_sum`` adds, per sample, ``f_loss`` of the method's prediction scores: the quantity
    :func:`evaluate` reports on the test set, so train and test loss share one scale (that of one
    step's output) whatever the method optimises (a sum over T steps for SAF-E and OTTT).
    ``on_minibatch(batch, values)`` (optional) receives each minibatch's ``loss``, ``acc``,
    ``objective`` (the loss the method returned) and ``lr``, e.g. for TensorBoard
    (:func:`~spikingjelly_saf.trainer.report.minibatch_logger`).

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
            objective, y_seq = method.train_step(model, optimizer, x_seq, label, loss_fn, grad_scaler)
        functional.reset_net(model)
        value = float(objective)
        # Under DDP every process stops together: one that kept going would wait forever for the
        # gradient all-reduce of a process that already stopped.
        if not all_finite(math.isfinite(value)):
            raise NonFiniteLossError(epoch, batch, value)
        with torch.no_grad():
            scores = method.prediction_scores(y_seq).float()
            batch_loss = float(f_loss(scores, label))
        batch_correct = int((scores.argmax(1) == label).sum())
        loss_sum += batch_loss * label.numel()
        correct += batch_correct
        samples += label.numel()
        if on_minibatch is not None:
            on_minibatch(batch, {"loss": batch_loss, "acc": batch_correct / label.numel(),
                                 "objective": value, "lr": optimizer.param_groups[0]["lr"]})
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
             device: torch.device, amp: bool = False, check_health: bool = True):
    """``(loss_sum, correct, samples)`` of ``model`` on ``loader`` (eval mode, reset per minibatch).

    The model runs in its own step mode (multi-step where a fused backend put it there);
    ``method.prediction_scores`` reads the prediction. With ``check_health`` a layer that stays
    silent or fires almost everywhere on the whole set is reported on stderr, once per model, layer
    and kind, by :class:`~spikingjelly_saf.health.FiringHealth`: the layer, its rate and the likely
    cause (for SAF-E and OTTT_O usually a learning rate too high for T updates per minibatch).
    """
    model.eval()
    health = None
    if check_health and _is_main_process() and spiking_layers(model):
        health = FiringHealth(model, method=method if isinstance(method, Method) else None,
                              steps=steps)
    loss_sum, correct, samples = 0.0, 0, 0
    try:
        for x, label in loader:
            x = x.to(device, non_blocking=True).float()
            label = label.to(device, non_blocking=True)
            with _autocast(device, amp):
                y_seq = run_sequence(model, to_sequence(x, steps, sequence))
            functional.reset_net(model)
            scores = method.prediction_scores(y_seq).float()
            loss_sum += float(f_loss(scores, label)) * label.numel()
            correct += int((scores.argmax(1) == label).sum())
            samples += label.numel()
    finally:
        if health is not None:
            health.remove()
    if health is not None:
        _report_firing_problems(model, health.problems())
    return loss_sum, correct, samples


#: Per model, the problems already reported, so that a layer that stays silent for many epochs is
#: reported once rather than after every evaluation.
_REPORTED = weakref.WeakKeyDictionary()


def _report_firing_problems(model, problems) -> None:
    reported = _REPORTED.setdefault(model, set())
    for problem in problems:
        key = problem.split(":", 1)[0]  # "layer 'x' is silent": once per layer and kind
        if key not in reported:
            reported.add(key)
            print(f"warning: {problem}", file=sys.stderr, flush=True)
