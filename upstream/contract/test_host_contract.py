"""SpikingJelly behaviour the SAF series must not change, checked on the unpatched and patched tree.

The series appends to ``surrogate.py``, ``functional/neuron.py`` and ``learning/online_learning.py``
and adds exports to ``neuron`` and ``layer``: these checks run SpikingJelly's own neurons, the
network helpers (``reset_net``, ``set_step_mode``, ``detach_net``) and OTTT training through those
modules. ``upstream/check_series.py`` also compares every public name of those modules between the
two trees.
"""

import torch
import torch.nn as nn

from spikingjelly.activation_based import base, functional, layer, neuron, surrogate
from spikingjelly.activation_based.learning import online_learning


def _mlp(make_neuron):
    torch.manual_seed(0)
    return nn.Sequential(layer.Linear(6, 8), make_neuron(), layer.Linear(8, 3), make_neuron())


def test_lif_single_and_multi_step_agree_and_reset():
    net = _mlp(lambda: neuron.LIFNode(tau=2.0))
    x_seq = torch.rand(5, 4, 6) * 3
    single = torch.stack([net(x) for x in x_seq])
    functional.reset_net(net)
    functional.set_step_mode(net, "m")
    assert all(m.step_mode == "m" for m in net.modules() if isinstance(m, base.StepModule))
    torch.testing.assert_close(net(x_seq), single)
    functional.reset_net(net)
    for m in net.modules():
        if isinstance(m, neuron.LIFNode):
            assert not isinstance(m.v, torch.Tensor) or not m.v.any()


def test_base_node_contract_of_a_subclass():
    class Doubling(neuron.BaseNode):
        def single_step_functional_forward(self, inputs, states, **kwargs):
            v = states[0] + inputs[0]
            spike = self.surrogate_function(v - self.v_threshold)
            return (spike,), (v - spike * self.v_threshold,)

    node = Doubling(v_reset=None, step_mode="m")
    out = node(torch.full((3, 2), 0.6))
    assert out.tolist() == [[0.0, 0.0], [1.0, 1.0], [0.0, 0.0]]
    functional.reset_net(node)
    assert node.v == 0.0


def test_surrogates_unchanged():
    x = torch.linspace(-1, 1, 9, requires_grad=True)
    for sg in (surrogate.Sigmoid(), surrogate.ATan(), surrogate.PiecewiseQuadratic()):
        x.grad = None
        y = sg(x)
        assert torch.equal(y, surrogate.heaviside(x.detach()))
        y.sum().backward()
        assert x.grad.abs().sum() > 0


def test_ottt_online_training_unchanged():
    torch.manual_seed(0)
    net = layer.OTTTSequential(nn.Linear(8, 4), neuron.OTTTLIFNode(), nn.Linear(4, 2), neuron.LIFNode())
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    before = [p.detach().clone() for p in net.parameters()]
    loss, y_all = online_learning.ottt_online_training(
        net, optimizer, torch.rand(2, 4, 8), torch.rand(2, 4, 2), nn.functional.mse_loss, True)
    assert y_all.shape == (2, 4, 2) and torch.isfinite(loss)
    assert any(not torch.equal(a, b) for a, b in zip(before, net.parameters()))
    assert online_learning.F is nn.functional


def test_lif_functional_unchanged():
    x_seq = torch.rand(4, 3) * 2
    spikes, v, v_seq = functional.lif_multi_step(x_seq, torch.zeros(3), 2.0, True, 1.0, None)
    node = neuron.LIFNode(tau=2.0, v_reset=None, step_mode="m")
    torch.testing.assert_close(spikes, node(x_seq))
    assert v_seq is None


def test_public_names(tmp_path):
    """Record every public name of the touched modules (check_series.py compares the two trees)."""
    import importlib
    import json
    import os

    out = os.environ.get("SJ_CHECK_NAMES_OUT")
    modules = os.environ.get("SJ_CHECK_MODULES", "spikingjelly.activation_based.surrogate").split()
    names = {}
    for name in modules:
        module = importlib.import_module(name)
        names[name] = {
            k: f"{getattr(v, '__module__', type(v).__module__)}."
               f"{getattr(v, '__qualname__', type(v).__qualname__)}"
            for k, v in vars(module).items() if not k.startswith("_")
        }
    assert names[modules[0]]
    if out:
        with open(out, "w") as f:
            json.dump(names, f)
