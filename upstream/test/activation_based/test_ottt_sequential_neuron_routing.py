import copy

import pytest
import torch
import torch.nn as nn

from spikingjelly.activation_based import neuron
from spikingjelly.activation_based.functional.net_config import detach_net, reset_net
from spikingjelly.activation_based.layer.online_learning import OTTTSequential
from spikingjelly.activation_based.neuron.online_learning import OTTTLIFNode


class SpikeTraceIFNode(neuron.IFNode):
    """A neuron outside the OTTTLIFNode hierarchy that also returns ``[spike, trace]``."""

    def __init__(self):
        super().__init__(v_reset=None, detach_reset=True)
        self.register_memory("trace", 0.0)

    def single_step_forward(self, x):
        spike = super().single_step_forward(x)
        with torch.no_grad():
            self.trace = self.trace + spike
        return [spike, self.trace]


@pytest.mark.parametrize(
    "make_second",
    [
        lambda: neuron.LIFNode(v_reset=None),
        lambda: neuron.IFNode(v_reset=None),
        SpikeTraceIFNode,
    ],
)
def test_ottt_sequential_calls_any_neuron_once_on_the_spike(make_second):
    torch.manual_seed(0)
    net = OTTTSequential(nn.Linear(6, 4), OTTTLIFNode(v_threshold=0.5), make_second())
    reference = copy.deepcopy(net)
    for x in torch.rand(4, 2, 6) * 3:
        y = net(x)
        spike, _ = reference[1](reference[0](x))
        expected = reference[2](spike)
        y = y[0] if isinstance(y, list) else y
        expected = expected[0] if isinstance(expected, list) else expected
        torch.testing.assert_close(y, expected)
        torch.testing.assert_close(net[2].v, reference[2].v)
    reset_net(net)


def test_ottt_sequential_starts_a_new_pair_at_a_custom_trace_neuron():
    torch.manual_seed(0)
    net = OTTTSequential(
        nn.Linear(6, 4), OTTTLIFNode(v_threshold=0.5), SpikeTraceIFNode(), nn.Linear(4, 2)
    )
    for x in torch.rand(3, 2, 6) * 3:
        y = net(x)
        assert isinstance(y, torch.Tensor) and y.shape == (2, 2)
        y.sum().backward()
        assert net[0].weight.grad is not None
        net.zero_grad()
        detach_net(net)
    reset_net(net)
