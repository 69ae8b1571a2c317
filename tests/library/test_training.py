"""``saf_online_training``: each method produces the gradients and updates the theorems say."""

import pytest
import torch
import torch.nn as nn
from spikingjelly.activation_based import functional, layer
from spikingjelly.activation_based.learning import online_learning

from spikingjelly_saf import METHODS, OutputRecovery, SAFNode, saf_online_training

from nets import lif_factory, randomise, saf_factory


class RecordingOptimizer(torch.optim.SGD):
    """SGD that records the gradients it is stepped with."""

    def __init__(self, params, lr=0.0):
        super().__init__(params, lr=lr)
        self.recorded = []

    def step(self, closure=None):
        self.recorded.append([p.grad.clone() for g in self.param_groups for p in g["params"]])
        return super().step(closure)


def mlp(make, bias=True):
    return nn.Sequential(layer.Linear(10, 16, bias=bias), make(), layer.Linear(16, 12, bias=bias),
                         make(), layer.Linear(12, 3, bias=bias))


def _loss(output, target):
    return nn.functional.cross_entropy(output, target)


def _data(T=6, B=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = (torch.rand(B, 1, 10, dtype=torch.float64, generator=g) * 2).expand(B, T, 10)
    return x, torch.randint(0, 3, (B,), generator=g)


def _saf_net(seed=4, bias=True):
    net = mlp(saf_factory(2.0, False), bias).double()
    randomise(net, seed=seed, weight_gain=2.0)
    return net


@pytest.mark.parametrize("step_mode", ["s", "m"])
def test_saf_e_acc_is_sum_of_saf_e_step_gradients(step_mode):
    x, target = _data()
    net = _saf_net()
    functional.set_step_mode(net, step_mode)
    opt = RecordingOptimizer(net.parameters())  # lr = 0: the state never changes
    loss_e, _ = saf_online_training(net, opt, x, target, _loss, method="saf-e")
    per_step = opt.recorded
    assert len(per_step) == x.shape[1]
    functional.reset_net(net)
    opt_acc = RecordingOptimizer(net.parameters())
    loss_acc, _ = saf_online_training(net, opt_acc, x, target, _loss, method="saf-e-acc")
    assert len(opt_acc.recorded) == 1
    torch.testing.assert_close(loss_acc, loss_e, rtol=1e-12, atol=1e-12)
    for i, g_acc in enumerate(opt_acc.recorded[0]):
        torch.testing.assert_close(g_acc, sum(step[i] for step in per_step), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("step_mode", ["s", "m"])
def test_saf_e_acc_update_equals_ottt_a_update(step_mode):
    """No biases, first layer frozen: every trained weight is spike-fed, so Theorem 2 is an equality."""
    x, target = _data(T=8)
    ottt = layer.OTTTSequential(*mlp(lif_factory(2.0, False, online=True), bias=False)).double()
    randomise(ottt, seed=4, weight_gain=2.0)
    saf = mlp(saf_factory(2.0, False), bias=False).double()
    saf.load_state_dict(ottt.state_dict())
    functional.set_step_mode(saf, step_mode)
    for net in (ottt, saf):
        net[0].weight.requires_grad_(False)
    before = saf[2].weight.detach().clone()
    trainable = lambda n: [p for p in n.parameters() if p.requires_grad]  # noqa: E731
    loss_ottt, _ = online_learning.ottt_online_training(
        ottt, torch.optim.SGD(trainable(ottt), lr=0.5), x, target.unsqueeze(1).expand(-1, 8),
        _loss, online=False)
    loss_saf, _ = saf_online_training(saf, torch.optim.SGD(trainable(saf), lr=0.5), x, target,
                                      _loss, method="saf-e-acc")
    torch.testing.assert_close(loss_saf, loss_ottt, rtol=1e-10, atol=1e-10)
    for p_ottt, p_saf in zip(ottt.parameters(), saf.parameters()):
        torch.testing.assert_close(p_saf, p_ottt, rtol=1e-10, atol=1e-12)
    assert (saf[2].weight - before).abs().max() > 1e-3, "weights did not move: vacuous"


def test_saf_e_online_steps_at_every_step_with_fresh_gradients():
    """SAF-E zeroes, backpropagates and steps at every t; the first update is OTTT_O's."""
    x, target = _data(T=5)
    net = _saf_net(bias=False)
    opt = RecordingOptimizer(net.parameters(), lr=0.1)
    saf_online_training(net, opt, x, target, _loss, method="saf-e")
    assert len(opt.recorded) == 5
    # Replay by hand with the same schedule: same gradients at every step.
    replay = _saf_net(bias=False)
    replay_opt = torch.optim.SGD(replay.parameters(), lr=0.1)
    recovery = OutputRecovery(replay[1].decay)
    for t in range(5):
        replay_opt.zero_grad()
        _loss(recovery(replay(x[:, t])), target).backward()
        for p, g in zip(replay.parameters(), opt.recorded[t]):
            torch.testing.assert_close(p.grad, g, rtol=1e-12, atol=1e-14)
        replay_opt.step()

    ottt = layer.OTTTSequential(*mlp(lif_factory(2.0, False, online=True), bias=False)).double()
    ottt.load_state_dict(_saf_net(bias=False).state_dict())
    ottt_opt = RecordingOptimizer(ottt.parameters(), lr=0.1)
    online_learning.ottt_online_training(ottt, ottt_opt, x[:, :1], target.unsqueeze(1), _loss,
                                         online=True)
    # c[1] = 1, so at the first step even the first layer's gradient agrees.
    for g_saf, g_ottt in zip(opt.recorded[0], ottt_opt.recorded[0]):
        torch.testing.assert_close(g_saf, g_ottt, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("step_mode", ["s", "m"])
def test_saf_f_gradient_is_final_step_only(step_mode):
    """SAF-F: one loss on Obar[T]; steps before T leave no graph; 's' and 'm' agree."""
    x, target = _data(T=6)
    grads = {}
    for mode in ("s", "m"):
        net = _saf_net()
        functional.set_step_mode(net, mode)
        opt = RecordingOptimizer(net.parameters())
        loss, y = saf_online_training(net, opt, x, target, _loss, method="saf-f")
        torch.testing.assert_close(loss, _loss(y[:, -1], target))
        grads[mode] = opt.recorded[0]
    # Reference: run T-1 steps without a graph, then differentiate the last step by hand.
    net = _saf_net()
    with torch.no_grad():
        for t in range(5):
            net(x[:, t])
    _loss(net(x[:, 5]), target).backward()
    for p, g_s, g_m in zip(net.parameters(), grads["s"], grads["m"]):
        torch.testing.assert_close(g_s, p.grad, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(g_m, p.grad, rtol=1e-12, atol=1e-14)


def test_target_sequence_and_errors():
    x, target = _data(T=4)
    net = _saf_net()
    opt = torch.optim.SGD(net.parameters(), lr=0.0)
    seq_target = target.unsqueeze(1).expand(-1, 4)
    loss_seq, _ = saf_online_training(net, opt, x, seq_target, _loss, "saf-e-acc",
                                      target_is_sequence=True)
    functional.reset_net(net)
    loss_static, _ = saf_online_training(net, opt, x, target, _loss, "saf-e-acc")
    torch.testing.assert_close(loss_seq, loss_static)
    with pytest.raises(ValueError, match="valid methods: saf-e, saf-e-acc, saf-f"):
        saf_online_training(net, opt, x, target, _loss, method="ottt")
    with pytest.raises(ValueError, match=r"x_seq must be a tensor of shape \[B, T, \*\]"):
        saf_online_training(net, opt, x[:, 0, 0], target, _loss)
    with pytest.raises(ValueError, match="contains no SAFNode"):
        saf_online_training(nn.Linear(10, 3), opt, x, target, _loss)
    with pytest.raises(ValueError, match="target_is_sequence"):
        saf_online_training(net, opt, x, target, _loss, target_is_sequence=True)
    assert METHODS == ("saf-e", "saf-e-acc", "saf-f")


@pytest.mark.slow
@pytest.mark.parametrize("method, step_mode", [("saf-e-acc", "s"), ("saf-e-acc", "m"), ("saf-f", "s")])
def test_distributed_data_parallel_matches_full_batch(tmp_path, method, step_mode):
    """Two gloo processes, each with half the batch, update like one process with the whole batch."""
    import os
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, MASTER_PORT=str(port), OMP_NUM_THREADS="1")
    worker = os.path.join(os.path.dirname(__file__), "ddp_worker.py")
    out = tmp_path / "ddp.pt"
    procs = [subprocess.Popen([sys.executable, worker, str(r), "2", method, step_mode, str(out)],
                              env=env) for r in range(2)]
    assert all(p.wait(timeout=120) == 0 for p in procs)
    ddp_state = torch.load(out, weights_only=True)

    torch.manual_seed(0)
    net = nn.Sequential(layer.Linear(10, 16), SAFNode(), layer.Linear(16, 3)).double()
    functional.set_step_mode(net, step_mode)
    g = torch.Generator().manual_seed(1)
    x = torch.rand(8, 5, 10, dtype=torch.float64, generator=g)
    target = torch.randint(0, 3, (8,), generator=g)
    initial = net[0].weight.detach().clone()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    # DDP averages the shards' gradients: the same as the mean loss over the whole batch.
    saf_online_training(net, opt, x, target, nn.functional.cross_entropy, method)
    for name, value in net.state_dict().items():
        torch.testing.assert_close(ddp_state[name], value, rtol=1e-10, atol=1e-12)
    assert (net[0].weight - initial).abs().max() > 1e-4


OPTIONAL = ("sklearn", "tensorboard", "matplotlib", "tqdm", "torchvision")


@pytest.mark.slow
def test_core_import_needs_none_of_the_example_dependencies():
    """``import spikingjelly_saf`` works with the examples' packages unavailable and loads none."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        f"blocked = {OPTIONAL!r} + ('torch.utils.tensorboard',)\n"
        "for name in blocked: sys.modules[name] = None\n"
        "import spikingjelly_saf, spikingjelly_saf.health\n"
        "loaded = [m for m in sys.modules if m.split('.')[0] in blocked and sys.modules[m] is not None]\n"
        "assert not loaded, loaded\n"
        "print('ok')\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]


def test_install_requirements_core_and_extras():
    import configparser
    import os

    from packaging.requirements import Requirement

    cfg = configparser.ConfigParser()
    cfg.read(os.path.join(os.path.dirname(__file__), "..", "..", "setup.cfg"))
    lines = lambda text: [Requirement(s) for s in text.strip().splitlines() if s.strip()]  # noqa: E731
    core = {r.name: r for r in lines(cfg["options"]["install_requires"])}
    assert set(core) == {"spikingjelly", "torch"}
    assert core["torch"].specifier.contains("2.14.1")
    extras = cfg["options.extras_require"]
    examples = {r.name for r in lines(extras["examples"])}
    assert examples >= {"scikit-learn", "tensorboard", "matplotlib", "tqdm", "torchvision"}
    assert examples <= {r.name for r in lines(extras["dev"])}
