r"""
Training methods side by side: SAF-E, SAF-E-acc and SAF-F next to SpikingJelly's own OTTT_O,
OTTT_A, BPTT, SLTT and DSR, plus the ReLU "ideal" that benchmarks compare against and BPTT trained
on SAF-F's and on OTTT's objective (diagnostics: exact gradients of the online methods' objectives).

Each :class:`Method` is an object that carries everything a script needs: which neuron a model is
built with and with which keyword arguments, the step mode it runs in (and the one a fused backend
needs), how one minibatch is trained, which output a prediction is read from, and what it can do
(mixed precision, deployment as LIF, fused backends). Scripts ask these attributes and never test
method names. Adding a method is one entry in the table at the end of this module.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
import torch.nn as nn
from spikingjelly.activation_based import functional, neuron, surrogate

from spikingjelly_saf import functional as saf_functional
from spikingjelly_saf.neuron import SAFNode, check_tau
from spikingjelly_saf.surrogate import SpikeRepresentation
from spikingjelly_saf.training import (NonFiniteTrainingError, _check_batch, _check_x_seq, check_gradients_finite,
                                       output_is_spiking, readout_decay, run_sequence, saf_online_training)

__all__ = ["Method", "METHOD_NAMES", "ALL_METHOD_NAMES", "get_method", "ReLUNode",
           "saf_rate_readout", "saf_weighted_readout", "mean_readout", "weighted_average_readout"]


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


# ----------------------------------------------------------------------------------------------
# readouts and training steps


def saf_rate_readout(decay: float, spikes: bool = False) -> Callable[[torch.Tensor], torch.Tensor]:
    r"""SAF's prediction scores: the firing rate of the output, the mean over T of the recovered
    instantaneous output, from the weighted averages ``[B, T, *]``
    (:func:`spikingjelly_saf.functional.rate_readout`; ``spikes``: the output layer is a neuron, so
    the spike counts are rounded). The LIF twin read with :func:`mean_readout` predicts the same."""
    decay, spikes = float(decay), bool(spikes)

    def readout(y_seq: torch.Tensor) -> torch.Tensor:
        return saf_functional.rate_readout(y_seq, decay, dim=1, spikes=spikes)

    return readout


def saf_weighted_readout(y_seq: torch.Tensor) -> torch.Tensor:
    r"""The last weighted-average output :math:`\bar O[T]` of a SAF network (SAF-F's training
    target), by name; not the default prediction."""
    return y_seq[:, -1]


def mean_readout(y_seq: torch.Tensor) -> torch.Tensor:
    """The firing rate: the mean output over the time steps, how SpikingJelly reads any network
    (OTTT, BPTT, SLTT, DSR, and the LIF network deployed from SAF)."""
    return y_seq.mean(dim=1)


def weighted_average_readout(decay: float) -> Callable[[torch.Tensor], torch.Tensor]:
    r"""SAF's weighted average :math:`\bar O[T] = \sum_t \lambda^{T-t} o[t] / c[T]` of per-step
    outputs :math:`o[t]` ``[B, T, *]`` (a LIF or OTTT network's), step by step with SAF's formulas:
    what :func:`saf_weighted_readout` reads from a SAF network, for comparing the two readouts.
    ``decay`` is :math:`\lambda` of the neuron feeding the output layer
    (:func:`spikingjelly_saf.training.readout_decay` of the SAF model).
    """
    decay = float(decay)

    def readout(y_seq: torch.Tensor) -> torch.Tensor:
        return saf_functional.weighted_average(y_seq, decay, dim=1)

    return readout


def _repeat_target(target: torch.Tensor, steps: int) -> torch.Tensor:
    return target.unsqueeze(1).expand(target.shape[0], steps, *target.shape[1:])


def _averaged_over_steps(f_loss: Callable, steps: int) -> Callable:
    def per_step(output, target):
        return f_loss(output, target) / steps

    return per_step


def _train_saf(method: "Method", model, optimizer, x_seq, target, f_loss, grad_scaler=None):
    return saf_online_training(model, optimizer, x_seq, target, f_loss, method.schedule or method.name,
                               grad_scaler=grad_scaler)


def _train_ottt(method: "Method", model, optimizer, x_seq, target, f_loss, grad_scaler=None):
    if grad_scaler is not None:
        raise ValueError(f"mixed precision is not supported with method {method.name!r}: "
                         "SpikingJelly's ottt_online_training has no gradient scaler.")
    # Imported here: SpikingJelly's learning package pulls in TensorBoard through its monitors,
    # which the core install does not need.
    from spikingjelly.activation_based.learning import online_learning

    return online_learning.ottt_online_training(
        model, optimizer, x_seq, _repeat_target(target, x_seq.shape[1]), f_loss,
        online=method.name == "ottt-o")


def _readout_objective(method: "Method", model, y_seq, target, f_loss):
    """One loss on the method's readout (BPTT on the firing rate)."""
    return f_loss(method.readout(y_seq), target)


def _final_average_objective(method: "Method", model, y_seq, target, f_loss):
    r"""SAF-F's objective: one loss on the weighted average :math:`\bar O[T]` of the outputs, with
    the leak of the network's last neuron."""
    return f_loss(weighted_average_readout(_last_neuron_decay(model))(y_seq), target)


def _every_step_objective(method: "Method", model, y_seq, target, f_loss):
    """OTTT's objective: a loss on every step's output (``f_loss`` arrives divided by T)."""
    return sum(f_loss(y, target) for y in y_seq.unbind(1))


def _last_neuron_decay(model: nn.Module) -> float:
    taus = [m.tau for m in model.modules() if isinstance(m, neuron.BaseNode) and hasattr(m, "tau")]
    if not taus:
        raise ValueError(f"{type(model).__name__} has no LIF neuron whose leak weights the average.")
    return saf_functional.decay_factor(float(taus[-1]))


def _train_whole_sequence(method: "Method", model, optimizer, x_seq, target, f_loss,
                          grad_scaler=None):
    """BPTT-style: the whole sequence in one graph, one backward of the method's objective; a
    non-finite loss or gradient stops before the optimizer step, as in SAF's training function."""
    optimizer.zero_grad()
    y_seq = run_sequence(model, x_seq, method.step_mode)
    loss = method.objective(method, model, y_seq, target, f_loss)
    # Backward even on a bad loss: under DDP every process takes part in the all-reduce.
    (grad_scaler.scale(loss) if grad_scaler is not None else loss).backward()
    if grad_scaler is not None:
        grad_scaler.step(optimizer)
        grad_scaler.update()
    else:
        value = float(loss.detach())
        if not math.isfinite(value):
            raise NonFiniteTrainingError("loss", None, f"f_loss returned {value}",
                                         "nan" if math.isnan(value) else "inf")
        check_gradients_finite(model, optimizer)
        optimizer.step()
    return loss.detach(), y_seq.detach()


# ----------------------------------------------------------------------------------------------
# neuron keyword arguments


def _lif_kwargs(method: "Method", tau, v_threshold, surrogate_function, detach_reset, steps) -> dict:
    kwargs = dict(tau=float(tau), v_threshold=float(v_threshold), v_reset=None,
                  decay_input=False, detach_reset=detach_reset,
                  surrogate_function=surrogate_function or method.default_surrogate())
    kwargs.update(method.fixed_neuron_kwargs)
    return kwargs


def _no_kwargs(method, tau, v_threshold, surrogate_function, detach_reset, steps) -> dict:
    return {}


def _dsr_kwargs(method, tau, v_threshold, surrogate_function, detach_reset, steps) -> dict:
    # DSRIFNode keeps its own threshold (learnable, 6.0) and firing rule; it needs only T.
    if steps is None:
        raise ValueError(f"method {method.name!r} builds DSRIFNode(T), which needs the number of time "
                         "steps: call neuron_kwargs(steps=T).")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}.")
    return {"T": steps}


def _check_saf_tau(method, tau) -> None:
    try:
        check_tau(tau)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{method.name}: {error}") from None


def _check_lif_tau(method, tau) -> None:
    if not (isinstance(tau, (int, float)) and not isinstance(tau, bool) and tau > 1.0):
        raise ValueError(f"tau={tau!r}: {method.name} uses SpikingJelly's "
                         f"{method.neuron_type.__name__}, which needs tau > 1.")


def _tau_unused(method, tau) -> None:
    return None


# ----------------------------------------------------------------------------------------------
# the method object


@dataclass(frozen=True)
class Method:
    r"""One training method: how its network is built, trained and read, and what it supports.

    * **中文**: 一种训练方法：构建网络所用的神经元与参数、步进模式、单个小批量的训练步骤、预测读出，
      以及它支持的功能（混合精度、部署为 LIF、融合后端）。脚本只查询这些属性，不判断方法名。
    * **English**: a training method: the neuron its network is built with and the keyword
      arguments, the step mode, how one minibatch is trained (:meth:`train_step`), which output a
      prediction is read from (:meth:`prediction_scores`), and its capabilities. Scripts use these
      attributes and never test method names.

    :ivar name: the name scripts accept (``-method``)
    :ivar neuron_type: the ``spiking_neuron`` a zoo factory builds the network with
    :ivar step_mode: the step mode with the default ``'torch'`` backend
    :ivar description: one line for help texts
    :ivar deploys_to_lif: the trained weights run unchanged in an ordinary LIF network
        (:func:`spikingjelly_saf.to_lif`); SAF methods
    :ivar supports_amp: trains under ``torch.autocast`` with a ``GradScaler``
    :ivar supports_fused_backends: a fused ``SAFNode`` backend (CuPy, Triton) can run it; such a
        backend needs multi-step mode (:meth:`step_mode_for`)
    :ivar needs_ottt_sequential: the network must be built from ``layer.OTTTSequential``
        (``OTTTLIFNode`` returns ``[spike, trace]`` while training)
    :ivar uses_saf_readout: the outputs are SAF weighted averages :math:`\bar O[t]`; the prediction
        is their firing rate (:func:`saf_rate_readout`), which needs the output's leak and whether
        the output layer is a neuron (:meth:`reader`)
    :ivar needs_input_average: frame-sequence inputs need
        :class:`~spikingjelly_saf.layer.InputAverage` in front of the first layer
    :ivar representation_level: trains with the representation-level surrogate
        :class:`~spikingjelly_saf.surrogate.SpikeRepresentation` (SAF-F in Theorem 3's setting,
        ``saf-f-rep``) rather than a spike-level one
    :ivar schedule: the :func:`~spikingjelly_saf.saf_online_training` method a SAF entry trains
        with, where it differs from :attr:`name` (``saf-f-rep`` trains as ``'saf-f'``)
    :ivar default_surrogate: builds the surrogate used when none is given (the OTTT setting's
        ``Sigmoid(alpha=4)``; ``SpikeRepresentation`` for ``saf-f-rep``)
    :ivar needs_steps: the neuron is built for a fixed number of steps (``neuron_kwargs(steps=T)``)
    :ivar updates_every_step: steps the optimizer at every time step (T updates per minibatch)
    :ivar objective: what a whole-sequence (BPTT) method backpropagates:
        ``objective(method, model, y_seq, target, f_loss)``; the loss on its readout unless a
        diagnostic entry trains BPTT on another method's objective
    :ivar loss_every_step: puts ``f_loss`` on every step's output; :meth:`train_step` divides each
        step's loss by T, so the minibatch's loss is the average over T, as in OTTT
    """

    name: str
    neuron_type: type
    step_mode: str
    train: Callable = field(repr=False, default=_train_whole_sequence)
    objective: Callable = field(repr=False, default=_readout_objective)
    readout: Callable[[torch.Tensor], torch.Tensor] = field(repr=False, default=mean_readout)
    description: str = ""
    #: Keyword arguments that make the neuron the OTTT setting's soft-reset LIF.
    fixed_neuron_kwargs: dict = field(default_factory=dict)
    make_neuron_kwargs: Callable = field(repr=False, default=_lif_kwargs)
    check_tau: Callable = field(repr=False, default=_check_lif_tau)
    deploys_to_lif: bool = False
    supports_amp: bool = True
    supports_fused_backends: bool = False
    needs_ottt_sequential: bool = False
    uses_saf_readout: bool = False
    needs_input_average: bool = False
    representation_level: bool = False
    needs_steps: bool = False
    updates_every_step: bool = False
    loss_every_step: bool = False
    schedule: Optional[str] = None
    default_surrogate: Callable = field(repr=False, default=lambda: surrogate.Sigmoid(alpha=4.0))

    def neuron_kwargs(self, tau: float = 2.0, v_threshold: float = 1.0,
                      surrogate_function=None, detach_reset: bool = True,
                      steps: Optional[int] = None, backend: Optional[str] = None) -> dict:
        """Keyword arguments for ``spiking_neuron=self.neuron_type`` in a zoo factory.

        ``steps`` is needed where :attr:`needs_steps` (DSR). ``backend`` (SAF methods) adds the
        ``SAFNode`` backend and the step mode it runs in (:meth:`step_mode_for`), so that the neuron
        is built in a mode its backend supports; another method refuses a fused backend.
        """
        kwargs = self.make_neuron_kwargs(self, tau, v_threshold, surrogate_function, detach_reset,
                                         steps)
        if backend is not None:
            mode = self.step_mode_for(backend)
            if self.supports_fused_backends:
                kwargs.update(backend=backend, step_mode=mode)
        return kwargs

    def step_mode_for(self, backend: str = "torch") -> str:
        """The step mode to run in with the ``SAFNode`` ``backend``.

        ``'torch'`` and ``'auto'`` keep :attr:`step_mode`; a fused backend named explicitly runs in
        multi-step mode (a whole sequence per launch), so it
        gives ``'m'`` for a method that can run multi-step and raises ``ValueError`` otherwise.
        """
        if not isinstance(backend, str) or not backend:
            raise ValueError(f"backend must be a backend name such as 'torch', got {backend!r}.")
        if backend in ("torch", "auto"):
            # 'auto' (SAFNode's default) runs either step mode: its fused kernels take a
            # single step as a T=1 launch, and other neurons ignore it.
            return self.step_mode
        if not self.supports_fused_backends:
            able = ", ".join(m.name for m in _METHODS.values() if m.supports_fused_backends)
            raise ValueError(
                f"backend {backend!r} is a fused SAFNode backend; method {self.name} uses "
                f"{self.neuron_type.__name__}, which cannot use it. Methods that can: {able}. "
                "Use backend 'torch'.")
        return "m"

    def check_neuron_arguments(self, tau: float) -> None:
        """Raise ``ValueError`` naming the method when its neuron cannot take ``tau``."""
        self.check_tau(self, tau)

    def prepare(self, model: nn.Module, backend: Optional[str] = None) -> nn.Module:
        """Put ``model`` in the step mode this method trains in, and return it.

        ``backend`` defaults to the one the model's SAF neurons were built with, so a model built
        with a fused backend is put in multi-step mode.
        """
        if backend is None:
            fused = {getattr(m, "backend", "torch") for m in model.modules()
                     if isinstance(m, SAFNode)} - {"torch", "auto"}
            backend = next(iter(fused)) if fused else "torch"
        functional.set_step_mode(model, self.step_mode_for(backend))
        return model

    def train_step(self, model: nn.Module, optimizer: torch.optim.Optimizer, x_seq: torch.Tensor,
                   target: torch.Tensor, f_loss: Callable, grad_scaler=None):
        """Train one minibatch ``x_seq`` ``[B, T, *]``; returns ``(loss, y_seq [B, T, *])``.

        The model must be reset before the call.
        """
        if grad_scaler is not None and not self.supports_amp:
            raise ValueError(f"mixed precision is not supported with method {self.name!r}.")
        _check_x_seq(x_seq, f"method {self.name}")
        _check_batch(x_seq, target, False)
        if self.loss_every_step:
            # OTTT's per-step loss is averaged over T (its train_cifar.py divides each step's loss
            # by T), so that one learning rate serves every T; the library sums what it is given.
            f_loss = _averaged_over_steps(f_loss, x_seq.shape[1])
        return self.train(self, model, optimizer, x_seq, target, f_loss, grad_scaler)

    def prediction_scores(self, y_seq: torch.Tensor, decay: Optional[float] = None,
                          spikes: bool = False) -> torch.Tensor:
        """The scores a prediction is read from (``[B, T, *] -> [B, *]``): the firing rate of the
        output. For SAF methods (:attr:`uses_saf_readout`) it is recovered from the weighted
        averages, which needs the output's leak ``decay`` and ``spikes`` (the output layer is a
        neuron); :meth:`reader` finds both from the model."""
        if not self.uses_saf_readout:
            return self.readout(y_seq)
        if decay is None:
            raise ValueError(f"method {self.name}: the firing rate of SAF outputs needs the output's "
                             "decay (spikingjelly_saf.training.readout_decay(model)); use "
                             "method.reader(model, x_seq).")
        return saf_rate_readout(decay, spikes)(y_seq)

    def reader(self, model: nn.Module, x_seq: Optional[torch.Tensor] = None
               ) -> Callable[[torch.Tensor], torch.Tensor]:
        """The prediction readout ``scores(y_seq)`` of ``model`` trained with this method.

        SAF methods read the output's firing rate with the model's leak, rounding the spike counts
        where the output layer is a neuron (found by running the first sample of ``x_seq`` once,
        :func:`spikingjelly_saf.training.output_is_spiking`), so that the LIF twin read with
        :meth:`deployed_readout` predicts the same class on every sample. Others: the mean output.
        """
        if not self.uses_saf_readout:
            return self.readout
        module = getattr(model, "module", model)  # DistributedDataParallel
        spikes = x_seq is not None and output_is_spiking(module, x_seq)
        return saf_rate_readout(readout_decay(module), spikes)

    def deployed_readout(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """The readout of the LIF network this method's model deploys to (:attr:`deploys_to_lif`):
        :func:`mean_readout`, ``out_seq.mean(0)`` as SpikingJelly reads any network, which predicts
        what the trained model predicted (:meth:`reader`)."""
        if not self.deploys_to_lif:
            raise ValueError(f"method {self.name} trains {self.neuron_type.__name__} networks, "
                             "which are not deployed through to_lif.")
        return mean_readout


def _saf(name: str, step_mode: str, description: str, **extra) -> Method:
    return Method(name, SAFNode, step_mode, train=_train_saf, readout=saf_weighted_readout,
                  description=description, check_tau=_check_saf_tau, deploys_to_lif=True,
                  supports_fused_backends=True, uses_saf_readout=True, needs_input_average=True,
                  **extra)


def _ottt(name: str, description: str, **extra) -> Method:
    return Method(name, neuron.OTTTLIFNode, "s", train=_train_ottt, description=description,
                  supports_amp=False, needs_ottt_sequential=True, **extra)


_METHODS = {
    m.name: m
    for m in [
        _saf("saf-e", "s", "SAF-E: loss and update at every step (like OTTT_O)",
             updates_every_step=True, loss_every_step=True),
        _saf("saf-e-acc", "m", "SAF-E, one update per minibatch (like OTTT_A); T x B batched per layer",
             loss_every_step=True),
        # The paper trains SAF-F with OTTT's spike-level surrogate (sigmoid, alpha=4), which also
        # trains best here (docs/benchmarks.md); Theorem 3's representation-level surrogate is the
        # named variant.
        _saf("saf-f", "s", "SAF-F: one loss on the final weighted average; earlier steps without a graph"),
        _saf("saf-f-rep", "s", "SAF-F with the representation-level surrogate (Theorem 3's setting)",
             schedule="saf-f", representation_level=True, default_surrogate=SpikeRepresentation),
        _ottt("ottt-o", "SpikingJelly OTTT, update at every step", updates_every_step=True,
              loss_every_step=True),
        _ottt("ottt-a", "SpikingJelly OTTT, gradients accumulated over the minibatch",
              loss_every_step=True),
        Method("bptt", neuron.LIFNode, "m",
               description="backpropagation through time, SpikingJelly LIFNode multi-step"),
        # Diagnostics: exact gradients (BPTT) of SAF-F's and of OTTT's objective, which separate
        # what an objective costs from what an online gradient costs.
        Method("bptt-final", neuron.LIFNode, "m", objective=_final_average_objective,
               description="BPTT on SAF-F's objective: one loss on the final weighted average"),
        Method("bptt-every-step", neuron.LIFNode, "m", objective=_every_step_objective,
               loss_every_step=True,
               description="BPTT on OTTT's objective: a loss on every step, averaged over T"),
        Method("sltt", neuron.SLTTLIFNode, "s", train=_train_ottt, supports_amp=False,
               loss_every_step=True,
               description="SpikingJelly SLTT: per-step backward, no temporal gradient"),
        Method("dsr", neuron.DSRIFNode, "m", make_neuron_kwargs=_dsr_kwargs, check_tau=_tau_unused,
               needs_steps=True,
               description="SpikingJelly DSRIFNode(T), trained like BPTT on the mean output"),
        Method("ideal", ReLUNode, "m", make_neuron_kwargs=_no_kwargs, check_tau=_tau_unused,
               description="the same network with ReLU, forward and backward T times (benchmarks)"),
    ]
}

#: The methods a training script accepts.
METHOD_NAMES = tuple(name for name in _METHODS
                     if name not in ("ideal", "dsr", "bptt-final", "bptt-every-step"))
#: Every entry of the table: DSR, the ReLU ideal and the BPTT diagnostics included.
ALL_METHOD_NAMES = tuple(_METHODS)


def get_method(name: str) -> Method:
    """The :class:`Method` called ``name`` (any of :data:`ALL_METHOD_NAMES`)."""
    if name not in _METHODS:
        raise ValueError(f"method={name!r} is unknown; valid methods: {', '.join(_METHODS)}.")
    return _METHODS[name]
