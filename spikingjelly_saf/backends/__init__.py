"""
Backends that run SAFNode's step functions.

Every backend implements the same contract, the multi-step function

    run(input_seq, abar_prev, weight_sum_prev, decay, v_threshold, input_scale, surrogate_function)
        -> (abar_seq, weight_sum)

with ``input_seq`` of shape ``[T, *]``, ``abar_prev`` of shape ``[*]`` (already detached), and the
gradient of :mod:`spikingjelly_saf.functional`. ``'torch'`` runs everywhere and in both step modes;
fused backends run the whole sequence in one launch and are multi-step only. Importing this package
never imports CuPy or Triton.
"""

from __future__ import annotations

import functools
from typing import Callable

import torch

from .. import functional as F
from ..surrogate import is_representation_level

__all__ = [
    "SUPPORTED_BACKENDS",
    "torch_step",
    "torch_multi_step",
    "get_multi_step",
    "check_backend",
    "register_multi_step_backend",
    "set_backend",
    "register_surrogate_code",
]

#: Backends per step mode, the same shape as SpikingJelly's ``supported_backends``.
SUPPORTED_BACKENDS = {"s": ("torch",), "m": ("torch",)}

_MULTI_STEP: dict[str, Callable] = {}
_AVAILABILITY_CHECKS: dict[str, Callable[[], None]] = {}


def torch_step(input_current, abar_prev, weight_sum_prev, decay, v_threshold, input_scale,
               surrogate_function):
    """The torch single step: representation-level, spike-level with SpikingJelly's explicit surrogate
    backward (one autograd node), or plain autograd for any other callable surrogate."""
    # Dynamo cannot trace an autograd.Function that takes symbolic floats; compiled code needs no
    # hand-made node anyway, since Inductor fuses the elementwise operations itself.
    compiling = torch.compiler.is_compiling()
    if is_representation_level(surrogate_function):
        step = F.saf_step_representation_traceable if compiling else F.saf_step_representation
    elif F.has_explicit_backward(surrogate_function) and not compiling:
        step = F.saf_step_spike_level
    else:
        step = F.saf_step
    return step(input_current, abar_prev, weight_sum_prev, decay, v_threshold, input_scale,
                surrogate_function)


def torch_multi_step(input_seq, abar_prev, weight_sum_prev, decay, v_threshold, input_scale,
                     surrogate_function):
    step = functools.partial(torch_step, surrogate_function=surrogate_function)
    return F.saf_multi_step(input_seq, abar_prev, weight_sum_prev, decay, v_threshold,
                            input_scale, step)


def register_multi_step_backend(name: str, run: Callable, availability_check: Callable[[], None]):
    """Add a fused multi-step backend. ``availability_check`` raises a clear error when it cannot run."""
    _MULTI_STEP[name] = run
    _AVAILABILITY_CHECKS[name] = availability_check
    if name not in SUPPORTED_BACKENDS["m"]:
        SUPPORTED_BACKENDS["m"] = SUPPORTED_BACKENDS["m"] + (name,)


_MULTI_STEP["torch"] = torch_multi_step


def check_backend(backend: str, step_mode: str) -> None:
    """Raise ``ValueError`` for an unknown backend and the backend's own error when it cannot run."""
    valid = SUPPORTED_BACKENDS.get(step_mode, ())
    if backend not in valid:
        raise ValueError(
            f"backend={backend!r} is not supported in step_mode={step_mode!r}; "
            f"valid backends: {', '.join(repr(b) for b in valid)}."
            + (" Fused backends run in multi-step mode: use step_mode='m'."
               if step_mode == "s" and backend in SUPPORTED_BACKENDS["m"] else "")
        )
    check = _AVAILABILITY_CHECKS.get(backend)
    if check is not None:
        check()
        # Import the backend now, when it is chosen: a traced call (torch.compile, strict
        # torch.export) must not import modules.
        run = _MULTI_STEP[backend]
        _MULTI_STEP[backend] = getattr(run, "resolve", lambda: run)()


def get_multi_step(backend: str) -> Callable:
    return _MULTI_STEP[backend]


# ---- fused backends, imported on first use --------------------------------------------------------
import importlib
import importlib.util
import os

from .surrogate_codes import register_surrogate_code  # noqa: E402  (imports neither CuPy nor Triton)


def _module_missing(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is None
    except (ImportError, ValueError):
        return True


def _check_cupy() -> None:
    missing = []
    if _module_missing("cupy"):
        missing.append("CuPy is not installed")
    import torch

    if not torch.cuda.is_available():
        missing.append("no CUDA device is available to PyTorch")
    if missing:
        raise RuntimeError(
            "backend='cupy' cannot run: " + " and ".join(missing) + ". The CuPy backend needs an NVIDIA "
            'GPU and CuPy: pip install "spikingjelly-saf[cupy]" (or the cupy-cudaXXx wheel matching '
            "your CUDA). Use backend='torch' otherwise."
        )


def _check_triton() -> None:
    import torch

    missing = []
    if _module_missing("triton"):
        missing.append("Triton is not installed")
    interpreting = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
    if not interpreting and not torch.cuda.is_available():
        missing.append("no CUDA device is available to PyTorch (set TRITON_INTERPRET=1 before importing "
                       "Triton to run its CPU interpreter)")
    if missing:
        raise RuntimeError(
            "backend='triton' cannot run: " + " and ".join(missing) + '. Install it with pip install '
            '"spikingjelly-saf[triton]", or use backend=\'torch\'.'
        )


def _lazy_run(module_name: str) -> Callable:
    """A stand-in that imports the backend module on first use; ``resolve()`` gives its real ``run``."""

    def resolve() -> Callable:
        return importlib.import_module(f"{__name__}.{module_name}").run

    def run(*args):
        return resolve()(*args)

    run.__name__ = f"{module_name}_run"
    run.resolve = resolve
    return run


register_multi_step_backend("cupy", _lazy_run("cupy_backend"), _check_cupy)
register_multi_step_backend("triton", _lazy_run("triton_backend"), _check_triton)


def set_backend(net, backend: str, instance=None) -> int:
    r"""
    **API Language** - :ref:`中文 <set_backend-cn>` | :ref:`English <set_backend-en>`

    ----

    .. _set_backend-cn:

    * **中文**

    把网络中每个 ``SAFNode`` （或 ``instance`` 类型的模块）的 ``backend`` 设为 ``backend``。SpikingJelly 2.0
    删除了 ``functional.set_backend``，本函数代替它。后端不被支持或无法运行时抛出异常，网络保持不变。

    :param net: 网络
    :param backend: ``'torch'``、``'cupy'`` 或 ``'triton'``
    :param instance: 只修改此类型的模块；默认 ``SAFNode``
    :return: 被修改的模块数

    ----

    .. _set_backend-en:

    * **English**

    Set ``backend`` on every ``SAFNode`` of ``net`` (or every module of type ``instance``).
    SpikingJelly 2.0 removed ``functional.set_backend``; this replaces it for SAF. Fused backends are
    multi-step only, so call ``functional.set_step_mode(net, 'm')`` first. If any module cannot take
    the backend, an error is raised before anything is changed.

    :param net: the network
    :param backend: ``'torch'``, ``'cupy'`` or ``'triton'``
    :param instance: only change modules of this type; ``SAFNode`` by default
    :return: the number of modules changed
    """
    if instance is None:
        from ..neuron import SAFNode as instance
    targets = [m for m in net.modules() if isinstance(m, instance)]
    for module in targets:
        check_backend(backend, module.step_mode)
    for module in targets:
        module.backend = backend
    return len(targets)
