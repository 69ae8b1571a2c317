r"""
The one training engine of the examples and benchmarks: an epoch of training, an evaluation pass,
and the deployment of a SAF network as an LIF network with the check that both predict the same,
for any method of :mod:`saf_examples.methods`.

Batches are any iterable of ``(x, label)``: a ``DataLoader`` (the trainer) or
:func:`tensor_batches` over tensors in memory (the digits job, the benchmarks).
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
import weakref
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable, Iterable, Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F
from spikingjelly.activation_based import functional

from spikingjelly_saf.conversion import to_lif
from spikingjelly_saf.health import FiringHealth
from spikingjelly_saf.recording import SpikeRecorder, spiking_layers
from spikingjelly_saf.training import NonFiniteTrainingError, readout_decay, run_sequence
from .data import to_sequence
from .guard import NonFiniteStateError
from .methods import Method

__all__ = ["NonFiniteLossError", "ce_mse_loss", "FiringRateRecorder", "EpochResult", "Evaluation",
           "tensor_batches", "train_one_epoch", "evaluate", "DeployedLIF", "deploy_to_lif",
           "Deployment", "check_deployment"]


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


@dataclass(frozen=True)
class EpochResult:
    """What :func:`train_one_epoch` measured: the summed per-sample loss of the prediction scores,
    the correct predictions, the samples and the seconds of the pass."""

    loss_sum: float
    correct: int
    samples: int
    seconds: float


@dataclass
class Evaluation:
    """What :func:`evaluate` measured. ``predictions`` (with ``keep_predictions``) are the argmax of
    the method's prediction scores, in batch order; ``readout_correct`` counts the correct
    predictions of each extra readout given to :func:`evaluate`."""

    loss_sum: float
    correct: int
    samples: int
    predictions: Optional[torch.Tensor] = None
    readout_correct: dict = field(default_factory=dict)

    @property
    def accuracy(self) -> float:
        return self.correct / self.samples if self.samples else float("nan")

    def readout_accuracy(self, name: str) -> float:
        return self.readout_correct[name] / self.samples if self.samples else float("nan")


def tensor_batches(x: torch.Tensor, y: torch.Tensor, batch_size: int,
                   generator: Optional[torch.Generator] = None, drop_last: bool = False):
    """Minibatches ``(x[idx], y[idx])`` of tensors in memory, shuffled with ``generator`` when given
    (in the order of the data otherwise)."""
    order = (torch.randperm(len(y), generator=generator) if generator is not None
             else torch.arange(len(y)))
    stop = len(order) - len(order) % batch_size if drop_last else len(order)
    for start in range(0, stop, batch_size):
        idx = order[start:start + batch_size]
        yield x[idx], y[idx]


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_one_epoch(model, method: Method, optimizer, batches: Iterable, f_loss, *, steps: int,
                    sequence: bool = False, device: torch.device = torch.device("cpu"),
                    epoch: int = 0, grad_scaler=None, amp: bool = False, progress=None,
                    inject_nan: bool = False, all_finite: Callable[[bool], bool] = bool,
                    on_minibatch=None, max_batches: Optional[int] = None,
                    train_mode: Optional[Callable] = None) -> EpochResult:
    """Train ``model`` for one pass over ``batches`` (at most ``max_batches`` of them).

    ``loss_sum`` adds, per sample, ``f_loss`` of the method's prediction scores: the quantity
    :func:`evaluate` reports on the test set, so train and test loss share one scale (that of one
    step's output) whatever the method optimises (a sum over T steps for SAF-E and OTTT).
    ``on_minibatch(batch, values)`` (optional) receives each minibatch's ``loss``, ``acc``,
    ``objective`` (the loss the method returned), ``lr`` and ``seconds`` (the training step alone,
    the device synchronised), e.g. for TensorBoard (:func:`saf_examples.report.minibatch_logger`)
    or a learning-rate schedule stepped per minibatch.

    ``train_mode(model)`` (optional) puts the model in training mode instead of ``model.train()``,
    e.g. with BatchNorm kept in eval mode. A benchmark tests inside an epoch by calling this
    function on consecutive slices of one epoch's batches (``itertools.islice``).

    Raises :class:`NonFiniteLossError` as soon as a minibatch's loss is NaN or infinite;
    ``all_finite(local_flag)`` turns the local check into the decision of every process.
    """
    if train_mode is None:
        model.train()
    else:
        train_mode(model)
    functional.reset_net(model)
    loss_sum, correct, samples = 0.0, 0, 0
    reader = None
    start = time.perf_counter()
    for batch, (x, label) in enumerate(batches):
        if max_batches is not None and batch >= max_batches:
            break
        x = x.to(device, non_blocking=True).float()
        label = label.to(device, non_blocking=True)
        x_seq = to_sequence(x, steps, sequence)
        if reader is None:
            reader = _reader(model, method, x_seq)
        if inject_nan:
            def loss_fn(output, target):
                return f_loss(output, target) * float("nan")
        else:
            loss_fn = f_loss
        _synchronize(device)
        step_start = time.perf_counter()
        stopped = None
        try:
            with _autocast(device, amp):
                objective, y_seq = method.train_step(model, optimizer, x_seq, label, loss_fn,
                                                     grad_scaler)
            value = float(objective)
        except NonFiniteTrainingError as error:
            # The SAF methods stop before the optimizer step; the check below stops every process.
            stopped, value, y_seq = error, math.nan, None
        functional.reset_net(model)
        _synchronize(device)
        step_seconds = time.perf_counter() - step_start
        # Under DDP every process stops together: one that kept going would wait forever for the
        # gradient all-reduce of a process that already stopped.
        if not all_finite(math.isfinite(value)):
            if stopped is not None and stopped.what == "gradient":
                raise NonFiniteStateError(f"the gradient of {stopped.parameter}", epoch, batch,
                                          stopped.value)
            if stopped is not None and stopped.what == "input":
                raise NonFiniteStateError("the training input (a value in the data)", epoch, batch,
                                          stopped.value)
            raise NonFiniteLossError(epoch, batch, value)
        with torch.no_grad():
            scores = reader(y_seq).float()
            batch_loss = float(f_loss(scores, label))
        batch_correct = int((scores.argmax(1) == label).sum())
        loss_sum += batch_loss * label.numel()
        correct += batch_correct
        samples += label.numel()
        if on_minibatch is not None:
            on_minibatch(batch, {"loss": batch_loss, "acc": batch_correct / label.numel(),
                                 "objective": value, "lr": optimizer.param_groups[0]["lr"],
                                 "seconds": step_seconds})
        if progress is not None:
            elapsed = time.perf_counter() - start
            progress.set_postfix(loss=f"{loss_sum / samples:.4f}", acc=f"{correct / samples:.4f}",
                                 img_s=f"{samples / max(elapsed, 1e-9):.1f}")
            progress.update(1)
    _synchronize(device)
    return EpochResult(loss_sum, correct, samples, time.perf_counter() - start)


@torch.no_grad()
def evaluate(model, method, batches: Iterable, f_loss, *, steps: int, sequence: bool = False,
             device: torch.device = torch.device("cpu"), amp: bool = False, check_health: bool = True,
             readouts: Optional[dict] = None, keep_predictions: bool = False) -> Evaluation:
    """Evaluate ``model`` on ``batches`` (eval mode, reset per minibatch); returns an :class:`Evaluation`.

    The model runs in its own step mode (multi-step where a fused backend put it there). The
    prediction is the firing rate of the output: :meth:`Method.reader` (SAF methods recover it from
    the weighted averages) or, for ``method`` a reader such as :class:`DeployedLIF`, its
    ``prediction_scores``. ``readouts`` maps names to further ``scores(y_seq)`` functions, whose
    correct predictions are counted too. With ``check_health`` a layer that stays silent or
    fires almost everywhere on the whole set is reported on stderr, once per model, layer and kind,
    by :class:`~spikingjelly_saf.health.FiringHealth`: the layer, its rate and the likely cause
    (for SAF-E and OTTT_O usually a learning rate too high for T updates per minibatch).
    """
    model.eval()
    health = None
    if check_health and _is_main_process() and spiking_layers(model):
        health = FiringHealth(model, method=method if isinstance(method, Method) else None,
                              steps=steps)
    result = Evaluation(0.0, 0, 0, readout_correct={name: 0 for name in readouts or {}})
    predictions = []
    reader = None
    functional.reset_net(model)
    try:
        for x, label in batches:
            x = x.to(device, non_blocking=True).float()
            label = label.to(device, non_blocking=True)
            x_seq = to_sequence(x, steps, sequence)
            if reader is None:
                reader = _reader(model, method, x_seq)
            with _autocast(device, amp):
                y_seq = run_sequence(model, x_seq)
            functional.reset_net(model)
            scores = reader(y_seq).float()
            result.loss_sum += float(f_loss(scores, label)) * label.numel()
            predicted = scores.argmax(1)
            result.correct += int((predicted == label).sum())
            result.samples += label.numel()
            for name, readout in (readouts or {}).items():
                result.readout_correct[name] += int((readout(y_seq).argmax(1) == label).sum())
            if keep_predictions:
                predictions.append(predicted.cpu())
    finally:
        if health is not None:
            health.remove()
    if health is not None:
        _report_firing_problems(model, health.problems())
    if keep_predictions:
        result.predictions = torch.cat(predictions) if predictions else torch.empty(0, dtype=torch.long)
    return result


def _reader(model, method, x_seq: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    if isinstance(method, Method):
        return method.reader(model, x_seq)
    return method.prediction_scores


class DeployedLIF:
    r"""How the LIF network deployed from a SAF model is read: in the SAF model's step mode, with
    the method's deployed readout (:meth:`saf_examples.methods.Method.deployed_readout`), the mean
    of its output over T as SpikingJelly reads any network; it predicts what the SAF model
    predicted. ``decay`` records the leak of the SAF model's output (written to run reports)."""

    def __init__(self, method: Method, decay: float):
        self.method, self.decay = method, float(decay)
        self._readout = method.deployed_readout()

    def prediction_scores(self, y_seq: torch.Tensor) -> torch.Tensor:
        return self._readout(y_seq)


def deploy_to_lif(model, method: Method) -> tuple[torch.nn.Module, DeployedLIF]:
    """``(lif_model, reader)``: a copy of the trained SAF ``model`` as the LIF network
    :func:`spikingjelly_saf.to_lif` builds (``model`` itself is left unchanged), and how to read it.
    The LIF network runs in the SAF model's step mode."""
    module = getattr(model, "module", model)  # DistributedDataParallel
    reader = DeployedLIF(method, readout_decay(module))
    return to_lif(module, memoryless="keep"), reader


@dataclass(frozen=True)
class Deployment:
    """The deployed LIF network's accuracy and how many of its predictions differ from the SAF
    model's (``None`` when the SAF predictions were not given)."""

    accuracy: float
    mismatches: Optional[int]
    samples: int


def check_deployment(model, method: Method, batches: Iterable, f_loss, *, steps: int,
                     sequence: bool = False, device: torch.device = torch.device("cpu"),
                     saf_predictions: Optional[torch.Tensor] = None) -> Deployment:
    """Deploy ``model`` with :func:`deploy_to_lif`, evaluate the LIF network on ``batches`` and
    count its predictions that differ from ``saf_predictions`` (the SAF model's, from
    :func:`evaluate` with ``keep_predictions``, on the same batches in the same order)."""
    lif_model, reader = deploy_to_lif(model, method)
    lif_model.to(device)
    result = evaluate(lif_model, reader, batches, f_loss, steps=steps, sequence=sequence,
                      device=device, check_health=False, keep_predictions=saf_predictions is not None)
    mismatches = None
    if saf_predictions is not None:
        mismatches = int((result.predictions != saf_predictions.cpu()).sum())
    return Deployment(result.accuracy, mismatches, result.samples)


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
