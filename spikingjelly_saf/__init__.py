"""Spike Accumulation Forwarding (SAF) for SpikingJelly 2.0.

Train spiking networks online with half of OTTT's forward work and memory that does not grow with
the number of time steps; deploy the weights unchanged in an ordinary LIF network.
"""
from . import functional, health, recording, recurrent, surrogate, zoo
from .backends import register_surrogate_code, set_backend
from .layer import InputAverage, OutputRecovery, predict
from .neuron import SAFNode, SAFPrecisionWarning, SpikeTap
from .training import (METHODS, ModelContractError, NonFiniteTrainingError, StateCarriedOverWarning,
                       check_gradients_finite, saf_inference, saf_online_training)
from .recording import SpikeRecorder
from .health import FiringHealth
from .conversion import to_lif, to_saf
from .exactness import check_exactness, compare_with_lif

__all__ = [
    "SAFNode",
    "SpikeTap",
    "SAFPrecisionWarning",
    "InputAverage",
    "OutputRecovery",
    "predict",
    "saf_online_training",
    "saf_inference",
    "ModelContractError",
    "StateCarriedOverWarning",
    "NonFiniteTrainingError",
    "check_gradients_finite",
    "SpikeRecorder",
    "FiringHealth",
    "health",
    "recording",
    "recurrent",
    "METHODS",
    "functional",
    "surrogate",
    "zoo",
    "to_saf",
    "to_lif",
    "check_exactness",
    "compare_with_lif",
    "set_backend",
    "register_surrogate_code",
]
__version__ = "0.1.0"
