"""Theorem 1 (docs/theory.md): SAF's spikes are exactly those of the LIF network with the same weights.

Statement proven here, in float64 against SpikingJelly's own ``LIFNode``/``IFNode``: for a network whose
modules between neurons are affine and fixed over time (conv and linear with biases, eval-mode
BatchNorm, AvgPool, a residual add, ``layer.Dropout`` with its mask shared over time), the SAF network
fed with the running weighted average of the input frames emits, at every step t <= 16 and in every
layer, spikes S[t] = c[t] Abar[t] - lam c[t-1] Abar[t-1] identical to the LIF network's, and its
recovered output equals the LIF output. Holds for tau in {1, 2, 4, 1e6, inf}, both decay_input
values, single- and multi-step mode.
"""

import math

import pytest
import torch
import torch.nn as nn
from spikingjelly.activation_based import functional

from spikingjelly_saf import InputAverage, SAFNode
from spikingjelly_saf import functional as saf_functional

from nets import SpikeRecorder, conv_net, freeze_batchnorm, lif_factory, randomise, run_steps, saf_factory

TAUS = [1.0, 2.0, 4.0, 1e6, math.inf]


def _threshold(tau, decay_input):
    # decay_input divides every input by tau; lower the threshold to match, so every tau spikes.
    return 1.0 / tau if decay_input else 1.0


def _build_pair(tau, decay_input, seed):
    v_threshold = _threshold(tau, decay_input)
    lif = conv_net(lif_factory(tau, decay_input, v_threshold)).double()
    randomise(lif, seed)
    freeze_batchnorm(lif)
    saf_body = conv_net(saf_factory(tau, decay_input, v_threshold)).double()
    saf_body.load_state_dict(lif.state_dict())
    freeze_batchnorm(saf_body)
    saf = nn.Sequential(InputAverage(tau), saf_body)
    return lif, saf


# Every tau with both decay_input values, except the IF neuron, which has no input decay.
SETTINGS = [(tau, decay_input) for tau in TAUS for decay_input in (False, True)
            if not (math.isinf(tau) and decay_input)]


@pytest.mark.parametrize("step_mode", ["s", "m"])
@pytest.mark.parametrize("tau, decay_input", SETTINGS)
def test_saf_spikes_equal_lif_spikes(tau, decay_input, step_mode):
    T = 16
    lif, saf = _build_pair(tau, decay_input, seed=7)
    frames = torch.rand(T, 3, 2, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    frames = frames * 2.0

    lif_recorder, saf_recorder = SpikeRecorder(lif), SpikeRecorder(saf)
    torch.manual_seed(3)  # the Dropout masks: drawn once per sequence, identically in both nets
    lif_out = run_steps(lif, frames, step_mode)
    torch.manual_seed(3)
    saf_out = run_steps(saf, frames, step_mode)

    lif_spikes = lif_recorder.sequences(step_mode)
    saf_spikes = saf_recorder.sequences(step_mode)
    assert len(lif_spikes) == len(saf_spikes) == 3
    for layer_index, (s_lif, s_saf) in enumerate(zip(lif_spikes, saf_spikes)):
        rate = s_lif.mean().item()
        assert 0.01 < rate < 0.99, f"layer {layer_index} rate {rate}: the test would be vacuous"
        assert torch.equal(s_lif, s_saf), (
            f"layer {layer_index}: {(s_lif != s_saf).sum().item()} of {s_lif.numel()} spikes differ"
        )
    decay = saf_functional.decay_factor(tau)
    recovered = saf_functional.recover_instantaneous_seq(saf_out, decay)
    torch.testing.assert_close(recovered, lif_out, rtol=1e-9, atol=1e-9)


def test_average_output_is_weighted_rate_of_lif_output():
    """The SAF output itself is the weighted average of the LIF outputs (what SAF-F trains on)."""
    tau, T = 2.0, 8
    lif, saf = _build_pair(tau, False, seed=11)
    frames = torch.rand(T, 2, 2, 8, 8, dtype=torch.float64) * 2
    torch.manual_seed(0)
    lif_out = run_steps(lif, frames, "s")
    torch.manual_seed(0)
    saf_out = run_steps(saf, frames, "s")
    decay = saf_functional.decay_factor(tau)
    sums = saf_functional.weight_sums(0.0, decay, T)
    for t in range(T):
        weights = torch.tensor([decay ** (t - k) for k in range(t + 1)], dtype=torch.float64)
        expected = (weights.view(-1, 1, 1) * lif_out[: t + 1]).sum(0) / sums[t]
        torch.testing.assert_close(saf_out[t], expected, rtol=1e-10, atol=1e-10)
    # The SAF readout of the LIF network: functional.weighted_average over time (any dim).
    torch.testing.assert_close(saf_functional.weighted_average(lif_out, decay), saf_out[-1], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(saf_functional.weighted_average(lif_out.transpose(0, 1), decay, dim=1), saf_out[-1],
                               rtol=1e-10, atol=1e-10)


def test_membrane_identity_and_v_seq():
    """H[t] rebuilt from SAF's state equals LIF's membrane; store_v_seq records LIF's V[t]."""
    T, tau = 12, 4.0
    x = torch.rand(T, 5, 7, dtype=torch.float64) * 1.5
    lif = lif_factory(tau, True)()
    lif.store_v_seq = True
    saf = SAFNode(tau=tau, decay_input=True, store_v_seq=True)
    xbar = run_steps(InputAverage(tau), x, "s")
    spikes = run_steps(lif, x, "s")
    abar = run_steps(saf, xbar, "s")
    torch.testing.assert_close(saf.v_seq, lif.v_seq, rtol=1e-10, atol=1e-10)
    assert torch.equal(saf_functional.recover_instantaneous_seq(abar, saf.decay).round(), spikes)
    # Forward side of Theorem 3: Abar[T] = s I[T] / V_th - V[T] / (V_th c[T]).
    c_T = saf_functional.weight_sums(0.0, saf.decay, T)[-1]
    rebuilt = saf.input_scale * xbar[-1] / saf.v_threshold - saf.v_seq[-1] / (saf.v_threshold * c_T)
    torch.testing.assert_close(abar[-1], rebuilt, rtol=1e-10, atol=1e-12)


def test_float32_flips_are_threshold_ties():
    """In float32 a membrane within rounding of V_th may tip either way: every flip must be such a tie."""
    T, tau, N = 16, 2.0, 200_000
    g = torch.Generator().manual_seed(5)
    x = torch.rand(T, N, generator=g) * 1.2
    lif = lif_factory(tau, False)()
    lif.store_v_seq = True
    saf = SAFNode(tau=tau)
    spikes = run_steps(lif, x, "s")
    abar = run_steps(saf, run_steps(InputAverage(tau), x, "s"), "s")
    recovered = saf_functional.recover_instantaneous_seq(abar, saf.decay).round()
    h_lif = lif.v_seq + spikes * lif.v_threshold
    # The first flip of each neuron is where the two computations first disagree.
    flipped = recovered != spikes
    first_flip = flipped & (flipped.cumsum(0) == 1)
    margins = (h_lif[first_flip] - lif.v_threshold).abs()
    assert first_flip.sum().item() <= N * T * 1e-3
    if margins.numel():
        assert margins.max().item() < 1e-5, f"a flip {margins.max().item()} away from threshold"


def test_spikes_readable_through_monitor():
    """SpikingJelly's OutputMonitor records SAF spikes through the SpikeTap child."""
    from spikingjelly.activation_based import monitor
    from spikingjelly_saf import SpikeTap

    T = 6
    saf = nn.Sequential(InputAverage(2.0), nn.Linear(4, 8).double(), SAFNode(),
                        nn.Linear(8, 2).double(), SAFNode())
    lif = nn.Sequential(saf[1], lif_factory(2.0, False)(), saf[3], lif_factory(2.0, False)())
    x = torch.rand(T, 3, 4, dtype=torch.float64) * 3
    mon = monitor.OutputMonitor(saf, instance=SpikeTap)
    run_steps(saf, x, "s")
    lif_mon = monitor.OutputMonitor(lif, instance=type(lif[1]))
    run_steps(lif, x, "s")
    assert len(mon.records) == len(lif_mon.records) == 2 * T
    assert sum(r.sum().item() for r in lif_mon.records) > 0
    for a, b in zip(mon.records, lif_mon.records):
        assert torch.equal(a, b)
    functional.reset_net(saf)
