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
from saf_examples.methods import get_method

REPO = Path(__file__).resolve().parents[2]
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


@pytest.mark.slow
def test_fresh_process_reports_errors_as_results():
    result = common.run_in_fresh_process(math.sqrt, -1.0)
    assert "ValueError" in result["error"]


@pytest.mark.slow
def test_quick_suite_writes_results_and_the_readme_table(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"# t\n{common.TABLE_START}\nold\n{common.TABLE_END}\n")
    results = tmp_path / "results"
    docs = tmp_path / "benchmarks.md"
    from benchmarks import tables

    docs.write_text(f"a\n{tables.DOCS_START}\nold\n{tables.DOCS_END}\nb\n")
    subprocess.run([sys.executable, "-m", "benchmarks", "--quick", "--results-dir", str(results),
                    "--readme", str(readme), "--docs", str(docs)], cwd=REPO, check=True, timeout=600,
                   capture_output=True)
    assert "old" not in docs.read_text() and "seconds per minibatch" in docs.read_text().lower()
    for name in ("ops", "time_memory", "accuracy", "reviewers"):
        assert (results / f"{name}.json").exists(), name
    ops = json.loads((results / "ops.json").read_text())
    assert ops["models"]["vggws"]["ratios"]["saf_over_lif_synaptic_flops"] == 1.0
    assert 0.5 <= ops["models"]["vggws"]["ratios"]["saf_over_ottt_synaptic_flops"] < 0.52
    timing = json.loads((results / "time_memory.json").read_text())
    assert set(timing["models"]["vggws"]) >= {"saf-e", "saf-f", "ottt-o", "bptt", "ideal-e"}
    assert (results / "time_memory_vggws_time_ratios.png").stat().st_size > 0
    assert all("exact" in cell for cell in timing["models"]["vggws"]["saf-e"].values())
    text = readme.read_text()
    assert "old" not in text and "| Claim |" in text


# ----------------------------------------------------------------------------------------------
# Fashion-MNIST benchmark and BPTT with SpikingJelly's memopt


def _write_idx(path: Path, array) -> None:
    import gzip
    import struct

    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as file:
        file.write(header + array.tobytes())


def _fabricate_fashion_mnist(root: Path, train: int = 16, test: int = 8) -> Path:
    import numpy as np

    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    for prefix, count in (("train", train), ("t10k", test)):
        _write_idx(root / f"{prefix}-images-idx3-ubyte.gz",
                   rng.integers(0, 256, size=(count, 28, 28), dtype=np.uint8))
        _write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", (np.arange(count) % 10).astype(np.uint8))
    return root


def test_csnn_is_exact_for_saf_with_average_pooling_only():
    from benchmarks import bench_fashion_mnist as fm

    found = fm.check_exactness_of_pools(channels=2)
    assert found["avg"] == {"exact": True, "kinds": []}
    assert not found["max"]["exact"] and "max-pool" in found["max"]["kinds"]
    assert "batch-statistics" in found["avg_train_mode"]["kinds"]


def test_bptt_with_memopt_trains_exactly_like_bptt():
    from spikingjelly.activation_based import functional
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointWrapper

    from benchmarks import bench_fashion_mnist as fm

    images = torch.randint(0, 256, (6, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    labels = torch.arange(6) % 10
    x_seq = fm.to_input_seq(images, 3, torch.device("cpu"))
    trained = {}
    for name in ("bptt", "bptt+memopt"):
        torch.manual_seed(0)
        model, method = fm.build_csnn(name, channels=3)
        if name == "bptt+memopt":
            fm.apply_memopt(model, x_seq.transpose(0, 1).contiguous())
            wrappers = [m for m in model.modules() if isinstance(m, CheckpointWrapper)]
            assert len(wrappers) == 4
            compressed = [w.checkpoint_fn.keywords["compressor"] is not None for w in wrappers]
            assert compressed == [False, True, True, True]  # the image is not binary, spikes are
        optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
        losses = []
        for _ in range(2):
            functional.reset_net(model)
            loss, _ = method.train_step(model, optimizer, x_seq, labels, fm.mse_one_hot)
            losses.append(float(loss))
        trained[name] = (losses, [p.detach().clone() for p in model.parameters()])
    assert trained["bptt"][0] == pytest.approx(trained["bptt+memopt"][0], abs=1e-6)
    for plain, checkpointed in zip(trained["bptt"][1], trained["bptt+memopt"][1]):
        torch.testing.assert_close(plain, checkpointed, rtol=1e-5, atol=1e-6)
    assert any(not torch.equal(p, q) for p, q in zip(trained["bptt"][1], _initial_bptt_parameters()))


def _initial_bptt_parameters():
    from benchmarks import bench_fashion_mnist as fm

    torch.manual_seed(0)
    model, _ = fm.build_csnn("bptt", channels=3)
    return [p.detach().clone() for p in model.parameters()]


def test_vgg_regrouped_for_memopt_computes_the_same_outputs():
    from spikingjelly.activation_based import functional

    torch.manual_seed(0)
    plain, _ = common.build("vggws", "bptt", 2, width_divisor=16)
    torch.manual_seed(0)
    grouped, _ = common.build("vggws", common.MEMOPT_VARIANT, 2, width_divisor=16)
    assert any(isinstance(m, common.MemoptBlock) for m in grouped.modules())
    x = torch.rand(2, 2, 3, 16, 16)
    outputs = []
    for model in (plain, grouped):
        functional.reset_net(model)
        outputs.append(model.eval()(x))
    torch.testing.assert_close(outputs[0], outputs[1])


def test_time_memory_measures_memopt():
    from benchmarks import bench_time_memory

    result = bench_time_memory.measure("vggws", common.MEMOPT_VARIANT, 2, 2, 16, 16, "cpu", 1)
    assert "error" not in result and result["time_s"] > 0


def test_fashion_mnist_cli_rejects_bad_input(tmp_path, monkeypatch, capsys):
    from benchmarks import bench_fashion_mnist as fm
    from saf_examples import idx

    monkeypatch.setattr(idx, "DEBIAN_FASHION_MNIST", tmp_path / "no-debian")
    with pytest.raises(SystemExit) as info:
        fm.parse_args(["--data-root", str(tmp_path / "empty")])
    assert info.value.code == 2
    assert "apt-get install dataset-fashion-mnist" in capsys.readouterr().err
    _fabricate_fashion_mnist(tmp_path / "data")
    for argv, message in ((["--methods", "saf-e,adam"], "--methods: unknown ['adam']"),
                          (["--seeds", "a"], "--seeds"), (["--epochs", "0"], "--epochs"),
                          (["--memopt-level", "3"], "levels 2-4 measure CUDA memory")):
        with pytest.raises(SystemExit) as info:
            fm.parse_args(["--data-root", str(tmp_path / "data")] + argv)
        assert info.value.code == 2
        assert message in capsys.readouterr().err


@pytest.mark.slow
def test_fashion_mnist_benchmark_runs_on_tiny_data(tmp_path):
    data = _fabricate_fashion_mnist(tmp_path / "data")
    results = tmp_path / "results"
    subprocess.run([sys.executable, "-m", "benchmarks.bench_fashion_mnist", "--data-root", str(data),
                    "--methods", "saf-e,ottt-o,bptt+memopt", "--seeds", "0", "--channels", "2",
                    "-T", "3", "--batch", "4", "--epochs", "2", "--evals", "2", "--curve-test-subset", "4",
                    "--workers", "3", "--results-dir", str(results), "--tag", "fm", "--no-readme"],
                   cwd=REPO, check=True, timeout=900, capture_output=True)
    payload = json.loads((results / "fm.json").read_text())
    assert payload["complete"] and set(payload["summary"]) == {"saf-e", "ottt-o", "bptt+memopt"}
    assert payload["exactness"]["avg"]["exact"]
    assert "runs '" in payload["settings"]["saf_backend"]
    runs = {r["method"]: r for r in payload["runs"]}
    assert all("error" not in r for r in runs.values())
    # Theorem 1 and one readout: the LIF twin read as out_seq.mean(0) predicts the same.
    assert runs["saf-e"]["to_lif_prediction_mismatches"] == 0
    assert runs["saf-e"]["to_lif_accuracy"] == runs["saf-e"]["accuracy"]
    assert "to_lif_accuracy" not in runs["ottt-o"]
    curve = runs["bptt+memopt"]["curve"]
    # Two epochs of 4 minibatches, a test point in the middle of each (4 images) and at its end (all 8).
    assert [p["minibatches"] for p in curve] == [2, 4, 6, 8]
    assert [p["epoch"] for p in curve] == [0.5, 1.0, 1.5, 2.0]
    assert [p["test_images"] for p in curve] == [4, 8, 4, 8]
    assert set(curve[-1]["test"]) == {"rate", "weighted"}
    assert (results / "fm_accuracy.png").stat().st_size > 0
    from benchmarks import tables

    rows = tables.fashion_mnist_rows(results, "fm")
    assert "Partial" not in rows[0] and "2 epochs of all 60000" in rows[0]
    saf_row = next(r for r in rows if r.startswith("| saf-e |"))
    assert saf_row.count("%") == 3 and "0 of 10000" in saf_row  # rate, Obar[T], to_lif
    assert any(r.startswith("| saf-e | ottt-o |") for r in rows)


def test_fashion_mnist_numbers_in_readme_and_docs_come_from_the_committed_json():
    from benchmarks import tables

    results = REPO / "benchmarks" / "results"
    generated = tables.fashion_mnist_docs_markdown(results)
    assert generated, "the current Fashion-MNIST run is missing from benchmarks/results"
    docs = (REPO / "docs" / "benchmarks.md").read_text()
    assert _region(docs, tables.FASHION_DOCS_START, tables.FASHION_DOCS_END) == generated
    readme = (REPO / "README.md").read_text()
    for row in tables.fashion_mnist_rows(results, tables.FASHION_MNIST_CURRENT):
        assert row in readme, row


def _fashion_payload(accuracies: dict, **settings) -> dict:
    """A results file of bench_fashion_mnist reduced to what the objective table reads."""
    base = {"T": 6, "tau": 2.0, "epochs": 3, "batch": 128}
    summary = {name: {"seeds": sorted(by_seed),
                      "accuracy": {"mean": sum(by_seed.values()) / len(by_seed), "std": 0.01,
                                   "values": [by_seed[s] for s in sorted(by_seed)]}}
               for name, by_seed in accuracies.items()}
    return {"meta": {"date_utc": "2026-12-05"}, "settings": {**base, **settings}, "summary": summary}


def test_objective_table_pairs_each_online_method_with_bptt_on_its_objective(tmp_path):
    from benchmarks import tables

    (tmp_path / "grid.json").write_text(json.dumps(_fashion_payload({
        "saf-f": {0: 0.88, 1: 0.87, 2: 0.89}, "ottt-a": {0: 0.90, 1: 0.89, 2: 0.90},
        "bptt": {0: 0.91, 1: 0.90, 2: 0.90}, "saf-e": {0: 0.5, 1: 0.5, 2: 0.5}})))
    (tmp_path / "diag.json").write_text(json.dumps(_fashion_payload({
        "bptt-final": {0: 0.885, 1: 0.86, 2: 0.90}, "bptt-every-step": {1: 0.895, 2: 0.91}})))
    rows = tables.fashion_mnist_objective_rows(tmp_path, "grid", "diag")
    final = next(r for r in rows if "bptt-final" in r)
    # saf-f - bptt-final per seed: -0.5, +1, -1 points; bptt-final - bptt: -2.5, -4, 0.
    assert "saf-f: 88.00" in final and "| -0.17 ± 1.04 | -2.17 ± 2.02 |" in final
    every = next(r for r in rows if "bptt-every-step:" in r)
    assert "| -0.75 ± 0.35 | +0.25 ± 1.06 |" in every  # only the seeds both ran (1 and 2)
    assert next(r for r in rows if "firing rate (BPTT's)" in r).endswith("| - | - |")
    (tmp_path / "diag.json").write_text(json.dumps(_fashion_payload({"bptt-final": {0: 0.8}}, T=4)))
    with pytest.raises(common.ResultsFileError, match=r"diag.json was run with settings other than "
                                                      r"grid.json's \(T\)"):
        tables.fashion_mnist_objective_rows(tmp_path, "grid", "diag")
    (tmp_path / "diag.json").unlink()
    assert tables.fashion_mnist_objective_rows(tmp_path, "grid", "diag") == []


@pytest.mark.slow
def test_memopt_table_from_a_tagged_subset(tmp_path):
    from benchmarks import bench_time_memory, tables

    bench_time_memory.run(tmp_path, quick=True, only_variants=["bptt", common.MEMOPT_VARIANT, "saf-f"],
                          tag="memopt", log=lambda *_: None)
    timing = json.loads((tmp_path / "time_memory_memopt.json").read_text())
    assert set(timing["models"]["vggws"]) == {"bptt", common.MEMOPT_VARIANT, "saf-f"}
    assert not (tmp_path / "time_memory.json").exists()  # a subset never replaces the full run
    ratios = timing["summary"]["vggws"]["per_T"]["2"]
    # Memory ratios may be None: a tiny run can grow the resident set by nothing.
    assert ratios["bptt+memopt/bptt time"] > 0 and "saf-f/bptt+memopt memory" in ratios
    rows = tables.memopt_rows(tmp_path)
    assert any(r.startswith("| vggws | 2 |") and "cannot run" not in r for r in rows)
    with pytest.raises(ValueError, match="unknown variants"):
        bench_time_memory.run(tmp_path, quick=True, only_variants=["nope"], tag="x")


# ----------------------------------------------------------------------------------------------
# exact memory account, generated tables, GPU check


def test_live_tensor_account_counts_storages_once_and_frees_them():
    from benchmarks.memory_account import LiveTensorAccount

    model = torch.nn.Linear(4, 4)
    account = LiveTensorAccount(model)
    with account:
        a = torch.empty(1000)  # 4000 bytes
        view = a[10:]  # a view: no new storage
        del a, view
        b = torch.empty(500)  # 2000 bytes, after the first was freed
        del b
    report = account.report()
    assert report["peak_bytes"] - report["baseline_bytes"] == 4000
    assert report["live_at_end_bytes"] == report["baseline_bytes"] == 4 * (16 + 4)


def test_live_tensor_account_itemises_the_peak():
    from benchmarks.memory_account import LiveTensorAccount

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x, target = torch.rand(3, 8), torch.randint(0, 4, (3,))
    params = 4 * (8 * 16 + 16 + 16 * 4 + 4)
    optimizer.zero_grad(set_to_none=True)
    torch.nn.functional.cross_entropy(model(x), target).backward()
    optimizer.step()  # momentum buffers
    optimizer.zero_grad(set_to_none=True)
    account = LiveTensorAccount(model, optimizer, (x, target))
    with account:
        loss = torch.nn.functional.cross_entropy(model(x), target)  # the peak: the whole graph
    report = account.report()
    at = report["at_peak"]
    assert report["baseline_bytes"] == params + 4 * 3 * 8 + 8 * 3
    assert at["by_category"]["parameters"] == params == at["by_category"]["optimizer state"]
    # ReLU saves its output [3, 16] (which the second Linear saves again: the same storage).
    assert at["by_layer"]["1"]["saved for backward"] == 3 * 16 * 4
    assert report["peak_bytes"] >= at["snapshot_bytes"] >= 0.999 * report["peak_bytes"]
    del loss


def test_time_group_interleaves_and_reports_load():
    from benchmarks import bench_time_memory

    group = bench_time_memory.time_group("vggws", ["saf-e", "ideal-e"], 2, 2, 16, 16, "cpu", 3,
                                         account=True)
    assert len(group["loadavg_before"]) == 3
    for variant in ("saf-e", "ideal-e"):
        cell = group["cells"][variant]
        assert len(cell["times_s"]) == 3 and cell["time_s"] == sorted(cell["times_s"])[1]
        assert cell["exact"]["train_peak_bytes"] > 0
    assert group["cells"]["saf-e"]["saf_backends"][0].startswith(("auto", "torch", "cpp"))


def _region(text: str, start: str, end: str) -> str:
    return text[text.index(start) + len(start):text.index(end)].strip()


def test_docs_and_readme_time_memory_numbers_come_from_the_committed_json():
    from benchmarks import tables

    results = REPO / "benchmarks" / "results"
    docs = (REPO / "docs" / "benchmarks.md").read_text()
    assert _region(docs, tables.DOCS_START, tables.DOCS_END) == tables.time_memory_docs_markdown(results)
    readme = (REPO / "README.md").read_text()
    for row in (tables.time_claim_rows(common.read_json(results, "time_memory"))
                + tables.memory_claim_rows(common.read_json(results, "time_memory_account"))):
        assert row in readme, row


def test_gpu_check_dry_run_plans_every_step(tmp_path):
    from benchmarks import gpu_check

    steps = gpu_check.plan(tmp_path, cuda=False, gpus=0, data_root=None)
    assert [s["name"] for s in steps] == list(gpu_check.STEP_NAMES)
    commands = {s["name"]: [" ".join(c) for c in s["commands"]] for s in steps}
    assert "-m cuda" in commands["tests"][0]
    assert any("--steps 1,2,4,6,8,16,32" in c and "--device cuda" in c for c in commands["time"])
    assert [c.split("--memopt-level ")[1][0] for c in commands["memopt"]] == ["1", "2", "3", "4"]
    assert "--epochs 1" in commands["fashion_mnist"][0]
    assert sum(gpu_check.LIMITS.values()) < 600
    parsed = gpu_check._parse_time_command(steps[2]["commands"][3])
    assert parsed["memopt_level"] == 4 and parsed["tag"] == "memopt_level4"
    assert gpu_check.main(["--dry-run", "--only", "fashion_mnist,ddp"]) == 0



MALLOC_CHILD = r"""
import sys
sys.path.insert(0, sys.argv[1])
from benchmarks import memory_account
print(memory_account.fix_malloc_thresholds())
"""


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_memory_processes_fix_malloc_thresholds_and_timing_processes_keep_the_defaults():
    from benchmarks import memory_account

    header = Path("/usr/include/malloc.h")
    if header.is_file():  # mallopt's parameter numbers are glibc's
        defines = dict(line.split()[1:3] for line in header.read_text().splitlines()
                       if line.startswith("# define M_") or line.startswith("#define M_"))
        assert defines["M_TRIM_THRESHOLD"] == str(memory_account._MALLOPT_PARAMETERS["MALLOC_TRIM_THRESHOLD_"])
        assert defines["M_MMAP_THRESHOLD"] == str(memory_account._MALLOPT_PARAMETERS["MALLOC_MMAP_THRESHOLD_"])
    result = subprocess.run([sys.executable, "-c", MALLOC_CHILD, str(REPO)], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[-1] == "True"
    # The fork server, and so every timing child, keeps glibc's defaults.
    assert "MALLOC_" not in (REPO / "benchmarks" / "common.py").read_text()


def test_gradient_alignment_is_exact_at_one_step_and_not_beyond():
    """At T=1 SAF-F's gradient is BPTT's on the same objective and SAF-E-acc's is BPTT's on OTTT's
    (cosine 1, no neuron starved); at T=4 SAF-F's departs from BPTT's."""
    from benchmarks import bench_fashion_mnist as fm
    from benchmarks import bench_gradient_alignment as ga

    torch.manual_seed(0)
    model, _ = fm.build_csnn("saf-e-acc", channels=4)
    fm.set_training(model, "frozen")
    with torch.no_grad():  # every layer fires, so that every layer has a gradient
        for weight in ga.synaptic_weights(model):
            weight.mul_(10)
    images, labels = torch.randint(0, 256, (8, 28, 28), dtype=torch.uint8), torch.randint(0, 10, (8,))
    for steps in (1, 4):
        x_seq = fm.to_input_seq(images, steps, torch.device("cpu"))
        result = ga.measure(model, [(x_seq, labels)])
        cosines = {key: [cell[layer][0] for layer in ga.LAYERS] for key, cell in result.items()
                   if key != "starved_fraction"}
        assert all(math.isfinite(c) for values in cosines.values() for c in values), cosines
        if steps == 1:
            for values in cosines.values():
                assert all(abs(c - 1) < 1e-5 for c in values), cosines
            assert all(v[0] == 0 for v in result["starved_fraction"].values())
        else:
            assert min(cosines["saf-f vs bptt-final"]) < 0.999, cosines
    assert ga.cosine(torch.zeros(3), torch.ones(3)) != ga.cosine(torch.zeros(3), torch.ones(3))  # NaN


def test_gradient_alignment_cli_writes_results_and_refuses_bad_input(tmp_path, monkeypatch, capsys):
    from benchmarks import bench_gradient_alignment as ga
    from benchmarks import tables
    from saf_examples import idx

    data = _fabricate_fashion_mnist(tmp_path / "data")
    base = ["--data-root", str(data), "--results-dir", str(tmp_path / "out"), "--seeds", "0,1",
            "--channels", "2", "-T", "2", "--batch", "4", "--measure-batches", "1"]
    assert ga.main(base + ["--checkpoints", "0,2", "--tag", "ga"]) == 0
    payload = json.loads((tmp_path / "out" / "ga.json").read_text())
    assert list(payload["summary"]) == ["0", "2"] and len(payload["runs"]) == 2
    assert set(payload["summary"]["2"]) == {"saf-f vs bptt-final", "saf-e-acc vs bptt-every-step",
                                            "bptt-final vs bptt-every-step", "starved_fraction"}
    rows = tables.gradient_alignment_rows(tmp_path / "out", "ga")
    assert sum(r.startswith("| 2 | ") for r in rows) == 4
    assert ga.main(["--replot", "--results-dir", str(tmp_path / "out"), "--tag", "ga"]) == 0
    monkeypatch.setattr(idx, "DEBIAN_FASHION_MNIST", tmp_path / "no-debian")
    for argv, message in (
            (base + ["--checkpoints", "3,1"], "--checkpoints: must increase"),
            (base + ["--checkpoints", "0,0"], "twice"),
            (base + ["--measure-batches", "100"], "exceeds the"),
            (base + ["--tau", "1"], "--tau"),
            (["--data-root", str(tmp_path / "none")], "apt-get install dataset-fashion-mnist"),
            (["--replot", "--results-dir", str(tmp_path / "out"), "--tag", "nope"], "does not exist")):
        with pytest.raises(SystemExit) as info:
            ga.main(argv)
        assert info.value.code == 2
        assert message in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------
# the neuron kernels on the CPU and the table of docs/backends.md


def test_neuron_kernel_on_cpu_records_times_and_ratios_to_relu(tmp_path):
    from benchmarks import bench_neuron_kernel, tables

    assert bench_neuron_kernel.main(["--device", "cpu", "--log2n", "6,8", "--steps", "1,2", "--warmup", "1",
                                     "--reps", "3", "--results-dir", str(tmp_path)]) == 0
    payload = json.loads((tmp_path / "neuron_kernel_cpu.json").read_text())
    assert payload["meta"]["device"] == "cpu" and payload["settings"]["threads"] == torch.get_num_threads()
    assert payload["settings"]["neurons"] == [64, 256] and payload["settings"]["steps"] == [1, 2]
    measured = {row["backend"] for row in payload["rows"]}
    assert measured | set(payload["skipped_backends"]) == {"relu", "cpp", "torch", "spikingjelly-lif"}
    assert {"relu", "torch"} <= measured
    cells = {(row["backend"], row["steps"], row["neurons"]): row for row in payload["rows"]}
    assert len(cells) == len(payload["rows"]) == 4 * len(measured)
    for (backend, steps, neurons), row in cells.items():
        relu = cells["relu", steps, neurons]
        for phase in ("forward", "forward_only", "backward"):
            assert 0 < row[f"{phase}_us_min"] <= row[f"{phase}_us"]
            assert row[f"{phase}_over_relu"] == pytest.approx(row[f"{phase}_us"] / relu[f"{phase}_us"],
                                                              rel=1e-12)
        if backend in ("cpp", "torch"):
            assert row["call"] == ("REGISTRY.single_step" if steps == 1 else "REGISTRY.multi_step")
    table = [line for line in tables.neuron_kernel_cpu_markdown(tmp_path).splitlines() if line.startswith("| ")]
    assert len(table) == 1 + 2 * 2 * 3  # the header, then T x N x phase


def _kernel_row(backend: str, steps: int, neurons: int, microseconds: float, relu: float) -> dict:
    row = {"backend": backend, "dtype": "float32", "steps": steps, "neurons": neurons}
    for phase in ("forward", "forward_only", "backward"):
        row.update({f"{phase}_us": microseconds, f"{phase}_us_min": microseconds,
                    f"{phase}_over_relu": microseconds / relu})
    return row


def _kernel_payload() -> dict:
    meta = {"device": "cpu", "cpu_model": "Test CPU", "cpu_count": 2, "torch": "2.x",
            "spikingjelly": "2.0.0", "date_utc": "2026-12-06T00:00:00+00:00"}
    settings = {"threads": 2, "reps": 100, "warmup": 10, "surrogate": "Sigmoid(alpha=4.0)"}
    rows = [_kernel_row("relu", 1, 2**15, 20.5, 20.5), _kernel_row("cpp", 1, 2**15, 125.0, 20.5),
            _kernel_row("torch", 1, 2**15, 1750.0, 20.5)]
    return {"meta": meta, "settings": settings, "loadavg": {"before": [0.5, 1, 1], "after": [1.5, 1, 1]},
            "skipped_backends": {"spikingjelly-lif": "RuntimeError: not here"}, "rows": rows}


def test_backends_docs_region_is_built_from_the_kernel_json(tmp_path):
    from benchmarks import tables

    assert tables.neuron_kernel_cpu_markdown(tmp_path) == ""  # no file, no table
    (tmp_path / "neuron_kernel_cpu.json").write_text(json.dumps(_kernel_payload()))
    text = tables.neuron_kernel_cpu_markdown(tmp_path)
    assert "Test CPU (2 cores)" in text and "2 torch threads; load average (1 min) 0.5-1.5" in text
    assert "| 1 | 2^15 | forward, with grad | 125 | 1,750 | 20.5 | 6.10 | 85.37 |" in text
    assert "`spikingjelly-lif`: RuntimeError: not here" in text


def _broken_kernel_payloads() -> dict:
    no_relu = _kernel_payload()
    no_relu["rows"] = no_relu["rows"][1:]
    text_time = _kernel_payload()
    text_time["rows"][1]["backward_us"] = "fast"
    no_rows = _kernel_payload()
    no_rows["rows"] = []
    return {"without ReLU": json.dumps(no_relu), "a time that is text": json.dumps(text_time),
            "no rows": json.dumps(no_rows), "cut short": json.dumps(_kernel_payload())[:50]}


@pytest.mark.parametrize("broken", list(_broken_kernel_payloads()))
def test_a_broken_kernel_json_is_refused_before_any_page_is_written(tmp_path, capsys, broken):
    from benchmarks import __main__ as suite
    from benchmarks import tables

    results, page = tmp_path / "results", tmp_path / "backends.md"
    results.mkdir()
    page.write_text(f"a\n{tables.NEURON_KERNEL_CPU_START}\nold\n{tables.NEURON_KERNEL_CPU_END}\nb\n")
    path = results / "neuron_kernel_cpu.json"
    path.write_text(_broken_kernel_payloads()[broken])
    with pytest.raises(common.ResultsFileError) as info:
        tables.neuron_kernel_cpu_markdown(results)
    assert str(path) in str(info.value) and common.writer_of(tables.NEURON_KERNEL_CPU) in str(info.value)
    argv = ["--only", "tables", "--results-dir", str(results), "--readme", "", "--docs", "",
            "--backends-docs", str(page)]
    with pytest.raises(SystemExit) as exit_info:
        suite.main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err
    assert [line for line in err.splitlines() if "error:" in line] == [
        f"python -m benchmarks: error: {info.value}"]
    assert "old" in page.read_text() and not (results / "RESULTS.md").exists()
    path.write_text(json.dumps(_kernel_payload()))
    assert suite.main(argv) == 0
    assert page.read_text() == (f"a\n{tables.NEURON_KERNEL_CPU_START}\n"
                                f"{tables.neuron_kernel_cpu_markdown(results)}\n{tables.NEURON_KERNEL_CPU_END}\nb\n")


@pytest.mark.parametrize("argv,flag", [
    (["--log2n", "40"], "--log2n"), (["--log2n", "10", "--min-log2n", "8"], "--log2n"),
    (["--backends", "cupy"], "--backends"), (["--steps", "0"], "--steps"), (["--device", "tpu"], "--device"),
], ids=lambda value: " ".join(value) if isinstance(value, list) else value)
def test_neuron_kernel_on_cpu_refuses_bad_input_in_one_message(tmp_path, capsys, argv, flag):
    from benchmarks import bench_neuron_kernel

    device = [] if "--device" in argv else ["--device", "cpu"]
    with pytest.raises(SystemExit) as info:
        bench_neuron_kernel.main(device + argv + ["--results-dir", str(tmp_path / "out")])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert info.value.code == 2 and "Traceback" not in err
    assert len(errors) == 1 and flag in errors[0], err
    assert not (tmp_path / "out").exists()


def test_backends_docs_cpu_numbers_come_from_the_committed_json():
    from benchmarks import tables

    generated = tables.neuron_kernel_cpu_markdown(REPO / "benchmarks" / "results")
    assert generated, "benchmarks/results/neuron_kernel_cpu.json is missing"
    docs = (REPO / "docs" / "backends.md").read_text()
    assert _region(docs, tables.NEURON_KERNEL_CPU_START, tables.NEURON_KERNEL_CPU_END) == generated


def test_profile_averages_interleaved_minibatches_per_variant(tmp_path):
    from benchmarks import bench_time_memory

    path = bench_time_memory.profile(tmp_path, "vggws", ["saf-f", "ideal-f"], 1, rounds=2)
    saf, ideal = path.read_text().split("\n\n")[:2]
    assert saf.startswith("== vggws saf-f T=1 batch=16: 2 profiled minibatches, wall time ")
    assert ideal.startswith("== vggws ideal-f T=1 batch=16: 2 profiled minibatches, wall time ")

    def calls(section, operator):
        rows = [line.split() for line in section.splitlines()[2:]]
        return next(int(row[-1]) for row in rows if row[0] == operator)

    # One minibatch's calls, not the two rounds': 8 neuron layers, one step with a graph.
    assert calls(saf, "SAFCppForward") == 8 and calls(saf, "SAFCppForwardBackward") == 8
    assert calls(ideal, "aten::mkldnn_convolution") == 8
    assert "SAFCpp" not in ideal
