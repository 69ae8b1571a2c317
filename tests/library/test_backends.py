"""Fused multi-step backends ('triton', 'cupy'): parity with the torch backend, selection, registry.

Triton runs for real through its CPU interpreter. ``TRITON_INTERPRET`` must be set before Triton is
imported, so the interpreter tests run in a child pytest process
(``test_triton_interpreter_suite`` starts it); in the parent process they are skipped. CUDA tests
skip without a GPU.
"""

from __future__ import annotations

import importlib.util
import math
import os
import subprocess
import sys
import warnings

import pytest
import torch
from spikingjelly.activation_based import functional as sj_functional
from spikingjelly.activation_based import layer, surrogate
from nets import OpRecorder

import spikingjelly_saf as saf
from spikingjelly_saf import backends
from spikingjelly_saf.backends import surrogate_codes
from spikingjelly_saf.surrogate import SpikeRepresentation

INTERPRETER_CHILD = os.environ.get("SAF_TRITON_INTERPRETER_CHILD") == "1"
if INTERPRETER_CHILD:
    os.environ["TRITON_INTERPRET"] = "1"  # before the first import of triton in this process
    import triton
    import triton.language as tl

    @triton.jit
    def reciprocal_square_derivative(x, p0, p1):
        z = 1.0 + p1 * tl.abs(x)
        return p0 / (z * z)

# Collected only in the interpreter child (tests/conftest.py deselects them elsewhere), so the
# parent run reports them once, through test_triton_interpreter_suite, instead of as skips.
interpreted = pytest.mark.triton_interpreter
HAS_CUDA = torch.cuda.is_available()
HAS_CUPY = importlib.util.find_spec("cupy") is not None
HAS_TRITON = importlib.util.find_spec("triton") is not None

BUILTINS = [
    surrogate.Sigmoid(alpha=4.0),
    surrogate.ATan(alpha=2.0),
    surrogate.PiecewiseQuadratic(alpha=1.5),
    surrogate.PiecewiseExp(alpha=2.0),
    surrogate.SoftSign(alpha=2.0),
    surrogate.SuperSpike(alpha=1.0),
    surrogate.Erf(alpha=2.0),
]
ALL_KERNEL_SURROGATES = BUILTINS + [SpikeRepresentation()]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
#: Gradient tolerance relative to the largest gradient: the torch backend rounds the surrogate's
#: intermediate results to the dtype and multiplies by c[t] and 1/c[t]; the kernels do not.
GRAD_RTOL = {torch.float32: 2e-6, torch.float16: 4e-3, torch.bfloat16: 3e-2}



def make_inputs(steps, shape, dtype, seed=0):
    generator = torch.Generator().manual_seed(seed)
    # Currents around the threshold, so that neurons fire on some steps and not on others.
    x = torch.randn((steps,) + shape, generator=generator) * 1.2 + 0.6
    abar = torch.rand(shape, generator=generator)
    return x.to(dtype), abar.to(dtype)


def compare_with_torch(backend, surrogate_function, dtype, tau, decay_input, steps, shape,
                       weight_sum_prev=0.0, device="cpu", seed=0):
    """Run backend and torch on the same inputs; forward bitwise, gradient within GRAD_RTOL."""
    x, abar_prev = make_inputs(steps, shape, dtype, seed)
    x, abar_prev = x.to(device), abar_prev.to(device)
    if weight_sum_prev == 0.0:
        abar_prev = torch.zeros_like(abar_prev)
    decay = saf.functional.decay_factor(tau)
    scale = saf.functional.input_scale_factor(tau, decay_input)
    state = saf.functional.SAFState(abar_prev, weight_sum_prev)
    params = saf.functional.SAFParameters(decay, 1.0, scale)
    x_ref = x.clone().requires_grad_()
    x_fused = x.clone().requires_grad_()
    y_ref, after_ref = backends.REGISTRY.multi_step("torch", x_ref, state, params, surrogate_function)
    c_ref = after_ref.weight_sum
    backends.REGISTRY.select(backend, "m")
    recorder = OpRecorder()
    with recorder:
        y_fused, after_fused = backends.REGISTRY.multi_step(backend, x_fused, state, params, surrogate_function)
    c_fused = after_fused.weight_sum
    assert recorder.count(f"spikingjelly_saf.{backend}_forward.default") == 1, recorder.names
    assert c_fused == c_ref
    assert y_fused.dtype == y_ref.dtype and y_fused.shape == y_ref.shape
    assert torch.equal(y_fused, y_ref), (y_fused - y_ref).abs().max()
    grad_out = torch.randn(y_ref.shape, generator=torch.Generator().manual_seed(seed + 1))
    grad_out = grad_out.to(dtype=dtype, device=device)
    (g_ref,) = torch.autograd.grad(y_ref, x_ref, grad_out)
    (g_fused,) = torch.autograd.grad(y_fused, x_fused, grad_out)
    if isinstance(surrogate_function, SpikeRepresentation):
        assert torch.equal(g_fused, g_ref)  # same arithmetic: grad * mask * (s / V_th)
    else:
        scale_of_grads = g_ref.float().abs().max().clamp_min(1e-3)
        torch.testing.assert_close(g_fused.float(), g_ref.float(), rtol=GRAD_RTOL[dtype],
                                   atol=GRAD_RTOL[dtype] * scale_of_grads.item())
    return y_ref


# ---- import and selection (no kernel needed) -------------------------------------------------------
@pytest.mark.slow
def test_import_never_imports_cupy_or_triton():
    """The package imports no kernel module; a CPU node never loads the CuPy or Triton backends, and
    with backend='torch' not even Triton (with 'cpp', PyTorch's custom operators import
    torch._dynamo, which imports Triton: that one is PyTorch's)."""
    code = (
        "import sys, torch, spikingjelly_saf as saf\n"
        "ours = ('spikingjelly_saf.backends.cupy_backend', 'spikingjelly_saf.backends.triton_backend', 'cupy')\n"
        "print(sorted(m for m in ours + ('triton',) if m in sys.modules))\n"
        "saf.SAFNode(step_mode='m', backend='torch')(torch.rand(2, 3))\n"
        "print(sorted(m for m in ours + ('triton',) if m in sys.modules))\n"
        "saf.SAFNode(step_mode='m')(torch.rand(2, 3))\n"
        "print(sorted(m for m in ours if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["[]", "[]", "[]"]


ALL_NAMES = ("torch", "auto", "cpp", "cupy", "triton")


def test_supported_backends_per_step_mode():
    node = saf.SAFNode(step_mode="m")
    assert node.backend == "auto"
    assert node.supported_backends == ALL_NAMES
    node.step_mode = "s"
    assert node.supported_backends == ALL_NAMES


def test_a_multi_step_only_backend_is_refused_in_single_step_mode():
    class MultiStepOnly(backends.TorchBackend):
        name = "multi-only-test"
        step_modes = ("m",)

    registry = backends.BackendRegistry(backends.TorchBackend())
    registry.register(MultiStepOnly())
    assert registry.select("multi-only-test", "m").name == "multi-only-test"
    with pytest.raises(ValueError, match="use step_mode='m'"):
        registry.check("multi-only-test", "s")
    with pytest.raises(ValueError, match="use step_mode='m'"):
        registry.single_step("multi-only-test", torch.rand(3), saf.functional.SAFState(),
                             saf.functional.SAFParameters(0.5), surrogate.ATan())


def test_unknown_backend_names_valid_ones():
    with pytest.raises(ValueError, match="'torch', 'auto', 'cpp', 'cupy', 'triton'"):
        saf.SAFNode(step_mode="m", backend="inductor")


@pytest.mark.skipif(HAS_CUDA and HAS_CUPY, reason="CuPy and CUDA are both available here")
def test_cupy_without_cuda_or_cupy_names_what_is_missing():
    with pytest.raises(RuntimeError) as error:
        saf.SAFNode(step_mode="m", backend="cupy")
    message = str(error.value)
    assert 'pip install "spikingjelly-saf[cupy]"' in message
    if not HAS_CUPY:
        assert "CuPy is not installed" in message
    if not HAS_CUDA:
        assert "no CUDA device" in message


@pytest.mark.skipif(HAS_CUDA or not HAS_TRITON or INTERPRETER_CHILD,
                    reason="needs a machine without CUDA and a process without TRITON_INTERPRET")
def test_triton_without_cuda_explains_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        saf.SAFNode(step_mode="m", backend="triton")


def test_backends_package_does_not_import_the_neuron():
    """No import cycle: the neuron uses the backends, never the other way round (not even lazily)."""
    import ast
    import pathlib

    package = pathlib.Path(backends.__file__).parent
    for path in package.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                names = {node.module or ""} | {f"{node.module or ''}.{a.name}" for a in node.names}
                assert not any(n.split(".")[-1] in ("neuron", "layer") or "training" in n for n in names), (
                    path.name, ast.dump(node))


def test_each_backend_declares_its_contract():
    for name in ALL_NAMES:
        backend = backends.REGISTRY.get(name)
        assert isinstance(backend, backends.Backend) and backend.name == name
        assert backend.step_modes == ("s", "m") and backend.dtypes and backend.surrogates and backend.device_types()
        assert backend.is_available() == (backend.unavailable_reason() is None)
    for name in ("torch", "auto"):
        assert torch.float64 in backends.REGISTRY.get(name).dtypes
    for name in ("cupy", "triton"):
        fused = backends.REGISTRY.get(name)
        assert torch.float64 not in fused.dtypes and fused.install_extra == name
        reason = fused.unavailable_reason()
        assert reason is None or f'"spikingjelly-saf[{name}]"' in reason
    cpp = backends.REGISTRY.get("cpp")
    assert cpp.device_types() == ("cpu",) and cpp.install_extra is None and torch.float64 not in cpp.dtypes
    assert dict(backends.SUPPORTED_BACKENDS) == {"s": ALL_NAMES, "m": ALL_NAMES}


def test_checking_a_backend_changes_nothing():
    before = {name: backends.REGISTRY.get(name) for name in backends.REGISTRY.names("m")}
    for name in ("cupy", "triton", "cpp"):
        for step_mode in ("s", "m"):
            try:
                backends.REGISTRY.check(name, step_mode)
            except RuntimeError:
                pass
    assert {name: backends.REGISTRY.get(name) for name in backends.REGISTRY.names("m")} == before


def test_registry_dispatches_single_step_to_the_named_backend():
    from spikingjelly_saf import functional as saf_functional
    from spikingjelly_saf import gradients

    x = torch.rand(3, 4, dtype=torch.float64)
    params = saf_functional.SAFParameters.from_tau(2.0)
    abar, state = backends.REGISTRY.single_step("torch", x, saf_functional.SAFState(), params, surrogate.ATan())
    assert torch.equal(abar, gradients.step(x, saf_functional.SAFState(), params, surrogate.ATan())[0]) and state.weight_sum == 1.0
    node = saf.SAFNode(step_mode="m")
    node.step_mode = "s"
    assert node(x).shape == x.shape


def test_a_new_backend_is_one_registration():
    """A backend object registered once is selectable, dispatched and listed; nothing else changes."""
    from spikingjelly_saf import functional as saf_functional
    from spikingjelly_saf import gradients

    class Doubling(backends.TorchBackend):
        name = "doubling-test"
        step_modes = ("m",)

        def multi_step(self, input_seq, state, params, surrogate_function):
            return gradients.multi_step(input_seq * 2, state, params, surrogate_function)

    registry = backends.BackendRegistry(backends.TorchBackend())
    registry.register(Doubling())
    with pytest.raises(ValueError, match="already registered"):
        registry.register(Doubling())
    assert registry.names("m") == ("torch", "doubling-test") and registry.names("s") == ("torch",)
    x = torch.rand(4, 3, dtype=torch.float64)
    params = saf_functional.SAFParameters.from_tau(2.0)
    out, _ = registry.multi_step(registry.select("doubling-test", "m").name, x, saf_functional.SAFState(), params,
                                 surrogate.ATan())
    assert torch.equal(out, gradients.multi_step(2 * x, saf_functional.SAFState(), params, surrogate.ATan())[0])


def small_net(step_mode="m"):
    net = torch.nn.Sequential(
        layer.Linear(6, 5), saf.SAFNode(), layer.Linear(5, 4), saf.SAFNode(tau=4.0), layer.Linear(4, 3)
    )
    sj_functional.set_step_mode(net, step_mode)
    return net


def test_set_backend_sets_every_node_and_is_all_or_nothing():
    class MultiStepOnly(backends.TorchBackend):
        name = "multi-only-test"
        step_modes = ("m",)

    net = small_net("m")
    assert [m.backend for m in net if isinstance(m, saf.SAFNode)] == ["auto", "auto"]
    assert saf.set_backend(net, "torch") == 2
    with pytest.raises(ValueError, match="not supported"):
        saf.set_backend(net, "inductor")
    backends.REGISTRY.register(MultiStepOnly())
    try:
        net[3].step_mode = "s"
        with pytest.raises(ValueError, match="step_mode='m'"):
            saf.set_backend(net, "multi-only-test")
    finally:
        del backends.REGISTRY._backends["multi-only-test"]
    # The second node failed the check: neither node was changed.
    assert [m.backend for m in net if isinstance(m, saf.SAFNode)] == ["torch", "torch"]


# ---- surrogate registry (no kernel needed) -----------------------------------------------------------
@pytest.mark.parametrize("sg", BUILTINS, ids=lambda s: type(s).__name__)
def test_builtin_surrogates_have_cuda_and_triton_code(sg):
    for backend in ("cupy", "triton"):
        code = surrogate_codes.surrogate_code_by_id(surrogate_codes.resolve_surrogate_code(sg, backend))
        assert code.level == "spike"
        assert repr(float(sg.alpha)) in code.cuda
        assert code.triton == type(sg).__name__
        assert code.params == (float(sg.alpha), 0.0)


def test_kernel_code_follows_alpha_and_registrations():
    """The code of built-ins is remembered per (class, spiking, alpha): an annealed alpha gets its own
    code, and a registration for a built-in class takes over at once."""
    sg = surrogate.Sigmoid(alpha=4.0)
    first = surrogate_codes.resolve_surrogate_code(sg, "cpp")
    assert surrogate_codes.resolve_surrogate_code(surrogate.Sigmoid(alpha=4.0), "cpp") == first
    sg.alpha = 2.0
    second = surrogate_codes.resolve_surrogate_code(sg, "cpp")
    assert second != first and "2.0" in surrogate_codes.surrogate_code_by_id(second).cuda
    saf.register_surrogate_code(surrogate.Sigmoid, cuda=lambda s, y, x: f"{y} = 7.0f;")
    try:
        code = surrogate_codes.surrogate_code_by_id(surrogate_codes.resolve_surrogate_code(sg, "cpp"))
        assert code.cuda == "const float grad_s_to_h = 7.0f;"
    finally:
        surrogate_codes.unregister_surrogate_code(surrogate.Sigmoid)
    assert surrogate_codes.resolve_surrogate_code(sg, "cpp") == second


def test_a_node_follows_alpha_and_registrations_at_the_next_step():
    """The registry keeps each call's route; an annealed alpha and a registration still take effect
    at the next step."""
    sg = surrogate.Sigmoid(alpha=4.0)
    node = saf.SAFNode(surrogate_function=sg, backend="cpp")
    x = torch.randn(3, 5, generator=torch.Generator().manual_seed(0)).requires_grad_()
    grad_of = lambda: torch.autograd.grad(node(x).sum(), x)[0]  # noqa: E731
    reference = saf.SAFNode(surrogate_function=surrogate.Sigmoid(alpha=2.0), backend="torch")
    expected = torch.autograd.grad(reference(x).sum(), x)[0]
    grad_of()
    sg.alpha = 2.0
    sj_functional.reset_net(node)
    torch.testing.assert_close(grad_of(), expected, rtol=2e-6, atol=0.0)
    saf.register_surrogate_code(surrogate.Sigmoid, cuda=lambda s, y, x: f"{y} = 7.0f;")
    try:
        sj_functional.reset_net(node)
        assert torch.equal(grad_of(), torch.full_like(x, 7.0))
    finally:
        surrogate_codes.unregister_surrogate_code(surrogate.Sigmoid)
    sj_functional.reset_net(node)
    torch.testing.assert_close(grad_of(), expected, rtol=2e-6, atol=0.0)


def test_spike_representation_resolves_to_representation_level():
    code_id = surrogate_codes.resolve_surrogate_code(SpikeRepresentation(), "cupy")
    assert surrogate_codes.surrogate_code_by_id(code_id).level == "representation"


class LegacyCudaSurrogate:
    """A SpikingJelly < 2.0 style surrogate: it exposes cuda_codes(y, x, dtype)."""

    spiking = True

    def __call__(self, x):
        return surrogate.ATan(alpha=2.0)(x)

    def cuda_codes(self, y, x, dtype):
        assert dtype == "float"
        return f"const float sg_z = {x} * 3.14159265f;\n{y} = 1.0f / (1.0f + sg_z * sg_z);"


class UnknownSurrogate:
    spiking = True

    def __call__(self, x):
        return surrogate.Sigmoid(alpha=4.0)(x)


def test_cuda_codes_object_runs_on_cupy_and_falls_back_on_triton():
    sg = LegacyCudaSurrogate()
    code = surrogate_codes.surrogate_code_by_id(surrogate_codes.resolve_surrogate_code(sg, "cupy"))
    assert "3.14159265f" in code.cuda and "grad_s_to_h" in code.cuda
    with pytest.warns(UserWarning, match="LegacyCudaSurrogate has no 'triton' kernel code"):
        assert surrogate_codes.resolve_surrogate_code(sg, "triton") is None


def test_missing_kernel_code_warns_once_naming_the_class():
    sg = UnknownSurrogate()
    with pytest.warns(UserWarning, match="UnknownSurrogate.*register_surrogate_code"):
        assert surrogate_codes.resolve_surrogate_code(sg, "cupy") is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert surrogate_codes.resolve_surrogate_code(sg, "cupy") is None


def test_primitive_mode_and_learnable_alpha_have_no_kernel_code():
    with pytest.warns(UserWarning, match="spiking=False"):
        assert surrogate_codes.resolve_surrogate_code(surrogate.Sigmoid(spiking=False), "cupy") is None
    learnable = surrogate.Sigmoid()
    learnable.alpha = torch.nn.Parameter(torch.tensor(4.0))
    code, reason = surrogate_codes._build(learnable)
    assert code is None and "alpha" in reason


def test_register_surrogate_code_validates_and_registers():
    class MySurrogate(UnknownSurrogate):
        alpha = 3.0

    with pytest.raises(ValueError, match="cuda=..., triton="):
        saf.register_surrogate_code(MySurrogate)
    with pytest.raises(TypeError, match="must be a class"):
        saf.register_surrogate_code(MySurrogate(), cuda=lambda sg, y, x: "")
    with pytest.raises(ValueError, match="representation-level"):
        saf.register_surrogate_code(SpikeRepresentation, cuda=lambda sg, y, x: "")
    saf.register_surrogate_code(MySurrogate, cuda=lambda sg, y, x: f"{y} = {sg.alpha}f * {x};")
    try:
        code = surrogate_codes.surrogate_code_by_id(
            surrogate_codes.resolve_surrogate_code(MySurrogate(), "cupy"))
        assert code.cuda == "const float grad_s_to_h = 3.0f * over_th;"
        assert code.params == (3.0, 0.0)
    finally:
        surrogate_codes.unregister_surrogate_code(MySurrogate)


@pytest.mark.slow
def test_triton_interpreter_suite():
    """Run this module's interpreter tests in a child process with TRITON_INTERPRET=1."""
    if not HAS_TRITON:
        pytest.skip("Triton is not installed")
    if INTERPRETER_CHILD:
        pytest.skip("already in the child process")
    env = dict(os.environ, TRITON_INTERPRET="1", SAF_TRITON_INTERPRETER_CHILD="1")
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not cuda", __file__,
         "-k", "interpreted"],
        capture_output=True, text=True, env=env, timeout=900,
    )
    summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    assert " passed" in summary and "skipped" not in summary, summary


# ---- Triton through the CPU interpreter -----------------------------------------------------------
@interpreted
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("sg", ALL_KERNEL_SURROGATES, ids=lambda s: type(s).__name__)
def test_interpreted_triton_parity_every_surrogate_and_dtype(sg, dtype):
    from spikingjelly_saf.backends import triton_backend

    assert backends.triton_interpreting()
    index = ALL_KERNEL_SURROGATES.index(sg) + DTYPES.index(dtype)
    tau = (2.0, 4.0, math.inf)[index % 3]
    decay_input = bool(index % 2) and not math.isinf(tau)
    compare_with_torch("triton", sg, dtype, tau, decay_input, steps=7, shape=(3, 7),
                       weight_sum_prev=(0.0, 1.5)[index % 2], seed=index)


@interpreted
@pytest.mark.parametrize("steps", [1, 2, 7, 32])
@pytest.mark.parametrize("tau,decay_input", [(2.0, False), (2.0, True), (4.0, False), (4.0, True),
                                             (math.inf, False), (1.0, False)])
def test_interpreted_triton_parity_steps_tau_decay_input(steps, tau, decay_input):
    compare_with_torch("triton", surrogate.Sigmoid(alpha=4.0), torch.float32, tau, decay_input,
                       steps=steps, shape=(2, 3, 5), seed=steps)


@interpreted
@pytest.mark.parametrize("shape", [(1,), (1, 1), (2, 1, 3, 3)], ids=str)
def test_interpreted_triton_parity_unusual_shapes(shape):
    compare_with_torch("triton", surrogate.ATan(alpha=2.0), torch.float16, 2.0, False, steps=3,
                       shape=shape, weight_sum_prev=1.0)


@interpreted
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_interpreted_triton_spike_representation_many_steps(dtype):
    compare_with_torch("triton", SpikeRepresentation(), dtype, 2.0, True, steps=32, shape=(5, 3),
                       weight_sum_prev=1.0)


@interpreted
def test_interpreted_safnode_state_and_chunks_match_torch():
    x, _ = make_inputs(9, (2, 3, 5), torch.float32, seed=3)
    fused = saf.SAFNode(tau=4.0, step_mode="m", backend="triton")
    reference = saf.SAFNode(tau=4.0, step_mode="m")
    y_fused = torch.cat([fused(x[:4]), fused(x[4:5]), fused(x[5:])])
    y_ref = reference(x)
    assert torch.equal(y_fused, y_ref)
    assert torch.equal(fused.abar, reference.abar) and fused.weight_sum == reference.weight_sum
    fused.reset()
    recorder = OpRecorder()
    with recorder:
        fused(x.clone().requires_grad_()).sum().backward()
    assert recorder.count("triton_forward.default") == 1 and recorder.count("triton_backward") == 1


@interpreted
def test_interpreted_autocast_keeps_float32_state_like_torch():
    x, _ = make_inputs(4, (3, 5), torch.bfloat16, seed=11)
    outputs = []
    for backend in ("triton", "torch"):
        node = saf.SAFNode(step_mode="m", backend=backend)
        recorder = OpRecorder()
        with recorder, torch.autocast("cpu", dtype=torch.bfloat16):
            outputs.append(node(x))
        assert node.abar.dtype == torch.float32
        assert recorder.count("triton_forward") == (backend == "triton")
    assert outputs[0].dtype == torch.float32 and torch.equal(outputs[0], outputs[1])


@interpreted
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_interpreted_pure_16_bit_model_computes_in_float32_like_torch(dtype):
    """A .half() model (no autocast): the kernel runs in float32, the state stays float32, the
    output comes back in the input's dtype, bitwise as the torch backend."""
    x, _ = make_inputs(6, (3, 5), dtype, seed=13)
    outputs, states = [], []
    for backend in ("triton", "torch"):
        node = saf.SAFNode(tau=8.0, step_mode="m", backend=backend)
        recorder = OpRecorder()
        with recorder:
            y = node(x.clone().requires_grad_())
            y.float().sum().backward()
        assert recorder.count("triton_forward.default") == (backend == "triton")
        assert y.dtype == dtype and node.abar.dtype == torch.float32
        outputs.append(y)
        states.append(node.abar)
    assert torch.equal(outputs[0], outputs[1]) and torch.equal(states[0], states[1])


@interpreted
def test_interpreted_forward_only_entry_without_grad():
    node = saf.SAFNode(step_mode="m", backend="triton")
    x, _ = make_inputs(5, (4, 3), torch.float32, seed=5)
    recorder = OpRecorder()
    with recorder, torch.no_grad():
        y = node(x.requires_grad_())
    assert recorder.count("triton_forward_only") == 1 and recorder.count("triton_forward.") == 0
    assert y.grad_fn is None
    node.reset()
    assert torch.equal(y, saf.SAFNode(step_mode="m")(x.detach()))


@interpreted
def test_interpreted_saf_f_runs_first_steps_forward_only():
    torch.manual_seed(0)
    net = small_net("m")
    saf.set_backend(net, "triton")
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    x = torch.rand(4, 5, 6)  # [B, T, *]
    target = torch.tensor([0, 1, 2, 0])
    recorder = OpRecorder()
    with recorder:
        saf.saf_online_training(net, optimizer, x, target, torch.nn.functional.cross_entropy,
                                method="saf-f")
    # Two neurons: steps 1..T-1 without autograd context, step T with it, then one backward each.
    assert recorder.count("triton_forward_only") == 2
    assert recorder.count("triton_forward.default") == 2
    assert recorder.count("triton_backward") == 2


@interpreted
def test_interpreted_registered_user_surrogate_runs_in_triton():
    class ReciprocalSquare(surrogate.SurrogateFunctionBase):
        """sg'(x) = alpha / (1 + beta |x|)^2, a user surrogate with two parameters."""

        def __init__(self, alpha=1.5, beta=2.0):
            super().__init__(spiking=True, alpha=alpha, beta=beta)

        @staticmethod
        def spiking_function(x, alpha, beta):
            return _ReciprocalSquareSpike.apply(x, alpha, beta)

    class _ReciprocalSquareSpike(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, alpha, beta):
            ctx.save_for_backward(x)
            ctx.alpha, ctx.beta = alpha, beta
            return (x >= 0).to(x)

        @staticmethod
        def backward(ctx, grad):
            (x,) = ctx.saved_tensors
            return grad * ctx.alpha / (1 + ctx.beta * x.abs()) ** 2, None, None

    saf.register_surrogate_code(ReciprocalSquare, triton=reciprocal_square_derivative,
                                params=lambda sg: (sg.alpha, sg.beta))
    try:
        for dtype in DTYPES:
            compare_with_torch("triton", ReciprocalSquare(), dtype, 2.0, False, steps=5, shape=(3, 5))
    finally:
        surrogate_codes.unregister_surrogate_code(ReciprocalSquare)


@interpreted
def test_interpreted_fallback_to_torch_for_surrogates_without_code():
    x, _ = make_inputs(4, (3, 5), torch.float32, seed=7)
    for sg in (UnknownSurrogate(), LegacyCudaSurrogate()):
        node = saf.SAFNode(step_mode="m", backend="triton", surrogate_function=sg)
        recorder = OpRecorder()
        with recorder, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            y = node(x)
        assert recorder.count("triton_forward") == 0
        assert torch.equal(y, saf.SAFNode(step_mode="m", surrogate_function=sg)(x))


@interpreted
def test_interpreted_float64_runs_on_torch():
    x, _ = make_inputs(3, (4,), torch.float64)
    node = saf.SAFNode(step_mode="m", backend="triton")
    recorder = OpRecorder()
    with recorder:
        y = node(x)
    assert recorder.count("triton_forward") == 0
    assert torch.equal(y, saf.SAFNode(step_mode="m")(x))


@interpreted
def test_interpreted_custom_ops_pass_opcheck_and_compile():
    from spikingjelly_saf.backends import custom_ops, triton_backend

    assert backends.triton_interpreting()
    ops = backends.REGISTRY.select("triton", "m").ops
    code_id = surrogate_codes.resolve_surrogate_code(surrogate.ATan(), "triton")
    x, abar = make_inputs(3, (10,), torch.float32)
    table = custom_ops.coefficient_tensor(saf.functional.coefficient_table(saf.functional.SAFParameters(0.5), 1.0, 3), x.device)
    torch.library.opcheck(ops.forward, (x.requires_grad_(), abar, table, 1.0, 1.0, 1.0, code_id))
    torch.library.opcheck(ops.forward_only, (x.detach(), abar, table, 1.0, 1.0, code_id))
    node = saf.SAFNode(step_mode="m", backend="triton")
    compiled = torch.compile(node, backend="aot_eager")
    y = compiled(x.detach())
    node.reset()
    assert torch.equal(y, saf.SAFNode(step_mode="m")(x.detach()))


def triton_saved_at(sg, over_th: torch.Tensor) -> torch.Tensor:
    """What Triton's forward saves where ``H - V_th`` is ``over_th`` (one step with ``H = I`` exactly:
    c s = 1, no reset term, V_th = 0)."""
    from spikingjelly_saf.backends import triton_backend

    coefficients = torch.tensor([[1.0, 0.0, 0.0, 1.0]])
    _, saved = triton_backend.forward_impl(over_th.reshape(1, -1).contiguous(), torch.zeros(over_th.numel()),
                                           coefficients, 0.0, 1.0,
                                           surrogate_codes.resolve_surrogate_code(sg, "triton"), True)
    return saved.view(over_th.shape)


@interpreted
def test_interpreted_sigmoid_and_piecewise_quadratic_derivatives_at_their_edges():
    """Sigmoid: a e / (1 + e)^2 is accurate where 1 - sigmoid(a|x|) gave 0 (a=4, x=-4.2: 2.02e-7) on both
    sides; PiecewiseQuadratic: NaN in, NaN out."""
    from spikingjelly_saf.backends import triton_backend

    sg = surrogate.Sigmoid(alpha=4.0)
    x = torch.tensor([-4.2, 4.2, -3.0, 3.0, -10.0, 10.0, -20.0, 20.0, math.nan])
    grad = triton_backend.backward_impl(torch.ones_like(x), triton_saved_at(sg, x), 1.0, 1.0,
                                        surrogate_codes.resolve_surrogate_code(sg, "triton"))
    reference = type(sg).backward(torch.ones_like(x), -x.to(torch.float64).abs(), alpha=4.0)
    assert abs(reference[0].item() - 2.02e-7) < 0.01e-7
    relative = ((grad[:-1].to(torch.float64) - reference[:-1]) / reference[:-1]).abs()
    assert relative.max().item() < 1e-5, relative
    assert grad[-1].isnan()
    quadratic = surrogate.PiecewiseQuadratic(alpha=1.5)
    x = torch.tensor([math.nan, 0.0, 1 / 1.5, 2.0, -math.inf])
    grad = triton_backend.backward_impl(torch.ones_like(x), triton_saved_at(quadratic, x), 1.0, 1.0,
                                        surrogate_codes.resolve_surrogate_code(quadratic, "triton"))
    assert grad[0].isnan() and grad[1] == 1.5 and abs(grad[2]) < 1e-6 and grad[3] == 0 and grad[4] == 0


@interpreted
def test_interpreted_subnormal_gradients_are_flushed_like_the_cuda_source():
    """An incoming gradient of 1e-30 times Sigmoid(alpha=4)'s 8.2e-9 at x = -5 is subnormal: Triton
    returns a zero of its sign, as the CUDA source does (``test_cuda_source_on_cpu``)."""
    from spikingjelly_saf.backends import triton_backend

    sg = surrogate.Sigmoid(alpha=4.0)
    x = torch.tensor([-5.0, -5.0, -1.0, -1.0])
    grad_out = torch.tensor([1e-30, -1e-30, 1e-30, -1e-30])
    grad = triton_backend.backward_impl(grad_out, triton_saved_at(sg, x), 1.0, 1.0,
                                        surrogate_codes.resolve_surrogate_code(sg, "triton"))
    assert torch.equal(grad[:2], torch.zeros(2)) and torch.equal(torch.signbit(grad[:2]), torch.tensor([False, True]))
    reference = grad_out[2:].to(torch.float64) * type(sg).backward(torch.ones(2), x[2:].to(torch.float64), alpha=4.0)
    assert ((grad[2:].to(torch.float64) - reference) / reference).abs().max().item() < 1e-6


# ---- CUDA (skipped without a GPU) ---------------------------------------------------------------------
cuda = pytest.mark.cuda


@cuda
@pytest.mark.skipif(not (HAS_CUDA and HAS_CUPY), reason="needs CUDA and CuPy")
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("sg", ALL_KERNEL_SURROGATES, ids=lambda s: type(s).__name__)
@pytest.mark.parametrize("shape", [(3, 7), (4, 6)], ids=["odd_n", "even_n"])
def test_cupy_parity(sg, dtype, shape):
    index = ALL_KERNEL_SURROGATES.index(sg) + DTYPES.index(dtype)
    tau = (2.0, 4.0, math.inf)[index % 3]
    for steps in (1, 2, 7, 32):
        for decay_input in ((False, True) if not math.isinf(tau) else (False,)):
            compare_with_torch("cupy", sg, dtype, tau, decay_input, steps, shape, device="cuda",
                               weight_sum_prev=(0.0, 1.5)[steps % 2], seed=steps)


@cuda
@pytest.mark.skipif(not (HAS_CUDA and HAS_TRITON), reason="needs CUDA and Triton")
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("sg", ALL_KERNEL_SURROGATES, ids=lambda s: type(s).__name__)
def test_triton_cuda_parity(sg, dtype):
    for steps in (1, 7, 32):
        compare_with_torch("triton", sg, dtype, 2.0, steps % 2 == 0, steps, (5, 9), device="cuda",
                           seed=steps)


@cuda
@pytest.mark.skipif(not (HAS_CUDA and HAS_CUPY), reason="needs CUDA and CuPy")
def test_cupy_large_odd_n_and_no_grad_entry():
    x = (torch.randn(8, 3, 100001, device="cuda") + 0.5).half()
    node = saf.SAFNode(step_mode="m", backend="cupy")
    recorder = OpRecorder()
    with recorder, torch.no_grad():
        y = node(x)
    assert recorder.count("cupy_forward_only") == 1
    assert torch.equal(y, saf.SAFNode(step_mode="m")(x))


class _ExportedNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(5, 7)
        self.node = saf.SAFNode(step_mode="m", backend="triton")

    def forward(self, x_seq):
        sj_functional.reset_net(self)
        return self.node(self.fc(x_seq))


@interpreted
@pytest.mark.parametrize("strict", [False, True])
def test_interpreted_torch_export_keeps_the_custom_op(strict):
    import warnings

    torch.manual_seed(0)
    net = _ExportedNet()
    x = torch.rand(4, 3, 5) * 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # export's note on module memories assigned while tracing
        program = torch.export.export(net, (x,), strict=strict)
    targets = [str(node.target) for node in program.graph.nodes if node.op == "call_function"]
    assert any("triton_forward" in t for t in targets), targets
    expected = net(x)
    assert torch.equal(program.module()(x), expected)
    assert expected.abs().sum() > 0
