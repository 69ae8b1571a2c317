r"""
``saf_online_training``: one minibatch of SAF-E, SAF-E-acc or SAF-F, shaped like SpikingJelly's
``learning.online_learning.ottt_online_training``.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Optional

import torch
import torch.nn as nn

from . import functional as F
from .layer import OutputRecovery
from .neuron import SAFNode

__all__ = ["METHODS", "saf_online_training", "saf_nodes", "model_step_mode"]

#: ``saf-e``: a loss and an optimizer step at every time step (like OTTT_O).
#: ``saf-e-acc``: a loss at every step, one optimizer step per minibatch (like OTTT_A).
#: ``saf-f``: one loss on the final weighted-average output; earlier steps run without a graph.
METHODS = ("saf-e", "saf-e-acc", "saf-f")


def saf_nodes(model: nn.Module) -> list[SAFNode]:
    return [m for m in model.modules() if isinstance(m, SAFNode)]


def model_step_mode(model: nn.Module) -> str:
    """The step mode shared by the model's SAF neurons."""
    modes = {node.step_mode for node in saf_nodes(model)}
    if not modes:
        raise ValueError(
            "model contains no SAFNode. Build it with spiking_neuron=SAFNode or convert it with "
            "spikingjelly_saf.to_saf(model)."
        )
    if len(modes) > 1:
        raise ValueError(
            f"model mixes step modes {sorted(modes)}; call "
            "spikingjelly.activation_based.functional.set_step_mode(model, 's' or 'm')."
        )
    return modes.pop()


def _first_output(y):
    return y[0] if isinstance(y, (list, tuple)) else y


def _backward(loss: torch.Tensor, grad_scaler) -> None:
    (grad_scaler.scale(loss) if grad_scaler is not None else loss).backward()


def _optimizer_step(optimizer, grad_scaler) -> None:
    if grad_scaler is not None:
        grad_scaler.step(optimizer)
        grad_scaler.update()
    else:
        optimizer.step()


def saf_online_training(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    x_seq: torch.Tensor,
    target: torch.Tensor,
    f_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    method: str = "saf-e",
    target_is_sequence: bool = False,
    grad_scaler: Optional["torch.amp.GradScaler"] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""
    **API Language** - :ref:`中文 <saf_online_training-cn>` | :ref:`English <saf_online_training-en>`

    ----

    .. _saf_online_training-cn:

    * **中文**

    用 SAF 训练一个小批量，接口与 ``ottt_online_training`` 相同。``x_seq`` 形状为 ``[B, T, *]``。
    调用前后请 ``functional.reset_net(model)``。

    ----

    .. _saf_online_training-en:

    * **English**

    Train one minibatch with SAF; the interface follows ``ottt_online_training``. Reset the model
    (``functional.reset_net``) before each minibatch.

    :param model: a network of :class:`SAFNode` (single- or multi-step), possibly wrapped in
        ``DistributedDataParallel``. Its output is the weighted average :math:`\bar O[t]`.
    :param optimizer: the optimizer; this function zeroes gradients and steps it
    :param x_seq: input of shape ``[B, T, *]``
    :param target: the target of every step, or with ``target_is_sequence`` one per step ``[B, T, *]``
    :param f_loss: ``f_loss(output, target) -> loss``
    :param method: ``'saf-e'``, ``'saf-e-acc'`` or ``'saf-f'`` (see :data:`METHODS`).
        SAF-E methods apply ``f_loss`` to the recovered instantaneous output :math:`o[t]` (the
        LIF/OTTT output); SAF-F applies it once to :math:`\bar O[T]`.
    :param grad_scaler: an optional ``torch.amp.GradScaler`` for mixed precision
    :return: ``(loss, y_seq)``: the summed loss (detached) and the weighted-average outputs
        ``[B, T, *]``; predict from ``y_seq[:, -1]``.

    Under ``DistributedDataParallel``, ``saf-e-acc`` and ``saf-f`` synchronise gradients once per
    minibatch; ``saf-e`` steps the optimizer at every time step, so it synchronises every step.
    """
    if method not in METHODS:
        raise ValueError(f"method={method!r} is unknown; valid methods: {', '.join(METHODS)}.")
    if not isinstance(x_seq, torch.Tensor) or x_seq.dim() < 2:
        raise ValueError(
            "x_seq must be a tensor of shape [B, T, *], got "
            f"{tuple(x_seq.shape) if isinstance(x_seq, torch.Tensor) else type(x_seq).__name__}."
        )
    steps = x_seq.shape[1]
    if target_is_sequence and (target.dim() < 2 or target.shape[1] != steps):
        raise ValueError(
            f"target_is_sequence=True needs target of shape [B, T={steps}, *], got {tuple(target.shape)}."
        )
    step_mode = model_step_mode(model)
    decay = saf_nodes(model)[-1].decay
    inputs = x_seq.transpose(0, 1)

    def target_at(t: int) -> torch.Tensor:
        return target[:, t] if target_is_sequence else target

    def forward(x: torch.Tensor) -> torch.Tensor:
        # One call: x is [B, *] in single-step mode and [k, B, *] in multi-step mode.
        return _first_output(model(x))

    def step_input(t: int) -> torch.Tensor:
        return inputs[t] if step_mode == "s" else inputs[t:t + 1]

    def step_output(y: torch.Tensor) -> torch.Tensor:
        return y if step_mode == "s" else y[0]

    def deferred_sync(is_last: bool):
        no_sync = getattr(model, "no_sync", None)
        return contextlib.nullcontext() if is_last or no_sync is None else no_sync()

    outputs = []
    total_loss = torch.zeros((), device=x_seq.device)

    if method == "saf-f":
        optimizer.zero_grad()
        with torch.no_grad():
            if steps > 1:
                if step_mode == "m":
                    outputs.extend(forward(inputs[:steps - 1]).unbind(0))
                else:
                    outputs.extend(forward(inputs[t]) for t in range(steps - 1))
        output = step_output(forward(step_input(steps - 1)))
        loss = f_loss(output, target_at(steps - 1))
        _backward(loss, grad_scaler)
        _optimizer_step(optimizer, grad_scaler)
        outputs.append(output.detach())
        total_loss = loss.detach()

    elif method == "saf-e-acc" and step_mode == "m":
        # T x B batched into every layer: one forward and one backward for the whole sequence.
        optimizer.zero_grad()
        output_seq = forward(inputs)
        instantaneous = F.recover_instantaneous_seq(output_seq, decay)
        loss = sum(f_loss(instantaneous[t], target_at(t)) for t in range(steps))
        _backward(loss, grad_scaler)
        _optimizer_step(optimizer, grad_scaler)
        outputs.extend(output_seq.detach().unbind(0))
        total_loss = loss.detach()

    else:
        online = method == "saf-e"
        recovery = OutputRecovery(decay)
        if not online:
            optimizer.zero_grad()
        for t in range(steps):
            if online:
                optimizer.zero_grad()
            # DDP decides in the forward whether the backward synchronises: wrap both.
            with deferred_sync(online or t == steps - 1):
                output = step_output(forward(step_input(t)))
                loss = f_loss(recovery(output), target_at(t))
                _backward(loss, grad_scaler)
            if online:
                _optimizer_step(optimizer, grad_scaler)
            outputs.append(output.detach())
            total_loss = total_loss + loss.detach()
        if not online:
            _optimizer_step(optimizer, grad_scaler)

    return total_loss, torch.stack(outputs, dim=1)
