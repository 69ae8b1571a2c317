r"""
Building the network a run trains: a SpikingJelly zoo model with the method's neuron in it.

Every model goes through :func:`build_model`, so a later fix to a zoo factory is made in one place.
"""

from __future__ import annotations

import argparse
from typing import Optional

import torch.nn as nn
from spikingjelly.activation_based import layer, surrogate
from spikingjelly.activation_based.model import (parametric_lif_net, sew_resnet, spiking_resnet,
                                                 spiking_vgg, spiking_vggws_ottt)

from spikingjelly_saf import zoo
from spikingjelly_saf.layer import InputAverage
from .methods import Method
from spikingjelly_saf.neuron import SAFNode
from spikingjelly_saf.surrogate import SpikeRepresentation

__all__ = ["SURROGATES", "MODEL_NAMES", "make_surrogate", "takes_width", "build_model", "ModelChoiceError"]

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
#: SpikingJelly's ImageNet-style zoo networks, built with the method's (soft-reset) neuron, every
#: max pool replaced by the average pool of the same geometry (a max over spike rates is not a
#: function of the rates, so it breaks SAF's exactness; an average is affine), SEW blocks with the
#: ADD connect function (AND/IAND multiply spikes), and the first convolution rebuilt for the data
#: set's channels. BatchNorm is exact in eval mode (the deployed network).
_IMAGENET_ZOO = {
    **{name: getattr(spiking_resnet, name) for name in spiking_resnet.__all__ if name != "SpikingResNet"},
    **{name: getattr(sew_resnet, name) for name in sew_resnet.__all__
       if name not in ("SEWResNet", "SEWResNet34Config")},
    **{name: getattr(spiking_vgg, name) for name in spiking_vgg.__all__ if name != "SpikingVGG"},
}
#: The smallest image side each family takes (VGG halves the image five times).
_MIN_SIDE = {"spiking_vgg": 32}
MODEL_NAMES = tuple(_OTTT_VGG_FACTORIES) + tuple(_PARAMETRIC_LIF_NETS) + tuple(_IMAGENET_ZOO)


class ModelChoiceError(ValueError):
    """A model / method / dataset combination that cannot train."""


def takes_width(name: str) -> bool:
    """Whether ``-channels`` sets the width of ``-model name`` (the others keep the zoo's widths)."""
    return name == "ottt_spiking_vggws" or name in _PARAMETRIC_LIF_NETS


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


def _average_pool_for(module: nn.Module) -> Optional[nn.Module]:
    """The average pool of ``module``'s geometry when it is a 2-D max pool, else ``None``."""
    step_mode = getattr(module, "step_mode", None)
    if isinstance(module, (nn.MaxPool2d, layer.MaxPool2d)):
        if module.dilation not in (1, (1, 1)) or module.return_indices:
            raise ModelChoiceError(f"a MaxPool2d with dilation or return_indices has no average-pool "
                                   f"twin: {module}")
        kwargs = dict(kernel_size=module.kernel_size, stride=module.stride, padding=module.padding,
                      ceil_mode=module.ceil_mode, count_include_pad=False)
        return (layer.AvgPool2d(**kwargs, step_mode=step_mode) if step_mode is not None
                else nn.AvgPool2d(**kwargs))
    if isinstance(module, nn.AdaptiveMaxPool2d):
        return (layer.AdaptiveAvgPool2d(module.output_size, step_mode=step_mode)
                if step_mode is not None else nn.AdaptiveAvgPool2d(module.output_size))
    return None


def _exact_zoo_model(name: str, method: Method, num_classes: int, in_channels: int,
                     kwargs: dict) -> nn.Module:
    factory = _IMAGENET_ZOO[name]
    extra = {"cnf": "ADD"} if name.startswith("sew_") else {}
    model = factory(spiking_neuron=method.neuron_type, num_classes=num_classes, **extra, **kwargs)
    for parent in list(model.modules()):
        for child_name, child in list(parent.named_children()):
            replacement = _average_pool_for(child)
            if replacement is not None:
                setattr(parent, child_name, replacement)
    if in_channels != 3:
        _replace_first_conv(model, in_channels)
    return model


def _replace_first_conv(model: nn.Module, in_channels: int) -> None:
    for parent in model.modules():
        for child_name, child in parent.named_children():
            if isinstance(child, nn.Conv2d):
                kwargs = dict(in_channels=in_channels, out_channels=child.out_channels,
                              kernel_size=child.kernel_size, stride=child.stride,
                              padding=child.padding, bias=child.bias is not None)
                step_mode = getattr(child, "step_mode", None)
                setattr(parent, child_name, layer.Conv2d(**kwargs, step_mode=step_mode)
                        if isinstance(child, layer.Conv2d) else nn.Conv2d(**kwargs))
                return


def _contains_ottt_sequential(model: nn.Module) -> bool:
    return any(isinstance(m, layer.OTTTSequential) for m in model.modules())


def build_model(args: argparse.Namespace, method: Method, num_classes: int, in_channels: int,
                sequence_input: bool, image_side: Optional[int] = None) -> nn.Module:
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
    elif name in _IMAGENET_ZOO:
        if args.channels is not None:
            raise ModelChoiceError(f"-model {name} has the zoo's widths; drop -channels (it sets the "
                                   "width of ottt_spiking_vggws and the parametric-LIF nets).")
        side = image_side
        least = _MIN_SIDE["spiking_vgg"] if name.startswith("spiking_vgg") else 1
        if side is not None and side < least:
            raise ModelChoiceError(
                f"-model {name} halves the image five times and needs images of at least "
                f"{least}x{least}; this data set's are {side}x{side}. Use a ResNet, a SEW-ResNet or "
                "ottt_spiking_vggws.")
        model = _exact_zoo_model(name, method, num_classes, in_channels, kwargs)
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
