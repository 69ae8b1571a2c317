import pytest
import torch

from spikingjelly.activation_based import layer, neuron
from spikingjelly.activation_based.model import spiking_vggws_ottt


class RecordingLIFNode(neuron.LIFNode):
    """A LIFNode that rejects keyword arguments no neuron accepts, like any strict neuron."""

    def __init__(self, tau: float = 2.0, v_reset=None, **kwargs):
        super().__init__(tau=tau, v_reset=v_reset, **kwargs)


@pytest.mark.parametrize("fc_hw", [1, 2])
def test_ottt_spiking_vggws_consumes_fc_hw_instead_of_passing_it_to_neurons(fc_hw):
    model = spiking_vggws_ottt.ottt_spiking_vggws(
        spiking_neuron=neuron.OTTTLIFNode, num_classes=3, fc_hw=fc_hw
    )
    assert model.fc_hw == fc_hw
    linear = model.classifier[2]
    assert isinstance(linear, layer.Linear)
    assert linear.in_features == 512 * fc_hw**2
    model.eval()
    assert model(torch.rand(1, 3, 16, 16)).shape == (1, 3)


def test_ottt_spiking_vgg_forwards_only_neuron_arguments_to_neurons():
    model = spiking_vggws_ottt.OTTTSpikingVGG(
        cfg=[4, "A", 4],
        num_classes=2,
        spiking_neuron=RecordingLIFNode,
        fc_hw=2,
        tau=3.0,
    )
    neurons = [m for m in model.modules() if isinstance(m, RecordingLIFNode)]
    assert len(neurons) == 2
    assert all(n.tau == 3.0 for n in neurons)


@pytest.mark.parametrize(
    "factory, default_light",
    [
        (spiking_vggws_ottt.ottt_spiking_vggws, True),
        (spiking_vggws_ottt.ottt_spiking_vgg11, False),
        (spiking_vggws_ottt.ottt_spiking_vgg11_ws, False),
    ],
)
def test_ottt_vgg_factories_keep_their_default_and_allow_light_classifier_override(
    factory, default_light
):
    def is_light(model):
        return len(model.classifier) == 3

    assert is_light(factory(num_classes=2)) == default_light
    overridden = factory(num_classes=2, light_classifier=not default_light)
    assert is_light(overridden) == (not default_light)
