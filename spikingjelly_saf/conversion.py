r"""
Conversion between SpikingJelly LIF/IF networks and SAF networks.

**API Language** - 中文 | English

* **中文**: ``to_saf`` 把模型中的软复位 ``LIFNode`` / ``OTTTLIFNode`` / ``SLTTLIFNode`` / ``IFNode`` 换成
  ``SAFNode``；``to_lif`` 把 ``SAFNode`` 换回 ``LIFNode`` / ``IFNode`` 用于部署。两者都保留全部权重。
* **English**: ``to_saf`` swaps the soft-reset ``LIFNode`` / ``OTTTLIFNode`` / ``SLTTLIFNode`` /
  ``IFNode`` of a model for ``SAFNode``; ``to_lif`` swaps ``SAFNode`` back to ``LIFNode`` / ``IFNode``
  for deployment. Both keep every weight and every module name, so ``state_dict`` keys do not change.
"""

from __future__ import annotations

import copy
import math
import warnings
from typing import Callable, NamedTuple, Optional

import torch
import torch.nn as nn
from spikingjelly.activation_based import functional, layer, neuron
from spikingjelly.activation_based.neuron.base_node import NonSpikingBaseNode

from .layer import InputAverage
from .neuron import FIXED_LEAK_SENTENCE, SAFNode
from .recurrent import (FeedbackContainer, SAFElementWiseRecurrentContainer, SAFFeedbackContainer,
                        SAFLinearRecurrentContainer, element_wise_problem,
                        stepping_modules)
from ._validation import require_module

__all__ = ["to_saf", "to_lif", "CONVERTIBLE_NEURONS", "MAX_POOLS"]

#: Neuron classes ``to_saf`` converts (exact class match: a subclass may change the dynamics).
CONVERTIBLE_NEURONS = (neuron.LIFNode, neuron.OTTTLIFNode, neuron.SLTTLIFNode, neuron.IFNode)

#: Every max-style pool. None is linear, so none keeps SAF exact between neurons (the one list
#: ``to_saf`` and ``check_exactness`` share); ``to_saf(replace_maxpool=True)`` swaps the plain and
#: adaptive ones for average pools.
MAX_POOLS = (nn.modules.pooling._MaxPoolNd, nn.modules.pooling._AdaptiveMaxPoolNd,
             nn.FractionalMaxPool2d, nn.FractionalMaxPool3d)

_PLAIN_MAX_POOLS = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)
_ADAPTIVE_MAX_POOLS = (nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d)
_SJ_AVG_POOLS = {1: layer.AvgPool1d, 2: layer.AvgPool2d, 3: layer.AvgPool3d}
_SJ_ADAPTIVE_AVG_POOLS = {1: layer.AdaptiveAvgPool1d, 2: layer.AdaptiveAvgPool2d,
                          3: layer.AdaptiveAvgPool3d}
_TORCH_AVG_POOLS = {1: nn.AvgPool1d, 2: nn.AvgPool2d, 3: nn.AvgPool3d}
_TORCH_ADAPTIVE_AVG_POOLS = {1: nn.AdaptiveAvgPool1d, 2: nn.AdaptiveAvgPool2d,
                             3: nn.AdaptiveAvgPool3d}


class Issue(NamedTuple):
    """Why a module breaks (or may break) SAF's LIF equivalence: a category, the reason, the fix."""

    kind: str
    reason: str
    fix: str


def is_neuron(module: nn.Module) -> bool:
    """A spiking neuron of SpikingJelly or SAF: its internals are dynamics, not layers."""
    return isinstance(module, (SAFNode, neuron.BaseNode, NonSpikingBaseNode))


def neuron_issue(module: nn.Module, soft_reset: bool = False) -> Optional[Issue]:
    """The one rule for neurons, used by ``to_saf`` (to refuse) and ``check_exactness`` (to report).

    ``None`` when ``module`` is not a neuron, is a ``SAFNode``, or is a neuron ``to_saf`` converts
    (with ``soft_reset=True`` hard-reset ones too, as they are then trained with the soft reset).
    """
    if isinstance(module, SAFNode) or not is_neuron(module):
        return None
    name = type(module).__name__
    if type(module) in CONVERTIBLE_NEURONS:
        v_reset = getattr(module, "v_reset", None)
        if v_reset is None or soft_reset:
            return None
        return Issue(
            "hard-reset",
            f"it uses a hard reset (v_reset={v_reset}); a hard reset is not linear in the spike "
            "train, so spike accumulation cannot express it.",
            f"build it as neuron.{name}(v_reset=None, ...) (soft reset) and train again, or "
            f"convert anyway with to_saf(model, soft_reset=True) to train a soft-reset {name} "
            "network instead of the hard-reset one.")
    if isinstance(module, neuron.ParametricLIFNode):
        return Issue(
            "learnable-tau",
            f"its leak is learned (a parameter). {FIXED_LEAK_SENTENCE}",
            "build it with neuron.LIFNode(tau=<a number>, v_reset=None) or spiking_neuron=SAFNode "
            "with a fixed tau.")
    return Issue(
        "unsupported-neuron",
        f"SAF reproduces {', '.join(c.__name__ for c in CONVERTIBLE_NEURONS)} with soft reset only; "
        f"the dynamics of {name} differ.",
        "build the model with one of those (v_reset=None) or with spiking_neuron=SAFNode.")


def _pool_dimension(pool: nn.Module) -> int:
    for dim, classes in enumerate(zip(_PLAIN_MAX_POOLS, _ADAPTIVE_MAX_POOLS), start=1):
        if isinstance(pool, classes):
            return dim
    raise TypeError(f"{type(pool).__name__} is not a max pool with an average-pool twin.")


def _is_spikingjelly_module(module: nn.Module) -> bool:
    return type(module).__module__.startswith("spikingjelly.")


def _maxpool_problem(name: str, module: nn.Module) -> Optional[str]:
    if not isinstance(module, MAX_POOLS):
        return None
    what = f"'{name}' ({type(module).__name__})"
    if not isinstance(module, _PLAIN_MAX_POOLS + _ADAPTIVE_MAX_POOLS):
        return (f"{what} draws random pooling regions; no average pool has its geometry. Replace it "
                "by hand (e.g. with an AvgPool of a fixed kernel) and train again.")
    if module.return_indices:
        return f"{what} returns indices; no AvgPool can replace it."
    if isinstance(module, _PLAIN_MAX_POOLS) and module.dilation not in (1, (1,), (1, 1), (1, 1, 1)):
        return (f"{what} has dilation={module.dilation}; AvgPool has no dilation, so it cannot keep "
                "the same geometry.")
    return None


def _average_pool_like(pool: nn.Module) -> nn.Module:
    r"""An average pool with the output geometry of ``pool``.

    Padding is excluded from the average (``count_include_pad=False``): like max pooling, a
    border window then only looks at real inputs.
    """
    dim = _pool_dimension(pool)
    spikingjelly = _is_spikingjelly_module(pool)
    if isinstance(pool, _ADAPTIVE_MAX_POOLS):
        if spikingjelly:
            return _SJ_ADAPTIVE_AVG_POOLS[dim](pool.output_size, step_mode=pool.step_mode)
        return _TORCH_ADAPTIVE_AVG_POOLS[dim](pool.output_size)
    kwargs = dict(kernel_size=pool.kernel_size, stride=pool.stride, padding=pool.padding,
                  ceil_mode=pool.ceil_mode, count_include_pad=False)
    if spikingjelly:
        return _SJ_AVG_POOLS[dim](**kwargs, step_mode=pool.step_mode)
    return _TORCH_AVG_POOLS[dim](**kwargs)


def _replace_modules(model: nn.Module, replacement_for: Callable[[str, nn.Module], Optional[nn.Module]]
                     ) -> nn.Module:
    """Replace every submodule for which ``replacement_for(name, module)`` returns a module.

    Bottom-up, so that a replacement built from a module's children (a recurrent container's
    twin) is built from children already replaced. A module shared by several parents is replaced
    by one shared replacement.
    """
    replaced: dict[int, Optional[nn.Module]] = {}
    for parent_name, parent in reversed(list(model.named_modules(remove_duplicate=False))):
        for child_name, child in list(parent._modules.items()):
            if child is None:
                continue
            if id(child) not in replaced:
                full_name = f"{parent_name}.{child_name}" if parent_name else child_name
                replaced[id(child)] = replacement_for(full_name, child)
            new = replaced[id(child)]
            if new is not None:
                setattr(parent, child_name, new)
    root = replacement_for("", model)
    return model if root is None else root


def _refresh_reset_cache(model: nn.Module) -> None:
    # reset_net caches the resettable modules of every net it was called on, submodules included:
    # after a swap those lists still point at the old neurons.
    for module in model.modules():
        functional.invalidate_reset_cache(module)
    functional.reset_net(model)


def _raise_problems(problems: list[str], what: str) -> None:
    if problems:
        raise ValueError(f"{what} cannot convert this model:\n  - " + "\n  - ".join(problems))


def _listed(names: list, shown: int = 3) -> str:
    listed = ", ".join(f"'{name}'" for name in names[:shown])
    return listed + (f" and {len(names) - shown} more" if len(names) > shown else "")


def _named_group(names: list, what: str) -> str:
    """``'a' (what)`` for one module, ``N x (what): 'a', 'b', 'c' and K more`` for many."""
    return f"{_listed(names)} ({what})" if len(names) == 1 else f"{len(names)} x ({what}): {_listed(names)}"


def _grouped_neuron_problems(found: "dict[tuple, list[str]]") -> list[str]:
    """One paragraph per (neuron type, reason, fix), naming the first few neurons and the count:
    a ResNet's dozens of hard-reset neurons share one finding."""
    paragraphs = []
    for (kind, reason, fix), names in found.items():
        if len(names) == 1:
            paragraphs.append(f"{_listed(names)} ({kind}): {reason} Fix: {fix}")
        else:
            paragraphs.append(f"{len(names)} {kind}s ({_listed(names)}), each: {reason} Fix: {fix}")
    return paragraphs


def _saf_node_from(node: nn.Module) -> SAFNode:
    tau = math.inf if isinstance(node, neuron.IFNode) else node.tau
    saf = SAFNode(
        tau=tau,
        decay_input=getattr(node, "decay_input", False) if math.isfinite(tau) else False,
        v_threshold=node.v_threshold,
        v_reset=None,
        surrogate_function=node.surrogate_function,
        detach_reset=node.detach_reset,
        step_mode=node.step_mode,
        store_v_seq=node.store_v_seq,
    )
    return saf.train(node.training)


def _recurrent_problem(name: str, module: nn.Module) -> Optional[str]:
    if type(module) is not layer.ElementWiseRecurrentContainer:
        return None
    problem = element_wise_problem(module.element_wise_function)
    if problem is None:
        return None
    return (f"'{name}' (ElementWiseRecurrentContainer): {problem} Fix: use an affine element-wise "
            "function (torch.add, lambda y, x: y + x, ...).")


def _linear_recurrent_like(cls, container: nn.Module) -> nn.Module:
    # The constructor draws an initialisation for rc, which is replaced at once: keep the caller's
    # random stream as it was.
    with torch.random.fork_rng(devices=[]):
        new = cls(container.sub_module, container.rc.out_features, container.sub_module_out_features,
                  bias=container.rc.bias is not None, step_mode=container.step_mode)
    new.rc = container.rc
    return new.train(container.training)


def _saf_container_from(module: nn.Module) -> Optional[nn.Module]:
    """The SAF twin of a delayed container, around the same (already converted) children."""
    kind = type(module)
    if kind is layer.LinearRecurrentContainer:
        return _linear_recurrent_like(SAFLinearRecurrentContainer, module)
    if kind is layer.ElementWiseRecurrentContainer:
        return SAFElementWiseRecurrentContainer(module.sub_module, module.element_wise_function,
                                                module.step_mode).train(module.training)
    if kind is FeedbackContainer:
        return SAFFeedbackContainer(module.entry, module.body, module.feedback,
                                    module.step_mode).train(module.training)
    return None


def _lif_container_from(module: nn.Module) -> Optional[nn.Module]:
    """The ordinary (SpikingJelly / LIF) twin of a SAF delayed container."""
    kind = type(module)
    if kind is SAFLinearRecurrentContainer:
        return _linear_recurrent_like(layer.LinearRecurrentContainer, module)
    if kind is SAFElementWiseRecurrentContainer:
        return layer.ElementWiseRecurrentContainer(module.sub_module, module.element_wise_function,
                                                   module.step_mode).train(module.training)
    if kind is SAFFeedbackContainer:
        return FeedbackContainer(module.entry, module.body, module.feedback,
                                 module.step_mode).train(module.training)
    return None


def to_saf(model: nn.Module, replace_maxpool: bool = False, insert_input_average: bool = False,
           inplace: bool = False, soft_reset: bool = False) -> nn.Module:
    r"""
    **API Language** - :ref:`中文 <to_saf-cn>` | :ref:`English <to_saf-en>`

    ----

    .. _to_saf-cn:

    * **中文**

    把模型中的 ``LIFNode``、``OTTTLIFNode``、``SLTTLIFNode``、``IFNode`` （必须是软复位）替换为 ``SAFNode``，
    保留 ``tau``、``v_threshold``、``decay_input``、替代函数、``detach_reset`` 与步进模式；``IFNode`` 变为
    ``SAFNode(tau=math.inf)``。全部参数与模块名保持不变。硬复位神经元（SpikingJelly 的 ``LIFNode``/``IFNode``
    默认 ``v_reset=0.0``）默认被拒绝并说明原因；``soft_reset=True`` 时照样转换，此后训练的是软复位网络。
    SpikingJelly 的 ``LinearRecurrentContainer``、``ElementWiseRecurrentContainer`` （逐元素函数须为仿射，否则
    拒绝并说明原因）与 :class:`~spikingjelly_saf.recurrent.FeedbackContainer` 换成其 SAF 版本，延迟的值带上
    :math:`c[t-1]/c[t]` 并在步边界处切断计算图（``docs/theory.md``）。
    转换后 ``reset_net`` 会重置新的神经元。``OTTTSequential`` 照常工作（``SAFNode`` 输出张量，
    它被直接传递）。

    :param model: 要转换的网络
    :param replace_maxpool: 是否把 MaxPool 换成同几何形状的 AvgPool（这会改变网络，之后应再训练）
    :param insert_input_average: 为序列输入返回 ``nn.Sequential(InputAverage, model)``
    :param inplace: ``False`` 时先深拷贝，原模型不变
    :param soft_reset: 为 ``True`` 时把硬复位神经元也转换为（软复位的）``SAFNode``，并发出警告
    :return: 转换后的模型

    ----

    .. _to_saf-en:

    * **English**

    Replace every ``LIFNode``, ``OTTTLIFNode``, ``SLTTLIFNode`` and ``IFNode`` (soft reset) of
    ``model`` by a ``SAFNode`` with the same ``tau``, ``v_threshold``, ``decay_input``, surrogate,
    ``detach_reset`` and step mode; an ``IFNode`` becomes ``SAFNode(tau=math.inf)``. Every parameter
    and buffer and every module name is kept, so the ``state_dict`` loads both ways. Hard-reset
    neurons and neuron types SAF cannot express are refused, all at once, with the module names.

    SpikingJelly's ``LIFNode``, ``IFNode`` and ``SLTTLIFNode`` default to ``v_reset=0.0``, a hard
    reset that SAF cannot express, so stock examples are refused by default. ``soft_reset=True``
    converts them anyway, for a model you are about to (re)train: SAF then trains the soft-reset
    network, and :func:`to_lif` deploys it as a soft-reset neuron (``v_reset=None``), not as the
    hard-reset original. A ``UserWarning`` names every neuron whose reset changed.

    SpikingJelly's ``LinearRecurrentContainer`` and ``ElementWiseRecurrentContainer`` and
    :class:`~spikingjelly_saf.recurrent.FeedbackContainer` become their SAF twins
    (:mod:`spikingjelly_saf.recurrent`), whose delayed value carries :math:`c[t-1]/c[t]` and is
    detached at the step boundary (``docs/theory.md``, "Delayed connections"); an
    ``ElementWiseRecurrentContainer`` whose function is not affine is refused with the reason.
    :func:`to_lif` swaps them back.

    Afterwards ``reset_net`` resets the new neurons. ``OTTTSequential`` containers keep working:
    a ``SAFNode`` returns a tensor, which ``OTTTSequential`` passes straight through.

    Use :func:`~spikingjelly_saf.check_exactness` to see which other modules break the LIF
    equivalence.

    :param model: the network to convert
    :param replace_maxpool: replace every MaxPool / AdaptiveMaxPool by an average pool of the same
        geometry (padding excluded from the average). This changes the network: train or fine-tune
        it afterwards.
    :param insert_input_average: for sequence inputs (event frames), return
        ``nn.Sequential(InputAverage(tau, step_mode), model)`` with the ``tau`` and step mode of the
        model's first ``SAFNode``, so the first layer sees the running weighted average of the
        frames. Parameter names then gain the prefix ``"1."``. Not needed for a static input
        repeated at every step.
    :param inplace: convert ``model`` itself; by default a deep copy is converted and ``model`` is
        left unchanged
    :param soft_reset: also convert hard-reset neurons; the network trained from then on is the
        soft-reset one (see above)
    :return: the converted model
    """
    require_module(model, "to_saf")
    if not isinstance(soft_reset, bool):
        raise TypeError(f"soft_reset must be True or False, got {soft_reset!r}.")
    problems, reset_changed, neuron_problems = [], {}, {}
    for name, module in model.named_modules():
        name = name or "<model>"
        issue = neuron_issue(module, soft_reset=soft_reset)
        if issue is not None:
            key = (type(module).__name__, issue.reason, issue.fix)
            neuron_problems.setdefault(key, []).append(name)
        elif replace_maxpool and (problem := _maxpool_problem(name, module)) is not None:
            problems.append(problem)
        elif (problem := _recurrent_problem(name, module)) is not None:
            problems.append(problem)
        elif type(module) in CONVERTIBLE_NEURONS and getattr(module, "v_reset", None) is not None:
            reset_changed.setdefault(f"{type(module).__name__}, v_reset={module.v_reset}", []).append(name)
    _raise_problems(_grouped_neuron_problems(neuron_problems) + problems, "to_saf")
    if reset_changed:
        kinds = sorted({type(m).__name__ for m in model.modules()
                        if type(m) in CONVERTIBLE_NEURONS and getattr(m, "v_reset", None) is not None})
        count = sum(len(names) for names in reset_changed.values())
        warnings.warn(
            f"to_saf(soft_reset=True): {count} hard-reset neuron(s) now use the soft reset: "
            f"{'; '.join(_named_group(names, what) for what, names in reset_changed.items())}. "
            f"The network SAF trains is a soft-reset "
            f"{'/'.join(kinds)} network (v_reset=None), so train it (again); to_lif deploys it "
            "with v_reset=None, not as the hard-reset original.", UserWarning, stacklevel=2)
    if not inplace:
        model = copy.deepcopy(model)

    def replacement_for(name: str, module: nn.Module) -> Optional[nn.Module]:
        if type(module) in CONVERTIBLE_NEURONS:
            return _saf_node_from(module)
        if replace_maxpool and isinstance(module, _PLAIN_MAX_POOLS + _ADAPTIVE_MAX_POOLS):
            return _average_pool_like(module).train(module.training)
        return None

    model = _replace_modules(model, replacement_for)
    # Containers after neurons: a container's SAF twin is built around its converted children.
    model = _replace_modules(model, lambda name, module: _saf_container_from(module))
    if insert_input_average:
        first = next((m for m in model.modules() if isinstance(m, SAFNode)), None)
        if first is None:
            raise ValueError("insert_input_average=True needs a SAFNode in the model to take tau "
                             "and step_mode from; the model has none.")
        # A neuron inside a recurrent container runs single-step whatever the model's mode.
        step_mode = stepping_modules(model)[0].step_mode
        model = nn.Sequential(InputAverage(tau=first.tau, step_mode=step_mode), model)
    _refresh_reset_cache(model)
    return model


def _lif_node_from(node: SAFNode) -> nn.Module:
    common = dict(v_threshold=node.v_threshold, v_reset=None,
                  surrogate_function=node.surrogate_function, detach_reset=node.detach_reset,
                  step_mode=node.step_mode, store_v_seq=node.store_v_seq)
    if math.isinf(node.tau):
        return neuron.IFNode(**common).train(node.training)
    return neuron.LIFNode(tau=node.tau, decay_input=node.decay_input, **common).train(node.training)


def to_lif(model: nn.Module, memoryless: str = "error", inplace: bool = False) -> nn.Module:
    r"""
    **API Language** - :ref:`中文 <to_lif-cn>` | :ref:`English <to_lif-en>`

    ----

    .. _to_lif-cn:

    * **中文**

    把 SAF 训练的模型变为普通 LIF/IF 网络用于部署：每个 ``SAFNode`` 变为同 ``tau``、阈值、``decay_input``、
    替代函数与步进模式的软复位 ``LIFNode`` （``tau=math.inf`` 时为 ``IFNode``）；``InputAverage`` 变为
    ``nn.Identity`` （LIF 网络直接接收原始帧）。权重与模块名不变。eval 模式下其脉冲与 SAF 模型恢复出的
    脉冲完全相同（定理 1，见 :func:`~spikingjelly_saf.check_exactness`）。

    ``LIFNode`` 要求 ``tau > 1``。``tau = 1`` 的 SAF 神经元是无记忆的：它的输出就是其脉冲。
    ``memoryless='error'`` （默认）时报错；``memoryless='keep'`` 时保留这些 ``SAFNode``，结果仍然精确。

    ----

    .. _to_lif-en:

    * **English**

    Turn a SAF-trained model into an ordinary LIF/IF network for deployment: each ``SAFNode``
    becomes a soft-reset ``LIFNode`` with the same ``tau``, threshold, ``decay_input``, surrogate,
    ``detach_reset`` and step mode (an ``IFNode`` for ``tau = math.inf``), and each
    ``InputAverage`` becomes ``nn.Identity`` (the LIF network integrates the raw frames itself).
    Weights and module names are kept. In eval mode its spikes are exactly the SAF model's
    recovered spikes, and its output at step ``t`` is the SAF output's instantaneous value
    :math:`o[t] = c[t]\bar O[t] - \lambda c[t-1]\bar O[t-1]`, wherever
    :func:`~spikingjelly_saf.check_exactness` finds nothing (Theorem 1).

    ``LIFNode`` requires ``tau > 1``. A ``SAFNode`` with ``tau = 1`` is memoryless (:math:`c[t] = 1`), so
    its output *is* its spike train: with ``memoryless='keep'`` such neurons stay ``SAFNode`` and
    the deployed network is still exact; ``memoryless='error'`` (default) refuses them.

    :param model: a network of ``SAFNode``
    :param memoryless: ``'error'`` or ``'keep'``, for ``SAFNode`` with ``tau = 1``
    :param inplace: convert ``model`` itself; by default a deep copy is converted
    :return: the LIF network
    """
    require_module(model, "to_lif")
    if memoryless not in ("error", "keep"):
        raise ValueError(f"memoryless must be 'error' or 'keep', got {memoryless!r}.")
    if not inplace:
        model = copy.deepcopy(model)
    problems = [
        f"'{name or '<model>'}' (SAFNode) has tau=1 (memoryless); LIFNode requires tau > 1. Its "
        "output already is its spike train: pass memoryless='keep' to leave it a SAFNode."
        for name, module in model.named_modules()
        if isinstance(module, SAFNode) and module.tau == 1.0 and memoryless == "error"
    ]
    _raise_problems(problems, "to_lif")

    def replacement_for(name: str, module: nn.Module) -> Optional[nn.Module]:
        if isinstance(module, SAFNode) and module.tau != 1.0:
            return _lif_node_from(module)
        if isinstance(module, InputAverage):
            return nn.Identity()
        return None

    model = _replace_modules(model, replacement_for)
    model = _replace_modules(model, lambda name, module: _lif_container_from(module))
    _refresh_reset_cache(model)
    return model
