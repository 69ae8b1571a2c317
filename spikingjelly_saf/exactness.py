r"""
Which modules of a network break SAF's equivalence with the LIF network (Theorem 1).

**API Language** - 中文 | English

* **中文**: ``check_exactness(model)`` 列出所有破坏（或无法确认）SAF 与 LIF 网络等价性的模块，按类别分组，
  并给出原因与修正方法；``compare_with_lif(model, x_seq)`` 在 eval 模式下实测 SAF 模型与其 LIF 孪生网络的
  脉冲和输出，并指出哪些层从未发放（因而什么也证明不了）。
* **English**: ``check_exactness(model)`` lists every module that breaks, or may break, the
  equivalence between a SAF network and the LIF network with the same weights, grouped by kind,
  with the reason and the fix; ``compare_with_lif(model, x_seq)`` measures it: it runs the SAF
  model and its LIF twin in eval mode, compares every neuron's spikes and the outputs, and says
  which layers were actually exercised (a layer that never fires proves nothing).

Theorem 1 holds when everything between two neurons is affine in its input and fixed over time.
The report is an allow-list: Linear/Conv (with bias, weight-standardised or not), average pooling,
flatten, padding, eval-mode BatchNorm, constant scaling, dropout with a mask shared across time
steps, containers, residual adds in blocks it knows are exact, and recurrent and feedback
containers with an affine connection (SpikingJelly's, which ``to_saf`` swaps for their SAF twins,
and :mod:`spikingjelly_saf.recurrent`'s). Every other module is
reported: as breaking the equivalence where it is known to (MaxPool, ...), as unproven where it is
simply not known (a recurrent layer, a bilinear map, your own module, ...).
"""

from __future__ import annotations

import collections
import math
from dataclasses import asdict, dataclass, field
from typing import Iterable, Iterator, NamedTuple, Optional

import torch
import torch.nn as nn
from spikingjelly.activation_based import base, functional, layer, neuron
from spikingjelly.activation_based.layer import attention as sj_attention
from spikingjelly.activation_based.model import spiking_vggws_ottt

from . import functional as saf_functional
from .conversion import CONVERTIBLE_NEURONS, MAX_POOLS, is_neuron, neuron_issue, to_lif
from .layer import InputAverage
from .neuron import SAFNode, SpikeTap
from .recording import SpikeRecorder
from .recurrent import (SAF_DELAYED_CONTAINERS, FeedbackContainer, element_wise_problem,
                        stepping_modules)
from ._validation import require_module

__all__ = ["Finding", "ExactnessReport", "check_exactness", "LIFComparison", "compare_with_lif",
           "EFFECTS"]

#: What a finding means for the LIF twin, in the order the report lists them:
#: ``"breaks"``: its spikes differ from SAF's in eval mode, where one compares and deploys;
#: ``"train-mode"``: only while the module is in train mode (fine for SAF training, exact in eval);
#: ``"unproven"``: not known to be affine and fixed over time, so exactness is not established.
EFFECTS = ("breaks", "train-mode", "unproven")

_EFFECT_TITLES = {
    "breaks": "Breaks the LIF equivalence (the deployed LIF network's spikes differ from SAF's)",
    "train-mode": "Train mode only (fine for SAF training; exact again in eval mode, where you "
                  "compare and deploy)",
    "unproven": "Unproven (not known to be affine and fixed over time; compare_with_lif measures "
                "it)",
}


@dataclass(frozen=True)
class Finding:
    """One module that breaks, or may break, the LIF equivalence.

    :param module: the module's name in ``model.named_modules()`` (``'<model>'`` for the root)
    :param type: the module's class name
    :param kind: a short category, e.g. ``'max-pool'``, ``'batch-statistics'``, ``'connect-function'``,
        ``'spike-product'``, ``'hard-reset'``, ``'unproven'``
    :param reason: why it breaks Theorem 1 (or why it is not known to keep it)
    :param fix: what to do about it
    :param effect: one of :data:`EFFECTS`
    """

    module: str
    type: str
    kind: str
    reason: str
    fix: str
    effect: str = "breaks"

    def __str__(self) -> str:
        return f"{self.module} ({self.type}) [{self.kind}]\n    why: {self.reason}\n    fix: {self.fix}"


_SCOPE_NOTE = (
    "check_exactness inspects modules; operations written inline in a forward() (torch.max, x * y, "
    "...) are invisible to it. compare_with_lif(model, x_seq) measures the equivalence directly."
)
#: How many module names a grouped paragraph lists before "and N more".
_NAMES_SHOWN = 6


def _names(names: list[str]) -> str:
    shown = ", ".join(names[:_NAMES_SHOWN])
    return shown + (f" and {len(names) - _NAMES_SHOWN} more" if len(names) > _NAMES_SHOWN else "")


@dataclass(frozen=True)
class ExactnessReport:
    r"""The findings of :func:`check_exactness`, readable as text (``str``/``print``) and as data.

    It is a sequence of :class:`Finding` (empty, hence falsy, when the model is exact as it
    stands); ``report.exact`` is ``True`` when there is none, ``report.exact_in_eval`` when the only
    findings are train-mode ones. The text groups identical findings and lists what breaks the
    equivalence first, then what only matters in train mode, then what is unproven.
    ``report.breaking``, ``report.train_mode_only`` and ``report.unproven`` hold those groups;
    ``report.modules(kind)`` lists module names, ``report.to_dicts()`` gives plain dicts.
    """

    findings: tuple[Finding, ...]
    model_type: str = ""
    notes: tuple[str, ...] = field(default=(_SCOPE_NOTE,))

    @property
    def exact(self) -> bool:
        return not self.findings

    @property
    def exact_in_eval(self) -> bool:
        """``True`` when only train-mode findings remain: ``model.eval()`` makes it exact."""
        return all(f.effect == "train-mode" for f in self.findings)

    def _with_effect(self, effect: str) -> tuple[Finding, ...]:
        return tuple(f for f in self.findings if f.effect == effect)

    @property
    def breaking(self) -> tuple[Finding, ...]:
        return self._with_effect("breaks")

    @property
    def train_mode_only(self) -> tuple[Finding, ...]:
        return self._with_effect("train-mode")

    @property
    def unproven(self) -> tuple[Finding, ...]:
        return self._with_effect("unproven")

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

    def summary(self) -> str:
        """One line: the verdict and the count of each group."""
        title = f"SAF exactness report for {self.model_type or 'the model'}: "
        if self.exact:
            return title + "exact. Its spikes equal those of the LIF network with the same weights."
        counts = [f"{len(group)} {one if len(group) == 1 else many}" for group, one, many in (
            (self.breaking, "breaks the LIF equivalence", "break the LIF equivalence"),
            (self.train_mode_only, "matters in train mode only", "matter in train mode only"),
            (self.unproven, "unproven", "unproven")) if group]
        verdict = "exact in eval mode" if self.exact_in_eval else "not exact"
        return title + f"{verdict}; {len(self.findings)} module(s): " + ", ".join(counts) + "."

    def __str__(self) -> str:
        lines = [self.summary()]
        for effect in EFFECTS:
            groups: "collections.OrderedDict[tuple, list[Finding]]" = collections.OrderedDict()
            for f in self._with_effect(effect):
                groups.setdefault((f.kind, f.reason, f.fix), []).append(f)
            if not groups:
                continue
            lines.append(_EFFECT_TITLES[effect] + ":")
            for (kind, reason, fix), members in groups.items():
                if len(members) == 1:
                    lines.append(f"  {members[0].module} ({members[0].type}) [{kind}]")
                else:
                    types = ", ".join(sorted({f.type for f in members}))
                    lines.append(f"  [{kind}] {len(members)} modules ({types}): "
                                 f"{_names([f.module for f in members])}")
                lines += [f"      why: {reason}", f"      fix: {fix}"]
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


def _classes(module, names) -> tuple[type, ...]:
    return tuple(c for c in (getattr(module, n, None) for n in names) if isinstance(c, type))


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
_TIME_SAFE_STATEFUL = (InputAverage, layer.Dropout)
#: Modules known to be affine in their input and fixed over time (SpikingJelly's ``layer.*``
#: wrappers are subclasses of these). Weight standardisation changes the weights, not the input
#: map, so WSConv2d / WSLinear are affine too.
_AFFINE = (
    nn.Linear, nn.modules.conv._ConvNd, nn.Identity, nn.Flatten, nn.Unflatten,
    nn.modules.pooling._AvgPoolNd, nn.modules.pooling._AdaptiveAvgPoolNd,
    nn.modules.padding._ConstantPadNd, nn.modules.padding._ReflectionPadNd,
    nn.modules.padding._ReplicationPadNd, nn.modules.padding._CircularPadNd,
    nn.PixelShuffle, nn.PixelUnshuffle, nn.ChannelShuffle, nn.Upsample, nn.Fold, nn.Unfold,
    spiking_vggws_ottt.Scale, layer.VotingLayer, SpikeTap,
) + _classes(layer, ["PrintShapeModule"])
#: Containers that only chain or hold their children (their own forward adds nothing).
_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict) + _classes(layer, [
    "SeqToANNContainer", "MultiStepContainer", "StepModeContainer", "OTTTSequential",
    "TLastMultiStepContainer", "TLastSeqToANNContainer"])
#: Where code is trusted to be what its class says: a subclass defined elsewhere that overrides
#: the forward may compute anything.
_TRUSTED_CODE = ("torch.", "spikingjelly.", "spikingjelly_saf.")
_FORWARDS = ("forward", "single_step_forward", "multi_step_forward")


def _defined_in_trusted_code(cls: type) -> bool:
    for attribute in _FORWARDS:
        owner = next((c for c in cls.__mro__ if attribute in vars(c)), None)
        if owner is not None and not owner.__module__.startswith(_TRUSTED_CODE):
            return False
    return True


def _finding(name: str, module: nn.Module, kind: str, reason: str, fix: str,
             effect: str = "breaks") -> Finding:
    return Finding(name or "<model>", type(module).__name__, kind, reason, fix, effect)


def _is_activation(module: nn.Module) -> bool:
    return type(module).__module__ == "torch.nn.modules.activation"


def _walk(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """Every module once, in module order, without descending into neurons (whose children, such
    as the surrogate function, are part of the dynamics, not layers between neurons)."""
    seen: set[int] = set()
    stack = [("", model)]
    while stack:
        name, module = stack.pop()
        if id(module) in seen:
            continue
        seen.add(id(module))
        yield name, module
        if is_neuron(module):
            continue
        children = [(f"{name}.{child_name}" if name else child_name, child)
                    for child_name, child in module.named_children()]
        stack.extend(reversed(children))


class _Verdict(NamedTuple):
    """What one rule says of a module: exact (``finding is None``) or a finding to report."""
    finding: Optional[tuple]  # (kind, reason, fix, effect)


_EXACT = _Verdict(None)


def _report(kind: str, reason: str, fix: str, effect: str = "breaks") -> _Verdict:
    return _Verdict((kind, reason, fix, effect))


def _neuron_rule(module: nn.Module) -> Optional[_Verdict]:
    if not is_neuron(module):
        return None
    issue = neuron_issue(module)
    return _EXACT if issue is None else _report(*issue)


def _breaks_for(types: tuple, kind: str, reason: str, fix: str):
    """A rule that reports every module of ``types`` as breaking exactness, whatever its settings."""
    verdict = _report(kind, reason, fix)

    def rule(module: nn.Module) -> Optional[_Verdict]:
        return verdict if isinstance(module, types) else None

    return rule


_max_pool_rule = _breaks_for(
    MAX_POOLS, "max-pool",
    "the max of weighted firing rates is not the weighted rate of the max of spikes "
    "(max is not linear). Exact only before the first neuron with a static input.",
    "to_saf(model, replace_maxpool=True) swaps it for AvgPool of the same geometry; the "
    "network changes, so train or fine-tune after the swap.")

_power_pool_rule = _breaks_for(
    _POWER_POOLS, "nonlinear-pool", "power-average pooling is not linear.", "use AvgPool instead.")

_time_varying_norm_rule = _breaks_for(
    _TIME_VARYING_NORMS, "time-varying-norm",
    "its affine map changes with the time step, so it is not fixed over time.",
    "use layer.BatchNorm (same statistics at every step), in eval mode.")

_sample_norm_rule = _breaks_for(
    _SAMPLE_NORMS, "sample-normalisation",
    "it divides by statistics of its own input, which is not affine in the input.",
    "use BatchNorm (eval mode), which is affine.")


def _batch_norm_rule(module: nn.Module) -> Optional[_Verdict]:
    if not isinstance(module, nn.modules.batchnorm._BatchNorm):
        return None
    if not module.track_running_stats:
        return _report(
            "batch-statistics",
            "without running statistics it always normalises with batch statistics, and those "
            "of the averaged currents differ from those of the spike currents.",
            "build it with track_running_stats=True and compare/deploy in eval mode.")
    if module.training:
        return _report(
            "batch-statistics",
            "in train mode it normalises with batch statistics, and those of the averaged "
            "currents differ from those of the spike currents. This is fine for SAF training; "
            "it is exact again in eval mode, with the running statistics.",
            "nothing for training; call model.eval() before compare_with_lif or deployment.",
            effect="train-mode")
    return _EXACT


def _attention_rule(module: nn.Module) -> Optional[_Verdict]:
    if not (isinstance(module, _ATTENTION) or "attention" in type(module).__name__.lower()):
        return None
    return _report(
        "spike-product",
        "attention multiplies spike tensors (e.g. (V K^T) Q); the product of weighted firing "
        "rates is not the weighted rate of the product, so the LIF twin's spikes differ.",
        "no exact SAF form: SAF still trains the model, but evaluate and deploy it as the SAF "
        "network (or train it with BPTT/OTTT if LIF deployment matters).")


def _connect_function_rule(module: nn.Module) -> Optional[_Verdict]:
    cnf = getattr(module, "cnf", None)
    if not isinstance(cnf, str):
        return None
    if cnf == "ADD":
        return _EXACT  # a SEW block adding its branches: a residual add is exact
    return _report(
        "connect-function",
        f"SEW connect function {cnf!r} multiplies two spike tensors (AND: x*y, IAND: x*(1-y)); "
        "the product of rates is not the rate of the product.",
        "build the SEW ResNet with cnf='ADD' (a residual add is exact).")


def _activation_rule(module: nn.Module) -> Optional[_Verdict]:
    if not _is_activation(module):
        return None
    return _report(
        "nonlinear-activation",
        "a nonlinearity between neurons does not commute with the weighted average.",
        "remove it: the spiking neurons must be the only nonlinearity.")


def _dropout_rule(module: nn.Module) -> Optional[_Verdict]:
    if not isinstance(module, nn.modules.dropout._DropoutNd):
        return None
    if module.training and module.p > 0:
        return _report(
            "dropout-mask",
            "torch dropout draws a new mask at every call, so the mask changes over time steps "
            "(exact in eval mode, where it is the identity).",
            "for training, layer.Dropout keeps one mask until reset_net; for comparing and "
            "deploying, call model.eval().",
            effect="train-mode")
    return _EXACT


_LIF_DELAYED_CONTAINERS = (layer.LinearRecurrentContainer, layer.ElementWiseRecurrentContainer,
                           FeedbackContainer)


def _recurrent_rule(module: nn.Module) -> Optional[_Verdict]:
    """Delayed containers: exact when their element-wise function is affine and, holding SAF
    neurons, they are the SAF twins (what they wrap is examined on its own)."""
    saf_twin = type(module) in SAF_DELAYED_CONTAINERS
    if not (saf_twin or type(module) in _LIF_DELAYED_CONTAINERS):
        return None  # a subclass may compute anything: the state rule calls it unproven
    function = getattr(module, "element_wise_function", None)
    problem = None if function is None else element_wise_problem(function)
    if problem is not None:
        return _report("nonlinear-recurrence", problem,
                       "use an affine element-wise function (torch.add, lambda y, x: y + x, ...).")
    if not saf_twin and any(isinstance(m, SAFNode) for m in module.modules()):
        return _report(
            "delayed-rate",
            "SpikingJelly's container feeds its SAF neurons Abar[t-1], where the LIF network they "
            "must reproduce integrates (c[t-1]/c[t]) Abar[t-1]; and it keeps the graph of y[t-1] "
            "across steps, so SAF's per-step backward fails on the second step.",
            "to_saf(model) swaps it for its SAF twin (spikingjelly_saf.recurrent).")
    return _EXACT


def _state_rule(module: nn.Module) -> Optional[_Verdict]:
    if isinstance(module, _TIME_SAFE_STATEFUL):
        return _EXACT
    if not isinstance(module, base.MemoryModule):
        return None
    return _report(
        "unknown-state",
        "it keeps its own state across time steps, so it may not be fixed over time; SAF "
        "cannot vouch for it.",
        "check it with compare_with_lif(model, x_seq), or replace it.", effect="unproven")


def _known_affine_rule(module: nn.Module) -> Optional[_Verdict]:
    if isinstance(module, _AFFINE + _CONTAINERS) and _defined_in_trusted_code(type(module)):
        return _EXACT
    if next(module.children(), None) is not None:
        return _EXACT  # a composite: its children are examined; its own forward is in the notes
    return None


def _unproven(module: nn.Module) -> _Verdict:
    name = type(module).__name__
    return _report(
        "unproven",
        f"SAF does not know {name} to be affine in its input and fixed over time "
        "(a recurrent layer, a bilinear map, unpooling with indices and most custom layers are "
        "not), so it cannot vouch for the LIF twin's spikes.",
        "measure it with compare_with_lif(model, x_seq); if you know it is affine and fixed over "
        f"time, say so with check_exactness(model, trust=[{name}]).",
        effect="unproven")


#: The rules in order, the most specific first; the first that has an opinion decides. A module
#: no rule knows is reported as unproven (the report is an allow-list).
_RULES = (_neuron_rule, _max_pool_rule, _power_pool_rule, _time_varying_norm_rule,
          _batch_norm_rule, _sample_norm_rule, _attention_rule, _connect_function_rule,
          _activation_rule, _dropout_rule, _recurrent_rule, _state_rule, _known_affine_rule)


def _examine(name: str, module: nn.Module, trusted: tuple[type, ...]) -> Optional[Finding]:
    """The finding for one module, or ``None`` when it is exact."""
    if trusted and isinstance(module, trusted) and not is_neuron(module):
        return None
    verdict = next((v for v in (rule(module) for rule in _RULES) if v is not None), None)
    verdict = verdict or _unproven(module)
    return None if verdict.finding is None else _finding(name, module, *verdict.finding)


def _custom_forward_note(model: nn.Module, trusted: tuple[type, ...]) -> Optional[str]:
    classes = []
    for _, module in _walk(model):
        cls = type(module)
        if (is_neuron(module) or (trusted and isinstance(module, trusted))
                or next(module.children(), None) is None or _defined_in_trusted_code(cls)):
            continue
        if cls.__name__ not in classes:
            classes.append(cls.__name__)
    if not classes:
        return None
    return (f"forward() of {', '.join(classes)} is your code: check_exactness examines the modules "
            "it holds, not operations written inline there (torch.max, x * y, ...); "
            "compare_with_lif(model, x_seq) measures the equivalence directly.")


def check_exactness(model: nn.Module, trust: Iterable[type] = ()) -> ExactnessReport:
    r"""
    **API Language** - :ref:`中文 <check_exactness-cn>` | :ref:`English <check_exactness-en>`

    ----

    .. _check_exactness-cn:

    * **中文**

    列出破坏（或无法确认）SAF 与 LIF 网络等价性（定理 1）的模块。报告基于白名单：只有已知对输入仿射且不随时间
    变化的模块（卷积/全连接、eval 模式的 BatchNorm、平均池化、展平、时间共享掩码的 dropout、容器……）被视为精确；
    已知会破坏等价性的模块（MaxPool、SEW 的 AND/IAND、脉冲乘积、硬复位等）列为 ``"breaks"``；
    train 模式的 BatchNorm 统计量列为 ``"train-mode"`` （训练时无妨，eval 模式下重新精确）；
    其余未知模块（RNN、Bilinear、MaxUnpool、自定义层……）列为 ``"unproven"``。结果可 ``print``
    （相同的发现合并，先列出破坏等价性的），也可作为 :class:`Finding` 列表读取。

    ----

    .. _check_exactness-en:

    * **English**

    List the modules of ``model`` that break, or may break, SAF's equivalence with the LIF network
    of the same weights (Theorem 1). The check is an allow-list: only modules known to be affine
    in their input and fixed over time (Linear/Conv and SpikingJelly's wrappers of them, eval-mode
    BatchNorm, average pooling, flatten, padding, ``Scale``, dropout with a mask shared over time,
    containers, SEW ``ADD`` blocks, ``InputAverage``) count as exact. Every finding has an
    ``effect``:

    * ``"breaks"``: known to break it: MaxPool, SEW AND/IAND, products of spike tensors
      (attention), hard-reset and other unsupported neurons, mixed time constants, nonlinear
      activations between neurons, time-varying or per-sample normalisation, BatchNorm without
      running statistics;
    * ``"train-mode"``: BatchNorm with batch statistics and torch dropout, in train mode only.
      That is fine for SAF training; comparing and deploying happen in eval mode, where they are
      exact;
    * ``"unproven"``: anything it does not know (``nn.RNN``, ``nn.LSTM``, ``nn.Bilinear``,
      ``nn.MaxUnpool2d``, your own layers, stateful modules): not exact until measured.

    It works on a SAF model and on a LIF model before :func:`~spikingjelly_saf.to_saf`. The
    result prints as text, grouped by kind with what breaks exactness first, and reads as a
    sequence of :class:`Finding` (module, type, kind, reason, fix, effect).

    :param model: the network
    :param trust: module classes you know to be affine in their input and fixed over time; they
        are not reported
    :return: the report
    """
    require_module(model, "check_exactness")
    trusted = tuple(trust)
    for cls in trusted:
        if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
            raise TypeError(f"trust must list nn.Module classes, got {cls!r}.")
    findings = []
    for name, module in _walk(model):
        finding = _examine(name, module, trusted)
        if finding is not None:
            findings.append(finding)
    findings += _mixed_time_constants(model)
    order = {effect: i for i, effect in enumerate(EFFECTS)}
    findings.sort(key=lambda f: order[f.effect])  # stable: module order within each effect
    custom = _custom_forward_note(model, trusted)
    notes = (_SCOPE_NOTE if custom is None else custom,)
    return ExactnessReport(tuple(findings), type(model).__name__, notes)


def _time_constant(module: nn.Module) -> Optional[float]:
    if isinstance(module, (SAFNode, InputAverage)) or type(module) in CONVERTIBLE_NEURONS:
        return math.inf if isinstance(module, neuron.IFNode) else float(module.tau)
    return None


def _mixed_time_constants(model: nn.Module) -> list[Finding]:
    """Neurons whose tau differs from the model's most common one.

    Theorem 1 accumulates a neuron's input with that neuron's own leak; it is exact when the
    neurons feeding it (and the input average) use the same leak.
    """
    taus = [(name, module, tau) for name, module in _walk(model)
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


@dataclass(frozen=True, repr=False)
class LIFComparison:
    """What :func:`compare_with_lif` measured; ``print`` it for a summary.

    :param spike_mismatches: ``{neuron: (different, compared)}``: how many spike positions (steps x
        batch x units) differ between the SAF model's recovered spikes and the LIF twin's, out of
        how many were compared
    :param spike_counts: ``{neuron: spikes the LIF twin's neuron fired}``
    :param output_difference: the largest absolute difference between the LIF outputs and the SAF
        outputs' instantaneous values
    :param saf_spike_counts: ``{neuron: spikes the SAF model's neuron fired}``
    :param findings: what :func:`check_exactness` names on the model in eval mode
    :param time_varying_input: whether ``x_seq`` changes over the time steps
    :param input_average: whether the SAF model has an ``InputAverage``

    A neuron that fires in neither network (silent), or at every position in both (saturated),
    matches trivially: its equality proves nothing about what lies before it.
    :attr:`spikes_equal` says whether every neuron matched; :attr:`conclusive` whether, in
    addition, every neuron was exercised.
    """

    spike_mismatches: dict
    spike_counts: dict
    output_difference: float
    saf_spike_counts: dict = field(default_factory=dict)
    findings: tuple = ()
    time_varying_input: bool = False
    input_average: bool = False

    @property
    def spikes_equal(self) -> bool:
        return all(different == 0 for different, _ in self.spike_mismatches.values())

    def mismatched_neurons(self) -> list[str]:
        return [name for name, (different, _) in self.spike_mismatches.items() if different]

    def _fired(self, name: str) -> tuple[int, int]:
        return self.saf_spike_counts.get(name, self.spike_counts[name]), self.spike_counts[name]

    def silent_neurons(self) -> list[str]:
        """Neurons that fired no spike in either network: their equality proves nothing."""
        return [name for name in self.spike_mismatches if self._fired(name) == (0, 0)]

    def saturated_neurons(self) -> list[str]:
        """Neurons that fired at every position in both networks: equal, but trivially so."""
        return [name for name, (_, total) in self.spike_mismatches.items()
                if total and self._fired(name) == (total, total)]

    def exercised_neurons(self) -> list[str]:
        """Neurons whose comparison means something: they fired, but not everywhere."""
        trivial = set(self.silent_neurons()) | set(self.saturated_neurons())
        return [name for name in self.spike_mismatches if name not in trivial]

    @property
    def conclusive(self) -> bool:
        """Every neuron matched and every neuron was exercised."""
        return self.spikes_equal and len(self.exercised_neurons()) == len(self.spike_mismatches)

    def hints(self) -> list[str]:
        """What the measurement suggests doing, one sentence each."""
        hints = []
        mismatched = self.mismatched_neurons()
        first = next(iter(self.spike_mismatches), None)
        if (mismatched and mismatched[0] == first and self.time_varying_input
                and not self.input_average):
            hints.append(
                f"the input changes over time and already the first neuron '{first}' differs: a "
                "LIF neuron integrates the raw frames, SAF needs their running weighted average. "
                "Put InputAverage in front of the model (to_saf(model, insert_input_average=True), "
                "or nn.Sequential(InputAverage(tau), model)).")
        silent = self.silent_neurons()
        if silent:
            hints.append(
                f"{len(silent)} neuron layer(s) never fired ({_names(silent)}): their equality "
                "proves nothing. Use an input (or weights) that makes every layer fire.")
        saturated = self.saturated_neurons()
        if saturated:
            hints.append(f"{len(saturated)} neuron layer(s) fired at every position "
                         f"({_names(saturated)}): equal, but trivially so.")
        broken = [f for f in self.findings if f.effect != "train-mode"]
        named = _names([f"'{f.module}' ({f.kind})" for f in broken])
        if broken and (self.spikes_equal or silent):
            hints.append(f"check_exactness still names {named}: equal spikes on this input do not "
                         "make those modules exact.")
        elif broken:
            hints.append(f"check_exactness names {named}: start there.")
        return hints

    def __str__(self) -> str:
        total = len(self.spike_mismatches)
        exercised = self.exercised_neurons()
        mismatched = self.mismatched_neurons()
        if mismatched:
            head = (f"LIF twin: spikes differ in {len(mismatched)} of {total} neuron layer(s), "
                    f"first in '{mismatched[0]}'.")
        elif self.conclusive:
            head = f"LIF twin: spikes equal in all {total} neuron layer(s), every one exercised."
        elif not exercised:
            head = (f"LIF twin: spikes equal in all {total} neuron layer(s), but none was "
                    "exercised: not conclusive.")
        else:
            head = (f"LIF twin: spikes equal in all {total} neuron layer(s), but only "
                    f"{len(exercised)} {'was' if len(exercised) == 1 else 'were'} exercised "
                    f"({_names(exercised)}): not conclusive.")
        lines = [head, f"  largest output difference: {self.output_difference:.3g}"]
        for name in mismatched[:_NAMES_SHOWN]:
            different, compared = self.spike_mismatches[name]
            lines.append(f"  {name}: {different} of {compared} spike positions differ")
        if len(mismatched) > _NAMES_SHOWN:
            lines.append(f"  ... and {len(mismatched) - _NAMES_SHOWN} more neuron layer(s)")
        lines += [f"  - {hint}" for hint in self.hints()]
        return "\n".join(lines)

    def __repr__(self) -> str:
        return (f"LIFComparison(spikes_equal={self.spikes_equal}, exercised="
                f"{len(self.exercised_neurons())}/{len(self.spike_mismatches)}, mismatched="
                f"{len(self.mismatched_neurons())}, output_difference={self.output_difference:.3g})")


def _run(model: nn.Module, x_seq: torch.Tensor, step_mode: str
         ) -> tuple[torch.Tensor, "collections.OrderedDict[str, torch.Tensor]"]:
    with SpikeRecorder(model, keep="spikes") as recorder:
        functional.reset_net(model)
        try:
            with torch.no_grad():
                if step_mode == "m":
                    y = model(x_seq.transpose(0, 1))
                    y_seq = (y[0] if isinstance(y, (list, tuple)) else y).transpose(0, 1)
                else:
                    outputs = []
                    for x in x_seq.transpose(0, 1):
                        y = model(x)
                        outputs.append(y[0] if isinstance(y, (list, tuple)) else y)
                    y_seq = torch.stack(outputs, 1)
        finally:
            functional.reset_net(model)
    return y_seq, recorder.spike_seq()


def _check_sequence(x_seq) -> None:
    if not isinstance(x_seq, torch.Tensor):
        raise TypeError(f"x_seq must be a tensor [B, T, *], got {type(x_seq).__name__}.")
    if x_seq.dim() < 2:
        raise ValueError(
            f"x_seq must have shape [B, T, *] (batch, time steps, then the shape the model takes "
            f"per step, e.g. [B, T, C, H, W]); got shape {tuple(x_seq.shape)}. For one static "
            "input x of shape [B, *], pass x.unsqueeze(1).expand(-1, T, *x.shape[1:]).")
    if x_seq.shape[0] == 0 or x_seq.shape[1] == 0:
        raise ValueError(f"x_seq [B, T, *] needs at least one sample and one time step; got shape "
                         f"{tuple(x_seq.shape)}.")


def compare_with_lif(model: nn.Module, x_seq: torch.Tensor,
                     lif_model: Optional[nn.Module] = None) -> LIFComparison:
    r"""Run the SAF ``model`` and its LIF twin in eval mode and compare spikes and outputs.

    * **中文**: ``x_seq`` 形状为 ``[B, T, *]``。LIF 孪生网络默认为 ``to_lif(model)``。SAF 的脉冲由
      ``SAFNode.spikes`` 恢复，SAF 输出通过 :math:`o[t] = c[t]\bar O[t] - \lambda c[t-1]\bar O[t-1]`
      （最后一个 ``SAFNode`` 的 :math:`\lambda`）与 LIF 输出比较。从未发放的层什么也证明不了，结果会列出它们；
      ``print`` 结果可得摘要。
    * **English**: ``x_seq`` is ``[B, T, *]``. The twin defaults to ``to_lif(model)``. SAF spikes are
      recovered through ``SAFNode.spikes``; the SAF output is compared through its instantaneous
      value :math:`o[t] = c[t]\bar O[t] - \lambda c[t-1]\bar O[t-1]`, with the :math:`\lambda` of the
      last ``SAFNode`` (the one feeding the output layer). Neither model's mode or state changes.
      A neuron layer that never fires matches trivially and proves nothing: the result says which
      layers were exercised (``conclusive``, ``silent_neurons()``), what
      :func:`check_exactness` still names, and, when the first layer already differs on an input
      that changes over time, that an ``InputAverage`` is missing. ``print`` it for a summary.
    """
    require_module(model, "compare_with_lif")
    if lif_model is not None:
        require_module(lif_model, "compare_with_lif", "lif_model")
    _check_sequence(x_seq)
    nodes = [m for m in model.modules() if isinstance(m, SAFNode)]
    if not nodes:
        raise ValueError("model contains no SAFNode; convert it with spikingjelly_saf.to_saf first.")
    modes = {m.step_mode for m in stepping_modules(model)}
    if len(modes) != 1:
        raise ValueError(f"model mixes step modes {sorted(modes)}; use functional.set_step_mode.")
    step_mode = modes.pop()
    if lif_model is None:
        lif_model = to_lif(model, memoryless="keep")
    # Per module: a model may hold, e.g., frozen BatchNorm layers inside a training network.
    modes_before = [(m, m.training) for net in (model, lif_model) for m in net.modules()]
    model.eval()
    lif_model.eval()
    try:
        findings = tuple(check_exactness(model))
        saf_out, saf_spikes = _run(model, x_seq, step_mode)
        lif_out, lif_spikes = _run(lif_model, x_seq, step_mode)
    finally:
        for module, training in modes_before:
            module.training = training
    if set(saf_spikes) != set(lif_spikes):
        raise ValueError("the LIF model's neurons do not match the SAF model's by name: "
                         f"{sorted(set(saf_spikes) ^ set(lif_spikes))}.")
    mismatches = {
        name: (int((saf_spikes[name] != lif_spikes[name]).sum()), saf_spikes[name].numel())
        for name in saf_spikes
    }
    counts = {name: int(lif_spikes[name].sum()) for name in saf_spikes}
    saf_counts = {name: int(spikes.sum()) for name, spikes in saf_spikes.items()}
    recovered = saf_functional.recover_instantaneous_seq(saf_out.transpose(0, 1), nodes[-1].decay).transpose(0, 1)
    difference = float((recovered - lif_out).abs().max()) if lif_out.numel() else 0.0
    time_varying = bool(x_seq.shape[1] > 1 and (x_seq != x_seq[:, :1]).any())
    has_input_average = any(isinstance(m, InputAverage) for m in model.modules())
    return LIFComparison(mismatches, counts, difference, saf_counts, findings, time_varying,
                         has_input_average)
