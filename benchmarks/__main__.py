"""``python -m benchmarks``: the CPU suite (ops, time/memory, accuracy, reviewers), then the tables.

    python -m benchmarks                     # everything, under 30 minutes on 2 CPU cores (8.5 measured)
    python -m benchmarks --quick             # a smoke run in well under a minute
    python -m benchmarks --only ops,accuracy # a subset; the tables are rebuilt from all results
    python -m benchmarks --only tables       # rebuild RESULTS.md, the README table and the docs tables
    python -m benchmarks.bench_neuron_kernel --device cpu   # the CPU kernel times of docs/backends.md
    python -m benchmarks.bench_time_memory --memory   # the memory suite (exact + resident set)
    python -m benchmarks.gpu_check           # everything that needs a GPU (--dry-run: anywhere)
    python -m benchmarks --device cuda       # time/memory on a GPU (paper setting, batch 128)

``--quick`` results are not meaningful: without ``--results-dir`` they go to a fresh temporary
folder (printed), and the README and docs tables are regenerated only from the committed results
(``benchmarks/results``) or for a page named with ``--readme``/``--docs``/``--backends-docs``
(``''``: no page).
Every destination, and every results file the tables read, is checked before anything is measured;
files are replaced whole, so an interrupted run leaves the previous ones.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from . import common, tables

SUITES = ("ops", "time", "accuracy", "reviewers")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="tiny settings for a smoke run (results are not meaningful)")
    parser.add_argument("--only", default=",".join(SUITES),
                        help=f"comma-separated subset of {','.join(SUITES)} ('tables': none, rebuild tables)")
    parser.add_argument("--device", type=common.device_name, default="cpu",
                        help="'cpu' or 'cuda[:i]' (time/memory and ops)")
    parser.add_argument("--results-dir", type=Path, default=None,
                        help=f"default: {common.RESULTS_DIR} (with --quick: a fresh temporary folder)")
    parser.add_argument("--readme", default=None,
                        help="README whose BENCHMARK-TABLE region is regenerated ('' for none)")
    parser.add_argument("--docs", default=None,
                        help="docs page whose TIME-MEMORY-TABLES region is regenerated ('' for none)")
    parser.add_argument("--backends-docs", default=None,
                        help="docs page whose NEURON-KERNEL-CPU region is regenerated from "
                             f"{tables.NEURON_KERNEL_CPU}.json ('' for none; default: docs/backends.md)")
    return parser


def written_by(suites: list[str], device: str) -> list[str]:
    """The results files (names without .json) the suites replace."""
    names = {"ops": "ops", "time": "time_memory" + ("_cuda" if device.startswith("cuda") else ""),
             "accuracy": "accuracy", "reviewers": "reviewers"}
    return [names[suite] for suite in suites]


def render_tables(results_dir: Path) -> tuple[str, str, str, str]:
    """RESULTS.md, the README region, the docs region and the backends docs region, from the results
    in ``results_dir``."""
    return (tables.results_markdown(results_dir), tables.readme_markdown(results_dir),
            tables.time_memory_docs_markdown(results_dir), tables.neuron_kernel_cpu_markdown(results_dir))


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # "--only tables" measures nothing and rebuilds the tables from the committed JSON.
    names = common.choose(parser, "--only", args.only, SUITES + ("tables",),
                           " ('tables': measure nothing, rebuild the tables)")
    selected = [name for name in names if name != "tables"]
    committed = common.uses_committed_results(args.results_dir, args.quick)
    readme = common.page_arg(parser, "--readme", args.readme, common.README_PATH, committed,
                             common.TABLE_START, common.TABLE_END)
    docs = common.page_arg(parser, "--docs", args.docs, common.DOCS_PATH, committed,
                           tables.DOCS_START, tables.DOCS_END)
    backends_docs = common.page_arg(parser, "--backends-docs", args.backends_docs, tables.BACKENDS_DOCS_PATH,
                                    committed, tables.NEURON_KERNEL_CPU_START, tables.NEURON_KERNEL_CPU_END)
    results_dir = common.results_dir_arg(parser, args.results_dir, args.quick)
    try:  # the results the tables read besides the ones this run replaces
        with common.results_without(*written_by(selected, args.device)):
            render_tables(results_dir)
    except common.ResultsFileError as error:
        parser.error(str(error))

    start = time.perf_counter()

    def log(message: str) -> None:
        print(f"[{time.perf_counter() - start:7.1f} s] {message}", flush=True)

    if "ops" in selected:
        from . import bench_ops

        log("forward operations")
        result = bench_ops.run(results_dir, args.quick, args.device)
        for arch, entry in result["models"].items():
            log(f"  ops {arch}: {entry['ratios']}")
    if "time" in selected:
        from . import bench_time_memory

        log("time and peak memory")
        bench_time_memory.run(results_dir, args.quick, args.device, log=log)
    if "accuracy" in selected:
        from . import bench_accuracy

        log("accuracy on digits")
        bench_accuracy.run(results_dir, args.quick, log=log)
    if "reviewers" in selected:
        from . import bench_reviewers

        log("reviewers' questions")
        bench_reviewers.run(results_dir, args.quick, log=log)

    try:
        results_md, readme_md, docs_md, backends_md = render_tables(results_dir)
    except common.ResultsFileError as error:
        parser.error(str(error))
    common.write_text(results_dir / "RESULTS.md", results_md)
    if readme and common.update_readme_table(readme_md, readme):
        log(f"README table regenerated in {readme}")
    if docs and common.update_region(docs_md, docs, tables.DOCS_START, tables.DOCS_END):
        log(f"time/memory tables regenerated in {docs}")
    if backends_docs and not backends_md:
        log(f"{backends_docs} is left alone: {results_dir / tables.NEURON_KERNEL_CPU}.json does not exist "
            f"(`{common.writer_of(tables.NEURON_KERNEL_CPU)}` writes it)")
    elif backends_docs and common.update_region(backends_md, backends_docs, tables.NEURON_KERNEL_CPU_START,
                                                tables.NEURON_KERNEL_CPU_END):
        log(f"CPU kernel table regenerated in {backends_docs}")
    log(f"done; results in {results_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
