"""The CPU backend ('cpp') and the automatic choice ('auto', the default).

'cpp' is the CUDA source compiled for the CPU (its arithmetic is tested against float64 in
test_cuda_source_on_cpu.py); here: parity with the torch backend through SAFNode in both step modes,
the build cache, the per-device choice, the environment variable, the fallbacks and the CUDA-only
paths that can be reached without a GPU (with mocks).
"""

from __future__ import annotations

import concurrent.futures
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
from spikingjelly_saf.backends import cpu_build, custom_ops, surrogate_codes
from spikingjelly_saf.surrogate import SpikeRepresentation

HAS_COMPILER = cpu_build.compiler() is not None
needs_compiler = pytest.mark.skipif(not HAS_COMPILER, reason="no C++ compiler")
AUTO = backends.REGISTRY.get("auto")



def run_node(node, x, step_mode):
    x = x.clone().requires_grad_()
    y = node(x) if step_mode == "m" else torch.stack([node(step) for step in x])
    grad_out = torch.randn(y.shape, generator=torch.Generator().manual_seed(1)).to(y.dtype)
    (grad,) = torch.autograd.grad(y, x, grad_out)
    return y, grad, node.abar


@needs_compiler
@pytest.mark.parametrize("step_mode", ["s", "m"])
@pytest.mark.parametrize("sg,dtype", [(surrogate.Sigmoid(alpha=4.0), torch.float32),
                                      (surrogate.Erf(alpha=2.0), torch.bfloat16),
                                      (SpikeRepresentation(), torch.float32)], ids=lambda p: str(p).split("(")[0])
def test_default_node_runs_the_cpu_kernel_like_torch(step_mode, sg, dtype):
    """Forward and state bitwise, gradient to float32 rounding; sizes across the kernel's chunk
    (1024 neurons) and its parallel threshold (32768 elements)."""
    for shape, tau, decay_input in (((7, 3, 5), 2.0, False), ((2, 1, 40000), 4.0, True), ((2, 1), math.inf, False)):
        x = (torch.randn(shape, generator=torch.Generator().manual_seed(len(shape))) * 1.2 + 0.6).to(dtype)
        fused = saf.SAFNode(tau=tau, decay_input=decay_input, surrogate_function=sg, step_mode=step_mode)
        reference = saf.SAFNode(tau=tau, decay_input=decay_input, surrogate_function=sg, step_mode=step_mode,
                                backend="torch")
        recorder = OpRecorder()
        with recorder:
            y, grad, state = run_node(fused, x, step_mode)
        assert recorder.count("spikingjelly_saf.cpp_forward.default") == (shape[0] if step_mode == "s" else 1)
        assert recorder.count("spikingjelly_saf.cpp_backward") == (shape[0] if step_mode == "s" else 1)
        y_ref, grad_ref, state_ref = run_node(reference, x, step_mode)
        assert y.dtype == y_ref.dtype and torch.equal(y, y_ref) and torch.equal(state, state_ref)
        assert fused.weight_sum == reference.weight_sum
        if isinstance(sg, SpikeRepresentation):
            assert torch.equal(grad, grad_ref)
        else:
            tolerance = 2e-6 if dtype == torch.float32 else 1e-2
            torch.testing.assert_close(grad.float(), grad_ref.float(), rtol=tolerance,
                                       atol=tolerance * grad_ref.float().abs().max().item())


@needs_compiler
@pytest.mark.parametrize("step_mode", ["s", "m"])
def test_eager_calls_skip_the_dispatcher_and_equal_the_custom_operators(step_mode, monkeypatch):
    """Outside tracing, SAFNode calls the kernels through the backend's autograd function (once per
    step forward with saving, once backward; without a graph, forward without saving); under a
    dispatch mode it calls the custom operators instead, with bitwise equal results."""
    cpp = backends.REGISTRY.get("cpp")
    cpp.load()
    eager = cpp.ops.eager_function
    forward_impl, backward_impl = eager.forward_impl, eager.backward_impl
    calls = []

    def counted_forward(*args):
        calls.append(("forward", args[-1]))
        return forward_impl(*args)

    def counted_backward(*args):
        calls.append(("backward",))
        return backward_impl(*args)

    monkeypatch.setattr(eager, "forward_impl", staticmethod(counted_forward))
    monkeypatch.setattr(eager, "backward_impl", staticmethod(counted_backward))
    x = torch.randn(5, 3, 40, generator=torch.Generator().manual_seed(0)) * 1.5 + 0.5
    steps = 5 if step_mode == "s" else 1
    node = saf.SAFNode(step_mode=step_mode)
    y, grad, state = run_node(node, x, step_mode)
    assert calls == [("forward", True)] * steps + [("backward",)] * steps
    calls.clear()
    sj_functional.reset_net(node)
    recorder = OpRecorder()
    with recorder:
        y_op, grad_op, state_op = run_node(node, x, step_mode)
    assert calls == [] and recorder.count("spikingjelly_saf.cpp_forward.default") == steps
    assert torch.equal(y, y_op) and torch.equal(grad, grad_op) and torch.equal(state, state_op)
    sj_functional.reset_net(node)
    with torch.no_grad():
        node(x[0] if step_mode == "s" else x)
    assert calls == [("forward", False)]


@needs_compiler
def test_single_step_state_is_the_output_and_not_a_copy_of_a_longer_buffer():
    node = saf.SAFNode()
    x = torch.rand(4, 6)
    y = node(x)
    assert node.abar.data_ptr() == y.data_ptr() and node.abar.shape == x.shape
    node.step_mode = "m"
    sj_functional.reset_net(node)
    y_seq = node(torch.rand(3, 4, 6))
    assert node.abar.untyped_storage().nbytes() == 4 * 6 * 4  # the last step only, not [T, N]
    assert torch.equal(node.abar, y_seq[-1])


@needs_compiler
def test_a_state_of_another_size_is_refused_before_the_kernel_reads_it():
    """The kernel reads as many state values as a step has neurons: a state of another size (through
    the functional interface, which SAFNode's own shape check does not guard) is refused."""
    params = saf.functional.SAFParameters.from_tau(2.0, 1.0, False)
    state = saf.functional.SAFState(torch.zeros(3), 1.0)
    with pytest.raises(ValueError, match="state holds 3 neurons but each step of the input has 8"):
        backends.REGISTRY.single_step("cpp", torch.randn(2, 4), state, params, surrogate.Sigmoid())
    with pytest.raises(ValueError, match="reset_net"):
        backends.REGISTRY.multi_step("cpp", torch.randn(5, 2, 4), state, params, surrogate.Sigmoid())


@needs_compiler
def test_float64_and_surrogates_without_code_run_on_torch_silently():
    class NoCode:
        spiking = True

        def __call__(self, x):
            return surrogate.ATan()(x)

    for sg, dtype in ((surrogate.Sigmoid(), torch.float64), (NoCode(), torch.float32)):
        x = torch.rand(3, 5, dtype=dtype)
        node = saf.SAFNode(step_mode="m", surrogate_function=sg)
        recorder = OpRecorder()
        with recorder, warnings.catch_warnings():
            warnings.simplefilter("error")
            y = node(x)
        assert recorder.count("cpp_forward") == 0
        assert torch.equal(y, saf.SAFNode(step_mode="m", surrogate_function=sg, backend="torch")(x))


@pytest.mark.slow
@needs_compiler
def test_cpp_custom_ops_pass_opcheck_and_compile():
    ops = backends.REGISTRY.select("cpp", "m").ops
    code_id = surrogate_codes.resolve_surrogate_code(surrogate.ATan(), "cpp")
    x = torch.rand(3, 10) * 2
    abar = torch.rand(10)
    table = custom_ops.coefficient_tensor(saf.functional.coefficient_table(saf.functional.SAFParameters(0.5), 1.0, 3),
                                          x.device)
    torch.library.opcheck(ops.forward, (x.requires_grad_(), abar, table, 1.0, 1.0, 1.0, code_id))
    torch.library.opcheck(ops.forward_only, (x.detach(), abar, table, 1.0, 1.0, code_id))
    for step_mode in ("m", "s"):
        node = saf.SAFNode(step_mode=step_mode)
        compiled = torch.compile(node, backend="aot_eager")
        y = compiled(x.detach())
        node.reset()
        assert torch.equal(y, saf.SAFNode(step_mode=step_mode, backend="torch")(x.detach()))


# ---- the build ----------------------------------------------------------------------------------------
@needs_compiler
def test_build_is_cached_by_source_and_safe_when_concurrent(tmp_path):
    source = 'extern "C" int answer() { return 42; }\n'
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        paths = list(pool.map(lambda _: cpu_build.build(source, "probe", directory=str(tmp_path)), range(4)))
    assert len(set(paths)) == 1 and sorted(os.listdir(tmp_path)) == [os.path.basename(paths[0])]
    modified = os.path.getmtime(paths[0])
    assert cpu_build.build(source, "probe", directory=str(tmp_path)) == paths[0]
    assert os.path.getmtime(paths[0]) == modified
    assert cpu_build.build(source + "// changed\n", "probe", directory=str(tmp_path)) != paths[0]
    with pytest.raises(cpu_build.CpuBuildError, match="failed to build"):
        cpu_build.build("this is not C++", "broken", directory=str(tmp_path))
    assert not [name for name in os.listdir(tmp_path) if name.startswith(".")]  # no temporary left behind


def test_flags_keep_ieee_arithmetic():
    assert "-ffp-contract=off" in cpu_build.COMPILE_FLAGS
    assert not any("fast-math" in flag or flag == "-Ofast" for flag in cpu_build.COMPILE_FLAGS + cpu_build.isa_flags())


def test_without_a_compiler_auto_warns_once_and_runs_torch(monkeypatch):
    monkeypatch.setattr(cpu_build, "compiler", lambda: None)
    monkeypatch.setattr(AUTO, "_chosen", {})
    monkeypatch.setattr(backends.REGISTRY, "_routes", {})
    with pytest.warns(RuntimeWarning, match="torch backend on CPU.*no C\\+\\+ compiler.*SAF_BACKEND=torch"):
        assert AUTO.choose(torch.device("cpu")) == "torch"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert AUTO.choose(torch.device("cpu")) == "torch"
    with pytest.raises(RuntimeError, match="apt-get install g\\+\\+"):
        saf.SAFNode(backend="cpp")


# ---- the automatic choice -----------------------------------------------------------------------------
class FakeAvailable(backends.Backend):
    def __init__(self, name, available):
        self.name, self.available, self.loaded = name, available, False
        self.step_modes = ("s", "m")

    def unavailable_reason(self):
        return None if self.available else f"{self.name} missing"

    def device_types(self):
        return ("cuda",)

    def load(self):
        self.loaded = True


@pytest.mark.parametrize("cupy,triton,expected", [(True, True, "cupy"), (False, True, "triton"),
                                                   (False, False, "torch")])
def test_cuda_priority_cupy_then_triton_then_torch(cupy, triton, expected):
    registry = backends.BackendRegistry(backends.TorchBackend())
    automatic = backends.AutomaticBackend(registry)
    registry.register(automatic)
    registry.register(FakeAvailable("cupy", cupy))
    registry.register(FakeAvailable("triton", triton))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # CUDA without kernels is logged, not warned
        assert automatic.choose(torch.device("cuda", 1)) == expected
    assert automatic.choose(torch.device("cuda", 1)) == expected
    if expected != "torch":
        assert registry.get(expected).loaded


def test_a_registry_without_the_fused_backends_chooses_torch():
    registry = backends.BackendRegistry(backends.TorchBackend())
    automatic = backends.AutomaticBackend(registry)
    registry.register(automatic)
    assert automatic.choose(torch.device("cuda", 0)) == "torch"
    assert automatic.choose(torch.device("cpu")) == "torch"


@pytest.mark.slow
@needs_compiler
@pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="reads the process's memory map (Linux)")
def test_one_openmp_runtime_is_shared_with_pytorch():
    # A fresh process: other libraries the test session imported (scikit-learn ships its own
    # libgomp) must not count against the kernel.
    script = (
        "import torch, spikingjelly_saf as saf\n"
        "saf.SAFNode(backend='cpp')(torch.rand(40000))\n"
        "runtimes = {l.split()[-1] for l in open('/proc/self/maps') if 'libgomp' in l or 'libomp' in l}\n"
        "print(len(runtimes), sorted(runtimes))\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    count = int(result.stdout.split()[0])
    assert count == 1, result.stdout


@needs_compiler
def test_choice_is_per_device_and_logged_once(monkeypatch):
    from spikingjelly.logger import logger

    messages = []
    monkeypatch.setattr(AUTO, "_chosen", {})
    monkeypatch.setattr(backends.REGISTRY, "_routes", {})
    sink = logger.add(messages.append, level="INFO", format="{message}")
    logger.enable("spikingjelly_saf")
    try:
        assert AUTO.choose(torch.device("cpu")) == "cpp"
        assert AUTO.choose(torch.device("cpu")) == "cpp"
    finally:
        logger.disable("spikingjelly_saf.backends")
        logger.remove(sink)
    assert len(messages) == 1 and "cpp" in messages[0] and "cpu" in messages[0]


@needs_compiler
def test_environment_variable_forces_the_choice(monkeypatch):
    x = torch.rand(2, 3, 4)
    monkeypatch.setenv(backends.BACKEND_ENVIRONMENT_VARIABLE, "torch")
    recorder = OpRecorder()
    with recorder:
        saf.SAFNode(step_mode="m")(x)
    assert recorder.count("cpp_forward") == 0
    monkeypatch.setenv(backends.BACKEND_ENVIRONMENT_VARIABLE, "cpp")
    recorder = OpRecorder()
    with recorder:
        saf.SAFNode(step_mode="m")(x)
    assert recorder.count("cpp_forward") == 1
    monkeypatch.setenv(backends.BACKEND_ENVIRONMENT_VARIABLE, "fast")
    with pytest.raises(ValueError, match="SAF_BACKEND='fast' is not a backend; valid: auto, torch, cpp, cupy, triton"):
        saf.SAFNode(step_mode="m")(x)
    monkeypatch.setenv(backends.BACKEND_ENVIRONMENT_VARIABLE, "cupy")
    with pytest.raises(RuntimeError, match="cupy"):
        saf.SAFNode(step_mode="m")(x)
    # An explicit name is not affected by the variable.
    recorder = OpRecorder()
    with recorder:
        saf.SAFNode(step_mode="m", backend="cpp")(x)
    assert recorder.count("cpp_forward") == 1


@needs_compiler
def test_a_net_built_on_cpu_chooses_again_on_another_device(monkeypatch):
    """The choice follows the input's device at every call, not the device at construction."""
    seen = []
    real = AUTO.choose

    def recording(device, requested="auto"):
        seen.append(device)
        return real(device, requested) if device.type == "cpu" else "torch"

    monkeypatch.setattr(AUTO, "_resolve", lambda device_type, index, requested: recording(
        torch.device(device_type, index), requested))
    monkeypatch.setattr(backends.REGISTRY, "_routes", {})
    net = torch.nn.Sequential(layer.Linear(4, 3), saf.SAFNode())
    net(torch.rand(2, 4))
    net.to("meta")
    net(torch.rand(2, 4, device="meta"))
    assert [device.type for device in seen] == ["cpu", "meta"]


# ---- GPU-only paths reachable without a GPU --------------------------------------------------------------
def test_coefficient_table_refused_while_a_cuda_graph_is_captured(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)
    table = saf.functional.coefficient_table(saf.functional.SAFParameters(0.5), 0.0, 2)
    with pytest.raises(RuntimeError, match="CUDA graph.*warm-up"):
        custom_ops.coefficient_tensor(table, torch.device("cuda", 0))


def test_tables_used_during_capture_are_never_evicted(monkeypatch):
    capturing = [False]
    made = []

    def fake_tensor(table, device):
        made.append(len(made))
        return torch.full((len(table), 4), float(len(made)))

    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: capturing[0])
    monkeypatch.setattr(custom_ops, "coefficient_tensor", fake_tensor)
    tables = custom_ops.CoefficientTables(capacity=2)
    cuda = torch.device("cuda", 0)
    params = saf.functional.SAFParameters(0.5)
    first, weight_sum = tables.get(params, 0.0, 3, cuda)
    assert weight_sum == saf.functional.weight_sums(0.0, 0.5, 3)[-1]
    capturing[0] = True
    assert tables.get(params, 0.0, 3, cuda)[0] is first  # a hit during capture: kept for good
    capturing[0] = False
    for weight_sum_prev in (1.0, 1.5, 1.75, 1.875):
        tables.get(params, weight_sum_prev, 3, cuda)
    assert tables.get(params, 0.0, 3, cuda)[0] is first and len(made) == 5
    assert tables.get(params, 1.0, 3, cuda)[0] is not None and len(made) == 6  # evicted, made again
    cpu_table, _ = custom_ops.COEFFICIENT_TABLES.get(params, 0.0, 3, torch.device("cpu"))
    assert custom_ops.COEFFICIENT_TABLES.get(params, 0.0, 3, torch.device("cpu"))[0] is cpu_table


def test_triton_launches_on_the_tensor_device():
    pytest.importorskip("triton")
    from spikingjelly_saf.backends import triton_backend

    class OnSecondGpu:
        device = torch.device("cuda", 1)

    context = triton_backend.on_tensor_device(OnSecondGpu())
    assert isinstance(context, torch.cuda.device) and context.idx == 1
    assert not isinstance(triton_backend.on_tensor_device(torch.zeros(1)), torch.cuda.device)


def test_a_failed_build_warns_once_and_runs_torch(monkeypatch):
    cpp = backends.REGISTRY.get("cpp")
    cpp.load()

    def broken(source, name, flags=(), directory=None):
        raise cpu_build.CpuBuildError("g++ failed to build SAF's CPU kernel (saf_kernels):\nerror: no omp.h")

    monkeypatch.setattr(cpu_build, "load", broken)
    monkeypatch.setattr(backends.cpp_backend, "_libraries", {})
    monkeypatch.setattr(cpp, "_broken", {})
    monkeypatch.setattr(backends.REGISTRY, "_routes", {})
    sg = surrogate.SoftSign(alpha=3.0)
    x = torch.rand(2, 3)
    with pytest.warns(RuntimeWarning, match="torch backend on CPU.*no omp.h.*SAF_BACKEND=torch"):
        y = saf.SAFNode(step_mode="m", surrogate_function=sg)(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert torch.equal(saf.SAFNode(step_mode="m", surrogate_function=sg)(x), y)
    assert torch.equal(y, saf.SAFNode(step_mode="m", surrogate_function=sg, backend="torch")(x))
