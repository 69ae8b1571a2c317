"""Every -model the trainer offers builds, trains a step and converts to the LIF network it deploys
as; SpikingJelly's ResNets, SEW-ResNets and VGGs are built so that the conversion is exact (soft
reset, average pools, SEW's ADD), which the exactness check confirms."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import fabricate
from saf_examples.cli import build_parser
from saf_examples.methods import get_method
from saf_examples.models import MODEL_NAMES, ModelChoiceError, _IMAGENET_ZOO, build_model
from saf_examples.run import main
from spikingjelly_saf import check_exactness, to_lif
from spikingjelly_saf.neuron import SAFNode


#: The networks at the zoo's full ImageNet widths (above ~30 M parameters, and the OTTT VGGs with
#: their 4096-wide classifiers) take several seconds each to build and step on a CPU: the full
#: suite (and .ci/run) runs them, the fast subset (-m "not slow") only these.
_LIGHT = {"spiking_resnet18", "sew_resnet18", "ottt_spiking_vggws", "DVSGestureNet",
          "CIFAR10DVSNet", "CIFAR10Net"}
#: Inputs of the parametric-LIF nets (channels, side, classes); everything else takes CIFAR images.
_INPUTS = {"DVSGestureNet": (2, 128, 11), "CIFAR10DVSNet": (2, 128, 10)}


def _case(name):
    return pytest.param(name, marks=() if name in _LIGHT else pytest.mark.slow)


def test_every_zoo_family_is_offered():
    for name in ("spiking_resnet18", "spiking_resnet152", "spiking_wide_resnet101_2",
                 "sew_resnet18", "sew_resnext101_32x8d", "spiking_vgg11", "spiking_vgg19_bn",
                 "ottt_spiking_vggws", "CIFAR10Net"):
        assert name in MODEL_NAMES
    assert len(_IMAGENET_ZOO) == 26


@pytest.mark.parametrize("name", [_case(name) for name in MODEL_NAMES])
def test_every_offered_model_builds_trains_a_step_and_converts(name):
    channels, side, classes = _INPUTS.get(name, (3, 32, 10))
    args = build_parser(("cifar10",)).parse_args(
        ["-data-dir", "unused", "-device", "cpu", "-T", "1", "-model", name,
         *(["-channels", "4"] if name in ("DVSGestureNet", "CIFAR10DVSNet", "CIFAR10Net",
                                          "ottt_spiking_vggws") else [])])
    method = get_method("saf-e")
    torch.manual_seed(0)
    model = build_model(args, method, classes, channels, False, side)
    assert any(isinstance(m, SAFNode) for m in model.modules())
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    loss, _ = method.train_step(model, optimizer, torch.rand(2, 1, channels, side, side) * 3,
                                torch.tensor([1, 2]), nn.functional.cross_entropy)
    assert torch.isfinite(torch.as_tensor(loss))
    assert any(not torch.equal(a, p) for a, p in zip(before, model.parameters())), "nothing trained"
    lif = to_lif(model.eval(), memoryless="keep")
    assert not any(isinstance(m, SAFNode) for m in lif.modules())
    if name in _IMAGENET_ZOO:
        assert not any(isinstance(m, (nn.MaxPool2d, nn.AdaptiveMaxPool2d)) for m in model.modules())
        assert len(check_exactness(model)) == 0, str(check_exactness(model))


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
def test_a_zoo_resnet_trains_through_the_trainer_with_the_exactness_report(tmp_path, capsys):
    data = fabricate.make_cifar10(tmp_path / "data", per_batch=2, test_count=2)
    argv = ["-data-dir", str(data), "-out-dir", str(tmp_path / "out"), "-device", "cpu", "-T", "1",
            "-b", "2", "-j", "0", "-epochs", "1", "-no-progress", "-model", "sew_resnet18",
            "-method", "saf-f", "-max-train-batches", "1", "-deploy-lif"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "exactness (the SAF network against the LIF network -deploy-lif builds, eval mode): " \
           "SAF exactness report for" in out and ": exact" in out


@pytest.mark.parametrize("flags, message", [
    (["-model", "spiking_vgg11"], "needs images of at least 32x32; this data set's are 28x28"),
    (["-model", "spiking_resnet18", "-channels", "8"], "has the zoo's widths; drop -channels"),
])
def test_zoo_models_refuse_what_they_cannot_take(tmp_path, flags, message):
    args = build_parser(("fashion_mnist",)).parse_args(["-data-dir", "d", "-device", "cpu", *flags])
    with pytest.raises(ModelChoiceError, match=message.replace("(", r"\(")):
        build_model(args, get_method("saf-e"), 10, 1, False, 28)


def test_a_one_channel_resnet_takes_fashion_mnist_images():
    args = build_parser(("fashion_mnist",)).parse_args(
        ["-data-dir", "d", "-device", "cpu", "-T", "1", "-model", "spiking_resnet18"])
    model = build_model(args, get_method("saf-f"), 10, 1, False, 28)
    first = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    assert first.in_channels == 1 and first.kernel_size == (7, 7) and first.stride == (2, 2)
