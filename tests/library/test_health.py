"""FiringHealth: a silent or saturated layer is reported once, by name, rate and cause."""

import warnings

import pytest
import torch
import torch.nn as nn
from spikingjelly.activation_based import functional, layer, neuron

from spikingjelly_saf import FiringHealth, SAFNode, saf_online_training
from spikingjelly_saf.health import FiringHealthWarning


def _net(v_threshold_second=1.0):
    torch.manual_seed(0)
    net = nn.Sequential(layer.Linear(6, 16), SAFNode(), layer.Linear(16, 8),
                        SAFNode(v_threshold=v_threshold_second), layer.Linear(8, 3))
    with torch.no_grad():
        net[0].weight.uniform_(0.0, 0.4)
        net[2].weight.uniform_(-0.2, 0.6)
    return net


def _train(net, x, lr=0.01, method="saf-e"):
    target = torch.randint(0, 3, (x.shape[0],), generator=torch.Generator().manual_seed(0))
    functional.reset_net(net)
    saf_online_training(net, torch.optim.SGD(net.parameters(), lr=lr), x, target,
                        nn.functional.cross_entropy, method)


def test_silent_layer_is_reported_once_with_name_rate_and_cause():
    net = _net(v_threshold_second=1e6)  # the second layer can never fire
    health = FiringHealth(net, method="saf-e", steps=4)
    _train(net, torch.rand(8, 4, 6))
    problems = health.problems()
    assert len(problems) == 1
    assert "layer '3' is silent: firing rate 0" in problems[0]
    assert "saf-e takes T=4 optimizer steps per minibatch: try a learning rate 4 times smaller" \
        in problems[0]
    with pytest.warns(FiringHealthWarning, match="layer '3' is silent"):
        assert health.warn() == problems
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert health.warn() == []  # once per problem
    health.remove()


def test_healthy_network_is_silent_and_saturation_is_reported():
    net = _net()
    health = FiringHealth(net)
    _train(net, torch.rand(8, 4, 6), method="saf-e-acc")
    rates = health.rates()
    assert all(0.0 < r < 0.95 for r in rates.values()), rates
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert health.problems() == [] and health.warn() == []
    health.clear()
    _train(net, 100.0 * torch.ones(8, 4, 6), method="saf-e-acc")
    problems = health.problems()
    assert any(p.startswith("layer '1' is saturated: firing rate 1") for p in problems), problems
    assert "v_threshold" in problems[0]


def test_dead_lif_network_without_method():
    net = nn.Sequential(layer.Linear(4, 5), neuron.IFNode(v_threshold=1e9))
    with FiringHealth(net, steps=8) as health:
        net(torch.rand(2, 4))
        (problem,) = health.problems()
    assert "layer '1' is silent" in problem and "8 times smaller" in problem
    deeper = nn.Sequential(layer.Linear(4, 5), neuron.IFNode(v_threshold=1e9), layer.Linear(5, 2),
                           neuron.IFNode())
    with FiringHealth(deeper) as health:
        deeper(torch.rand(2, 4))
        first, second = health.problems()
    assert "layer '1' is silent" in first and "Likely cause" in first
    assert "layer '3' is silent" in second and "downstream of silent layer '1'" in second
    with pytest.raises(ValueError, match="silent_below < saturated_above"):
        FiringHealth(net, silent_below=0.5, saturated_above=0.1)
    with pytest.raises(ValueError, match="no neuron layer"):
        FiringHealth(nn.Linear(2, 2))
