r"""
Which modules of a network break SAF's equivalence with the LIF network (SAF_SPEC Theorem 1).

**API Language** - 中文 | English

* **中文**: ``check_exactness(model)`` 列出所有破坏 SAF 与 LIF 网络等价性的模块，并给出原因与修正方法；
  ``compare_with_lif(model, x_seq)`` 在 eval 模式下实测 SAF 模型与其 LIF 孪生网络的脉冲和输出。
* **English**: ``check_exactness(model)`` lists every module that breaks the equivalence between a
  SAF network and the LIF network with the same weights, with the reason and the fix;
  ``compare_with_lif(model, x_seq)`` measures it: it runs the SAF model and its LIF twin in eval
  mode and compares every neuron's spikes and the outputs.

Theorem 1 holds when everything between two neurons is affine in its input and fixed over time:
Linear/Conv (with bias), average pooling, flatten, eval-mode BatchNorm, constant scaling, weight
standardisation, dropout with a mask shared across time steps, and residual adds.
"""

from __future__ import annotations

import collections
import math
from dataclasses import asdict, dataclass, field
from typing import Iterator, Optional

import torch
import torch.nn as nn
from spikingjelly.activation_based import base, functional, layer, neuron
from spikingjelly.activation_based.layer import attention as sj_attention
from spikingjelly.activation_based.neuron.base_node import NonSpikingBaseNode

from . import functional as F
from .conversion import CONVERTIBLE_NEURONS, to_lif
from .layer import InputAverage
from .neuron import SAFNode

__all__ = ["Finding", "ExactnessReport", "check_exactness", "LIFComparison", "compare_with_lif"]


@dataclass(frozen=True)
class Finding:
    """One module that breaks the LIF equivalence.

    :param module: the module's name in ``model.named_modules()`` (``'<model>'`` for the root)
    :param type: the module's class name
    :param kind: a short category, e.g. ``'max-pool'``, ``'batch-statistics'``, ``'connect-function'``,
        ``'spike-product'``, ``'hard-reset'``
    :param reason: why it breaks Theorem 1
    :param fix: what to do about it
    """

    module: str
    type: str
    kind: str
    reason: str
    fix: str

    def __str__(self) -> str:
        return f"{self.module} ({self.type}) [{self.kind}]\n    why: {self.reason}\n    fix: {self.fix}"


_SCOPE_NOTE = (
    "check_exactness inspects modules; operations written inline in a forward() (torch.max, x * y, "
    "...) are invisible to it. compare_with_lif(model, x_seq) measures the equivalence directly."
)


@dataclass(frozen=True)
class ExactnessReport:
    r"""The findings of :func:`check_exactness`, readable as text (``str``/``print``) and as data.

    It is a sequence of :class:`Finding` (empty, hence falsy, when the model is exact);
    ``report.exact`` is ``True`` when there is none.
    ``report.modules(kind)`` lists the module names, ``report.to_dicts()`` gives plain dicts.
    """

    findings: tuple[Finding, ...]
    model_type: str = ""
    notes: tuple[str, ...] = field(default=(_SCOPE_NOTE,))

    @property
    def exact(self) -> bool:
        return not self.findings

    def modules(self, kind: Optional[str] = None) -> list[str]:
        return [f.module for f in self.findings if kind is None or f.kind == kind]

    def kinds(self) -> set[str]:
        return {f.kind for f in self.findings}

    def to_dicts(self) -> list[dict]:
        return [asdict(f) for f in self.findings]

    def __iter__(self) -> Iterator[Finding]:
        return iter(self.findings)

    def __len__(self) -> int:
        return len(self.findings)

    def __getitem__(self, index: int) -> Finding:
        return self.findings[index]

    def __str__(self) -> str:
        title = f"SAF exactness report for {self.model_type or 'the model'}: "
        if self.exact:
            lines = [title + "exact. Its spikes equal those of the LIF network with the same weights."]
        else:
            lines = [title + f"{len(self.findings)} module(s) break the LIF equivalence."]
            lines += [str(f) for f in self.findings]
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


def _classes(module, names) -> tuple[type, ...]:
    return tuple(c for c in (getattr(module, n, None) for n in names) if isinstance(c, type))


_MAX_POOLS = (nn.modules.pooling._MaxPoolNd, nn.modules.pooling._AdaptiveMaxPoolNd,
              nn.FractionalMaxPool2d, nn.FractionalMaxPool3d)
_POWER_POOLS = (nn.modules.pooling._LPPoolNd,)
_TIME_VARYING_NORMS = _classes(layer, [
    "BatchNormThroughTime1d", "BatchNormThroughTime2d", "BatchNormThroughTime3d",
    "TemporalEffectiveBatchNorm1d", "TemporalEffectiveBatchNorm2d", "TemporalEffectiveBatchNorm3d",
])
_SAMPLE_NORMS = (nn.LayerNorm, nn.GroupNorm, nn.modules.instancenorm._InstanceNorm,
                 nn.LocalResponseNorm) + _classes(nn, ["RMSNorm"]) + _classes(layer, ["NeuNorm"])
_ATTENTION = tuple(
    c for c in vars(sj_attention).values()
    if isinstance(c, type) and issubclass(c, nn.Module) and c.__module__ == sj_attention.__name__
) + (nn.MultiheadAttention,)
#: Stateful modules known to keep Theorem 1: SAF's own, and dropout whose mask lasts until reset.
_TIME_SAFE_STATEFUL = (SAFNode, InputAverage, layer.Dropout)


def _finding(name: str, module: nn.Module, kind: str, reason: str, fix: str) -> Finding:
    return Finding(name or "<model>", type(module).__name__, kind, reason, fix)


def _is_activation(module: nn.Module) -> bool:
    return type(module).__module__ == "torch.nn.modules.activation"


def _examine(name: str, module: nn.Module) -> Optional[Finding]:
    """The finding for one module, or ``None``. Order matters: the most specific rule first."""
    if isinstance(module, SAFNode):
        return None
    if isinstance(module, (neuron.BaseNode, NonSpikingBaseNode)):
        if type(module) in CONVERTIBLE_NEURONS and getattr(module, "v_reset", None) is not None:
            return _finding(
                name, module, "hard-reset",
                f"hard reset (v_reset={module.v_reset}) is not linear in the spike train, so spike "
                "accumulation cannot express it; to_saf refuses it.",
                "rebuild with v_reset=None (soft reset) and train again.")
        if type(module) not in CONVERTIBLE_NEURONS:
            return _finding(
                name, module, "unsupported-neuron",
                "SAF reproduces LIF and IF neurons with soft reset only; this neuron's dynamics "
                "differ.",
                "use neuron.LIFNode / neuron.IFNode with v_reset=None, or SAFNode.")
        return None
    if isinstance(module, _MAX_POOLS):
        return _finding(
            name, module, "max-pool",
            "the max of weighted firing rates is not the weighted rate of the max of spikes "
            "(max is not linear). Exact only before the first neuron with a static input.",
            "to_saf(model, replace_maxpool=True) swaps it for AvgPool of the same geometry; the "
            "network changes, so train or fine-tune after the swap.")
    if isinstance(module, _POWER_POOLS):
        return _finding(name, module, "nonlinear-pool",
                        "power-average pooling is not linear.", "use AvgPool instead.")
    if isinstance(module, _TIME_VARYING_NORMS):
        return _finding(
            name, module, "time-varying-norm",
            "its affine map changes with the time step, so it is not fixed over time.",
            "use layer.BatchNorm (same statistics at every step), in eval mode.")
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        if not module.track_running_stats:
            return _finding(
                name, module, "batch-statistics",
                "without running statistics it always normalises with batch statistics, and those "
                "of the averaged currents differ from those of the spike currents.",
                "build it with track_running_stats=True and compare/deploy in eval mode.")
        if module.training:
            return _finding(
                name, module, "batch-statistics",
                "in train mode it normalises with batch statistics, and those of the averaged "
                "currents differ from those of the spike currents (exact again in eval mode).",
                "call model.eval() to compare or deploy; SAF training with batch statistics is fine.")
        return None
    if isinstance(module, _SAMPLE_NORMS):
        return _finding(
            name, module, "sample-normalisation",
            "it divides by statistics of its own input, which is not affine in the input.",
            "use BatchNorm (eval mode), which is affine.")
    if isinstance(module, _ATTENTION) or "attention" in type(module).__name__.lower():
        return _finding(
            name, module, "spike-product",
            "attention multiplies spike tensors (e.g. (V K^T) Q); the product of weighted firing "
            "rates is not the weighted rate of the product, so the LIF twin's spikes differ.",
            "no exact SAF form: SAF still trains the model, but evaluate and deploy it as the SAF "
            "network (or train it with BPTT/OTTT if LIF deployment matters).")
    cnf = getattr(module, "cnf", None)
    if isinstance(cnf, str) and cnf != "ADD":
        return _finding(
            name, module, "connect-function",
            f"SEW connect function {cnf!r} multiplies two spike tensors (AND: x*y, IAND: x*(1-y)); "
            "the product of rates is not the rate of the product.",
            "build the SEW ResNet with cnf='ADD' (a residual add is exact).")
    if _is_activation(module):
        return _finding(
            name, module, "nonlinear-activation",
            "a nonlinearity between neurons does not commute with the weighted average.",
            "remove it: the spiking neurons must be the only nonlinearity.")
    if isinstance(module, nn.modules.dropout._DropoutNd) and module.training and module.p > 0:
        return _finding(
            name, module, "dropout-mask",
            "torch dropout draws a new mask at every call, so the mask changes over time steps "
            "(exact in eval mode, where it is the identity).",
            "use spikingjelly.activation_based.layer.Dropout, whose mask lasts until reset_net.")
    if isinstance(module, base.MemoryModule) and not isinstance(module, _TIME_SAFE_STATEFUL):
        return _finding(
            name, module, "unknown-state",
            "it keeps its own state across time steps, so it may not be fixed over time; SAF "
            "cannot vouch for it.",
            "check it with compare_with_lif(model, x_seq), or replace it.")
    return None


def check_exactness(model: nn.Module) -> ExactnessReport:
    r"""
    **API Language** - :ref:`中文 <check_exactness-cn>` | :ref:`English <check_exactness-en>`

    ----

    .. _check_exactness-cn:

    * **中文**

    列出破坏 SAF 与 LIF 网络等价性（定理 1）的模块：MaxPool、train 模式的 BatchNorm 统计量、
    SEW 的 AND/IAND、脉冲与脉冲的乘积（注意力）、硬复位及其他神经元、模块间的非线性激活、
    随时间变化或按样本归一化的层、逐步重采样的 dropout 和未知的有状态模块。对 SAF 模型和待转换的
    LIF 模型都适用。结果可 ``print``，也可作为 :class:`Finding` 列表读取。

    ----

    .. _check_exactness-en:

    * **English**

    List the modules of ``model`` that break SAF's equivalence with the LIF network of the same
    weights (Theorem 1): MaxPool, train-mode BatchNorm statistics, SEW AND/IAND, products of spike
    tensors (attention), hard-reset and other unsupported neurons, nonlinear activations between
    neurons, time-varying or per-sample normalisation, dropout that redraws its mask every step,
    and stateful modules it does not know. It works on a SAF model and on a LIF model before
    :func:`~spikingjelly_saf.to_saf`. The result prints as text and reads as a sequence of
    :class:`Finding` (module, type, kind, reason, fix). It depends on the mode: BatchNorm is
    reported in train mode only.

    :param model: the network
    :return: the report
    """
    findings = []
    for name, module in model.named_modules():
        finding = _examine(name, module)
        if finding is not None:
            findings.append(finding)
    findings += _mixed_time_constants(model)
    return ExactnessReport(tuple(findings), type(model).__name__)


def _time_constant(module: nn.Module) -> Optional[float]:
    if isinstance(module, (SAFNode, InputAverage)) or type(module) in CONVERTIBLE_NEURONS:
        return math.inf if isinstance(module, neuron.IFNode) else float(module.tau)
    return None


def _mixed_time_constants(model: nn.Module) -> list[Finding]:
    """Neurons whose tau differs from the model's most common one.

    Theorem 1 accumulates a neuron's input with that neuron's own leak; it is exact when the
    neurons feeding it (and the input average) use the same leak.
    """
    taus = [(name, module, tau) for name, module in model.named_modules()
            if (tau := _time_constant(module)) is not None]
    if len({tau for _, _, tau in taus}) < 2:
        return []
    counts = collections.Counter(tau for _, _, tau in taus)
    common = counts.most_common(1)[0][0]
    return [
        _finding(name, module, "mixed-time-constant",
                 f"tau={tau} while most neurons of the model use tau={common}: SAF forwards averages "
                 "weighted with the sender's leak, the LIF receiver integrates with its own.",
                 f"use one tau for every neuron (and for InputAverage), e.g. tau={common}.")
        for name, module, tau in taus if tau != common
    ]


@dataclass(frozen=True)
class LIFComparison:
    """What :func:`compare_with_lif` measured.

    ``spike_mismatches[name] = (different, total)`` per neuron; ``spike_counts[name]`` is the number
    of spikes the LIF twin's neuron fired; ``output_difference`` is the largest absolute difference
    between the LIF outputs and the SAF outputs' instantaneous values.
    """

    spike_mismatches: dict
    spike_counts: dict
    output_difference: float

    @property
    def spikes_equal(self) -> bool:
        return all(different == 0 for different, _ in self.spike_mismatches.values())

    def mismatched_neurons(self) -> list[str]:
        return [name for name, (different, _) in self.spike_mismatches.items() if different]


def _record_spikes(model: nn.Module, store: dict) -> list:
    handles = []
    for name, module in model.named_modules():
        if isinstance(module, SAFNode):
            target = module.spikes
        elif isinstance(module, (neuron.BaseNode,)):
            target = module
        else:
            continue

        def hook(_module, _inputs, output, name=name):
            output = output[0] if isinstance(output, (list, tuple)) else output
            store.setdefault(name, []).append(output.detach().clone())

        handles.append(target.register_forward_hook(hook))
    return handles


def _run(model: nn.Module, x_seq: torch.Tensor, step_mode: str) -> tuple[torch.Tensor, dict]:
    spikes: dict = {}
    handles = _record_spikes(model, spikes)
    try:
        functional.reset_net(model)
        with torch.no_grad():
            if step_mode == "m":
                y = model(x_seq.transpose(0, 1))
                y_seq = (y[0] if isinstance(y, (list, tuple)) else y).transpose(0, 1)
                spikes = {k: torch.cat(v, 0) for k, v in spikes.items()}
            else:
                outputs = []
                for x in x_seq.transpose(0, 1):
                    y = model(x)
                    outputs.append(y[0] if isinstance(y, (list, tuple)) else y)
                y_seq = torch.stack(outputs, 1)
                spikes = {k: torch.stack(v, 0) for k, v in spikes.items()}
        functional.reset_net(model)
    finally:
        for handle in handles:
            handle.remove()
    return y_seq, spikes


def compare_with_lif(model: nn.Module, x_seq: torch.Tensor,
                     lif_model: Optional[nn.Module] = None) -> LIFComparison:
    r"""Run the SAF ``model`` and its LIF twin in eval mode and compare spikes and outputs.

    * **中文**: ``x_seq`` 形状为 ``[B, T, *]``。LIF 孪生网络默认为 ``to_lif(model)``。SAF 的脉冲由
      ``SAFNode.spikes`` 恢复，SAF 输出通过 :math:`o[t] = c[t]\bar O[t] - \lambda c[t-1]\bar O[t-1]`
      （最后一个 ``SAFNode`` 的 :math:`\lambda`）与 LIF 输出比较。
    * **English**: ``x_seq`` is ``[B, T, *]``. The twin defaults to ``to_lif(model)``. SAF spikes are
      recovered through ``SAFNode.spikes``; the SAF output is compared through its instantaneous
      value :math:`o[t] = c[t]\bar O[t] - \lambda c[t-1]\bar O[t-1]`, with the :math:`\lambda` of the
      last ``SAFNode`` (the one feeding the output layer). Neither model's mode or state changes.
    """
    nodes = [m for m in model.modules() if isinstance(m, SAFNode)]
    if not nodes:
        raise ValueError("model contains no SAFNode; convert it with spikingjelly_saf.to_saf first.")
    modes = {node.step_mode for node in nodes}
    if len(modes) != 1:
        raise ValueError(f"model mixes step modes {sorted(modes)}; use functional.set_step_mode.")
    step_mode = modes.pop()
    if lif_model is None:
        lif_model = to_lif(model, memoryless="keep")
    was_training = model.training, lif_model.training
    model.eval()
    lif_model.eval()
    try:
        saf_out, saf_spikes = _run(model, x_seq, step_mode)
        lif_out, lif_spikes = _run(lif_model, x_seq, step_mode)
    finally:
        model.train(was_training[0])
        lif_model.train(was_training[1])
    if set(saf_spikes) != set(lif_spikes):
        raise ValueError("the LIF model's neurons do not match the SAF model's by name: "
                         f"{sorted(set(saf_spikes) ^ set(lif_spikes))}.")
    mismatches = {
        name: (int((saf_spikes[name] != lif_spikes[name]).sum()), saf_spikes[name].numel())
        for name in saf_spikes
    }
    counts = {name: int(spikes.sum()) for name, spikes in lif_spikes.items()}
    recovered = F.recover_instantaneous_seq(saf_out.transpose(0, 1), nodes[-1].decay).transpose(0, 1)
    difference = float((recovered - lif_out).abs().max()) if lif_out.numel() else 0.0
    return LIFComparison(mismatches, counts, difference)
