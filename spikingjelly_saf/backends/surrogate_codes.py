r"""
Kernel code for surrogate gradients: which surrogate objects the fused backends can run.

**API Language** - 中文 | English

* **中文**: 融合后端（``'cpp'``、``'cupy'``、``'triton'``）需要替代函数导数的 CUDA/Triton 代码。本模块解析一个替代函数对象，
  得到其内核代码；用户可用 :func:`register_surrogate_code` 为自己的替代函数类注册代码。没有内核代码的替代函数
  会回退到 torch 后端，并对每个类只警告一次。
* **English**: the fused backends (``'cpp'``, ``'cupy'``, ``'triton'``) need CUDA or Triton code for a
  surrogate's derivative. This module resolves a surrogate object to its kernel code, and
  :func:`register_surrogate_code` lets users add code for their own surrogate classes. A surrogate
  without kernel code runs on the torch backend, with one warning per class.

Resolution order for a surrogate object ``sg``:

1. a representation-level surrogate (:mod:`spikingjelly_saf.surrogate`):
   :class:`~spikingjelly_saf.surrogate.SpikeRepresentation` has built-in code (a 0/1 mask);
2. a class registered with :func:`register_surrogate_code` (the nearest registered base class wins);
3. the seven SpikingJelly 2.0 built-ins ``Sigmoid, ATan, PiecewiseQuadratic, PiecewiseExp,
   SoftSign, SuperSpike, Erf`` with a numeric ``alpha`` and ``spiking=True``;
4. any object with ``cuda_codes(y, x, dtype)`` (SpikingJelly before 2.0): CUDA code only (``'cupy'``
   and ``'cpp'``);
5. otherwise: no kernel code.

Every derivative is evaluated in float32, whatever the tensor dtype. Importing this module imports
neither CuPy nor Triton.
"""

from __future__ import annotations

import dataclasses
import threading
import warnings
from typing import Callable, Optional

from ..surrogate import RepresentationSurrogate, SpikeRepresentation

__all__ = [
    "SurrogateKernelCode",
    "SurrogateCodeTable",
    "SURROGATE_CODES",
    "BUILTIN_SURROGATES",
    "register_surrogate_code",
    "unregister_surrogate_code",
    "resolve_surrogate_code",
    "surrogate_code_by_id",
    "built_surrogate_key",
    "builtin_cuda_code",
]

#: Level of a kernel surrogate: spike level acts on ``x = H - V_th``; representation level saves
#: the mask ``0 < s I / V_th < 1`` of Spike Representation's clamp.
SPIKE_LEVEL = "spike"
REPRESENTATION_LEVEL = "representation"

#: The SpikingJelly 2.0 surrogates with kernel code, by class name.
BUILTIN_SURROGATES = (
    "Sigmoid", "ATan", "PiecewiseQuadratic", "PiecewiseExp", "SoftSign", "SuperSpike", "Erf",
)
_SPIKINGJELLY_SURROGATE_MODULE = "spikingjelly.activation_based.surrogate"


def _float_literal(value: float) -> str:
    # repr round-trips the double exactly; the cast gives the float32 nearest to it.
    return f"static_cast<float>({float(value)!r})"


def builtin_cuda_code(name: str, alpha: float, y: str, x: str) -> str:
    """CUDA float code that declares ``y``, the derivative of built-in surrogate ``name`` at ``x``."""
    a = _float_literal(alpha)
    bodies = {
        # a e / (1 + e)^2 with e = exp(-a|x|) <= 1: relative accuracy on both sides of the threshold
        # and no overflow; 1 - sigmoid(a|x|) would round to 0 once a|x| > ~16.6.
        "Sigmoid": f"const float sg_e = expf(-({a}) * fabsf({x}));\n"
                   f"const float sg_d = 1.0f + sg_e;\n"
                   f"{y} = (({a}) * sg_e) / (sg_d * sg_d);",
        "ATan": f"const float sg_z = {x} * (1.5707963267948966f * ({a}));\n"
                f"{y} = (0.5f * ({a})) / (1.0f + sg_z * sg_z);",
        # Not fmaxf, which returns 0 for NaN: a NaN membrane gives a NaN gradient, as in torch.
        "PiecewiseQuadratic": f"const float sg_q = ({a}) - ({a}) * ({a}) * fabsf({x});\n"
                              f"{y} = sg_q < 0.0f ? 0.0f : sg_q;",
        "PiecewiseExp": f"{y} = (0.5f * ({a})) * expf(-({a}) * fabsf({x}));",
        "SoftSign": f"const float sg_z = 1.0f / ({a}) + fabsf({x});\n"
                    f"{y} = 1.0f / (2.0f * ({a}) * sg_z * sg_z);",
        "SuperSpike": f"const float sg_z = 1.0f + fabsf({x});\n{y} = ({a}) / (sg_z * sg_z);",
        "Erf": f"const float sg_z = ({a}) * {x};\n"
               f"{y} = (0.5641895835477563f * ({a})) * expf(-sg_z * sg_z);",
    }
    return bodies[name]


@dataclasses.dataclass(frozen=True)
class SurrogateKernelCode:
    """The kernel view of one surrogate object.

    :param label: a readable name, e.g. ``'Sigmoid(alpha=4.0)'``
    :param level: ``'spike'`` or ``'representation'``
    :param cuda: CUDA float code declaring ``const float grad_s_to_h`` from ``const float over_th``
        (spike level), or ``None`` when no CUDA code exists
    :param triton: a ``triton.jit`` function ``fn(x, p0, p1)`` giving the derivative in float32, the
        name of a built-in one (resolved by the Triton backend), or ``None``
    :param params: ``(p0, p1)`` passed to the Triton function at run time
    """

    label: str
    level: str
    cuda: Optional[str]
    triton: object
    params: tuple[float, float] = (0.0, 0.0)

    def key(self) -> tuple:
        return (self.label, self.level, self.cuda, id(self.triton) if callable(self.triton)
                else self.triton, self.params)


@dataclasses.dataclass(frozen=True)
class _Registration:
    cuda: Optional[Callable]
    triton: object
    params: Optional[Callable]


class SurrogateCodeTable:
    """What the fused backends know about surrogates, in one object: user registrations by class,
    interned kernel codes by id (the integer the custom ops carry), and the classes already warned
    about. Every change holds its lock."""

    def __init__(self):
        self.registrations: dict[type, _Registration] = {}
        self.interned: dict[tuple, int] = {}
        self.by_id: list[SurrogateKernelCode] = []
        self.warned: set[tuple[str, str]] = set()
        #: _build's answers for surrogates whose code depends only on (class, spiking, alpha), and
        #: their interned ids by (that key, backend): every step of every layer asks.
        self.built: dict[tuple, tuple] = {}
        self.resolved: dict[tuple, int] = {}
        #: Counts the changes of registrations, so that answers kept elsewhere can be keyed by it.
        self.generation = 0
        self.lock = threading.Lock()

    def register(self, cls: type, registration: _Registration) -> None:
        with self.lock:
            self.registrations[cls] = registration
            self.warned.difference_update({w for w in self.warned if w[0] == cls.__qualname__})
            self.built.clear()
            self.resolved.clear()
            self.generation += 1

    def unregister(self, cls: type) -> None:
        with self.lock:
            self.registrations.pop(cls, None)
            self.built.clear()
            self.resolved.clear()
            self.generation += 1

    def registration_of(self, surrogate) -> Optional[_Registration]:
        """The nearest registered base class's registration."""
        for base in type(surrogate).__mro__:
            if base in self.registrations:
                return self.registrations[base]
        return None

    def intern(self, code: SurrogateKernelCode) -> int:
        key = code.key()
        with self.lock:
            found = self.interned.get(key)
            if found is None:
                found = len(self.by_id)
                self.by_id.append(code)
                self.interned[key] = found
            return found

    def first_warning(self, key: tuple[str, str]) -> bool:
        """True the first time ``(class name, backend)`` is met without code."""
        with self.lock:
            if key in self.warned:
                return False
            self.warned.add(key)
            return True


#: The table every backend uses.
SURROGATE_CODES = SurrogateCodeTable()


def register_surrogate_code(
    cls: type,
    cuda: Optional[Callable] = None,
    triton=None,
    params: Optional[Callable] = None,
) -> None:
    r"""
    **API Language** - :ref:`中文 <register_surrogate_code-cn>` | :ref:`English <register_surrogate_code-en>`

    ----

    .. _register_surrogate_code-cn:

    * **中文**

    为用户自定义的（脉冲层面）替代函数类注册融合内核代码。

    :param cls: 替代函数类（其子类同样适用）
    :param cuda: ``cuda(surrogate, y, x) -> str``，返回 CUDA float 代码，用 ``x`` （float）声明 ``y``
    :param triton: ``triton.jit`` 函数 ``fn(x, p0, p1)``，返回 float32 导数
    :param params: ``params(surrogate) -> (p0, p1)``；默认 ``(surrogate.alpha, 0.0)``

    ----

    .. _register_surrogate_code-en:

    * **English**

    Register fused-kernel code for a user-defined (spike-level) surrogate class.

    :param cls: the surrogate class (its subclasses use the code too, unless they register their own)
    :param cuda: ``cuda(surrogate, y, x) -> str`` returning CUDA float code that declares ``y`` from
        the float ``x``, the contract of SpikingJelly's ``cuda_codes(y, x, dtype='float')``, e.g.
        ``lambda sg, y, x: f"{y} = {sg.alpha}f / (1.0f + fabsf({x}));"``
    :param triton: a ``triton.jit`` function ``fn(x, p0, p1)`` returning the float32 derivative
    :param params: ``params(surrogate) -> (p0, p1)``, the run-time arguments of the Triton
        function; by default ``(surrogate.alpha, 0.0)``

    Give at least one of ``cuda`` and ``triton``; a backend without code for the class runs the
    surrogate on the torch backend and warns once.
    """
    if not isinstance(cls, type):
        raise TypeError(f"cls must be a class, got {cls!r}. Pass type(surrogate) to register an instance's class.")
    if cuda is None and triton is None:
        raise ValueError("register_surrogate_code needs cuda=..., triton=... or both.")
    if cuda is not None and not callable(cuda):
        raise TypeError("cuda must be a callable (surrogate, y, x) -> str of CUDA float code.")
    if triton is not None and not callable(triton):
        raise TypeError("triton must be a triton.jit function fn(x, p0, p1).")
    if issubclass(cls, RepresentationSurrogate):
        raise ValueError(
            f"{cls.__name__} is a representation-level surrogate; fused kernels support "
            "SpikeRepresentation only at that level. Other representation surrogates run on the torch backend."
        )
    SURROGATE_CODES.register(cls, _Registration(cuda, triton, params))


def unregister_surrogate_code(cls: type) -> None:
    """Remove a registration made with :func:`register_surrogate_code` (no error if absent)."""
    SURROGATE_CODES.unregister(cls)


def surrogate_code_by_id(code_id: int) -> SurrogateKernelCode:
    """The code interned under ``code_id`` (the integer the custom ops carry)."""
    return SURROGATE_CODES.by_id[code_id]


def _alpha_of(surrogate) -> Optional[float]:
    alpha = getattr(surrogate, "alpha", None)
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
        return None
    return float(alpha)


def _describe(surrogate) -> str:
    alpha = _alpha_of(surrogate)
    name = type(surrogate).__qualname__
    return f"{name}(alpha={alpha})" if alpha is not None else name


def _build(surrogate) -> tuple[Optional[SurrogateKernelCode], str]:
    """The kernel code, or ``None`` and the reason."""
    if isinstance(surrogate, RepresentationSurrogate):
        if not surrogate.spiking:
            return None, "it is in primitive mode (spiking=False), a rate network rather than a spiking neuron"
        if type(surrogate) is SpikeRepresentation:
            return SurrogateKernelCode("SpikeRepresentation", REPRESENTATION_LEVEL, None,
                                       "SpikeRepresentation"), ""
        return None, "fused kernels implement only SpikeRepresentation at representation level"
    if getattr(surrogate, "spiking", True) is False:
        return None, "it is in primitive mode (spiking=False), so the neuron does not emit spikes"
    label = _describe(surrogate)
    registration = SURROGATE_CODES.registration_of(surrogate)
    if registration is not None:
        cuda = None
        if registration.cuda is not None:
            cuda = registration.cuda(surrogate, "const float grad_s_to_h", "over_th")
        if registration.params is not None:
            params = tuple(float(p) for p in registration.params(surrogate))
        else:
            params = (_alpha_of(surrogate) or 0.0,)
        params = (params + (0.0, 0.0))[:2]
        return SurrogateKernelCode(label, SPIKE_LEVEL, cuda, registration.triton, params), ""
    name = type(surrogate).__name__
    if type(surrogate).__module__ == _SPIKINGJELLY_SURROGATE_MODULE and name in BUILTIN_SURROGATES:
        alpha = _alpha_of(surrogate)
        if alpha is None:
            return None, "its alpha is not a Python number (a learnable alpha has no kernel code)"
        cuda = builtin_cuda_code(name, alpha, "const float grad_s_to_h", "over_th")
        return SurrogateKernelCode(label, SPIKE_LEVEL, cuda, name, (alpha, 0.0)), ""
    cuda_codes = getattr(surrogate, "cuda_codes", None)
    if callable(cuda_codes):
        cuda = cuda_codes(y="const float grad_s_to_h", x="over_th", dtype="float")
        return SurrogateKernelCode(label, SPIKE_LEVEL, cuda, None), ""
    return None, "it has no kernel code"


#: Backends that compile the CUDA code of a surrogate (the others run its Triton code).
CUDA_CODE_BACKENDS = ("cupy", "cpp")


def built_surrogate_key(surrogate) -> Optional[tuple]:
    """The key of :attr:`SurrogateCodeTable.built` for SpikingJelly's built-ins and the representation
    level, which every step meets: their code is a function of class, ``spiking`` and ``alpha`` (read
    at every call, so an annealed ``alpha`` gets its own code). ``None`` for the others, whose code
    may read any attribute and is built at every call."""
    cls = type(surrogate)
    builtin = cls.__module__ == _SPIKINGJELLY_SURROGATE_MODULE and cls.__name__ in BUILTIN_SURROGATES
    if not (builtin or isinstance(surrogate, RepresentationSurrogate)):
        return None
    if SURROGATE_CODES.registration_of(surrogate) is not None:
        return None
    return cls, getattr(surrogate, "spiking", True), _alpha_of(surrogate)


def resolve_surrogate_code(surrogate, backend: str, warn: bool = True) -> Optional[int]:
    """The interned id of ``surrogate``'s kernel code for ``backend`` (``'cupy'``, ``'cpp'`` or ``'triton'``).

    ``None`` means "run on the torch backend"; with ``warn``, the first time a class is met this way
    a ``UserWarning`` names it and says how to add code (``backend='auto'`` does not warn: it asked
    for no particular kernel).
    """
    key = built_surrogate_key(surrogate)
    if key is not None:
        found = SURROGATE_CODES.resolved.get((key, backend))
        if found is not None:
            return found
    built = SURROGATE_CODES.built.get(key) if key is not None else None
    if built is None:
        built = _build(surrogate)
        if key is not None:
            SURROGATE_CODES.built[key] = built
    code, reason = built
    if code is not None:
        if backend in CUDA_CODE_BACKENDS and code.level == SPIKE_LEVEL and code.cuda is None:
            code, reason = None, "it has Triton code but no CUDA code"
        elif backend == "triton" and code.level == SPIKE_LEVEL and code.triton is None:
            code, reason = None, "it has CUDA code (cuda_codes) but no Triton code"
    if code is not None:
        code_id = SURROGATE_CODES.intern(code)
        if key is not None:
            SURROGATE_CODES.resolved[(key, backend)] = code_id
        return code_id
    key = (type(surrogate).__qualname__, backend)
    if warn and SURROGATE_CODES.first_warning(key):
        warnings.warn(
            f"surrogate {type(surrogate).__qualname__} has no {backend!r} kernel code ({reason}); "
            f"SAFNode(backend={backend!r}) runs it on the torch backend. Add code with "
            "spikingjelly_saf.register_surrogate_code(cls, cuda=..., triton=...).",
            UserWarning,
            stacklevel=4,
        )
    return None


def is_spike_level_kernel(code_id: int) -> bool:
    return surrogate_code_by_id(code_id).level == SPIKE_LEVEL

