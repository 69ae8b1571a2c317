"""The three SAF theorems, in float64, against SpikingJelly's own neurons.

1. SAFNode's spikes are LIFNode's (soft reset) for the same weights, and the recovered output is
   the LIF network's output, with biases, eval-mode batch norm and average pooling in between.
2. SAF-E's per-step weight gradients are those of OTTTLIFNode + OTTTSequential: equal for weights
   fed by a spiking layer, c[t] times OTTT's for biases and for the weights fed by the constant
   (direct-encoded) input.
3. SAF-F with SpikeRepresentation gives DSRIFNode's (Spike Representation) output and gradients;
   with spikes of height V_th in DSR, its post-neuron weight gradients are V_th times SAF-F's.
"""

import math

import pytest
import torch
import torch.nn as nn

from spikingjelly.activation_based import functional, layer, neuron, surrogate
from spikingjelly.activation_based.learning import online_learning


def _weight_sums(tau, steps):
    decay = 1.0 - 1.0 / tau
    sums, c = [], 0.0
    for _ in range(steps):
        c = decay * c + 1.0
        sums.append(c)
    return sums


def _instantaneous(average_seq, tau):
    """o[t] = c[t] Obar[t] - lam c[t-1] Obar[t-1]: spikes from a neuron's output, f(S) from the net's."""
    decay = 1.0 - 1.0 / tau
    sums = _weight_sums(tau, average_seq.shape[0])
    out = [sums[0] * average_seq[0]]
    for t in range(1, average_seq.shape[0]):
        out.append(sums[t] * average_seq[t] - decay * sums[t - 1] * average_seq[t - 1])
    return torch.stack(out)


def _conv_net(make_neuron, container=nn.Sequential):
    return container(
        layer.Conv2d(2, 4, 3, padding=1),
        layer.BatchNorm2d(4),
        make_neuron(),
        layer.AvgPool2d(2),
        layer.Flatten(),
        layer.Linear(4 * 4 * 4, 10),
        make_neuron(),
        layer.Linear(10, 3),
    )


def _randomise(net, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * 1.5 / m.weight[0].numel() ** 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.3)
            elif isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.2)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.2)


@pytest.mark.parametrize("decay_input", [False, True])
@pytest.mark.parametrize("tau", [2.0, 4.0])
def test_theorem1_saf_spikes_equal_lif_spikes(tau, decay_input):
    T, v_threshold = 12, (0.5 if decay_input else 1.0)
    lif = _conv_net(lambda: neuron.LIFNode(tau=tau, decay_input=decay_input, v_threshold=v_threshold,
                                           v_reset=None)).double().eval()
    _randomise(lif, seed=1)
    saf = _conv_net(lambda: neuron.SAFNode(tau=tau, decay_input=decay_input,
                                           v_threshold=v_threshold)).double().eval()
    saf.load_state_dict(lif.state_dict())
    for net in (lif, saf):
        functional.set_step_mode(net, "m")
    x_seq = (torch.rand(5, 2, 8, 8, dtype=torch.float64) * 2).unsqueeze(0).repeat(T, 1, 1, 1, 1)

    spikes = {"lif": [], "saf": []}
    for name, net, kind in (("lif", lif, neuron.LIFNode), ("saf", saf, neuron.SAFNode)):
        for m in net.modules():
            if isinstance(m, kind):
                m.register_forward_hook(lambda m, args, out, k=name: spikes[k].append(out.detach()))
    with torch.no_grad():
        y_lif = lif(x_seq)
        y_saf = saf(x_seq)

    fired = 0
    for s_lif, abar in zip(spikes["lif"], spikes["saf"]):
        s_saf = _instantaneous(abar, tau)
        torch.testing.assert_close(s_saf, s_lif, rtol=0, atol=1e-9)
        fired += int(0 < s_lif.mean() < 1)
    assert fired == 2, "every layer must fire sometimes and not always, or the test is vacuous"
    torch.testing.assert_close(_instantaneous(y_saf, tau), y_lif, rtol=1e-9, atol=1e-9)


def test_theorem1_single_step_equals_multi_step():
    net = _conv_net(lambda: neuron.SAFNode(tau=2.0)).double().eval()
    _randomise(net, seed=4)
    x = torch.rand(3, 2, 8, 8, dtype=torch.float64) * 2
    with torch.no_grad():
        single = torch.stack([net(x) for _ in range(6)])
        functional.reset_net(net)
        functional.set_step_mode(net, "m")
        multi = net(x.unsqueeze(0).repeat(6, 1, 1, 1, 1))
    torch.testing.assert_close(multi, single, rtol=1e-12, atol=1e-12)


def test_theorem2_saf_e_gradients_equal_ottt():
    T, tau = 6, 2.0

    def mlp(make_neuron, container=nn.Sequential):
        return container(layer.Linear(6, 12), make_neuron(), layer.Linear(12, 10), make_neuron(),
                         layer.Linear(10, 3))

    sg = surrogate.Sigmoid(alpha=4.0)
    ottt = mlp(lambda: neuron.OTTTLIFNode(tau=tau, decay_input=False, v_reset=None, detach_reset=True,
                                          surrogate_function=sg), layer.OTTTSequential).double()
    _randomise(ottt, seed=3)
    saf = mlp(lambda: neuron.SAFNode(tau=tau, surrogate_function=sg)).double()
    saf.load_state_dict(ottt.state_dict())
    x = torch.rand(4, 6, dtype=torch.float64) * 2
    target = torch.randint(0, 3, (4,))
    sums = _weight_sums(tau, T)

    previous = None
    compared = 0
    for t in range(T):
        for net in (ottt, saf):
            net.zero_grad()
        y = ottt(x)
        y = y[0] if isinstance(y, (list, tuple)) else y
        nn.functional.cross_entropy(y, target).backward()
        functional.detach_net(ottt)

        average = saf(x)
        o = sums[t] * average - (0.0 if previous is None else (1 - 1 / tau) * sums[t - 1] * previous)
        previous = average.detach()
        torch.testing.assert_close(o, y.detach(), rtol=1e-10, atol=1e-10)
        nn.functional.cross_entropy(o, target).backward()

        for (name, p_ottt), p_saf in zip(ottt.named_parameters(), saf.parameters()):
            scaled = name.endswith("bias") or name.startswith("0.")
            factor = sums[t] if scaled else 1.0
            torch.testing.assert_close(p_saf.grad, factor * p_ottt.grad, rtol=1e-9, atol=1e-12,
                                       msg=lambda m, n=name, t=t: f"{n} at t={t + 1}: {m}")
            compared += int(p_ottt.grad.abs().max() > 0)
    assert compared > 0.5 * T * 6


class _AsFloat64(nn.Module):
    def __init__(self, node):
        super().__init__()
        self.node = node

    def forward(self, x):
        return self.node(x).double()


@pytest.mark.parametrize("v_threshold", [1.0, 2.0])
def test_theorem3_saf_f_equals_spike_representation(v_threshold):
    T = 8
    g = torch.Generator().manual_seed(3)
    shapes = [(14, 10), (9, 14), (3, 9)]
    weights = [torch.randn(s, dtype=torch.float64, generator=g) * 0.8 for s in shapes]
    biases = [torch.randn(s[0], dtype=torch.float64, generator=g) * 0.3 * v_threshold for s in shapes]
    x = torch.rand(6, 10, dtype=torch.float64, generator=g) * 2 * v_threshold
    target = torch.randint(0, 3, (6,), generator=g)

    def mlp(make_neuron, post_neuron_scale):
        linears = []
        for i, (w, b) in enumerate(zip(weights, biases)):
            lin = nn.Linear(w.shape[1], w.shape[0]).double()
            with torch.no_grad():
                lin.weight.copy_(w / (post_neuron_scale if i > 0 else 1.0))
                lin.bias.copy_(b)
            linears.append(layer.SeqToANNContainer(lin))
        return nn.Sequential(linears[0], make_neuron(), linears[1], make_neuron(), linears[2])

    # DSR's neurons emit spikes of height V_th: the same network has its post-neuron weights / V_th.
    dsr = mlp(lambda: _AsFloat64(neuron.DSRIFNode(T=T, v_threshold=v_threshold, alpha=1.0,
                                                  v_threshold_training=False)), v_threshold)
    dsr_output = dsr(x.unsqueeze(0).expand(T, -1, -1)).mean(0)
    nn.functional.cross_entropy(dsr_output, target).backward()

    saf = mlp(lambda: neuron.SAFNode(tau=math.inf, v_threshold=v_threshold,
                                     surrogate_function=surrogate.SpikeRepresentation()), 1.0)
    functional.set_step_mode(saf, "m")
    optimizer = torch.optim.SGD(saf.parameters(), lr=0.0)
    _, y_seq = online_learning.saf_online_training(
        saf, optimizer, x.unsqueeze(1).expand(-1, T, -1), target, nn.functional.cross_entropy,
        method="saf-f")
    torch.testing.assert_close(y_seq[:, -1], dsr_output, rtol=1e-12, atol=1e-12)

    for (name, p_dsr), p_saf in zip(dsr.named_parameters(), saf.parameters()):
        post_neuron_weight = name.endswith("weight") and not name.startswith("0.")
        factor = v_threshold if post_neuron_weight else 1.0
        # DSRIFNode computes in float32: its gradient carries float32 rounding.
        torch.testing.assert_close(p_dsr.grad, factor * p_saf.grad, rtol=2e-6, atol=1e-9,
                                   msg=lambda m, n=name: f"{n}: {m}")
        assert p_saf.grad.abs().max() > 0
