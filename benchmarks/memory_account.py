"""Exact live tensor bytes during a training minibatch, and what is alive at the peak.

The CPU counterpart of ``torch.cuda.max_memory_allocated``, with the peak itemised. A
:class:`LiveTensorAccount` is a ``TorchDispatchMode``: it sees the output of every operator
(forward, backward through the autograd engine, optimizer), counts each new storage once (views
share a storage) and drops it from the count when the storage is freed (a ``weakref.finalize`` on
the storage, whose Python object lives exactly as long as the storage itself). Its running total
is the number of bytes held by live tensors between operators; memory an operator allocates and
frees inside itself is not seen, nor is anything allocated outside PyTorch's tensors (the
allocator's slack, oneDNN's scratch, the Python objects).

At the peak it classifies every live storage, first match wins:

* ``parameters`` (and buffers), ``gradients`` (``p.grad``), ``optimizer state`` (the momentum
  buffers), each assigned to the layer that owns the parameter;
* ``input`` (the minibatch and its targets);
* ``carried state``: tensors a module holds between calls (SpikingJelly memories such as a
  neuron's ``v``, a trace, SAF's ``abar`` and ``last_input``), per module;
* ``saved for backward``: storages the autograd graph holds (seen by a
  ``saved_tensors_hooks`` pack hook, which runs right after the operator), per module that first
  saved them;
* ``transient``: everything else, per module that produced it (``backward`` and ``optimizer``
  outside modules).

Usage (``run_minibatch`` trains one minibatch)::

    account = LiveTensorAccount(model, optimizer, inputs=(x_seq, target))
    with account:
        run_minibatch()
    report = account.report()
"""

from __future__ import annotations

import ctypes

import weakref
from collections import defaultdict
from typing import Iterable, Optional

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

__all__ = ["LiveTensorAccount", "CATEGORIES", "MALLOC_ENVIRONMENT", "fix_malloc_thresholds",
           "summarize_account"]

CATEGORIES = ("parameters", "gradients", "optimizer state", "input", "carried state",
              "saved for backward", "transient")

#: glibc's malloc thresholds fixed, for the resident-set measure: without them glibc raises its
#: mmap threshold (and with it the trim threshold) at run time whenever a large block is freed, so
#: the same training step leaves a different resident set from one run to the next. The names are
#: glibc's environment variables; :func:`fix_malloc_thresholds` sets the same values with ``mallopt``.
MALLOC_ENVIRONMENT = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}
_MALLOPT_PARAMETERS = {"MALLOC_TRIM_THRESHOLD_": -1, "MALLOC_MMAP_THRESHOLD_": -3}  # glibc's M_* numbers


def fix_malloc_thresholds() -> bool:
    """Fix glibc's thresholds (:data:`MALLOC_ENVIRONMENT`) in this process with ``mallopt``; whether
    it worked (``False`` without glibc).

    Only the memory measure calls it, in its own child: every block above the mmap threshold is then
    mapped and unmapped, so each fresh buffer costs page faults. That makes the resident set
    deterministic and time unrepresentative (a minibatch took 1.6x as long), so timing processes
    keep glibc's defaults.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return all(mallopt(_MALLOPT_PARAMETERS[name], int(value)) == 1
               for name, value in MALLOC_ENVIRONMENT.items())


def _storage(tensor: torch.Tensor):
    try:
        return tensor.untyped_storage()
    except (RuntimeError, NotImplementedError, TypeError):  # sparse, nested, fake, meta...
        return None


class _Live:
    """The ledger: live storages by key, the running total and its maximum."""

    def __init__(self):
        #: key -> [nbytes, where it was allocated, module running when autograd first saved it]
        self.entries: dict[int, list] = {}
        self.total = 0
        self.peak = 0

    def free(self, key: int) -> None:
        entry = self.entries.pop(key, None)
        if entry is not None:
            self.total -= entry[0]


class LiveTensorAccount(TorchDispatchMode):
    """Counts the bytes of live tensor storages on ``device`` while active; see the module docstring.

    ``resolution``: the itemised snapshot is retaken whenever the total exceeds the last snapshot
    by this fraction, so the one reported lies within it below the exact peak (``peak_bytes``).
    """

    def __init__(self, model: torch.nn.Module, optimizer: Optional[torch.optim.Optimizer] = None,
                 inputs: Iterable[torch.Tensor] = (), device: str | torch.device = "cpu",
                 resolution: float = 1e-3):
        super().__init__()
        self.model, self.optimizer, self.inputs = model, optimizer, tuple(inputs)
        self.device_type = torch.device(device).type
        self.resolution = resolution
        self.ledger = _Live()
        self.names = {id(m): name or "(model)" for name, m in model.named_modules()}
        self.root = id(model)
        self.stack: list[str] = []
        self.phase = "before"
        self.model_calls = 0
        self.snapshot = None
        self.snapshot_total = 0
        self.baseline = 0
        self._handles = []
        self._saved_hooks = None

    # -- what allocates --------------------------------------------------------------------

    def _where(self) -> str:
        if self.stack:
            return self.stack[-1]
        node = torch._C._current_autograd_node()
        if node is not None:
            return "backward"
        return self.phase

    def _track(self, tensor, where: str) -> None:
        if not isinstance(tensor, torch.Tensor) or tensor.device.type != self.device_type:
            return
        storage = _storage(tensor)
        if storage is None:
            return
        key = storage._cdata
        nbytes = storage.nbytes()
        ledger = self.ledger
        entry = ledger.entries.get(key)
        if entry is not None:
            if entry[0] != nbytes:  # resized in place
                ledger.total += nbytes - entry[0]
                entry[0] = nbytes
            else:
                return
        else:
            if nbytes == 0:
                return
            ledger.entries[key] = [nbytes, where, None]
            ledger.total += nbytes
            weakref.finalize(storage, ledger.free, key)
        if ledger.total > ledger.peak:
            ledger.peak = ledger.total
            if ledger.total > self.snapshot_total * (1 + self.resolution):
                self._take_snapshot(where)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        where = self._where()
        for tensor in tree_flatten(out)[0]:
            if isinstance(tensor, torch.Tensor):
                self._track(tensor, where)
        return out

    # -- holders -----------------------------------------------------------------------------

    def _holders(self) -> dict[int, tuple[str, str]]:
        """key -> (category, layer) for the storages held by parameters, gradients, optimizer,
        inputs and modules' carried state (first match wins)."""
        held: dict[int, tuple[str, str]] = {}

        def put(tensor, category, layer):
            if isinstance(tensor, torch.Tensor) and tensor.device.type == self.device_type:
                storage = _storage(tensor)
                if storage is not None:
                    held.setdefault(storage._cdata, (category, layer))

        owner = {}
        for name, p in self.model.named_parameters():
            layer = name.rpartition(".")[0] or "(model)"
            owner[id(p)] = layer
            put(p, "parameters", layer)
        for name, b in self.model.named_buffers():
            put(b, "parameters", name.rpartition(".")[0] or "(model)")
        for name, p in self.model.named_parameters():
            if p.grad is not None:
                put(p.grad, "gradients", owner[id(p)])
        if self.optimizer is not None:
            for p, state in self.optimizer.state.items():
                for value in state.values():
                    put(value, "optimizer state", owner.get(id(p), "(other)"))
        for tensor in self.inputs:
            put(tensor, "input", "(input)")
        for name, module in self.model.named_modules():
            values = list(module.__dict__.values())
            values += list(getattr(module, "_memories", {}).values())
            for value in values:
                if isinstance(value, (list, tuple)):
                    for item in value:
                        put(item, "carried state", name or "(model)")
                else:
                    put(value, "carried state", name or "(model)")
        return held

    def _take_snapshot(self, where: str) -> None:
        ledger = self.ledger
        # A shallow copy: the entries' lists are shared, so a tensor that autograd saves right
        # after the operator that made the peak (the pack hook runs after the operator) is counted
        # as saved in this snapshot too.
        self.snapshot = (dict(ledger.entries), self._holders(), where,
                         self.model_calls, torch._C._current_autograd_node() is not None)
        self.snapshot_total = ledger.total

    # -- context -----------------------------------------------------------------------------

    def __enter__(self):
        from torch.nn.modules import module as module_hooks

        def pre(module, args):
            if id(module) == self.root:
                self.model_calls += 1
                self.phase = "between steps"
            self.stack.append(self.names.get(id(module), type(module).__name__))

        def post(module, args, output):
            if self.stack:
                self.stack.pop()

        self._handles = [module_hooks.register_module_forward_pre_hook(pre),
                         module_hooks.register_module_forward_hook(post)]
        if self.optimizer is not None:
            self._handles += [
                self.optimizer.register_step_pre_hook(lambda *a: setattr(self, "phase", "optimizer")),
                self.optimizer.register_step_post_hook(
                    lambda *a: setattr(self, "phase", "between steps"))]

        def pack(tensor):
            storage = _storage(tensor)
            if storage is not None and tensor.device.type == self.device_type:
                self._track(tensor, self._where())
                entry = self.ledger.entries.get(storage._cdata)
                if entry is not None and entry[2] is None:
                    entry[2] = self._where()  # the first saver
            return tensor.detach()  # the tensor itself would form a reference cycle via grad_fn

        self._saved_hooks = torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t)
        self._saved_hooks.__enter__()
        result = super().__enter__()
        # What exists before the minibatch: parameters, buffers, optimizer state, inputs, state.
        self._register_existing()
        self.baseline = sum(self.ledger.entries[k][0] for k in self._baseline_keys())
        self.phase = "before"
        return result

    def _register_existing(self) -> None:
        tensors = list(self.model.parameters()) + list(self.model.buffers()) + list(self.inputs)
        tensors += [p.grad for p in self.model.parameters() if p.grad is not None]
        if self.optimizer is not None:
            tensors += [v for s in self.optimizer.state.values() for v in s.values()]
        for module in self.model.modules():
            tensors += list(getattr(module, "_memories", {}).values())
        for tensor in tensors:
            self._track(tensor, "before")

    def _baseline_keys(self):
        keys = set()
        for tensor in list(self.model.parameters()) + list(self.model.buffers()) + list(self.inputs):
            storage = _storage(tensor)
            if storage is not None and storage._cdata in self.ledger.entries:
                keys.add(storage._cdata)
        return keys

    def __exit__(self, *exc):
        result = super().__exit__(*exc)
        self._saved_hooks.__exit__(*exc)
        for handle in self._handles:
            handle.remove()
        self._handles = []
        return result

    # -- report ------------------------------------------------------------------------------

    def report(self) -> dict:
        """The peak, the baseline (parameters, buffers, inputs) and the itemised snapshot."""
        out = {"peak_bytes": self.ledger.peak, "baseline_bytes": self.baseline,
               "train_peak_bytes": self.ledger.peak - self.baseline,
               "live_at_end_bytes": self.ledger.total}
        if self.snapshot is None:
            return out
        entries, held, where, calls, in_backward = self.snapshot
        by_category = defaultdict(int)
        by_layer: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        counts = defaultdict(int)
        for key, (nbytes, origin, saver) in entries.items():
            if key in held:
                category, layer = held[key]
            elif saver is not None:
                category, layer = "saved for backward", saver
            else:
                category, layer = "transient", origin
            by_category[category] += nbytes
            by_layer[layer][category] += nbytes
            counts[category] += 1
        out["at_peak"] = {
            "snapshot_bytes": sum(by_category.values()),
            "allocated_in": where, "model_calls_so_far": calls, "in_backward": in_backward,
            "by_category": {c: by_category.get(c, 0) for c in CATEGORIES},
            "tensors_by_category": {c: counts.get(c, 0) for c in CATEGORIES},
            "by_layer": {layer: {c: v for c, v in cats.items()}
                         for layer, cats in sorted(by_layer.items())},
        }
        return out


def summarize_account(report: dict, scale: float = 2 ** -20) -> str:
    """One line: the peak and its categories in MiB."""
    at = report.get("at_peak", {})
    parts = ", ".join(f"{c} {v * scale:.1f}" for c, v in at.get("by_category", {}).items() if v)
    return f"peak {report['peak_bytes'] * scale:.1f} MiB ({parts})"
