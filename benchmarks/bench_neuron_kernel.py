"""The fused SAF neuron kernels against the torch backend, ReLU and SpikingJelly 2.0's own LIF kernel.

    python -m benchmarks.bench_neuron_kernel                 # CUDA: T=8, N = 2^20 .. 2^24, float32
    python -m benchmarks.bench_neuron_kernel --dtypes float32,float16 --reps 50
    python -m benchmarks.bench_neuron_kernel --device cpu    # CPU: T=1 and T=6, N = 2^15, 2^18, 2^19

For each backend it times (median of ``--reps`` after ``--warmup`` runs):

* ``forward``: the training forward (input requires grad: the kernel also writes what the
  backward needs);
* ``forward_only``: the forward under ``torch.no_grad`` (SAF-F's first T-1 steps, inference);
* ``backward``: ``autograd.grad`` of the output.

SAF goes through the backend registry, as ``SAFNode`` does (``REGISTRY.single_step`` for T=1, what a
single-step network calls at every step; one ``REGISTRY.multi_step`` call for T>1), from the state
of a later step. SpikingJelly's LIF is ``functional.lif_multi_step`` (soft reset, the same surrogate).

On CUDA (the default device) the times come from CUDA events. The achieved bandwidth counts the
minimum bytes each phase must move (read the input, write the output, write/read the saved tensor)
divided by the time; it is reported as a fraction of the device's measured copy bandwidth
(``dst.copy_(src)`` on a large buffer). The LIF is charged the same byte count, so the fractions
compare like for like. Results: ``benchmarks/results/neuron_kernel_results.json`` and
``neuron_kernel_bandwidth.png`` / ``neuron_kernel_time.png``.

On the CPU (``--device cpu``) the SAF backends are ``cpp`` (the fused CPU kernel) and ``torch``
(unfused), beside the LIF, with ``torch.relu`` and its autograd backward as the reference an ideal
network pays. Times come from ``time.perf_counter`` with torch's default thread count. Each rep
runs every backend and phase once in turn, so that a change of load on a shared machine falls on
all of them alike; every time is also given as a ratio to ReLU's for the same phase, T and N, and
each call's minor page faults are counted. Results:
``benchmarks/results/neuron_kernel_cpu.json``, from which ``python -m benchmarks --only tables``
generates the table of docs/backends.md, "Speed on the CPU".
"""

from __future__ import annotations

import argparse
import gc
import os
import resource
import statistics
import sys
import time
from pathlib import Path

import torch
from spikingjelly.activation_based import functional as sj_functional
from spikingjelly.activation_based import surrogate

from spikingjelly_saf import functional as saf_functional
from spikingjelly_saf.backends import REGISTRY

from . import common

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
TAU = 2.0
V_THRESHOLD = 1.0
SURROGATE = "Sigmoid(alpha=4.0)"
#: c[t-1] of the timed call: the state after one step, so every call is a later step that reads Abar[t-1].
STATE_WEIGHT_SUM = 1.0
PHASES = ("forward", "forward_only", "backward")
#: The name of the results file on each device type.
RESULTS_NAMES = {"cuda": "neuron_kernel_results", "cpu": "neuron_kernel_cpu"}
#: The reference of the CPU ratios.
REFERENCE = "relu"


def time_cuda(function, warmup: int, reps: int) -> float:
    """Median milliseconds of ``function()`` measured with CUDA events."""
    for _ in range(warmup):
        function()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        function()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def copy_bandwidth(device: torch.device, warmup: int, reps: int, megabytes: int = 1024) -> float:
    """Bytes per second of a device-to-device copy (read + write counted)."""
    source = torch.empty(megabytes * 2**20, dtype=torch.uint8, device=device)
    target = torch.empty_like(source)
    milliseconds = time_cuda(lambda: target.copy_(source), warmup, reps)
    return 2 * source.numel() / (milliseconds * 1e-3)


def saf_runner(backend: str, sg):
    """``forward(x, abar)``: one SAF layer call through the registry; ``x`` is ``[N]`` (a single step)
    or ``[T, N]`` (a sequence)."""
    params = saf_functional.SAFParameters.from_tau(TAU, V_THRESHOLD)

    def forward(x, abar):
        state = saf_functional.SAFState(abar, STATE_WEIGHT_SUM)
        if x.dim() == 1:
            return REGISTRY.single_step(backend, x, state, params, sg)[0]
        return REGISTRY.multi_step(backend, x, state, params, sg)[0]

    return forward


def lif_runner(sg):
    def forward(x, v):
        if x.dim() == 1:  # lif_multi_step takes sequences: a single step is T=1
            return forward(x.unsqueeze(0), v)[0]
        return sj_functional.lif_multi_step(
            x, v, tau=TAU, decay_input=False, v_threshold=V_THRESHOLD, v_reset=None,
            surrogate_function=sg, detach_reset=True,
        )[0]

    return forward


def relu_runner():
    def forward(x, state):
        return torch.relu(x)

    return forward


def inputs(steps: int, neurons: int, dtype, device, state_dtype=None, single_step: bool = False):
    """``(x, state, grad_out)``: currents around the threshold, a state in [0, 1), a random gradient."""
    shape = (neurons,) if single_step else (steps, neurons)
    x = (torch.randn(shape, device=device) * 1.2 + 0.6).to(dtype)
    state = torch.rand(neurons, device=device).to(state_dtype or dtype)
    return x, state, torch.randn_like(x)


def measure(forward, steps: int, neurons: int, dtype, device, warmup: int, reps: int,
            state_dtype=None) -> dict:
    calls = phase_calls(forward, *inputs(steps, neurons, dtype, device, state_dtype))
    return {f"{phase}_ms": time_cuda(call, warmup, reps) for phase, call in calls.items()}


def phase_calls(forward, x, state, grad_out) -> dict:
    """The three timed calls of one backend on one input, by phase."""
    x_grad = x.clone().requires_grad_()
    y = forward(x_grad, state)

    def forward_only():
        with torch.no_grad():
            return forward(x, state)

    return {"forward": lambda: forward(x_grad, state), "forward_only": forward_only,
            "backward": lambda: torch.autograd.grad(y, x_grad, grad_out, retain_graph=True)}


def _page_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def time_cpu(calls: dict, warmup: int, reps: int) -> dict:
    """``(median seconds, minimum seconds, minor page faults per call)`` of each call; every rep runs
    all calls once, in turn. The page faults tell a call that maps fresh memory (glibc's malloc may
    return a large freed block to the system, so the next allocation faults in every page again)."""
    for _ in range(warmup):
        for call in calls.values():
            call()
    samples = {key: [] for key in calls}
    faults = dict.fromkeys(calls, 0)
    collecting = gc.isenabled()
    gc.collect()
    gc.disable()  # a collection would be charged to whichever call it interrupts
    try:
        for _ in range(reps):
            for key, call in calls.items():
                before = _page_faults()
                start = time.perf_counter()
                call()
                samples[key].append(time.perf_counter() - start)
                faults[key] += _page_faults() - before
    finally:
        if collecting:
            gc.enable()
    return {key: (statistics.median(values), min(values), faults[key] / reps)
            for key, values in samples.items()}


def minimum_bytes(steps: int, neurons: int, element: int, saved_element: int) -> dict:
    sequence = steps * neurons
    return {
        "forward_only": (2 * sequence + neurons) * element,
        "forward": (2 * sequence + neurons) * element + sequence * saved_element,
        "backward": 2 * sequence * element + sequence * saved_element,
    }


#: Neurons per call: 2**log2n; 2**30 float32 neurons at T=8 already take 32 GiB per tensor.
MAX_LOG2N = 30
BACKEND_NAMES = {"cuda": ("torch", "cupy", "triton", "spikingjelly-lif"),
                 "cpu": ("cpp", "torch", "spikingjelly-lif")}
#: Per device type: T, the neuron counts (log2), warmup and reps. The CPU sizes are those of the
#: width/4 VGG's layers at batch 16 (2^15 .. 2^19 neurons per step).
DEFAULTS = {"cuda": {"steps": [8], "min_log2n": 20, "max_log2n": 24, "warmup": 5, "reps": 20},
            "cpu": {"steps": [1, 6], "log2n": [15, 18, 19], "min_log2n": 15, "max_log2n": 19,
                    "warmup": 10, "reps": 100}}


def kernel_device(text: str) -> str:
    """``cpu`` or ``cuda[:i]``; the CUDA availability is checked after the other flags."""
    try:
        parsed = torch.device(text)
    except (RuntimeError, ValueError, TypeError):
        parsed = None
    if parsed is None or parsed.type not in DEFAULTS or (parsed.index or 0) < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a device; accepted: cuda, cuda:i, cpu")
    return "cpu" if parsed.type == "cpu" else str(parsed)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_neuron_kernel",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", type=kernel_device, default="cuda", help="'cuda[:i]' (default) or 'cpu'")
    parser.add_argument("--steps", type=common.positive_int_list, default=None,
                        help="time steps T per call, comma-separated (default: 8 on CUDA, 1,6 on CPU)")
    parser.add_argument("--log2n", type=common.non_negative_int_list, default=None,
                        help="neurons per step, as comma-separated powers of two (replaces the range "
                             "of --min-log2n/--max-log2n; default on CPU: 15,18,19)")
    parser.add_argument("--min-log2n", type=common.non_negative_int, default=None,
                        help="default: 20 on CUDA, 15 on CPU")
    parser.add_argument("--max-log2n", type=common.non_negative_int, default=None,
                        help="default: 24 on CUDA, 19 on CPU")
    parser.add_argument("--dtypes", default="float32", help=f"subset of {','.join(DTYPES)}")
    parser.add_argument("--backends", default=None,
                        help="subset of " + "; ".join(f"on {device}: {','.join(names)}"
                                                      for device, names in BACKEND_NAMES.items())
                             + " (default: all; on CPU ReLU is always timed)")
    parser.add_argument("--warmup", type=common.non_negative_int, default=None,
                        help="default: 5 on CUDA, 10 on CPU")
    parser.add_argument("--reps", type=common.positive_int, default=None,
                        help="default: 20 on CUDA, 100 on CPU")
    parser.add_argument("--results-dir", type=Path, default=None, help=f"default: {common.RESULTS_DIR}")
    return parser


def check_args(parser: argparse.ArgumentParser, args) -> None:
    """Defaults of the device filled in; every bad value ends in one message naming its flag."""
    kind = torch.device(args.device).type
    defaults = DEFAULTS[kind]
    args.dtypes = common.choose(parser, "--dtypes", args.dtypes, tuple(DTYPES))
    names = BACKEND_NAMES[kind]
    args.backends = common.choose(parser, "--backends", args.backends or ",".join(names), names,
                                  f" (on {kind})")
    for key in ("steps", "warmup", "reps"):
        if getattr(args, key) is None:
            setattr(args, key, defaults[key])
    if args.log2n is not None:
        if args.min_log2n is not None or args.max_log2n is not None:
            parser.error("--log2n replaces --min-log2n/--max-log2n: give one or the other.")
        if max(args.log2n) > MAX_LOG2N:
            parser.error(f"--log2n {max(args.log2n)}: at most {MAX_LOG2N} "
                         f"(2**{MAX_LOG2N} neurons per call at most).")
        args.log2n = sorted(args.log2n)
    else:
        given = args.min_log2n is not None or args.max_log2n is not None
        args.min_log2n = defaults["min_log2n"] if args.min_log2n is None else args.min_log2n
        args.max_log2n = defaults["max_log2n"] if args.max_log2n is None else args.max_log2n
        if not args.min_log2n <= args.max_log2n <= MAX_LOG2N:
            parser.error(f"--min-log2n {args.min_log2n}, --max-log2n {args.max_log2n}: need "
                         f"min <= max <= {MAX_LOG2N} (2**{MAX_LOG2N} neurons per call at most).")
        args.log2n = (defaults["log2n"] if "log2n" in defaults and not given
                      else list(range(args.min_log2n, args.max_log2n + 1)))
    args.results_dir = common.results_dir_arg(parser, args.results_dir)
    if kind == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if not count:
            parser.error(f"--device {args.device}: no CUDA device is available to PyTorch here; time the CPU "
                         "kernels with --device cpu (their correctness is covered by "
                         "tests/library/test_backends.py).")
        if (torch.device(args.device).index or 0) >= count:
            parser.error(f"--device {args.device}: this machine has cuda:0 .. cuda:{count - 1}.")


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_args(parser, args)
    if args.device == "cpu":
        run_cpu(args)
        print(f"wrote {args.results_dir / (RESULTS_NAMES['cpu'] + '.json')}")
        return 0
    return run_cuda(args)


def _unavailable(name: str, step_modes, probe) -> str | None:
    """Why backend ``name`` cannot be timed here (None: it can)."""
    try:
        for mode in step_modes:
            REGISTRY.check(name, mode)
        probe()
    except Exception as error:  # a backend that cannot run is recorded, not fatal
        return f"{type(error).__name__}: {error}"
    return None


def cpu_runners(names, sg, steps) -> tuple[dict, dict]:
    """``({name: forward}, {name: why not})`` for the CPU: ReLU first, then the chosen backends that run
    here (a fused backend the registry would send to torch does not count as itself)."""
    runners, skipped = {REFERENCE: relu_runner()}, {}
    modes = sorted({"s" if t == 1 else "m" for t in steps})
    for name in names:
        forward = lif_runner(sg) if name == "spikingjelly-lif" else saf_runner(name, sg)

        def probe(name=name, forward=forward):
            for t in steps:
                x, state, grad_out = inputs(t, 64, torch.float32, "cpu", single_step=t == 1)
                x.requires_grad_()
                torch.autograd.grad(forward(x, state), x, grad_out)
                if name != "spikingjelly-lif":
                    mode = "s" if t == 1 else "m"
                    chosen = REGISTRY.route(name, x, saf_functional.SAFState(state, STATE_WEIGHT_SUM),
                                            sg, mode).backend.name
                    if chosen != name:
                        raise RuntimeError(f"the registry runs these calls on {chosen!r}, not {name!r}")

        reason = _unavailable(name, modes if name != "spikingjelly-lif" else (), probe)
        if reason:
            skipped[name] = reason
            print(f"skipping {name}: {reason}", file=sys.stderr)
        else:
            runners[name] = forward
    return runners, skipped


def _call_of(name: str, steps: int) -> str:
    if name == REFERENCE:
        return "torch.relu"
    if name == "spikingjelly-lif":
        return "functional.lif_multi_step"
    return "REGISTRY.single_step" if steps == 1 else "REGISTRY.multi_step"


def run_cpu(args) -> dict:
    sg = surrogate.Sigmoid(alpha=4.0)
    torch.manual_seed(0)
    runners, skipped = cpu_runners(args.backends, sg, args.steps)
    loadavg = {"before": list(os.getloadavg())}
    start = time.perf_counter()
    rows = []
    for dtype_name in args.dtypes:
        dtype = DTYPES[dtype_name]
        for steps in args.steps:
            for log2n in args.log2n:
                neurons = 2**log2n
                x, state, grad_out = inputs(steps, neurons, dtype, "cpu", single_step=steps == 1)
                calls = {}
                for name, forward in runners.items():
                    for phase, call in phase_calls(forward, x, state, grad_out).items():
                        calls[name, phase] = call
                timing = time_cpu(calls, args.warmup, args.reps)
                reference = {phase: timing[REFERENCE, phase][0] for phase in PHASES}
                for name in runners:
                    row = {"backend": name, "dtype": dtype_name, "steps": steps, "neurons": neurons,
                           "call": _call_of(name, steps)}
                    for phase in PHASES:
                        median, lowest, faults = timing[name, phase]
                        row[f"{phase}_us"] = median * 1e6
                        row[f"{phase}_us_min"] = lowest * 1e6
                        row[f"{phase}_page_faults_per_call"] = faults
                        row[f"{phase}_over_{REFERENCE}"] = median / reference[phase]
                    rows.append(row)
                    print(f"{name:>17} {dtype_name} T={steps} N=2^{log2n}: "
                          + ", ".join(f"{p} {row[f'{p}_us']:.1f} us ({row[f'{p}_over_{REFERENCE}']:.2f}x)"
                                      for p in PHASES), flush=True)
    loadavg["after"] = list(os.getloadavg())
    payload = {
        "meta": common.metadata("cpu"),
        "settings": {"dtypes": args.dtypes, "steps": args.steps, "neurons": [2**k for k in args.log2n],
                     "tau": TAU, "v_threshold": V_THRESHOLD, "surrogate": SURROGATE,
                     "state_weight_sum": STATE_WEIGHT_SUM, "warmup": args.warmup, "reps": args.reps,
                     "threads": torch.get_num_threads(), "reference": REFERENCE,
                     "timing": (f"time.perf_counter per call, median of {args.reps} reps after "
                                f"{args.warmup} warmup reps; each rep runs every backend and phase "
                                f"once in turn; {torch.get_num_threads()} torch threads"),
                     "page_faults": "minor page faults of the process during the call (getrusage), "
                                    "mean per call",
                     "page_bytes": resource.getpagesize(),
                     "phases": {"forward": "input requires grad (saves what the backward needs)",
                                "forward_only": "under torch.no_grad",
                                "backward": "torch.autograd.grad of the output"}},
        "loadavg": loadavg,
        "wall_seconds": time.perf_counter() - start,
        "skipped_backends": skipped,
        "rows": rows,
    }
    common.write_json(args.results_dir, RESULTS_NAMES["cpu"], payload)
    return payload


def run_cuda(args) -> int:
    device = torch.device(args.device)
    sg = surrogate.Sigmoid(alpha=4.0)
    runners = {}
    skipped = {}
    for name in args.backends:
        if name == "spikingjelly-lif":
            runners[name] = (lif_runner(sg), torch.float32)
            continue
        try:
            REGISTRY.check(name, "m")
        except (RuntimeError, ValueError) as error:
            skipped[name] = str(error)
            print(f"skipping {name}: {error}", file=sys.stderr)
            continue
        runners[name] = (saf_runner(name, sg), None)

    bandwidth = copy_bandwidth(device, args.warmup, args.reps)
    print(f"{torch.cuda.get_device_name(device)}: copy bandwidth {bandwidth / 1e9:.1f} GB/s")
    rows = []
    for dtype_name in args.dtypes:
        dtype = DTYPES[dtype_name]
        element = torch.empty((), dtype=dtype).element_size()
        for steps in args.steps:
            for log2n in args.log2n:
                neurons = 2**log2n
                traffic = minimum_bytes(steps, neurons, element, element)
                for name, (forward, state_dtype) in runners.items():
                    timing = measure(forward, steps, neurons, dtype, device, args.warmup, args.reps,
                                     state_dtype)
                    row = {"backend": name, "dtype": dtype_name, "steps": steps, "neurons": neurons}
                    for phase, byte_count in traffic.items():
                        milliseconds = timing[f"{phase}_ms"]
                        achieved = byte_count / (milliseconds * 1e-3)
                        row[f"{phase}_ms"] = milliseconds
                        row[f"{phase}_bytes"] = byte_count
                        row[f"{phase}_fraction_of_copy_bandwidth"] = achieved / bandwidth
                    rows.append(row)
                    print(f"{name:>17} {dtype_name} T={steps} N=2^{log2n}: "
                          + ", ".join(f"{p} {row[f'{p}_ms']:.3f} ms "
                                      f"({row[f'{p}_fraction_of_copy_bandwidth']:.0%})" for p in traffic))
                    torch.cuda.empty_cache()

    payload = {
        "metadata": dict(common.metadata(str(device)), cupy=_version("cupy"), triton=_version("triton")),
        "settings": {"steps": args.steps, "tau": TAU, "v_threshold": V_THRESHOLD,
                     "surrogate": SURROGATE, "warmup": args.warmup, "reps": args.reps},
        "copy_bandwidth_bytes_per_s": bandwidth,
        "skipped_backends": skipped,
        "rows": rows,
    }
    path = common.write_json(args.results_dir, RESULTS_NAMES["cuda"], payload)
    note = (f"{payload['metadata'].get('cuda_device', '')}, T={','.join(map(str, args.steps))}, "
            f"{payload['metadata']['date_utc']}")
    for metric, ylabel, file_name, logy in (
        ("fraction_of_copy_bandwidth", "achieved / copy bandwidth", "neuron_kernel_bandwidth.png", False),
        ("ms", "time (ms)", "neuron_kernel_time.png", True),
    ):
        series = {}
        for row in rows:
            for phase in PHASES:
                key = f"{row['backend']} {phase} {row['dtype']}" + (
                    f" T={row['steps']}" if len(args.steps) > 1 else "")
                xs, ys = series.setdefault(key, ([], []))
                xs.append(row["neurons"])
                ys.append(row[f"{phase}_{metric}"])
        common.plot_lines(args.results_dir / file_name, series, "neurons N", ylabel,
                          "SAF neuron kernels vs torch and SpikingJelly LIF", logx=True, logy=logy,
                          note=note)
    print(f"wrote {path}")
    return 0


def _version(module: str) -> str:
    try:
        return __import__(module).__version__
    except Exception:
        return "not installed"


if __name__ == "__main__":
    sys.exit(main())
