"""Everything that needs a GPU, in one command (under 10 minutes on one H100/H200).

    python -m benchmarks.gpu_check                 # on a CUDA machine
    python -m benchmarks.gpu_check --dry-run       # anywhere: plans every step, runs the CPU parts tiny
    python -m benchmarks.gpu_check --only tests,time --budget 300

Steps, in order (each has a time limit; what the budget cannot fit any more is skipped and says so):

1. ``tests``: every CUDA, CuPy and Triton test (``pytest -m cuda``: the kernel parity on the device
   for both fused backends and every registered surrogate, dtype and shape), then the CPU tests of
   the kernels (CUDA source executed on the CPU, the ``cpp`` kernel, Triton's interpreter).
2. ``time``: the time/memory suite at the paper's batch 128 on OTTT's VGG (full width, 32x32), T=6
   and T in {1, 2, 4, 8, 16, 32}: SAF-E, SAF-E-acc, SAF-F (default backend = ``auto``, and each fused
   backend explicitly), OTTT_O/A, SLTT, BPTT, BPTT+memopt, DSR and the ReLU ideals, interleaved in
   one process per T, with ``max_memory_allocated`` and the exact live-tensor account per variant.
3. ``memopt``: BPTT+memopt at levels 1, 2, 3 and 4 against BPTT, SAF-E, SAF-F and SLTT at T=6 and 16.
4. ``fashion_mnist``: one Fashion-MNIST epoch per method (``benchmarks.bench_fashion_mnist`` through
   its command line: the example's width C=128, batch 128, seed 0).
5. ``ddp``: DistributedDataParallel over NCCL on two GPUs (SAF-E-acc and SAF-F, a shard per GPU,
   against one process with the whole batch); skipped with one GPU.

Results: ``benchmarks/results/gpu/<device>_<date>/`` (``gpu_check.json`` with the device name from
``torch.cuda.get_device_name``, the date, versions, each step's command, status, seconds and
output tail; the suites' own JSON and plots beside it).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from . import common

REPO = Path(__file__).resolve().parent.parent
GPU_RESULTS = Path(__file__).resolve().parent / "results" / "gpu"
STEP_NAMES = ("tests", "time", "memopt", "fashion_mnist", "ddp")
#: Seconds each step may take on the GPU (the sum stays under 10 minutes).
LIMITS = {"tests": 90, "time": 180, "memopt": 90, "fashion_mnist": 180, "ddp": 30}
FASHION_METHODS = "saf-e,saf-e-acc,saf-f,ottt-o,ottt-a,bptt,bptt+memopt,sltt"


def _python(*args: str) -> list[str]:
    return [sys.executable, *args]


def plan(out: Path, cuda: bool, gpus: int, data_root: str | None) -> list[dict]:
    """Every step: its commands, whether it needs CUDA, its time limit, and why it would be skipped."""
    steps = []
    steps.append({"name": "tests", "needs_cuda": True, "limit_s": LIMITS["tests"], "commands": [
        _python("-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "-m", "cuda", "tests",
                f"--junitxml={out / 'tests_cuda.xml'}"),
        _python("-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/library/test_backends.py",
                "tests/library/test_cuda_source_on_cpu.py", "tests/library/test_cpu_kernel.py",
                "tests/library/test_kernel_compile.py", f"--junitxml={out / 'tests_kernels.xml'}")]})
    time_args = ["--device", "cuda", "--archs", "vggws", "--results-dir", str(out), "--rounds", "3"]
    steps.append({"name": "time", "needs_cuda": True, "limit_s": LIMITS["time"], "commands": [
        _python("-m", "benchmarks.bench_time_memory", *time_args, "--steps", "1,2,4,6,8,16,32")]})
    memopt = []
    for level in (1, 2, 3, 4):
        memopt.append(_python("-m", "benchmarks.bench_time_memory", *time_args, "--steps", "6,16",
                              "--variants", "bptt,bptt+memopt,saf-e,saf-f,sltt",
                              "--tag", f"memopt_level{level}", "--memopt-level", str(level)))
    steps.append({"name": "memopt", "needs_cuda": True, "limit_s": LIMITS["memopt"],
                  "commands": memopt})
    fashion = _python("-m", "benchmarks.bench_fashion_mnist", "--device", "cuda", "--epochs", "1",
                      "--seeds", "0", "--channels", "128", "--batch", "128", "--threads", "0",
                      "--workers", "1", "--methods", FASHION_METHODS, "--results-dir", str(out),
                      "--tag", "fashion_mnist_1epoch", "--no-readme")
    if data_root:
        fashion += ["--data-root", data_root]
    steps.append({"name": "fashion_mnist", "needs_cuda": True, "limit_s": LIMITS["fashion_mnist"],
                  "commands": [fashion]})
    ddp = {"name": "ddp", "needs_cuda": True, "limit_s": LIMITS["ddp"],
           "commands": [_python("-m", "benchmarks.gpu_check", "--ddp-check", str(out / "ddp.json"))]}
    if cuda and gpus < 2:
        ddp["skip"] = f"{gpus} GPU(s): DDP over NCCL needs two"
    steps.append(ddp)
    return steps


def _run(command: list[str], limit: float, env: dict) -> dict:
    start = time.perf_counter()
    try:
        done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True,
                              timeout=limit)
        status = "passed" if done.returncode == 0 else f"failed (exit {done.returncode})"
        tail = (done.stdout + done.stderr)[-3000:]
    except subprocess.TimeoutExpired as error:
        status = f"timed out after {limit:.0f} s"
        tail = ((error.stdout or b"").decode(errors="replace") if isinstance(error.stdout, bytes)
                else (error.stdout or ""))[-3000:]
    return {"command": " ".join(command), "status": status,
            "seconds": round(time.perf_counter() - start, 1), "output_tail": tail}


def _environment() -> dict:
    env = dict(os.environ)
    examples = str(REPO / "examples")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), examples, env.get("PYTHONPATH")) if p)
    return env


def device_info() -> dict:
    import torch

    info = {"date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "torch": torch.__version__, "cuda": torch.version.cuda,
            "cuda_available": torch.cuda.is_available(),
            "gpus": torch.cuda.device_count() if torch.cuda.is_available() else 0}
    if info["cuda_available"]:
        info["devices"] = [torch.cuda.get_device_name(i) for i in range(info["gpus"])]
    for module in ("cupy", "triton"):
        try:
            imported = __import__(module)
            info[module] = getattr(imported, "__version__", "present")
        except Exception as error:  # reported, not raised
            info[module] = f"unavailable: {type(error).__name__}: {error}"
    return info


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()


def run_check(args) -> dict:
    info = device_info()
    cuda = info["cuda_available"]
    stamp = info["date_utc"][:10]
    name = (_slug(info["devices"][0]) if cuda else "dry-run-cpu") + f"_{stamp}"
    out = Path(args.results_dir) / name if not args.dry_run else Path(tempfile.mkdtemp(prefix="gpu_check_"))
    out.mkdir(parents=True, exist_ok=True)
    selected = [s for s in STEP_NAMES if s in args.only]
    steps = [s for s in plan(out, cuda, info["gpus"], args.data_root) if s["name"] in selected]
    env = _environment()
    report = {"device": info, "results_dir": str(out), "dry_run": args.dry_run,
              "budget_s": args.budget, "steps": []}
    start = time.perf_counter()
    for step in steps:
        entry = {"name": step["name"], "needs_cuda": step["needs_cuda"], "limit_s": step["limit_s"],
                 "commands": [" ".join(c) for c in step["commands"]]}
        if args.dry_run:
            entry.update(dry_run_step(step, out, env))
        elif "skip" in step:
            entry["status"] = f"skipped: {step['skip']}"
        else:
            runs = []
            for command in step["commands"]:
                left = args.budget - (time.perf_counter() - start)
                if left < 20:
                    runs.append({"command": " ".join(command),
                                 "status": f"skipped: the {args.budget:.0f} s budget is spent"})
                    continue
                runs.append(_run(command, min(step["limit_s"], left), env))
            entry["runs"] = runs
            entry["status"] = ("passed" if all(r["status"] == "passed" for r in runs) else
                               "; ".join(sorted({r["status"] for r in runs if r["status"] != "passed"})))
        report["steps"].append(entry)
        print(f"[{time.perf_counter() - start:6.1f} s] {entry['name']}: {entry['status']}", flush=True)
    report["seconds"] = round(time.perf_counter() - start, 1)
    if not args.dry_run:
        common.write_text(out / "gpu_check.json", json.dumps(report, indent=1) + "\n")
        print(f"results: {out}")
    return report


# ----------------------------------------------------------------------------------------------
# dry run: what the CPU can check


def dry_run_step(step: dict, out: Path, env: dict) -> dict:
    """Checks a step as far as the CPU allows: its commands parse, and the CPU-runnable part runs on
    tiny sizes. Says what remains for CUDA."""
    name = step["name"]
    if name == "tests":
        done = subprocess.run(_python("-m", "pytest", "-q", "--collect-only", "-m", "cuda", "tests",
                                      "-p", "no:cacheprovider"),
                              cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
        found = re.search(r"(\d+)(?:/\d+)? tests? (?:collected|selected)", done.stdout)
        count = int(found.group(1)) if found else 0
        ok = done.returncode == 0 and count > 0
        return {"status": (f"planned: {count} CUDA tests collected (they need CUDA); the CPU kernel "
                           "tests run in the ordinary test suite") if ok else
                f"failed: collection ({done.stdout[-500:]})", "cuda_tests_collected": count}
    if name in ("time", "memopt"):
        from . import bench_time_memory

        parsed = []
        for command in step["commands"]:
            parsed.append(_parse_time_command(command))
        payload = bench_time_memory.run(out, quick=True, device="cpu", log=lambda *_: None,
                                        only_variants=None if name == "time" else
                                        ["bptt", "bptt+memopt", "saf-f"],
                                        tag="" if name == "time" else "memopt", rounds=1)
        cells = payload["models"]["vggws"]
        bad = {v: c["2"]["error"] for v, c in cells.items() if "error" in c["2"]}
        status = ("planned: commands parse; ran on CPU tiny (vggws width/16, batch 2, T=2, "
                  f"{len(cells)} variants); batch 128, memopt levels 2-4 and max_memory_allocated "
                  "need CUDA") if not bad else f"failed: {bad}"
        return {"status": status, "parsed": parsed}
    if name == "fashion_mnist":
        from . import bench_fashion_mnist as fm

        data = _fabricate_fashion_mnist(out / "fashion_mnist_data")
        command = list(step["commands"][0][3:])
        index = command.index("--device")
        command[index + 1] = "cpu"
        args = fm.parse_args(command + ["--data-root", str(data)])
        return {"status": "planned: the command parses (" + ", ".join(args.methods) + "); the epoch "
                          "needs CUDA and the Fashion-MNIST files"}
    if name == "ddp":
        return {"status": "planned: needs two CUDA devices (NCCL); tests/library/test_training.py "
                          "runs the same DDP check over gloo on CPU"}
    return {"status": "planned"}


def _parse_time_command(command: list[str]) -> dict:
    """The time suite's command line parsed by its own parser (nothing runs)."""
    from . import bench_time_memory

    captured = {}
    original_run, original_device = bench_time_memory.run, common.device_name
    bench_time_memory.run = lambda *args, **kwargs: captured.update(kwargs)
    # The command is for a CUDA machine: its --device is taken as written, not checked here.
    common.device_name = str
    try:
        bench_time_memory.main(command[3:])
    finally:
        bench_time_memory.run, common.device_name = original_run, original_device
    return {k: captured.get(k) for k in ("only_variants", "tag", "rounds", "memopt_level")}


def _fabricate_fashion_mnist(root: Path, count: int = 16) -> Path:
    import gzip
    import struct

    import numpy as np

    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    for prefix in ("train", "t10k"):
        for kind, array in (("images-idx3", rng.integers(0, 256, (count, 28, 28), dtype=np.uint8)),
                            ("labels-idx1", (np.arange(count) % 10).astype(np.uint8))):
            header = (struct.pack(">BBBB", 0, 0, 0x08, array.ndim)
                      + struct.pack(f">{array.ndim}I", *array.shape))
            with gzip.open(root / f"{prefix}-{kind}-ubyte.gz", "wb") as file:
                file.write(header + array.tobytes())
    return root


# ----------------------------------------------------------------------------------------------
# DDP over NCCL


def _ddp_worker(rank: int, world: int, method: str, port: int, queue) -> None:
    import torch
    import torch.distributed as dist
    import torch.nn as nn
    from spikingjelly.activation_based import functional, layer

    from spikingjelly_saf import SAFNode, saf_online_training

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("nccl", rank=rank, world_size=world)
    device = torch.device("cuda", rank)
    torch.cuda.set_device(device)
    torch.manual_seed(0)
    net = nn.Sequential(layer.Linear(10, 16), SAFNode(), layer.Linear(16, 3)).to(device)
    functional.set_step_mode(net, "m")
    model = nn.parallel.DistributedDataParallel(net, device_ids=[rank])
    g = torch.Generator().manual_seed(1)
    x = torch.rand(8, 5, 10, generator=g).to(device)
    target = torch.randint(0, 3, (8,), generator=g).to(device)
    shard = slice(rank * 4, rank * 4 + 4)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    saf_online_training(model, opt, x[shard], target[shard], nn.functional.cross_entropy, method)
    if rank == 0:
        queue.put({k: v.cpu() for k, v in net.state_dict().items()})
    dist.barrier()
    dist.destroy_process_group()


def ddp_check(path: Path) -> int:
    """Two NCCL processes with half the batch each update like one process with the whole batch."""
    import socket

    import torch
    import torch.multiprocessing as mp
    import torch.nn as nn
    from spikingjelly.activation_based import functional, layer

    from spikingjelly_saf import SAFNode, saf_online_training

    results = {}
    for method in ("saf-e-acc", "saf-f"):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        context = mp.get_context("spawn")
        queue = context.Queue()
        procs = [context.Process(target=_ddp_worker, args=(r, 2, method, port, queue)) for r in range(2)]
        for p in procs:
            p.start()
        state = queue.get(timeout=120)
        for p in procs:
            p.join(60)
        torch.manual_seed(0)
        net = nn.Sequential(layer.Linear(10, 16), SAFNode(), layer.Linear(16, 3)).to("cuda:0")
        functional.set_step_mode(net, "m")
        g = torch.Generator().manual_seed(1)
        x = torch.rand(8, 5, 10, generator=g).to("cuda:0")
        target = torch.randint(0, 3, (8,), generator=g).to("cuda:0")
        opt = torch.optim.SGD(net.parameters(), lr=0.1)
        saf_online_training(net, opt, x, target, nn.functional.cross_entropy, method)
        worst = max(float((state[k] - v.cpu()).abs().max()) for k, v in net.state_dict().items())
        results[method] = {"max_abs_difference": worst, "passed": worst < 1e-5}
    common.write_text(path, json.dumps(results, indent=1) + "\n")
    print(json.dumps(results))
    return 0 if all(r["passed"] for r in results.values()) else 1


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true",
                        help="no CUDA needed: plan every step, run the CPU-runnable parts on tiny sizes")
    parser.add_argument("--only", default=",".join(STEP_NAMES),
                        help=f"comma-separated subset of {','.join(STEP_NAMES)}")
    parser.add_argument("--budget", type=common.positive_float, default=570.0,
                        help="seconds for all steps together (default 570: under 10 minutes)")
    parser.add_argument("--results-dir", type=Path, default=GPU_RESULTS)
    parser.add_argument("--data-root", default=None,
                        help="Fashion-MNIST idx files (default: the benchmark's own search)")
    parser.add_argument("--ddp-check", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.ddp_check:
        return ddp_check(Path(args.ddp_check))
    args.only = common.choose(parser, "--only", args.only, STEP_NAMES)
    if args.data_root is not None and not Path(args.data_root).is_dir():
        parser.error(f"--data-root {args.data_root!r}: not a folder; name the folder of the "
                     "Fashion-MNIST idx files, or drop the flag for the benchmark's own search.")
    if not args.dry_run:
        import torch

        if not torch.cuda.is_available():
            parser.error("no CUDA device here; --dry-run plans every step and runs the CPU parts on "
                         "tiny sizes.")
        args.results_dir = common.results_dir_arg(parser, args.results_dir)
    report = run_check(args)
    failed = [s["name"] for s in report["steps"] if s["status"].startswith(("failed", "timed out"))]
    if args.dry_run:
        print(json.dumps({s["name"]: s["status"] for s in report["steps"]}, indent=1))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
