r"""
``torch.library`` registration shared by the fused backends, and what their kernels share.

Each kernel module (:mod:`.cupy_backend`, :mod:`.triton_backend`, :mod:`.cpp_backend`) supplies two implementations on
flat float32 tensors,

    forward_impl(input_seq[T, N], abar_prev[N], coefficients[T, 4], v_threshold, gain, code_id, save)
        (gain = input_scale / v_threshold, used by the representation-level mask)
        -> (abar_seq[T, N], saved[T, N] or an empty tensor)
    backward_impl(grad_abar_seq[T, N], saved[T, N], input_scale, gain, code_id) -> grad_input_seq

and :func:`define_backend_ops` registers them as custom operators ``spikingjelly_saf::<name>_forward``
(with a fake implementation and autograd), ``spikingjelly_saf::<name>_forward_only`` (no autograd
context, nothing saved: SAF-F's steps before the last, and inference) and
``spikingjelly_saf::<name>_backward``. ``torch.compile`` and ``torch.export`` see opaque operators.
:class:`~spikingjelly_saf.backends.FusedBackend` calls them.
"""

from __future__ import annotations

import collections
import dataclasses
import threading
from typing import Callable, Optional

import torch

from .. import functional as saf_functional
from .surrogate_codes import REPRESENTATION_LEVEL, surrogate_code_by_id

__all__ = ["coefficient_tensor", "CoefficientTables", "COEFFICIENT_TABLES", "CAPTURE_MESSAGE", "saved_dtype",
           "new_saved", "define_backend_ops", "BackendOps"]


#: Why a table cannot be made while a CUDA graph is captured, and what to do.
CAPTURE_MESSAGE = (
    "SAF's per-step coefficient table for this step was first needed while a CUDA graph was being "
    "captured. Its host-to-device copy would be baked into the graph (replays would read a freed host "
    "buffer), so it is refused. Run the same steps once before capturing (a warm-up, as "
    "torch.compile(mode='reduce-overhead') does): the tables are then kept on the device and the graph "
    "reads them there."
)


def coefficient_tensor(table, device: torch.device) -> torch.Tensor:
    """The kernel table as a float32 tensor on ``device``; ``table`` is a list of
    :class:`~spikingjelly_saf.functional.StepCoefficients` or an already flattened list.

    :raises RuntimeError: on CUDA while the current stream is being captured (:data:`CAPTURE_MESSAGE`)
    """
    if table and isinstance(table[0], saf_functional.StepCoefficients):
        table = [getattr(k, column) for k in table for column in saf_functional.KERNEL_COLUMNS]
    host = torch.tensor(table, dtype=torch.float32)
    if device.type != "cuda" or torch.compiler.is_compiling():
        return host.to(device)
    if torch.cuda.is_current_stream_capturing():
        raise RuntimeError(CAPTURE_MESSAGE)
    # Pinned + non_blocking: the copy is queued on the stream instead of synchronising with it.
    return host.pin_memory().to(device, non_blocking=True)


class CoefficientTables:
    """The kernels' coefficient tensors by ``(device, parameters, c[t0], T)``, each built once.

    A table rebuilt at every call costs a host tensor (and on CUDA a copy) per layer and step, which
    single-step mode pays at every step. Kept on the device, a table is also what a captured CUDA
    graph can read: entries used during a capture are never evicted, since the graph reads them at
    every replay. At most ``capacity`` other entries are kept (least recently used go first; on
    other devices, the oldest).
    """

    def __init__(self, capacity: int = 4096):
        self.capacity = capacity
        self._entries: collections.OrderedDict = collections.OrderedDict()
        self._captured: dict = {}
        self._lock = threading.Lock()

    def get(self, params: saf_functional.SAFParameters, weight_sum_prev: float, steps: int,
            device: torch.device) -> tuple[torch.Tensor, float]:
        """``(table [T, 4] on device, c[t0 + T])``."""
        if torch.compiler.is_compiling():  # traced code holds its tables as graph constants
            table = saf_functional.coefficient_table(params, weight_sum_prev, steps)
            return coefficient_tensor(table, device), table[-1].weight_sum
        key = (device, params, weight_sum_prev, steps)
        if device.type != "cuda":
            # Every step of every layer asks: off CUDA (no graph capture) a hit takes no lock and
            # leaves the order alone, so eviction there goes by age rather than by last use.
            entry = self._entries.get(key)
            if entry is not None:
                return entry
        capturing = device.type == "cuda" and torch.cuda.is_current_stream_capturing()
        with self._lock:
            entry = self._captured.get(key)
            if entry is None:
                entry = self._entries.get(key)
                if entry is not None:
                    self._entries.move_to_end(key)
                    if capturing:
                        self._captured[key] = self._entries.pop(key)
            if entry is not None:
                return entry
        table = saf_functional.coefficient_table(params, weight_sum_prev, steps)
        entry = (coefficient_tensor(table, device), table[-1].weight_sum)
        with self._lock:
            self._entries[key] = entry
            while len(self._entries) > self.capacity:
                self._entries.popitem(last=False)
        return entry


#: The tables every fused backend reads.
COEFFICIENT_TABLES = CoefficientTables()


def saved_dtype(code_id: int, dtype: torch.dtype) -> torch.dtype:
    """What the forward saves for the backward: the representation mask ``0 < u < 1`` as ``uint8``
    (exact, a quarter of float32's bytes), otherwise the surrogate derivative ``sg'(H - V_th)`` in ``dtype``."""
    return torch.uint8 if surrogate_code_by_id(code_id).level == REPRESENTATION_LEVEL else dtype


def new_saved(input_seq: torch.Tensor, code_id: int, save: bool) -> Optional[torch.Tensor]:
    """The buffer a forward kernel fills with what the backward needs (``None`` when nothing is saved)."""
    if not save:
        return None
    return torch.empty_like(input_seq, dtype=saved_dtype(code_id, input_seq.dtype))


@dataclasses.dataclass(frozen=True)
class BackendOps:
    """A backend's kernels twice over: as custom operators (what ``torch.compile``, ``torch.export``
    and ``opcheck`` see) and as a plain :class:`torch.autograd.Function` for eager code, which skips
    the dispatcher's Python layers (about 40 microseconds per layer and step on a CPU, more than the
    kernels of a small layer take). Both call the same ``forward_impl`` and ``backward_impl``."""

    forward: Callable
    forward_only: Callable
    backward: Callable
    eager_function: type

    def neuron_forward(self, inputs: torch.Tensor, steps: int, abar_prev: torch.Tensor, coefficients: torch.Tensor,
                       v_threshold: float, input_scale: float, gain: float, code_id: int) -> torch.Tensor:
        """``abar`` of ``inputs``' shape, with a graph when ``inputs`` requires a gradient and grad mode
        is on. ``inputs`` is contiguous float32 holding ``steps`` steps of ``abar_prev.numel()``
        neurons each (one step: any shape, no time dimension needed)."""
        needs_graph = torch.is_grad_enabled() and inputs.requires_grad
        if _traced(inputs):
            flat = inputs.view(steps, -1)
            if needs_graph:
                abar = self.forward(flat, abar_prev.view(-1), coefficients, v_threshold, input_scale, gain,
                                    code_id)[0]
            else:
                abar = self.forward_only(flat, abar_prev.view(-1), coefficients, v_threshold, gain, code_id)
            return abar.view(inputs.shape)
        if needs_graph:
            return self.eager_function.apply(inputs, steps, abar_prev, coefficients, v_threshold, input_scale,
                                             gain, code_id)
        return self.eager_function.forward_impl(inputs.view(steps, -1), abar_prev.view(-1), coefficients,
                                                v_threshold, gain, code_id, False)[0].view(inputs.shape)


def define_backend_ops(name: str, forward_impl: Callable, backward_impl: Callable) -> BackendOps:
    """Register the three custom operators of backend ``name``."""
    namespace = f"spikingjelly_saf::{name}"

    @torch.library.custom_op(f"{namespace}_forward", mutates_args=())
    def forward(input_seq: torch.Tensor, abar_prev: torch.Tensor, coefficients: torch.Tensor,
                v_threshold: float, input_scale: float, gain: float,
                code_id: int) -> tuple[torch.Tensor, torch.Tensor]:
        return forward_impl(input_seq, abar_prev, coefficients, v_threshold, gain, code_id, True)

    @forward.register_fake
    def _(input_seq, abar_prev, coefficients, v_threshold, input_scale, gain, code_id):
        return torch.empty_like(input_seq), new_saved(input_seq, code_id, True)

    @torch.library.custom_op(f"{namespace}_forward_only", mutates_args=())
    def forward_only(input_seq: torch.Tensor, abar_prev: torch.Tensor, coefficients: torch.Tensor,
                     v_threshold: float, gain: float, code_id: int) -> torch.Tensor:
        return forward_impl(input_seq, abar_prev, coefficients, v_threshold, gain, code_id, False)[0]

    @forward_only.register_fake
    def _(input_seq, abar_prev, coefficients, v_threshold, gain, code_id):
        return torch.empty_like(input_seq)

    @torch.library.custom_op(f"{namespace}_backward", mutates_args=())
    def backward(grad_abar_seq: torch.Tensor, saved: torch.Tensor, input_scale: float, gain: float,
                 code_id: int) -> torch.Tensor:
        return backward_impl(grad_abar_seq, saved, input_scale, gain, code_id)

    @backward.register_fake
    def _(grad_abar_seq, saved, input_scale, gain, code_id):
        return torch.empty_like(grad_abar_seq)

    def setup_context(ctx, inputs, output):
        _, _, _, _, input_scale, gain, code_id = inputs
        ctx.save_for_backward(output[1])
        ctx.mark_non_differentiable(output[1])
        # The saved buffer never receives a gradient: without this, autograd would fill a zero
        # tensor of its size for every layer and step.
        ctx.set_materialize_grads(False)
        ctx.input_scale, ctx.gain, ctx.code_id = input_scale, gain, code_id

    def backward_formula(ctx, grad_abar_seq, grad_saved):
        if grad_abar_seq is None:
            return None, None, None, None, None, None, None
        (saved,) = ctx.saved_tensors
        grad_input = backward(grad_abar_seq.contiguous(), saved, ctx.input_scale, ctx.gain,
                              ctx.code_id)
        return grad_input, None, None, None, None, None, None

    forward.register_autograd(backward_formula, setup_context=setup_context)
    return BackendOps(forward, forward_only, backward, _eager_function(name, forward_impl, backward_impl))


def _traced(inputs: torch.Tensor) -> bool:
    """Whether the call must go through the custom operators: under ``torch.compile``/``torch.export``,
    a ``TorchDispatchMode`` (``FakeTensorMode``, ``FlopCounterMode``) or with a tensor subclass, the
    tensors may have no memory of their own for a kernel to read, and the mode must see the operator."""
    return (torch.compiler.is_compiling() or torch._C._len_torch_dispatch_stack() > 0
            or type(inputs) is not torch.Tensor)


def _eager_function(name: str, forward_impl: Callable, backward_impl: Callable) -> type:
    """The custom operator ``forward`` with its autograd formula, as an autograd function; the flat
    ``[T, N]`` views live inside it, so they add no nodes to the graph. It calls the kernels through
    its ``forward_impl`` and ``backward_impl`` attributes."""

    def forward(ctx, inputs, steps, abar_prev, coefficients, v_threshold, input_scale, gain, code_id):
        abar, saved = function.forward_impl(inputs.view(steps, -1), abar_prev.view(-1), coefficients, v_threshold,
                                            gain, code_id, True)
        ctx.save_for_backward(saved)
        ctx.set_materialize_grads(False)
        ctx.input_scale, ctx.gain, ctx.code_id = input_scale, gain, code_id
        return abar.view(inputs.shape)

    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_abar):
        if grad_abar is None:
            return (None,) * 8
        (saved,) = ctx.saved_tensors
        grad_input = function.backward_impl(grad_abar.contiguous().view(saved.shape), saved, ctx.input_scale,
                                            ctx.gain, ctx.code_id)
        return (grad_input.view(grad_abar.shape),) + (None,) * 7

    # Named at creation: autograd names the graph's nodes (and profiles) after the class.
    function = type(f"SAF{name.capitalize()}Forward", (torch.autograd.Function,),
                    {"forward": staticmethod(forward), "backward": staticmethod(backward),
                     "forward_impl": staticmethod(forward_impl), "backward_impl": staticmethod(backward_impl),
                     "__module__": __name__})
    return function
