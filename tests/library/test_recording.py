"""SpikeRecorder: one recorder for SAF, LIF, OTTT and DSR neurons, in either step mode."""

import copy

import pytest
import torch
import torch.nn as nn
from spikingjelly.activation_based import functional, layer, neuron

from spikingjelly_saf import SAFNode, SpikeRecorder, to_lif


def _net(make, mode):
    torch.manual_seed(0)
    net = nn.Sequential(layer.Linear(5, 7), make(), layer.Linear(7, 4), make()).double()
    functional.set_step_mode(net, mode)
    return net


def _run(net, x, mode):
    functional.reset_net(net)
    with torch.no_grad():
        if mode == "m":
            net(x.transpose(0, 1))
        else:
            for t in range(x.shape[1]):
                net(x[:, t])


@pytest.mark.parametrize("mode", ["s", "m"])
def test_saf_spikes_equal_lif_spikes(mode):
    saf = _net(lambda: SAFNode(tau=2.0), mode)
    lif = to_lif(copy.deepcopy(saf))
    functional.set_step_mode(lif, mode)
    # A static input: the SAF network equals its LIF twin without an InputAverage.
    x = (torch.rand(3, 1, 5, dtype=torch.float64) * 3).expand(3, 6, 5)
    with SpikeRecorder(saf, keep="spikes") as rec_saf, SpikeRecorder(lif, keep="spikes") as rec_lif:
        _run(saf, x, mode)
        _run(lif, x, mode)
    seq_saf, seq_lif = rec_saf.spike_seq(), rec_lif.spike_seq()
    assert list(seq_saf) == ["1", "3"] == list(seq_lif)
    for name in seq_saf:
        assert seq_saf[name].shape[:2] == (6, 3)
        assert torch.equal(seq_saf[name], seq_lif[name])
    rates = rec_saf.rates()
    assert 0.0 < rates["1"] < 1.0
    assert rates["1"] == pytest.approx(float(seq_saf["1"].mean()))
    assert len(rec_saf.spikes()["1"]) == (1 if mode == "m" else 6)
    # Hooks are gone after the with block.
    _run(saf, x, mode)
    assert len(rec_saf.spikes()["1"]) == (1 if mode == "m" else 6)


def test_rates_clear_ddp_names_and_other_neurons():
    class Wrapper(nn.Module):  # the "module." prefix DistributedDataParallel adds
        def __init__(self, module):
            super().__init__()
            self.module = module

        def forward(self, x):
            return self.module(x)

    dead = _net(lambda: neuron.IFNode(v_threshold=1e9), "s")
    rec = SpikeRecorder(Wrapper(dead))
    assert rec.names == ("1", "3")
    assert all(r != r for r in rec.rates().values())  # nan before any step
    _run(dead, torch.rand(2, 3, 5, dtype=torch.float64), "s")
    assert rec.rates() == {"1": 0.0, "3": 0.0}
    with pytest.raises(ValueError, match='keep="spikes"'):
        rec.spikes()
    rec.clear()
    assert all(r != r for r in rec.rates().values())
    rec.remove()
    with pytest.raises(ValueError, match="keep must be"):
        SpikeRecorder(dead, keep="all")


def test_ottt_list_output_and_dsr_height():
    ottt = layer.OTTTSequential(layer.Linear(5, 6), neuron.OTTTLIFNode(v_reset=None),
                                layer.Linear(6, 3))
    rec = SpikeRecorder(ottt, keep="spikes")
    ottt.train()
    functional.reset_net(ottt)
    ottt(torch.rand(2, 5) * 4)
    (spikes,) = rec.spikes()["1"]
    assert spikes.shape == (2, 6) and set(spikes.unique().tolist()) <= {0.0, 1.0}

    dsr = nn.Sequential(layer.Linear(5, 6), neuron.DSRIFNode(T=4, v_threshold=2.0))
    functional.set_step_mode(dsr, "m")
    rec = SpikeRecorder(dsr)
    with torch.no_grad():
        y = dsr(torch.rand(4, 2, 5) * 10)
    assert rec.rates()["1"] == pytest.approx(float((y != 0).float().mean()))
    assert rec.rates()["1"] > 0
