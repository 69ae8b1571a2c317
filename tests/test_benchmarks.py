"""The benchmark machinery counts, compares and writes what it claims to (no timing assertions)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from spikingjelly.activation_based import layer

from benchmarks import bench_ops, bench_reviewers, common
from spikingjelly_saf.methods import get_method

REPO = Path(__file__).resolve().parent.parent
IN, HIDDEN, OUT, BATCH = 8, 16, 4, 3


def tiny_linear_net(variant: str, first_layer_linear: bool) -> torch.nn.Module:
    method = get_method(bench_ops.VARIANTS[variant])
    kwargs = common.neuron_kwargs(method)
    make = lambda: method.neuron_type(**kwargs)  # noqa: E731
    layers = [layer.Linear(IN, HIDDEN)] if first_layer_linear else []
    layers += [make(), layer.Linear(HIDDEN, HIDDEN), make(), layer.Linear(HIDDEN, OUT)]
    return layer.OTTTSequential(*layers)


def counts(variant: str, first_layer_linear: bool) -> dict:
    torch.manual_seed(0)
    width = IN if first_layer_linear else HIDDEN
    return bench_ops.count_forward_step(tiny_linear_net(variant, first_layer_linear),
                                        torch.rand(BATCH, width) * 3)


def test_every_linear_fed_by_a_neuron_gives_saf_over_ottt_one_half_and_saf_over_lif_one():
    saf, ottt, lif = (counts(v, first_layer_linear=False) for v in ("saf", "ottt", "lif"))
    # addmm FLOPs: 2 per multiply-accumulate plus one per bias add.
    expected_lif = 2 * BATCH * (HIDDEN * HIDDEN + HIDDEN * OUT) + BATCH * (HIDDEN + OUT)
    assert lif["synaptic_flops"] == expected_lif
    assert saf["synaptic_flops"] / ottt["synaptic_flops"] == 0.5
    assert saf["synaptic_flops"] / lif["synaptic_flops"] == 1.0


def test_analytical_ottt_count_matches_the_measured_one():
    ottt, lif = counts("ottt", True), counts("lif", True)
    first = 2 * BATCH * IN * HIDDEN + BATCH * HIDDEN
    assert bench_ops.ottt_analytical(lif, first) == ottt["synaptic_flops"]
    assert ottt["synaptic_flops"] != 2 * lif["synaptic_flops"]  # the stem runs once


def test_count_refuses_the_first_step():
    with pytest.raises(ValueError, match="step must be > 1"):
        bench_ops.count_forward_step(tiny_linear_net("saf", True), torch.rand(2, IN), step=1)


def test_readme_region_is_replaced_and_nothing_else(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"head\n{common.TABLE_START}\nold table\n{common.TABLE_END}\ntail\n")
    assert common.update_readme_table("| new |", readme)
    assert readme.read_text() == f"head\n{common.TABLE_START}\n| new |\n{common.TABLE_END}\ntail\n"


def test_readme_without_markers_is_left_alone(tmp_path, capsys):
    readme = tmp_path / "README.md"
    readme.write_text("no markers here\n")
    assert not common.update_readme_table("| new |", readme)
    assert readme.read_text() == "no markers here\n"
    assert "warning" in capsys.readouterr().out


def test_representation_error_vanishes_only_for_if_neurons():
    steps = [4, 64]
    leaky = bench_reviewers.representation_error(0.5, steps, samples=4000)["mean"]
    integrate = bench_reviewers.representation_error(1.0, steps, samples=4000)["mean"]
    assert integrate[64] < integrate[4] / 8  # IF: error ~ 1/T
    assert integrate[64] < 0.01
    assert leaky[64] > 0.05  # lam < 1: |V[T]| / (V_th c[T]) with c[T] -> 2 does not vanish


def test_fresh_process_reports_errors_as_results():
    result = common.run_in_fresh_process(math.sqrt, -1.0)
    assert "ValueError" in result["error"]


def test_quick_suite_writes_results_and_the_readme_table(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"# t\n{common.TABLE_START}\nold\n{common.TABLE_END}\n")
    results = tmp_path / "results"
    subprocess.run([sys.executable, "-m", "benchmarks", "--quick", "--results-dir", str(results),
                    "--readme", str(readme)], cwd=REPO, check=True, timeout=240,
                   capture_output=True)
    for name in ("ops", "time_memory", "accuracy", "reviewers"):
        assert (results / f"{name}.json").exists(), name
    ops = json.loads((results / "ops.json").read_text())
    assert ops["models"]["vggws"]["ratios"]["saf_over_lif_synaptic_flops"] == 1.0
    assert 0.5 <= ops["models"]["vggws"]["ratios"]["saf_over_ottt_synaptic_flops"] < 0.52
    timing = json.loads((results / "time_memory.json").read_text())
    assert set(timing["models"]["vggws"]) >= {"saf-e", "saf-f", "ottt-o", "bptt", "ideal-e"}
    assert (results / "time_memory_vggws_time.png").stat().st_size > 0
    text = readme.read_text()
    assert "old" not in text and "| Claim |" in text
