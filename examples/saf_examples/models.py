r"""
Building the network a run trains: a SpikingJelly zoo model with the method's neuron in it.

Every model goes through :func:`build_model`, so a later fix to a zoo factory is made in one place.
"""

from __future__ import annotations

import argparse

import torch.nn as nn
from spikingjelly.activation_based import layer, surrogate
from spikingjelly.activation_based.model import parametric_lif_net, spiking_vggws_ottt

from spikingjelly_saf import zoo
from spikingjelly_saf.layer import InputAverage
from .methods import Method
from spikingjelly_saf.neuron import SAFNode
from spikingjelly_saf.surrogate import SpikeRepresentation

__all__ = ["SURROGATES", "MODEL_NAMES", "make_surrogate", "build_model", "ModelChoiceError"]

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


def _neuron_kwargs(args: argparse.Namespace, method: Method, steps: int) -> dict:
    if method.representation_level:
        # saf-f-rep is SAF-F with SpikeRepresentation by definition; -surrogate picks the
        # spike-level surrogate (and -alpha its sharpness) of every other method; the default,
        # sigmoid, is left unused here.
        if args.surrogate not in ("sigmoid", "rep"):
            raise ModelChoiceError(
                f"method {method.name} trains with SpikeRepresentation (the representation-level "
                f"surrogate); -surrogate {args.surrogate} applies to spike-level methods. Use "
                "-method saf-f for SAF-F with a spike-level surrogate.")
        surrogate_function = SpikeRepresentation()
    else:
        surrogate_function = make_surrogate(args.surrogate, args.alpha, method)
    try:
        method.check_neuron_arguments(args.tau)
        # With a fused backend the neurons are built in the multi-step mode the backend runs in.
        return method.neuron_kwargs(tau=args.tau, v_threshold=args.v_threshold,
                                    surrogate_function=surrogate_function, steps=steps,
                                    backend=args.backend)
    except ValueError as error:
        raise ModelChoiceError(str(error)) from None


def _contains_ottt_sequential(model: nn.Module) -> bool:
    return any(isinstance(m, layer.OTTTSequential) for m in model.modules())


def build_model(args: argparse.Namespace, method: Method, num_classes: int, in_channels: int,
                sequence_input: bool) -> nn.Module:
    """The network for ``args.model`` with ``method``'s neuron, in the step mode ``method`` runs in
    with ``args.backend`` (multi-step for a fused backend).

    ``sequence_input``: the samples are frame sequences (DVS), so SAF methods put an
    :class:`~spikingjelly_saf.layer.InputAverage` in front of the first layer.
    """
    name = args.model
    kwargs = _neuron_kwargs(args, method, args.T)
    if name == "ottt_spiking_vggws":
        # The one VGG-WS builder: the zoo's network at the zoo's widths and 3 channels, any other
        # input channel count or first width otherwise.
        model = zoo.vggws(method.neuron_type, num_classes=num_classes, in_channels=in_channels,
                          first_width=args.channels, **kwargs)
    elif name in _OTTT_VGG_FACTORIES:
        if in_channels != 3 or args.channels is not None:
            raise ModelChoiceError(
                f"-model {name} takes 3-channel images at the zoo's widths; for "
                f"{in_channels}-channel input or -channels use -model ottt_spiking_vggws.")
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

    if method.needs_ottt_sequential and not _contains_ottt_sequential(model):
        raise ModelChoiceError(
            f"method {method.name} needs a model built from OTTTSequential containers (OTTTLIFNode "
            f"returns [spike, trace] while training); {name} is not. Use -model ottt_spiking_vggws.")
    if sequence_input and method.needs_input_average:
        model = nn.Sequential(InputAverage(tau=args.tau), model)
    # Every module in the step mode the method runs in with this backend (InputAverage included).
    return method.prepare(model, args.backend)
