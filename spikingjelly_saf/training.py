r"""
Training and evaluating SAF networks on one minibatch of sequences.

* :func:`saf_online_training`: one minibatch of SAF-E, SAF-E-acc or SAF-F, shaped like SpikingJelly's
  ``learning.online_learning.ottt_online_training``. Each schedule is its own function
  (:data:`SCHEDULES`).
* :func:`saf_inference`: the evaluation counterpart: a reset model, one sequence, the prediction
  scores: the output's firing rate by default (what the deployed LIF network gives read as
  ``out_seq.mean(0)``), :math:`\bar O[T]` with ``readout='weighted'``.
* :func:`run_sequence`: the one sequence runner for any SpikingJelly model (SAF, LIF, OTTT, DSR,
  ReLU), in whichever step mode the model is in; :func:`step_mode_of` is the one step-mode lookup.

**The model contract.** ``x_seq`` is ``[B, T, *]``; the library feeds the time steps and reads one
output per step fed. The model itself never adds the time dimension (no
``x.unsqueeze(0).repeat(T, ...)``) and never averages over it (no ``.mean(0)``): in single-step mode
it maps ``[B, *]`` to ``[B, C]``, in multi-step mode ``[k, B, *]`` to ``[k, B, C]``. A model that
breaks the contract is reported by :class:`ModelContractError`, naming what to change.

**When to reset.** A sequence starts from a reset network (``functional.reset_net(model)``).
:func:`saf_inference` resets before and after itself. :func:`saf_online_training` expects a reset
model; given one whose neurons still hold state from an earlier sequence it resets it and warns
with :class:`StateCarriedOverWarning` (carrying state over is never what a minibatch of independent
sequences means).
"""

from __future__ import annotations

import contextlib
import math
import warnings
from typing import Callable, Optional, Sequence

import torch
import torch.nn as nn
from spikingjelly.activation_based import base
from spikingjelly.activation_based import functional as sj_functional

from . import functional as saf_functional
from .layer import OutputRecovery
from .neuron import SAFNode
from .recurrent import outside_delayed, stepping_modules, unconverted_delayed_problem
from ._validation import require_module

__all__ = [
    "METHODS",
    "SCHEDULES",
    "ModelContractError",
    "StateCarriedOverWarning",
    "NonFiniteTrainingError",
    "check_gradients_finite",
    "saf_online_training",
    "saf_inference",
    "READOUTS",
    "output_is_spiking",
    "run_sequence",
    "step_mode_of",
    "model_step_mode",
    "saf_nodes",
    "readout_decay",
    "modules_holding_state",
    "train_saf_e",
    "train_saf_e_acc",
    "train_saf_f",
]


class ModelContractError(ValueError):
    """The model does not take or return the shapes the library feeds it (see the module docstring)."""


class StateCarriedOverWarning(UserWarning):
    """A network still held state from an earlier sequence; it was reset before use."""


class NonFiniteTrainingError(FloatingPointError):
    """:func:`saf_online_training` met a NaN or infinite input, loss or gradient and stopped before
    the optimizer step that would have written it into the weights.

    ``what`` is ``'input'``, ``'loss'`` or ``'gradient'``; ``step`` the time step (``None`` for the
    input, checked before the first step); ``parameter`` names the first parameter whose gradient is
    not finite; ``value`` is ``'nan'`` or ``'inf'``.
    """

    def __init__(self, what: str, step: Optional[int], detail: str, value: str,
                 parameter: Optional[str] = None):
        where = "" if step is None else f" at time step {step}"
        super().__init__(
            f"training stopped: the {what} is not finite{where} ({detail}); the optimizer "
            "step was not taken, so the weights hold the last finite update. Check the data and "
            "lower the learning rate; SAF-E steps the optimizer T times per minibatch.")
        self.what, self.step, self.value, self.parameter = what, step, value, parameter


def _nan_or_inf(tensor: torch.Tensor) -> str:
    return "nan" if bool(torch.isnan(tensor).any()) else "inf"


def _check_finite_input(x_seq: torch.Tensor, caller: str) -> None:
    # A NaN input fires no spike, so the scores would look like those of a valid input.
    if x_seq.is_floating_point() and not bool(torch.isfinite(x_seq).all()):
        bad = int((~torch.isfinite(x_seq)).sum())
        raise ValueError(f"{caller}: x_seq holds {bad} NaN or infinite value(s) ({_nan_or_inf(x_seq)}); "
                         "a neuron fires no spike for them, so the scores would look valid. Check the "
                         "data (or pass check_finite=False).")


def saf_nodes(model: nn.Module) -> list[SAFNode]:
    """Every :class:`SAFNode` of ``model``, in module order."""
    return [m for m in model.modules() if isinstance(m, SAFNode)]


def readout_decay(model: nn.Module) -> float:
    r"""The leak :math:`\lambda` of the output's weighted average: that of the last SAF neuron."""
    nodes = saf_nodes(model)
    if not nodes:
        raise ValueError(_NO_SAF_NODE)
    return nodes[-1].decay


_NO_SAF_NODE = ("model contains no SAFNode. Build it with spiking_neuron=SAFNode or convert it with "
                "spikingjelly_saf.to_saf(model).")


def _mode_set(modules) -> set:
    return {m.step_mode for m in modules if isinstance(getattr(m, "step_mode", None), str)}


def step_mode_of(model: nn.Module) -> str:
    """The step mode (``'s'`` or ``'m'``) a SpikingJelly model runs in.

    Read from its stateful modules (neurons, :class:`~spikingjelly_saf.layer.InputAverage`), or, in a
    network without any (the ReLU "ideal"), from its step-mode layers. Mixed modes are an error.
    """
    modules = list(outside_delayed(model))  # a recurrent container's children run single-step
    modes = _mode_set(m for m in modules if isinstance(m, base.MemoryModule))
    if not modes:
        modes = _mode_set(modules)
    if not modes:
        raise ValueError(
            f"{type(model).__name__} has no module with a step_mode: build it from "
            "spikingjelly.activation_based layers and neurons.")
    if len(modes) > 1:
        raise ValueError(
            f"model mixes step modes {sorted(modes)}; call "
            "spikingjelly.activation_based.functional.set_step_mode(model, 's' or 'm').")
    return modes.pop()


def model_step_mode(model: nn.Module) -> str:
    """The step mode shared by the model's SAF neurons (an error when it has none).

    Neurons inside a recurrent or feedback container always run single-step; the container's own
    mode is the one the model is called in.
    """
    if not saf_nodes(model):
        raise ValueError(_NO_SAF_NODE)
    if (problem := unconverted_delayed_problem(model)) is not None:
        raise ModelContractError(problem)
    modes = _mode_set(stepping_modules(model))
    if len(modes) > 1:
        raise ValueError(
            f"model mixes step modes {sorted(modes)}; call "
            "spikingjelly.activation_based.functional.set_step_mode(model, 's' or 'm').")
    return modes.pop()


# ----------------------------------------------------------------------------------------------
# state carried over between sequences


def _at_reset_value(current, reset_value) -> bool:
    if isinstance(current, torch.Tensor):
        return (isinstance(reset_value, torch.Tensor) and current.shape == reset_value.shape
                and torch.equal(current.detach(), reset_value.to(current.device, current.dtype)))
    if current is None or reset_value is None or isinstance(reset_value, torch.Tensor):
        return current is reset_value
    try:
        return bool(current == reset_value)
    except Exception:  # a state type without a plain comparison: assume it was reset
        return True


def modules_holding_state(model: nn.Module) -> list[str]:
    """Names of the stateful modules whose state differs from its reset value.

    Empty right after ``functional.reset_net(model)``; a SAF neuron that has run a step holds its
    weighted rate and :math:`c[t] > 0` until it is reset.
    """
    held = []
    for name, module in model.named_modules():
        if not isinstance(module, base.MemoryModule):
            continue
        memories = getattr(module, "_memories", {})
        reset_values = getattr(module, "_memories_rv", {})
        if any(key in reset_values and not _at_reset_value(value, reset_values[key])
               for key, value in memories.items()):
            held.append(name.removeprefix("module.") or type(module).__name__)
    return held


def _reset_if_holding_state(model: nn.Module, caller: str) -> None:
    held = modules_holding_state(model)
    if held:
        shown = ", ".join(held[:4]) + (f" and {len(held) - 4} more" if len(held) > 4 else "")
        warnings.warn(
            f"{caller}: the model still held state from an earlier sequence ({shown}); it was reset "
            "now. Call spikingjelly.activation_based.functional.reset_net(model) before every "
            "minibatch.", StateCarriedOverWarning, stacklevel=3)
        sj_functional.reset_net(model)


# ----------------------------------------------------------------------------------------------
# input checks and the calling contract


def _shape(x) -> str:
    return str(tuple(x.shape)) if isinstance(x, torch.Tensor) else type(x).__name__


def _check_x_seq(x_seq, caller: str) -> None:
    if not isinstance(x_seq, torch.Tensor) or x_seq.dim() < 2:
        raise ValueError(f"x_seq must be a tensor of shape [B, T, *], got {_shape(x_seq)}.")
    if x_seq.shape[1] == 0:
        raise ValueError(
            f"{caller}: x_seq has T=0 time steps (shape {_shape(x_seq)}); x_seq must be [B, T, *] "
            "with T >= 1.")
    if x_seq.shape[0] == 0:
        raise ValueError(f"{caller}: x_seq has an empty batch (shape {_shape(x_seq)}).")


def _check_batch(x_seq: torch.Tensor, target, target_is_sequence: bool) -> None:
    if not isinstance(target, torch.Tensor) or target.dim() == 0:
        return
    batch, steps = x_seq.shape[0], x_seq.shape[1]
    if target.shape[0] == batch:
        return
    if target.shape[0] == steps:
        raise ValueError(
            f"x_seq has shape {_shape(x_seq)} but target's batch size is {target.shape[0]}, which is "
            f"x_seq.shape[1]: x_seq looks like [T, B, *]. saf_online_training takes [B, T, *], as "
            "ottt_online_training does: pass x_seq.transpose(0, 1).")


def _describe_calls(step_mode: str, schedule: str) -> str:
    if step_mode == "s":
        return "[B, *] at each step (single-step mode)"
    return {"saf-e": "[1, B, *] at each step (multi-step mode)",
            "saf-e-acc": "[T, B, *] once (multi-step mode)",
            "saf-f": "[T-1, B, *] without a graph, then [1, B, *] (multi-step mode)",
            }.get(schedule, "[T, B, *] once (multi-step mode)")


_CONTRACT_FIX = (
    "The library feeds the time steps and reads one output per step: a model whose forward adds "
    "the time dimension itself (x.unsqueeze(0).repeat(T, ...) or .expand(T, ...)) or averages over "
    "it (.mean(0)) must drop both and return the network's output for the steps it is given; pass "
    "the input as x_seq of shape [B, T, *] (a static image x: x.unsqueeze(1).repeat(1, T, 1, 1, 1)).")


class _ContractedModel:
    """Calls ``model`` with one chunk of steps and checks the shapes of the contract.

    The first call also checks the batch dimension every SAF neuron sees, which catches a model
    that expands over T even when its output shape happens to look right.
    """

    def __init__(self, model: nn.Module, step_mode: str, batch: int, schedule: str):
        self.model, self.step_mode, self.batch, self.schedule = model, step_mode, batch, schedule
        self.first = True

    def _expected(self, x: torch.Tensor) -> tuple:
        return (self.batch,) if self.step_mode == "s" else (x.shape[0], self.batch)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if not self.first:
            return self._checked(x, _first_output(self.model(x)))
        self.first = False
        expected = self._expected(x)
        calls = _describe_calls(self.step_mode, self.schedule)

        # Leading size-1 dimensions are ignored: a model may feed a single step as [1, B, *].
        core = _strip_ones(expected)

        def check_neuron_input(module, inputs):
            seen = inputs[0]
            if (isinstance(seen, torch.Tensor)
                    and _strip_ones(tuple(seen.shape))[:len(core)] != core):
                raise ModelContractError(
                    f"a SAF neuron received shape {_shape(seen)} when the model was called with "
                    f"{_shape(x)}: the neuron's leading dimensions should be {list(expected)}. "
                    f"The model is called with {calls}. {_CONTRACT_FIX}")

        handles = [node.register_forward_pre_hook(check_neuron_input)
                   for node in stepping_modules(self.model)]
        try:
            y = _first_output(self.model(x))
        except ModelContractError:
            raise
        except torch.cuda.OutOfMemoryError:
            raise
        except (RuntimeError, ValueError, IndexError) as error:
            raise ModelContractError(
                f"the model failed on its first call, with input {_shape(x)} "
                f"({type(error).__name__}: {error}). It is called with {calls}. If its forward adds "
                f"or removes the time dimension itself, that is the cause. {_CONTRACT_FIX}"
            ) from error
        finally:
            for handle in handles:
                handle.remove()
        return self._checked(x, y)

    def _checked(self, x: torch.Tensor, y) -> torch.Tensor:
        expected = self._expected(x)
        if not isinstance(y, torch.Tensor) or tuple(y.shape[:len(expected)]) != expected:
            what = "[B, *]" if self.step_mode == "s" else "[k, B, *] for the k steps fed"
            raise ModelContractError(
                f"the model returned {_shape(y)} for input {_shape(x)}; it must return {what}, here "
                f"leading dimensions {list(expected)}. Averaging over time (.mean(0)) or a readout "
                f"that drops the time dimension breaks this. {_CONTRACT_FIX}")
        return y


def _strip_ones(shape: tuple) -> tuple:
    while shape and shape[0] == 1:
        shape = shape[1:]
    return shape


def _first_output(y):
    # OTTT networks return [output, trace]-style lists while training.
    return y[0] if isinstance(y, (list, tuple)) else y


# ----------------------------------------------------------------------------------------------
# the sequence runner


def run_sequence(model: nn.Module, x_seq: torch.Tensor, step_mode: Optional[str] = None,
                 last_only: bool = False) -> torch.Tensor:
    """Run ``x_seq`` ``[B, T, *]`` through ``model`` (reset it first); the outputs ``[B, T, *]``.

    The one sequence runner for any SpikingJelly model: single-step mode calls the model with
    ``[B, *]`` at each step, multi-step mode once with ``[T, B, *]``. ``step_mode`` defaults to
    :func:`step_mode_of`. ``last_only`` returns only the last step's output ``[B, *]`` (in single-step
    mode the earlier outputs are then not kept). Runs with whatever grad mode is active.
    """
    require_module(model, "run_sequence")
    _check_x_seq(x_seq, "run_sequence")
    step_mode = step_mode or step_mode_of(model)
    call = _ContractedModel(model, step_mode, x_seq.shape[0], "sequence")
    inputs = x_seq.transpose(0, 1)
    if step_mode == "m":
        y_seq = call(inputs)
        return y_seq[-1] if last_only else y_seq.transpose(0, 1)
    outputs = []
    for x in inputs:
        y = call(x)
        outputs = [y] if last_only else outputs + [y]
    return outputs[-1] if last_only else torch.stack(outputs, dim=1)


#: The readouts :func:`saf_inference` gives, by name.
READOUTS = ("rate", "weighted")


class _OutputSource:
    """Tells, while a model runs, whether its output is a SAF neuron's output (a weighted firing
    rate, whose recovered values are spike counts) rather than a layer after the last neuron.

    Hooks only observe: the last SAF neuron output seen is compared with what the model returns.
    """

    def __init__(self, model: nn.Module):
        self.node_output, self.spiking = None, None
        self.handles = [node.register_forward_hook(self._on_node) for node in saf_nodes(model)]
        self.handles.append(model.register_forward_hook(self._on_model))

    def _on_node(self, module, inputs, output):
        self.node_output = output

    def _on_model(self, module, inputs, output):
        output, node = _first_output(output), self.node_output
        # A view of the neuron's output (e.g. a flatten) is still its output.
        same = (isinstance(output, torch.Tensor) and isinstance(node, torch.Tensor)
                and output.data_ptr() == node.data_ptr() and output.numel() == node.numel())
        self.spiking = same if self.spiking is None else self.spiking and same

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def _check_readout(readout: str) -> None:
    if readout not in READOUTS:
        raise ValueError(f"readout={readout!r} is unknown; valid readouts: {', '.join(READOUTS)}.")


def output_is_spiking(model: nn.Module, x_seq: torch.Tensor) -> bool:
    r"""Whether ``model``'s output is a SAF neuron's output (so its recovered values are spikes).

    * **中文**: 用 ``x_seq`` 的第一个样本在 eval 模式、无梯度下运行一次（之后恢复各模块的 train/eval 标志并重置
      网络），判断网络的输出是否直接来自一个 :class:`SAFNode`。是则 :func:`~spikingjelly_saf.functional.rate_readout`
      可用 ``spikes=True`` 取整脉冲计数。
    * **English**: runs the first sample of ``x_seq`` once, in eval mode without gradients (each
      module's train/eval flag is restored and the network reset afterwards), and tells whether the
      network's output comes straight from a :class:`SAFNode`. When it does,
      :func:`~spikingjelly_saf.functional.rate_readout` may round the spike counts (``spikes=True``).
    """
    _check_x_seq(x_seq, "output_is_spiking")
    flags = [(m, m.training) for m in model.modules()]
    source = _OutputSource(model)
    sj_functional.reset_net(model)
    try:
        model.eval()
        with torch.no_grad():
            run_sequence(model, x_seq[:1], model_step_mode(model))
    finally:
        source.remove()
        for module, training in flags:
            module.training = training
        sj_functional.reset_net(model)
    return bool(source.spiking)


def saf_inference(model: nn.Module, x_seq: torch.Tensor, readout: str = "rate",
                  check_finite: bool = True) -> torch.Tensor:
    r"""
    **API Language** - :ref:`中文 <saf_inference-cn>` | :ref:`English <saf_inference-en>`

    ----

    .. _saf_inference-cn:

    * **中文**

    ``saf_online_training`` 的推理版本：重置网络，在 ``torch.no_grad`` 下按网络的步进模式运行整个序列
    ``x_seq`` （``[B, T, *]``），返回预测分数（``[B, C]``），之后再次重置。含 BatchNorm 或 Dropout 的网络请先调用
    ``model.eval()``。

    默认读出 ``readout='rate'`` 是输出的发放率：恢复出的瞬时输出 :math:`o[t]` 在 T 上的均值
    （:func:`~spikingjelly_saf.functional.rate_readout`），即 ``to_lif`` 部署后的 LIF 网络按 SpikingJelly 的常规
    方式 ``out_seq.mean(0)`` 读出的分数。输出层是神经元时脉冲计数先取整，两者的 argmax（包括计数相等的并列）完全相同。
    ``readout='weighted'`` 返回最后的加权平均输出 :math:`\bar O[T]` （SAF-F 的训练目标）。

    Shape:
        - ``x_seq``: ``[B, T, *]``
        - 返回值：``[B, C]``

    Example::

        >>> scores = saf_inference(net, x_seq)                 # 发放率；网络已重置，之后再次重置
        >>> prediction = scores.argmax(1)
        >>> lif_net = to_lif(net)                              # 部署
        >>> functional.reset_net(lif_net)
        >>> lif_scores = run_sequence(lif_net, x_seq).mean(1)  # 与 scores 的 argmax 相同
        >>> obar_T = saf_inference(net, x_seq, readout="weighted")

    ----

    .. _saf_inference-en:

    * **English**

    The evaluation counterpart of :func:`saf_online_training`: reset the network, run the whole
    sequence ``x_seq`` ``[B, T, *]`` under ``torch.no_grad`` in the network's step mode, and return
    the prediction scores ``[B, C]`` (``scores.argmax(1)`` is the class). The network is reset again
    afterwards, so no state leaks into the next sequence. Call ``model.eval()`` first where BatchNorm
    or Dropout should be in evaluation mode; this function leaves the train/eval flag alone.

    The default ``readout='rate'`` is the firing rate of the output: the mean over T of the
    recovered instantaneous output :math:`o[t] = c[t]\bar O[t] - \lambda c[t-1]\bar O[t-1]`
    (:func:`~spikingjelly_saf.functional.rate_readout`), which is what the LIF network deployed with
    :func:`~spikingjelly_saf.to_lif` gives when read the way SpikingJelly reads any network,
    ``out_seq.mean(0)``. Where the output layer is a neuron (seen while the network runs) the spike
    counts are rounded first, so the two predict the same class on every sample, ties between equal
    counts included. ``readout='weighted'`` returns the last weighted-average output
    :math:`\bar O[T]` instead, SAF-F's training target (weights :math:`\lambda^{T-t}`, dominated by
    the last steps).

    :param model: a network of :class:`SAFNode`, possibly wrapped in ``DistributedDataParallel``
    :param x_seq: input of shape ``[B, T, *]`` with ``T >= 1``
    :param readout: ``'rate'`` (default) or ``'weighted'`` (:data:`READOUTS`)
    :param check_finite: refuse an input holding NaN or infinity (``ValueError``)
    :return: the scores, shape ``[B, C]``

    Shape:
        - ``x_seq``: ``[B, T, *]``
        - returns: ``[B, C]``

    Example::

        >>> scores = saf_inference(net, x_seq)                 # firing rate; resets before and after
        >>> prediction = scores.argmax(1)
        >>> lif_net = to_lif(net)                              # deploy
        >>> functional.reset_net(lif_net)
        >>> lif_scores = run_sequence(lif_net, x_seq).mean(1)  # the same argmax as scores
        >>> obar_T = saf_inference(net, x_seq, readout="weighted")
    """
    require_module(model, "saf_inference")
    _check_x_seq(x_seq, "saf_inference")
    _check_readout(readout)
    if check_finite:
        _check_finite_input(x_seq, "saf_inference")
    step_mode = model_step_mode(model)
    sj_functional.reset_net(model)
    try:
        with torch.no_grad():
            if readout == "weighted":
                return run_sequence(model, x_seq, step_mode, last_only=True)
            source = _OutputSource(model)
            try:
                y_seq = run_sequence(model, x_seq, step_mode)
            finally:
                source.remove()
            return saf_functional.rate_readout(y_seq, readout_decay(model), dim=1,
                                               spikes=bool(source.spiking))
    finally:
        sj_functional.reset_net(model)


# ----------------------------------------------------------------------------------------------
# the three schedules


class _Minibatch:
    """What every schedule needs: the contracted model, inputs ``[T, B, *]`` and per-step targets."""

    def __init__(self, model, optimizer, x_seq, target, f_loss, target_is_sequence, grad_scaler,
                 step_mode, schedule, check_finite=True):
        self.model, self.optimizer, self.f_loss = model, optimizer, f_loss
        self.grad_scaler, self.step_mode = grad_scaler, step_mode
        self.check_finite = check_finite
        self.first_bad_loss: Optional[tuple[int, float]] = None
        self.time_step = 0
        self.inputs = x_seq.transpose(0, 1)
        self.steps = x_seq.shape[1]
        self.target, self.target_is_sequence = target, target_is_sequence
        self.decay = readout_decay(model)
        self.forward = _ContractedModel(model, step_mode, x_seq.shape[0], schedule)

    def target_at(self, t: int) -> torch.Tensor:
        return self.target[:, t] if self.target_is_sequence else self.target

    def step_input(self, t: int) -> torch.Tensor:
        return self.inputs[t] if self.step_mode == "s" else self.inputs[t:t + 1]

    def step(self, t: int) -> torch.Tensor:
        """The output of step ``t`` alone, ``[B, *]``, in either step mode."""
        self.time_step = t
        y = self.forward(self.step_input(t))
        return y if self.step_mode == "s" else y[0]

    def backward(self, loss: torch.Tensor) -> None:
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
            raise ValueError(
                f"f_loss must return a single number (a scalar tensor), got {_shape(loss)}; reduce it, "
                "e.g. with reduction='mean' or .mean().")
        if self.check_finite and self.first_bad_loss is None and not torch.isfinite(loss.detach()).all():
            self.first_bad_loss = (self.time_step, float(loss.detach()))
        # Backward even on a bad loss: under DistributedDataParallel every process must take part in
        # the gradient all-reduce, and the non-finite gradient then stops all of them together.
        (self.grad_scaler.scale(loss) if self.grad_scaler is not None else loss).backward()

    def _check_before_step(self) -> None:
        if self.first_bad_loss is not None:
            step, value = self.first_bad_loss
            raise NonFiniteTrainingError("loss", step, f"f_loss returned {value}",
                                         "nan" if math.isnan(value) else "inf")
        if self.grad_scaler is not None:
            return  # a GradScaler skips steps with non-finite gradients by design
        check_gradients_finite(self.model, self.optimizer, self.time_step)

    def optimizer_step(self) -> None:
        if self.check_finite:
            self._check_before_step()
        if self.grad_scaler is not None:
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()
        else:
            self.optimizer.step()

    def deferred_sync(self, synchronise: bool):
        # DDP decides in the forward whether the backward synchronises: wrap both.
        no_sync = getattr(self.model, "no_sync", None)
        return contextlib.nullcontext() if synchronise or no_sync is None else no_sync()


def check_gradients_finite(model: nn.Module, optimizer: torch.optim.Optimizer,
                           time_step: Optional[int] = None) -> None:
    r"""
    **API Language** - :ref:`中文 <check_gradients_finite-cn>` | :ref:`English <check_gradients_finite-en>`

    ----

    .. _check_gradients_finite-cn:

    * **中文**

    在 ``optimizer.step()`` 之前调用：若优化器将要使用的某个梯度含 NaN 或无穷大，抛出
    :class:`NonFiniteTrainingError` （并指出第一个这样的参数），权重保持不变。
    :func:`saf_online_training` 在每次优化器更新前都做同样的检查；自己的训练循环（OTTT、BPTT）也可调用。

    ----

    .. _check_gradients_finite-en:

    * **English**

    Call it before ``optimizer.step()``: if a gradient the optimizer is about to apply holds NaN or
    infinity, raise :class:`NonFiniteTrainingError` naming the first such parameter of ``model``, so
    the weights keep their last finite values. :func:`saf_online_training` makes this check before
    every optimizer step; a loop of your own (OTTT, BPTT) can make the same one. It reads every
    gradient once.

    :param model: the model whose parameter names the error gives
    :param optimizer: the optimizer whose parameters' gradients are checked
    :param time_step: the time step the error reports, if any
    :raises NonFiniteTrainingError: with ``what='gradient'``
    """
    gradients = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
    if not gradients or _sums_are_finite(gradients):
        return
    largest = float(torch.nn.utils.get_total_norm(gradients, norm_type=math.inf))
    if math.isfinite(largest):
        return
    name = next((name for name, p in model.named_parameters()
                 if p.grad is not None and not bool(torch.isfinite(p.grad).all())), None)
    bad = "a parameter outside the model" if name is None else name
    raise NonFiniteTrainingError("gradient", time_step, f"the gradient of {bad} is {largest}",
                                 "nan" if math.isnan(largest) else "inf", name)


def _sums_are_finite(tensors: list[torch.Tensor]) -> bool:
    """``True`` proves every element finite: a NaN or an infinity makes its tensor's sum non-finite.
    ``False`` proves nothing (finite values can overflow a sum); the exact check then decides. One
    sum per tensor reads it once and vectorizes, about ten times faster on the CPU than the
    maximum-magnitude norm."""
    device = tensors[0].device
    sums = torch.stack([t.sum(dtype=torch.float32).to(device) for t in tensors])
    return bool(torch.isfinite(sums.sum()))


def train_saf_e(batch: _Minibatch) -> tuple[torch.Tensor, torch.Tensor]:
    r"""SAF-E: at every step a loss on the recovered :math:`o[t]`, a backward and an optimizer step."""
    recovery = OutputRecovery(batch.decay)
    outputs, total_loss = [], None
    for t in range(batch.steps):
        batch.optimizer.zero_grad()
        output = batch.step(t)
        loss = batch.f_loss(recovery(output), batch.target_at(t))
        batch.backward(loss)
        batch.optimizer_step()
        outputs.append(output.detach())
        total_loss = loss.detach() if total_loss is None else total_loss + loss.detach()
    return total_loss, torch.stack(outputs, dim=1)


def train_saf_e_acc(batch: _Minibatch) -> tuple[torch.Tensor, torch.Tensor]:
    r"""SAF-E-acc: SAF-E's losses at every step, gradients summed, one optimizer step.

    In multi-step mode the whole sequence goes through every layer at once (``T x B`` batched):
    one forward and one backward.
    """
    batch.optimizer.zero_grad()
    if batch.step_mode == "m":
        output_seq = batch.forward(batch.inputs)
        instantaneous = saf_functional.recover_instantaneous_seq(output_seq, batch.decay)
        loss = sum(batch.f_loss(instantaneous[t], batch.target_at(t)) for t in range(batch.steps))
        batch.backward(loss)
        batch.optimizer_step()
        return loss.detach(), output_seq.detach().transpose(0, 1).contiguous()
    recovery = OutputRecovery(batch.decay)
    outputs, total_loss = [], None
    for t in range(batch.steps):
        with batch.deferred_sync(t == batch.steps - 1):
            output = batch.step(t)
            loss = batch.f_loss(recovery(output), batch.target_at(t))
            batch.backward(loss)
        outputs.append(output.detach())
        total_loss = loss.detach() if total_loss is None else total_loss + loss.detach()
    batch.optimizer_step()
    return total_loss, torch.stack(outputs, dim=1)


def train_saf_f(batch: _Minibatch) -> tuple[torch.Tensor, torch.Tensor]:
    r"""SAF-F: steps ``1..T-1`` without a graph, one loss on :math:`\bar O[T]`, one optimizer step."""
    batch.optimizer.zero_grad()
    outputs = []
    steps = batch.steps
    with torch.no_grad():
        if steps > 1 and batch.step_mode == "m":
            outputs.extend(batch.forward(batch.inputs[:steps - 1]).unbind(0))
        else:
            outputs.extend(batch.step(t) for t in range(steps - 1))
    output = batch.step(steps - 1)
    loss = batch.f_loss(output, batch.target_at(steps - 1))
    batch.backward(loss)
    batch.optimizer_step()
    outputs.append(output.detach())
    return loss.detach(), torch.stack(outputs, dim=1)


#: The SAF schedules by name: ``schedule(minibatch) -> (loss, y_seq)``.
SCHEDULES: dict[str, Callable[[_Minibatch], tuple[torch.Tensor, torch.Tensor]]] = {
    "saf-e": train_saf_e,
    "saf-e-acc": train_saf_e_acc,
    "saf-f": train_saf_f,
}

#: ``saf-e``: a loss and an optimizer step at every time step (like OTTT_O).
#: ``saf-e-acc``: a loss at every step, one optimizer step per minibatch (like OTTT_A).
#: ``saf-f``: one loss on the final weighted-average output; earlier steps run without a graph.
METHODS: Sequence[str] = tuple(SCHEDULES)
#: The SAF methods that step the optimizer at every time step (T updates per minibatch).
UPDATES_EVERY_STEP = frozenset({"saf-e"})


def saf_online_training(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    x_seq: torch.Tensor,
    target: torch.Tensor,
    f_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    method: str = "saf-e",
    target_is_sequence: bool = False,
    grad_scaler: Optional["torch.amp.GradScaler"] = None,
    check_finite: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""
    **API Language** - :ref:`中文 <saf_online_training-cn>` | :ref:`English <saf_online_training-en>`

    ----

    .. _saf_online_training-cn:

    * **中文**

    用 SAF 训练一个小批量，接口与 ``ottt_online_training`` 相同。``x_seq`` 形状为 ``[B, T, *]``。
    调用前请 ``functional.reset_net(model)``；若网络仍保留上一个序列的状态，本函数会重置它并发出
    ``StateCarriedOverWarning``。网络的调用方式：单步模式下每步 ``[B, *]``；多步模式下 saf-e 每步
    ``[1, B, *]``，saf-e-acc 一次 ``[T, B, *]``，saf-f 先 ``[T-1, B, *]`` 再 ``[1, B, *]``。网络本身不得
    扩展或平均时间维。返回的 ``y_seq`` 为 :math:`\bar O[1..T]`；预测分数是其发放率
    ``functional.rate_readout(y_seq, decay, dim=1)``（与 :func:`saf_inference` 相同）。

    Shape:
        - ``x_seq``: ``[B, T, *]``；``target``: ``[B, *]``，或 ``target_is_sequence`` 时 ``[B, T, *]``
        - 返回 ``(loss, y_seq)``：标量与 ``[B, T, C]``

    Example::

        >>> import torch, torch.nn.functional as F
        >>> from spikingjelly.activation_based import functional
        >>> optimizer = torch.optim.SGD(net.parameters(), lr=0.1 / T, momentum=0.9)
        >>> for x_seq, label in loader:                      # x_seq: [B, T, C, H, W]
        ...     loss, y_seq = saf_online_training(net, optimizer, x_seq, label, F.cross_entropy,
        ...                                       method="saf-e")
        ...     functional.reset_net(net)

    ----

    .. _saf_online_training-en:

    * **English**

    Train one minibatch with SAF; the interface follows ``ottt_online_training``.

    **How the model is called.** ``x_seq`` is ``[B, T, *]``; the model receives

    ========================  ===================================  =============================
    step mode of its neurons  call(s)                              each call returns
    ========================  ===================================  =============================
    ``'s'`` (any method)      ``[B, *]`` at each of the T steps    ``[B, C]``
    ``'m'``, ``saf-e``        ``[1, B, *]`` at each step            ``[1, B, C]``
    ``'m'``, ``saf-e-acc``    ``[T, B, *]`` once                    ``[T, B, C]``
    ``'m'``, ``saf-f``        ``[T-1, B, *]`` (no graph), then      ``[T-1, B, C]``,
                              ``[1, B, *]``                         ``[1, B, C]``
    ========================  ===================================  =============================

    so the model must neither add the time dimension itself (``x.unsqueeze(0).repeat(T, ...)``, as
    SpikingJelly's Fashion-MNIST ``CSNN`` does) nor average over it (``.mean(0)``): drop both and pass
    static images as ``x.unsqueeze(1).repeat(1, T, 1, 1, 1)``. A model that breaks this raises
    :class:`ModelContractError` saying what to change; ``x_seq`` given as ``[T, B, *]`` is recognised
    from the target's batch size and named.

    **Reset.** Reset the model (``functional.reset_net``) before each minibatch. A model whose
    neurons still hold state from an earlier sequence is reset here, with a
    :class:`StateCarriedOverWarning`, so that state never leaks between minibatches silently.

    :param model: a network of :class:`SAFNode` (single- or multi-step), possibly wrapped in
        ``DistributedDataParallel``. Its output is the weighted average :math:`\bar O[t]`.
    :param optimizer: the optimizer; this function zeroes gradients and steps it
    :param x_seq: input of shape ``[B, T, *]``, ``T >= 1``
    :param target: the target of every step, or with ``target_is_sequence`` one per step ``[B, T, *]``
    :param f_loss: ``f_loss(output, target) -> loss``
    :param method: ``'saf-e'``, ``'saf-e-acc'`` or ``'saf-f'`` (see :data:`METHODS`).
        SAF-E methods apply ``f_loss`` to the recovered instantaneous output :math:`o[t]` (the
        LIF/OTTT output); SAF-F applies it once to :math:`\bar O[T]`.
    :param target_is_sequence: ``target`` holds one target per step
    :param grad_scaler: an optional ``torch.amp.GradScaler`` for mixed precision
    :param check_finite: stop with :class:`NonFiniteTrainingError` on a NaN or infinite input (before
        the first step), loss or gradient (before the optimizer step that would apply it; with a
        ``grad_scaler`` the scaler's own skipping handles gradients). Under SAF-E the updates of
        earlier time steps of the minibatch stay applied. Each check waits for the device once per
        optimizer step; ``False`` turns them off.
    :return: ``(loss, y_seq)``: the summed loss (detached) and the weighted-average outputs
        :math:`\bar O[1..T]` ``[B, T, *]``. The prediction scores are their firing rate,
        ``functional.rate_readout(y_seq, decay, dim=1)`` (what :func:`saf_inference` returns and
        what the ``to_lif`` twin's ``out_seq.mean(0)`` equals); ``y_seq[:, -1]`` is :math:`\bar O[T]`.

    SAF-E takes T optimizer steps per minibatch (like OTTT_O): its learning rate is usually about
    T times smaller than a once-per-minibatch method's.

    Under ``DistributedDataParallel``, ``saf-e-acc`` and ``saf-f`` synchronise gradients once per
    minibatch; ``saf-e`` steps the optimizer at every time step, so it synchronises every step.

    Shape:
        - ``x_seq``: ``[B, T, *]``; ``target``: ``[B, *]``, or ``[B, T, *]`` with ``target_is_sequence``
        - returns ``(loss, y_seq)``: a scalar and ``[B, T, C]``

    Example::

        >>> import torch, torch.nn.functional as F
        >>> from spikingjelly.activation_based import functional
        >>> optimizer = torch.optim.SGD(net.parameters(), lr=0.1 / T, momentum=0.9)
        >>> for x_seq, label in loader:                      # x_seq: [B, T, C, H, W]
        ...     loss, y_seq = saf_online_training(net, optimizer, x_seq, label, F.cross_entropy,
        ...                                       method="saf-e")
        ...     functional.reset_net(net)
    """
    require_module(model, "saf_online_training")
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"saf_online_training: optimizer must be a torch.optim.Optimizer, got "
                        f"{type(optimizer).__name__}.")
    if not callable(f_loss):
        raise TypeError(f"saf_online_training: f_loss must be callable, f_loss(output, target) -> "
                        f"loss, got {type(f_loss).__name__}.")
    if method not in SCHEDULES:
        raise ValueError(f"method={method!r} is unknown; valid methods: {', '.join(METHODS)}.")
    _check_x_seq(x_seq, "saf_online_training")
    _check_batch(x_seq, target, target_is_sequence)
    steps = x_seq.shape[1]
    if target_is_sequence and (target.dim() < 2 or target.shape[1] != steps):
        raise ValueError(
            f"target_is_sequence=True needs target of shape [B, T={steps}, *], got {tuple(target.shape)}."
        )
    if check_finite and x_seq.is_floating_point() and not bool(torch.isfinite(x_seq).all()):
        bad = int((~torch.isfinite(x_seq)).sum())
        raise NonFiniteTrainingError("input", None, f"x_seq holds {bad} NaN or infinite value(s)",
                                     _nan_or_inf(x_seq))
    step_mode = model_step_mode(model)
    _reset_if_holding_state(model, "saf_online_training")
    batch = _Minibatch(model, optimizer, x_seq, target, f_loss, target_is_sequence, grad_scaler,
                       step_mode, method, check_finite)
    return SCHEDULES[method](batch)
