r"""
Representation-level surrogates for SAF-F.

**API Language** - 中文 | English

* **中文**: SpikingJelly 的任何替代函数（``surrogate.Sigmoid`` 等）都在脉冲层面作用于 :math:`H[t]-V_{th}`。
  本模块的替代函数则作用于整个映射 :math:`I[t] \mapsto \bar A[t]`，用于 SAF-F。
* **English**: any SpikingJelly surrogate (``surrogate.Sigmoid`` and so on) acts at spike level, on
  :math:`H[t] - V_{th}`. The surrogates here act on the whole map :math:`I[t] \mapsto \bar A[t]`
  and are what SAF-F's Theorem 3 is stated for.

A representation surrogate is a SpikingJelly ``SurrogateFunctionBase``: with ``spiking=True``
``SAFNode`` runs the exact SAF step and uses :meth:`RepresentationSurrogate.derivative` of the
normalised input :math:`u = s I / V_{th}` as :math:`\partial \bar A / \partial u`; with ``spiking=False`` the
neuron outputs the primitive itself, the rate mapping, so the network becomes the Spike
Representation (rate) network whose true gradient that derivative is.
"""

from __future__ import annotations

from typing import Optional

import torch
from spikingjelly.activation_based import surrogate as sj_surrogate

__all__ = ["RepresentationSurrogate", "SpikeRepresentation", "is_representation_level"]


class RepresentationSurrogate(sj_surrogate.SurrogateFunctionBase):
    """Base class: a surrogate of the map from normalised input ``u`` to the weighted firing rate.

    Subclasses implement :meth:`primitive_function` (the rate as a function of ``u``) and
    :meth:`derivative`. ``derivative_storage_dtype`` may name a smaller dtype that stores the
    derivative exactly between forward and backward (``torch.bool`` for a 0/1 slope).
    """

    derivative_storage_dtype: Optional[torch.dtype] = None

    @staticmethod
    def spiking_function(x, **kwargs):
        return sj_surrogate.heaviside(x)

    def derivative(self, u: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class SpikeRepresentation(RepresentationSurrogate):
    r"""Spike Representation's mapping :math:`a = \mathrm{clamp}(u, 0, 1)`, :math:`u = s I / V_{th}`.

    * **中文**: SAF-F 的表示层替代梯度，:math:`\partial \bar A/\partial I = (s/V_{th})\,\mathbb 1\{0<u<1\}`。
    * **English**: SAF-F's representation-level surrogate,
      :math:`\partial \bar A / \partial I := (s / V_{th})\, \mathbb{1}\{0 < u < 1\}` (``docs/theory.md``, Theorem 3).
    """

    derivative_storage_dtype = torch.bool

    def __init__(self, spiking: bool = True):
        super().__init__(spiking=spiking)

    @staticmethod
    def primitive_function(x: torch.Tensor) -> torch.Tensor:
        return torch.clamp(x, 0.0, 1.0)

    def derivative(self, u: torch.Tensor) -> torch.Tensor:
        return (u > 0) & (u < 1)


def is_representation_level(surrogate_function) -> bool:
    """True for a representation-level surrogate (in either spiking mode)."""
    return isinstance(surrogate_function, RepresentationSurrogate)
