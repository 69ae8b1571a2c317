"""Theorem 3 (docs/theory.md): SAF-F with the representation surrogate is Spike Representation.

Statements proven here, in float64:

(a) Against SpikingJelly's ``DSRIFNode`` (lam = 1; ``alpha=1`` so that it fires at V_th, as SAF does):
    the SAF-F network (tau = inf, ``SpikeRepresentation``) gives the same final output as the DSR
    network's mean output, and its gradients are the DSR gradients with constant 1 for the first
    layer's weight and for every bias. DSR's neurons emit spikes of height V_th, so the same network
    written for DSR has its post-neuron weights divided by V_th; for those weights the DSR gradient
    is exactly V_th times SAF-F's (the chain rule of W = V_th W'): with V_th = 1 every gradient is
    equal.
(b) For any tau >= 1 and decay_input, against a reference written here: SAF-F's gradient equals the
    gradient of the network in which each neuron's forward value is SAF's Abar[T] and its local
    derivative is that of the Spike Representation mapping clamp(s I[T] / V_th, 0, 1), with
    constant 1.
"""

import math

import pytest
import torch
import torch.nn as nn
from spikingjelly.activation_based import functional, layer, surrogate
from spikingjelly.activation_based.neuron import DSRIFNode

from spikingjelly_saf import SAFNode, saf_online_training
from spikingjelly_saf import functional as saf_functional
from spikingjelly_saf.surrogate import SpikeRepresentation


class AsFloat64(nn.Module):
    """DSRIFNode always returns float32 spikes; spikes of height 1 or 2 are exact in float64 too."""

    def __init__(self, node):
        super().__init__()
        self.node = node

    def forward(self, x):
        return self.node(x).double()


def _weights(seed, v_threshold):
    g = torch.Generator().manual_seed(seed)
    shapes = [(14, 10), (9, 14), (3, 9)]
    weights = [torch.randn(s, dtype=torch.float64, generator=g) * 0.8 for s in shapes]
    biases = [torch.randn(s[0], dtype=torch.float64, generator=g) * 0.3 * v_threshold for s in shapes]
    return weights, biases


def _mlp(make_neuron, weights, biases, post_neuron_weight_scale=1.0):
    linears = []
    for i, (w, b) in enumerate(zip(weights, biases)):
        lin = nn.Linear(w.shape[1], w.shape[0]).double()
        with torch.no_grad():
            lin.weight.copy_(w / (post_neuron_weight_scale if i > 0 else 1.0))
            lin.bias.copy_(b)
        linears.append(layer.SeqToANNContainer(lin))
    return nn.Sequential(linears[0], make_neuron(), linears[1], make_neuron(), linears[2])


def _loss(output, target):
    return nn.functional.cross_entropy(output, target)


@pytest.mark.parametrize("train_step_mode", ["s", "m"])
@pytest.mark.parametrize("v_threshold", [1.0, 2.0])
def test_saf_f_equals_dsr_if_node(v_threshold, train_step_mode):
    T = 8
    weights, biases = _weights(3, v_threshold)
    g = torch.Generator().manual_seed(9)
    x = torch.rand(6, 10, dtype=torch.float64, generator=g) * 2 * v_threshold
    target = torch.randint(0, 3, (6,), generator=g)

    dsr = _mlp(lambda: AsFloat64(DSRIFNode(T=T, v_threshold=v_threshold, alpha=1.0,
                                           v_threshold_training=False)),
               weights, biases, post_neuron_weight_scale=v_threshold)
    dsr_output = dsr(x.unsqueeze(0).expand(T, -1, -1)).mean(0)
    _loss(dsr_output, target).backward()

    saf = _mlp(lambda: SAFNode(tau=math.inf, v_threshold=v_threshold,
                               surrogate_function=SpikeRepresentation()), weights, biases)
    functional.set_step_mode(saf, train_step_mode)
    if train_step_mode == "s":
        # SeqToANNContainer expects [T, N, *]; in single-step mode feed it a length-1 sequence per step.
        saf = nn.Sequential(Unsqueeze(), saf, Squeeze())
    optimizer = torch.optim.SGD(saf.parameters(), lr=0.0)
    _, y_seq = saf_online_training(saf, optimizer, x.unsqueeze(1).expand(-1, T, -1), target, _loss,
                                   method="saf-f")
    torch.testing.assert_close(y_seq[:, -1], dsr_output, rtol=1e-12, atol=1e-12)

    compared = 0
    for (name, p_dsr), p_saf in zip(dsr.named_parameters(), saf.parameters()):
        post_neuron_weight = name.endswith("weight") and not name.startswith("0.")
        factor = v_threshold if post_neuron_weight else 1.0
        # DSRIFFunction computes in float32 whatever its input dtype, so its gradient carries
        # float32 rounding (~1e-7 relative); the factors compared differ by 100%.
        torch.testing.assert_close(p_dsr.grad, factor * p_saf.grad, rtol=2e-6, atol=1e-9,
                                   msg=lambda m, n=name: f"{n}: {m}")
        compared += int(p_saf.grad.abs().max() > 0)
    assert compared == 6


class Unsqueeze(nn.Module):
    def forward(self, x):
        return x.unsqueeze(0)


class Squeeze(nn.Module):
    def forward(self, x):
        return x.squeeze(0)


def _reference_sr_gradient(linears, saf_nodes, x, target, inputs_at_T, abar_at_T):
    """Autograd through Abar[T] (as values) with the local derivative of clamp(s I / V_th, 0, 1)."""
    h = x
    for i, lin in enumerate(linears):
        current = lin(h)
        if i == len(linears) - 1:
            break
        node = saf_nodes[i]
        rate = saf_functional.representation_mapping(current, node.v_threshold, node.input_scale)
        h = abar_at_T[i] + (rate - rate.detach())
        torch.testing.assert_close(current.detach(), inputs_at_T[i])
    _loss(current, target).backward()


@pytest.mark.parametrize("decay_input", [False, True])
@pytest.mark.parametrize("tau", [1.0, 2.0, 4.0])
def test_saf_f_equals_spike_representation_reference(tau, decay_input):
    T, v_threshold = 10, (1.0 / tau if decay_input else 1.0)
    weights, biases = _weights(5, 1.0)
    g = torch.Generator().manual_seed(1)
    x = torch.rand(6, 10, dtype=torch.float64, generator=g) * 2
    target = torch.randint(0, 3, (6,), generator=g)

    def build():
        linears = [nn.Linear(w.shape[1], w.shape[0]).double() for w in weights]
        with torch.no_grad():
            for lin, w, b in zip(linears, weights, biases):
                lin.weight.copy_(w)
                lin.bias.copy_(b)
        nodes = [SAFNode(tau=tau, decay_input=decay_input, v_threshold=v_threshold,
                         surrogate_function=SpikeRepresentation()) for _ in range(2)]
        return nn.Sequential(linears[0], nodes[0], linears[1], nodes[1], linears[2]), linears, nodes

    saf, _, nodes = build()
    captured = {}
    for i, node in enumerate(nodes):
        node.register_forward_hook(
            lambda m, args, out, i=i: captured.__setitem__(i, (args[0].detach(), out.detach())))
    optimizer = torch.optim.SGD(saf.parameters(), lr=0.0)
    saf_online_training(saf, optimizer, x.unsqueeze(1).expand(-1, T, -1), target, _loss, "saf-f")

    reference, linears, ref_nodes = build()
    _reference_sr_gradient(linears, ref_nodes, x, target, [captured[i][0] for i in range(2)],
                           [captured[i][1] for i in range(2)])
    for p_saf, p_ref in zip(saf.parameters(), reference.parameters()):
        torch.testing.assert_close(p_saf.grad, p_ref.grad, rtol=1e-12, atol=1e-14)

    # Not vacuous: some neurons sit inside (0, 1) and some saturate, so the clamp's slope matters,
    # and the spike-level surrogate gives a different gradient.
    u = captured[0][0] * (nodes[0].input_scale / v_threshold)
    inside = ((u > 0) & (u < 1)).double().mean().item()
    assert 0.05 < inside < 0.95
    spike_level, _, spike_nodes = build()
    for node in spike_nodes:
        node.surrogate_function = surrogate.Sigmoid(alpha=4.0)
    saf_online_training(spike_level, torch.optim.SGD(spike_level.parameters(), lr=0.0),
                        x.unsqueeze(1).expand(-1, T, -1), target, _loss, "saf-f")
    assert not torch.allclose(spike_level[0].weight.grad, saf[0].weight.grad)


def test_representation_error_formula():
    """Abar[T] - clamp(sI/V_th, 0, 1) is -V[T]/(V_th c[T]) outside saturation: it does not vanish for lam < 1."""
    T = 64
    for tau in (2.0, math.inf):
        node = SAFNode(tau=tau)
        current = torch.rand(20000, dtype=torch.float64) * 0.9 + 0.05
        for _ in range(T):
            abar = node(current)
        error = (abar - saf_functional.representation_mapping(current, 1.0, 1.0)).abs().max().item()
        bound = 1.0 / saf_functional.weight_sums(0.0, node.decay, T)[-1]  # |V[T]| <= V_th below threshold
        assert error <= bound + 1e-12
        if tau == 2.0:
            assert error > 0.1, "for lam < 1 the representation error stays of order 1/c[T]"
