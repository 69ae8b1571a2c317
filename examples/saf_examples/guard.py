r"""
Finiteness guards beyond the loss: a NaN or infinity in the input, the gradients or the weights
can leave the loss finite (a silent network) while every later checkpoint is garbage. These checks
stop the run before such a value reaches an optimizer step or a checkpoint.
"""

from __future__ import annotations

from typing import Callable, Iterable, Optional

import torch
import torch.nn as nn

from spikingjelly_saf.recording import unwrapped_name

__all__ = ["NonFiniteStateError", "first_nonfinite", "check_model_finite", "StepGuard",
           "FiniteBatches"]


class NonFiniteStateError(RuntimeError):
    """A NaN or infinity in the input, a gradient or a parameter; ``where`` says which."""

    def __init__(self, where: str, epoch: Optional[int] = None, batch: Optional[int] = None,
                 value: str = "nan or inf"):
        at = ""
        if epoch is not None:
            at = f" at epoch {epoch}" + (f", minibatch {batch}" if batch is not None else "")
        super().__init__(f"{where} became {value}{at}")
        self.where, self.epoch, self.batch = where, epoch, batch


def _all_finite(tensors: Iterable[torch.Tensor]) -> bool:
    tensors = [t.detach() for t in tensors if t.is_floating_point() or t.is_complex()]
    if not tensors:
        return True
    # One device-side reduction and a single host synchronisation for the whole model.
    flags = torch.stack([torch.isfinite(t).all() for t in tensors])
    return bool(flags.all())


def first_nonfinite(named: Iterable) -> Optional[tuple]:
    """``(name, 'nan' or 'inf')`` of the first tensor holding a NaN or infinity, or ``None``."""
    named = [(name, t) for name, t in named if t is not None]
    if _all_finite(t for _, t in named):
        return None
    for name, tensor in named:
        if (tensor.is_floating_point() or tensor.is_complex()) and not torch.isfinite(tensor).all():
            return name, _kind(tensor)
    return None


def _kind(tensor: torch.Tensor) -> str:
    return "nan" if bool(torch.isnan(tensor).any()) else "inf"


def check_model_finite(model: nn.Module, epoch: Optional[int] = None) -> None:
    """Raise :class:`NonFiniteStateError` when a parameter or buffer of ``model`` is not finite."""
    found = first_nonfinite((unwrapped_name(n), t) for n, t in
                            list(model.named_parameters()) + list(model.named_buffers()))
    if found is not None:
        raise NonFiniteStateError(f"parameter {found[0]}", epoch, value=found[1])


class StepGuard:
    """Checks every gradient and parameter before each ``optimizer.step()`` (a step pre-hook, so
    every method's own training step is guarded without changing it).

    A non-finite value turns that step and every later one into a no-op (the gradients are dropped,
    so the weights stay the last finite ones) and is kept in :attr:`pending`; :meth:`raise_pending`
    raises it between minibatches. Raising only then lets the loss guard, which runs right after
    the training step, name a non-finite loss as the cause. ``all_finite(flag)`` turns the local
    verdict into the verdict of every process under DDP; ``position()`` gives ``(epoch, minibatch)``.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, model: nn.Module,
                 all_finite: Callable[[bool], bool] = bool,
                 position: Callable[[], tuple] = lambda: (None, None)):
        self.model, self.all_finite, self.position = model, all_finite, position
        self.pending: Optional[NonFiniteStateError] = None
        self._handle = optimizer.register_step_pre_hook(self._check)

    def _error(self, named) -> NonFiniteStateError:
        epoch, batch = self.position()
        gradient = first_nonfinite((unwrapped_name(n), p.grad) for n, p in named)
        if gradient is not None:
            return NonFiniteStateError(f"the gradient of {gradient[0]}", epoch, batch, gradient[1])
        parameter = first_nonfinite((unwrapped_name(n), p) for n, p in named)
        if parameter is not None:
            return NonFiniteStateError(f"parameter {parameter[0]}", epoch, batch, parameter[1])
        return NonFiniteStateError("a gradient or parameter on another process", epoch, batch)

    def _check(self, optimizer, args, kwargs) -> None:
        named = list(self.model.named_parameters())
        if self.pending is None:
            ok = _all_finite([p.grad for _, p in named if p.grad is not None] + [p for _, p in named])
            if self.all_finite(ok):
                return
            self.pending = self._error(named)
        for group in optimizer.param_groups:
            for parameter in group["params"]:
                parameter.grad = None

    def raise_pending(self) -> None:
        if self.pending is not None:
            error, self.pending = self.pending, None
            raise error

    def remove(self) -> None:
        self._handle.remove()


class FiniteBatches:
    """Wraps a data loader and checks that every input batch is finite.

    With ``all_finite`` (the training loader, where every process serves the same number of
    minibatches) a bad batch raises :class:`NonFiniteStateError` on every process before the model
    sees it. Without it (the test loader, whose shards may differ in length under DDP) the first
    bad batch is remembered and :meth:`raise_if_bad` raises after the pass. ``between()`` runs
    before each minibatch and after the last (the step guard raises there)."""

    def __init__(self, loader, split: str, epoch: Callable[[], Optional[int]] = lambda: None,
                 all_finite: Optional[Callable[[bool], bool]] = None,
                 between: Callable[[], None] = lambda: None):
        self.loader, self.split, self.epoch, self.all_finite = loader, split, epoch, all_finite
        self.between = between
        self.batch_index: Optional[int] = None
        self.bad_batch: Optional[int] = None

    def __len__(self) -> int:
        return len(self.loader)

    def __getattr__(self, name):
        return getattr(self.loader, name)

    def _error(self, index: int) -> NonFiniteStateError:
        return NonFiniteStateError(f"the {self.split} input (a value in the data)", self.epoch(),
                                   index)

    def __iter__(self):
        self.bad_batch = None
        for index, (x, label) in enumerate(self.loader):
            self.between()
            self.batch_index = index
            finite = _all_finite([x])
            if self.all_finite is not None:
                if not self.all_finite(finite):
                    raise self._error(index) if not finite else NonFiniteStateError(
                        f"the {self.split} input on another process", self.epoch(), index)
            elif not finite and self.bad_batch is None:
                self.bad_batch = index
            yield x, label
        self.between()

    def raise_if_bad(self, all_finite: Callable[[bool], bool] = bool) -> None:
        """After a pass without ``all_finite``: raise on every process if any saw a bad batch."""
        if not all_finite(self.bad_batch is None):
            raise self._error(self.bad_batch) if self.bad_batch is not None else NonFiniteStateError(
                f"the {self.split} input on another process", self.epoch())
