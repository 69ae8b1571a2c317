r"""
Backends that run SAF's step: typed objects with a declared contract, and the registry that owns them.

**API Language** - 中文 | English

* **中文**: 每个后端是一个 :class:`Backend` 对象，声明其名称、可用性（缺失时的错误信息给出安装命令）、支持的步进模式、
  dtype、设备与替代函数，以及前向/反向的实现。:data:`REGISTRY` 负责延迟加载、选择与回退到 torch（只在一处）。
* **English**: each backend is a :class:`Backend` object that declares its name, its availability
  (the error names the install extra), the step modes, dtypes, devices and surrogates it supports,
  and its forward and backward. :data:`REGISTRY` owns lazy loading, selection and the fallback to
  the torch backend, in one place. See ``docs/backends.md``.

``'auto'`` (:class:`AutomaticBackend`, ``SAFNode``'s default) chooses per call from the input's
device, as SpikingJelly 2.0's neurons do: on CUDA ``'cupy'``, else ``'triton'``, else ``'torch'``; on
CPU ``'cpp'`` (the CUDA source compiled for the CPU), else ``'torch'``. The environment variable
:data:`BACKEND_ENVIRONMENT_VARIABLE` (``SAF_BACKEND``) forces one of them.

The math is :mod:`spikingjelly_saf.functional`; fused kernels read its coefficient table
(:func:`~spikingjelly_saf.functional.coefficient_table`). Importing this package never imports CuPy
or Triton, builds nothing, and never imports :mod:`spikingjelly_saf.neuron`. (The first call of a custom
operator imports ``torch._dynamo``, which imports Triton when it is installed: that is PyTorch's.)
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import os
import threading
import warnings
from collections.abc import Mapping
from typing import Iterator, Optional

import torch
from spikingjelly.logger import logger

from .. import functional as saf_functional
from .. import gradients
from . import cpp_backend
from .cpu_build import CpuBuildError
from .custom_ops import COEFFICIENT_TABLES
from .surrogate_codes import SURROGATE_CODES, built_surrogate_key, register_surrogate_code, resolve_surrogate_code
from .._validation import require_module

__all__ = [
    "Backend",
    "TorchBackend",
    "FusedBackend",
    "CppBackend",
    "AutomaticBackend",
    "BACKEND_ENVIRONMENT_VARIABLE",
    "BackendRegistry",
    "REGISTRY",
    "BackendSelectable",
    "SUPPORTED_BACKENDS",
    "set_backend",
    "register_surrogate_code",
    "triton_interpreting",
]

_FLOATING = (torch.float64, torch.float32, torch.float16, torch.bfloat16)

#: The environment variable that forces what ``backend='auto'`` runs: ``auto`` (the default),
#: ``torch``, ``cpp``, ``cupy`` or ``triton``. Explicit ``backend=`` names are not affected.
BACKEND_ENVIRONMENT_VARIABLE = "SAF_BACKEND"

# As SpikingJelly's own operators: the choice is logged (once per device), and silent unless the
# application enables it, e.g. ``spikingjelly.logger.logger.enable("spikingjelly_saf")``.
logger.disable(__name__)


class Backend:
    """The contract of a backend.

    :ivar name: the value of ``SAFNode(backend=...)``
    :ivar step_modes: step modes it runs (``'s'``, ``'m'``)
    :ivar dtypes: input dtypes it computes itself; others run on the torch backend
    :ivar install_extra: the ``pip install "spikingjelly-saf[extra]"`` that provides it, if any
    :ivar surrogates: what surrogates it supports, in words (for documentation and errors)

    Forward and backward: :meth:`multi_step` (and :meth:`single_step` where ``'s'`` is supported)
    return the step's value with an autograd graph whose backward is the gradient of
    :mod:`spikingjelly_saf.functional`.
    """

    name: str = ""
    step_modes: tuple[str, ...] = ()
    dtypes: tuple[torch.dtype, ...] = ()
    install_extra: Optional[str] = None
    surrogates: str = ""

    def device_types(self) -> tuple[str, ...]:
        """Device types whose tensors it computes on."""
        return ()

    def unavailable_reason(self) -> Optional[str]:
        """``None`` when it can run here, else a sentence saying what is missing and how to get it."""
        return None

    def is_available(self) -> bool:
        return self.unavailable_reason() is None

    def load(self) -> None:
        """Import what it needs (idempotent). Called when the backend is chosen, never while tracing."""

    def accepts(self, input_seq: torch.Tensor, state: saf_functional.SAFState, surrogate_function,
                warn: bool = True) -> bool:
        """Whether it computes this call itself; ``False`` sends the call to the torch backend (``warn``:
        whether a surrogate without kernel code is worth a warning)."""
        return True

    def single_step(self, input_current, state: saf_functional.SAFState, params: saf_functional.SAFParameters,
                    surrogate_function) -> tuple[torch.Tensor, saf_functional.SAFState]:
        raise NotImplementedError(f"backend {self.name!r} has no single-step mode")

    def multi_step(self, input_seq, state: saf_functional.SAFState, params: saf_functional.SAFParameters,
                   surrogate_function) -> tuple[torch.Tensor, saf_functional.SAFState]:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, step_modes={self.step_modes})"


class TorchBackend(Backend):
    """Plain PyTorch: every device, dtype and callable surrogate, in both step modes."""

    name = "torch"
    step_modes = ("s", "m")
    dtypes = _FLOATING
    surrogates = "any callable surrogate; representation-level surrogates of spikingjelly_saf.surrogate"

    def device_types(self) -> tuple[str, ...]:
        return ("cpu", "cuda", "mps", "xpu", "meta")

    def single_step(self, input_current, state, params, surrogate_function):
        return gradients.step(input_current, state, params, surrogate_function)

    def multi_step(self, input_seq, state, params, surrogate_function):
        return gradients.multi_step(input_seq, state, params, surrogate_function)


def _module_missing(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is None
    except (ImportError, ValueError):
        return True


def triton_interpreting() -> bool:
    """True when Triton runs kernels through its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


class FusedBackend(Backend):
    """A fused kernel pair, registered as ``torch.ops.spikingjelly_saf.<name>_*`` custom operators.

    The kernel module (``spikingjelly_saf.backends.<module>``) provides ``forward_impl`` and
    ``backward_impl`` (contract in :mod:`.custom_ops`); it is imported by :meth:`load`. Kernels
    compute in float32: 16-bit inputs are converted on entry, as the torch backend does
    (:func:`~spikingjelly_saf.functional.compute_dtype`). A single step is a launch with ``T = 1``
    that continues from the state.
    """

    step_modes = ("s", "m")
    dtypes = (torch.float32, torch.float16, torch.bfloat16)
    surrogates = ("SpikingJelly's Sigmoid, ATan, PiecewiseQuadratic, PiecewiseExp, SoftSign, SuperSpike, "
                  "Erf; SpikeRepresentation; classes given code with register_surrogate_code")

    def __init__(self, name: str, module: str, requirement: str, install_hint: str):
        self.name, self.module, self.requirement = name, module, requirement
        self.install_extra = name
        self.install_hint = install_hint
        self.ops = None
        self._surrogate_code = None
        self._lock = threading.Lock()

    def device_types(self) -> tuple[str, ...]:
        return ("cuda",)

    def missing(self) -> list[str]:
        missing = [] if not _module_missing(self.requirement) else [f"{self.requirement_label} is not installed"]
        if not torch.cuda.is_available():
            missing.append("no CUDA device is available to PyTorch")
        return missing

    @property
    def requirement_label(self) -> str:
        return {"cupy": "CuPy", "triton": "Triton"}.get(self.requirement, self.requirement)

    def unavailable_reason(self) -> Optional[str]:
        missing = self.missing()
        if not missing:
            return None
        return (f"backend={self.name!r} cannot run: " + " and ".join(missing) + ". " + self.install_hint
                + " Use backend='torch' otherwise.")

    def load(self) -> None:
        with self._lock:
            if self.ops is not None:
                return
            from .custom_ops import define_backend_ops

            kernels = importlib.import_module(f"{__name__}.{self.module}")

            def code_for(surrogate_function, warn):
                return self.resolve_code(surrogate_function, warn)

            # The id depends only on the surrogate's class, parameters and registrations, never on
            # tensors: traced code (torch.compile, strict torch.export) takes it as a constant instead of
            # tracing code generation, the C++ compiler and the registry's lock. Applied here: it loads
            # torch._dynamo (as the first call of any custom operator does).
            self._surrogate_code = torch.compiler.assume_constant_result(code_for)
            self.ops = define_backend_ops(self.name, kernels.forward_impl, kernels.backward_impl)

    def resolve_code(self, surrogate_function, warn: bool) -> Optional[int]:
        """:func:`~.surrogate_codes.resolve_surrogate_code` for this backend (run eagerly, even when traced)."""
        return resolve_surrogate_code(surrogate_function, self.name, warn)

    def kernel_code(self, surrogate_function, warn: bool = True) -> Optional[int]:
        """The surrogate's kernel code id; ``None`` when it has none (with one warning per class if ``warn``)."""
        return self._surrogate_code(surrogate_function, warn)

    def accepts(self, input_seq, state, surrogate_function, warn: bool = True) -> bool:
        return self.accepted_code(input_seq, state, surrogate_function, warn) is not None

    def accepted_code(self, input_seq, state, surrogate_function, warn: bool = True) -> Optional[int]:
        """The kernel code that computes this call; ``None`` where the torch backend must (float64, a
        surrogate without kernel code)."""
        state_dtype = state.abar.dtype if isinstance(state.abar, torch.Tensor) else input_seq.dtype
        if saf_functional.compute_dtype(input_seq.dtype, state_dtype) != torch.float32:
            return None
        if self.ops is None:  # used without selection (SAFNode selects, and so loads, at construction)
            self.load()
        return self.kernel_code(surrogate_function, warn)

    def check_device(self, tensor: torch.Tensor) -> None:
        if tensor.device.type not in self.device_types():
            raise RuntimeError(
                f"SAFNode(backend={self.name!r}) got a tensor on {tensor.device}; its kernels run on "
                f"{' or '.join(self.device_types())} tensors. Move the model and input to the "
                f"{' or '.join(self.device_types()).upper()} device, or use backend='auto' (it chooses "
                "from the input's device)." + self.device_hint())

    def device_hint(self) -> str:
        return ""

    def single_step(self, input_current, state, params, surrogate_function, code_id: Optional[int] = None):
        """``code_id``: the surrogate's kernel code when the caller resolved it (:class:`Route`)."""
        abar, weight_sum = self._forward(input_current, 1, state, params, surrogate_function, code_id)
        return abar, saf_functional.SAFState(abar.detach(), weight_sum)

    def multi_step(self, input_seq, state, params, surrogate_function, code_id: Optional[int] = None):
        abar_seq, weight_sum = self._forward(input_seq, input_seq.shape[0], state, params, surrogate_function,
                                             code_id)
        last = abar_seq[-1].detach()
        # A view of a longer sequence would keep the whole [T, N] output alive as state; with T = 1
        # the view is the whole output anyway.
        return abar_seq, saf_functional.SAFState(last.clone() if input_seq.shape[0] > 1 else last, weight_sum)

    def _forward(self, inputs, steps, state, params, surrogate_function, code_id) -> tuple[torch.Tensor, float]:
        """``abar`` of ``inputs``' shape (``steps`` steps) and ``c`` after the last step. Every step of a
        single-step network comes here, so it converts only what needs converting."""
        device = inputs.device
        if device.type not in self.device_types():
            self.check_device(inputs)
        if code_id is None:
            code_id = self.kernel_code(surrogate_function)
        if inputs.dtype != torch.float32 or not inputs.is_contiguous():
            inputs = inputs.to(torch.float32).contiguous()
        neurons = inputs.numel() // max(steps, 1)
        abar_prev = state.abar
        if not isinstance(abar_prev, torch.Tensor):
            abar_prev = inputs.new_zeros(neurons)
        elif abar_prev.numel() != neurons:
            raise ValueError(f"the state holds {abar_prev.numel()} neurons but each step of the input has {neurons}. "
                             "Reset the network (functional.reset_net) before a sequence of another shape.")
        elif abar_prev.dtype != torch.float32 or abar_prev.device != device or not abar_prev.is_contiguous():
            abar_prev = abar_prev.detach().to(inputs).contiguous()
        elif abar_prev.requires_grad:
            abar_prev = abar_prev.detach()
        coefficients, weight_sum = COEFFICIENT_TABLES.get(params, state.weight_sum, steps, device)
        abar = self.ops.neuron_forward(inputs, steps, abar_prev, coefficients, params.v_threshold,
                                       params.input_scale, params.input_scale / params.v_threshold, code_id)
        return abar, weight_sum


class CppBackend(FusedBackend):
    """``backend='cpp'``: the CUDA source compiled for the CPU by the system's C++ compiler
    (:mod:`.cpu_source`, :mod:`.cpu_build`), built at first use per surrogate and cached on disk."""

    def __init__(self):
        super().__init__("cpp", "cpp_backend", "", "")
        self.install_extra = None
        self._broken: dict[int, str] = {}

    def device_types(self) -> tuple[str, ...]:
        return ("cpu",)

    def missing(self) -> list[str]:
        from .cpu_build import compiler

        return [] if compiler() is not None else ["no C++ compiler was found (looked for $CXX, c++, g++, clang++)"]

    def unavailable_reason(self) -> Optional[str]:
        missing = self.missing()
        if not missing:
            return None
        return (f"backend='cpp' cannot run: {missing[0]}. Install one (e.g. apt-get install g++) or set CXX "
                "to a C++ compiler; backend='torch' runs without one.")

    def resolve_code(self, surrogate_function, warn: bool) -> Optional[int]:
        code_id = super().resolve_code(surrogate_function, warn)
        if code_id is None or code_id in self._broken:
            return None
        try:
            cpp_backend.library(code_id)  # built here, before dispatch, so that a failure can fall back
        except CpuBuildError as error:
            self._broken[code_id] = str(error)
            lines = str(error).splitlines()
            detail = lines[0] + (f" ... {lines[-1].strip()}" if len(lines) > 1 else "")
            warnings.warn(f"SAF's CPU kernel could not be built, so SAFNode runs on the torch backend on CPU "
                          f"(unfused, slower): {detail} Fix the compiler (or set CXX to another one), or set "
                          f"{BACKEND_ENVIRONMENT_VARIABLE}=torch to silence this.", RuntimeWarning, stacklevel=2)
            return None
        return code_id


class _TritonBackend(FusedBackend):
    def device_types(self) -> tuple[str, ...]:
        return ("cuda", "cpu") if triton_interpreting() else ("cuda",)

    def missing(self) -> list[str]:
        missing = [] if not _module_missing("triton") else ["Triton is not installed"]
        if not triton_interpreting() and not torch.cuda.is_available():
            missing.append("no CUDA device is available to PyTorch (set TRITON_INTERPRET=1 before importing "
                           "Triton to run its CPU interpreter)")
        return missing

    def device_hint(self) -> str:
        return (" To run the kernels through Triton's (slow) CPU interpreter, set TRITON_INTERPRET=1 before "
                "importing Triton.")


class BackendRegistry:
    """The backends by name: registration, selection (availability check and lazy load) and dispatch.

    Selection never changes what is registered; dispatch is the one place where a call that a fused
    backend does not compute (float64, a surrogate without kernel code) runs on the torch backend.
    """

    def __init__(self, fallback: Backend):
        self._backends: dict[str, Backend] = {fallback.name: fallback}
        self.fallback = fallback
        self._routes: dict[tuple, Route] = {}

    def register(self, backend: Backend) -> None:
        if not isinstance(backend, Backend):
            raise TypeError(f"expected a Backend, got {backend!r}.")
        if backend.name in self._backends:
            raise ValueError(f"a backend named {backend.name!r} is already registered.")
        self._backends[backend.name] = backend
        self._routes.clear()

    def names(self, step_mode: str) -> tuple[str, ...]:
        return tuple(n for n, b in self._backends.items() if step_mode in b.step_modes)

    def get(self, name: str) -> Backend:
        return self._backends[name]

    def check(self, name: str, step_mode: str) -> Backend:
        """The backend, or ``ValueError`` (unknown, wrong step mode) / ``RuntimeError`` (cannot run here)."""
        valid = self.names(step_mode)
        if name not in valid:
            hint = ""
            if step_mode == "s" and name in self.names("m"):
                hint = " It runs in multi-step mode only: use step_mode='m'."
            raise ValueError(f"backend={name!r} is not supported in step_mode={step_mode!r}; valid backends: "
                             f"{', '.join(repr(b) for b in valid)}.{hint}")
        backend = self._backends[name]
        reason = backend.unavailable_reason()
        if reason is not None:
            raise RuntimeError(reason)
        return backend

    def select(self, name: str, step_mode: str) -> Backend:
        """:meth:`check`, then load it now: a traced call (torch.compile, torch.export) must not import."""
        backend = self.check(name, step_mode)
        backend.load()
        return backend

    def route(self, name: str, input_current, state, surrogate_function, step_mode: str) -> "Route":
        """The :class:`Route` of this call: ``name``'s backend (for ``'auto'``, the one it chooses for
        the input's device), or the torch backend where that one does not :meth:`~Backend.accepts`
        the call (float64, a surrogate without kernel code).

        Every step of every layer asks, so the answer is kept, keyed by all it depends on: the name,
        step mode, device, input and state dtypes, ``SAF_BACKEND``, the surrogate's class, ``spiking``
        and ``alpha``, and the registered surrogate code. A surrogate whose code may depend on other
        attributes is resolved at every call, as is every call while tracing.
        """
        surrogate_key = built_surrogate_key(surrogate_function)
        if surrogate_key is None or torch.compiler.is_compiling():
            return self._route(name, input_current, state, surrogate_function, step_mode)
        abar = state.abar
        key = (name, step_mode, input_current.device, input_current.dtype,
               abar.dtype if isinstance(abar, torch.Tensor) else None,
               os.environ.get(BACKEND_ENVIRONMENT_VARIABLE), surrogate_key, SURROGATE_CODES.generation)
        found = self._routes.get(key)
        if found is None:
            found = self._route(name, input_current, state, surrogate_function, step_mode)
            if len(self._routes) >= self.ROUTES_KEPT:
                self._routes.clear()
            self._routes[key] = found
        return found

    #: Routes kept before the cache starts again (each is a few hundred bytes).
    ROUTES_KEPT = 1024

    def _route(self, name, input_current, state, surrogate_function, step_mode) -> "Route":
        backend = self._backends[name]
        if step_mode not in backend.step_modes:
            self.check(name, step_mode)  # raises, naming the valid backends
        warn = True
        if isinstance(backend, AutomaticBackend):
            # 'auto' asked for no particular kernel: a fallback to torch is not worth a warning.
            backend, warn = self._backends[backend.backend_for(input_current)], False
        if backend is self.fallback:
            return Route(backend)
        if isinstance(backend, FusedBackend):
            code_id = backend.accepted_code(input_current, state, surrogate_function, warn)
            return Route(self.fallback) if code_id is None else Route(backend, code_id)
        if not backend.accepts(input_current, state, surrogate_function, warn):
            return Route(self.fallback)
        return Route(backend)

    def single_step(self, name, input_current, state, params, surrogate_function):
        return self.route(name, input_current, state, surrogate_function, "s").single_step(
            input_current, state, params, surrogate_function)

    def multi_step(self, name, input_seq, state, params, surrogate_function):
        if input_seq.dim() == 0 or input_seq.shape[0] == 0:
            raise ValueError(f"input_seq of shape {tuple(input_seq.shape)} has no time steps; a SAF sequence "
                             "[T, N, *] needs T >= 1.")
        return self.route(name, input_seq, state, surrogate_function, "m").multi_step(
            input_seq, state, params, surrogate_function)


@dataclasses.dataclass(frozen=True)
class Route:
    """The backend that computes a call and, for a fused backend, the surrogate's kernel code."""

    backend: Backend
    code_id: Optional[int] = None

    def single_step(self, input_current, state, params, surrogate_function):
        if self.code_id is None:
            return self.backend.single_step(input_current, state, params, surrogate_function)
        return self.backend.single_step(input_current, state, params, surrogate_function, self.code_id)

    def multi_step(self, input_seq, state, params, surrogate_function):
        if self.code_id is None:
            return self.backend.multi_step(input_seq, state, params, surrogate_function)
        return self.backend.multi_step(input_seq, state, params, surrogate_function, self.code_id)


class AutomaticBackend(Backend):
    """``backend='auto'``: the backend is chosen per call from the input's device, once per device.

    On CUDA ``'cupy'``, else ``'triton'``, else ``'torch'``; on CPU ``'cpp'``, else ``'torch'``
    (:attr:`PRIORITY`); the first that can run here wins. ``SAF_BACKEND``
    (:data:`BACKEND_ENVIRONMENT_VARIABLE`) forces one name instead, and an error says why it cannot
    run. The chosen backend still hands float64 and surrogates without kernel code to ``'torch'``,
    without the warning an explicit choice gives. The choice is logged once per device and request
    (``spikingjelly.logger``, disabled unless enabled).
    """

    name = "auto"
    step_modes = ("s", "m")
    dtypes = _FLOATING
    surrogates = "any callable surrogate: the chosen backend's kernels where they have code, else torch"

    #: Candidates by device type, in order of preference.
    PRIORITY = {"cuda": ("cupy", "triton"), "cpu": ("cpp",)}

    def __init__(self, registry: "BackendRegistry"):
        self.registry = registry
        self._chosen: dict[tuple, str] = {}
        self._lock = threading.Lock()
        self._resolve = None

    def device_types(self) -> tuple[str, ...]:
        return self.registry.fallback.device_types()

    def load(self) -> None:
        with self._lock:
            if self._resolve is None:
                def resolve(device_type, device_index, requested):
                    return self.choose(torch.device(device_type, device_index), requested)

                # Traced code (torch.compile) takes the choice as a constant: it is made once per
                # device, and making it may build the CPU kernel.
                self._resolve = torch.compiler.assume_constant_result(resolve)

    def choose(self, device: torch.device, requested: str = "auto") -> str:
        """The name of the backend that runs tensors on ``device`` (cached; logged the first time)."""
        key = (device.type, device.index, requested)
        chosen = self._chosen.get(key)
        if chosen is not None:
            return chosen
        with self._lock:
            chosen = self._chosen.get(key)
            if chosen is None:
                chosen, reason = self._choose(device, requested)
                self._chosen[key] = chosen
                logger.info("SAFNode(backend='auto') on {}: {} ({})", device, chosen, reason)
        return chosen

    def _choose(self, device: torch.device, requested: str) -> tuple[str, str]:
        names = tuple(n for n in self.registry.names("s") if n != self.name)
        if requested not in ("auto",) + names:
            raise ValueError(f"{BACKEND_ENVIRONMENT_VARIABLE}={requested!r} is not a backend; valid: auto, "
                             f"{', '.join(names)}.")
        if requested != "auto":
            backend = self.registry.select(requested, "s")
            if device.type not in backend.device_types():
                raise RuntimeError(
                    f"{BACKEND_ENVIRONMENT_VARIABLE}={requested} cannot run tensors on {device}: its kernels run on "
                    f"{' or '.join(backend.device_types())} tensors. Unset {BACKEND_ENVIRONMENT_VARIABLE} (or set "
                    "it to auto) to choose from the device.")
            return requested, f"{BACKEND_ENVIRONMENT_VARIABLE}={requested}"
        skipped = []
        for name in self.PRIORITY.get(device.type, ()):
            if name not in names:  # a registry without it (SpikingJelly's has no CuPy)
                continue
            backend = self.registry.get(name)
            reason = backend.unavailable_reason()
            if reason is None:
                backend.load()
                return name, "first available of " + ", ".join(self.PRIORITY[device.type] + ("torch",))
            skipped.append(reason)
        if device.type == "cpu" and skipped:
            # Only the CPU says so: there, the missing piece is an ordinary system package.
            warnings.warn(f"SAFNode(backend='auto') runs on the torch backend on CPU (unfused, slower): {skipped[0]} "
                          f"Set {BACKEND_ENVIRONMENT_VARIABLE}=torch to silence this.", RuntimeWarning, stacklevel=2)
        return self.registry.fallback.name, "; ".join(skipped) or f"no fused kernel for {device.type} tensors"

    def backend_for(self, tensor: torch.Tensor) -> str:
        """The name of the backend that computes ``tensor``'s device (``SAF_BACKEND`` read now)."""
        if self._resolve is None:
            self.load()
        requested = os.environ.get(BACKEND_ENVIRONMENT_VARIABLE, "auto")
        return self._resolve(tensor.device.type, tensor.device.index, requested)

    def single_step(self, input_current, state, params, surrogate_function):
        return self.registry.single_step(self.name, input_current, state, params, surrogate_function)

    def multi_step(self, input_seq, state, params, surrogate_function):
        return self.registry.multi_step(self.name, input_seq, state, params, surrogate_function)


#: The registry every ``SAFNode`` uses.
REGISTRY = BackendRegistry(TorchBackend())
REGISTRY.register(AutomaticBackend(REGISTRY))
REGISTRY.register(CppBackend())
REGISTRY.register(FusedBackend(
    "cupy", "cupy_backend", "cupy",
    'The CuPy backend needs an NVIDIA GPU and CuPy: pip install "spikingjelly-saf[cupy]" (or the '
    "cupy-cudaXXx wheel matching your CUDA)."))
REGISTRY.register(_TritonBackend(
    "triton", "triton_backend", "triton", 'Install it with pip install "spikingjelly-saf[triton]".'))


class _SupportedBackends(Mapping):
    """``{'s': names, 'm': names}``, read from :data:`REGISTRY` (the shape of SpikingJelly's ``supported_backends``)."""

    def __getitem__(self, step_mode: str) -> tuple[str, ...]:
        if step_mode not in ("s", "m"):
            raise KeyError(step_mode)
        return REGISTRY.names(step_mode)

    def __iter__(self) -> Iterator[str]:
        return iter(("s", "m"))

    def __len__(self) -> int:
        return 2


SUPPORTED_BACKENDS = _SupportedBackends()


class BackendSelectable:
    """Mixin for modules with a ``backend`` attribute chosen from :data:`REGISTRY` (``SAFNode``)."""

    @property
    def supported_backends(self) -> tuple[str, ...]:
        return REGISTRY.names(self.step_mode)

    @property
    def backend(self) -> str:
        return self._backend

    @backend.setter
    def backend(self, value: str) -> None:
        REGISTRY.select(value, self.step_mode)
        self._backend = value


def set_backend(net, backend: str, instance=None) -> int:
    r"""
    **API Language** - :ref:`中文 <set_backend-cn>` | :ref:`English <set_backend-en>`

    ----

    .. _set_backend-cn:

    * **中文**

    把网络中每个 ``SAFNode`` （或 ``instance`` 类型的模块）的 ``backend`` 设为 ``backend``。SpikingJelly 2.0
    删除了 ``functional.set_backend``，本函数代替它。后端不被支持或无法运行时抛出异常，网络保持不变。

    :param net: 网络
    :param backend: ``'auto'`` （按设备自动选择）、``'torch'``、``'cpp'``、``'cupy'`` 或 ``'triton'``
    :param instance: 只修改此类型的模块；默认所有可选后端的模块（``SAFNode``）
    :return: 被修改的模块数

    ----

    .. _set_backend-en:

    * **English**

    Set ``backend`` on every ``SAFNode`` of ``net`` (or every module of type ``instance``).
    SpikingJelly 2.0 removed ``functional.set_backend``; this replaces it for SAF. Every backend runs
    both step modes. If any module cannot take the backend, an error is raised before anything is
    changed.

    :param net: the network
    :param backend: ``'auto'`` (chosen per device, the default of ``SAFNode``), ``'torch'``,
        ``'cpp'``, ``'cupy'`` or ``'triton'``
    :param instance: only change modules of this type; by default every module that selects a
        backend from the registry (``SAFNode``)
    :return: the number of modules changed
    """
    require_module(net, "set_backend", "net")
    targets = [m for m in net.modules() if isinstance(m, instance or BackendSelectable)]
    for module in targets:
        REGISTRY.check(backend, module.step_mode)
    for module in targets:
        module.backend = backend
    return len(targets)
