"""saf_inference and the model contract of saf_online_training: clear errors for models that
expand or average over time, swapped [T, B] input, T=0, and state carried between sequences."""

import warnings

import pytest
import torch
import torch.nn as nn
from spikingjelly.activation_based import functional, layer, neuron, surrogate

from spikingjelly_saf import (ModelContractError, SAFNode, StateCarriedOverWarning, saf_inference,
                              saf_online_training, to_saf)
from spikingjelly_saf import functional as saf_functional
from spikingjelly_saf.training import saf_nodes

T, B = 4, 3


class CSNN(nn.Module):
    """Shaped like SpikingJelly's Fashion-MNIST example; ``own_time`` keeps its forward, which
    expands the image over T itself and averages the output over T."""

    def __init__(self, own_time: bool, channels: int = 4):
        super().__init__()
        self.own_time = own_time
        self.conv_fc = nn.Sequential(
            layer.Conv2d(1, channels, 3, padding=1, bias=False), layer.BatchNorm2d(channels),
            neuron.IFNode(v_reset=None, surrogate_function=surrogate.ATan()),
            layer.AvgPool2d(2, 2), layer.Flatten(), layer.Linear(channels * 4 * 4, 10, bias=False),
            neuron.IFNode(v_reset=None, surrogate_function=surrogate.ATan()))
        functional.set_step_mode(self, "m")

    def forward(self, x):
        if self.own_time:
            return self.conv_fc(x.unsqueeze(0).expand(T, -1, -1, -1, -1)).mean(0)
        return self.conv_fc(x)


class AveragesOverTime(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(layer.Linear(6, 5), SAFNode(step_mode="m"), layer.Linear(5, 3))

    def forward(self, x_seq):
        return self.net(x_seq).mean(0)


def _images(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(B, 1, 8, 8, generator=g) * 3
    return x.unsqueeze(1).repeat(1, T, 1, 1, 1), torch.randint(0, 10, (B,), generator=g)


def _loss(y, target):
    return nn.functional.cross_entropy(y, target)


@pytest.mark.parametrize("method", ["saf-e", "saf-e-acc", "saf-f"])
@pytest.mark.parametrize("mode", ["s", "m"])
def test_model_that_expands_and_averages_over_time_is_named(method, mode):
    torch.manual_seed(0)
    net = to_saf(CSNN(own_time=True))
    functional.set_step_mode(net, mode)
    x_seq, target = _images()
    with pytest.raises(ModelContractError, match=r"adds the time dimension itself .*\.mean\(0\)"):
        saf_online_training(net, torch.optim.SGD(net.parameters(), lr=0.1), x_seq, target, _loss,
                            method)
    with pytest.raises(ModelContractError, match="first call"):
        saf_inference(net, x_seq)


def test_output_that_drops_the_time_dimension_is_named():
    net = AveragesOverTime()
    x = torch.rand(B, T, 6)
    with pytest.raises(ModelContractError, match=r"returned \(3, 3\) for input \(4, 3, 6\)"):
        saf_online_training(net, torch.optim.SGD(net.parameters(), lr=0.1), x,
                            torch.zeros(B, dtype=torch.long), _loss, "saf-e-acc")


@pytest.mark.parametrize("method", ["saf-e", "saf-e-acc", "saf-f"])
@pytest.mark.parametrize("mode", ["s", "m"])
def test_contract_following_csnn_trains_and_evaluates(method, mode):
    torch.manual_seed(0)
    net = to_saf(CSNN(own_time=False)).double()
    functional.set_step_mode(net, mode)
    x_seq, target = _images()
    x_seq = x_seq.double()
    # lr = 0: the weights do not move, so the training outputs are the evaluation outputs.
    _, y_seq = saf_online_training(net, torch.optim.SGD(net.parameters(), lr=0.0), x_seq, target,
                                   _loss, method)
    assert y_seq.shape == (B, T, 10)
    scores = saf_inference(net, x_seq)
    decay = saf_nodes(net)[-1].decay
    # The default is the firing rate of the recovered output; Obar[T] stays available by name.
    torch.testing.assert_close(scores, saf_functional.rate_readout(y_seq, decay, dim=1),
                               rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(saf_inference(net, x_seq, readout="weighted"), y_seq[:, -1],
                               rtol=1e-12, atol=1e-12)
    assert scores.grad_fn is None


def test_swapped_time_and_batch_is_named():
    net = nn.Sequential(layer.Linear(6, 5), SAFNode(), layer.Linear(5, 3))
    x = torch.rand(B, T, 6)
    target = torch.zeros(B, dtype=torch.long)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    with pytest.raises(ValueError, match=r"x_seq looks like \[T, B, \*\].*x_seq.transpose\(0, 1\)"):
        saf_online_training(net, opt, x.transpose(0, 1), target, _loss)
    with pytest.raises(ValueError, match=r"x_seq looks like \[T, B, \*\]"):
        saf_online_training(net, opt, x.transpose(0, 1), target.unsqueeze(1).expand(B, T), _loss,
                            target_is_sequence=True)


@pytest.mark.parametrize("call", ["train", "inference"])
def test_zero_time_steps_is_a_clear_error(call):
    net = nn.Sequential(layer.Linear(6, 5), SAFNode(), layer.Linear(5, 3))
    x = torch.rand(B, 0, 6)
    with pytest.raises(ValueError, match=r"x_seq has T=0 time steps .*T >= 1"):
        if call == "train":
            saf_online_training(net, torch.optim.SGD(net.parameters(), lr=0.1), x,
                                torch.zeros(B, dtype=torch.long), _loss)
        else:
            saf_inference(net, x)


def test_state_from_a_previous_sequence_is_reset_with_a_warning():
    torch.manual_seed(0)
    net = nn.Sequential(layer.Linear(6, 5), SAFNode(), layer.Linear(5, 3)).double()
    x = torch.rand(B, T, 6, dtype=torch.float64) * 3
    target = torch.zeros(B, dtype=torch.long)
    opt = torch.optim.SGD(net.parameters(), lr=0.0)
    _, fresh = saf_online_training(net, opt, x, target, _loss, "saf-e")
    with pytest.warns(StateCarriedOverWarning, match=r"held state .*\(1\).*reset_net"):
        _, again = saf_online_training(net, opt, x, target, _loss, "saf-e")
    torch.testing.assert_close(again, fresh)  # the same as from a reset network
    functional.reset_net(net)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        saf_online_training(net, opt, x, target, _loss, "saf-e")
        # The network holds state now; saf_inference resets before and after itself.
        torch.testing.assert_close(saf_inference(net, x, readout="weighted"), fresh[:, -1])
        saf_online_training(net, opt, x, target, _loss, "saf-e")


class StockCSNN(nn.Module):
    """SpikingJelly's Fashion-MNIST CSNN as a user brings it (hard-reset IFNode, MaxPool,
    BatchNorm), with the one documented change: forward leaves time to the library."""

    def __init__(self, channels: int = 4):
        super().__init__()
        self.conv_fc = nn.Sequential(
            layer.Conv2d(1, channels, 3, padding=1, bias=False), layer.BatchNorm2d(channels),
            neuron.IFNode(surrogate_function=surrogate.ATan()), layer.MaxPool2d(2, 2),
            layer.Conv2d(channels, channels, 3, padding=1, bias=False), layer.BatchNorm2d(channels),
            neuron.IFNode(surrogate_function=surrogate.ATan()), layer.MaxPool2d(2, 2),
            layer.Flatten(), layer.Linear(channels * 2 * 2, 10, bias=False),
            neuron.IFNode(surrogate_function=surrogate.ATan()))
        functional.set_step_mode(self, "m")

    def forward(self, x):
        return self.conv_fc(x)


@pytest.mark.parametrize("method", ["saf-e", "saf-e-acc", "saf-f"])
def test_stock_model_trained_evaluated_and_deployed(method):
    import copy

    from spikingjelly_saf import functional as saf_functional
    from spikingjelly_saf import saf_online_training, to_lif
    from spikingjelly_saf.training import readout_decay, run_sequence

    torch.manual_seed(0)
    with pytest.raises(ValueError, match="IFNode"):
        to_saf(StockCSNN())
    # Soft reset for the retrained network; AvgPool in place of MaxPool keeps deployment exact.
    with pytest.warns(UserWarning, match="soft-reset IFNode network"):
        net = to_saf(StockCSNN(), soft_reset=True, replace_maxpool=True).double()
    with torch.no_grad():  # a readout strong enough for the output neurons to fire within T
        net.conv_fc[9].weight.uniform_(0.0, 1.0)
    functional.set_step_mode(net, "m" if method == "saf-e-acc" else "s")
    g = torch.Generator().manual_seed(1)
    x_seq = (torch.rand(8, 1, 1, 8, 8, generator=g, dtype=torch.float64) * 3).repeat(1, T, 1, 1, 1)
    target = torch.randint(0, 10, (8,), generator=g)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.05)
    before = copy.deepcopy(net.state_dict())
    for _ in range(2):
        functional.reset_net(net)
        loss, _ = saf_online_training(net, optimizer, x_seq, target, _loss, method)
        assert torch.isfinite(loss)
    assert any(not torch.equal(before[k], v) for k, v in net.state_dict().items())
    net.eval()
    scores = saf_inference(net, x_seq)
    lif = to_lif(copy.deepcopy(net)).eval()
    functional.reset_net(lif)
    with torch.no_grad():
        out_seq = run_sequence(lif, x_seq)
    # The deployed network read as SpikingJelly reads any network: the mean output over T.
    deployed = out_seq.mean(1)
    torch.testing.assert_close(deployed, scores, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(
        saf_functional.weighted_average(out_seq, readout_decay(net), dim=1),
        saf_inference(net, x_seq, readout="weighted"), rtol=1e-9, atol=1e-9)
    assert scores.abs().sum() > 0, "the output layer never fired: the comparison proves nothing"
    assert torch.equal(deployed.argmax(1), scores.argmax(1))
