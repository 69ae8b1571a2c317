"""Misuses of the library API the reliability probe (tests/probe/reliability_probe.py) found
answered by an AttributeError deep inside, or accepted without a word; each now raises (or warns)
naming the argument."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import spikingjelly_saf as saf
from spikingjelly_saf import functional as F


def _net():
    return nn.Sequential(nn.Linear(4, 3), saf.SAFNode(), nn.Linear(3, 2))


@pytest.mark.parametrize("value", [None, 42, "model", [nn.Linear(2, 2)], torch.zeros(2)])
@pytest.mark.parametrize("make, name", [(saf.SpikeRecorder, "SpikeRecorder"),
                                        (saf.FiringHealth, "FiringHealth")])
def test_recorder_and_health_name_a_non_module(make, name, value):
    with pytest.raises(TypeError, match=f"{name}: model must be a torch.nn.Module"):
        make(value)


@pytest.mark.parametrize("decay", [math.nan, 1.5, -0.5, math.inf, "0.5", True])
@pytest.mark.parametrize("readout", [F.rate_readout, F.weighted_average])
def test_readouts_refuse_a_decay_outside_0_1(readout, decay):
    with pytest.raises(ValueError, match=r"decay=.* must be a number in \[0, 1\]"):
        readout(torch.rand(3, 2, 4), decay)


@pytest.mark.parametrize("readout", [F.rate_readout, F.weighted_average])
def test_readouts_name_a_bad_time_dimension_and_a_non_tensor(readout):
    with pytest.raises(ValueError, match="dim=5 is not a dimension"):
        readout(torch.rand(3, 2, 4), 0.5, dim=5)
    with pytest.raises(TypeError, match="the sequence must be a tensor"):
        readout([[1.0]], 0.5)


def test_readouts_still_take_the_edge_decays():
    seq = torch.rand(3, 2, 4, dtype=torch.float64)
    for decay in (0.0, 1.0, 0, 1):
        assert F.rate_readout(seq, decay).shape == (2, 4)
        assert F.weighted_average(seq, decay, dim=-3).shape == (2, 4)


def test_predict_refuses_what_has_no_class_dimension_and_nan_scores():
    with pytest.raises(TypeError, match="scores must be a tensor"):
        saf.predict([1.0, 2.0])
    with pytest.raises(TypeError, match="scores must be a tensor"):
        saf.predict(torch.tensor(1.0))
    with pytest.raises(ValueError, match="the scores hold NaN"):
        saf.predict(torch.tensor([[0.1, math.nan]]))
    assert saf.predict(torch.tensor([[0.1, 0.9], [0.8, 0.2]])).tolist() == [1, 0]


def test_saf_inference_refuses_a_non_finite_input():
    x = torch.rand(2, 3, 4)
    x[0, 1, 2] = math.nan
    with pytest.raises(ValueError, match="saf_inference: x_seq holds 1 NaN or infinite value"):
        saf.saf_inference(_net(), x)
    assert saf.saf_inference(_net(), x, check_finite=False).shape == (2, 2)


def test_threshold_no_tensor_type_can_hold_is_refused():
    with pytest.raises(ValueError, match="below the smallest normal float64"):
        saf.SAFNode(v_threshold=1e-320)


@pytest.mark.parametrize("value", [1e-45, 1e39])
def test_threshold_float32_cannot_hold_warns(value):
    with pytest.warns(saf.SAFPrecisionWarning, match="outside float32's normal range"):
        node = saf.SAFNode(v_threshold=value)
    assert node.v_threshold == value
