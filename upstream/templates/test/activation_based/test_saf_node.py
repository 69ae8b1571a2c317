"""SAFNode, the SAF functional entry points and saf_online_training: API and host contracts."""

import importlib.util
import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn as nn

from spikingjelly.activation_based import base, functional, layer, neuron, surrogate
from spikingjelly.activation_based.learning import online_learning


# generate.py: helpers from tests/nets.py: run_steps


def test_exports():
    assert issubclass(neuron.SAFNode, neuron.BaseNode)
    assert callable(functional.saf_step) and callable(functional.saf_multi_step)
    assert {"saf_step", "saf_multi_step"} <= set(functional.neuron.__all__)
    assert "saf_online_training" in online_learning.__all__
    assert isinstance(surrogate.SpikeRepresentation(), surrogate.SurrogateFunctionBase)


@pytest.mark.parametrize(
    "kwargs, error",
    [
        ({"v_reset": 0.0}, ValueError),      # a hard reset is not linear in the spike train
        ({"tau": 0.5}, ValueError),          # 1 - 1/tau < 0 is not a leak
        ({"tau": "2"}, TypeError),
        ({"v_threshold": 0.0}, ValueError),
        ({"v_threshold": True}, TypeError),
        ({"surrogate_function": 3}, TypeError),
    ],
)
def test_argument_checks(kwargs, error):
    with pytest.raises(error):
        neuron.SAFNode(**kwargs)


def test_implementation_is_chosen_from_the_device(monkeypatch):
    node = neuron.SAFNode()
    assert node.backend == "auto"
    assert "auto" in node.supported_backends
    from spikingjelly._ops.saf import implementation

    monkeypatch.setenv("SJ_SAF_CUDA_IMPLEMENTATION", "auto")
    assert implementation(torch.device("cpu")) == "torch"
    monkeypatch.setenv("SJ_SAF_CUDA_IMPLEMENTATION", "cupy")
    with pytest.raises(ValueError, match="SJ_SAF_CUDA_IMPLEMENTATION"):
        implementation(torch.device("cpu"))
    monkeypatch.delenv("SJ_SAF_CUDA_IMPLEMENTATION")
    torch.testing.assert_close(neuron.SAFNode(backend="auto", step_mode="m")(torch.ones(3, 2) * 0.7),
                               neuron.SAFNode(backend="torch", step_mode="m")(torch.ones(3, 2) * 0.7))


def test_step_modes_and_repr():
    node = neuron.SAFNode(tau=4.0, step_mode="m")
    assert node.supported_step_mode() == ("s", "m")
    assert "tau=4.0" in node.extra_repr()
    with pytest.raises(ValueError):
        node.step_mode = "x"


def test_reset_net_restarts_the_sequence():
    torch.manual_seed(0)
    net = nn.Sequential(layer.Linear(5, 7), neuron.SAFNode(), layer.Linear(7, 2), neuron.SAFNode())
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.Linear):
                m.weight.uniform_(0.0, 1.0)
    hidden = []
    net[1].register_forward_hook(lambda m, args, out: hidden.append(out.detach()))
    x = torch.rand(3, 5)
    first = [net(x) for _ in range(4)]
    functional.reset_net(net)
    second = [net(x) for _ in range(4)]
    for a, b in zip(first + hidden[:4], second + hidden[4:]):
        torch.testing.assert_close(a, b)
    assert not all(torch.equal(hidden[0], later) for later in hidden[1:4]), "the state must matter"


def test_set_step_mode_and_functional_agree():
    # A static input: the SAF neuron sees the weighted average of its input, which for a constant
    # input is the input itself, so the LIF neuron below receives the same current.
    x_seq = (torch.rand(4, 5, dtype=torch.float64) * 2).expand(6, -1, -1)
    node = neuron.SAFNode(tau=2.0)
    single = run_steps(node, x_seq, "s")
    functional.reset_net(node)
    multi = run_steps(node, x_seq, "m")
    torch.testing.assert_close(multi, single)

    abar_seq, (abar, weight_sum), v_seq = functional.saf_multi_step(x_seq, tau=2.0, store_v_seq=True)
    torch.testing.assert_close(abar_seq, multi)
    torch.testing.assert_close(abar, abar_seq[-1])
    assert math.isclose(weight_sum, sum(0.5 ** k for k in range(6)))

    state = (None, 0.0)
    for t, x in enumerate(x_seq):
        out, state = functional.saf_step(x, state[0], state[1], 2.0, False, 1.0, None)
        torch.testing.assert_close(out, abar_seq[t])

    # v_seq is the membrane of the LIF neuron with the same input (soft reset).
    lif = neuron.LIFNode(tau=2.0, decay_input=False, v_reset=None, step_mode="m", store_v_seq=True)
    lif(x_seq)
    torch.testing.assert_close(v_seq, lif.v_seq.to(v_seq.dtype), rtol=1e-6, atol=1e-6)


def test_memory_contract():
    node = neuron.SAFNode()
    names = [name for name, _ in node.named_memories()]
    assert names, "SAFNode keeps its state in registered memories"
    node(torch.rand(2, 3))
    functional.detach_net(node)
    functional.reset_net(node)
    for name, value in node.named_memories():
        assert not isinstance(value, torch.Tensor) or not value.requires_grad


def test_gradient_reaches_the_input():
    x = torch.rand(4, 6, requires_grad=True)
    node = neuron.SAFNode(surrogate_function=surrogate.ATan())
    node(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_saf_online_training_methods():
    torch.manual_seed(0)
    for method in ("saf-e", "saf-e-acc", "saf-f"):
        net = nn.Sequential(layer.Linear(8, 16), neuron.SAFNode(), layer.Linear(16, 3))
        optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
        before = [p.detach().clone() for p in net.parameters()]
        loss, y_seq = online_learning.saf_online_training(
            net, optimizer, torch.rand(4, 5, 8) * 2, torch.randint(0, 3, (4,)),
            nn.functional.cross_entropy, method=method)
        functional.reset_net(net)
        assert y_seq.shape == (4, 5, 3) and torch.isfinite(loss)
        assert any(not torch.equal(a, b) for a, b in zip(before, net.parameters())), method


def test_memory_module_base():
    assert isinstance(neuron.SAFNode(), base.MemoryModule)


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="Triton is not installed")
def test_triton_operator_matches_reference():
    # Triton's CPU interpreter must be chosen before Triton is imported: use a fresh interpreter.
    script = textwrap.dedent(
        """
        import os
        import torch
        from spikingjelly.activation_based import functional, surrogate
        for sg in (surrogate.Sigmoid(alpha=4.0), surrogate.ATan(), surrogate.SpikeRepresentation()):
            x = (torch.rand(5, 3, 7) * 2).requires_grad_()
            weights = torch.arange(1.0, 8.0)
            outs, grads = [], []
            for implementation in ("triton", "torch"):
                os.environ["SJ_SAF_CUDA_IMPLEMENTATION"] = implementation
                x.grad = None
                abar_seq, (abar, c), _ = functional.saf_multi_step(x, tau=2.0, surrogate_function=sg)
                (abar_seq * weights).sum().backward()
                outs.append(abar_seq.detach())
                grads.append(x.grad.clone())
            torch.testing.assert_close(outs[0], outs[1])
            torch.testing.assert_close(grads[0], grads[1], rtol=1e-5, atol=1e-6)
        from spikingjelly._ops.saf import implementation
        os.environ["SJ_SAF_CUDA_IMPLEMENTATION"] = "triton"
        assert implementation(torch.device("cpu")) == "triton"
        print("ok")
        """
    )
    env = dict(os.environ, TRITON_INTERPRET="1")
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr[-3000:]
