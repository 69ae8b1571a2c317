r"""
Building the network a run trains: a SpikingJelly zoo model with the method's neuron in it.

Every model goes through :func:`build_model`, so a later fix to a zoo factory is made in one place.
"""

from __future__ import annotations

import argparse
from copy import deepcopy

import torch.nn as nn
from spikingjelly.activation_based import layer, surrogate
from spikingjelly.activation_based.model import parametric_lif_net, spiking_vggws_ottt

from .. import zoo
from ..layer import InputAverage
from ..methods import Method
from ..neuron import SAFNode
from ..surrogate import SpikeRepresentation

__all__ = ["SURROGATES", "MODEL_NAMES", "make_surrogate", "build_model", "VGGWS", "VGGWS_CONFIG",
           "ModelChoiceError"]

SURROGATES = {
    "sigmoid": surrogate.Sigmoid,
    "atan": surrogate.ATan,
    "piecewise_quadratic": surrogate.PiecewiseQuadratic,
    "piecewise_exp": surrogate.PiecewiseExp,
    "soft_sign": surrogate.SoftSign,
    "super_spike": surrogate.SuperSpike,
    "erf": surrogate.Erf,
    "rep": SpikeRepresentation,
}

_OTTT_VGG_FACTORIES = {
    name: getattr(spiking_vggws_ottt, name)
    for name in ("ottt_spiking_vggws", "ottt_spiking_vgg11", "ottt_spiking_vgg11_ws",
                 "ottt_spiking_vgg13", "ottt_spiking_vgg13_ws", "ottt_spiking_vgg16",
                 "ottt_spiking_vgg16_ws", "ottt_spiking_vgg19", "ottt_spiking_vgg19_ws")
}
_PARAMETRIC_LIF_NETS = {  # factory, input channels, input size, classes
    "DVSGestureNet": (parametric_lif_net.DVSGestureNet, 2, 128, 11),
    "CIFAR10DVSNet": (parametric_lif_net.CIFAR10DVSNet, 2, 128, 10),
    "CIFAR10Net": (parametric_lif_net.CIFAR10Net, 3, 32, 10),
}
MODEL_NAMES = tuple(_OTTT_VGG_FACTORIES) + tuple(_PARAMETRIC_LIF_NETS)

#: The layout of ``ottt_spiking_vggws`` (SpikingJelly's config "S"): convolution widths, "A" = AvgPool.
VGGWS_CONFIG = (64, 128, "A", 256, 256, "A", 512, 512, "A", 512, 512)


class ModelChoiceError(ValueError):
    """A model / method / dataset combination that cannot train."""


def make_surrogate(name: str, alpha=None, method: Method = None):
    """The surrogate object for ``-surrogate name`` (``alpha=None``: 4 for sigmoid, else the default)."""
    if name not in SURROGATES:
        raise ModelChoiceError(f"-surrogate {name!r} is unknown; choose one of {', '.join(SURROGATES)}.")
    if name == "rep":
        if method is not None and method.neuron_type is not SAFNode:
            raise ModelChoiceError(
                f"-surrogate rep (SpikeRepresentation) acts on the weighted firing rate of a SAFNode; "
                f"method {method.name} uses {method.neuron_type.__name__}. Use a SAF method or a "
                "spike-level surrogate such as sigmoid.")
        return SpikeRepresentation()
    if alpha is None:
        alpha = 4.0 if name == "sigmoid" else None
    return SURROGATES[name]() if alpha is None else SURROGATES[name](alpha=float(alpha))


class VGGWS(nn.Module):
    """``ottt_spiking_vggws`` with a chosen input-channel count and widths.

    The zoo class fixes 3 input channels and 512 classifier inputs; DVS frames have 2 channels and
    narrower networks need other widths. Layers, weight standardisation, ``Scale(2.74)``,
    ``OTTTSequential`` containers and initialisation are the zoo's.
    """

    def __init__(self, widths, in_channels: int, num_classes: int, spiking_neuron, **neuron_kwargs):
        super().__init__()
        layers, channels = [], in_channels
        for width in widths:
            if width == "A":
                layers.append(layer.AvgPool2d(kernel_size=2, stride=2))
                continue
            layers += [layer.WSConv2d(channels, width, kernel_size=3, padding=1),
                       spiking_neuron(**deepcopy(neuron_kwargs)), spiking_vggws_ottt.Scale(2.74)]
            channels = width
        self.features = layer.OTTTSequential(*layers)
        self.classifier = layer.OTTTSequential(layer.AdaptiveAvgPool2d((1, 1)), layer.Flatten(1),
                                               layer.Linear(channels, num_classes))
        for module in self.modules():
            if isinstance(module, layer.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                nn.init.constant_(module.bias, 0)
            elif isinstance(module, layer.Linear):
                nn.init.normal_(module.weight, 0, 0.01)
                nn.init.constant_(module.bias, 0)

    def forward(self, x):
        return self.classifier(self.features(x))


def _scaled_vggws_widths(first_width: int):
    return tuple(w if w == "A" else max(1, round(w * first_width / VGGWS_CONFIG[0]))
                 for w in VGGWS_CONFIG)


def _neuron_kwargs(args: argparse.Namespace, method: Method) -> dict:
    kwargs = method.neuron_kwargs(tau=args.tau, v_threshold=args.v_threshold,
                                  surrogate_function=make_surrogate(args.surrogate, args.alpha, method))
    if method.neuron_type is SAFNode:
        kwargs["backend"] = args.backend
    elif args.backend != "torch":
        raise ModelChoiceError(
            f"-backend {args.backend} selects a SAFNode backend; method {method.name} uses "
            f"SpikingJelly's {method.neuron_type.__name__}, which picks its kernel itself. Drop -backend.")
    return kwargs


def _contains_ottt_sequential(model: nn.Module) -> bool:
    return any(isinstance(m, layer.OTTTSequential) for m in model.modules())


def build_model(args: argparse.Namespace, method: Method, num_classes: int, in_channels: int,
                sequence_input: bool) -> nn.Module:
    """The network for ``args.model`` with ``method``'s neuron, in ``method``'s step mode.

    ``sequence_input``: the samples are frame sequences (DVS), so SAF methods put an
    :class:`~spikingjelly_saf.layer.InputAverage` in front of the first layer.
    """
    name = args.model
    kwargs = _neuron_kwargs(args, method)
    if name in _OTTT_VGG_FACTORIES:
        if name == "ottt_spiking_vggws" and (in_channels != 3 or args.channels is not None):
            widths = VGGWS_CONFIG if args.channels is None else _scaled_vggws_widths(args.channels)
            model = VGGWS(widths, in_channels, num_classes, method.neuron_type, **kwargs)
        elif in_channels != 3 or args.channels is not None:
            raise ModelChoiceError(
                f"-model {name} takes 3-channel images at the zoo's widths; for "
                f"{in_channels}-channel input or -channels use -model ottt_spiking_vggws.")
        elif name == "ottt_spiking_vggws":
            # The project's adapter builds the zoo network without the 2.0.0 factory's defects.
            model = zoo.ottt_spiking_vggws(spiking_neuron=method.neuron_type,
                                           num_classes=num_classes, **kwargs)
        else:
            model = _OTTT_VGG_FACTORIES[name](spiking_neuron=method.neuron_type,
                                              num_classes=num_classes, **kwargs)
    elif name in _PARAMETRIC_LIF_NETS:
        factory, expected_channels, size, outputs = _PARAMETRIC_LIF_NETS[name]
        if in_channels != expected_channels or num_classes != outputs:
            raise ModelChoiceError(
                f"-model {name} takes {expected_channels}-channel {size}x{size} input and has "
                f"{outputs} classes; this dataset has {in_channels} channels and {num_classes} "
                "classes. Use -model ottt_spiking_vggws.")
        extra = {} if args.channels is None else {"channels": args.channels}
        model = factory(spiking_neuron=method.neuron_type, **extra, **kwargs)
    else:
        raise ModelChoiceError(f"-model {name!r} is unknown; choose one of {', '.join(MODEL_NAMES)}.")

    if method.name.startswith("ottt-") and not _contains_ottt_sequential(model):
        raise ModelChoiceError(
            f"method {method.name} needs a model built from OTTTSequential containers (OTTTLIFNode "
            f"returns [spike, trace] while training); {name} is not. Use -model ottt_spiking_vggws.")
    if sequence_input and method.neuron_type is SAFNode:
        model = nn.Sequential(InputAverage(tau=args.tau), model)
    return method.prepare(model)
