"""The health callback's checks of their own arguments, and its warning for a loss that stays at
chance (the trainer's use of it: tests/examples/test_trainer_runs.py)."""

from __future__ import annotations

import math

import pytest
import torch.nn as nn

from spikingjelly_saf import SAFNode
from spikingjelly_saf.health import ChanceLossWatch, FiringHealth


def test_chance_watch_speaks_once_after_patience_minibatches_at_chance():
    watch = ChanceLossWatch(10, patience=5)
    chance = math.log(10)
    assert [watch.update(chance * 1.01) for _ in range(4)] == [None] * 4
    message = watch.update(chance)
    assert message is not None and "for 5 minibatches in a row" in message
    assert f"({chance:.4f}, the loss of a guess among 10 classes)" in message
    assert all(watch.update(chance) is None for _ in range(10))  # once


def test_chance_watch_streak_restarts_when_the_loss_moves():
    watch = ChanceLossWatch(10, chance_loss=2.0, patience=3, tolerance=0.05, advice="try X")
    for loss in (2.0, 2.05, 1.5, 2.0, 2.0):
        assert watch.update(loss) is None
    assert watch.update(1.95).endswith("Likely cause: try X.")


@pytest.mark.parametrize("kwargs, message", [
    ({"num_classes": 1}, "num_classes=1 must be an integer of 2 or more"),
    ({"num_classes": 10, "patience": 0}, "patience=0 must be a positive integer"),
    ({"num_classes": 10, "tolerance": 1.5}, "tolerance=1.5 must lie strictly between 0 and 1"),
    ({"num_classes": 10, "chance_loss": float("nan")}, "chance_loss=nan must be a finite positive"),
])
def test_chance_watch_refuses_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        ChanceLossWatch(**kwargs)


@pytest.mark.parametrize("steps", [0, -2, 1.5, True, "4"])
def test_firing_health_refuses_a_step_count_that_is_not_one_or_more(steps):
    with pytest.raises(ValueError, match="must be the number of time steps T"):
        FiringHealth(nn.Sequential(nn.Linear(2, 2), SAFNode()), steps=steps)
    assert FiringHealth(nn.Sequential(nn.Linear(2, 2), SAFNode()), steps=4).steps == 4
