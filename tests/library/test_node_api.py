"""SAFNode as a SpikingJelly 2.0 citizen: constructor, errors, step modes, reset, functional API,
torch.compile, autocast, and gradcheck of the custom autograd piece."""

import math

import pytest
import torch
import torch.nn as nn
from spikingjelly.activation_based import base, functional, layer, neuron, surrogate
from spikingjelly.activation_based.model import spiking_vgg

from spikingjelly_saf import InputAverage, SAFNode
from spikingjelly_saf import functional as saf_functional
from spikingjelly_saf import gradients
from spikingjelly_saf.surrogate import SpikeRepresentation


def test_constructor_accepts_factory_kwargs_and_ints():
    node = SAFNode(tau=2, decay_input=False, v_threshold=1, v_reset=None,
                   surrogate_function=surrogate.ATan(), detach_reset=True, step_mode="m",
                   store_v_seq=False, backend="torch")
    assert node.tau == 2.0 and isinstance(node.tau, float)
    assert node.v_threshold == 1.0 and isinstance(node.v_threshold, float)
    assert node.supported_backends[0] == "torch"
    assert isinstance(node, neuron.BaseNode)
    assert "tau=2.0" in repr(node)
    assert SAFNode(tau=math.inf).decay == 1.0
    assert SAFNode(tau=1).decay == 0.0


@pytest.mark.parametrize("kwargs, error, pattern", [
    (dict(v_reset=0.0), ValueError, "v_reset=None"),
    (dict(tau=0.5), ValueError, "tau must be >= 1"),
    (dict(tau=math.inf, decay_input=True), ValueError, "decay_input=False"),
    (dict(v_threshold=0.0), ValueError, "v_threshold must be positive"),
    (dict(tau="2"), TypeError, "tau must be a real number"),
    (dict(backend="cuda"), ValueError, "valid backends: 'torch'"),
    (dict(surrogate_function=3), TypeError, "surrogate_function must be callable"),
])
def test_bad_arguments_are_named(kwargs, error, pattern):
    with pytest.raises(error, match=pattern):
        SAFNode(**kwargs)


def test_bad_inputs_are_explained():
    node = SAFNode(step_mode="m")
    with pytest.raises(ValueError, match=r"\[T, N, \*\]"):
        node(torch.rand(5))
    with pytest.raises(TypeError, match="floating-point"):
        SAFNode()(torch.ones(3, dtype=torch.long))
    single = SAFNode()
    single(torch.rand(4, 3))
    with pytest.raises(ValueError, match="reset_net"):
        single(torch.rand(5, 3))
    functional.reset_net(single)
    assert single(torch.rand(5, 3)).shape == (5, 3)


def test_single_and_multi_step_agree_and_reset():
    x = torch.rand(7, 4, 6, dtype=torch.float64) * 2
    single, multi = SAFNode(), SAFNode(step_mode="m")
    out_single = torch.stack([single(xt) for xt in x])
    out_multi = multi(x)
    assert torch.equal(out_single, out_multi)
    assert single.weight_sum == multi.weight_sum == saf_functional.weight_sums(0.0, 0.5, 7)[-1]
    functional.reset_net(multi)
    assert multi.weight_sum == 0.0 and multi.abar == 0.0
    assert torch.equal(multi(x), out_multi)


def test_set_step_mode_reset_net_in_a_zoo_model():
    net = spiking_vgg.spiking_vgg11_bn(spiking_neuron=SAFNode, num_classes=10, tau=2.0,
                                       surrogate_function=surrogate.Sigmoid(alpha=4.0))
    nodes = [m for m in net.modules() if isinstance(m, SAFNode)]
    assert len(nodes) > 5
    functional.set_step_mode(net, "m")
    assert all(n.step_mode == "m" for n in nodes)
    net.eval()
    with torch.no_grad():
        y = net(torch.rand(1, 2, 3, 32, 32))  # [T=1, N=2, C, H, W]
    assert y.shape == (1, 2, 10)
    assert all(n.weight_sum == 1.0 for n in nodes)  # one step: c[1] = 1
    functional.reset_net(net)
    assert all(n.weight_sum == 0.0 for n in nodes)


def test_to_functional_forward_is_pure():
    net = nn.Sequential(layer.Linear(5, 6), SAFNode(), layer.Linear(6, 2), SAFNode())
    functional.set_step_mode(net, "m")
    x = torch.rand(4, 3, 5)
    expected = net(x)
    functional.reset_net(net)
    f = base.to_functional_forward(net)
    states = tuple(base.extract_memories(net))
    outputs, new_states = f((x,), states)
    out = outputs[0] if isinstance(outputs, tuple) else outputs
    torch.testing.assert_close(out, expected)
    # States come back in module order: (abar, weight_sum, last_input) per SAFNode; c[4] = 1.875 for tau = 2.
    assert len(new_states) == 6 and new_states[1] == new_states[4] == 1.875
    assert net[1].weight_sum == 0.0, "the functional call must not touch module memories"
    # The state keeps the last input I[T], from which v follows: V[T] = c[T] (s I[T] - V_th Abar[T]).
    functional.reset_net(net)
    last_input = net[:3](x)[-1]
    torch.testing.assert_close(new_states[5], last_input)
    functional.reset_net(net)
    net(x)
    torch.testing.assert_close(net[3].v, 1.875 * (last_input - new_states[3]))


@pytest.mark.slow
def test_torch_compile_matches_eager():
    torch._dynamo.reset()
    net = nn.Sequential(layer.Linear(5, 6), SAFNode(), layer.Linear(6, 2))
    x = torch.rand(6, 3, 5)
    eager = [net(xt) for xt in x]
    functional.reset_net(net)
    compiled = torch.compile(net, backend="aot_eager")
    outs = [compiled(xt) for xt in x]
    for a, b in zip(outs, eager):
        torch.testing.assert_close(a, b)
    outs[-1].sum().backward()
    assert net[0].weight.grad is not None


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_keeps_state_in_float32(dtype):
    net = nn.Sequential(nn.Linear(8, 16), SAFNode(), nn.Linear(16, 4))
    x = torch.rand(5, 3, 8)
    reference = torch.stack([net(xt) for xt in x])
    functional.reset_net(net)
    with torch.autocast("cpu", dtype=dtype):
        outs = torch.stack([net(xt) for xt in x])
    assert net[1].abar.dtype == torch.float32
    assert outs.dtype == dtype
    # Spikes may flip at near-ties in low precision; the outputs stay close on average.
    assert (outs.float() - reference).abs().mean() < 0.1
    outs.float().sum().backward()


def test_input_average_reproduces_static_input():
    avg = InputAverage(tau=2.0, step_mode="m")
    x = torch.rand(1, 4, 3).expand(6, 4, 3)
    torch.testing.assert_close(avg(x), x)
    functional.reset_net(avg)
    frames = torch.rand(6, 4, 3, dtype=torch.float64)
    out = avg(frames)
    sums = saf_functional.weight_sums(0.0, 0.5, 6)
    expected = sum(0.5 ** (5 - k) * frames[k] for k in range(6)) / sums[-1]
    torch.testing.assert_close(out[-1], expected)


@pytest.mark.parametrize("surrogate_function", [
    SpikeRepresentation(spiking=False),
    surrogate.Sigmoid(alpha=4.0, spiking=False),
    surrogate.ATan(spiking=False),
])
@pytest.mark.parametrize("decay_input", [False, True])
def test_gradcheck_step(surrogate_function, decay_input):
    """In non-spiking mode the step is smooth: its backward must be the true derivative."""
    g = torch.Generator().manual_seed(0)
    current = (torch.rand(3, 5, dtype=torch.float64, generator=g) * 0.8 + 0.1).requires_grad_()
    abar_prev = torch.rand(3, 5, dtype=torch.float64, generator=g)
    tau = 3.0

    def step(i):
        params = saf_functional.SAFParameters(1 - 1 / tau, 0.7, 1 / tau if decay_input else 1.0)
        return gradients.step(i, saf_functional.SAFState(abar_prev, 1.5), params, surrogate_function)[0]

    assert torch.autograd.gradcheck(step, (current,))


@pytest.mark.parametrize("surrogate_function", [
    surrogate.Sigmoid(alpha=4.0), surrogate.ATan(), surrogate.PiecewiseQuadratic(), surrogate.Erf(),
], ids=lambda s: type(s).__name__)
@pytest.mark.parametrize("weight_sum_prev", [0.0, 1.5])
def test_one_node_step_equals_autograd_composition(surrogate_function, weight_sum_prev):
    """The eager one-node step: same forward bit for bit, and the chain rule's gradient."""
    g = torch.Generator().manual_seed(3)
    current = (torch.rand(4, 33, dtype=torch.float64, generator=g) * 2).requires_grad_()
    abar_prev = torch.rand(4, 33, dtype=torch.float64, generator=g)
    grad_out = torch.randn(4, 33, dtype=torch.float64, generator=g)
    state = saf_functional.SAFState(abar_prev, weight_sum_prev)
    params = saf_functional.SAFParameters(0.75, 0.8, 0.25)
    explicit = gradients.SpikeLevelExplicit(surrogate_function)
    fused, after_fused = gradients.step(current, state, params, explicit)
    composed, after_composed = gradients.step(current, state, params,
                                              gradients.SpikeLevelAutograd(surrogate_function))
    assert torch.equal(fused, composed) and after_fused.weight_sum == after_composed.weight_sum
    (g_fused,) = torch.autograd.grad(fused, current, grad_out)
    (g_composed,) = torch.autograd.grad(composed, current, grad_out)
    assert g_fused.abs().max() > 0
    torch.testing.assert_close(g_fused, g_composed, rtol=1e-12, atol=1e-15)
    with torch.no_grad():
        assert torch.equal(gradients.step(current, state, params, explicit)[0], fused)


def test_compiled_representation_step_matches_eager():
    torch._dynamo.reset()
    net = nn.Sequential(nn.Linear(5, 6).double(), SAFNode(surrogate_function=SpikeRepresentation()),
                        nn.Linear(6, 2).double())
    x = torch.rand(4, 3, 5, dtype=torch.float64) * 2
    eager = [net(xt) for xt in x]
    eager[-1].sum().backward()
    eager_grad = net[0].weight.grad.clone()
    net.zero_grad()
    functional.reset_net(net)
    compiled = torch.compile(net, backend="aot_eager")
    outs = [compiled(xt) for xt in x]
    for a, b in zip(outs, eager):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    outs[-1].sum().backward()
    torch.testing.assert_close(net[0].weight.grad, eager_grad)


# ---- arguments and attributes are validated, at construction and afterwards ----------------------
@pytest.mark.parametrize("name", ["decay_input", "detach_reset", "store_v_seq"])
@pytest.mark.parametrize("value", ["no", 1, None])
def test_flags_must_be_bool(name, value):
    with pytest.raises(TypeError, match=f"{name} must be True or False"):
        SAFNode(**{name: value})


def test_attributes_are_validated_after_construction():
    node = SAFNode(tau=4.0)
    for name, value, error, pattern in [
        ("v_threshold", -1, ValueError, "v_threshold must be positive"),
        ("v_threshold", math.nan, ValueError, "v_threshold must be positive"),
        ("v_threshold", "1", TypeError, "v_threshold must be a real number"),
        ("tau", 0.5, ValueError, "tau must be >= 1"),
        ("tau", True, TypeError, "tau must be a real number"),
        ("decay_input", "no", TypeError, "decay_input must be True or False"),
        ("v_reset", 0.0, ValueError, "v_reset=None"),
        ("backend", "cuda", ValueError, "valid backends"),
    ]:
        with pytest.raises(error, match=pattern):
            setattr(node, name, value)
    assert (node.tau, node.v_threshold, node.decay_input, node.v_reset) == (4.0, 1.0, False, None)
    node.v_threshold, node.decay_input = 2, True
    assert node.v_threshold == 2.0 and node.input_scale == 0.25
    with pytest.raises(ValueError, match="decay_input=False"):
        node.tau = math.inf
    if_node = SAFNode(tau=math.inf)
    with pytest.raises(ValueError, match="decay_input=False"):
        if_node.decay_input = True


@pytest.mark.parametrize("tau, error", [(True, TypeError), ("2", TypeError), (0.5, ValueError),
                                        (math.nan, ValueError)])
def test_input_average_validates_tau(tau, error):
    with pytest.raises(error, match="tau"):
        InputAverage(tau=tau)
    average = InputAverage()
    with pytest.raises(error, match="tau"):
        average.tau = tau


def test_input_average_batch_change_says_reset_net():
    average = InputAverage(step_mode="m")
    average(torch.rand(3, 4, 5))
    with pytest.raises(ValueError, match="reset_net"):
        average(torch.rand(3, 2, 5))
    functional.reset_net(average)
    assert average(torch.rand(3, 2, 5)).shape == (3, 2, 5)


@pytest.mark.parametrize("module", [SAFNode(step_mode="m"), InputAverage(step_mode="m")],
                         ids=["SAFNode", "InputAverage"])
def test_empty_sequence_is_refused(module):
    with pytest.raises(ValueError, match="T=0"):
        module(torch.rand(0, 3, 4))


def test_empty_sequence_is_refused_by_backends_and_functional():
    from spikingjelly_saf import backends

    with pytest.raises(ValueError, match="T >= 1"):
        backends.REGISTRY.multi_step("torch", torch.rand(0, 3), saf_functional.SAFState(),
                                     saf_functional.SAFParameters(0.5), surrogate.ATan())
    with pytest.raises(ValueError, match="T=0"):
        gradients.multi_step(torch.rand(0, 3), saf_functional.SAFState(), saf_functional.SAFParameters(0.5), surrogate.ATan())


# ---- BaseNode's contract: v, v_seq, MemoryModule helpers -----------------------------------------
def test_v_is_the_lif_membrane_in_both_step_modes():
    T, tau = 9, 4.0
    x = torch.rand(T, 3, 5, dtype=torch.float64) * 1.5  # static input: no InputAverage needed
    x = x[:1].expand(T, 3, 5)
    lif = neuron.LIFNode(tau=tau, decay_input=False, v_reset=None, step_mode="m", store_v_seq=True)
    lif(x)
    for step_mode in ("s", "m"):
        saf = SAFNode(tau=tau, step_mode=step_mode, store_v_seq=True)
        if step_mode == "s":
            for xt in x:
                saf(xt)
        else:
            saf(x)
        torch.testing.assert_close(saf.v, lif.v, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(saf.v_seq, lif.v_seq, rtol=1e-10, atol=1e-10)
        functional.reset_net(saf)
        assert saf.v == 0.0 and saf.v_seq is None


def test_output_recovery_is_a_memory_module_reset_by_reset_net():
    from spikingjelly_saf import OutputRecovery

    recovery = OutputRecovery(0.5)
    assert isinstance(recovery, base.MemoryModule)
    averages = torch.rand(4, 2, 3, dtype=torch.float64)
    first = torch.stack([recovery(a) for a in averages])
    torch.testing.assert_close(first, saf_functional.recover_instantaneous_seq(averages, 0.5))
    functional.reset_net(nn.Sequential(recovery))
    assert recovery.weight_sum == 0.0 and recovery.average_prev is None
    torch.testing.assert_close(torch.stack([recovery(a) for a in averages]), first)
    with pytest.raises(ValueError, match="decay"):
        OutputRecovery(1.5)


def test_public_classes_document_themselves_and_when_to_reset():
    from spikingjelly_saf import OutputRecovery, SpikeTap
    from spikingjelly_saf.surrogate import RepresentationSurrogate

    for cls in (SAFNode, InputAverage, OutputRecovery, SpikeTap, SpikeRepresentation,
                RepresentationSurrogate):
        assert cls.__doc__ and len(cls.__doc__) > 80, cls
    for cls in (SAFNode, InputAverage, OutputRecovery):
        assert "functional.reset_net" in cls.__doc__ and "中文" in cls.__doc__, cls


# ---- low precision: SAF is no worse than LIF at the same precision ------------------------------------
@pytest.mark.parametrize("tau", [math.inf, 100.0])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_half_precision_saf_is_no_worse_than_lif(dtype, tau):
    """A pure 16-bit model (no autocast), T=1000: spikes against a float64 LIF, SAF versus a 16-bit LIF.

    SAF's membrane c[t] s I[t] - V_th lam c[t-1] Abar[t-1] is a difference of terms that grow like
    c[t]; computed in 16 bits it cancels away (about a fifth of the spikes differed). The step
    therefore computes, and keeps its state, in float32 (docs/theory.md, "Precision").
    """
    T, N = 1000, 64
    g = torch.Generator().manual_seed(0)
    # A static input (the same current every step), so that SAF needs no InputAverage.
    current = (torch.rand(N, generator=g) * 0.8 - 0.1).to(dtype).expand(T, N)

    def lif_spikes(lif_dtype):
        lif = (neuron.IFNode(v_reset=None, step_mode="m") if math.isinf(tau)
               else neuron.LIFNode(tau=tau, decay_input=False, v_reset=None, step_mode="m"))
        with torch.no_grad():
            return lif(current.to(lif_dtype))

    reference, low = lif_spikes(torch.float64), lif_spikes(dtype)
    saf = SAFNode(tau=tau, step_mode="m")
    recorded = []
    saf.spikes.register_forward_hook(lambda module, args, output: recorded.append(output))
    with torch.no_grad():
        out = saf(current)
    assert out.dtype == dtype and saf.abar.dtype == torch.float32
    assert 0.1 < reference.mean().item() < 0.5
    saf_mismatch = (recorded[0] != reference).double().mean().item()
    lif_mismatch = (low != reference).double().mean().item()
    assert saf_mismatch <= lif_mismatch, (saf_mismatch, lif_mismatch)
    assert saf_mismatch < 0.01, saf_mismatch
