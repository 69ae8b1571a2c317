r"""
Firing health: a network whose layers stop firing, or fire everywhere, says so.

A spiking layer that never fires passes no signal and, through most surrogates, almost no gradient:
the output freezes and accuracy sits at chance without any error. A layer that fires at every
neuron and step carries no information either. :class:`FiringHealth` watches the firing rate of
every neuron layer (through :class:`~spikingjelly_saf.recording.SpikeRecorder`) and reports such
layers with the rate and the likely cause.

Use it in a custom loop::

    health = FiringHealth(model, method="saf-e", steps=T)
    for epoch in range(epochs):
        for x_seq, y in loader:
            functional.reset_net(model)
            saf_online_training(model, optimizer, x_seq, y, f_loss, "saf-e")
        health.warn()    # warnings.warn once per problem found in this epoch
        health.clear()   # start the next window
    health.remove()
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections import OrderedDict
from typing import NamedTuple, Optional, Union

import torch.nn as nn

from ._validation import require_module
from .recording import SpikeRecorder

__all__ = ["FiringHealth", "FiringHealthWarning", "ChanceLossWatch"]


class FiringHealthWarning(UserWarning):
    """A neuron layer is silent or saturated."""


class _NamedMethod(NamedTuple):
    name: str
    updates_every_step: bool


class FiringHealth:
    r"""An opt-in check that every neuron layer fires at a useful rate.

    * **中文**: 监视每个神经元层的发放率。某层几乎不发放（低于 ``silent_below``）或几乎处处发放（高于
      ``saturated_above``）时，:meth:`problems` 给出层名、发放率与可能的原因，:meth:`warn` 对每个问题只
      发出一次 ``warnings.warn``。常见原因：逐步更新的方法（SAF-E、OTTT_O）每个小批量做 T 次优化器
      步进，需要约小 T 倍的学习率。
    * **English**: watches the firing rate (spikes per neuron and step) of every neuron layer
      since the last :meth:`clear`. A layer below ``silent_below`` or above ``saturated_above`` is a
      problem: :meth:`problems` describes each (layer, rate, likely cause and fix) and :meth:`warn`
      emits each problem once with ``warnings.warn``. The usual cause of a dying network is a
      learning rate too high for a method that steps the optimizer at every time step (SAF-E,
      OTTT_O: T steps per minibatch, so try a learning rate T times smaller).

    :param model: the network (SAF or any SpikingJelly neurons; a ``DistributedDataParallel``
        wrapper is fine)
    :param silent_below: a layer whose rate is below this is silent (default ``1e-4``)
    :param saturated_above: a layer whose rate is above this is saturated (default ``0.95``)
    :param method: the training method, to tailor the advice: a SAF method name
        (:data:`spikingjelly_saf.training.METHODS`), or any object with ``name`` and
        ``updates_every_step`` attributes (the bundled examples' methods)
    :param steps: the number of time steps T, to tailor the advice
    """

    def __init__(self, model: nn.Module, silent_below: float = 1e-4, saturated_above: float = 0.95,
                 method: Union[str, object, None] = None, steps: Optional[int] = None):
        require_module(model, "FiringHealth")
        if not 0.0 <= silent_below < saturated_above <= 1.0:
            raise ValueError(
                f"need 0 <= silent_below < saturated_above <= 1, got silent_below={silent_below}, "
                f"saturated_above={saturated_above}.")
        if steps is not None and (isinstance(steps, bool) or not isinstance(steps, numbers.Integral)
                                  or steps < 1):
            raise ValueError(f"steps={steps!r} must be the number of time steps T, an integer of 1 "
                             "or more (or None when unknown).")
        if isinstance(method, str):
            from .training import METHODS, UPDATES_EVERY_STEP

            if method not in METHODS:
                raise ValueError(f"method={method!r} is not a SAF method; valid names: {', '.join(METHODS)} "
                                 "(or pass an object with name and updates_every_step attributes).")
            method = _NamedMethod(method, method in UPDATES_EVERY_STEP)
        self.silent_below, self.saturated_above = float(silent_below), float(saturated_above)
        self.method, self.steps = method, steps
        self.recorder = SpikeRecorder(model, keep="rates")
        if not self.recorder.names:
            raise ValueError("model has no neuron layer (SAFNode or SpikingJelly BaseNode) to watch.")
        self._warned: set = set()

    def rates(self) -> "OrderedDict[str, float]":
        """Each layer's firing rate since the last :meth:`clear` (``nan``: the layer did not run)."""
        return self.recorder.rates()

    def _learning_rate_hint(self) -> str:
        t = f"T={self.steps}" if self.steps else "T"
        if self.method is not None and getattr(self.method, "updates_every_step", False):
            return (f"{self.method.name} takes {t} optimizer steps per minibatch: try a learning "
                    f"rate {t.removeprefix('T=')} times smaller")
        if self.method is not None:
            return "try a smaller learning rate"
        return ("a learning rate too high; methods that step the optimizer at every time step "
                f"(SAF-E, OTTT_O) take {t} steps per minibatch: try a learning rate "
                f"{t.removeprefix('T=')} times smaller")

    def problems(self) -> list[str]:
        """One sentence per silent or saturated layer: its name, rate and the likely cause."""
        found, first_silent = [], None
        for name, rate in self.rates().items():
            if math.isnan(rate):
                continue
            if rate < self.silent_below:
                if first_silent is not None:
                    found.append(
                        f"layer {name!r} is silent: firing rate {rate:.3g} (below "
                        f"{self.silent_below:g}), downstream of silent layer {first_silent!r}: "
                        "fix that one first.")
                    continue
                first_silent = name
                found.append(
                    f"layer {name!r} is silent: firing rate {rate:.3g} (below {self.silent_below:g}). "
                    "It passes no signal and almost no gradient, so the output stops learning. "
                    f"Likely cause: {self._learning_rate_hint()}; otherwise its threshold is too "
                    "high for its input (lower v_threshold or scale up the input).")
            elif rate > self.saturated_above:
                found.append(
                    f"layer {name!r} is saturated: firing rate {rate:.3g} (above "
                    f"{self.saturated_above:g}); it fires almost everywhere and carries no "
                    f"information. Likely cause: {self._learning_rate_hint()}; otherwise its input "
                    "is too large for the threshold (raise v_threshold or normalise the input).")
        return found

    def warn(self) -> list[str]:
        """``warnings.warn`` each problem not warned about before; returns those just emitted."""
        emitted = []
        for problem in self.problems():
            key = problem.split(":", 1)[0]  # "layer 'x' is silent": once per layer and kind
            if key not in self._warned:
                self._warned.add(key)
                warnings.warn(problem, FiringHealthWarning, stacklevel=2)
                emitted.append(problem)
        return emitted

    def clear(self) -> None:
        """Start a new observation window (the hooks stay)."""
        self.recorder.clear()

    def remove(self) -> None:
        """Remove the hooks."""
        self.recorder.remove()

    def __enter__(self) -> "FiringHealth":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


class ChanceLossWatch:
    r"""Says so when the training loss stays at chance level for a long stretch.

    * **中文**: 训练损失连续 ``patience`` 个小批量都停留在随机猜测的水平（默认 :math:`\ln C`）时，
      :meth:`update` 返回一条说明（只返回一次）：网络还没有开始学习，常见原因与对策。
    * **English**: a network that has not started learning yet produces the loss of a guess
      (:math:`\ln C` for cross-entropy over ``C`` classes) at every minibatch. Feed each minibatch's
      loss to :meth:`update`; once ``patience`` consecutive losses lie within ``tolerance`` (relative)
      of ``chance_loss`` it returns one sentence saying so, with the likely causes (once; ``None``
      otherwise). Many networks sit at chance for a while before they take off; a long stretch means
      the learning rate is too high (layers fall silent), too low, or the input is not normalised.

    :param num_classes: the number of classes ``C`` (2 or more)
    :param chance_loss: the loss of a guess (default :math:`\ln C`, cross-entropy's); give your
        loss function's value at an all-zero output when it is not plain cross-entropy
    :param patience: consecutive minibatches at chance before it speaks (default 200)
    :param tolerance: relative distance from ``chance_loss`` that still counts as chance
        (default 0.05)
    :param advice: what to try, appended to the sentence (default: generic advice)
    """

    def __init__(self, num_classes: int, chance_loss: Optional[float] = None, patience: int = 200,
                 tolerance: float = 0.05, advice: Optional[str] = None):
        if isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral) or num_classes < 2:
            raise ValueError(f"num_classes={num_classes!r} must be an integer of 2 or more.")
        if isinstance(patience, bool) or not isinstance(patience, numbers.Integral) or patience < 1:
            raise ValueError(f"patience={patience!r} must be a positive integer (minibatches).")
        if not (isinstance(tolerance, numbers.Real) and 0.0 < tolerance < 1.0):
            raise ValueError(f"tolerance={tolerance!r} must lie strictly between 0 and 1.")
        chance = math.log(num_classes) if chance_loss is None else float(chance_loss)
        if not (math.isfinite(chance) and chance > 0.0):
            raise ValueError(f"chance_loss={chance_loss!r} must be a finite positive number.")
        self.num_classes, self.chance_loss = int(num_classes), chance
        self.patience, self.tolerance = int(patience), float(tolerance)
        self.advice = advice or ("a learning rate too high (layers fall silent: see FiringHealth) "
                                 "or too low, or an input that is not normalised; a learning-rate "
                                 "warm-up usually helps")
        self.streak = 0
        self.spoken = False

    def at_chance(self, loss: float) -> bool:
        """Whether ``loss`` counts as the loss of a guess."""
        return abs(float(loss) - self.chance_loss) <= self.tolerance * self.chance_loss

    def update(self, loss: float) -> Optional[str]:
        """Record one minibatch's loss; the sentence the first time the streak reaches ``patience``."""
        self.streak = self.streak + 1 if self.at_chance(loss) else 0
        if self.streak < self.patience or self.spoken:
            return None
        self.spoken = True
        return (f"the training loss has stayed at chance level ({self.chance_loss:.4f}, the loss of "
                f"a guess among {self.num_classes} classes) for {self.streak} minibatches in a "
                f"row: the network is not learning yet. Likely cause: {self.advice}.")
