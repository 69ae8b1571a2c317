"""The fused SAF neuron kernels against the torch backend and SpikingJelly 2.0's own LIF kernel.

    python -m benchmarks.bench_neuron_kernel                 # T=8, N = 2^20 .. 2^24, float32
    python -m benchmarks.bench_neuron_kernel --dtypes float32,float16 --reps 50

Needs a CUDA device. For each backend it times, with CUDA events (median of ``--reps`` after
``--warmup`` runs):

* ``forward``: the training forward (input requires grad: the kernel also writes what the
  backward needs);
* ``forward_only``: the forward under ``torch.no_grad`` (SAF-F's first T-1 steps, inference);
* ``backward``: ``autograd.grad`` of the output.

The achieved bandwidth counts the minimum bytes each phase must move (read the input, write the
output, write/read the saved tensor) divided by the time; it is reported as a fraction of the
device's measured copy bandwidth (``dst.copy_(src)`` on a large buffer). SpikingJelly's LIF
(``functional.lif_multi_step``, soft reset, the same surrogate) is charged the same byte count, so the
fractions compare like for like. Results: ``benchmarks/results/neuron_kernel_results.json`` and
``neuron_kernel_bandwidth.png`` / ``neuron_kernel_time.png``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch
from spikingjelly.activation_based import functional as sj_functional
from spikingjelly.activation_based import surrogate

from spikingjelly_saf import backends
from spikingjelly_saf import functional as saf_functional

from . import common

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
TAU = 2.0
V_THRESHOLD = 1.0


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
    run = backends.get_multi_step(backend)
    decay = saf_functional.decay_factor(TAU)

    def forward(x, abar):
        return run(x, abar, 0.0, decay, V_THRESHOLD, 1.0, sg)[0]

    return forward


def lif_runner(sg):
    def forward(x, v):
        return sj_functional.lif_multi_step(
            x, v, tau=TAU, decay_input=False, v_threshold=V_THRESHOLD, v_reset=None,
            surrogate_function=sg, detach_reset=True,
        )[0]

    return forward


def measure(forward, steps: int, neurons: int, dtype, device, warmup: int, reps: int,
            state_dtype=None) -> dict:
    x = (torch.randn(steps, neurons, device=device) * 1.2 + 0.6).to(dtype)
    state = torch.zeros(neurons, device=device, dtype=state_dtype or dtype)
    x_grad = x.clone().requires_grad_()
    grad_out = torch.randn_like(x)
    result = {}
    with torch.no_grad():
        result["forward_only_ms"] = time_cuda(lambda: forward(x, state), warmup, reps)
    result["forward_ms"] = time_cuda(lambda: forward(x_grad, state), warmup, reps)
    y = forward(x_grad, state)

    def backward():
        torch.autograd.grad(y, x_grad, grad_out, retain_graph=True)

    result["backward_ms"] = time_cuda(backward, warmup, reps)
    return result


def minimum_bytes(steps: int, neurons: int, element: int, saved_element: int) -> dict:
    sequence = steps * neurons
    return {
        "forward_only": (2 * sequence + neurons) * element,
        "forward": (2 * sequence + neurons) * element + sequence * saved_element,
        "backward": 2 * sequence * element + sequence * saved_element,
    }


#: Neurons per call: 2**log2n; 2**30 float32 neurons at T=8 already take 32 GiB per tensor.
MAX_LOG2N = 30
BACKEND_NAMES = ("torch", "cupy", "triton", "spikingjelly-lif")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_neuron_kernel",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=common.positive_int, default=8)
    parser.add_argument("--min-log2n", type=common.non_negative_int, default=20)
    parser.add_argument("--max-log2n", type=common.non_negative_int, default=24)
    parser.add_argument("--dtypes", default="float32", help=f"subset of {','.join(DTYPES)}")
    parser.add_argument("--backends", default=",".join(BACKEND_NAMES),
                        help=f"subset of {','.join(BACKEND_NAMES)}")
    parser.add_argument("--warmup", type=common.non_negative_int, default=5)
    parser.add_argument("--reps", type=common.positive_int, default=20)
    parser.add_argument("--results-dir", type=Path, default=None, help=f"default: {common.RESULTS_DIR}")
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.dtypes = common.choose(parser, "--dtypes", args.dtypes, tuple(DTYPES))
    args.backends = common.choose(parser, "--backends", args.backends, BACKEND_NAMES)
    if not args.min_log2n <= args.max_log2n <= MAX_LOG2N:
        parser.error(f"--min-log2n {args.min_log2n}, --max-log2n {args.max_log2n}: need "
                     f"min <= max <= {MAX_LOG2N} (2**{MAX_LOG2N} neurons per call at most).")
    args.results_dir = common.results_dir_arg(parser, args.results_dir)
    if not torch.cuda.is_available():
        print("bench_neuron_kernel needs a CUDA device (none is available to PyTorch here); "
              "the kernels' correctness on CPU is covered by tests/library/test_backends.py.", file=sys.stderr)
        return 2
    device = torch.device("cuda")
    sg = surrogate.Sigmoid(alpha=4.0)
    runners = {}
    skipped = {}
    for name in args.backends:
        if name == "spikingjelly-lif":
            runners[name] = (lif_runner(sg), torch.float32)
            continue
        try:
            backends.REGISTRY.check(name, "m")
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
        for log2n in range(args.min_log2n, args.max_log2n + 1):
            neurons = 2**log2n
            traffic = minimum_bytes(args.steps, neurons, element, element)
            for name, (forward, state_dtype) in runners.items():
                timing = measure(forward, args.steps, neurons, dtype, device, args.warmup, args.reps,
                                 state_dtype)
                row = {"backend": name, "dtype": dtype_name, "steps": args.steps, "neurons": neurons}
                for phase, byte_count in traffic.items():
                    milliseconds = timing[f"{phase}_ms"]
                    achieved = byte_count / (milliseconds * 1e-3)
                    row[f"{phase}_ms"] = milliseconds
                    row[f"{phase}_bytes"] = byte_count
                    row[f"{phase}_fraction_of_copy_bandwidth"] = achieved / bandwidth
                rows.append(row)
                print(f"{name:>17} {dtype_name} N=2^{log2n}: "
                      + ", ".join(f"{p} {row[f'{p}_ms']:.3f} ms "
                                  f"({row[f'{p}_fraction_of_copy_bandwidth']:.0%})" for p in traffic))
                torch.cuda.empty_cache()

    payload = {
        "metadata": dict(common.metadata(str(device)), cupy=_version("cupy"), triton=_version("triton")),
        "settings": {"steps": args.steps, "tau": TAU, "v_threshold": V_THRESHOLD,
                     "surrogate": "Sigmoid(alpha=4.0)", "warmup": args.warmup, "reps": args.reps},
        "copy_bandwidth_bytes_per_s": bandwidth,
        "skipped_backends": skipped,
        "rows": rows,
    }
    path = common.write_json(args.results_dir, "neuron_kernel_results", payload)
    note = f"{payload['metadata'].get('cuda_device', '')}, T={args.steps}, {payload['metadata']['date_utc']}"
    for metric, ylabel, file_name, logy in (
        ("fraction_of_copy_bandwidth", "achieved / copy bandwidth", "neuron_kernel_bandwidth.png", False),
        ("ms", "time (ms)", "neuron_kernel_time.png", True),
    ):
        series = {}
        for row in rows:
            for phase in ("forward", "forward_only", "backward"):
                key = f"{row['backend']} {phase} {row['dtype']}"
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
