"""Shared pieces of the benchmarks: metadata, JSON and plots, models, fresh-process measurement."""

from __future__ import annotations

import argparse
import contextlib
import contextvars
import datetime
import json
import math
import multiprocessing
import os
import platform
import tempfile
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
    # Serialised before the file is opened: a payload that cannot be written leaves the old file.
    text = json.dumps(payload, indent=1, default=_json_default) + "\n"
    return write_text(Path(results_dir) / f"{name}.json", text)


def read_json(results_dir: Path, name: str) -> Optional[dict]:
    """``<name>.json`` of ``results_dir``: None when it is absent (or hidden by :func:`results_without`),
    :class:`ResultsFileError` when it is not a suite's JSON object."""
    path = Path(results_dir) / f"{name}.json"
    if name in _HIDDEN.get() or not path.exists():
        return None
    try:
        payload = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise results_file_error(path, f"cannot be read as JSON ({error})") from error
    if not isinstance(payload, dict):
        raise results_file_error(path, f"holds a JSON {type(payload).__name__}, not the object its "
                                       "suite writes")
    # Every suite records its machine and versions; an object without them is no suite's output.
    if "meta" not in payload and "metadata" not in payload:
        raise results_file_error(path, "has no 'meta' entry: it is not what a benchmark suite writes")
    return payload


class ResultsFileError(ValueError):
    """A results file that is not what its suite writes: cut short, not JSON, or another shape."""


#: The command that writes each results file, by the start of its name (the first match counts).
WRITERS = (
    ("time_memory_account", "python -m benchmarks.bench_time_memory --memory"),
    ("time_memory_memopt", "python -m benchmarks.bench_time_memory --archs vggws,resnet18 --steps 4,16 "
                           "--variants bptt,bptt+memopt,saf-e,saf-f,sltt --tag memopt --threads 1"),
    ("time_memory", "python -m benchmarks --only time"),
    ("ops", "python -m benchmarks --only ops"),
    ("accuracy", "python -m benchmarks --only accuracy"),
    ("reviewers", "python -m benchmarks --only reviewers"),
    ("fashion_mnist_first_minibatches", "python -m benchmarks.bench_first_minibatches"),
    ("gradient_alignment", "python -m benchmarks.bench_gradient_alignment --tag {name}"),
    ("fashion_mnist_T6_objectives", "python -m benchmarks.bench_fashion_mnist "
                                    "--methods bptt-final,bptt-every-step --workers 2 --tag {name}"),
    ("fashion_mnist", "python -m benchmarks.bench_fashion_mnist --tag {name}"),
    ("sequential", "python -m benchmarks.bench_sequential"),
    ("neuron_kernel_results", "python -m benchmarks.bench_neuron_kernel"),
    ("neuron_kernel_cpu", "python -m benchmarks.bench_neuron_kernel --device cpu"),
)


def writer_of(name: str) -> str:
    """The command that writes results file ``name`` (without ``.json``)."""
    for prefix, command in WRITERS:
        if name.startswith(prefix):
            return command.format(name=name)
    return "the benchmark that wrote it"


def results_file_error(path: Path, problem: str) -> ResultsFileError:
    path = Path(path)
    restore = (f", or restore the committed copy with `git checkout -- {path}`"
               if path.resolve().parent == RESULTS_DIR else "")
    return ResultsFileError(f"{path} {problem}; regenerate it with `{writer_of(path.stem)}`{restore}.")


#: What a results file of another shape raises while it is read into a table or a plot.
SHAPE_ERRORS = (KeyError, IndexError, TypeError, AttributeError, ValueError, StopIteration,
                ZeroDivisionError)


def shape_problem(error: Exception) -> str:
    """What ``error``, raised while a results file was read, says about the file."""
    if isinstance(error, KeyError):
        return f"has no {error.args[0]!r} entry where it is read"
    return f"does not have the shape its readers expect ({type(error).__name__}: {error})"


def build_from(parser: argparse.ArgumentParser, results_dir: Path, name: str, build: Callable):
    """``build(payload)`` of results file ``name``; a file that is absent, cut short or of another
    shape ends the command line in one message naming it."""
    path = Path(results_dir) / f"{name}.json"
    try:
        payload = read_json(results_dir, name)
        if payload is None:
            parser.error(f"{path} does not exist; run `{writer_of(name)}` first.")
        return build(payload)
    except ResultsFileError as error:
        parser.error(str(error))
    except SHAPE_ERRORS as error:
        parser.error(str(results_file_error(path, shape_problem(error))))


_HIDDEN: contextvars.ContextVar = contextvars.ContextVar("hidden_results", default=frozenset())


@contextlib.contextmanager
def results_without(*names: str):
    """Inside the block :func:`read_json` answers None for these names, as if the files were absent."""
    token = _HIDDEN.set(_HIDDEN.get() | frozenset(names))
    try:
        yield
    finally:
        _HIDDEN.reset(token)


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
    save_figure(fig, path, dpi=110)
    return path


def save_figure(fig, path: Path, **kwargs) -> Path:
    """``fig.savefig`` through :func:`replacing`, then the figure is closed."""
    import matplotlib.pyplot as plt

    path = Path(path)
    try:
        with replacing(path, "wb") as file:
            fig.savefig(file, format=path.suffix.lstrip(".") or "png", **kwargs)
    finally:
        plt.close(fig)
    return path


# ----------------------------------------------------------------------------------------------
# writing files whole


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


#: Read once, before any thread starts: os.umask can only be read by setting it.
_UMASK = _umask()


@contextlib.contextmanager
def replacing(path: Path, mode: str = "w"):
    """A file whose content replaces ``path`` at the end of the block in one step (a temporary file
    beside it, fsync, ``os.replace``): a failure or a full disk midway leaves the old file as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    permissions = path.stat().st_mode & 0o7777 if path.exists() else 0o666 & ~_UMASK
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
    try:
        with os.fdopen(descriptor, mode) as file:
            yield file
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temporary, permissions)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    _sync_folder(path.parent)


def _sync_folder(folder: Path) -> None:
    """Make the rename itself durable; some file systems cannot sync a folder, which is harmless."""
    with contextlib.suppress(OSError):
        descriptor = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


def write_text(path: Path, text: str) -> Path:
    with replacing(path) as file:
        file.write(text)
    return Path(path)


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

    Children come from a fork server that imported torch, SpikingJelly and the benchmarks but never
    ran an operator: each configuration starts from the same small heap without paying the imports
    again, and the peak resident set measured in the child belongs to that configuration alone. The
    children keep glibc's malloc defaults, as a user's process does; a memory measure fixes the
    thresholds in its own child (:func:`benchmarks.memory_account.fix_malloc_thresholds`).
    (Forking the main process instead would deadlock once it has used OpenMP threads.)
    """
    global _FORKSERVER_READY
    context = multiprocessing.get_context("forkserver")
    if not _FORKSERVER_READY:
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


def region_bounds(text: str, start_marker: str, end_marker: str) -> Optional[tuple[int, int]]:
    """Where the generated region between the markers starts and ends; None without that region."""
    start, end = text.find(start_marker), text.find(end_marker)
    if start < 0 or end < start:
        return None
    return start + len(start_marker), end


def update_region(markdown: str, path: Path, start_marker: str, end_marker: str) -> bool:
    """Replace the text between two markers of ``path``; False (and a warning) if they are missing."""
    if not path.exists():
        print(f"warning: {path} does not exist; not updated.")
        return False
    text = path.read_text()
    bounds = region_bounds(text, start_marker, end_marker)
    if bounds is None:
        print(f"warning: {path} has no {start_marker} ... {end_marker} region; not updated.")
        return False
    write_text(path, text[:bounds[0]] + "\n" + markdown.strip() + "\n" + text[bounds[1]:])
    return True


def update_readme_table(markdown: str, readme_path: Path = README_PATH) -> bool:
    """Replace the text between the BENCHMARK-TABLE markers of the README; False if they are missing."""
    return update_region(markdown, readme_path, TABLE_START, TABLE_END)


# ----------------------------------------------------------------------------------------------
# command lines: every bad value ends in one message naming its flag, exit status 2


#: The largest count a flag takes: C's int, which PyTorch indexes shapes and loops with.
MAX_COUNT = 2**31 - 1
#: NumPy's legacy seeding, which the training runs use, takes 0 .. 2**32 - 1.
MAX_SEED = 2**32 - 1


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None


def _at_most(value: int, limit: int, name: str) -> int:
    if value > limit:
        raise argparse.ArgumentTypeError(f"{value} is too large (at most {name} = {limit})")
    return value


def positive_int(text: str) -> int:
    value = _integer(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be a positive integer (1 or more)")
    return _at_most(value, MAX_COUNT, "2**31 - 1")


def non_negative_int(text: str) -> int:
    value = _integer(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} must be 0 or more")
    return _at_most(value, MAX_COUNT, "2**31 - 1")


def seed(text: str) -> int:
    value = _integer(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} must be 0 or more")
    return _at_most(value, MAX_SEED, "2**32 - 1")


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (math.isfinite(value) and value > 0.0):
        raise argparse.ArgumentTypeError(f"{text} must be a finite number above 0")
    return value


def memopt_level(text: str) -> int:
    value = _integer(text)
    if not 0 <= value <= 4:
        raise argparse.ArgumentTypeError(f"{value}: memopt.optimize_memory's levels are 0 to 4")
    return value


def _list_of(item: Callable, what: str) -> Callable:
    """An argparse type: comma-separated values, each checked by ``item``, at least one."""

    def parse(text: str) -> list:
        parts = [part.strip() for part in text.split(",")]
        if not any(parts):
            raise argparse.ArgumentTypeError(f"{text!r} names no {what}; give comma-separated {what}s")
        if not all(parts):
            raise argparse.ArgumentTypeError(f"{text!r} has an empty {what} between commas")
        values = [item(part) for part in parts]
        if len(set(values)) < len(values):
            raise argparse.ArgumentTypeError(f"{text!r} names a {what} twice")
        return values

    return parse


positive_int_list = _list_of(positive_int, "positive integer")
non_negative_int_list = _list_of(non_negative_int, "non-negative integer")
seed_list = _list_of(seed, "seed")


def file_stem(text: str) -> str:
    """A name that becomes a file name in the results folder: nothing that could lead out of it."""
    if not text or text in (".", "..") or text.startswith(".") or any(c in text for c in "/\\\0"):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a file name (no path separators, no leading '.')")
    if len(os.fsencode(text)) > 200:
        raise argparse.ArgumentTypeError(f"{text[:40]!r}... is too long for a file name")
    return text


def device_name(text: str) -> str:
    """``cpu``, ``cuda`` or ``cuda:i`` with i below the number of CUDA devices (normalised)."""
    try:
        parsed = torch.device(text)
    except (RuntimeError, ValueError, TypeError):
        parsed = None
    if parsed is not None and parsed.type == "cpu":
        return "cpu"
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if parsed is not None and parsed.type == "cuda" and count and (parsed.index or 0) < count:
        return str(parsed)
    accepted = "cpu" + (f", cuda, cuda:0 .. cuda:{count - 1}" if count else
                        " (no CUDA device is available here)")
    raise argparse.ArgumentTypeError(f"{text!r} is not a device this machine has; accepted: {accepted}")


def choose(parser: argparse.ArgumentParser, flag: str, text: str, choices, hint: str = "") -> list[str]:
    """The comma-separated names of ``text``, each one of ``choices``; at least one."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        parser.error(f"{flag} {text!r}: name at least one of {','.join(choices)}{hint}.")
    unknown = [name for name in names if name not in choices]
    if unknown:
        parser.error(f"{flag}: unknown {unknown}; choose from {','.join(choices)}{hint}.")
    return list(dict.fromkeys(names))


def _write_probe(folder: Path) -> Optional[str]:
    """Why a file cannot be created in ``folder`` (None: it can); the probe file is removed."""
    try:
        descriptor, probe = tempfile.mkstemp(dir=folder, prefix=".write-check-")
    except OSError as error:
        return f"cannot create files in {folder} ({error.strerror or error})"
    os.close(descriptor)
    os.unlink(probe)
    return None


def folder_problem(path: Path) -> Optional[str]:
    """Why results cannot be written under ``path`` (None: they can); creates nothing there."""
    try:
        existing = Path(path)
        while not existing.exists():
            existing = existing.parent
    except OSError as error:
        return f"cannot be used as a folder ({error.strerror or error})"
    if not existing.is_dir():
        return ("is a file, not a folder" if existing == Path(path) else
                f"cannot be created: {existing} is a file, not a folder")
    return _write_probe(existing)


def page_problem(path: Path, start_marker: str, end_marker: str) -> Optional[str]:
    """Why the generated region of page ``path`` cannot be rewritten (None: it can)."""
    try:
        if not path.is_file():
            return "does not exist" if not path.exists() else "is not a file"
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as error:
        return f"cannot be read ({getattr(error, 'strerror', None) or error})"
    if region_bounds(text, start_marker, end_marker) is None:
        return "has no generated region"
    if not os.access(path, os.W_OK):
        return "is not writable"
    return _write_probe(path.parent)


def results_dir_arg(parser: argparse.ArgumentParser, given: Optional[Path], quick: bool = False) -> Path:
    """``--results-dir`` checked; not given: the committed folder, or for ``--quick`` (whose results
    are not meaningful) a fresh temporary one, so that a smoke run never replaces committed results."""
    if given is None and quick:
        folder = Path(tempfile.mkdtemp(prefix="benchmarks-quick-"))
        print(f"--quick: results go to {folder} (give --results-dir to choose the folder)", flush=True)
        return folder
    folder = RESULTS_DIR if given is None else Path(given)
    problem = folder_problem(folder)
    if problem:
        parser.error(f"--results-dir {folder}: {problem}; name a folder you can write to.")
    return folder


def uses_committed_results(given: Optional[Path], quick: bool = False) -> bool:
    """Whether a run writes the committed results: only then are the committed pages (README, docs)
    regenerated by default, never from a smoke run or another folder."""
    if given is None:
        return not quick
    return Path(given).resolve() == RESULTS_DIR


def page_arg(parser: argparse.ArgumentParser, flag: str, given: Optional[str], default: Path,
             committed: bool, start_marker: str, end_marker: str, remedy: str = "") -> Optional[Path]:
    """The page whose region a run regenerates, checked before anything runs; None for none:
    ``''`` given, or not given while the run does not write the committed results. ``remedy``
    (``{region}`` stands for the markers) replaces the advice to name another page."""
    if given is None:
        if not committed:
            hint = f" (name a page with {flag})" if flag.startswith("--") else ""
            print(f"{default} is left alone: its tables come from the committed results only{hint}",
                  flush=True)
            return None
        given = str(default)
    if not given:
        return None
    page = Path(given)
    problem = page_problem(page, start_marker, end_marker)
    if problem:
        region = f"{start_marker} ... {end_marker}"
        advice = (remedy.format(region=region) if remedy else
                  f"name a page with the {region} region, or pass {flag} '' to leave it alone")
        parser.error(f"{flag} {page}: {problem}; {advice}.")
    return page


def suite_main(run: Callable, description: str, argv=None) -> int:
    """The command line shared by every ``python -m benchmarks.bench_*`` suite."""
    parser = argparse.ArgumentParser(description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="tiny settings for a smoke run (not meaningful; results go to a fresh "
                             "temporary folder unless --results-dir names one)")
    parser.add_argument("--results-dir", type=Path, default=None,
                        help=f"where the JSON and plots go (default: {RESULTS_DIR})")
    args = parser.parse_args(argv)
    run(results_dir_arg(parser, args.results_dir, args.quick), args.quick)
    return 0
