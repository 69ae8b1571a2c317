"""Markdown tables from the JSON results: the README summary and ``results/RESULTS.md``."""

from __future__ import annotations

import contextvars
import functools
import math
import statistics
from pathlib import Path
from typing import Optional

from .common import (SHAPE_ERRORS, ResultsFileError, read_json, results_file_error, results_without,
                     shape_problem)

#: The generated region of docs/benchmarks.md, section 2.
DOCS_START = "<!-- TIME-MEMORY-TABLES:START -->"
DOCS_END = "<!-- TIME-MEMORY-TABLES:END -->"


_SEARCHING = contextvars.ContextVar("searching_broken_file", default=False)


def names_a_broken_file(build):
    """``build(results_dir, ...)``, a results file of another shape reported as a
    :class:`ResultsFileError` that names it and the command that writes it."""

    @functools.wraps(build)
    def checked(results_dir, *args, **kwargs):
        try:
            return build(results_dir, *args, **kwargs)
        except ResultsFileError:
            raise
        except SHAPE_ERRORS as error:
            if _SEARCHING.get():
                raise
            raise _broken_file(lambda: build(results_dir, *args, **kwargs), Path(results_dir),
                               error) from error

    return checked


def _broken_file(build, results_dir: Path, error: Exception) -> ResultsFileError:
    """The file whose absence lets ``build`` finish, found by setting the files aside one by one."""
    what = shape_problem(error)
    token = _SEARCHING.set(True)
    try:
        hidden = []
        for path in sorted(results_dir.glob("*.json")):
            hidden.append(path.stem)
            with results_without(*hidden):
                try:
                    build()
                except Exception:
                    continue
            return results_file_error(path, what)
    finally:
        _SEARCHING.reset(token)
    return ResultsFileError(f"a results file in {results_dir} {what}.")


def _fmt(value, digits: int = 2) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, (int, float)):
        return f"{value:.{digits}f}"
    return str(value)


def _verdict(value: Optional[float], limit: float, below: bool = True) -> str:
    if value is None:
        return "not measured"
    ok = value <= limit if below else value >= limit
    return "met" if ok else "**missed**"


def _over_steps(summary: dict, key: str) -> Optional[tuple]:
    """``(median, lowest, highest)`` of a ratio over every measured T; ``None`` where never measured.
    The median, not one T: on a shared machine a single T's minibatch can be slowed by 30 %."""
    values = [row[key] for row in summary["per_T"].values() if row.get(key) is not None]
    if not values:
        return None
    return statistics.median(values), min(values), max(values)


def _fmt_spread(spread: Optional[tuple]) -> str:
    if spread is None:
        return "n/a"
    median, lowest, highest = spread
    return f"{median:.2f} ({lowest:.2f}-{highest:.2f})"


def _machine_line(payload: dict) -> str:
    meta = payload["meta"]
    return (f"{meta['device']}, {meta['cpu_model']} ({meta['cpu_count']} cores), "
            f"torch {meta['torch']}, spikingjelly {meta['spikingjelly']}, {meta['date_utc']}")


@names_a_broken_file
def claims_rows(results_dir: Path) -> list[str]:
    rows = ["| Claim | Target | Measured | Verdict |", "|---|---|---|---|"]
    ops = read_json(results_dir, "ops")
    if ops:
        for arch, entry in ops["models"].items():
            r = entry["ratios"]
            source = " (OTTT analytical)" if entry["ottt_source"] == "analytical" else ""
            rows.append(f"| forward synaptic FLOPs SAF / OTTT, {arch}{source} | ~0.50 | "
                        f"{_fmt(r['saf_over_ottt_synaptic_flops'], 3)} | "
                        f"{_verdict(r['saf_over_ottt_synaptic_flops'], 0.51)} |")
            rows.append(f"| forward synaptic FLOPs SAF / LIF, {arch} | 1.00 | "
                        f"{_fmt(r['saf_over_lif_synaptic_flops'], 3)} | "
                        f"{_verdict(abs(r['saf_over_lif_synaptic_flops'] - 1.0), 1e-9)} |")
    rows += time_claim_rows(read_json(results_dir, "time_memory"))
    rows += memory_claim_rows(read_json(results_dir, "time_memory_account"))
    return rows


#: The time targets: each SAF method within 1.05 x its ReLU ideal (median over T), and at
#: T=6 SAF-E / OTTT_O <= 0.75 and SAF-F / OTTT_A <= 0.35.
IDEAL_PAIRS = (("saf-e", "ideal-e"), ("saf-e-acc", "ideal-e-acc"), ("saf-f", "ideal-f"))
OTTT_TARGETS = (("saf-e/ottt-o time", 0.75), ("saf-f/ottt-a time", 0.35))


def _model_label(key: str, cfg: dict) -> str:
    return f"{key.split('/')[0]} width/{cfg['width_divisor']} B={cfg['batch']}"


def _backends_of(rows: dict, variant: str) -> str:
    found = sorted({b for c in rows.get(variant, {}).values() for b in c.get("saf_backends", [])})
    return "+".join(found) or "?"


def time_claim_rows(timing: Optional[dict]) -> list[str]:
    """Time ratios, all from one run (``time_memory.json``): medians over interleaved rounds."""
    if not timing:
        return []
    rows = []
    for key, summary in timing["summary"].items():
        cfg = timing["settings"]["config"][key]
        label = _model_label(key, cfg)
        cells = timing["models"][key]
        steps = sorted(int(s) for s in summary["per_T"])
        if len(steps) > 1:
            where = f"median over T={steps[0]}-{steps[-1]}"
            for saf, ideal in IDEAL_PAIRS:
                if saf in cells and ideal in cells:
                    spread = _over_steps(summary, f"{saf}/{ideal} time")
                    rows.append(f"| time {saf} ({_backends_of(cells, saf)}) / {ideal}, {label}, {where} "
                                f"| <= 1.05 | {_fmt_spread(spread)} | {_verdict(spread and spread[0], 1.05)} |")
        for ratio, limit in OTTT_TARGETS:
            value = summary["per_T"].get("6", {}).get(ratio)
            if ratio.split("/")[1].split()[0] not in cells:
                continue
            verdict = _verdict(value, limit) if value is not None else "not measured (OTTT cannot run)"
            rows.append(f"| {ratio}, {label}, T=6 | <= {limit:.2f} | {_fmt(value)} | {verdict} |")
    return rows


def _exact(cell: Optional[dict]) -> Optional[int]:
    return None if not cell or "exact" not in cell else cell["exact"]["train_peak_bytes"]


def memory_claim_rows(account: Optional[dict]) -> list[str]:
    """Memory claims from the exact live-tensor measure (``time_memory_account.json``)."""
    if not account:
        return []
    rows = []
    for label, cells in account["models"].items():
        steps = sorted({int(s) for c in cells.values() for s in c})

        def ratio(a, b, t):
            va, vb = _exact(cells.get(a, {}).get(str(t))), _exact(cells.get(b, {}).get(str(t)))
            return None if va is None or not vb else va / vb

        for a, b in (("saf-e", "ottt-o"), ("saf-f", "ottt-a")):
            values = [r for r in (ratio(a, b, t) for t in steps) if r is not None]
            if values:
                spread = (statistics.median(values), min(values), max(values))
                rows.append(f"| {a}/{b} training memory (exact live tensors), {label}, T in {steps} | "
                            f"<= 0.6 | {_fmt_spread(spread)} | {_verdict(spread[0], 0.6)} |")
        if len(steps) > 1 and 4 in steps:
            top = steps[-1]
            for variant in ("saf-e", "saf-f", "ottt-o", "bptt", "bptt+memopt"):
                low, high = _exact(cells.get(variant, {}).get("4")), _exact(cells.get(variant, {}).get(str(top)))
                if low and high:
                    value = high / low
                    if variant.startswith("bptt"):
                        target, verdict = "grows", ("grows" if value > 1.10 else "flat")
                    else:
                        target, verdict = "<= 1.10 (flat)", _verdict(value, 1.10)
                    rows.append(f"| training memory T={top} / T=4 (exact), {variant}, {label} | {target} | "
                                f"{_fmt(value)} | {verdict} |")
        repeated = [[cell["rss_train_peak_bytes"]] + cell["rss_train_peak_bytes_repeats"]
                    for c in cells.values() for cell in c.values()
                    if cell.get("rss_train_peak_bytes_repeats")]
        if repeated:
            spread = max(max(r) / min(r) - 1 for r in repeated)
            rows.append(f"| resident-set training peak with fixed malloc thresholds: largest spread of "
                        f"{len(repeated)} cells x {max(len(r) for r in repeated)} runs, {label} | "
                        f"deterministic (<= 1 %) | {100 * spread:.2f} % | {_verdict(spread, 0.01)} |")
    return rows


def memory_account_rows(account: Optional[dict], label: Optional[str] = None,
                        steps: Optional[int] = None) -> list[str]:
    """What is alive at each method's peak, by category (MiB), for one grid entry and T."""
    if not account:
        return []
    label = label or next(iter(account["models"]))
    cells = account["models"][label]
    if steps is None:
        all_steps = sorted({int(s) for c in cells.values() for s in c})
        steps = 4 if 4 in all_steps else all_steps[0]
    mib = 2 ** -20
    cats = ("gradients", "optimizer state", "carried state", "saved for backward", "transient")
    lines = [f"Peak of one training minibatch, {label}, T={steps} (MiB; exact live tensor bytes; the "
             "training peak excludes parameters and input, which every method holds alike):", "",
             "| method | training peak (exact) | allocator peak | resident set (fixed thresholds) | "
             + " | ".join(cats) + " | peak reached |",
             "|---|---|---|---|" + "---|" * len(cats) + "---|"]
    for variant, by_t in cells.items():
        cell = by_t.get(str(steps))
        if not cell or "exact" not in cell:
            continue
        exact = cell["exact"]
        at = exact.get("at_peak", {})
        by = at.get("by_category", {})
        repeats = cell.get("rss_train_peak_bytes_repeats", [])
        rss = ", ".join(f"{v * mib:.1f}" for v in [cell["rss_train_peak_bytes"]] + repeats)
        where = ("backward" if at.get("in_backward") else f"in {at.get('allocated_in', '?')}")
        lines.append(f"| {variant} | {exact['train_peak_bytes'] * mib:.2f} | "
                     f"{exact.get('allocator_train_peak_bytes', 0) * mib:.2f} | {rss} | "
                     + " | ".join(f"{by.get(c, 0) * mib:.2f}" for c in cats)
                     + f" | step {at.get('model_calls_so_far', '?')}, {where} |")
    return lines


def memory_layer_rows(account: Optional[dict], label: Optional[str] = None, steps: Optional[int] = None,
                      variants=("saf-e", "ottt-o", "bptt", "ideal-e")) -> list[str]:
    """Per layer at the peak: saved-for-backward and carried-state MiB of a few methods."""
    if not account:
        return []
    label = label or next(iter(account["models"]))
    cells = account["models"][label]
    if steps is None:
        all_steps = sorted({int(s) for c in cells.values() for s in c})
        steps = 4 if 4 in all_steps else all_steps[0]
    mib = 2 ** -20
    per = {}
    for variant in variants:
        cell = cells.get(variant, {}).get(str(steps))
        if cell and "exact" in cell:
            per[variant] = cell["exact"].get("at_peak", {}).get("by_layer", {})
    layers = sorted({name for by in per.values() for name, cats in by.items()
                     if cats.get("saved for backward") or cats.get("carried state")},
                    key=lambda n: [int(p) if p.isdigit() else p for p in n.replace("(", "").split(".")])
    lines = [f"Per layer at the peak, {label}, T={steps}: saved for backward / carried state (MiB):", "",
             "| layer | " + " | ".join(per) + " |", "|---|" + "---|" * len(per)]
    for name in layers:
        values = []
        for variant in per:
            cats = per[variant].get(name, {})
            values.append(f"{cats.get('saved for backward', 0) * mib:.2f} / {cats.get('carried state', 0) * mib:.2f}")
        lines.append(f"| {name} | " + " | ".join(values) + " |")
    totals = []
    for variant in per:
        saved = sum(c.get("saved for backward", 0) for c in per[variant].values())
        carried = sum(c.get("carried state", 0) for c in per[variant].values())
        totals.append(f"{saved * mib:.2f} / {carried * mib:.2f}")
    lines.append("| total | " + " | ".join(totals) + " |")
    return lines


@names_a_broken_file
def time_memory_docs_markdown(results_dir: Path) -> str:
    """The generated block of docs/benchmarks.md section 2 (between the TIME-MEMORY markers)."""
    timing = read_json(results_dir, "time_memory")
    account = read_json(results_dir, "time_memory_account")
    lines = []
    if timing:
        meta = timing["meta"]
        loads = [v for pair in timing.get("loadavg", {}).values() for v in pair if v]
        load = (f"; load average (1 min) {min(l[0] for l in loads):.1f}-{max(l[0] for l in loads):.1f}"
                if loads else "")
        lines += [f"Time (`time_memory.json`): {_machine_line(timing)}{load}; "
                  f"{timing['settings']['timing']}.", "",
                  "| claim | target | measured | verdict |", "|---|---|---|---|"]
        lines += time_claim_rows(timing)
        lines += ["", "Seconds per minibatch (median over the rounds):", ""]
        for key, cells in timing["models"].items():
            cfg = timing["settings"]["config"][key]
            steps = cfg["T"]
            lines += [f"{_model_label(key, cfg)}:", "",
                      "| method | " + " | ".join(f"T={t}" for t in steps) + " |",
                      "|---|" + "---|" * len(steps)]
            for variant, by_t in cells.items():
                values = []
                for t in steps:
                    c = by_t.get(str(t))
                    values.append("" if c is None else "cannot run" if "error" in c else f"{c['time_s']:.3f}")
                lines.append(f"| {variant} | " + " | ".join(values) + " |")
            lines.append("")
    memopt = memopt_rows(results_dir)
    if memopt:
        lines += memopt + [""]
    if account:
        lines += [f"Memory (`time_memory_account.json`): {_machine_line(account)}.", "",
                  "| claim | target | measured | verdict |", "|---|---|---|---|"]
        lines += memory_claim_rows(account)
        lines += [""] + memory_account_rows(account) + [""] + memory_layer_rows(account)
        lines += ["", "Training peak (exact live tensor bytes, MiB) per grid entry and T:", ""]
        for label, cells in account["models"].items():
            steps = sorted({int(s) for c in cells.values() for s in c})
            lines += [f"{label}:", "", "| method | " + " | ".join(f"T={t}" for t in steps) + " |",
                      "|---|" + "---|" * len(steps)]
            for variant, by_t in cells.items():
                values = []
                for t in steps:
                    c = by_t.get(str(t))
                    values.append("" if c is None else "cannot run" if "error" in c
                                  else f"{_exact(c) * 2 ** -20:.1f}")
                lines.append(f"| {variant} | " + " | ".join(values) + " |")
            lines.append("")
    return "\n".join(lines).strip()


@names_a_broken_file
def accuracy_rows(results_dir: Path) -> list[str]:
    accuracy = read_json(results_dir, "accuracy")
    if not accuracy:
        return []
    s = accuracy["settings"]
    readout = " (every method read from its output's firing rate)" if "firing rate" in s.get("readout", "") else ""
    rows = [f"Digits (scikit-learn), T={s['T']}, {s['epochs']} epochs, {len(s['seeds'])} seeds{readout}:", "",
            "| Method | test accuracy (mean ± std) | to_lif deployment |", "|---|---|---|"]
    for name, row in accuracy["methods"].items():
        lif = (f"{row['to_lif_mean'] * 100:.2f} ± {row['to_lif_std'] * 100:.2f} %"
               if row.get("to_lif_mean") is not None else
               ("unavailable" if name.startswith("saf-") else "-"))
        rows.append(f"| {name} | {row['mean'] * 100:.2f} ± {row['std'] * 100:.2f} % | {lif} |")
    return rows


def _pct(cell: Optional[dict]) -> str:
    if not cell:
        return "-"
    if len(cell.get("values", ())) == 1:  # one seed: no spread to show
        return f"{cell['mean'] * 100:.2f} % (1 seed)"
    return f"{cell['mean'] * 100:.2f} ± {cell['std'] * 100:.2f} %"


#: The Fashion-MNIST run of the README and of docs/benchmarks.md's generated region.
FASHION_MNIST_CURRENT = "fashion_mnist_T6"
FASHION_DOCS_START = "<!-- FASHION-MNIST-TABLE:START -->"
FASHION_DOCS_END = "<!-- FASHION-MNIST-TABLE:END -->"
#: Each SAF method and the baselines it is held to (its OTTT twin and BPTT).
FASHION_TWINS = (("saf-e", ("ottt-o", "bptt")), ("saf-e-acc", ("ottt-a", "bptt")),
                 ("saf-f", ("ottt-a", "bptt")), ("saf-f-rep", ("ottt-a", "bptt")))


def _epoch_curve(row: dict) -> str:
    return " / ".join(f"{100 * v:.2f}" for e, v in zip(row["curve_epochs"], row["curve_accuracy_mean"])
                      if float(e).is_integer())


def _fashion_mnist_rate_rows(payload: dict, timing: Optional[dict]) -> list[str]:
    """The table of a run with the firing-rate readout as every method's prediction
    (``bench_fashion_mnist`` with the firing-rate readout)."""
    s, meta, summary = payload["settings"], payload["meta"], payload["summary"]
    timed = (timing or {}).get("summary") or summary
    seeds = sorted({seed for row in summary.values() for seed in row["seeds"]})
    status = ("" if payload.get("complete") else
              f" **Partial: {payload.get('finished_runs')} runs finished** (the runs were started "
              "round-robin, every method for one seed before the next seed).")
    short = s.get("batches_per_epoch") not in (None, "all")
    epoch = (f"{s['epochs']} short epochs of {s['batches_per_epoch']} minibatches of {s['batch']} "
             f"(each a fresh shuffle of all 60000 training images)" if short
             else f"{s['epochs']} epochs of all 60000 training images")
    lines = [f"Fashion-MNIST, {epoch}; all 10000 test images; CSNN C={s['channels']} with {s['pool']} "
             f"pooling, T={s['T']}, tau={s['tau']}, {s['optimizer']}, seeds {seeds}; "
             f"{meta['device']} ({meta['cpu_model']}, {meta['cpu_count']} cores"
             f"{', shared with other jobs' if s.get('machine_shared') else ''}), {meta['date_utc']}."
             + (f" SAF neurons: {s['saf_backend']}." if s.get("saf_backend") else "") + status, "",
             "| method | test accuracy (firing rate) | after each epoch | Obar[T] readout | "
             "to_lif read as out_seq.mean(0): accuracy, predictions differing | s / full epoch | "
             "training peak memory |",
             "|---|---|---|---|---|---|---|"]
    for method, row in summary.items():
        t = timed.get(method, row)
        lif = (f"{_pct(row['to_lif_accuracy'])}, {sum(row['to_lif_prediction_mismatches'])} of "
               f"{10000 * len(row['to_lif_prediction_mismatches'])}" if row.get("to_lif_accuracy") else "")
        lines.append(f"| {method} | {_pct(row.get('accuracy'))} | {_epoch_curve(row)} | "
                     f"{_pct(row.get('accuracy_weighted_readout'))} | {lif} | "
                     f"{t['epoch_seconds_min']:.0f} | {row['train_peak_mib_mean']:.0f} MiB |")
    lines += ["", "| SAF method | against | difference (points, mean) | larger seed std (points) | "
              "within 1 point or the spread (or above) |", "|---|---|---|---|---|"]
    for saf, others in FASHION_TWINS:
        for other in others:
            if saf not in summary or other not in summary:
                continue
            a, b = summary[saf]["accuracy"], summary[other]["accuracy"]
            diff = 100 * (a["mean"] - b["mean"])
            spread = 100 * max(a["std"], b["std"])
            verdict = "yes" if abs(diff) <= max(1.0, spread) or diff > 0 else "no"
            n = min(len(a["values"]), len(b["values"]))
            lines.append(f"| {saf} | {other} | {diff:+.2f} | "
                         f"{spread:.2f}{' (one seed)' if n < 2 else ''} | {verdict} |")
    return lines


@names_a_broken_file
def fashion_mnist_rows(results_dir: Path, name: str = "fashion_mnist",
                       timing_name: Optional[str] = None) -> list[str]:
    """Accuracy, deployment, time and memory per method on Fashion-MNIST (times from
    ``timing_name``, default ``<name>_timing``, when that file exists)."""
    payload = read_json(results_dir, name)
    if not payload or not payload.get("summary"):
        return []
    if "evals_per_epoch" in payload["settings"]:
        return _fashion_mnist_rate_rows(payload, read_json(results_dir, timing_name or f"{name}_timing"))
    # Earlier runs: each method's own readout (SAF: Obar[T]) and the rate readout.
    # Times from a separate timing run (one run at a time), when there is one: the accuracy run's
    # concurrent runs on a shared machine mostly time the other jobs.
    timing = read_json(results_dir, timing_name or f"{name}_timing")
    timed = (timing or {}).get("summary") or payload["summary"]
    s, meta = payload["settings"], payload["meta"]
    seeds = sorted({seed for row in payload["summary"].values() for seed in row["seeds"]})
    status = ("" if payload.get("complete") else
              f" **Partial results: {payload.get('finished_runs')} runs finished.**")
    images = "all 60000" if not s.get("train_subset") else f"the first {s['train_subset']}"
    lines = [f"Fashion-MNIST ({images} training images, {s['epochs']:g} epoch(s) = "
             f"{payload['runs'][0].get('minibatches', '?')} minibatches of {s['batch']}; "
             f"{'all 10000' if not s.get('test_subset') else 'the first ' + str(s['test_subset'])} test "
             f"images), CSNN C={s['channels']} with {s['pool']} pooling, T={s['T']}, {s['optimizer']}, "
             f"seeds {seeds}, {meta['device']} ({meta['cpu_model']}, {meta['cpu_count']} cores"
             f"{', shared with other jobs' if s.get('machine_shared') else ''}), {meta['date_utc']}."
             + status + (f" Times: a separate timing run, one run at a time ({timing['meta']['date_utc']}, "
                         f"{timing['runs'][0]['minibatches']} minibatches per method and seed, "
                         f"seeds {timing['settings']['seeds']}, fastest seed's median)." if timing else
                         " Times: fastest seed's median."), "",
             "| Method | test accuracy (own readout) | rate readout | to_lif deployment (own readout) | s / epoch | "
             "s / minibatch | training peak memory |",
             "|---|---|---|---|---|---|---|"]
    for method, row in payload["summary"].items():
        t = timed.get(method, row)
        rate_lif = (f" (rate readout: {_pct(row['to_lif_accuracy_rate_readout'])})"
                    if row.get("to_lif_accuracy_rate_readout") else "")
        lines.append(f"| {method} | {_pct(row.get('accuracy'))} | {_pct(row.get('accuracy_rate_readout'))} | "
                     f"{_pct(row.get('to_lif_accuracy'))}{rate_lif} | {t['epoch_seconds_min']:.0f} | "
                     f"{t.get('minibatch_seconds_best', t['minibatch_seconds_median']):.3f} | "
                     f"{row['train_peak_mib_mean']:.0f} MiB |")
    return lines


@names_a_broken_file
def memopt_rows(results_dir: Path, name: str = "time_memory_memopt") -> list[str]:
    """BPTT with memopt against BPTT and SAF, per T, from one run (``<name>_repeat.json``, when
    present, adds each variant's memory in a second run: the CPU resident-set measure of small
    working sets varies between runs)."""
    timing = read_json(results_dir, name)
    if not timing:
        return []
    repeat = read_json(results_dir, f"{name}_repeat")
    resident = "ru_maxrss" in timing["settings"].get("memory", "")
    what = ("resident-set training peak (MiB; measured before glibc's malloc thresholds were fixed, "
            "not comparable between methods: the exact figures are in the memory rows above)"
            if resident else "training peak memory (MiB, exact live tensors)")
    lines = [f"Why SAF instead of memopt? One run ({_machine_line(timing)}), seconds per minibatch "
             f"and {what}" + (" (in parentheses: the memory in a second run)"
                              if repeat else "") + "; memopt at level 1 (CPU):", "",
             "| model | T | bptt | bptt+memopt | saf-e | saf-f | sltt | memopt/bptt time, memory | "
             "saf-e/memopt time, memory | saf-f/memopt time, memory |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for arch, rows in timing["models"].items():
        per_t = timing["summary"][arch]["per_T"]
        for steps in timing["settings"]["config"][arch]["T"]:
            def cell(variant):
                c = rows.get(variant, {}).get(str(steps))
                if c is None:
                    return "-"
                if "error" in c:
                    return "cannot run"
                again = (repeat or {}).get("models", {}).get(arch, {}).get(variant, {}).get(str(steps))
                other = (f" ({again['train_peak_bytes'] / 2 ** 20:.0f})"
                         if again and "error" not in again else "")
                return f"{c['time_s']:.3f} s, {c['train_peak_bytes'] / 2 ** 20:.0f}{other}"

            def pair(a, b):
                r = per_t.get(str(steps), {})
                return f"{_fmt(r.get(f'{a}/{b} time'))}, {_fmt(r.get(f'{a}/{b} memory'))}"

            lines.append(f"| {arch} | {steps} | {cell('bptt')} | {cell('bptt+memopt')} | {cell('saf-e')} | "
                         f"{cell('saf-f')} | {cell('sltt')} | {pair('bptt+memopt', 'bptt')} | "
                         f"{pair('saf-e', 'bptt+memopt')} | {pair('saf-f', 'bptt+memopt')} |")
    return lines


@names_a_broken_file
def readme_markdown(results_dir: Path) -> str:
    lines = []
    timing = read_json(results_dir, "time_memory")
    reference = timing or read_json(results_dir, "ops")
    if reference:
        lines.append(f"Measured on {_machine_line(reference)}. GPU numbers are not measured.")
    if timing:
        cfg = timing["settings"]["config"]
        lines.append("Time (one run, methods interleaved, median of " + str(timing["settings"]["rounds"])
                     + " rounds, SAF on its default backend): " + "; ".join(
            f"{key.split('/')[0]} batch {c['batch']}, {c['image']}x{c['image']}, width/{c['width_divisor']}, "
            f"T in {c['T']}" for key, c in cfg.items()) + ".")
    account = read_json(results_dir, "time_memory_account")
    if account:
        lines.append(f"Memory: exact live tensor bytes of one training minibatch (the CPU analogue of "
                     f"CUDA's max_memory_allocated; `benchmarks/memory_account.py`), {account['meta']['date_utc']}.")
    lines.append("")
    lines += claims_rows(results_dir)
    memopt = memopt_rows(results_dir)
    if memopt:
        lines += [""] + memopt
    fashion = fashion_mnist_rows(results_dir, FASHION_MNIST_CURRENT)
    if fashion:
        lines += [""] + fashion
        if fashion_mnist_objective_rows(results_dir):
            lines += ["", "Why SAF-F trails OTTT_A here (its online gradient, through step T alone, "
                          "rather than its objective or its readout): BPTT trained on each "
                          "objective, and the alignment of each gradient, in "
                          "[docs/benchmarks.md](docs/benchmarks.md) section 5.1."]
    lines.append("")
    lines += accuracy_rows(results_dir)
    lines += ["", "Details, plots and the profile of missed targets: "
              "[docs/benchmarks.md](docs/benchmarks.md), "
              "[benchmarks/results/RESULTS.md](benchmarks/results/RESULTS.md)."]
    return "\n".join(lines)


def _time_memory_tables(timing: dict) -> list[str]:
    lines = []
    for arch, rows in timing["models"].items():
        cfg = timing["settings"]["config"][arch]
        steps = cfg["T"]
        for key, title, scale, digits in (("time_s", "seconds per minibatch", 1.0, 3),
                                          ("train_peak_bytes", "training peak memory (MiB)", 2 ** -20, 1)):
            lines += [f"### {arch}: {title}", "",
                      "| method | " + " | ".join(f"T={t}" for t in steps) + " |",
                      "|---|" + "---|" * len(steps)]
            for variant, cells in rows.items():
                values = []
                for t in steps:
                    cell = cells.get(str(t))
                    if cell is None:
                        values.append("")
                    elif "error" in cell:
                        values.append("cannot run")
                    elif cell.get(key) is None:
                        values.append("-")
                    else:
                        values.append(f"{cell[key] * scale:.{digits}f}")
                lines.append(f"| {variant} | " + " | ".join(values) + " |")
            lines.append("")
        errors = {v: next(c["error"] for c in cells.values() if "error" in c)
                  for v, cells in rows.items() if any("error" in c for c in cells.values())}
        for variant, error in errors.items():
            lines.append(f"- {arch} {variant} cannot run: `{error}`")
        lines += ["", f"### {arch}: ratios per T", "",
                  "| ratio | " + " | ".join(f"T={t}" for t in steps) + " |",
                  "|---|" + "---|" * len(steps)]
        per_t = timing["summary"][arch]["per_T"]
        keys = list(next(iter(per_t.values())).keys()) if per_t else []
        for key in keys:
            lines.append(f"| {key} | " + " | ".join(_fmt(per_t.get(str(t), {}).get(key))
                                                    for t in steps) + " |")
        lines.append("")
    skipped = timing["settings"].get("skipped_backends")
    if skipped:
        lines += ["Fused SAF backends not measured: "
                  + "; ".join(f"`{b}`: {why}" for b, why in skipped.items()), ""]
    return lines


@names_a_broken_file
def results_markdown(results_dir: Path) -> str:
    lines = ["# Benchmark results", "",
             "Generated by `python -m benchmarks` from the JSON files in this folder.", "",
             "## Claims", ""]
    lines += claims_rows(results_dir)
    ops = read_json(results_dir, "ops")
    if ops:
        lines += ["", "## Forward operations (one training-mode step at t=2)", "",
                  f"Machine: {_machine_line(ops)}. Input {ops['settings']['input']}.", "",
                  "| model | variant | synaptic FLOPs | MACs | ACs | neuron-state ops |",
                  "|---|---|---|---|---|---|"]
        for arch, entry in ops["models"].items():
            for variant in ("saf", "ottt", "lif"):
                c = entry[variant]
                if "error" in c:
                    lines.append(f"| {arch} | {variant} | analytical "
                                 f"{entry['ottt_analytical_synaptic_flops']:,} | - | - | - |")
                else:
                    lines.append(f"| {arch} | {variant} | {c['synaptic_flops']:,} | "
                                 f"{c['synaptic_macs']:,} | {c['synaptic_acs']:,} | "
                                 f"{c['neuron_state_ops']:,} |")
            if entry.get("ottt_note"):
                lines.append(f"\n{arch}: {entry['ottt_note']}\n")
    timing = read_json(results_dir, "time_memory")
    if timing:
        lines += ["", "## Time and peak memory per minibatch", "",
                  f"Machine: {_machine_line(timing)}.", ""]
        lines += _time_memory_tables(timing)
    account = read_json(results_dir, "time_memory_account")
    if account:
        lines += ["", "## Memory: exact live tensors and the account of each peak", "",
                  f"Machine: {_machine_line(account)}.", ""]
        lines += memory_claim_rows(account) and (["| claim | target | measured | verdict |", "|---|---|---|---|"]
                                                 + memory_claim_rows(account))
        for label, cells in account["models"].items():
            for steps in sorted({int(t) for c in cells.values() for t in c}):
                lines += [""] + memory_account_rows(account, label, steps)
                lines += [""] + memory_layer_rows(account, label, steps)
    memopt = memopt_rows(results_dir)
    if memopt:
        lines += ["", "## BPTT with memopt", ""] + memopt
    fashion = fashion_mnist_rows(results_dir, FASHION_MNIST_CURRENT)
    if fashion:
        lines += ["", f"## Fashion-MNIST ({FASHION_MNIST_CURRENT}.json)", ""] + fashion
    objectives = fashion_mnist_objective_rows(results_dir)
    if objectives:
        lines += ["", f"### SAF-F's objective against its gradient ({FASHION_MNIST_OBJECTIVES}.json)",
                  ""] + objectives
    alignment = gradient_alignment_rows(results_dir)
    if alignment:
        lines += ["", "### Gradient alignment (gradient_alignment.json)", ""] + alignment
    for name in ("fashion_mnist_1epoch", "fashion_mnist"):
        fashion = fashion_mnist_rows(results_dir, name, "fashion_mnist_timing")
        if fashion:
            lines += ["", f"## Fashion-MNIST, earlier runs ({name}.json, SAF's own readout Obar[T])",
                      ""] + fashion
    frozen = fashion_mnist_rows(results_dir, "fashion_mnist_bn_frozen")
    if frozen:
        lines += ["", "### Fashion-MNIST with BatchNorm frozen (eval mode) during training", ""] + frozen
    accuracy = accuracy_rows(results_dir)
    if accuracy:
        lines += ["", "## Accuracy parity", ""] + accuracy
    reviewers = read_json(results_dir, "reviewers")
    if reviewers:
        part_a = reviewers["a_representation_error"]
        steps = list(next(iter(part_a.values()))["mean"].keys())
        lines += ["", "## Reviewers' questions", "",
                  "(a) mean |Abar[T] - clamp(I/V_th, 0, 1)| over constant inputs:", "",
                  "| lam | " + " | ".join(f"T={t}" for t in steps) + " |",
                  "|---|" + "---|" * len(steps)]
        for lam, v in part_a.items():
            lines.append(f"| {lam} | " + " | ".join(f"{v['mean'][t]:.4f}" for t in steps) + " |")
        lines += ["", "(b) SAF-E test accuracy on digits:", "", "| tau | T | accuracy |", "|---|---|---|"]
        for cell in reviewers["b_accuracy_vs_T_tau"].values():
            lines.append(f"| {cell['tau']} | {cell['T']} | {cell['mean'] * 100:.2f} % |")
        c = reviewers["c_firing_rates"]
        lines += ["", "(c) firing rates per layer (test set, eval mode), per epoch:", ""]
        for name in ("saf-e", "ottt-o"):
            rates = "; ".join("[" + ", ".join(f"{r:.3f}" for r in h) + "]"
                              for h in c[name]["firing_rates_per_epoch"])
            lines.append(f"- {name} (final accuracy {c[name]['accuracy'] * 100:.2f} %): {rates}")
        lines.append("- relative weight distance SAF-E vs OTTT_O per epoch: "
                     + ", ".join(f"{d:.3f}" for d in c["relative_weight_distance_per_epoch"]))
    lines += ["", "Plots: `*.png` in this folder."]
    return "\n".join(lines) + "\n"


#: BPTT on the online methods' objectives, with the settings of :data:`FASHION_MNIST_CURRENT`.
FASHION_MNIST_OBJECTIVES = "fashion_mnist_T6_objectives"
#: (objective, the online method trained on it, BPTT trained on it).
OBJECTIVE_PAIRS = (("one loss on Obar[T] (SAF-F's)", "saf-f", "bptt-final"),
                   ("a loss on every step, averaged over T (OTTT's)", "ottt-a", "bptt-every-step"),
                   ("one loss on the firing rate (BPTT's)", None, "bptt"))
#: Settings that must agree for runs of two files to be compared.
_COMPARABLE_SETTINGS = ("data", "network", "T", "tau", "epochs", "batches_per_epoch", "batch",
                        "optimizer", "batchnorm", "neuron", "encoding", "augmentation", "readout")


def differing_settings(a: dict, b: dict) -> list[str]:
    """The settings that keep the runs of two Fashion-MNIST results files from being compared."""
    return [key for key in _COMPARABLE_SETTINGS if a["settings"].get(key) != b["settings"].get(key)]


def _by_seed(row: dict) -> dict:
    return dict(zip(row["seeds"], row["accuracy"]["values"]))


def _paired(a: dict, b: dict) -> str:
    """Mean ± std over the seeds both rows ran of ``a - b`` in points (same seed: same initial
    weights and data order)."""
    seeds = sorted(set(a) & set(b))
    if not seeds:
        return "-"
    diffs = [100 * (a[seed] - b[seed]) for seed in seeds]
    spread = f" ± {statistics.stdev(diffs):.2f}" if len(diffs) > 1 else " (1 seed)"
    return f"{statistics.mean(diffs):+.2f}{spread}"


@names_a_broken_file
def fashion_mnist_objective_rows(results_dir: Path, grid: str = FASHION_MNIST_CURRENT,
                                 diagnostic: str = FASHION_MNIST_OBJECTIVES) -> list[str]:
    """Each objective trained with an online gradient and with BPTT's exact one: the online methods
    from ``grid``, BPTT on their objectives from ``diagnostic``; differences paired by seed."""
    main, extra = read_json(results_dir, grid), read_json(results_dir, diagnostic)
    if not main or not extra or not extra.get("summary"):
        return []
    differing = differing_settings(main, extra)
    if differing:
        raise results_file_error(Path(results_dir) / f"{diagnostic}.json",
                                 f"was run with settings other than {grid}.json's "
                                 f"({', '.join(differing)}): it cannot be compared with that run")
    summary = {**main["summary"], **extra["summary"]}
    if "bptt" not in summary:
        return []
    rate = _by_seed(summary["bptt"])
    lines = [f"Each objective trained with an online gradient and with BPTT's exact gradient: the "
             f"online methods and BPTT from `{grid}.json`, BPTT on the online methods' objectives from "
             f"`{diagnostic}.json` ({extra['meta']['date_utc']}, the same settings and seeds: the "
             f"same initial weights and data order per seed). Differences are paired by seed, in "
             f"points, mean ± std over seeds.", "",
             "| objective | online gradient | exact gradient (BPTT) | online minus exact | exact minus "
             "BPTT on the firing rate |", "|---|---|---|---|---|"]
    for objective, online, exact in OBJECTIVE_PAIRS:
        if exact not in summary:
            continue
        exact_row = summary[exact]
        online_row = summary.get(online) if online else None
        online_cell = f"{online}: {_pct(online_row['accuracy'])}" if online_row else "-"
        gap = _paired(_by_seed(online_row), _by_seed(exact_row)) if online_row else "-"
        cost = _paired(_by_seed(exact_row), rate) if exact != "bptt" else "-"
        lines.append(f"| {objective} | {online_cell} | {exact}: {_pct(exact_row['accuracy'])} | "
                     f"{gap} | {cost} |")
    return lines


def _mean_std_cell(cell: dict) -> str:
    if cell["mean"] is None:
        return "- (gradient zero)"
    undefined = f" ({cell['undefined']} zero)" if cell.get("undefined") else ""
    return f"{cell['mean']:.3f} ± {cell['std']:.3f}{undefined}"


@names_a_broken_file
def gradient_alignment_rows(results_dir: Path, name: str = "gradient_alignment") -> list[str]:
    """The cosines between each online gradient and its objective's exact gradient, and the
    neurons SAF-F's step-T slope starves, per checkpoint (``bench_gradient_alignment``)."""
    payload = read_json(results_dir, name)
    if not payload or not payload.get("summary"):
        return []
    s, meta, summary = payload["settings"], payload["meta"], payload["summary"]
    layers = list(next(iter(next(iter(summary.values())).values())))
    lines = [f"Gradient alignment (`{name}.json`): Fashion-MNIST CSNN C={s['channels']}, T={s['T']}, "
             f"tau={s['tau']}, BatchNorm frozen, seeds {s['seeds']}, {s['measure_batches']} held-out "
             f"minibatches of {s['batch']} per seed and checkpoint, the SAF network trained with "
             f"SAF-E-acc between checkpoints; {meta['device']} ({meta['cpu_model']}), {meta['date_utc']}. "
             "Cosine between two gradients of the same weights, mean ± std over seeds and minibatches.",
             "", "| minibatches trained | comparison | " + " | ".join(layers) + " |",
             "|---|---|" + "---|" * len(layers)]
    for checkpoint, cell in summary.items():
        for key, values in cell.items():
            label = ("neurons whose slope at step T is below a tenth of their mean over T (fraction)"
                     if key == "starved_fraction" else key)
            lines.append(f"| {checkpoint} | {label} | " + " | ".join(
                _mean_std_cell(values[layer]) for layer in layers) + " |")
    return lines


@names_a_broken_file
def fashion_mnist_docs_markdown(results_dir: Path) -> str:
    """The generated region of docs/benchmarks.md, section 5: the current run's table, the
    objective diagnostic and the gradient alignment."""
    lines = fashion_mnist_rows(results_dir, FASHION_MNIST_CURRENT)
    for extra in (fashion_mnist_objective_rows(results_dir), gradient_alignment_rows(results_dir)):
        if extra:
            lines = lines + [""] + extra
    return "\n".join(lines)


#: The generated region of docs/backends.md, "Speed on the CPU", and the results file it is built from.
BACKENDS_DOCS_PATH = Path(__file__).resolve().parent.parent / "docs" / "backends.md"
NEURON_KERNEL_CPU_START = "<!-- NEURON-KERNEL-CPU:START -->"
NEURON_KERNEL_CPU_END = "<!-- NEURON-KERNEL-CPU:END -->"
NEURON_KERNEL_CPU = "neuron_kernel_cpu"
_ELEMENT_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}
_KERNEL_PHASES = (("forward", "forward, with grad"), ("forward_only", "forward, no grad"),
                  ("backward", "backward"))


@names_a_broken_file
def neuron_kernel_cpu_markdown(results_dir: Path) -> str:
    """The generated region of docs/backends.md, "Speed on the CPU": the CPU kernel times of
    ``neuron_kernel_cpu.json`` (``bench_neuron_kernel --device cpu``); "" when that file is absent."""
    payload = read_json(results_dir, NEURON_KERNEL_CPU)
    return "" if payload is None else "\n".join(neuron_kernel_cpu_lines(payload))


def _microseconds(value) -> str:
    value = float(value)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"a time of {value} us")
    return f"{value:,.0f}" if value >= 100 else f"{value:.1f}"


def _times_reference(value) -> str:
    value = float(value)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"a ratio of {value}")
    return f"{value:.2f}"


def _neuron_count(neurons: int) -> str:
    return f"2^{neurons.bit_length() - 1}" if neurons > 0 and neurons & (neurons - 1) == 0 else f"{neurons:,}"


def neuron_kernel_cpu_lines(payload: dict) -> list[str]:
    """The machine line and, per dtype, the table of time per call (us) of SAF's ``'cpp'`` and
    ``'torch'`` backends and of ReLU, with each backend's ratio to ReLU."""
    s = payload["settings"]
    rows = {}
    for row in payload["rows"]:
        key = (row["dtype"], int(row["steps"]), int(row["neurons"]))
        rows.setdefault(key, {})[row["backend"]] = row
    if not rows:
        raise ValueError("no rows: nothing was measured")
    loads = [v[0] for v in (payload.get("loadavg") or {}).values() if v]
    load = (f"; load average (1 min) {min(loads):.1f}-{max(loads):.1f}" if loads else "")
    lines = [f"CPU kernel times (`{NEURON_KERNEL_CPU}.json`): {_machine_line(payload)}; "
             f"{int(s['threads'])} torch threads{load}. Time per call in µs, median of {int(s['reps'])} "
             f"reps after {int(s['warmup'])} warmup reps, every backend and phase run in turn in each rep. "
             "T=1 is one single-step call (what a single-step network makes at every step), a longer T "
             f"one multi-step call; surrogate {s['surrogate']}; ReLU is `torch.relu` and its autograd "
             "backward."]
    dtypes = list(dict.fromkeys(key[0] for key in rows))
    for dtype in dtypes:
        lines += ["", f"{dtype}:", ""] if len(dtypes) > 1 else [""]
        lines += ["| T | neurons per step | phase | `'cpp'` (µs) | `'torch'` (µs) | ReLU (µs) | `'cpp'` / ReLU "
                  "| `'torch'` / ReLU |",
                  "|---|---|---|---|---|---|---|---|"]
        for key in sorted(k for k in rows if k[0] == dtype):
            by_backend = rows[key]
            size = _neuron_count(key[2])
            if "relu" not in by_backend:
                raise ValueError(f"no relu row, the reference of the ratios, for {dtype} T={key[1]} N={size}")
            for phase, label in _KERNEL_PHASES:
                cells = [_microseconds(by_backend[b][f"{phase}_us"]) if b in by_backend else "-"
                         for b in ("cpp", "torch", "relu")]
                ratios = [_times_reference(by_backend[b][f"{phase}_over_relu"]) if b in by_backend else "-"
                          for b in ("cpp", "torch")]
                lines.append(f"| {key[1]} | {size} | {label} | " + " | ".join(cells + ratios) + " |")
    faulting = []
    for key in sorted(rows):
        output = key[1] * key[2] * _ELEMENT_BYTES.get(key[0], 4)
        for backend in ("cpp", "torch", "relu"):
            for phase, label in _KERNEL_PHASES:
                faults = rows[key].get(backend, {}).get(f"{phase}_page_faults_per_call")
                fresh = 0.0 if faults is None else float(faults) * int(s.get("page_bytes", 4096))
                if 4 * fresh >= output:
                    name = "ReLU" if backend == "relu" else f"`'{backend}'`"
                    dtype = f"{key[0]}, " if len(dtypes) > 1 else ""
                    faulting.append(f"{name} {label}, {dtype}T={key[1]}, {_neuron_count(key[2])}: "
                                    f"{fresh / 2**20:.1f} MiB (output {output / 2**20:.1f} MiB)")
    if faulting:
        lines += ["", "Calls whose time includes page faults: memory that the allocator had given back "
                      "to the system and maps again, per call (minor page faults times the page size; "
                      "listed from a quarter of the output's size): " + "; ".join(faulting) + "."]
    skipped = payload.get("skipped_backends") or {}
    if skipped:
        lines += ["", "Not measured: " + "; ".join(f"`{b}`: {why}" for b, why in skipped.items())]
    return lines
