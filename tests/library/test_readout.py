"""The default readout: the firing rate of the output, recovered from SAF's weighted averages, is
what the ``to_lif`` twin gives read as SpikingJelly reads any network, ``out_seq.mean(0)``.

Float64 proves the formula against SpikingJelly's own LIFNode; float32 proves that the rounding of
the spike counts makes the predictions identical, ties between equal counts included.
"""

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from spikingjelly.activation_based import functional, layer, neuron

from spikingjelly_saf import SAFNode, predict, saf_inference, saf_online_training, to_lif
from spikingjelly_saf import functional as saf_functional
from spikingjelly_saf.training import READOUTS, output_is_spiking, readout_decay, run_sequence

T = 6


def _net(tau: float, ends_in_neuron: bool = True, classes: int = 5) -> nn.Sequential:
    modules = [layer.Linear(8, 16), SAFNode(tau=tau), layer.Linear(16, classes)]
    if ends_in_neuron:
        modules.append(SAFNode(tau=tau))
    return nn.Sequential(*modules)


def _lif_out_seq(net: nn.Module, x_seq: torch.Tensor) -> torch.Tensor:
    lif = to_lif(copy.deepcopy(net))
    assert not any(isinstance(m, SAFNode) for m in lif.modules())
    assert any(isinstance(m, neuron.LIFNode) for m in lif.modules())
    functional.reset_net(lif)
    with torch.no_grad():
        return run_sequence(lif, x_seq)


@pytest.mark.parametrize("tau", [1.5, 2.0, 3.5])
@pytest.mark.parametrize("ends_in_neuron", [True, False])
def test_rate_readout_is_the_lif_twins_mean_in_float64(tau, ends_in_neuron):
    torch.manual_seed(0)
    net = _net(tau, ends_in_neuron).double()
    with torch.no_grad():
        net[2].weight.mul_(3.0)  # output neurons that fire at several rates
    x_seq = (torch.rand(64, 1, 8, dtype=torch.float64) * 2).expand(64, T, 8)
    functional.reset_net(net)
    with torch.no_grad():
        obar_seq = run_sequence(net, x_seq)
    out_seq = _lif_out_seq(net, x_seq)
    rate = saf_functional.rate_readout(obar_seq, readout_decay(net), dim=1)
    torch.testing.assert_close(rate, out_seq.mean(1), rtol=0, atol=1e-12)
    # It is the mean of the recovered outputs o[t], which are the LIF outputs themselves.
    recovered = saf_functional.recover_instantaneous_seq(obar_seq.transpose(0, 1), readout_decay(net))
    torch.testing.assert_close(recovered.transpose(0, 1), out_seq, rtol=0, atol=1e-12)
    torch.testing.assert_close(saf_inference(net, x_seq), out_seq.mean(1), rtol=0, atol=1e-12)
    # Obar[T] by name: the lam^(T-t)-weighted average, a different readout.
    weighted = saf_inference(net, x_seq, readout="weighted")
    torch.testing.assert_close(weighted, obar_seq[:, -1])
    assert not torch.allclose(weighted, rate)
    if ends_in_neuron:
        assert set(out_seq.unique().tolist()) <= {0.0, 1.0} and 0 < out_seq.mean() < 1


def test_rate_readout_of_one_step_and_errors():
    obar = torch.rand(3, 1, 4)
    torch.testing.assert_close(saf_functional.rate_readout(obar, 0.5, dim=1), obar[:, 0])
    with pytest.raises(ValueError, match="no steps"):
        saf_functional.rate_readout(torch.empty(3, 0, 4), 0.5, dim=1)
    assert READOUTS == ("rate", "weighted")
    with pytest.raises(ValueError, match="valid readouts: rate, weighted"):
        saf_inference(_net(2.0), torch.rand(2, T, 8), readout="last")


def test_output_is_spiking_follows_the_module_that_produced_the_output():
    x_seq = torch.rand(3, T, 8)
    assert output_is_spiking(_net(2.0, ends_in_neuron=True), x_seq)
    assert not output_is_spiking(_net(2.0, ends_in_neuron=False), x_seq)
    # A view of the neuron's output is still spikes.
    flat = nn.Sequential(layer.Linear(8, 6), SAFNode(), layer.Flatten())
    assert output_is_spiking(flat, x_seq)
    # Probing changes nothing: train/eval flags and state are as before.
    net = _net(2.0).train()
    net[0].eval()
    output_is_spiking(net, x_seq)
    assert net.training and not net[0].training and net[1].training
    assert all(getattr(m, "weight_sum", 0.0) == 0.0 for m in net.modules() if isinstance(m, SAFNode))


def test_trained_float32_model_and_its_lif_twin_predict_the_same_class_on_every_sample():
    """The deployment contract, float32 as trained: train a SAF network for a few steps,
    deploy it with to_lif, read the LIF network as ``out_seq.mean(0)``: the argmax equals the SAF
    model's default prediction on every sample, ties between equal spike counts included."""
    torch.manual_seed(7)
    net = _net(2.0, classes=10)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.5)
    x_train = torch.rand(32, 1, 8).expand(32, T, 8) * 2
    target = torch.randint(0, 10, (32,))
    before = copy.deepcopy(net.state_dict())
    for _ in range(3):
        functional.reset_net(net)
        loss, _ = saf_online_training(net, optimizer, x_train, target, F.cross_entropy, "saf-e")
        assert torch.isfinite(loss)
    assert any(not torch.equal(before[k], v) for k, v in net.state_dict().items())

    x_seq = torch.rand(512, 1, 8).expand(512, T, 8) * 2
    scores = saf_inference(net.eval(), x_seq)
    out_seq = _lif_out_seq(net, x_seq)
    lif_scores = out_seq.mean(1)
    assert torch.equal(predict(scores), lif_scores.argmax(1))
    # Bit for bit on the CPU: rounded spike counts over T, the LIF spikes' mean.
    assert torch.equal(scores, lif_scores)
    # The comparison covers ties: samples whose top count is shared by several classes.
    top = lif_scores.max(1, keepdim=True).values
    tied = ((lif_scores == top).sum(1) > 1) & (top.squeeze(1) > 0)
    assert tied.sum() >= 5, "no ties between equal nonzero spike counts: the test proves too little"
    # Without the rounding the float32 rate can differ from the LIF mean in the last bits.
    functional.reset_net(net)
    with torch.no_grad():
        obar_seq = run_sequence(net, x_seq)
    unrounded = saf_functional.rate_readout(obar_seq, readout_decay(net), dim=1)
    torch.testing.assert_close(unrounded, lif_scores, rtol=0, atol=1e-5)
