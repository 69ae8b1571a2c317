"""Method objects: capabilities, step modes for backends, DSR and the ideal as table entries."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from spikingjelly.activation_based import functional, layer, neuron

from spikingjelly_saf import SAFNode
from saf_examples.methods import (ALL_METHOD_NAMES, METHOD_NAMES, Method, ReLUNode, get_method,
                                  weighted_average_readout)
from spikingjelly_saf import functional as saf_functional
from spikingjelly_saf.training import run_sequence, step_mode_of

SAF = ("saf-e", "saf-e-acc", "saf-f", "saf-f-rep")


def test_method_names_and_table():
    assert METHOD_NAMES == ("saf-e", "saf-e-acc", "saf-f", "saf-f-rep", "ottt-o", "ottt-a", "bptt", "sltt")
    assert set(ALL_METHOD_NAMES) == set(METHOD_NAMES) | {"dsr", "ideal", "bptt-final", "bptt-every-step"}
    with pytest.raises(ValueError, match="valid methods: .*dsr"):
        get_method("nope")
    assert all(isinstance(get_method(n), Method) for n in ALL_METHOD_NAMES)


def test_capabilities_replace_name_tests():
    for name in ALL_METHOD_NAMES:
        m = get_method(name)
        saf = name in SAF
        assert m.deploys_to_lif is saf and m.supports_fused_backends is saf
        assert m.uses_saf_readout is saf and m.needs_input_average is saf
        assert m.needs_ottt_sequential is (name in ("ottt-o", "ottt-a"))
        assert m.supports_amp is (name not in ("ottt-o", "ottt-a", "sltt"))
        assert m.representation_level is (name == "saf-f-rep")
        assert m.loss_every_step is (name in ("saf-e", "saf-e-acc", "ottt-o", "ottt-a", "sltt",
                                              "bptt-every-step"))
        assert m.needs_steps is (name == "dsr")
        assert m.updates_every_step is (name in ("saf-e", "ottt-o"))
    assert get_method("dsr").neuron_type is neuron.DSRIFNode
    assert get_method("ideal").neuron_type is ReLUNode


def test_step_mode_for_backends():
    for name in SAF:
        m = get_method(name)
        assert m.step_mode_for("torch") == m.step_mode
        assert m.step_mode_for("triton") == "m" and m.step_mode_for("cupy") == "m"
    with pytest.raises(ValueError, match="Methods that can: saf-e, saf-e-acc, saf-f"):
        get_method("ottt-o").step_mode_for("cupy")
    assert get_method("bptt").step_mode_for("torch") == "m"
    kwargs = get_method("saf-e").neuron_kwargs(backend="triton")
    assert kwargs["backend"] == "triton" and kwargs["step_mode"] == "m"
    with pytest.raises(ValueError, match="cannot use it"):
        get_method("sltt").neuron_kwargs(backend="triton")


def test_prepare_follows_the_neurons_backend():
    class FusedNode(SAFNode):  # reports a fused backend without needing its kernels here
        backend = property(lambda self: "triton", lambda self, value: None)

    net = nn.Sequential(layer.Linear(3, 4), SAFNode(), layer.Linear(4, 2))
    get_method("saf-e").prepare(net)
    assert step_mode_of(net) == "s"
    net[1] = FusedNode()
    get_method("saf-f").prepare(net)
    assert step_mode_of(net) == "m"
    with pytest.raises(ValueError, match="cannot use it"):
        get_method("bptt").prepare(net)


def test_tau_checks():
    get_method("saf-e").check_neuron_arguments(1.0)
    with pytest.raises(ValueError, match="saf-e: tau must be >= 1"):
        get_method("saf-e").check_neuron_arguments(0.5)
    with pytest.raises(ValueError, match="LIFNode, which needs tau > 1"):
        get_method("bptt").check_neuron_arguments(1.0)
    get_method("dsr").check_neuron_arguments(0.1)  # DSR has no tau


def _mlp(method, steps=3):
    m = get_method(method)
    kw = m.neuron_kwargs(tau=2.0, steps=steps)
    net = nn.Sequential(layer.Linear(6, 8), m.neuron_type(**kw), layer.Linear(8, 3))
    return m.prepare(net), m


def test_dsr_builds_once_and_trains_like_bptt():
    with pytest.raises(ValueError, match="needs the number of time steps"):
        get_method("dsr").neuron_kwargs()
    torch.manual_seed(0)
    net, m = _mlp("dsr", steps=4)
    assert isinstance(net[1], neuron.DSRIFNode) and net[1].T == 4
    x = torch.rand(5, 4, 6) * 8
    target = torch.randint(0, 3, (5,))
    before = net[0].weight.detach().clone()
    loss, y_seq = m.train_step(net, torch.optim.SGD(net.parameters(), lr=1.0), x, target,
                               nn.functional.cross_entropy)
    assert y_seq.shape == (5, 4, 3)
    torch.testing.assert_close(m.prediction_scores(y_seq), y_seq.mean(1))
    assert (net[0].weight - before).abs().max() > 0


@pytest.mark.parametrize("name", ALL_METHOD_NAMES)
def test_every_method_trains_one_minibatch(name):
    if name in ("ottt-o", "ottt-a"):
        m = get_method(name)
        net = layer.OTTTSequential(layer.Linear(6, 8), m.neuron_type(**m.neuron_kwargs()),
                                   layer.Linear(8, 3))
        m.prepare(net)
    else:
        net, m = _mlp(name)
    torch.manual_seed(1)
    x, target = torch.rand(4, 3, 6) * 3, torch.randint(0, 3, (4,))
    functional.reset_net(net)
    loss, y_seq = m.train_step(net, torch.optim.SGD(net.parameters(), lr=0.1), x, target,
                               nn.functional.cross_entropy)
    assert torch.isfinite(loss) and y_seq.shape == (4, 3, 3)
    if m.uses_saf_readout:
        decay = net[1].decay
        with pytest.raises(ValueError, match="needs the output's decay"):
            m.prediction_scores(y_seq)
        scores = m.prediction_scores(y_seq, decay)
        # The firing rate of the recovered output o[t] (here a linear layer's: no rounding).
        expected = saf_functional.recover_instantaneous_seq(y_seq.transpose(0, 1), decay).mean(0)
        torch.testing.assert_close(m.reader(net, x)(y_seq), scores)
    else:
        scores, expected = m.prediction_scores(y_seq), y_seq.mean(1)
    torch.testing.assert_close(scores, expected)


def test_bptt_diagnostics_backpropagate_the_online_methods_objectives():
    """bptt-final's gradient is that of SAF-F's loss on Obar[T] of the LIF outputs; bptt-every-step's
    that of OTTT's loss on every step averaged over T; both differ from BPTT's loss on the rate."""
    x = torch.rand(4, 5, 6, dtype=torch.float64) * 3
    target = torch.randint(0, 3, (4,))
    f_loss = nn.functional.cross_entropy

    def gradient(name, objective=None):
        torch.manual_seed(0)
        net, m = _mlp(name, steps=5)
        net.double()
        functional.reset_net(net)
        if objective is None:
            loss, _ = m.train_step(net, torch.optim.SGD(net.parameters(), lr=0.0), x, target, f_loss)
        else:
            loss = objective(run_sequence(net, x, "m"))
            loss.backward()
        return loss.detach(), net[0].weight.grad.clone()

    decay = 0.5  # tau=2
    by_hand = {
        "bptt-final": lambda y: f_loss(saf_functional.weighted_average(y, decay, dim=1), target),
        "bptt-every-step": lambda y: sum(f_loss(y[:, t], target) for t in range(5)) / 5,
        "bptt": lambda y: f_loss(y.mean(1), target)}
    results = {}
    for name, objective in by_hand.items():
        loss, grad = gradient(name)
        expected_loss, expected_grad = gradient("bptt", objective)
        torch.testing.assert_close(loss, expected_loss, rtol=1e-12, atol=0)
        torch.testing.assert_close(grad, expected_grad, rtol=1e-12, atol=1e-15)
        results[name] = grad
    assert (results["bptt-final"] - results["bptt"]).abs().max() > 1e-6
    assert (results["bptt-every-step"] - results["bptt"]).abs().max() > 1e-6
    # The prediction stays the firing rate.
    y = torch.rand(2, 5, 3)
    torch.testing.assert_close(get_method("bptt-final").prediction_scores(y), y.mean(1))


def test_amp_refused_where_unsupported():
    m = get_method("sltt")
    with pytest.raises(ValueError, match="mixed precision is not supported with method 'sltt'"):
        m.train_step(None, None, None, None, None, grad_scaler=object())


@pytest.mark.parametrize("mode", ["s", "m"])
def test_one_sequence_runner(mode):
    torch.manual_seed(0)
    net = nn.Sequential(layer.Linear(6, 8), SAFNode(), layer.Linear(8, 3)).double()
    functional.set_step_mode(net, mode)
    x = torch.rand(2, 5, 6, dtype=torch.float64) * 3
    y = run_sequence(net, x)
    functional.reset_net(net)
    by_hand = torch.stack([net[2](net[1].single_step_forward(net[0](x[:, t]))) if mode == "s"
                           else net(x[:, t:t + 1].transpose(0, 1))[0] for t in range(5)], 1)
    torch.testing.assert_close(y, by_hand)
    functional.reset_net(net)
    torch.testing.assert_close(run_sequence(net, x), y)
    functional.reset_net(net)
    torch.testing.assert_close(run_sequence(net, x, last_only=True), y[:, -1])
    relu = nn.Sequential(layer.Linear(6, 3), ReLUNode())
    functional.set_step_mode(relu, "m")
    assert step_mode_of(relu) == "m"
    net.append(SAFNode(step_mode="s" if mode == "m" else "m"))
    with pytest.raises(ValueError, match="mixes step modes"):
        step_mode_of(net)


@pytest.mark.parametrize("mode", ["s", "m"])
def test_deployed_readout_predicts_what_saf_predicted(mode):
    import copy

    from spikingjelly_saf import saf_inference, to_lif
    from spikingjelly_saf.training import readout_decay

    torch.manual_seed(3)
    net = nn.Sequential(layer.Linear(6, 12), SAFNode(tau=3.0), layer.Linear(12, 4)).double()
    functional.set_step_mode(net, mode)
    x = (torch.rand(5, 1, 6, dtype=torch.float64) * 3).expand(5, 7, 6)
    scores = saf_inference(net, x)
    lif = to_lif(copy.deepcopy(net))
    functional.reset_net(lif)
    with torch.no_grad():
        y_seq = run_sequence(lif, x)
    deployed = get_method("saf-f").deployed_readout()(y_seq)
    torch.testing.assert_close(deployed, y_seq.mean(1))  # out_seq.mean over T, as SpikingJelly reads
    torch.testing.assert_close(deployed, scores, rtol=1e-12, atol=1e-12)
    # Obar[T] (by name) is another readout: the weighted average, not the mean.
    weighted = saf_inference(net, x, readout="weighted")
    assert not torch.allclose(deployed, weighted)
    torch.testing.assert_close(weighted_average_readout(readout_decay(net))(y_seq), weighted,
                               rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="not deployed through to_lif"):
        get_method("bptt").deployed_readout()


@pytest.mark.parametrize("name", ["bptt", "ottt-o", "saf-e", "dsr"])
def test_zero_steps_and_swapped_input_for_every_kind(name):
    m = get_method(name)
    with pytest.raises(ValueError, match="x_seq has T=0 time steps"):
        m.train_step(None, None, torch.rand(3, 0, 6), torch.zeros(3, dtype=torch.long), None)
    with pytest.raises(ValueError, match=r"x_seq looks like \[T, B, \*\]"):
        m.train_step(None, None, torch.rand(4, 3, 6), torch.zeros(3, dtype=torch.long), None)


@pytest.mark.parametrize("fault", ["loss", "gradient"])
def test_whole_sequence_methods_stop_before_a_non_finite_update(fault):
    """BPTT (and DSR, the ideal, the diagnostics) stop like SAF's training function: a NaN loss or a
    NaN gradient behind a finite loss raises NonFiniteTrainingError and the weights stay as they were."""
    from spikingjelly_saf import NonFiniteTrainingError

    torch.manual_seed(0)
    net, m = _mlp("bptt")
    x = torch.rand(5, 3, 6) * 4
    target = torch.randint(0, 3, (5,))
    before = {name: p.detach().clone() for name, p in net.named_parameters()}
    if fault == "gradient":
        net[2].weight.register_hook(lambda grad: grad * float("nan"))
        f_loss = F.cross_entropy
    else:
        def f_loss(output, label):
            return F.cross_entropy(output, label) * float("nan")
    with pytest.raises(NonFiniteTrainingError) as caught:
        m.train_step(net, torch.optim.SGD(net.parameters(), lr=1.0), x, target, f_loss)
    assert caught.value.what == fault
    if fault == "gradient":
        assert caught.value.parameter == "2.weight"
    assert all(torch.equal(p, before[name]) for name, p in net.named_parameters())
