"""benchmarks/bench_sequential.py on a tiny fabricated Fashion-MNIST, its OTTT, and its committed numbers."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from spikingjelly.activation_based import functional

from benchmarks import bench_sequential as bench
from spikingjelly_saf import OutputRecovery, to_saf
from spikingjelly_saf import functional as saf_functional

import fabricate

ROOT = Path(__file__).resolve().parents[2]
TINY = {"methods": list(bench.METHODS), "pixels": [28, 14], "seeds": [0], "train_subset": 16,
        "test_subset": None, "batch": 4, "hidden": 8, "lr": 0.01, "epochs": 1, "timed": 1}

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return str(fabricate.make_mnist_family(tmp_path_factory.mktemp("fashion"), train_count=16,
                                           test_count=8))


def test_rows_become_time_steps():
    images = torch.arange(2 * 28 * 28, dtype=torch.float32).reshape(2, 28, 28)
    assert torch.equal(bench.as_sequence(images, 28)[1, 5], images[1, 5])
    halves = bench.as_sequence(images, 14)
    assert halves.shape == (2, 56, 14) and torch.equal(halves[0, 11], images[0, 5, 14:])


@pytest.mark.slow
def test_benchmark_runs_and_writes_its_outputs(data_root, tmp_path):
    config = {**TINY, "root": data_root}
    payload = bench.run_all(config, tmp_path, command="test", runner=bench.run_one)
    assert payload["steps"] == [28, 56]
    assert {"date_utc", "machine", "torch", "spikingjelly", "command"} <= set(payload["metadata"])
    assert len(payload["runs"]) == 2 * len(bench.METHODS)
    for run in payload["runs"]:
        assert "error" not in run, run
        assert run["train_images"] == 16 and 0.0 <= run["accuracy"] <= 1.0
        assert run["seconds_per_minibatch"] > 0 and run["memory_kib"] >= 0
        # The deployed LIF network predicts exactly as the SAF model (Theorem 1, delayed form).
        if run["method"] in bench.SAF_METHODS:
            assert run["lif_accuracy"] == run["accuracy"]
            assert run["lif_accuracy_own_readout"] == run["accuracy_own_readout"]
    for method in bench.METHODS:
        assert set(payload["summary"][method]) == {"28", "56"}
    # memopt recomputes the same network: BPTT's training, to rounding
    losses = {(r["method"], r["T"]): r["final_loss"] for r in payload["runs"]}
    for steps in (28, 56):
        assert losses["bptt+memopt", steps] == pytest.approx(losses["bptt", steps], rel=1e-6)
    written = json.loads((tmp_path / "sequential.json").read_text())
    assert written["summary"] == json.loads(json.dumps(payload["summary"]))
    assert (tmp_path / "sequential.png").stat().st_size > 0
    assert (tmp_path / "sequential_table.md").read_text().strip() == bench.table(written)


@pytest.mark.slow
def test_a_run_in_a_fresh_process(data_root):
    run = bench.run_in_child({**TINY, "root": data_root, "method": "saf-f", "pixels": 28, "seed": 0})
    assert "error" not in run, run
    assert run["T"] == 28 and run["memory_kib_per_minibatch"] and run["lif_accuracy"] == run["accuracy"]


def test_the_benchmark_ottt_has_saf_e_gradients_up_to_the_proven_factors():
    """The OTTT of the benchmark against SAF-E per step, in float64 (tests/library/test_recurrent.py
    states the relation): recurrent and readout weights equal; the first layer's weight (the
    benchmark's OTTT uses the instantaneous input, SAF its running average) and every bias c[t]
    times OTTT's when the input is constant."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        lif = bench.initialise(bench.lif_network(6, 5, "s"), seed=3)
        with torch.no_grad():
            for p in lif.parameters():
                p.mul_(3.0)
        saf = to_saf(lif)
        x = torch.rand(4, 6, generator=torch.Generator().manual_seed(0)) * 2.0
        target = torch.tensor([0, 3, 1, 2])
        reference, recovery = bench.OTTTRecurrent(lif), OutputRecovery(saf_functional.decay_factor(bench.TAU))
        decay, weight_sum = saf_functional.decay_factor(bench.TAU), 0.0
        for _ in range(6):
            weight_sum = decay * weight_sum + 1.0
            lif.zero_grad()
            saf.zero_grad()
            F.cross_entropy(reference.step(x), target).backward()
            F.cross_entropy(recovery(saf(x)), target).backward()
            for (name, p), q in zip(lif.named_parameters(), saf.parameters()):
                factor = weight_sum if name.endswith("bias") or name == "0.0.weight" else 1.0
                torch.testing.assert_close(q.grad, factor * p.grad, rtol=1e-10, atol=1e-12, msg=name)
            assert lif[1].rc.weight.grad.abs().max() > 0
        functional.reset_net(saf)
    finally:
        torch.set_default_dtype(previous)


def test_docs_and_readme_table_match_the_committed_json():
    payload = json.loads((bench.RESULTS_DIR / "sequential.json").read_text())
    table = bench.table(payload)
    assert (bench.RESULTS_DIR / "sequential_table.md").read_text().strip() == table
    docs = (ROOT / "docs" / "benchmarks.md").read_text()
    assert table in docs
    assert table in (ROOT / "README.md").read_text()
    summary = payload["summary"]
    assert len(payload["runs"]) == len(payload["config"]["seeds"]) * len(payload["config"]["pixels"]) * len(
        payload["config"]["methods"])
    assert all("error" not in run for run in payload["runs"])
    for method in bench.SAF_METHODS:
        for steps in map(str, payload["steps"]):
            stats = summary[method][steps]
            assert math.isclose(stats["lif_accuracy"]["mean"], stats["accuracy"]["mean"], abs_tol=1e-3)
            assert math.isclose(stats["lif_accuracy_own_readout"]["mean"],
                                stats["accuracy_own_readout"]["mean"], abs_tol=1e-3)
    # the sentences of the section quote these numbers
    for method, key in (("saf-e-acc", "accuracy"), ("bptt", "accuracy")):
        assert f"{100 * summary[method]['28'][key]['mean']:.2f}" in docs
