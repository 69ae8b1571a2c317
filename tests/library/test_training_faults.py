"""saf_online_training never writes a NaN or infinite value into the weights without a word.

Each fault is injected (a NaN or infinite pixel, a NaN loss at a chosen step, a NaN gradient behind a
finite loss) and the test asserts the error, what it names, and that the weights are exactly those
of the last finite update. A vector-valued loss is refused by name.
"""

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from spikingjelly.activation_based import functional, layer

from spikingjelly_saf import NonFiniteTrainingError, SAFNode, check_gradients_finite, saf_online_training

METHODS = ("saf-e", "saf-e-acc", "saf-f")


def _net(step_mode: str = "s") -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(layer.Flatten(), layer.Linear(16, 12), SAFNode(), layer.Linear(12, 3))
    functional.set_step_mode(net, step_mode)
    return net


def _weights(net: nn.Module) -> dict:
    return {name: p.detach().clone() for name, p in net.named_parameters()}


def _same(a: dict, b: dict) -> bool:
    return all(torch.equal(a[name], b[name]) for name in a)


def _batch(steps: int = 4):
    generator = torch.Generator().manual_seed(1)
    return 2.0 * torch.rand(4, steps, 1, 4, 4, generator=generator), torch.tensor([0, 1, 2, 0])


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_a_non_finite_pixel_stops_before_any_update(method, value):
    net = _net()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.5)
    x_seq, target = _batch()
    x_seq[2, 1, 0, 3, 3] = value
    before = _weights(net)
    with pytest.raises(NonFiniteTrainingError, match="the input is not finite") as caught:
        saf_online_training(net, optimizer, x_seq, target, F.cross_entropy, method=method)
    assert caught.value.what == "input" and "1 NaN or infinite" in str(caught.value)
    assert _same(before, _weights(net))


def test_without_the_check_a_nan_pixel_reaches_the_weights():
    """The fault the check exists for: a NaN membrane counts as 'no spike', the loss stays finite,
    and the NaN arrives in the first layer's weights through the surrogate."""
    net = _net()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.5)
    x_seq, target = _batch()
    x_seq[2, 1, 0, 3, 3] = math.nan
    loss, _ = saf_online_training(net, optimizer, x_seq, target, F.cross_entropy, method="saf-e",
                                  check_finite=False)
    assert math.isfinite(float(loss))
    assert not all(torch.isfinite(p).all() for p in net.parameters())


@pytest.mark.parametrize("method, step_mode", [("saf-e", "s"), ("saf-e", "m"), ("saf-e-acc", "s"),
                                               ("saf-e-acc", "m"), ("saf-f", "s"), ("saf-f", "m")])
def test_a_nan_loss_stops_before_the_optimizer_step(method, step_mode):
    steps, bad_step = 4, 2
    calls = []

    def f_loss(output, label):
        calls.append(len(calls))
        loss = F.cross_entropy(output, label)
        return loss * math.nan if len(calls) - 1 == bad_step or method == "saf-f" else loss

    net = _net(step_mode)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.5)
    reference = _net(step_mode)
    reference_optimizer = torch.optim.SGD(reference.parameters(), lr=0.5)
    x_seq, target = _batch(steps)
    with pytest.raises(NonFiniteTrainingError, match="the loss is not finite") as caught:
        saf_online_training(net, optimizer, x_seq, target, f_loss, method=method)
    assert caught.value.what == "loss"
    assert all(torch.isfinite(p).all() for p in net.parameters())
    if method == "saf-e":
        # The updates of the steps before the bad one stay applied, and only those.
        assert caught.value.step == bad_step
        saf_online_training(reference, reference_optimizer, x_seq[:, :bad_step], target,
                            F.cross_entropy, method="saf-e")
        for a, b in zip(net.parameters(), reference.parameters()):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    else:
        assert _same(_weights(reference), _weights(net))


@pytest.mark.parametrize("method", METHODS)
def test_a_nan_gradient_behind_a_finite_loss_stops_before_the_optimizer_step(method):
    net = _net()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.5)
    first = net[1].weight
    first.register_hook(lambda grad: grad * math.nan)
    before = _weights(net)
    x_seq, target = _batch()
    with pytest.raises(NonFiniteTrainingError, match="the gradient is not finite") as caught:
        saf_online_training(net, optimizer, x_seq, target, F.cross_entropy, method=method)
    assert caught.value.what == "gradient" and caught.value.parameter == "1.weight"
    assert "the gradient of 1.weight is nan" in str(caught.value) and caught.value.value == "nan"
    assert _same(before, _weights(net))


@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_check_gradients_finite_guards_a_loop_of_your_own(value):
    """The same check in a hand-written loop: finite gradients pass; an infinite or NaN gradient in
    the second layer is named, and the step is not taken."""
    net = _net()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.5)
    x_seq, target = _batch()
    F.cross_entropy(net(x_seq[:, 0]), target).backward()
    check_gradients_finite(net, optimizer, time_step=0)  # finite: nothing raised
    optimizer.zero_grad()
    functional.reset_net(net)
    net[3].weight.register_hook(lambda grad: grad + value)
    F.cross_entropy(net(x_seq[:, 0]), target).backward()
    with pytest.raises(NonFiniteTrainingError, match="training stopped: the gradient is not finite at time step 2"
                       ) as caught:
        check_gradients_finite(net, optimizer, time_step=2)
    assert caught.value.parameter == "3.weight" and caught.value.value == ("nan" if math.isnan(value) else "inf")


@pytest.mark.parametrize("method", METHODS)
def test_a_vector_valued_loss_is_refused_by_name(method):
    net = _net()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.5)
    x_seq, target = _batch()
    before = _weights(net)
    with pytest.raises(ValueError, match=r"f_loss must return a single number.*reduction='mean'"):
        saf_online_training(net, optimizer, x_seq, target,
                            lambda output, label: F.cross_entropy(output, label, reduction="none"),
                            method=method)
    assert _same(before, _weights(net))


NOT_MODULES = ["net", None, 3, [nn.Linear(2, 2)], torch.zeros(2)]


@pytest.mark.parametrize("value", NOT_MODULES)
@pytest.mark.parametrize("call", [
    lambda m: __import__("spikingjelly_saf").to_saf(m),
    lambda m: __import__("spikingjelly_saf").to_lif(m),
    lambda m: __import__("spikingjelly_saf").check_exactness(m),
    lambda m: __import__("spikingjelly_saf").compare_with_lif(m, torch.rand(2, 3, 4)),
    lambda m: __import__("spikingjelly_saf").set_backend(m, "torch"),
    lambda m: __import__("spikingjelly_saf").saf_inference(m, torch.rand(2, 3, 4)),
    lambda m: saf_online_training(m, torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1),
                                  torch.rand(2, 3, 2), torch.zeros(2, dtype=torch.long), F.cross_entropy),
], ids=["to_saf", "to_lif", "check_exactness", "compare_with_lif", "set_backend", "saf_inference",
        "saf_online_training"])
def test_a_model_that_is_not_a_module_is_named(call, value):
    with pytest.raises(TypeError, match=r"must be a torch\.nn\.Module .*Pass the network itself"):
        call(value)


@pytest.mark.parametrize("optimizer, f_loss, message", [
    (None, F.cross_entropy, "optimizer must be a torch.optim.Optimizer"),
    ("sgd", F.cross_entropy, "optimizer must be a torch.optim.Optimizer"),
    ("real", "cross_entropy", "f_loss must be callable"),
])
def test_an_optimizer_or_loss_of_the_wrong_kind_is_named(optimizer, f_loss, message):
    net = _net()
    if optimizer == "real":
        optimizer = torch.optim.SGD(net.parameters(), lr=0.5)
    x_seq, target = _batch()
    with pytest.raises(TypeError, match=message):
        saf_online_training(net, optimizer, x_seq, target, f_loss)
