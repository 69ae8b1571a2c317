"""Shared pieces of the benchmarks: metadata, JSON and plots, models, fresh-process measurement."""

from __future__ import annotations

import datetime
import json
import math
import multiprocessing
import os
import platform
import traceback
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.nn as nn
from spikingjelly.activation_based import functional, neuron
from spikingjelly.activation_based.model import spiking_resnet

from spikingjelly_saf import zoo
from saf_examples.methods import Method, get_method
from spikingjelly_saf.surrogate import SpikeRepresentation

RESULTS_DIR = Path(__file__).resolve().parent / "results"
README_PATH = Path(__file__).resolve().parent.parent / "README.md"
DOCS_PATH = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
TABLE_START = "<!-- BENCHMARK-TABLE:START -->"
TABLE_END = "<!-- BENCHMARK-TABLE:END -->"


# ----------------------------------------------------------------------------------------------
# metadata and output


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def metadata(device: str) -> dict:
    import spikingjelly

    info = {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": platform.node(),
        "platform": platform.platform(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "spikingjelly": getattr(spikingjelly, "__version__", _dist_version("spikingjelly")),
        "spikingjelly_saf": _dist_version("spikingjelly-saf"),
        "device": device,
    }
    if device.startswith("cuda"):
        info["cuda_device"] = torch.cuda.get_device_name(torch.device(device))
        info["cuda"] = torch.version.cuda
    return info


def _dist_version(name: str) -> str:
    try:
        from importlib.metadata import version

        return version(name)
    except Exception:
        if name == "spikingjelly-saf":
            import spikingjelly_saf

            return spikingjelly_saf.__version__
        return "unknown"


def write_json(results_dir: Path, name: str, payload: dict) -> Path:
    results_dir.mkdir(parents=True, exist_ok=True)
    path = results_dir / f"{name}.json"
    path.write_text(json.dumps(payload, indent=1, default=_json_default) + "\n")
    return path


def read_json(results_dir: Path, name: str) -> Optional[dict]:
    path = results_dir / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def _json_default(value):
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, torch.Tensor):
        return value.tolist()
    return str(value)


def plot_lines(path: Path, series: dict[str, tuple[list, list]], xlabel: str, ylabel: str,
               title: str, logx: bool = False, logy: bool = False, note: str = "",
               ymin: Optional[float] = None) -> Path:
    """One line per series name: ``series[name] = (xs, ys)``; ``ymin=0`` starts the y axis at zero."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    colors = plt.get_cmap("tab10" if len(series) <= 10 else "tab20").colors
    for index, (name, (xs, ys)) in enumerate(series.items()):
        if xs:
            ax.plot(xs, ys, marker="o", markersize=3, label=name, color=colors[index % len(colors)],
                    linestyle="--" if name.startswith("ideal") else "-")
    if logx:
        ax.set_xscale("log", base=2)
    if logy:
        ax.set_yscale("log")
    if ymin is not None:
        ax.set_ylim(bottom=ymin)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    if note:
        fig.text(0.01, 0.01, note, fontsize=6)
    fig.tight_layout(rect=(0, 0.03 if note else 0, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------------------------
# neurons and models


def neuron_kwargs(method: Method, tau: float = 2.0, steps: Optional[int] = None) -> dict:
    """The OTTT setting (tau=2, V_th=1, soft reset, detach_reset); the representation-level method
    (SAF-F) gets its ``SpikeRepresentation`` surrogate; ``steps`` for neurons built for a fixed T (DSR)."""
    sg = SpikeRepresentation() if method.representation_level else None
    return method.neuron_kwargs(tau=tau, surrogate_function=sg,
                                steps=steps if method.needs_steps else None)


def build_vgg(neuron_type: Callable, kwargs: dict, width_divisor: int = 1,
              num_classes: int = 10) -> nn.Module:
    """``ottt_spiking_vggws`` (cfg "S": WS-conv, neuron, Scale(2.74), AvgPool) through
    :func:`spikingjelly_saf.zoo.vggws`, with every width divided by ``width_divisor``."""
    return zoo.vggws(neuron_type, num_classes=num_classes,
                     width_divisor=width_divisor if width_divisor > 1 else None, **kwargs)


def build_resnet18(neuron_type: Callable, kwargs: dict, width_divisor: int = 1,
                   num_classes: int = 10) -> nn.Module:
    """SpikingJelly's ``spiking_resnet18`` (zoo stem: 7x7 stride-2 conv, MaxPool)."""
    model = spiking_resnet.spiking_resnet18(spiking_neuron=neuron_type, num_classes=num_classes,
                                            **kwargs)
    return model


ARCHS = {"vggws": build_vgg, "resnet18": build_resnet18}

#: Benchmark variant: BPTT with SpikingJelly 2.0's ``memopt.optimize_memory``.
MEMOPT_VARIANT = "bptt+memopt"


class MemoptBlock(nn.Sequential):
    """Layers from one neuron's output up to and including the next neuron: the unit that
    ``memopt.optimize_memory`` checkpoints. Every block after the first receives spikes, so memopt
    can bit-compress the input it saves."""


def group_neuron_blocks(layers) -> nn.Sequential:
    """``layers`` (a Sequential) regrouped into :class:`MemoptBlock` units, each ending with a
    neuron; layers after the last neuron stay outside any block. Parameters and order are kept."""
    blocks, current = [], []
    for module in layers:
        current.append(module)
        if isinstance(module, neuron.BaseNode):
            blocks.append(MemoptBlock(*current))
            current = []
    return nn.Sequential(*blocks, *current)


def memopt_targets(arch: str) -> tuple:
    """The module types memopt checkpoints: ResNet-18's residual blocks, elsewhere :class:`MemoptBlock`."""
    return (spiking_resnet.BasicBlock,) if arch == "resnet18" else (MemoptBlock,)


def apply_memopt(model: nn.Module, arch: str, example_input: torch.Tensor, level: int = 1) -> nn.Module:
    """Selective checkpointing with spike compression (``memopt.optimize_memory``) on a multi-step model.

    ``example_input`` ``[T, B, *]`` must look like real input: memopt compresses a block's saved
    input when its probe finds it binary (true for spikes, wrong for an all-zero image). Level 1
    runs anywhere; levels 2-4 search by measuring CUDA memory.
    """
    from spikingjelly.activation_based import memopt

    with torch.random.fork_rng(devices=[example_input.device] if example_input.is_cuda else []):
        memopt.optimize_memory(model, memopt_targets(arch), lambda current: current(example_input),
                               level=level, compress=True)
    functional.reset_net(model)
    return model


def build(arch: str, method_name: str, steps: int, width_divisor: int = 1,
          num_classes: int = 10, tau: float = 2.0) -> tuple[nn.Module, Method]:
    """The model of ``arch`` built for ``method_name`` (a methods-table name, or ``bptt+memopt``,
    which still needs :func:`apply_memopt`)."""
    if method_name == MEMOPT_VARIANT:
        # The BPTT model with neuron-terminated blocks; apply_memopt needs an example input.
        model, method = build(arch, "bptt", steps, width_divisor, num_classes, tau)
        if arch == "vggws":
            model.features = group_neuron_blocks(model.features)
        return model, method
    method = get_method(method_name)
    model = ARCHS[arch](method.neuron_type, neuron_kwargs(method, tau, steps), width_divisor, num_classes)
    method.prepare(model)
    return model, method


def set_saf_backend(model: nn.Module, backend: str) -> None:
    from spikingjelly_saf.neuron import SAFNode

    for m in model.modules():
        if isinstance(m, SAFNode):
            m.backend = backend


# ----------------------------------------------------------------------------------------------
# device helpers


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _child_entry(function: Callable, args: tuple, sender) -> None:
    try:
        result = function(*args)
    except Exception as error:  # reported, not raised: a configuration that cannot run is a result
        result = {"error": f"{type(error).__name__}: {error}",
                  "traceback": traceback.format_exc(limit=3)}
    sender.send(result)
    sender.close()


_FORKSERVER_READY = False


def run_in_fresh_process(function: Callable, *args, timeout: float = 900.0):
    """Run ``function(*args)`` (a module-level function) in a fresh child; its result or ``{'error'}``.

    Children come from a fork server (started with glibc's malloc thresholds fixed,
    :data:`benchmarks.memory_account.MALLOC_ENVIRONMENT`) that imported torch, SpikingJelly and the benchmarks but never
    ran an operator: each configuration starts from the same small heap without paying the imports
    again, and the peak resident set measured in the child belongs to that configuration alone.
    (Forking the main process instead would deadlock once it has used OpenMP threads.)
    """
    global _FORKSERVER_READY
    context = multiprocessing.get_context("forkserver")
    if not _FORKSERVER_READY:
        # glibc reads its malloc thresholds when a process starts: set them for the fork server,
        # whose children inherit them (the resident-set peak is then deterministic).
        from .memory_account import MALLOC_ENVIRONMENT

        for key, value in MALLOC_ENVIRONMENT.items():
            os.environ.setdefault(key, value)
        context.set_forkserver_preload(["torch", "spikingjelly.activation_based.model.spiking_resnet",
                                        "spikingjelly_saf", __name__, function.__module__])
        _FORKSERVER_READY = True
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(target=_child_entry, args=(function, args, sender))
    process.start()
    sender.close()
    if receiver.poll(timeout):
        result = receiver.recv()
    else:
        result = {"error": f"timed out after {timeout:.0f} s"}
    process.join(10)
    if process.is_alive():
        process.kill()
        process.join()
    return result


def update_region(markdown: str, path: Path, start_marker: str, end_marker: str) -> bool:
    """Replace the text between two markers of ``path``; False (and a warning) if they are missing."""
    if not path.exists():
        print(f"warning: {path} does not exist; not updated.")
        return False
    text = path.read_text()
    start, end = text.find(start_marker), text.find(end_marker)
    if start < 0 or end < 0 or end < start:
        print(f"warning: {path} has no {start_marker} ... {end_marker} region; not updated.")
        return False
    path.write_text(text[:start + len(start_marker)] + "\n" + markdown.strip() + "\n" + text[end:])
    return True


def update_readme_table(markdown: str, readme_path: Path = README_PATH) -> bool:
    """Replace the text between the BENCHMARK-TABLE markers of the README; False if they are missing."""
    return update_region(markdown, readme_path, TABLE_START, TABLE_END)


def suite_main(run: Callable, description: str, argv=None) -> None:
    """The command line shared by every ``python -m benchmarks.bench_*`` suite."""
    import argparse

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    run(args.results_dir, args.quick)
