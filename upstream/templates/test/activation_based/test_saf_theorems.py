"""The three SAF theorems, in float64, against SpikingJelly's own neurons.

1. SAFNode's spikes are LIFNode's (soft reset) for the same weights, and the recovered output is
   the LIF network's output, with biases, eval-mode batch norm, average pooling, a residual add
   and dropout (one mask per sequence) in between.
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


# generate.py: helpers from tests/nets.py: Residual conv_net randomise freeze_batchnorm lif_factory saf_factory run_steps


# generate.py: helpers from tests/library/test_theorem3_spike_representation.py: AsFloat64 _weights _mlp


@pytest.fixture
def reference():
    """SAF's formulas as this series adds them (``spikingjelly/_ops/saf/reference.py``).

    Imported when a test asks for it, not with this file, so that without SAF every test of this
    file still fails on its own rather than the whole file failing to import.
    """
    from spikingjelly._ops.saf import reference

    return reference


@pytest.mark.parametrize("decay_input", [False, True])
@pytest.mark.parametrize("tau", [2.0, 4.0])
def test_theorem1_saf_spikes_equal_lif_spikes(tau, decay_input, reference):
    T, v_threshold = 12, (0.5 if decay_input else 1.0)
    lif = conv_net(lif_factory(tau, decay_input, v_threshold)).double()
    randomise(lif, seed=1)
    saf = conv_net(saf_factory(tau, decay_input, v_threshold)).double()
    saf.load_state_dict(lif.state_dict())
    spikes = {"lif": [], "saf": []}
    for name, net, kind in (("lif", lif, neuron.LIFNode), ("saf", saf, neuron.SAFNode)):
        freeze_batchnorm(net)  # eval-mode batch norm; layer.Dropout still draws its mask
        for m in net.modules():
            if isinstance(m, kind):
                m.register_forward_hook(lambda m, args, out, k=name: spikes[k].append(out.detach()))
    # A static input: its running weighted average, which SAF's first layer receives, is itself.
    # Drawn from a fixed seed: the firing-rate check below must not depend on the run.
    x = torch.rand(5, 2, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(2)) * 2
    x_seq = x.unsqueeze(0).repeat(T, 1, 1, 1, 1)
    with torch.no_grad():
        torch.manual_seed(0)  # layer.Dropout draws one mask per sequence: the same in both networks
        y_lif = run_steps(lif, x_seq, "m")
        torch.manual_seed(0)
        y_saf = run_steps(saf, x_seq, "m")

    decay = reference.decay_factor(tau)
    assert len(spikes["lif"]) == len(spikes["saf"]) == 3
    fired = 0
    for s_lif, abar in zip(spikes["lif"], spikes["saf"]):
        s_saf = reference.recover_instantaneous_seq(abar, decay)
        torch.testing.assert_close(s_saf, s_lif, rtol=0, atol=1e-9)
        fired += int(0 < s_lif.mean() < 1)
    assert fired == 3, "every layer must fire sometimes and not always, or the test is vacuous"
    torch.testing.assert_close(reference.recover_instantaneous_seq(y_saf, decay), y_lif, rtol=1e-9, atol=1e-9)


def test_theorem1_single_step_equals_multi_step():
    net = conv_net(saf_factory(2.0, False)).double().eval()
    randomise(net, seed=4)
    x_seq = (torch.rand(3, 2, 8, 8, dtype=torch.float64) * 2).unsqueeze(0).repeat(6, 1, 1, 1, 1)
    with torch.no_grad():
        single = run_steps(net, x_seq, "s")
        functional.reset_net(net)
        multi = run_steps(net, x_seq, "m")
    torch.testing.assert_close(multi, single, rtol=1e-12, atol=1e-12)
    assert not torch.equal(single[0], single[-1]), "the output must change over time, or the state is unused"


def test_theorem2_saf_e_gradients_equal_ottt(reference):
    T, tau = 6, 2.0
    sg = surrogate.Sigmoid(alpha=4.0)
    # Without batch norm: its affine parameters have no counterpart in the statement.
    ottt = conv_net(lif_factory(tau, False, online=True), container=layer.OTTTSequential, with_bn=False).double()
    for m in ottt.modules():
        if isinstance(m, neuron.OTTTLIFNode):
            m.surrogate_function = sg
    randomise(ottt, seed=3)
    saf = conv_net(saf_factory(tau, False, surrogate_function=sg), with_bn=False).double()
    saf.load_state_dict(ottt.state_dict())
    g = torch.Generator().manual_seed(2)
    x = torch.rand(4, 2, 8, 8, dtype=torch.float64, generator=g) * 2
    target = torch.randint(0, 3, (4,), generator=g)
    decay = reference.decay_factor(tau)
    sums = reference.weight_sums(0.0, decay, T)

    torch.manual_seed(0)  # layer.Dropout draws its mask at the first step: the same in both networks
    ottt_steps = []
    for t in range(T):
        ottt.zero_grad()
        y = ottt(x)
        nn.functional.cross_entropy(y, target).backward()
        functional.detach_net(ottt)
        ottt_steps.append((y.detach(), {n: p.grad.clone() for n, p in ottt.named_parameters()}))

    torch.manual_seed(0)
    previous = None
    compared = 0
    for t in range(T):
        saf.zero_grad()
        average = saf(x)
        o = reference.recover_instantaneous(average, previous, sums[t], sums[t - 1] if t else 0.0, decay)
        previous = average.detach()
        y, ottt_grads = ottt_steps[t]
        torch.testing.assert_close(o, y, rtol=1e-10, atol=1e-10)
        nn.functional.cross_entropy(o, target).backward()

        assert [n for n, _ in saf.named_parameters()] == list(ottt_grads)
        for name, p_saf in saf.named_parameters():
            scaled = name.endswith("bias") or name.startswith("0.")
            factor = sums[t] if scaled else 1.0
            torch.testing.assert_close(p_saf.grad, factor * ottt_grads[name], rtol=1e-9, atol=1e-12,
                                       msg=lambda m, n=name, t=t: f"{n} at t={t + 1}: {m}")
            compared += int(ottt_grads[name].abs().max() > 0)
    assert compared > 0.5 * T * len(ottt_grads)


@pytest.mark.parametrize("v_threshold", [1.0, 2.0])
def test_theorem3_saf_f_equals_spike_representation(v_threshold):
    T = 8
    weights, biases = _weights(3, v_threshold)
    g = torch.Generator().manual_seed(9)
    x = torch.rand(6, 10, dtype=torch.float64, generator=g) * 2 * v_threshold
    target = torch.randint(0, 3, (6,), generator=g)

    # DSR's neurons emit spikes of height V_th: the same network has its post-neuron weights / V_th.
    dsr = _mlp(lambda: AsFloat64(neuron.DSRIFNode(T=T, v_threshold=v_threshold, alpha=1.0,
                                                  v_threshold_training=False)),
               weights, biases, post_neuron_weight_scale=v_threshold)
    dsr_output = dsr(x.unsqueeze(0).expand(T, -1, -1)).mean(0)
    nn.functional.cross_entropy(dsr_output, target).backward()

    saf = _mlp(lambda: neuron.SAFNode(tau=math.inf, v_threshold=v_threshold,
                                      surrogate_function=surrogate.SpikeRepresentation()), weights, biases)
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
