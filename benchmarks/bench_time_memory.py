"""Time and peak memory of one training minibatch for every method, as a function of T.

Time (:func:`time_group`): one fresh process per (model, T) builds every variant, warms each up
with one minibatch, then runs ``rounds`` rounds that time one minibatch of every variant in turn
(the order reversed every other round); a variant's time is the median over the rounds, and a ratio
of two variants the median of the per-round ratios, so a change of load between rounds cannot tilt
it. Memory (:func:`measure`, the ``--memory`` suite): one fresh process per (model, method, T).
Peak memory:

* CPU: the child's maximum resident set (``ru_maxrss``) after training, and the same quantity
  recorded in the same child after it built the model, the optimizer and the input but before
  it trained (the baseline); ``train_peak_bytes`` is their difference.
* CUDA: ``torch.cuda.max_memory_allocated`` during training, minus the memory allocated before.

``bptt+memopt`` is BPTT after SpikingJelly 2.0's ``memopt.optimize_memory`` (level 1 on the CPU:
selective checkpointing of the neuron-terminated blocks or residual blocks, with bit-compressed
spike inputs): exact BPTT gradients with less memory, the option a SpikingJelly user has today.

The ideals are the same network with ReLU in place of the neurons (``ReLUNode``):

* ``ideal-e``: T forward+backward passes with an optimizer step each (SAF-E's schedule);
* ``ideal-e-acc``: the T x B batch through one forward and backward (SAF-E-acc in ``'m'``);
* ``ideal-f``: T-1 forwards without a graph, then one forward and backward (SAF-F's schedule).

Each checks the gradients before its optimizer steps (``check_gradients_finite``), as
``saf_online_training`` does by default, so that a SAF/ideal ratio measures the neurons alone.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from spikingjelly.activation_based import functional

from spikingjelly_saf import backends, check_gradients_finite
from saf_examples.measure import max_rss_bytes, warm_up_runtime
from saf_examples.methods import get_method

from . import common, memory_account

SPIKING_METHODS = ["saf-e", "saf-e-acc", "saf-e-acc-loop", "saf-f", "ottt-o", "ottt-a", "bptt",
                   common.MEMOPT_VARIANT, "sltt", "dsr"]
IDEALS = ["ideal-e", "ideal-e-acc", "ideal-f"]
#: Each SAF method's ideal: the ReLU network with the same schedule.
IDEAL_OF = {"saf-e": "ideal-e", "saf-e-acc": "ideal-e-acc", "saf-e-acc-loop": "ideal-e",
            "saf-f": "ideal-f", "saf-e@torch": "ideal-e", "saf-f@torch": "ideal-f"}

#: "Why SAF instead of memopt?": memopt against plain BPTT, and SAF against memopt.
MEMOPT_RATIOS = [(common.MEMOPT_VARIANT, "bptt"), ("saf-e", common.MEMOPT_VARIANT),
                 ("saf-f", common.MEMOPT_VARIANT), ("saf-e-acc", common.MEMOPT_VARIANT),
                 ("sltt", common.MEMOPT_VARIANT)]

STEPS = [1, 2, 4, 6, 8, 16, 32]
#: What fits the 30-minute budget on 2 shared CPU cores: ottt_spiking_vggws with every conv width
#: divided by 4 (same structure, 32x32 input), and the full ResNet-18 at batch 4 up to T=16.
CPU_CONFIG = {"vggws": {"batch": 16, "width_divisor": 4, "image": 32, "T": STEPS},
              "resnet18": {"batch": 4, "width_divisor": 1, "image": 32, "T": [1, 2, 4, 8, 16],
                           "variants": ["saf-e", "ideal-e", "saf-f", "ideal-f", "saf-e-acc",
                                        "ideal-e-acc"]},
              # OTTT's full-width VGG: the SAF/OTTT ratios at T=6 only (the CPU's budget).
              "vggws/full": {"batch": 8, "width_divisor": 1, "image": 32, "T": [6],
                             "variants": ["saf-e", "ottt-o", "saf-f", "ottt-a"]}}
#: The paper's setting.
CUDA_CONFIG = {"vggws": {"batch": 128, "width_divisor": 1, "image": 32, "T": STEPS},
               "resnet18": {"batch": 128, "width_divisor": 1, "image": 32, "T": STEPS}}



def _minibatch_runner(name, method, model, optimizer, x_seq, target, dev):
    """One timed unit: reset, train one minibatch (the method's own step, or the ReLU ideal), sync."""

    def one_minibatch():
        functional.reset_net(model)
        if method is None:
            _ideal_train_step(name, model, optimizer, x_seq, target)
        else:
            method.train_step(model, optimizer, x_seq, target, F.cross_entropy)
        common.synchronize(dev)

    return one_minibatch


def _variant_parts(variant: str) -> tuple[str, str]:
    """``'saf-e-acc@triton'`` -> (``'saf-e-acc'``, ``'triton'``)."""
    name, _, backend = variant.partition("@")
    return name, backend or "default"


def _ideal_train_step(schedule: str, model, optimizer, x_seq, target):
    """The ReLU network on a SAF schedule, with the same gradient check before every optimizer step
    that ``saf_online_training`` makes, so that a ratio to the ideal measures the neurons alone."""
    steps = x_seq.shape[1]
    if schedule == "ideal-e-acc":
        return get_method("ideal").train_step(model, optimizer, x_seq, target, F.cross_entropy)
    if schedule == "ideal-f":
        optimizer.zero_grad()
        with torch.no_grad():
            for t in range(steps - 1):
                model(x_seq[:, t])
        loss = F.cross_entropy(model(x_seq[:, -1]), target)
        loss.backward()
        check_gradients_finite(model, optimizer)
        optimizer.step()
        return loss.detach(), None
    for t in range(steps):  # ideal-e
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x_seq[:, t]), target)
        loss.backward()
        check_gradients_finite(model, optimizer, t)
        optimizer.step()
    return loss.detach(), None


def _setup(arch: str, variant: str, steps: int, batch: int, width_divisor: int, image: int,
           device: str, memopt_level: int = 1):
    """Model, method, optimizer and minibatch of one variant, built the same way for every measure."""
    dev = torch.device(device)
    torch.manual_seed(0)
    name, backend = _variant_parts(variant)
    if name.startswith("ideal"):
        model, _ = common.build(arch, "ideal", steps, width_divisor)
        functional.set_step_mode(model, "m" if name == "ideal-e-acc" else "s")
        method = None
    else:
        model, method = common.build(arch, "saf-e-acc" if name == "saf-e-acc-loop" else name,
                                     steps, width_divisor)
        if name == "saf-e-acc-loop":
            functional.set_step_mode(model, "s")
        if backend != "default":
            common.set_saf_backend(model, backend)
    model = model.to(dev).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    x = torch.rand(batch, 3, image, image, device=dev)
    x_seq = x.unsqueeze(1).repeat(1, steps, 1, 1, 1)  # direct encoding: the image at every step
    target = torch.randint(0, 10, (batch,), device=dev)
    if name == common.MEMOPT_VARIANT:
        common.apply_memopt(model, arch, x_seq.transpose(0, 1), memopt_level)
    runner = _minibatch_runner(name, method, model, optimizer, x_seq, target, dev)
    return runner, model, optimizer, x_seq, target, dev


def saf_backends_in(model) -> list[str]:
    """The backends the SAF neurons of ``model`` ran, ``'auto'`` with its choice (``'auto->cpp'``)."""
    from spikingjelly_saf.neuron import SAFNode

    found = set()
    for name in {m.backend for m in model.modules() if isinstance(m, SAFNode)}:
        if name == "auto":
            chosen = sorted(set(getattr(backends.REGISTRY.get("auto"), "_chosen", {}).values()))
            found.add("auto->" + "+".join(chosen) if chosen else "auto")
        else:
            found.add(name)
    return sorted(found)


def account_minibatch(runner, model, optimizer, x_seq, target, dev) -> dict:
    """One minibatch under :class:`memory_account.LiveTensorAccount` (exact live tensor bytes
    between operators, itemised at the peak) and, on CPU, ``torch.profiler``'s allocator events
    (``allocator_train_peak_bytes``: every allocation of PyTorch's CPU allocator, operators'
    internal scratch included, as ``max_memory_allocated`` counts it on CUDA)."""
    from .memory_account import LiveTensorAccount

    functional.reset_net(model)
    optimizer.zero_grad(set_to_none=True)
    account = LiveTensorAccount(model, optimizer, (x_seq, target), dev)
    if dev.type != "cpu":
        with account:
            runner()
        return account.report()
    from torch.profiler import ProfilerActivity, profile as torch_profile

    with torch_profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        with account:
            already = account.ledger.total - account.baseline  # optimizer state
            runner()
    report = account.report()
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                    if e.name() == "[memory]" and str(e.device_type()).endswith("CPU"))
    total = peak = 0
    for _, nbytes in events:
        total += nbytes
        peak = max(peak, total)
    report["allocator_train_peak_bytes"] = already + peak
    return report


def measure(arch: str, variant: str, steps: int, batch: int, width_divisor: int, image: int,
            device: str, repeats: int, memopt_level: int = 1, account: bool = False) -> dict:
    """Runs in a fresh process: build, record the baseline, warm up, run ``repeats`` minibatches.

    The resident-set peak is deterministic only with glibc's thresholds fixed in this process
    (:func:`memory_account.fix_malloc_thresholds`, before anything is built);
    ``malloc_thresholds_fixed`` says whether they were. ``account``: one more minibatch under the
    exact live-tensor account (after the resident set was read).
    """
    thresholds_fixed = memory_account.fix_malloc_thresholds()
    runner, model, optimizer, x_seq, target, dev = _setup(arch, variant, steps, batch, width_divisor,
                                                          image, device, memopt_level)
    warm_up_runtime(dev)
    common.synchronize(dev)
    baseline_rss = max_rss_bytes()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
        baseline_cuda = torch.cuda.memory_allocated(dev)

    runner()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        runner()
        times.append(time.perf_counter() - start)
    result = {"time_s": min(times), "times_s": times,
              "peak_rss_bytes": max_rss_bytes(), "baseline_rss_bytes": baseline_rss,
              "malloc_thresholds_fixed": thresholds_fixed,
              "saf_backends": saf_backends_in(model)}
    result["rss_train_peak_bytes"] = result["peak_rss_bytes"] - baseline_rss
    result["train_peak_bytes"] = result["rss_train_peak_bytes"]
    if dev.type == "cuda":
        result["cuda_max_allocated_bytes"] = torch.cuda.max_memory_allocated(dev)
        result["cuda_baseline_bytes"] = baseline_cuda
        result["train_peak_bytes"] = result["cuda_max_allocated_bytes"] - baseline_cuda
    if account:
        result["exact"] = account_minibatch(runner, model, optimizer, x_seq, target, dev)
    return result


def time_group(arch: str, variants: list[str], steps: int, batch: int, width_divisor: int,
               image: int, device: str, rounds: int, memopt_level: int = 1,
               account: bool = True, threads: int = 0) -> dict:
    """Runs in a fresh process: every variant built side by side, one warm-up minibatch each, then
    ``rounds`` rounds that time one minibatch of every variant in turn (the order reversed every
    other round: A B C, C B A, ...), so load from other processes hits all variants alike. Time:
    the median over rounds. ``account``: then one minibatch per variant under the exact account."""
    import os
    import statistics

    if threads:
        torch.set_num_threads(threads)
    load_before = os.getloadavg()
    built = {}
    for variant in variants:
        try:
            built[variant] = _setup(arch, variant, steps, batch, width_divisor, image, device,
                                    memopt_level)
            built[variant][0]()  # warm-up
        except Exception as error:  # a variant that cannot run is a result
            built.pop(variant, None)
            built[variant] = {"error": f"{type(error).__name__}: {error}"}
    runnable = [v for v in variants if not isinstance(built[v], dict)]
    times = {v: [] for v in runnable}
    for round_index in range(rounds):
        order = runnable if round_index % 2 == 0 else runnable[::-1]
        for variant in order:
            start = time.perf_counter()
            built[variant][0]()
            times[variant].append(time.perf_counter() - start)
    out = {}
    for variant in variants:
        if isinstance(built[variant], dict):
            out[variant] = built[variant]
            continue
        out[variant] = {"time_s": statistics.median(times[variant]), "times_s": times[variant],
                        "paired_rounds": True, "saf_backends": saf_backends_in(built[variant][1])}
    load_after = os.getloadavg()
    dev = torch.device(device)
    if dev.type == "cuda":  # max_memory_allocated of one more minibatch per variant
        for variant in runnable:
            runner, model, optimizer = built[variant][:3]
            functional.reset_net(model)
            optimizer.zero_grad(set_to_none=True)
            torch.cuda.synchronize(dev)
            torch.cuda.reset_peak_memory_stats(dev)
            before = torch.cuda.memory_allocated(dev)
            runner()
            peak = torch.cuda.max_memory_allocated(dev) - before
            out[variant]["cuda_train_peak_bytes"] = out[variant]["train_peak_bytes"] = peak
    if account:
        for variant in runnable:
            report = account_minibatch(*built[variant])
            out[variant]["exact"] = report
            out[variant].setdefault("train_peak_bytes", report["train_peak_bytes"])
    return {"cells": out, "loadavg_before": load_before, "loadavg_after_timing": load_after,
            "torch_threads": torch.get_num_threads()}


def variants_for(device: str) -> tuple[list[str], dict]:
    """The measured variants and the explicit backends measured besides the default.

    Every SAF variant runs ``SAFNode``'s default backend (``'auto'``: on CPU the ``'cpp'`` kernel,
    on CUDA CuPy, then Triton). ``saf-e@torch`` and ``saf-f@torch`` measure the unfused torch path
    next to it; on CUDA every fused backend that can run is measured explicitly as
    ``saf-e-acc@<backend>``.
    """
    variants = list(SPIKING_METHODS) + ["saf-e@torch", "saf-f@torch"]
    skipped = {}
    for backend in backends.SUPPORTED_BACKENDS["m"]:
        if backend in ("torch", "auto", "cpp"):
            continue
        if not device.startswith("cuda"):
            skipped[backend] = "a GPU backend; on CPU the default ('auto') runs the 'cpp' kernel"
            continue
        try:
            backends.REGISTRY.check(backend, "m")
        except Exception as error:
            skipped[backend] = f"{type(error).__name__}: {error}"
            continue
        variants += [f"saf-e-acc@{backend}"]
        IDEAL_OF[f"saf-e-acc@{backend}"] = "ideal-e-acc"
    return variants + IDEALS, skipped


def summarize(models: dict) -> dict:
    """Ratios against the targets, per model and T. Time ratios of variants timed in the same
    rounds: the median over the rounds of each round's ratio; otherwise the ratio of the times."""
    import statistics

    summary = {}
    for arch, rows in models.items():
        def value(variant, steps, key):
            cell = rows.get(variant, {}).get(str(steps))
            return None if cell is None or "error" in cell else cell.get(key)

        def ratio(a, b, steps, key="time_s"):
            va, vb = value(a, steps, key), value(b, steps, key)
            if va is None or vb is None or vb <= 0:
                return None
            if key == "time_s":
                # Both timed in the same rounds of one process: the median of the per-round ratios,
                # which a change of the machine's load between rounds cannot tilt.
                ta, tb = rows[a][str(steps)].get("times_s"), rows[b][str(steps)].get("times_s")
                if ta and tb and len(ta) == len(tb) and rows[a][str(steps)].get("paired_rounds"):
                    return statistics.median(x / y for x, y in zip(ta, tb))
            return va / vb

        measured_steps = sorted({int(s) for cells in rows.values() for s in cells})
        entry = {"per_T": {}}
        for steps in measured_steps:
            r = {f"{saf}/{ideal} time": ratio(saf, ideal, steps) for saf, ideal in IDEAL_OF.items()
                 if saf in rows}
            r["saf-e/ottt-o time"] = ratio("saf-e", "ottt-o", steps)
            r["saf-f/ottt-a time"] = ratio("saf-f", "ottt-a", steps)
            r["saf-e-acc/saf-e-acc-loop time"] = ratio("saf-e-acc", "saf-e-acc-loop", steps)
            r["saf-e/ottt-o memory"] = ratio("saf-e", "ottt-o", steps, "train_peak_bytes")
            r["saf-f/ottt-a memory"] = ratio("saf-f", "ottt-a", steps, "train_peak_bytes")
            for a, b in MEMOPT_RATIOS:
                if a in rows and b in rows:
                    r[f"{a}/{b} time"] = ratio(a, b, steps)
                    r[f"{a}/{b} memory"] = ratio(a, b, steps, "train_peak_bytes")
            entry["per_T"][str(steps)] = r
        flat = {}
        top = max(measured_steps) if measured_steps else 0
        for variant in rows:
            low, high = value(variant, 4, "train_peak_bytes"), value(variant, top, "train_peak_bytes")
            if low and high:
                flat[variant] = high / low
        entry["memory_Tmax_over_T4"] = flat
        entry["T_max"] = top
        summary[arch] = entry
    return summary


#: The time suite's default variants on CPU: what the README's claims need (the ideals, OTTT,
#: SAF with the default backend and with the torch path). ``--variants`` measures any others.
CPU_TIME_VARIANTS = ["saf-e", "ideal-e", "ottt-o", "saf-f", "ideal-f", "ottt-a", "saf-e-acc",
                     "ideal-e-acc", "saf-e@torch", "saf-f@torch"]
#: On a GPU the paper's comparison: every method and baseline.
CUDA_TIME_VARIANTS = None


def run(results_dir: Path, quick: bool = False, device: str = "cpu",
        archs: Optional[tuple[str, ...]] = None, steps_list=None, log=print,
        only_variants=None, tag: str = "", memopt_level: int = 1, rounds=None,
        config=None, account: bool = True, threads: int = 0) -> dict:
    """Time (and exact live-tensor memory) of every variant; writes ``time_memory[_<tag>][_cuda].json``.

    One fresh process per (model, T) holds every variant side by side and times them interleaved
    (:func:`time_group`), so every ratio comes from one run and one process. A subset goes to its
    own file (give ``tag``). ``archs``: configuration keys (default: all, e.g. ``vggws``,
    ``resnet18`` and ``vggws/full``). ``config`` overrides the per-model settings (``{key: {batch,
    width_divisor, image, T[, variants]}}``; a key names its model before any ``/``).
    """
    import os

    cuda = device.startswith("cuda")
    base = CUDA_CONFIG if cuda else CPU_CONFIG
    if config is None:  # every model of the configuration, or exactly the keys named in ``archs``
        config = {k: dict(v) for k, v in base.items() if archs is None or k in archs}
    else:
        config = {k: dict(v) for k, v in config.items()}
    if quick:
        config = {"vggws": dict(batch=2, width_divisor=16, image=16, T=[1, 2])}
    if steps_list:
        for key in config:
            config[key]["T"] = steps_list
    known, skipped = variants_for(device)
    if only_variants:
        unknown = sorted(set(only_variants) - set(known))
        if unknown:
            raise ValueError(f"unknown variants {unknown}; measurable here: {', '.join(known)}.")
        variants = list(only_variants)
    else:
        variants = list(known) if cuda else list(CPU_TIME_VARIANTS)
        if quick:
            variants = ["saf-e", "ideal-e", "ottt-o", "saf-f", "ideal-f", "ottt-a", "bptt"]
    rounds = rounds or (2 if quick else 5)
    models, loads, thread_counts = {}, {}, {}
    start = time.perf_counter()
    name = "time_memory" + (f"_{tag}" if tag else "") + ("_cuda" if cuda else "")

    def write(done: bool) -> dict:
        payload = {
            "meta": dict(common.metadata(device), loadavg_at_end=os.getloadavg(),
                         wall_seconds=round(time.perf_counter() - start, 1)),
            "settings": {"config": config, "rounds": rounds,
                         "timing": (f"one fresh process per (model, T) with every variant built; one "
                                    f"warm-up minibatch each, then {rounds} rounds timing one minibatch of "
                                    "every variant in turn, the order reversed every other round; "
                                    "time_s = median over the rounds; a time ratio = the median over "
                                    "the rounds of the per-round ratio"),
                         "loadavg": "os.getloadavg() (1, 5, 15 min) before and after each group's timing",
                         "torch_threads": threads or "torch's default",
                         "optimizer": "SGD(lr=1e-3, momentum=0.9)", "loss": "cross_entropy",
                         "input": "direct encoding: one random image repeated over T",
                         "neuron": "tau=2, V_th=1, soft reset, detach_reset (OTTT setting); "
                                   "SAF-F with its default Sigmoid(alpha=4); DSR = DSRIFNode(T) defaults",
                         "malloc": "glibc's defaults in the timing processes (fixed thresholds, as the "
                                   "memory suite uses, make every fresh buffer page-fault)",
                         "saf_backend": "SAFNode's default ('auto'; saf_backends in each cell says what "
                                        "ran); <variant>@torch forces the unfused torch path",
                         "memory": ("exact live tensor bytes (benchmarks/memory_account.py), one extra "
                                    "minibatch per variant after the timing: peak minus parameters, "
                                    "buffers and input" if account else "not measured in this run")
                                   + ("; on CUDA also torch.cuda.max_memory_allocated" if cuda else ""),
                         "skipped_backends": skipped,
                         "memopt": f"{common.MEMOPT_VARIANT}: memopt.optimize_memory(level={memopt_level}, "
                                   "compress=True) on ResNet-18's BasicBlocks / the VGG's "
                                   "neuron-terminated blocks, probed with the measured input",
                         "variants": variants},
            "loadavg": loads,
            "torch_threads_per_group": thread_counts,
            "models": models,
            "summary": summarize(models),
        }
        payload["complete"] = done
        common.write_json(results_dir, name, payload)
        return payload

    # T=6 of every model first (the OTTT ratios), then the other T in increasing order across the
    # models; the JSON is written after each group.
    groups = sorted(((key, steps) for key, cfg in config.items() for steps in cfg["T"]),
                    key=lambda g: (g[1] != 6, g[1]))
    for key, steps in groups:
        cfg = config[key]
        arch = key.split("/")[0]
        rows = models.setdefault(key, {})
        # A model's own variant list applies unless the variants were named explicitly.
        chosen = ([v for v in variants if v in cfg["variants"]] if cfg.get("variants") and not only_variants
                  else variants)
        group = common.run_in_fresh_process(
            time_group, arch, chosen, steps, cfg["batch"], cfg["width_divisor"], cfg["image"],
            device, rounds, memopt_level, account, threads, timeout=1800.0)
        if "error" in group:
            group = {"cells": {v: group for v in chosen}}
        thread_counts[f"{key} T={steps}"] = group.get("torch_threads")
        loads[f"{key} T={steps}"] = [group.get("loadavg_before"), group.get("loadavg_after_timing")]
        for variant, cell in group["cells"].items():
            rows.setdefault(variant, {})[str(steps)] = cell
        log(f"  time {key} T={steps} (load {group.get('loadavg_before')}): " + ", ".join(
            f"{v} {c['time_s']:.3f} s" if "error" not in c else f"{v} error"
            for v, c in group["cells"].items()))
        write(False)
    payload = write(True)
    plot(results_dir, payload, name)
    return payload


#: The memory suite's grid on CPU: (label, arch, width divisor, batch, T list, variants).
MEMORY_VARIANTS = ["saf-e", "saf-f", "ottt-o", "ottt-a", "bptt", common.MEMOPT_VARIANT, "sltt",
                   "saf-e-acc", "ideal-e", "ideal-f"]
CPU_MEMORY_GRID = [
    ("vggws/4 B16", "vggws", 4, 16, [4], MEMORY_VARIANTS),
    ("vggws/4 B16", "vggws", 4, 16, [16], ["saf-e", "ottt-o", "bptt", common.MEMOPT_VARIANT]),
    ("vggws/1 B8", "vggws", 1, 8, [2], ["saf-e", "saf-f", "ottt-o", "ottt-a", "bptt", "ideal-e"]),
    ("vggws/1 B48", "vggws", 1, 48, [2], ["saf-e", "ottt-o"]),
]
#: The resident-set determinism check: these variants of the first grid entry, at its first T.
DETERMINISM_VARIANTS = ["saf-e", "ottt-o", "bptt"]
CUDA_MEMORY_GRID = [
    ("vggws/1 B128", "vggws", 1, 128, STEPS, MEMORY_VARIANTS),
]


def run_memory(results_dir: Path, device: str = "cpu", grid=None, log=print, tag: str = "",
               repeat_cells: int = 2, quick: bool = False) -> dict:
    """Peak memory of one training minibatch, two ways, in a fresh process per cell; writes
    ``time_memory_account[_<tag>].json``.

    * resident set (CPU): ``ru_maxrss`` growth with glibc's malloc thresholds fixed in the child
      (:func:`memory_account.fix_malloc_thresholds`); the T=6 (else first) column of the first grid
      entry is measured ``repeat_cells`` more times in new processes to show it is deterministic;
    * exact: live tensor bytes (:class:`memory_account.LiveTensorAccount`), with what is alive at
      the peak by category and by layer. On CUDA ``max_memory_allocated`` is recorded as well.
    """
    import os

    if grid is None:
        grid = CUDA_MEMORY_GRID if device.startswith("cuda") else CPU_MEMORY_GRID
    if quick:
        grid = [("vggws/16 B2", "vggws", 16, 2, [1, 2], ["saf-e", "saf-f", "ottt-o", "bptt", "ideal-e"])]
    start = time.perf_counter()
    cells = {}
    name = "time_memory_account" + (f"_{tag}" if tag else "") + ("_cuda" if device.startswith("cuda") else "")
    check_label, check_arch, check_width, check_batch, check_t, check_v = grid[0]
    check_steps = check_t[0]
    check_variants = [v for v in DETERMINISM_VARIANTS if v in check_v]

    def write(done: bool) -> dict:
        payload = {
            "meta": dict(common.metadata(device), loadavg_at_end=os.getloadavg(),
                         wall_seconds=round(time.perf_counter() - start, 1)),
            "settings": {
                "grid": [{"label": g[0], "arch": g[1], "width_divisor": g[2], "batch": g[3], "T": g[4],
                          "variants": g[5]} for g in grid],
                "image": 32 if not quick else 16,
                "resident_set": "ru_maxrss after one warm-up and one measured minibatch minus ru_maxrss "
                                "after building model, optimizer and input, in a fresh process that fixed "
                                "glibc's malloc thresholds first (mallopt): " + " ".join(
                                    f"{k}={v}" for k, v in memory_account.MALLOC_ENVIRONMENT.items()),
                "exact": "live tensor bytes between operators (benchmarks/memory_account.py), one more "
                         "minibatch; train_peak_bytes = peak minus parameters, buffers and input; the "
                         "account at the peak itemises every live storage",
                "determinism": f"{check_label} T={check_steps}, {', '.join(check_variants)}: the resident set "
                               f"measured {repeat_cells} more times in new processes "
                               "(rss_train_peak_bytes_repeats)",
                "optimizer": "SGD(lr=1e-3, momentum=0.9)", "neuron": "tau=2, V_th=1, soft reset",
                "saf_backend": "SAFNode's default ('auto')"},
            "models": cells,
        }
        payload["complete"] = done
        common.write_json(results_dir, name, payload)
        return payload

    def check_determinism() -> None:
        """The resident set of a few cells again, each in a new process."""
        for _ in range(repeat_cells):
            for variant in check_variants:
                result = common.run_in_fresh_process(measure, check_arch, variant, check_steps,
                                                     check_batch, check_width, 32 if not quick else 16,
                                                     device, 1, 1, False, timeout=1800.0)
                cell = cells[check_label][variant][str(check_steps)]
                if "error" not in result and "error" not in cell:
                    cell.setdefault("rss_train_peak_bytes_repeats", []).append(result["rss_train_peak_bytes"])
                write(False)
                log(f"  determinism {check_label} {variant} T={check_steps}: rss "
                    f"+{result.get('rss_train_peak_bytes', 0) / 2**20:.2f} MiB")

    determinism_done = False
    for label, arch, width, batch, steps_list, variants in grid:
        rows = cells.setdefault(label, {})
        for steps in steps_list:
            for variant in variants:
                result = common.run_in_fresh_process(measure, arch, variant, steps, batch, width, 32 if not quick else 16,
                                                     device, 1, 1, True, timeout=1800.0)
                rows.setdefault(variant, {})[str(steps)] = result
                if "error" in result:
                    log(f"  memory {label} {variant} T={steps}: {result['error']}")
                    write(False)
                    continue
                exact = result["exact"]
                log(f"  memory {label} {variant} T={steps}: rss +{result['rss_train_peak_bytes'] / 2**20:.1f} "
                    f"MiB, exact +{exact['train_peak_bytes'] / 2**20:.1f} MiB "
                    f"(peak {exact['peak_bytes'] / 2**20:.1f})")
                write(False)
        if label == check_label and not determinism_done:
            check_determinism()
            determinism_done = True
    payload = write(True)
    plot_memory(results_dir, payload, name)
    return payload


def plot_memory(results_dir: Path, payload: dict, name: str) -> None:
    """Per grid entry: exact training peak (MiB) vs T, at most six methods, axis from zero."""
    chosen = ["saf-e", "saf-f", "ottt-o", "ottt-a", "bptt", common.MEMOPT_VARIANT]
    for label, rows in payload["models"].items():
        series = {}
        for variant in chosen:
            points = sorted((int(s), c["exact"]["train_peak_bytes"] / 2 ** 20)
                            for s, c in rows.get(variant, {}).items() if "exact" in c)
            if len(points) >= 1:
                series[variant] = ([p[0] for p in points], [p[1] for p in points])
        if not any(len(xs) > 1 for xs, _ in series.values()):
            continue  # one T: a table, not a plot
        meta = payload["meta"]
        note = (f"{meta['device']} ({meta['cpu_model']}), torch {meta['torch']}, spikingjelly "
                f"{meta['spikingjelly']}, {meta['date_utc']}; exact live tensor bytes")
        safe = label.replace("/", "w").replace(" ", "_")
        common.plot_lines(results_dir / f"{name}_{safe}.png", series, "T (time steps)",
                          "training peak, live tensors (MiB)",
                          f"{label}: training peak vs T (equal values overlap: SAF-E, SAF-F, OTTT_O)",
                          logx=True, note=note, ymin=0)


#: The lines of each plot panel (at most six). Time is plotted as ratios (the median of the per-round
#: ratios, which a change of load between rounds cannot tilt; absolute times are in the JSON).
PLOT_PANELS = {"time_ratios": ["saf-e/ideal-e time", "saf-e-acc/ideal-e-acc time", "saf-f/ideal-f time",
                               "saf-e@torch/ideal-e time", "saf-e/ottt-o time", "saf-f/ottt-a time"],
               "memory": ["saf-e", "saf-f", "ottt-o", "ottt-a", "bptt", common.MEMOPT_VARIANT]}


def plot(results_dir: Path, payload: dict, name: str) -> None:
    """Per model: the time ratios and, when measured, the training peak (axis from zero)."""
    for key, rows in payload["models"].items():
        cfg = payload["settings"]["config"][key]
        if len(cfg["T"]) < 2:
            continue  # one T: the table says it all
        meta = payload["meta"]
        note = (f"{meta['device']} ({meta['cpu_model']}), torch {meta['torch']}, spikingjelly "
                f"{meta['spikingjelly']}, batch {cfg['batch']}, {cfg['image']}x{cfg['image']}, "
                f"width/{cfg['width_divisor']}, {meta['date_utc']}")
        per_t = payload["summary"][key]["per_T"]
        for panel, lines in PLOT_PANELS.items():
            series = {}
            for line in lines:
                if panel == "memory":
                    points = sorted((int(s), c["train_peak_bytes"] * 2 ** -20)
                                    for s, c in rows.get(line, {}).items()
                                    if "error" not in c and c.get("train_peak_bytes") is not None)
                else:
                    points = sorted((int(s), r[line]) for s, r in per_t.items() if r.get(line) is not None)
                if points:
                    series[line] = ([p[0] for p in points], [p[1] for p in points])
            if not series:
                continue
            ylabel = ("time ratio (median of per-round ratios)" if panel != "memory" else
                      "training peak, live tensors (MiB)")
            safe = key.replace("/", "_")
            common.plot_lines(results_dir / f"{name}_{safe}_{panel}.png", series, "T (time steps)",
                              ylabel, f"{key}: {'time ratios' if panel != 'memory' else 'memory'} vs T",
                              logx=True, note=note, ymin=0)


def profile(results_dir: Path, arch: str, variants: list[str], steps: int, device: str = "cpu",
            row_limit: int = 14, rounds: int = 5) -> Path:
    """torch.profiler tables (self time per operator, per minibatch) of every variant, in one text file.

    Each variant is built as the time suite builds it (:func:`_setup`) and warmed up; then ``rounds``
    rounds profile one minibatch of every variant in turn, and each table averages its variant's
    rounds. Kernels called without a graph (SAF-F's first T-1 steps) are not operators: their time
    is in no row, only in the minibatch's wall time, which each section's heading gives (median)."""
    from torch.profiler import ProfilerActivity, profile as torch_profile

    cfg = (CUDA_CONFIG if device.startswith("cuda") else CPU_CONFIG)[arch]
    runners = {variant: _setup(arch, variant, steps, cfg["batch"], cfg["width_divisor"], cfg["image"], device)[0]
               for variant in variants}
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.startswith("cuda") else [])
    profiles = {variant: [] for variant in variants}
    walls = {variant: [] for variant in variants}
    for variant in variants:
        runners[variant]()
    for index in range(rounds):
        for variant in (variants if index % 2 == 0 else variants[::-1]):
            with torch_profile(activities=activities) as prof:
                start = time.perf_counter()
                runners[variant]()
                walls[variant].append(time.perf_counter() - start)
            profiles[variant].append(prof.key_averages())
    sort = "self_cuda_time_total" if device.startswith("cuda") else "self_cpu_time_total"
    sections = []
    for variant in variants:
        rows = _averaged_rows(profiles[variant], sort)
        total = sum(row[1] for row in rows)
        lines = [f"== {arch} {variant} T={steps} batch={cfg['batch']}: {rounds} profiled minibatches, "
                 f"wall time {statistics.median(walls[variant]) * 1e3:.1f} ms (median), "
                 f"self time of all operators {total:.1f} ms per minibatch ==",
                 f"{'operator':<48} {'ms per minibatch':>17} {'calls':>7}"]
        lines += [f"{name[:48]:<48} {ms:>17.2f} {calls:>7}" for name, ms, calls in rows[:row_limit]]
        sections.append("\n".join(lines))
    return common.write_text(results_dir / f"profile_{arch}_T{steps}.txt", "\n\n".join(sections) + "\n")


def _averaged_rows(averages: list, sort: str) -> list[tuple[str, float, int]]:
    """(operator, self milliseconds per minibatch, calls per minibatch), largest first, from one
    ``key_averages()`` per profiled minibatch."""
    totals: dict[str, list] = {}
    for events in averages:
        for event in events:
            row = totals.setdefault(event.key, [0.0, 0])
            row[0] += getattr(event, sort) / 1e3
            row[1] += event.count
    count = len(averages)
    return sorted(((name, ms / count, calls // count) for name, (ms, calls) in totals.items()),
                  key=lambda row: -row[1])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run (not meaningful; results go to a fresh temporary folder "
                             "unless --results-dir names one)")
    parser.add_argument("--device", type=common.device_name,
                        default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--results-dir", type=Path, default=None, help=f"default: {common.RESULTS_DIR}")
    parser.add_argument("--archs", default=None,
                        help="comma-separated configuration keys (default: all; on CPU vggws, resnet18, "
                             "vggws/full)")
    parser.add_argument("--steps", type=common.positive_int_list, default=None,
                        help="comma-separated T values")
    parser.add_argument("--variants", default=None,
                        help="comma-separated subset of variants (written to time_memory_<tag>.json)")
    parser.add_argument("--tag", type=common.file_stem, default=None,
                        help="results file suffix; required with --variants")
    parser.add_argument("--memopt-level", type=common.memopt_level, default=1,
                        help=f"optimize_memory level for {common.MEMOPT_VARIANT} (2-4 need CUDA)")
    parser.add_argument("--rounds", type=common.positive_int, default=None, help="interleaved timing rounds, one minibatch of every variant each (default 5); median")
    parser.add_argument("--memory", action="store_true",
                        help="the memory suite instead: resident set with fixed malloc thresholds and "
                             "exact live tensor bytes per cell (time_memory_account[_<tag>].json)")
    parser.add_argument("--threads", type=common.non_negative_int, default=0,
                        help="torch threads in each timing process (0: torch's default); 1 is the "
                             "fastest on a machine shared with other jobs")
    parser.add_argument("--no-account", action="store_true",
                        help="time suite: skip the exact live-tensor memory pass after the timing")
    parser.add_argument("--profile", default=None,
                        help="comma-separated variants to profile (one minibatch each) instead of timing")
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    known, _ = variants_for(args.device)
    only = None if args.variants is None else common.choose(parser, "--variants", args.variants, known)
    if only and not args.tag:
        parser.error("--variants writes a separate file: give --tag NAME (time_memory_NAME.json), "
                     "so that ratios are never taken between runs.")
    profiled = None if args.profile is None else common.choose(parser, "--profile", args.profile, known)
    config = CUDA_CONFIG if args.device.startswith("cuda") else CPU_CONFIG
    # A profile builds one model by name; the time suite takes every configuration key.
    keys = [k for k in config if k in common.ARCHS] if profiled else list(config)
    archs = None if args.archs is None else common.choose(parser, "--archs", args.archs, keys)
    if args.memopt_level > 1 and not args.device.startswith("cuda"):
        parser.error(f"--memopt-level {args.memopt_level}: levels 2-4 measure CUDA memory; use 1 "
                     "on the CPU or --device cuda.")
    results_dir = common.results_dir_arg(parser, args.results_dir, args.quick)
    if args.memory:
        run_memory(results_dir, args.device, tag=args.tag or "", quick=args.quick)
        return 0
    if profiled:
        for arch in archs or ["vggws"]:
            print(profile(results_dir, arch, profiled, (args.steps or [6])[0], args.device, rounds=args.rounds or 5))
        return 0
    run(results_dir, args.quick, args.device, tuple(archs) if archs else None, args.steps,
        only_variants=only, tag=args.tag or "", memopt_level=args.memopt_level, rounds=args.rounds,
        account=not args.no_account, threads=args.threads)
    return 0


if __name__ == "__main__":
    main()
