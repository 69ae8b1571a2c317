"""Time and peak memory of one training minibatch for every method, as a function of T.

Every (model, method, T) runs in its own freshly forked process: one warm-up minibatch, then
``repeats`` timed minibatches (the minimum is reported, the machines are shared and noisy).
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
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from spikingjelly.activation_based import functional

from spikingjelly_saf import backends
from saf_examples.measure import max_rss_bytes, warm_up_runtime
from saf_examples.methods import get_method

from . import common

SPIKING_METHODS = ["saf-e", "saf-e-acc", "saf-e-acc-loop", "saf-f", "ottt-o", "ottt-a", "bptt",
                   common.MEMOPT_VARIANT, "sltt", "dsr"]
IDEALS = ["ideal-e", "ideal-e-acc", "ideal-f"]
#: Each SAF method's ideal: the ReLU network with the same schedule.
IDEAL_OF = {"saf-e": "ideal-e", "saf-e-acc": "ideal-e-acc", "saf-e-acc-loop": "ideal-e",
            "saf-f": "ideal-f"}

#: "Why SAF instead of memopt?": memopt against plain BPTT, and SAF against memopt.
MEMOPT_RATIOS = [(common.MEMOPT_VARIANT, "bptt"), ("saf-e", common.MEMOPT_VARIANT),
                 ("saf-f", common.MEMOPT_VARIANT), ("saf-e-acc", common.MEMOPT_VARIANT),
                 ("sltt", common.MEMOPT_VARIANT)]

STEPS = [1, 2, 4, 6, 8, 16, 32]
#: What fits the 30-minute budget on 2 shared CPU cores: ottt_spiking_vggws with every conv width
#: divided by 4 (same structure, 32x32 input), and the full ResNet-18 at batch 4 up to T=16.
CPU_CONFIG = {"vggws": {"batch": 16, "width_divisor": 4, "image": 32, "T": STEPS},
              "resnet18": {"batch": 4, "width_divisor": 1, "image": 32, "T": [1, 2, 4, 8, 16]}}
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
    return name, backend or "torch"


def _ideal_train_step(schedule: str, model, optimizer, x_seq, target):
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
        optimizer.step()
        return loss.detach(), None
    for t in range(steps):  # ideal-e
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x_seq[:, t]), target)
        loss.backward()
        optimizer.step()
    return loss.detach(), None


def measure(arch: str, variant: str, steps: int, batch: int, width_divisor: int, image: int,
            device: str, repeats: int, memopt_level: int = 1) -> dict:
    """Runs in a fresh process: build, record the baseline, warm up, time ``repeats`` minibatches."""
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
        if backend != "torch":
            common.set_saf_backend(model, backend)
    model = model.to(dev).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    x = torch.rand(batch, 3, image, image, device=dev)
    x_seq = x.unsqueeze(1).repeat(1, steps, 1, 1, 1)  # direct encoding: the image at every step
    target = torch.randint(0, 10, (batch,), device=dev)
    if name == common.MEMOPT_VARIANT:
        common.apply_memopt(model, arch, x_seq.transpose(0, 1), memopt_level)
    warm_up_runtime(dev)
    common.synchronize(dev)
    baseline_rss = max_rss_bytes()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
        baseline_cuda = torch.cuda.memory_allocated(dev)

    one_minibatch = _minibatch_runner(name, method, model, optimizer, x_seq, target, dev)

    one_minibatch()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        one_minibatch()
        times.append(time.perf_counter() - start)
    result = {"time_s": min(times), "times_s": times,
              "peak_rss_bytes": max_rss_bytes(), "baseline_rss_bytes": baseline_rss}
    result["train_peak_bytes"] = result["peak_rss_bytes"] - baseline_rss
    if dev.type == "cuda":
        result["cuda_max_allocated_bytes"] = torch.cuda.max_memory_allocated(dev)
        result["cuda_baseline_bytes"] = baseline_cuda
        result["train_peak_bytes"] = result["cuda_max_allocated_bytes"] - baseline_cuda
    return result


def variants_for(device: str) -> tuple[list[str], dict]:
    """The measured variants and, for fused backends that cannot run here, why they are skipped."""
    variants = list(SPIKING_METHODS)
    skipped = {}
    for backend in backends.SUPPORTED_BACKENDS["m"]:
        if backend == "torch":
            continue
        if not device.startswith("cuda"):
            skipped[backend] = ("fused backends are GPU paths; on CPU only an interpreter could run "
                                "them, which is not a performance path")
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
    """Ratios against the targets, per model, at T=6 and over all T."""
    summary = {}
    for arch, rows in models.items():
        def value(variant, steps, key):
            cell = rows.get(variant, {}).get(str(steps))
            return None if cell is None or "error" in cell else cell[key]

        def ratio(a, b, steps, key="time_s"):
            va, vb = value(a, steps, key), value(b, steps, key)
            return None if va is None or vb is None or vb <= 0 else va / vb

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


def run(results_dir: Path, quick: bool = False, device: str = "cpu",
        archs: tuple[str, ...] = ("vggws", "resnet18"), steps_list=None, log=print,
        only_variants=None, tag: str = "", memopt_level: int = 1, rounds=None, repeats=None) -> dict:
    """Measure every variant (or ``only_variants``) and write ``time_memory[_<tag>][_cuda].json``.

    A subset goes to its own file (give ``tag``), so that ratios are only taken within one run.
    """
    cuda = device.startswith("cuda")
    config = {k: dict(v) for k, v in (CUDA_CONFIG if cuda else CPU_CONFIG).items()}
    if quick:
        archs = ("vggws",)
        config["vggws"].update(batch=2, width_divisor=16, image=16, T=[2])
    if steps_list:
        for arch in archs:
            config[arch]["T"] = steps_list
    variants, skipped = variants_for(device)
    if only_variants:
        unknown = sorted(set(only_variants) - set(variants))
        if unknown:
            raise ValueError(f"unknown variants {unknown}; measurable here: {', '.join(variants)}.")
        variants = [v for v in variants if v in only_variants]
    repeats = repeats or (1 if quick else 3)
    rounds = rounds or (1 if quick else 2)
    models = {}
    for arch in archs:
        rows = models.setdefault(arch, {})
        cfg = config[arch]
        cannot_run = {}
        # Rounds interleave the methods: load from other processes on a shared machine then hits
        # every method alike, and the minimum over rounds discards most of it.
        for round_index in range(rounds):
            for steps in cfg["T"]:
                for variant in variants:
                    if variant in cannot_run:
                        rows.setdefault(variant, {})[str(steps)] = cannot_run[variant]
                        continue
                    result = common.run_in_fresh_process(
                        measure, arch, variant, steps, cfg["batch"], cfg["width_divisor"],
                        cfg["image"], device, repeats, memopt_level)
                    if "error" in result:
                        cannot_run[variant] = result
                    cell = rows.setdefault(variant, {}).setdefault(str(steps), result)
                    if cell is not result and "error" not in result:
                        cell["times_s"] = cell["times_s"] + result["times_s"]
                        cell["time_s"] = min(cell["times_s"])
                        cell["train_peak_bytes_rounds"] = cell.get(
                            "train_peak_bytes_rounds", [cell["train_peak_bytes"]]) + [result["train_peak_bytes"]]
                    log(f"  time/memory round {round_index + 1}/{rounds} {arch} {variant} T={steps}: "
                        + (result["error"] if "error" in result else
                           f"{result['time_s']:.3f} s, +{result['train_peak_bytes'] / 2**20:.1f} MiB"))
    payload = {
        "meta": common.metadata(device),
        "settings": {"config": {a: config[a] for a in archs}, "rounds": rounds,
                     "repeats": repeats,
                     "timing": f"each round: fresh process, 1 warm-up + {repeats} timed minibatch(es); "
                               "time_s = minimum over all timed minibatches; memory from the first round",
                     "optimizer": "SGD(lr=1e-3, momentum=0.9)", "loss": "cross_entropy",
                     "input": "direct encoding: one random image repeated over T",
                     "neuron": "tau=2, V_th=1, soft reset, detach_reset (OTTT setting); "
                               "SAF-F with SpikeRepresentation; DSR = DSRIFNode(T) defaults",
                     "memory": ("torch.cuda.max_memory_allocated minus allocated before training"
                                if cuda else
                                "ru_maxrss of a fresh forked process after training minus its "
                                "ru_maxrss after building model, optimizer and input"),
                     "skipped_backends": skipped,
                     "memopt": f"{common.MEMOPT_VARIANT}: memopt.optimize_memory(level={memopt_level}, "
                               "compress=True) on ResNet-18's BasicBlocks / the VGG's "
                               "neuron-terminated blocks, probed with the measured input",
                     "variants": variants},
        "models": models,
        "summary": summarize(models),
    }
    name = "time_memory" + (f"_{tag}" if tag else "") + ("_cuda" if cuda else "")
    common.write_json(results_dir, name, payload)
    plot(results_dir, payload, name)
    return payload


def plot(results_dir: Path, payload: dict, name: str) -> None:
    for arch, rows in payload["models"].items():
        cfg = payload["settings"]["config"][arch]
        note = (f"{payload['meta']['device']} ({payload['meta']['cpu_model']}), batch {cfg['batch']}, "
                f"{cfg['image']}x{cfg['image']}, width/{cfg['width_divisor']}, "
                f"{payload['meta']['date_utc']}")
        for key, ylabel, suffix in (("time_s", "seconds per minibatch", "time"),
                                    ("train_peak_bytes", "training peak memory (MiB)", "memory")):
            series = {}
            for variant, cells in rows.items():
                points = [(int(s), c[key]) for s, c in cells.items() if "error" not in c]
                points.sort()
                scale = 1 if key == "time_s" else 2 ** -20
                series[variant] = ([p[0] for p in points], [p[1] * scale for p in points])
            common.plot_lines(results_dir / f"{name}_{arch}_{suffix}.png", series, "T (time steps)",
                              ylabel, f"{arch}: {suffix} vs T", logx=True,
                              logy=key == "time_s", note=note)


def profile(results_dir: Path, arch: str, variants: list[str], steps: int, device: str = "cpu",
            row_limit: int = 12) -> Path:
    """torch.profiler tables (self time per operator) of one minibatch per variant, in one text file."""
    from torch.profiler import ProfilerActivity, profile as torch_profile

    cfg = (CUDA_CONFIG if device.startswith("cuda") else CPU_CONFIG)[arch]
    dev = torch.device(device)
    sections = []
    for variant in variants:
        torch.manual_seed(0)
        name, _ = _variant_parts(variant)
        if name.startswith("ideal"):
            model, method = common.build(arch, "ideal", steps, cfg["width_divisor"])
            functional.set_step_mode(model, "m" if name == "ideal-e-acc" else "s")
            method = None
        else:
            model, method = common.build(arch, "saf-e-acc" if name == "saf-e-acc-loop" else name,
                                         steps, cfg["width_divisor"])
            if name == "saf-e-acc-loop":
                functional.set_step_mode(model, "s")
        model = model.to(dev).train()
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
        x_seq = torch.rand(cfg["batch"], 1, 3, cfg["image"], cfg["image"], device=dev).repeat(
            1, steps, 1, 1, 1)
        target = torch.randint(0, 10, (cfg["batch"],), device=dev)
        if name == common.MEMOPT_VARIANT:
            common.apply_memopt(model, arch, x_seq.transpose(0, 1))

        one_minibatch = _minibatch_runner(name, method, model, optimizer, x_seq, target, dev)

        one_minibatch()
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
        with torch_profile(activities=activities) as prof:
            one_minibatch()
        sort = "self_cuda_time_total" if dev.type == "cuda" else "self_cpu_time_total"
        sections.append(f"== {arch} {variant} T={steps} batch={cfg['batch']} ==\n"
                        + prof.key_averages().table(sort_by=sort, row_limit=row_limit))
    path = results_dir / f"profile_{arch}_T{steps}.txt"
    path.write_text("\n\n".join(sections) + "\n")
    return path


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--results-dir", type=Path, default=common.RESULTS_DIR)
    parser.add_argument("--archs", default="vggws,resnet18")
    parser.add_argument("--steps", default=None, help="comma-separated T values")
    parser.add_argument("--variants", default=None,
                        help="comma-separated subset of variants (written to time_memory_<tag>.json)")
    parser.add_argument("--tag", default=None, help="results file suffix; required with --variants")
    parser.add_argument("--memopt-level", type=int, default=1,
                        help=f"optimize_memory level for {common.MEMOPT_VARIANT} (2-4 need CUDA)")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 2)")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed minibatches per process, after one warm-up (default 3)")
    parser.add_argument("--profile", default=None,
                        help="comma-separated variants to profile (one minibatch each) instead of timing")
    args = parser.parse_args(argv)
    try:
        steps = [int(s) for s in args.steps.split(",")] if args.steps else None
    except ValueError:
        parser.error(f"--steps: expected comma-separated integers, got {args.steps!r}.")
    only = [v.strip() for v in args.variants.split(",") if v.strip()] if args.variants else None
    if only and not args.tag:
        parser.error("--variants writes a separate file: give --tag NAME (time_memory_NAME.json), "
                     "so that ratios are never taken between runs.")
    if only:
        known, _ = variants_for(args.device)
        unknown = sorted(set(only) - set(known))
        if unknown:
            parser.error(f"--variants: unknown {unknown}; choose from {', '.join(known)}.")
    if args.memopt_level > 1 and not args.device.startswith("cuda"):
        parser.error(f"--memopt-level {args.memopt_level}: levels 2-4 measure CUDA memory; use 1 "
                     "on the CPU or --device cuda.")
    if args.profile:
        for arch in args.archs.split(","):
            print(profile(args.results_dir, arch, args.profile.split(","), (steps or [6])[0],
                          args.device))
        return
    run(args.results_dir, args.quick, args.device, tuple(args.archs.split(",")), steps,
        only_variants=only, tag=args.tag or "", memopt_level=args.memopt_level, rounds=args.rounds,
        repeats=args.repeats)


if __name__ == "__main__":
    main()
