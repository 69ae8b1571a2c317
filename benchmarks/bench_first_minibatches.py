"""The first minibatches of the Fashion-MNIST recipe: does every method learn from the start?

    python -m benchmarks.bench_first_minibatches                # every method, 100 minibatches each
    python -m benchmarks.bench_first_minibatches --quick --data-dir <tiny idx folder> --results-dir /tmp/r

Each configuration is one run of ``examples/train_mnist.py`` with the script's defaults (the
recipe in ``examples/saf_examples/recipes.py``), limited to the first ``--batches`` training
minibatches of epoch 0 and ``--test-batches`` test minibatches, in a fresh process. One more run
trains SAF-E with the zoo's firing threshold of 1 instead of the recipe's 0.5, to show what the
recipe fixes. The curves are the trainer's own progress lines (running mean loss and accuracy of
the epoch so far); the test accuracy is the run's ``history.json``. Writes
``fashion_mnist_first_minibatches.json`` and ``.png`` to the results folder and regenerates the
table between the FIRST-MINIBATCHES markers of ``docs/examples.md``. ``--quick`` without
``--results-dir`` writes to a fresh temporary folder (printed); the page is regenerated from the
committed results only, or where ``--docs`` names one (``''``: none).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

from . import common

NAME = "fashion_mnist_first_minibatches"
TRAINER = Path(__file__).resolve().parent.parent / "examples" / "train_mnist.py"
DOCS_PATH = Path(__file__).resolve().parent.parent / "docs" / "examples.md"
DOCS_START = "<!-- FIRST-MINIBATCHES:START -->"
DOCS_END = "<!-- FIRST-MINIBATCHES:END -->"

#: (label, extra trainer flags): every method on the recipe, then SAF-E at the zoo's threshold.
CONFIGS = (
    ("saf-e", ["-method", "saf-e"]),
    ("saf-e-acc", ["-method", "saf-e-acc"]),
    ("saf-f", ["-method", "saf-f"]),
    ("ottt-o", ["-method", "ottt-o"]),
    ("ottt-a", ["-method", "ottt-a"]),
    ("bptt", ["-method", "bptt"]),
    ("sltt", ["-method", "sltt"]),
    ("saf-e, -v-threshold 1", ["-method", "saf-e", "-v-threshold", "1"]),
)
QUICK_CONFIGS = (CONFIGS[0], CONFIGS[-1])

_PROGRESS = re.compile(r"^epoch 0/\d+ \[(\d+)/\d+\] loss ([0-9.eE+-]+|nan|inf) acc ([0-9.]+) \|", re.M)


def parse_progress(stdout: str) -> list[tuple[int, float, float]]:
    """``(minibatches, running mean loss, running mean accuracy)`` of each progress line."""
    return [(int(done), float(loss), float(acc)) for done, loss, acc in _PROGRESS.findall(stdout)]


def run_config(flags: list[str], batches: int, test_batches: int, every: int, out_dir: Path,
               data_dir: Optional[Path], timeout: float, extra_flags: tuple = ()) -> dict:
    command = [sys.executable, str(TRAINER), *flags, *extra_flags, "-device", "cpu", "-j", "0",
               "-stop-after", "1",
               "-max-train-batches", str(batches), "-max-test-batches", str(test_batches),
               "-no-progress", "-progress-every", str(every), "-out-dir", str(out_dir)]
    if data_dir is not None:
        command += ["-data-dir", str(data_dir)]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} ended with exit status {done.returncode}:\n"
                           f"{done.stderr[-2000:]}")
    history = json.loads((out_dir / "history.json").read_text())[0]
    args = json.loads((out_dir / "args.json").read_text())
    return {"flags": flags, "curve": parse_progress(done.stdout), "test_acc": history["test_acc"],
            "train_batches": history.get("train_batches"), "wall_s": time.perf_counter() - start,
            "arguments": {key: args.get(key) for key in ("model", "method", "T", "b", "channels", "lr",
                                                         "opt", "momentum", "v_threshold", "tau",
                                                         "surrogate", "seed", "backend")}}


def run(results_dir: Path, quick: bool = False, data_dir: Optional[Path] = None, batches: int = 100,
        test_batches: int = 20, every: int = 10, log=print, timeout: float = 1800.0,
        extra_flags: tuple = ()) -> dict:
    """Train every configuration (``quick``: two) and write the JSON and the plot; ``extra_flags``
    go to every run (the tests shrink the batch with them)."""
    configs = QUICK_CONFIGS if quick else CONFIGS
    runs = {}
    with tempfile.TemporaryDirectory() as scratch:
        for index, (label, flags) in enumerate(configs):
            log(f"  {label}: {batches} minibatches")
            runs[label] = run_config(flags, batches, test_batches, every, Path(scratch) / f"run{index}",
                                     data_dir, timeout, extra_flags)
            log(f"    test acc {runs[label]['test_acc']:.4f} ({runs[label]['wall_s']:.0f} s)")
    payload = {"metadata": common.metadata("cpu"), "quick": quick, "batches": batches,
               "test_batches": test_batches, "every": every, "extra_flags": list(extra_flags),
               "data_dir": str(data_dir) if data_dir else "the trainer's default", "runs": runs}
    common.write_json(results_dir, NAME, payload)
    plot(payload, results_dir / f"{NAME}.png")
    return payload


def plot(payload: dict, path: Path) -> Path:
    """Loss and accuracy curves, SAF methods and baselines in separate panels (at most five lines each)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    saf = [label for label in payload["runs"] if label.startswith("saf")]
    panels = [("SAF methods", saf), ("baselines", [label for label in payload["runs"] if label not in saf])]
    panels = [(title, labels) for title, labels in panels if labels]
    fig, axes = plt.subplots(2, len(panels), figsize=(5.5 * len(panels), 6.5), squeeze=False)
    colors = plt.get_cmap("tab10").colors
    for column, (title, labels) in enumerate(panels):
        for row, (index, name) in enumerate(((1, "training loss (running mean)"), (2, "training accuracy (running mean)"))):
            ax = axes[row][column]
            for k, label in enumerate(labels):
                curve = payload["runs"][label]["curve"]
                ax.plot([p[0] for p in curve], [p[index] for p in curve], marker="o", markersize=3,
                        color=colors[k % len(colors)], label=label,
                        linestyle="--" if "threshold" in label else "-")
            ax.set_ylim(bottom=0)
            ax.set_xlabel("minibatches of epoch 0")
            ax.set_ylabel(name)
            ax.set_title(title, fontsize=10)
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=7)
    meta = payload["metadata"]
    fig.suptitle(f"Fashion-MNIST, the train_mnist.py recipe: first {payload['batches']} minibatches "
                 f"({meta['date_utc'][:10]}, {meta['cpu_model']})", fontsize=9)
    fig.tight_layout()
    return common.save_figure(fig, path, dpi=100)


def docs_markdown(payload: dict) -> str:
    """The table of ``docs/examples.md``: loss / accuracy at every progress line, and the test accuracy."""
    points = sorted({p[0] for r in payload["runs"].values() for p in r["curve"]})
    head = "| run | " + " | ".join(str(p) for p in points) + " | test acc |"
    lines = [head, "|---" * (len(points) + 2) + "|"]
    for label, entry in payload["runs"].items():
        by_point = {p[0]: p for p in entry["curve"]}
        cells = [f"{by_point[p][1]:.3f} / {by_point[p][2]:.2f}" if p in by_point else "" for p in points]
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {entry['test_acc']:.3f} |")
    first = next(iter(payload["runs"].values()))["arguments"]
    meta = payload["metadata"]
    lines.append("")
    lines.append(f"(loss / accuracy after that many minibatches; {payload['batches']} training minibatches "
                 f"of epoch 0, test accuracy on the first {payload['test_batches']} test minibatches; "
                 f"`{first['model']}`, T={first['T']}, b={first['b']}, channels {first['channels']}, "
                 f"{first['opt']} lr {first['lr']}, seed {first['seed']}, backend `{first['backend']}`; "
                 f"{meta['cpu_model']}, {meta['date_utc'][:10]}, torch {meta['torch']}; generated from "
                 f"`benchmarks/results/{NAME}.json`.)")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_first_minibatches",
                                     description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="SAF-E on the recipe and at threshold 1 only (results go to a fresh "
                             "temporary folder unless --results-dir names one)")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="Fashion-MNIST idx folder (default: the trainer's, Debian's package)")
    parser.add_argument("--batches", type=common.positive_int,
                        default=100, help="training minibatches of epoch 0")
    parser.add_argument("--test-batches", type=common.positive_int, default=20, help="test minibatches")
    parser.add_argument("--every", type=common.positive_int, default=10,
                        help="minibatches between two curve points")
    parser.add_argument("--results-dir", type=Path, default=None, help=f"default: {common.RESULTS_DIR}")
    parser.add_argument("--docs", default=None,
                        help=f"page whose FIRST-MINIBATCHES region is regenerated ('' for none; default: "
                             f"{DOCS_PATH} when the results are the committed ones)")
    parser.add_argument("--tables-only", action="store_true",
                        help="measure nothing: regenerate the docs table from the results JSON")
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.data_dir is not None and not args.data_dir.is_dir():
        parser.error(f"--data-dir {args.data_dir}: not a folder; name the folder of the Fashion-MNIST "
                     "idx files, or drop the flag for the trainer's default.")
    committed = common.uses_committed_results(args.results_dir, args.quick and not args.tables_only)
    docs = common.page_arg(parser, "--docs", args.docs, DOCS_PATH, committed, DOCS_START, DOCS_END)
    if args.tables_only:
        results_dir = common.RESULTS_DIR if args.results_dir is None else args.results_dir
        markdown = common.build_from(parser, results_dir, NAME, docs_markdown)
    else:
        results_dir = common.results_dir_arg(parser, args.results_dir, args.quick)
        payload = run(results_dir, args.quick, args.data_dir, args.batches, args.test_batches, args.every)
        markdown = docs_markdown(payload)
    if docs is not None:
        common.update_region(markdown, docs, DOCS_START, DOCS_END)
        print(f"table regenerated in {docs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
