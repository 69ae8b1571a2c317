"""Forward operations of one training-mode step at t > 1: SAF vs OTTT vs plain LIF.

Counted with SpikingJelly's ``op_counter`` (``DispatchCounterMode`` with ``FlopCounter``,
``MACCounter``, ``ACCounter`` and ``NeuronStateCounter``) and cross-checked with
``torch.utils.flop_counter.FlopCounterMode``. Synaptic operations are those of the convolutions
and linear layers. SAF forwards non-binary weighted rates, which the counters classify as MACs
rather than ACs, so the comparison uses FLOPs (and MAC + AC).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn as nn
from spikingjelly.activation_based import functional, op_counter
from torch.utils.flop_counter import FlopCounterMode


from . import common

#: The neuron each counted variant is built with (a methods-table name).
VARIANTS = {"saf": "saf-e", "ottt": "ottt-o", "lif": "bptt"}
SYNAPTIC_OPS = ("convolution", "mm", "addmm", "bmm")


def _is_synaptic(op) -> bool:
    name = str(op).split(".")[1] if str(op).startswith("aten.") else str(op)
    return name in SYNAPTIC_OPS


def _synaptic(records: dict) -> int:
    return int(sum(v for op, v in records.items() if _is_synaptic(op)))


def count_forward_step(model: nn.Module, x: torch.Tensor, step: int = 2) -> dict:
    """Counts of the forward pass at time step ``step`` (> 1) of a single-step model in train mode."""
    if step < 2:
        raise ValueError(f"step must be > 1 (the claim is about t > 1), got {step}.")
    functional.set_step_mode(model, "s")
    model.train()
    functional.reset_net(model)
    for _ in range(step - 1):
        model(x)
        functional.detach_net(model)
    flops, macs, acs, states = (op_counter.FlopCounter(), op_counter.MACCounter(),
                                op_counter.ACCounter(), op_counter.NeuronStateCounter())
    with op_counter.DispatchCounterMode([flops, macs, acs, states]):
        model(x)
    functional.detach_net(model)
    with FlopCounterMode(display=False) as torch_flops:
        model(x)
    flop_records = flops.get_counts().get("Global", {})
    projection = dict(states.get_projection_counts().get("Global", {}))
    per_module = {scope: _synaptic(rec) for scope, rec in flops.get_counts().items()
                  if scope != "Global" and _synaptic(rec)}
    return {
        "synaptic_flops": _synaptic(flop_records),
        "synaptic_macs": _synaptic(macs.get_counts().get("Global", {})),
        "synaptic_acs": _synaptic(acs.get_counts().get("Global", {})),
        "all_flops": int(sum(flop_records.values())),
        "torch_flop_counter_total": int(torch_flops.get_total_flops()),
        "neuron_state_ops": int(projection.get("state_mac_like", 0) + projection.get("state_acc_like", 0)),
        "neuron_state": {k: int(v) for k, v in projection.items()},
        "per_module_synaptic_flops": per_module,
    }


def _first_conv_flops(per_module: dict, stem_suffix: str) -> int:
    matches = [v for k, v in per_module.items() if k.endswith(stem_suffix)]
    if not matches:
        raise KeyError(f"no module scope ending in {stem_suffix!r} among {sorted(per_module)[:5]}...")
    return min(matches)


def ottt_analytical(lif_counts: dict, stem_flops: int) -> int:
    """OTTT's synaptic FLOPs from the LIF count: every layer fed by a neuron runs twice (value + trace)."""
    return 2 * lif_counts["synaptic_flops"] - stem_flops


STEM = {"vggws": "features.0", "resnet18": "conv1"}


def run(results_dir: Path, quick: bool = False, device: str = "cpu") -> dict:
    dev = torch.device(device)
    size = 16 if quick else 32
    width = 8 if quick else 1
    archs = ["vggws"] if quick else ["vggws", "resnet18"]
    payload = {"meta": common.metadata(device),
               "settings": {"input": [2, 3, size, size], "num_classes": 10, "width_divisor": width,
                            "step_counted": 2, "mode": "train, single-step",
                            "neurons": {"saf": "SAFNode(tau=2)", "ottt": "OTTTLIFNode + OTTTSequential",
                                        "lif": "LIFNode(tau=2, soft reset)"}},
               "models": {}}
    for arch in archs:
        torch.manual_seed(0)
        # Batch 2: train-mode BatchNorm (ResNet) needs more than one value per channel.
        x = torch.rand(2, 3, size, size, device=dev)
        entry = {}
        for variant, method_name in VARIANTS.items():
            try:
                model, _ = common.build(arch, method_name, steps=2, width_divisor=width)
                entry[variant] = count_forward_step(model.to(dev), x)
            except Exception as error:
                entry[variant] = {"error": f"{type(error).__name__}: {error}"}
        lif = entry["lif"]
        stem = _first_conv_flops(lif["per_module_synaptic_flops"], STEM[arch])
        entry["ottt_analytical_synaptic_flops"] = ottt_analytical(lif, stem)
        if "error" in entry["ottt"]:
            entry["ottt_note"] = ("OTTT cannot run on this zoo model: " + entry["ottt"]["error"]
                                  + ". Its count is analytical: every conv/linear fed by a neuron "
                                  "runs twice (spikes and trace), the stem conv once.")
            ottt_flops = entry["ottt_analytical_synaptic_flops"]
            entry["ottt_source"] = "analytical"
        else:
            ottt_flops = entry["ottt"]["synaptic_flops"]
            entry["ottt_source"] = "measured"
        saf = entry["saf"]
        entry["ratios"] = {
            "saf_over_ottt_synaptic_flops": saf["synaptic_flops"] / ottt_flops,
            "saf_over_lif_synaptic_flops": saf["synaptic_flops"] / lif["synaptic_flops"],
            "saf_over_lif_mac_plus_ac": (saf["synaptic_macs"] + saf["synaptic_acs"])
            / max(1, lif["synaptic_macs"] + lif["synaptic_acs"]),
            "saf_over_lif_neuron_state_ops": saf["neuron_state_ops"] / max(1, lif["neuron_state_ops"]),
        }
        if entry["ottt_source"] == "measured":
            entry["ratios"]["saf_over_ottt_mac_plus_ac"] = (
                (saf["synaptic_macs"] + saf["synaptic_acs"])
                / max(1, entry["ottt"]["synaptic_macs"] + entry["ottt"]["synaptic_acs"]))
            entry["ratios"]["saf_over_ottt_neuron_state_ops"] = (
                saf["neuron_state_ops"] / max(1, entry["ottt"]["neuron_state_ops"]))
            entry["analytical_matches_measured_ottt"] = (
                entry["ottt_analytical_synaptic_flops"] == entry["ottt"]["synaptic_flops"])
        for counts in (entry["saf"], entry["ottt"], entry["lif"]):
            counts.pop("per_module_synaptic_flops", None)
        payload["models"][arch] = entry
    common.write_json(results_dir, "ops", payload)
    return payload


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run (not meaningful; results go to a fresh temporary folder "
                             "unless --results-dir names one)")
    parser.add_argument("--results-dir", type=Path, default=None,
                        help=f"default: {common.RESULTS_DIR}")
    args = parser.parse_args(argv)
    result = run(common.results_dir_arg(parser, args.results_dir, args.quick), args.quick)
    for arch, entry in result["models"].items():
        print(arch, entry["ratios"])
    return 0


if __name__ == "__main__":
    main()
