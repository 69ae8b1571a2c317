"""One readout from training to deployment through the examples' engine, SAF-F's surrogates, the
per-step loss averaged over T, and the paper's recipe as parser defaults."""

import pytest
import torch
import torch.nn as nn
from spikingjelly.activation_based import functional, layer, surrogate

from saf_examples import engine
from saf_examples.methods import get_method
from saf_examples.recipes import RECIPES, recipe_defaults
from spikingjelly_saf import SAFNode
from spikingjelly_saf.surrogate import SpikeRepresentation
from spikingjelly_saf.training import run_sequence

T = 4


def _csnn(method) -> nn.Sequential:
    kwargs = method.neuron_kwargs(tau=2.0)
    net = nn.Sequential(layer.Conv2d(1, 6, 3, padding=1), SAFNode(**kwargs), layer.AvgPool2d(2),
                        layer.Flatten(), layer.Linear(6 * 4 * 4, 10), SAFNode(**kwargs))
    return method.prepare(net)


@pytest.mark.parametrize("name", ["saf-e", "saf-e-acc", "saf-f"])
def test_engine_trains_evaluates_and_deploys_with_one_readout(name):
    """float32, as trained: the engine's evaluation of the SAF model and of its to_lif twin (read as
    out_seq.mean over T) agree on every sample, and the scores are those of SpikingJelly's reading."""
    torch.manual_seed(0)
    method = get_method(name)
    model = _csnn(method)
    g = torch.Generator().manual_seed(1)
    x, y = torch.rand(96, 1, 8, 8, generator=g) * 2, torch.randint(0, 10, (96,), generator=g)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.02)
    trained = engine.train_one_epoch(model, method, optimizer, engine.tensor_batches(x, y, 32, g),
                                     nn.functional.cross_entropy, steps=T)
    assert trained.samples == 96
    batches = list(engine.tensor_batches(x, y, 48))
    saf = engine.evaluate(model, method, batches, nn.functional.cross_entropy, steps=T,
                          check_health=False, keep_predictions=True)
    deployed = engine.check_deployment(model, method, batches, nn.functional.cross_entropy, steps=T,
                                       saf_predictions=saf.predictions)
    assert deployed.mismatches == 0 and deployed.accuracy == saf.accuracy
    # The same, by hand: SpikingJelly's reading of the LIF twin is the SAF model's default readout.
    lif, reader = engine.deploy_to_lif(model, method)
    x_seq = x.unsqueeze(1).expand(96, T, 1, 8, 8)
    functional.reset_net(lif)
    with torch.no_grad():
        lif_scores = run_sequence(lif.eval(), x_seq).mean(1)
        functional.reset_net(model)
        saf_scores = method.reader(model, x_seq)(run_sequence(model.eval(), x_seq))
        functional.reset_net(lif)
        assert torch.equal(reader.prediction_scores(run_sequence(lif, x_seq)), lif_scores)
    assert torch.equal(saf_scores, lif_scores)  # rounded spike counts: bit for bit on the CPU
    assert torch.equal(saf.predictions, lif_scores.argmax(1))


def test_saf_f_trains_with_the_papers_surrogate_and_saf_f_rep_with_the_representation():
    saf_f, rep = get_method("saf-f"), get_method("saf-f-rep")
    sg = saf_f.neuron_kwargs()["surrogate_function"]
    assert isinstance(sg, surrogate.Sigmoid) and sg.alpha == 4.0
    assert isinstance(rep.neuron_kwargs()["surrogate_function"], SpikeRepresentation)
    assert not saf_f.representation_level and rep.representation_level
    # Both are SAF-F: one loss on Obar[T]; their gradients differ only through the surrogate.
    torch.manual_seed(0)
    x_seq = torch.rand(4, T, 6) * 2
    target = torch.randint(0, 3, (4,))
    grads = {}
    for method in (saf_f, rep):
        torch.manual_seed(1)
        net = method.prepare(nn.Sequential(layer.Linear(6, 8), SAFNode(**method.neuron_kwargs()),
                                           layer.Linear(8, 3)))
        optimizer = torch.optim.SGD(net.parameters(), lr=0.0)
        loss, y_seq = method.train_step(net, optimizer, x_seq, target, nn.functional.cross_entropy)
        # SAF-F's loss is the one on the final weighted average (not divided by T).
        torch.testing.assert_close(loss, nn.functional.cross_entropy(y_seq[:, -1], target))
        grads[method.name] = net[0].weight.grad.clone()
    assert not torch.allclose(grads["saf-f"], grads["saf-f-rep"])


@pytest.mark.parametrize("name", ["saf-e-acc", "ottt-a"])
def test_per_step_loss_is_averaged_over_t_as_in_ottt(name):
    method = get_method(name)
    assert method.loss_every_step
    torch.manual_seed(0)
    if name == "ottt-a":
        net = layer.OTTTSequential(layer.Linear(6, 8), method.neuron_type(**method.neuron_kwargs()),
                                   layer.Linear(8, 3))
    else:
        net = nn.Sequential(layer.Linear(6, 8), SAFNode(**method.neuron_kwargs()), layer.Linear(8, 3))
    method.prepare(net)
    x_seq, target = torch.rand(4, T, 6) * 2, torch.randint(0, 3, (4,))
    loss, y_seq = method.train_step(net, torch.optim.SGD(net.parameters(), lr=0.0), x_seq, target,
                                    nn.functional.cross_entropy)
    functional.reset_net(net)
    # y_seq holds the per-step outputs OTTT reads (for SAF, the weighted averages): recover them.
    if method.uses_saf_readout:
        from spikingjelly_saf import functional as saf_functional

        y_seq = saf_functional.recover_instantaneous_seq(y_seq.transpose(0, 1), 0.5).transpose(0, 1)
    per_step = [nn.functional.cross_entropy(y_seq[:, t], target) for t in range(T)]
    torch.testing.assert_close(loss, sum(per_step) / T)


def test_recipe_defaults_reach_each_parser():
    from saf_examples.cli import build_parser

    expected = {"T": 6, "tau": 2.0, "b": 128, "epochs": 300, "opt": "sgd", "lr": 0.1, "momentum": 0.9,
                "weight_decay": 0.0, "loss_lambda": 0.05, "surrogate": "sigmoid", "seed": 2022,
                "cutout": 16}
    mnist = {"T": 4, "b": 128, "epochs": 64, "opt": "sgd", "lr": 0.1, "momentum": 0.9,
             "v_threshold": 0.5, "channels": 16}
    assert recipe_defaults(("cifar10", "cifar100")) == expected
    assert recipe_defaults(("fashion_mnist", "mnist")) == mnist
    # A flag the data sets disagree on, or that one lacks, keeps the parser's own default.
    assert recipe_defaults(("cifar10", "mnist")) == {"b": 128, "opt": "sgd", "lr": 0.1, "momentum": 0.9}
    assert recipe_defaults(("dvs128_gesture",)) == {} and recipe_defaults(()) == {}
    cifar = build_parser(("cifar10", "cifar100"))
    assert {flag: cifar.get_default(flag) for flag in expected} == expected
    args = cifar.parse_args(["-data-dir", "unused", "-lr", "0.05", "-device", "cpu"])
    assert args.lr == 0.05 and args.T == 6 and args.surrogate == "sigmoid"  # a flag still wins
    fashion = build_parser(("fashion_mnist", "mnist")).parse_args(["-data-dir", "unused", "-device", "cpu"])
    assert {flag: getattr(fashion, flag) for flag in mnist} == mnist
    # Every row names its source: OTTT's code (CIFAR) or SpikingJelly's example, file:line, or
    # the page of this project that shows the measurement.
    for rows in RECIPES.values():
        assert all(":" in row.source and row.note for row in rows)
    assert {row.flag for row in RECIPES["cifar10"] if row.flag} == set(expected)
    assert {row.flag for row in RECIPES["fashion_mnist"] if row.flag} == set(mnist)
