"""``python -m benchmarks``: the CPU suite (ops, time/memory, accuracy, reviewers), then the tables.

    python -m benchmarks                     # everything, under 30 minutes on 2 CPU cores (8.5 measured)
    python -m benchmarks --quick             # a smoke run in well under a minute
    python -m benchmarks --only ops,accuracy # a subset; the tables are rebuilt from all results
    python -m benchmarks --only tables       # rebuild RESULTS.md, the README table and the docs tables
    python -m benchmarks.bench_time_memory --memory   # the memory suite (exact + resident set)
    python -m benchmarks.gpu_check           # everything that needs a GPU (--dry-run: anywhere)
    python -m benchmarks --device cuda       # time/memory on a GPU (paper setting, batch 128)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from . import common, tables

SUITES = ("ops", "time", "accuracy", "reviewers")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="tiny settings for a smoke run (results are not meaningful)")
    parser.add_argument("--only", default=",".join(SUITES),
                        help=f"comma-separated subset of {','.join(SUITES)} ('tables': none, rebuild tables)")
    parser.add_argument("--device", default="cpu", help="'cpu' or 'cuda[:i]' (time/memory and ops)")
    parser.add_argument("--results-dir", type=Path, default=common.RESULTS_DIR)
    parser.add_argument("--readme", type=Path, default=common.README_PATH,
                        help="README whose BENCHMARK-TABLE region is regenerated")
    parser.add_argument("--docs", type=Path, default=common.DOCS_PATH,
                        help="docs page whose TIME-MEMORY-TABLES region is regenerated")
    args = parser.parse_args(argv)
    # "--only tables" measures nothing and rebuilds the tables from the committed JSON.
    selected = [s.strip() for s in args.only.split(",") if s.strip() and s.strip() != "tables"]
    unknown = sorted(set(selected) - set(SUITES))
    if unknown:
        parser.error(f"--only: unknown suite(s) {unknown}; choose from {','.join(SUITES)}.")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available here; use --device cpu.")

    start = time.perf_counter()

    def log(message: str) -> None:
        print(f"[{time.perf_counter() - start:7.1f} s] {message}", flush=True)

    if "ops" in selected:
        from . import bench_ops

        log("forward operations")
        result = bench_ops.run(args.results_dir, args.quick, args.device)
        for arch, entry in result["models"].items():
            log(f"  ops {arch}: {entry['ratios']}")
    if "time" in selected:
        from . import bench_time_memory

        log("time and peak memory")
        bench_time_memory.run(args.results_dir, args.quick, args.device, log=log)
    if "accuracy" in selected:
        from . import bench_accuracy

        log("accuracy on digits")
        bench_accuracy.run(args.results_dir, args.quick, log=log)
    if "reviewers" in selected:
        from . import bench_reviewers

        log("reviewers' questions")
        bench_reviewers.run(args.results_dir, args.quick, log=log)

    markdown = tables.results_markdown(args.results_dir)
    (args.results_dir / "RESULTS.md").write_text(markdown)
    if common.update_readme_table(tables.readme_markdown(args.results_dir), args.readme):
        log(f"README table regenerated in {args.readme}")
    if args.docs and common.update_region(tables.time_memory_docs_markdown(args.results_dir), args.docs,
                                          tables.DOCS_START, tables.DOCS_END):
        log(f"time/memory tables regenerated in {args.docs}")
    log(f"done; results in {args.results_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
