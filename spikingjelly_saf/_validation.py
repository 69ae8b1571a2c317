"""Argument checks shared by the public entry points, so that a wrong type is named, not traced."""

from __future__ import annotations

import torch.nn as nn


def require_module(value, caller: str, parameter: str = "model") -> nn.Module:
    """``value`` if it is an ``nn.Module``; otherwise a ``TypeError`` naming ``caller`` and the fix."""
    if not isinstance(value, nn.Module):
        raise TypeError(
            f"{caller}: {parameter} must be a torch.nn.Module (a network or a layer), got "
            f"{type(value).__name__} {value!r:.60}. Pass the network itself, e.g. {caller}(net, ...).")
    return value
