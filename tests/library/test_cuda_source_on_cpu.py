"""The CUDA source of the fused kernels, executed on the CPU, through the real host code.

For every surrogate with kernel code (SpikingJelly's built-ins, ``SpikeRepresentation``, a
``cuda_codes`` object and a class registered with ``register_surrogate_code``), the CUDA
translation unit (``kernel_source.cuda_source``) is compiled with the C++ prelude that defines the
CUDA built-ins (``cpu_source.cpu_source``) and the ``__global__`` kernels are launched as CUDA would: every thread of ``<<<grid, block>>>`` runs the
kernel with its ``blockIdx``/``threadIdx``, with the grid and arguments of ``cuda_host`` (the code
the CuPy backend launches with). Every pointer the kernels get lies between two guard regions that
must be unchanged afterwards, so a write outside a buffer fails the test.

* forward: bitwise equal to the torch backend (tails, T=1, continuation, NaN/inf/subnormal inputs);
* backward: within ``GRAD_ULP_BOUND`` of the float64 reference (see :func:`grad_error_in_ulps`),
  a subnormal result flushed to a zero of its sign, and ``SpikeRepresentation`` bitwise equal to the
  torch backend;
* the backward's grid-stride loop with fewer blocks than elements.
"""

from __future__ import annotations

import ctypes
import math

import pytest
import torch
from spikingjelly.activation_based import surrogate

import spikingjelly_saf as saf
from spikingjelly_saf import backends
from spikingjelly_saf.backends import cpp_backend, cpu_build, cuda_host, surrogate_codes
from spikingjelly_saf.backends.kernel_source import GRADIENT_FLUSH_BELOW
from spikingjelly_saf.surrogate import SpikeRepresentation

pytestmark = pytest.mark.skipif(cpu_build.compiler() is None, reason="no C++ compiler")


class LegacyCudaSurrogate:
    """A SpikingJelly < 2.0 style surrogate: CUDA code from cuda_codes(y, x, dtype); sg'(x) = 1/(1+(2x)^2)."""

    spiking = True

    def __call__(self, x):
        return surrogate.ATan(alpha=2.0)(x)

    def cuda_codes(self, y, x, dtype):
        return f"const float sg_ax = 2.0f * {x};\n{y} = 1.0f / (1.0f + sg_ax * sg_ax);"

    @staticmethod
    def derivative(x):
        return 1.0 / (1.0 + (2.0 * x) ** 2)


class RegisteredSurrogate:
    """A user surrogate given CUDA code with register_surrogate_code: sg'(x) = alpha / (1 + beta |x|)^2."""

    spiking = True
    alpha, beta = 1.5, 2.0

    def __call__(self, x):
        return surrogate.ATan(alpha=2.0)(x)

    @staticmethod
    def derivative(x):
        return 1.5 / (1.0 + 2.0 * x.abs()) ** 2


@pytest.fixture(autouse=True, scope="module")
def registered_surrogate():
    saf.register_surrogate_code(
        RegisteredSurrogate,
        cuda=lambda sg, y, x: f"const float z = 1.0f + {sg.beta}f * fabsf({x});\n{y} = {sg.alpha}f / (z * z);")
    yield
    surrogate_codes.unregister_surrogate_code(RegisteredSurrogate)


BUILTINS = [
    surrogate.Sigmoid(alpha=4.0), surrogate.ATan(alpha=2.0), surrogate.PiecewiseQuadratic(alpha=1.5),
    surrogate.PiecewiseExp(alpha=2.0), surrogate.SoftSign(alpha=2.0), surrogate.SuperSpike(alpha=1.0),
    surrogate.Erf(alpha=2.0),
]
SPIKE_LEVEL = BUILTINS + [LegacyCudaSurrogate(), RegisteredSurrogate()]
ALL = SPIKE_LEVEL + [SpikeRepresentation()]

#: Backward error bound, in float32 ulps of the float64 reference, scaled by 1 + the derivative's
#: condition number at x (grad_error_in_ulps). Measured on the CPU over x in [-60, 60]: Sigmoid 1.9,
#: Erf 1.5, ATan 1.4, SoftSign and SuperSpike 1.1, the others below 1 (PyTorch's own float32 path:
#: the same, except Sigmoid, about 1e6 for large positive x). CUDA's expf may add an ulp.
GRAD_ULP_BOUND = 3.0
GUARD_BYTES = 256
GUARD = 0xA5


def code_id_of(sg) -> int:
    return surrogate_codes.resolve_surrogate_code(sg, "cpp")


def library(sg):
    return cpp_backend.library(code_id_of(sg))


def saved_itemsize(sg) -> int:
    return 1 if isinstance(sg, SpikeRepresentation) else 4


class GuardedLaunch:
    """An emulated CUDA launch in which every buffer is a copy placed between two guard regions."""

    def __init__(self, sg):
        self.library, self.saved_size = library(sg), saved_itemsize(sg)
        self.launches = []

    def sizes(self, name, args):
        if name == "saf_forward":
            steps, neurons = args[5].value, args[6].value
            return [4 * steps * neurons, 4 * neurons, 16 * steps, 4 * steps * neurons,
                    self.saved_size * steps * neurons], (3, 4)
        numel = args[3].value
        return [4 * numel, self.saved_size * numel, 4 * numel], (2,)

    def __call__(self, name, grid, block, args):
        self.launches.append((name, grid, block))
        sizes, outputs = self.sizes(name, args)
        guarded, copies = [], []
        for index, size in enumerate(sizes):
            if args[index].value is None:
                guarded.append(args[index])
                copies.append(None)
                continue
            buffer = (ctypes.c_ubyte * (size + 2 * GUARD_BYTES))()
            ctypes.memset(buffer, GUARD, len(buffer))
            inner = ctypes.addressof(buffer) + GUARD_BYTES
            ctypes.memmove(inner, args[index].value, size)
            guarded.append(ctypes.c_void_p(inner))
            copies.append(buffer)
        launch = self.library.saf_launch_forward if name == "saf_forward" else self.library.saf_launch_backward
        launch(grid, block, *guarded, *args[len(sizes):])
        for index, (buffer, size) in enumerate(zip(copies, sizes)):
            if buffer is None:
                continue
            raw = bytes(buffer)
            assert raw[:GUARD_BYTES] == bytes([GUARD]) * GUARD_BYTES, f"{name} wrote before buffer {index}"
            assert raw[GUARD_BYTES + size:] == bytes([GUARD]) * GUARD_BYTES, f"{name} wrote after buffer {index}"
            if index in outputs:
                ctypes.memmove(args[index].value, ctypes.addressof(buffer) + GUARD_BYTES, size)
            else:
                assert ctypes.string_at(args[index].value, size) == raw[GUARD_BYTES:GUARD_BYTES + size], \
                    f"{name} wrote into its input {index}"


def run_cuda_source(sg, x_seq, abar_prev, params, weight_sum_prev, save=True, max_blocks=1 << 20, launch=None):
    """Forward (and with ``save`` the saved tensor) through cuda_host and the emulated launch."""
    launch = launch or GuardedLaunch(sg)
    table = saf.functional.coefficient_table(params, weight_sum_prev, x_seq.shape[0])
    coefficients = backends.custom_ops.coefficient_tensor(table, x_seq.device)
    flat = x_seq.reshape(x_seq.shape[0], -1).contiguous()
    abar_seq, saved = cuda_host.forward(flat, abar_prev.reshape(-1).contiguous(), coefficients, params.v_threshold,
                                        params.input_scale / params.v_threshold, code_id_of(sg), save, launch)
    return abar_seq.view(x_seq.shape), saved, launch


def saved_at(sg, over_th: torch.Tensor) -> torch.Tensor:
    """What the forward saves where ``H - V_th`` is ``over_th``: one step whose coefficients make
    ``H = I`` exactly (c s = 1, no reset term, V_th = 0), so the backward's input can be fed any value,
    NaN, infinities and signed zeros included."""
    launch = GuardedLaunch(sg)
    coefficients = torch.tensor([[1.0, 0.0, 0.0, 1.0]])
    flat = over_th.reshape(1, -1).contiguous()
    _, saved = cuda_host.forward(flat, torch.zeros(flat.shape[1]), coefficients, 0.0, 1.0, code_id_of(sg), True,
                                 launch)
    return saved.view(over_th.shape)


def torch_forward(sg, x_seq, abar_prev, params, weight_sum_prev):
    state = saf.functional.SAFState(abar_prev, weight_sum_prev)
    return backends.REGISTRY.multi_step("torch", x_seq, state, params, sg)


def inputs(steps, neurons, seed):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(steps, neurons, generator=generator) * 1.5 + 0.6
    return x, torch.rand(neurons, generator=generator)


# ---- the float64 reference of the backward ---------------------------------------------------------
def reference_derivative(sg, x: torch.Tensor) -> torch.Tensor:
    """sg'(x) in float64, from SpikingJelly's own backward (the legacy surrogate: its formula).

    Evaluated at -|x|: every derivative here is even, and SpikingJelly's Sigmoid formula
    (1 - sigmoid(a x)) sigmoid(a x) a loses its digits for large positive a x, even in float64."""
    x = -x.abs()
    if isinstance(sg, (LegacyCudaSurrogate, RegisteredSurrogate)):
        return sg.derivative(x)
    return type(sg).backward(torch.ones_like(x), x, **sg._sg_params)


def condition_number(sg, x: torch.Tensor) -> torch.Tensor:
    """|x sg''(x) / sg'(x)| (and the cancellation of PiecewiseQuadratic): how much a relative error
    of the argument, which float32 cannot avoid, grows in the derivative."""
    a = float(getattr(sg, "alpha", 2.0))
    ax = (a * x).abs()
    name = type(sg).__name__
    if name in ("Sigmoid", "PiecewiseExp"):
        return ax
    if name == "Erf":
        return 2 * ax * ax
    if name == "PiecewiseQuadratic":
        return (a * ax) / (a - a * ax).abs().clamp_min(1e-300)
    return torch.full_like(x, 2.0)  # ATan, SoftSign, SuperSpike, the two user ones: |x sg''/sg'| <= 2


def ulp(x: torch.Tensor) -> torch.Tensor:
    """The float32 ulp at |x| (the smallest subnormal at 0), as float64."""
    x32 = x.abs().to(torch.float32)
    return (torch.nextafter(x32, torch.tensor(math.inf)) - x32).to(torch.float64)


def grad_error_in_ulps(sg, grad, saved, over_th, input_scale) -> torch.Tensor:
    """|kernel - reference| in float32 ulps of the reference, over (1 + condition number); a reference
    below float32's smallest normal number must come out as a zero of its sign (the kernels flush it)."""
    x = over_th.to(torch.float64)
    reference = grad.to(torch.float64) * reference_derivative(sg, x) * input_scale
    error = (saved.to(torch.float64) - reference).abs() / (ulp(reference) * (1 + condition_number(sg, x)))
    tiny = reference.abs() < GRADIENT_FLUSH_BELOW
    flushed = (saved == 0) & (torch.signbit(saved) == torch.signbit(reference))
    # A reference just below the smallest normal may round up to it in float32: both are right.
    rounded_up = saved.abs() == GRADIENT_FLUSH_BELOW
    return torch.where(tiny & (flushed | rounded_up), torch.zeros_like(error), error)


# ---- tests -----------------------------------------------------------------------------------------------
CASES = [  # (steps, neurons, tau, decay_input, weight_sum_prev)
    (1, 1, 2.0, False, 0.0), (1, 257, 4.0, True, 1.5), (7, 255, 2.0, False, 0.0), (7, 256, math.inf, False, 3.0),
    (3, 1000, 1.0, False, 0.0), (16, 513, 4.0, False, 0.0),
]


@pytest.mark.parametrize("sg", ALL, ids=lambda s: type(s).__name__)
def test_forward_bitwise_and_backward_within_bound(sg):
    worst = 0.0
    for index, (steps, neurons, tau, decay_input, weight_sum_prev) in enumerate(CASES):
        params = saf.functional.SAFParameters.from_tau(tau, 1.0, decay_input)
        x, abar_prev = inputs(steps, neurons, seed=index)
        if weight_sum_prev == 0.0:
            abar_prev = torch.zeros_like(abar_prev)
        abar_seq, saved, launch = run_cuda_source(sg, x, abar_prev, params, weight_sum_prev)
        assert [entry[1] for entry in launch.launches] == [math.ceil(neurons / cuda_host.THREADS)]
        x_ref = x.clone().requires_grad_()
        reference, state = torch_forward(sg, x_ref, abar_prev, params, weight_sum_prev)
        assert torch.equal(abar_seq, reference), (index, (abar_seq - reference).abs().max())
        grad_out = torch.randn(abar_seq.shape, generator=torch.Generator().manual_seed(100 + index))
        grad = cuda_host.backward(grad_out, saved, params.input_scale, params.input_scale / params.v_threshold,
                                  1 << 20, launch)
        (grad_ref,) = torch.autograd.grad(reference, x_ref, grad_out)
        if isinstance(sg, SpikeRepresentation):
            assert torch.equal(grad, grad_ref)
            continue
        # What the forward saved is the derivative at the torch path's surrogate argument H - V_th.
        weight_sums = saf.functional.weight_sums(weight_sum_prev, params.decay, steps)
        abar_before = torch.cat([abar_prev[None], reference[:-1].detach()])
        over_th = torch.stack([
            saf.functional.membrane_before_fire(x[t], abar_before[t], saf.functional.step_coefficients(
                params, weight_sum_prev if t == 0 else weight_sums[t - 1])) - params.v_threshold
            for t in range(steps)])
        assert torch.equal(saved, saved_at(sg, over_th))
        worst = max(worst, grad_error_in_ulps(sg, grad_out, grad, over_th, params.input_scale).max().item())
    assert worst <= GRAD_ULP_BOUND, worst


@pytest.mark.parametrize("sg", SPIKE_LEVEL, ids=lambda s: type(s).__name__)
def test_backward_across_the_whole_range_and_nan(sg):
    """The derivative alone (grad 1, s 1) on x from -60 to 60 and at its special values."""
    x = torch.cat([torch.linspace(-60, 60, 20001), torch.tensor([0.0, -0.0, 1e-40, -1e-40, math.inf, -math.inf,
                                                                 math.nan, 1 / 1.5, -1 / 1.5])])
    grad = torch.ones_like(x)
    result = cuda_host.backward(grad, saved_at(sg, x), 1.0, 1.0, 1 << 20, GuardedLaunch(sg))
    finite = x.isfinite()
    assert grad_error_in_ulps(sg, grad[finite], result[finite], x[finite], 1.0).max().item() <= GRAD_ULP_BOUND
    assert result[x.isnan()].isnan().all(), "NaN in must give NaN out"
    assert (result[x.isinf()] == 0).all()


def test_subnormal_gradients_are_flushed_to_zeros_of_their_sign():
    """Sigmoid(alpha=4) at |x| = 5 has the derivative 8.2e-9; an incoming gradient of 1e-30 makes the
    product 8.2e-39, a float32 subnormal, which the torch path returns and the kernel returns as a
    zero of its sign. At x = -1 the product (7e-32) is normal and stays within the bound."""
    sg = surrogate.Sigmoid(alpha=4.0)
    x = torch.tensor([-5.0, -5.0, -1.0, -1.0])
    grad = torch.tensor([1e-30, -1e-30, 1e-30, -1e-30])
    result = cuda_host.backward(grad, saved_at(sg, x), 1.0, 1.0, 1 << 20, GuardedLaunch(sg))
    x_ref = x.clone().requires_grad_()
    (torch_path,) = torch.autograd.grad(sg(x_ref), x_ref, grad)
    assert (torch_path[:2] != 0).all() and (torch_path[:2].abs() < GRADIENT_FLUSH_BELOW).all()
    assert torch.equal(result[:2], torch.zeros(2))
    assert torch.equal(torch.signbit(result[:2]), torch.tensor([False, True]))
    assert (result[2:].abs() >= GRADIENT_FLUSH_BELOW).all()
    assert grad_error_in_ulps(sg, grad, result, x, 1.0).max().item() <= GRAD_ULP_BOUND


def test_sigmoid_derivative_is_accurate_on_both_sides_of_the_threshold():
    """a e / (1 + e)^2, e = exp(-a|x|): where 1 - sigmoid(a|x|) gave 0 (a|x| > ~16.6) or lost digits."""
    sg = surrogate.Sigmoid(alpha=4.0)
    x = torch.tensor([-4.2, 4.2, -3.0, 3.0, -10.0, 10.0, -20.0, 20.0])
    result = cuda_host.backward(torch.ones_like(x), saved_at(sg, x), 1.0, 1.0, 1 << 20, GuardedLaunch(sg))
    reference = reference_derivative(sg, x.to(torch.float64))
    assert abs(reference[0].item() - 2.02e-7) < 0.01e-7
    relative = ((result.to(torch.float64) - reference) / reference).abs()
    assert relative.max().item() < 1e-5, relative


def test_grid_stride_loop_with_fewer_blocks_than_elements():
    sg = surrogate.ATan(alpha=2.0)
    params = saf.functional.SAFParameters.from_tau(2.0)
    x, abar_prev = inputs(5, 700, seed=9)
    _, saved, _ = run_cuda_source(sg, x, abar_prev, params, 1.0)
    grad_out = torch.randn(saved.shape, generator=torch.Generator().manual_seed(3))
    results = []
    for max_blocks in (1, 3, 1 << 20):
        launch = GuardedLaunch(sg)
        results.append(cuda_host.backward(grad_out, saved, 1.0, 1.0, max_blocks, launch))
        assert launch.launches == [("saf_backward", min(max_blocks, math.ceil(3500 / 256)), 256)]
    assert torch.equal(results[0], results[2]) and torch.equal(results[1], results[2])


@pytest.mark.parametrize("sg", [surrogate.Sigmoid(alpha=4.0), SpikeRepresentation()], ids=lambda s: type(s).__name__)
def test_continuation_carries_the_state_bitwise(sg):
    """Chunks of 1, 3 and 5 steps, each continuing from the last, equal one launch over 9 steps."""
    params = saf.functional.SAFParameters.from_tau(4.0, 0.8, True)
    x, _ = inputs(9, 301, seed=4)
    whole, _, _ = run_cuda_source(sg, x, torch.zeros(301), params, 0.0, save=False)
    chunks, abar, weight_sum, start = [], torch.zeros(301), 0.0, 0
    for length in (1, 3, 5):
        out, saved, _ = run_cuda_source(sg, x[start:start + length], abar, params, weight_sum, save=False)
        assert saved is None
        chunks.append(out)
        abar, weight_sum = out[-1].clone(), saf.functional.weight_sums(weight_sum, params.decay, length)[-1]
        start += length
    assert torch.equal(torch.cat(chunks), whole)
    reference, _ = torch_forward(sg, x, torch.zeros(301), params, 0.0)
    assert torch.equal(whole, reference)


def test_special_values_forward_bitwise():
    """NaN, infinities, subnormals and values at the threshold, against the torch backend."""
    sg = surrogate.Sigmoid(alpha=4.0)
    params = saf.functional.SAFParameters.from_tau(2.0)
    specials = torch.tensor([math.nan, math.inf, -math.inf, 1e-40, -1e-40, 0.0, -0.0, 1.0, 2.0 / 3.0,
                             torch.finfo(torch.float32).max, torch.finfo(torch.float32).tiny])
    x = torch.stack([specials.roll(t) for t in range(6)])
    for weight_sum_prev in (0.0, 1.0):
        abar_prev = torch.zeros(specials.numel()) if weight_sum_prev == 0.0 else torch.rand(specials.numel())
        abar_seq, _, _ = run_cuda_source(sg, x, abar_prev, params, weight_sum_prev)
        reference, _ = torch_forward(sg, x, abar_prev, params, weight_sum_prev)
        torch.testing.assert_close(abar_seq, reference, rtol=0, atol=0, equal_nan=True)


def test_a_write_outside_a_buffer_is_detected():
    """The guard regions catch a kernel that writes one element too many (the check cannot pass vacuously)."""
    sg = surrogate.ATan(alpha=2.0)
    grad, saved = torch.randn(300), torch.randn(300)

    class OffByOne(GuardedLaunch):
        def __call__(self, name, grid, block, args):
            args = list(args)
            args[3] = ctypes.c_longlong(args[3].value + 1)  # numel + 1: the last thread writes past the end
            sizes = super().sizes

            def sizes_without_the_extra(name, patched):
                found, outputs = sizes(name, patched)
                return [size - step for size, step in zip(found, (4, 4, 4))], outputs

            self.sizes = sizes_without_the_extra
            super().__call__(name, grid, block, tuple(args))

    with pytest.raises(AssertionError, match="wrote after buffer"):
        cuda_host.backward(grad, saved, 2.0, 1.0, 1 << 20, OffByOne(sg))


def test_cupy_backend_host_code_with_a_cupy_that_launches_on_the_cpu(monkeypatch):
    """The CuPy backend's own forward_impl/backward_impl, with a stand-in CuPy module whose kernels
    are the emulated CPU launches: the NumPy argument types CuPy receives, the grid, the stream and
    device contexts, and the results (bitwise forward, grad within the bound)."""
    import importlib
    import sys
    import types

    import numpy as np

    sg = surrogate.Sigmoid(alpha=4.0)
    launch = GuardedLaunch(sg)
    contexts = []

    class Kernel:
        def __init__(self, name):
            self.name = name

        def __call__(self, grid, block, values):
            expected = {"saf_forward": (np.uint64,) * 5 + (np.int32, np.int64, np.float32, np.float32),
                        "saf_backward": (np.uint64,) * 3 + (np.int64, np.float32, np.float32)}[self.name]
            assert tuple(type(v) for v in values) == expected, values
            to_ctypes = {np.uint64: lambda v: ctypes.c_void_p(int(v) or None), np.int32: ctypes.c_int,
                         np.int64: ctypes.c_longlong, np.float32: ctypes.c_float}
            launch(self.name, grid[0], block[0], tuple(to_ctypes[type(v)](v.item() if type(v) is not np.uint64
                                                                          else v) for v in values))

    class Context:
        def __init__(self, *args):
            self.args = args

        def __enter__(self):
            contexts.append(self.args)

        def __exit__(self, *exc):
            return False

    fake = types.ModuleType("cupy")
    fake.RawModule = lambda code, options: types.SimpleNamespace(get_function=Kernel)
    fake.cuda = types.SimpleNamespace(Device=Context, ExternalStream=Context)
    monkeypatch.setitem(sys.modules, "cupy", fake)
    monkeypatch.delitem(sys.modules, "spikingjelly_saf.backends.cupy_backend", raising=False)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: types.SimpleNamespace(cuda_stream=1234))
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda device=None: types.SimpleNamespace(multi_processor_count=1))
    try:
        cupy_backend = importlib.import_module("spikingjelly_saf.backends.cupy_backend")
        params = saf.functional.SAFParameters.from_tau(2.0)
        x, abar_prev = inputs(4, 9000, seed=21)
        table = backends.custom_ops.coefficient_tensor(saf.functional.coefficient_table(params, 1.0, 4), x.device)
        abar_seq, saved = cupy_backend.forward_impl(x, abar_prev, table, 1.0, 1.0, code_id_of(sg), True)
        reference, _ = torch_forward(sg, x, abar_prev, params, 1.0)
        assert torch.equal(abar_seq, reference)
        grad_out = torch.randn(x.shape, generator=torch.Generator().manual_seed(2))
        grad = cupy_backend.backward_impl(grad_out, saved, 1.0, 1.0, code_id_of(sg))
        _, saved_by_the_source, _ = run_cuda_source(sg, x, abar_prev, params, 1.0)
        assert torch.equal(saved, saved_by_the_source)
        assert torch.equal(grad, cuda_host.backward(grad_out, saved, 1.0, 1.0, 1 << 20, GuardedLaunch(sg)))
        # one block per 256 neurons; the backward's grid is capped at 32 blocks per multiprocessor
        assert launch.launches == [("saf_forward", math.ceil(9000 / 256), 256), ("saf_backward", 32, 256)]
        # Each launch in the tensor's device (here a CPU tensor: index None) and on PyTorch's current stream.
        assert [c for c in contexts if c != (None,)] == [(1234,), (1234,)] and contexts.count((None,)) == 3
    finally:
        sys.modules.pop("spikingjelly_saf.backends.cupy_backend", None)
