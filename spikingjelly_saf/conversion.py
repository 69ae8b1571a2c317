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
from typing import Callable, Optional

import torch.nn as nn
from spikingjelly.activation_based import functional, layer, neuron
from spikingjelly.activation_based.neuron.base_node import NonSpikingBaseNode

from .layer import InputAverage
from .neuron import SAFNode

__all__ = ["to_saf", "to_lif", "CONVERTIBLE_NEURONS"]

#: Neuron classes ``to_saf`` converts (exact class match: a subclass may change the dynamics).
CONVERTIBLE_NEURONS = (neuron.LIFNode, neuron.OTTTLIFNode, neuron.SLTTLIFNode, neuron.IFNode)

_MAX_POOLS = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)
_ADAPTIVE_MAX_POOLS = (nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d)
_SJ_AVG_POOLS = {1: layer.AvgPool1d, 2: layer.AvgPool2d, 3: layer.AvgPool3d}
_SJ_ADAPTIVE_AVG_POOLS = {1: layer.AdaptiveAvgPool1d, 2: layer.AdaptiveAvgPool2d,
                          3: layer.AdaptiveAvgPool3d}
_TORCH_AVG_POOLS = {1: nn.AvgPool1d, 2: nn.AvgPool2d, 3: nn.AvgPool3d}
_TORCH_ADAPTIVE_AVG_POOLS = {1: nn.AdaptiveAvgPool1d, 2: nn.AdaptiveAvgPool2d,
                             3: nn.AdaptiveAvgPool3d}


def _pool_dimension(pool: nn.Module) -> int:
    for dim, classes in enumerate(zip(_MAX_POOLS, _ADAPTIVE_MAX_POOLS), start=1):
        if isinstance(pool, classes):
            return dim
    raise TypeError(f"{type(pool).__name__} is not a max pool.")


def _is_spikingjelly_module(module: nn.Module) -> bool:
    return type(module).__module__.startswith("spikingjelly.")


def _neuron_problem(name: str, module: nn.Module) -> Optional[str]:
    """Why ``module`` cannot become a SAFNode, or ``None`` if it can (or needs nothing)."""
    if isinstance(module, SAFNode):
        return None
    if type(module) in CONVERTIBLE_NEURONS:
        if module.v_reset is not None:
            return (
                f"'{name}' ({type(module).__name__}) uses a hard reset (v_reset={module.v_reset}). "
                "A hard reset is not linear in the spike train, so SAF cannot express it. Rebuild "
                "the model with v_reset=None (soft reset), e.g. spiking_neuron=neuron.LIFNode, "
                "v_reset=None, and train it again."
            )
        return None
    if isinstance(module, (neuron.BaseNode, NonSpikingBaseNode)):
        return (
            f"'{name}' ({type(module).__name__}) is not a neuron SAF can replace: to_saf converts "
            f"{', '.join(c.__name__ for c in CONVERTIBLE_NEURONS)} with soft reset only. Build the "
            "model with one of those (or with spiking_neuron=SAFNode) instead."
        )
    return None


def _maxpool_problem(name: str, module: nn.Module) -> Optional[str]:
    if isinstance(module, _MAX_POOLS):
        if module.return_indices:
            return f"'{name}' ({type(module).__name__}) returns indices; no AvgPool can replace it."
        if module.dilation not in (1, (1,), (1, 1), (1, 1, 1)):
            return (f"'{name}' ({type(module).__name__}) has dilation={module.dilation}; AvgPool has "
                    "no dilation, so it cannot keep the same geometry.")
    if isinstance(module, _ADAPTIVE_MAX_POOLS) and module.return_indices:
        return f"'{name}' ({type(module).__name__}) returns indices; no AvgPool can replace it."
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

    A module shared by several parents is replaced by one shared replacement.
    """
    root = replacement_for("", model)
    if root is not None:
        return root
    replaced: dict[int, Optional[nn.Module]] = {}
    for parent_name, parent in list(model.named_modules(remove_duplicate=False)):
        for child_name, child in list(parent._modules.items()):
            if child is None:
                continue
            if id(child) not in replaced:
                full_name = f"{parent_name}.{child_name}" if parent_name else child_name
                replaced[id(child)] = replacement_for(full_name, child)
            new = replaced[id(child)]
            if new is not None:
                setattr(parent, child_name, new)
    return model


def _refresh_reset_cache(model: nn.Module) -> None:
    # reset_net caches the resettable modules of every net it was called on, submodules included:
    # after a swap those lists still point at the old neurons.
    for module in model.modules():
        functional.invalidate_reset_cache(module)
    functional.reset_net(model)


def _raise_problems(problems: list[str], what: str) -> None:
    if problems:
        raise ValueError(f"{what} cannot convert this model:\n  - " + "\n  - ".join(problems))


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


def to_saf(model: nn.Module, replace_maxpool: bool = False, insert_input_average: bool = False,
           inplace: bool = False) -> nn.Module:
    r"""
    **API Language** - :ref:`中文 <to_saf-cn>` | :ref:`English <to_saf-en>`

    ----

    .. _to_saf-cn:

    * **中文**

    把模型中的 ``LIFNode``、``OTTTLIFNode``、``SLTTLIFNode``、``IFNode`` （必须是软复位）替换为 ``SAFNode``，
    保留 ``tau``、``v_threshold``、``decay_input``、替代函数、``detach_reset`` 与步进模式；``IFNode`` 变为
    ``SAFNode(tau=math.inf)``。全部参数与模块名保持不变。硬复位神经元会被拒绝并说明原因。
    转换后 ``reset_net`` 会重置新的神经元。``OTTTSequential`` 照常工作（``SAFNode`` 输出张量，
    它被直接传递）。

    :param model: 要转换的网络
    :param replace_maxpool: 是否把 MaxPool 换成同几何形状的 AvgPool（这会改变网络，之后应再训练）
    :param insert_input_average: 为序列输入返回 ``nn.Sequential(InputAverage, model)``
    :param inplace: ``False`` 时先深拷贝，原模型不变
    :return: 转换后的模型

    ----

    .. _to_saf-en:

    * **English**

    Replace every ``LIFNode``, ``OTTTLIFNode``, ``SLTTLIFNode`` and ``IFNode`` (soft reset) of
    ``model`` by a ``SAFNode`` with the same ``tau``, ``v_threshold``, ``decay_input``, surrogate,
    ``detach_reset`` and step mode; an ``IFNode`` becomes ``SAFNode(tau=math.inf)``. Every parameter
    and buffer and every module name is kept, so the ``state_dict`` loads both ways. Hard-reset
    neurons and neuron types SAF cannot express are refused, all at once, with the module names.
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
    :return: the converted model
    """
    if not inplace:
        model = copy.deepcopy(model)
    problems = []
    for name, module in model.named_modules():
        problem = _neuron_problem(name or "<model>", module)
        if problem is None and replace_maxpool:
            problem = _maxpool_problem(name or "<model>", module)
        if problem is not None:
            problems.append(problem)
    _raise_problems(problems, "to_saf")

    def replacement_for(name: str, module: nn.Module) -> Optional[nn.Module]:
        if type(module) in CONVERTIBLE_NEURONS:
            return _saf_node_from(module)
        if replace_maxpool and isinstance(module, _MAX_POOLS + _ADAPTIVE_MAX_POOLS):
            return _average_pool_like(module).train(module.training)
        return None

    model = _replace_modules(model, replacement_for)
    if insert_input_average:
        first = next((m for m in model.modules() if isinstance(m, SAFNode)), None)
        if first is None:
            raise ValueError("insert_input_average=True needs a SAFNode in the model to take tau "
                             "and step_mode from; the model has none.")
        model = nn.Sequential(InputAverage(tau=first.tau, step_mode=first.step_mode), model)
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
    _refresh_reset_cache(model)
    return model
