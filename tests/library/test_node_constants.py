"""SAFNode's constants are numbers, its surrogate a callable, and its precision limit is stated.

- A tensor or ``nn.Parameter`` tau (a learnable leak, as in ParametricLIFNode) is refused at
  construction and on assignment, with the reason, before ``nn.Module`` could register it.
- ``surrogate_function`` set to something that is not callable is refused on assignment.
- Below float64 a neuron whose weight sum c[t] passes the limit warns once
  (``SAFPrecisionWarning``), and the limit is real: an IF network in float32 at long T misses
  more of the float64 LIF network's spikes than the float32 LIF network does, while the same SAF
  network in float64 misses none.
"""

import math
import warnings

import pytest
import torch
import torch.nn as nn
from spikingjelly.activation_based import functional, layer, neuron

from spikingjelly_saf import SAFNode, SAFPrecisionWarning
from spikingjelly_saf import functional as saf_functional


@pytest.mark.parametrize("tau", [nn.Parameter(torch.tensor(2.0)), torch.tensor(2.0),
                                 torch.full((4,), 2.0)])
def test_a_tensor_tau_is_refused_at_construction_with_the_reason(tau):
    with pytest.raises(TypeError, match="tau must be a number.*one fixed leak per layer.*ParametricLIFNode"):
        SAFNode(tau=tau)


@pytest.mark.parametrize("name", ["tau", "v_threshold"])
def test_a_parameter_assigned_later_is_refused_and_not_registered(name):
    node = SAFNode()
    with pytest.raises(TypeError, match=f"{name} must be a number"):
        setattr(node, name, nn.Parameter(torch.tensor(3.0)))
    assert list(node.parameters()) == []
    assert getattr(node, name) == (2.0 if name == "tau" else 1.0)


@pytest.mark.parametrize("value", [None, 1.0, "sigmoid"])
def test_a_surrogate_that_cannot_be_called_is_refused(value):
    with pytest.raises(TypeError, match="surrogate_function must be callable"):
        SAFNode(surrogate_function=value)
    node = SAFNode()
    with pytest.raises(TypeError, match="surrogate_function must be callable"):
        node.surrogate_function = value
    assert callable(node.surrogate_function)


def _precision_warnings(node: SAFNode, x_seq: torch.Tensor) -> list:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        node(x_seq)
        node(x_seq)
    return [w for w in caught if issubclass(w.category, SAFPrecisionWarning)]


def test_the_precision_warning_comes_once_where_the_limit_is_passed():
    limit = int(saf_functional.PRECISION_WEIGHT_SUM_LIMIT)
    below = _precision_warnings(SAFNode(tau=math.inf, step_mode="m", backend="torch"),
                                torch.rand(limit // 2, 3))
    assert below == []
    passed = _precision_warnings(SAFNode(tau=math.inf, step_mode="m", backend="torch"),
                                 torch.rand(limit + 1, 3))
    assert len(passed) == 1 and "model.double()" in str(passed[0].message)
    assert _precision_warnings(SAFNode(tau=math.inf, step_mode="m"),
                               torch.rand(limit + 1, 3, dtype=torch.float64)) == []
    assert _precision_warnings(SAFNode(tau=4.0, step_mode="m"), torch.rand(4 * limit, 3)) == []


def _spikes(net: nn.Module, x_seq: torch.Tensor, saf: bool) -> list:
    recorded = []
    for module in net.modules():
        if isinstance(module, (SAFNode, neuron.IFNode)):
            module.register_forward_hook(lambda m, args, out: recorded.append(out))
    functional.set_step_mode(net, "m")
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", SAFPrecisionWarning)
        net(x_seq)
    if saf:
        return [saf_functional.recover_instantaneous_seq(a.double(), 1.0).round() for a in recorded]
    return [s.double() for s in recorded]


def test_the_stated_limit_is_real_and_float64_removes_it():
    steps = 400
    torch.manual_seed(0)

    def build(make):
        return nn.Sequential(layer.Linear(32, 100), make(), layer.Linear(100, 100), make())

    reference = build(lambda: neuron.IFNode(v_reset=None)).double()
    for parameter in reference.parameters():
        nn.init.normal_(parameter, 0.0, 0.3)
    x_seq = 0.5 * torch.rand(steps, 8, 32, dtype=torch.float64)
    # SAF receives the running average of the input frames (what InputAverage computes).
    counts = torch.arange(1, steps + 1, dtype=torch.float64).view(-1, 1, 1)
    x_average = x_seq.cumsum(0) / counts
    truth = _spikes(reference, x_seq, saf=False)

    def misses(spikes):
        return sum(int((a != b).sum()) for a, b in zip(spikes, truth))

    lif32 = build(lambda: neuron.IFNode(v_reset=None))
    lif32.load_state_dict(reference.state_dict())
    saf32 = build(lambda: SAFNode(tau=math.inf, backend="torch"))
    saf32.load_state_dict(reference.state_dict())
    saf64 = build(lambda: SAFNode(tau=math.inf)).double()
    saf64.load_state_dict(reference.state_dict())
    lif_misses = misses(_spikes(lif32, x_seq.float(), saf=False))
    saf_misses = misses(_spikes(saf32, x_average.float(), saf=True))
    assert saf_misses > lif_misses
    assert misses(_spikes(saf64, x_average, saf=True)) == 0
