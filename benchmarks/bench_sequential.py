r"""Sequential Fashion-MNIST with a recurrent SNN: SAF-E and SAF-F against BPTT, BPTT+memopt and OTTT.

Each image is read row by row: T=28 steps of 28 pixels (``--pixels 14``: T=56 steps of half rows).
The network is input -> Linear -> LIF -> ``LinearRecurrentContainer`` (a LIF layer whose own spikes
of the previous step come back through the recurrent linear map) -> Linear readout, with OTTT's
neuron setting (tau=2, V_th=1, soft reset, sigmoid surrogate alpha=4, decay_input=False).

Methods (one optimizer step per minibatch for every method, Adam):

* ``saf-e-acc``: the SAF network (``to_saf``: the container becomes ``SAFLinearRecurrentContainer``),
  a loss at every step on the recovered output o[t], gradients summed (single-step mode, so the
  graph of one step is alive at a time);
* ``saf-f``: one loss on the weighted-average output Obar[T], steps < T without a graph;
* ``ottt-a``: OTTT with the recurrence, written out here (SpikingJelly's ``OTTTSequential`` takes no
  feedback): at each step a backward through that step only, every weight's gradient the error at
  its output times the eligibility trace of its input (the delayed spikes' trace at t-1 for the
  recurrent weights), summed over the steps;
* ``bptt``: the LIF network in multi-step mode, one loss on the mean output over T;
* ``bptt+memopt``: the same with SpikingJelly 2.0's ``memopt.optimize_memory`` (level 1:
  checkpointing of the neuron-terminated blocks, spike compression).

Accuracy on the full 10,000-image test set with the same readout for every method, the mean
output over T (for SAF, the mean of the recovered outputs o[t]); for SAF also its own readout
Obar[T], the weighted average. The SAF models are deployed with ``to_lif`` and evaluated as plain
LIF networks with both readouts. Training memory: each run is a fresh Python process started with
``MALLOC_MMAP_THRESHOLD_=16384 MALLOC_TRIM_THRESHOLD_=0`` (glibc returns freed blocks at once), one
thread; after one warm-up minibatch the peak resident set is reset (``/proc/self/clear_refs``) and
the memory reported is the increase of the peak over the resident set before the next minibatches
(activations, graph and temporaries; parameters, gradients and optimizer state, allocated in the
warm-up, are reported apart, exactly). Time: the median wall-clock seconds of a training minibatch.
The machine is a shared CPU: times are indicative.

``python -m benchmarks.bench_sequential`` runs the committed configuration (a subset of the training
set for one epoch, stated in the output) and writes ``results/sequential.json``, ``sequential.png``
and the README table text (``results/sequential_table.md``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from spikingjelly.activation_based import functional, layer, neuron, surrogate

if __package__ in (None, ""):  # run as a script: make the benchmarks package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import benchmarks  # noqa: F401  (puts examples/ on sys.path)
from benchmarks import common
from saf_examples.idx import IdxDataMissing, IdxFormatError, load_mnist_family

from spikingjelly_saf import InputAverage, saf_online_training, to_lif, to_saf
from spikingjelly_saf import functional as saf_functional

RESULTS_DIR = Path(__file__).resolve().parent / "results"
NAME = "sequential"
METHODS = ("saf-e-acc", "saf-f", "ottt-a", "bptt", "bptt+memopt")
SAF_METHODS = ("saf-e-acc", "saf-f")
TAU, V_TH, ALPHA = 2.0, 1.0, 4.0
CLASSES = 10
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "16384", "MALLOC_TRIM_THRESHOLD_": "0"}
#: The committed run: (pixels per step, T) settings, seeds, training subset, minibatch, learning rate.
DEFAULTS = dict(pixels=(28, 14), seeds=(0, 1, 2), train_subset=10000, batch=128, hidden=128,
                lr=0.01, epochs=1, timed=8)


# ----------------------------------------------------------------------------------------------
# data


def load_split(train: bool, root: Optional[str], subset: Optional[int], seed: int):
    """Images as ``[N, 28, 28]`` floats in [0, 1] and labels; a seeded random subset if asked."""
    images, labels = load_mnist_family("fashion_mnist", root, train=train)
    if subset is not None and subset < images.shape[0]:
        index = torch.randperm(images.shape[0], generator=torch.Generator().manual_seed(seed))[:subset]
        images, labels = images[index], labels[index]
    return images.float() / 255.0, labels


def as_sequence(images: torch.Tensor, pixels: int) -> torch.Tensor:
    """``[B, 28, 28]`` -> ``[B, T, pixels]``: rows in order, each split into ``28 // pixels`` parts."""
    return images.reshape(images.shape[0], -1, pixels)


# ----------------------------------------------------------------------------------------------
# models


def lif_neuron(step_mode: str = "s") -> neuron.LIFNode:
    return neuron.LIFNode(tau=TAU, decay_input=False, v_threshold=V_TH, v_reset=None,
                          surrogate_function=surrogate.Sigmoid(alpha=ALPHA), detach_reset=True,
                          step_mode=step_mode)


class Block(nn.Sequential):
    """The input layer and its neuron: a unit memopt checkpoints."""


def lif_network(pixels: int, hidden: int, step_mode: str) -> nn.Sequential:
    """Input -> Linear -> LIF -> recurrent LIF (SpikingJelly's ``LinearRecurrentContainer``) -> readout."""
    return nn.Sequential(
        Block(layer.Linear(pixels, hidden, step_mode=step_mode), lif_neuron(step_mode)),
        layer.LinearRecurrentContainer(lif_neuron("s"), hidden, hidden, bias=True, step_mode=step_mode),
        layer.Linear(hidden, CLASSES, step_mode=step_mode))


def initialise(net: nn.Module, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    fresh = lif_network(net[0][0].in_features, net[0][0].out_features, "s")
    net.load_state_dict(fresh.state_dict())
    return net


def saf_network(pixels: int, hidden: int, seed: int) -> nn.Module:
    """``to_saf`` of the LIF network, single-step, behind an ``InputAverage`` (the rows change over
    time). Both SAF methods keep the sigmoid surrogate (spike level)."""
    saf = to_saf(initialise(lif_network(pixels, hidden, "s"), seed))
    return nn.Sequential(InputAverage(TAU), saf)


# ---- OTTT with the recurrence, written out -----------------------------------------------------
def _traced_linear(value: torch.Tensor, trace: torch.Tensor, linear: nn.Linear) -> torch.Tensor:
    """``W value + b`` whose weight gradient is taken with ``trace`` instead of ``value``."""
    out = F.linear(value, linear.weight.detach())
    path = F.linear(trace, linear.weight)
    return out + (path - path.detach()) + linear.bias


class _OTTTNeuron:
    """OTTT's LIF step: the previous membrane detached; keeps its trace and last spikes."""

    def __init__(self, surrogate_function):
        self.decay, self.surrogate_function = saf_functional.decay_factor(TAU), surrogate_function
        self.v, self.trace, self.spikes = 0.0, 0.0, None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        h = self.decay * self.v + x
        spike = self.surrogate_function(h - V_TH)
        self.v = (h - V_TH * spike).detach()
        self.trace = self.decay * self.trace + spike.detach()
        self.spikes = spike.detach()
        return spike


class OTTTRecurrent:
    """OTTT for :func:`lif_network`'s weights (the LIF network's own parameters), step by step.

    The first layer's weight gets the instantaneous input (SpikingJelly's OTTT convention for a
    layer fed by the data); every other weight the trace of its input; the recurrent weight the
    trace of the delayed spikes, that is the recurrent neuron's trace at t-1 (as OTTT's VGG-F feeds
    its feedback convolution).
    """

    def __init__(self, net: nn.Sequential):
        self.net = net
        self.neurons = (_OTTTNeuron(net[0][1].surrogate_function),
                        _OTTTNeuron(net[1].sub_module.surrogate_function))

    def step(self, x: torch.Tensor) -> torch.Tensor:
        first, recurrent = self.neurons
        s0 = first(_traced_linear(x, x, self.net[0][0]))
        if recurrent.spikes is None:
            delayed, delayed_trace = torch.zeros_like(s0), torch.zeros_like(s0)
        else:
            delayed, delayed_trace = recurrent.spikes, recurrent.trace
        s1 = recurrent(_traced_linear(torch.cat((s0, delayed), -1),
                                      torch.cat((first.trace, delayed_trace), -1), self.net[1].rc))
        return _traced_linear(s1, recurrent.trace, self.net[2])


def ottt_minibatch(net: nn.Sequential, optimizer, x_seq: torch.Tensor, target: torch.Tensor) -> float:
    """OTTT_A: a loss and a backward at every step, one optimizer step with the summed gradients."""
    optimizer.zero_grad()
    reference, total = OTTTRecurrent(net), 0.0
    for x in x_seq.transpose(0, 1):
        loss = F.cross_entropy(reference.step(x), target)
        loss.backward()
        total += float(loss.detach())
    optimizer.step()
    return total


def ottt_scores(net: nn.Sequential, x_seq: torch.Tensor) -> torch.Tensor:
    reference = OTTTRecurrent(net)
    with torch.no_grad():
        return torch.stack([reference.step(x) for x in x_seq.transpose(0, 1)]).mean(0)


# ----------------------------------------------------------------------------------------------
# one run (in its own process)


def build(method: str, pixels: int, hidden: int, seed: int, example: torch.Tensor) -> nn.Module:
    if method in SAF_METHODS:
        return saf_network(pixels, hidden, seed)
    if method == "ottt-a":
        return initialise(lif_network(pixels, hidden, "s"), seed)
    net = initialise(lif_network(pixels, hidden, "m"), seed)
    if method == "bptt+memopt":
        from spikingjelly.activation_based import memopt

        with torch.random.fork_rng(devices=[]):
            memopt.optimize_memory(net, (Block, layer.LinearRecurrentContainer),
                                   lambda current: current(example.transpose(0, 1)), level=1,
                                   compress=True)
        functional.reset_net(net)
    return net


def train_minibatch(method: str, net: nn.Module, optimizer, x_seq: torch.Tensor, target: torch.Tensor):
    functional.reset_net(net)
    if method in SAF_METHODS:
        loss, _ = saf_online_training(net, optimizer, x_seq, target, F.cross_entropy, method=method)
        loss = float(loss)
    elif method == "ottt-a":
        loss = ottt_minibatch(net, optimizer, x_seq, target)
    else:
        optimizer.zero_grad()
        out = net(x_seq.transpose(0, 1)).mean(0)
        loss_tensor = F.cross_entropy(out, target)
        loss_tensor.backward()
        optimizer.step()
        loss = float(loss_tensor.detach())
    functional.reset_net(net)
    return loss


def scores(method: str, net: nn.Module, x_seq: torch.Tensor, readout: str = "mean") -> torch.Tensor:
    """Prediction scores. ``readout="mean"``: the mean output over T, OTTT's and BPTT's readout (for
    SAF, the mean of the recovered outputs o[t], which are the LIF network's outputs);
    ``readout="own"``: SAF's Obar[T], the weighted average that SAF-F trains."""
    functional.reset_net(net)
    with torch.no_grad():
        if method in SAF_METHODS:
            averages = torch.stack([net(x) for x in x_seq.transpose(0, 1)])
            out = averages[-1] if readout == "own" else saf_functional.recover_instantaneous_seq(
                averages, saf_functional.decay_factor(TAU)).mean(0)
        elif method == "ottt-a":
            out = ottt_scores(net, x_seq)
        else:
            out = net(x_seq.transpose(0, 1)).mean(0)
    functional.reset_net(net)
    return out


def lif_scores(lif: nn.Module, x_seq: torch.Tensor, readout: str = "mean") -> torch.Tensor:
    """The deployed LIF network's scores: its mean output over T, or (``"own"``) the weighted
    average of its outputs, which equals the SAF model's Obar[T]."""
    functional.reset_net(lif)
    with torch.no_grad():
        outputs = torch.stack([lif(x) for x in x_seq.transpose(0, 1)])
    functional.reset_net(lif)
    if readout == "own":
        return saf_functional.weighted_average(outputs, saf_functional.decay_factor(TAU))
    return outputs.mean(0)


def accuracy(score_fn, images: torch.Tensor, labels: torch.Tensor, pixels: int, batch: int = 1000) -> float:
    correct = 0
    for start in range(0, images.shape[0], batch):
        x_seq = as_sequence(images[start:start + batch], pixels)
        correct += int((score_fn(x_seq).argmax(1) == labels[start:start + batch]).sum())
    return correct / images.shape[0]


def _resident_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _state_bytes(net: nn.Module, optimizer) -> int:
    tensors = [p for p in net.parameters()] + [p.grad for p in net.parameters() if p.grad is not None]
    for state in optimizer.state.values():
        tensors += [v for v in state.values() if isinstance(v, torch.Tensor)]
    return sum(t.numel() * t.element_size() for t in tensors)


def run_one(config: dict) -> dict:
    """Train one method on one setting and seed; evaluate; measure. Runs in its own process."""
    torch.set_num_threads(1)
    method, pixels, seed = config["method"], config["pixels"], config["seed"]
    train_images, train_labels = load_split(True, config.get("root"), config["train_subset"], seed=1234)
    test_images, test_labels = load_split(False, config.get("root"), config.get("test_subset"), seed=1234)
    order = torch.randperm(train_images.shape[0], generator=torch.Generator().manual_seed(seed))
    batches = [order[i:i + config["batch"]] for i in range(0, len(order), config["batch"])]
    batches = [b for b in batches if len(b) == config["batch"]] * config["epochs"]
    example = as_sequence(train_images[batches[0]], pixels)
    net = build(method, pixels, config["hidden"], seed, example)
    optimizer = torch.optim.Adam(net.parameters(), lr=config["lr"])
    times, peaks, losses = [], [], []
    for index, batch in enumerate(batches):
        x_seq, target = as_sequence(train_images[batch], pixels), train_labels[batch]
        measured = 1 <= index <= config["timed"]  # the first minibatch warms up (optimizer state)
        if measured:
            baseline = _resident_kib("VmRSS")
            peak_reset = _reset_peak()
        start = time.perf_counter()
        losses.append(train_minibatch(method, net, optimizer, x_seq, target))
        if measured:
            times.append(time.perf_counter() - start)
            if peak_reset:
                peaks.append(_resident_kib("VmHWM") - baseline)
    result = {
        "method": method, "pixels": pixels, "T": 28 * 28 // pixels, "seed": seed,
        "minibatches": len(batches), "train_images": len(batches) * config["batch"],
        "final_loss": statistics.fmean(losses[-10:]),
        "seconds_per_minibatch": statistics.median(times) if times else None,
        "memory_kib": max(peaks) if peaks else None,
        "memory_kib_per_minibatch": peaks,
        "state_bytes": _state_bytes(net, optimizer),
    }
    net.eval()
    result["accuracy"] = accuracy(lambda x: scores(method, net, x), test_images, test_labels, pixels)
    if method in SAF_METHODS:
        result["accuracy_own_readout"] = accuracy(lambda x: scores(method, net, x, "own"), test_images,
                                                  test_labels, pixels)
        lif = to_lif(net)
        result["lif_accuracy"] = accuracy(lambda x: lif_scores(lif, x), test_images, test_labels, pixels)
        result["lif_accuracy_own_readout"] = accuracy(lambda x: lif_scores(lif, x, "own"), test_images,
                                                      test_labels, pixels)
    return result


def run_in_child(config: dict, timeout: float = 900.0) -> dict:
    """:func:`run_one` in a fresh interpreter with glibc's allocator told to return memory at once."""
    env = dict(os.environ, **MALLOC_ENV, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[1]),
                                                      env.get("PYTHONPATH")]))
    completed = subprocess.run([sys.executable, "-m", "benchmarks.bench_sequential", "--child",
                                json.dumps(config)], env=env, capture_output=True, text=True,
                               timeout=timeout)
    if completed.returncode != 0:
        return {**config, "error": completed.stderr.strip().splitlines()[-1:] or ["failed"]}
    return json.loads(completed.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------------------------
# summary, plot, table


def summarise(runs: list[dict]) -> dict:
    """Per method and T: mean and sample standard deviation over seeds of every number."""
    summary = {}
    for run in runs:
        if "error" in run:
            continue
        entry = summary.setdefault(run["method"], {}).setdefault(str(run["T"]), {"runs": []})
        entry["runs"].append(run)
    for method in summary.values():
        for entry in method.values():
            for key in ("accuracy", "accuracy_own_readout", "lif_accuracy", "lif_accuracy_own_readout",
                        "seconds_per_minibatch", "memory_kib"):
                values = [r[key] for r in entry["runs"] if r.get(key) is not None]
                if values:
                    entry[key] = {"mean": statistics.fmean(values),
                                  "std": statistics.stdev(values) if len(values) > 1 else 0.0,
                                  "n": len(values)}
            entry["state_bytes"] = entry["runs"][0]["state_bytes"]
            del entry["runs"]
    return summary


def fmt_accuracy(stats: Optional[dict]) -> str:
    return "" if not stats else f"{100 * stats['mean']:.2f} ± {100 * stats['std']:.2f} %"


def fmt_memory(stats: Optional[dict]) -> str:
    return "" if not stats else f"{stats['mean'] / 1024:.1f} MiB"


def fmt_time(stats: Optional[dict]) -> str:
    return "" if not stats else f"{stats['mean']:.3f}"


def table(payload: dict) -> str:
    """The README table: per method, accuracy at each T (the mean readout for every method), SAF's
    own readout Obar[T] and the deployed LIF network at T=28, then memory and time at each T."""
    summary, steps = payload["summary"], [str(t) for t in payload["steps"]]
    header = ("| method | " + " | ".join(f"accuracy T={t}" for t in steps)
              + f" | Obar[T] readout T={steps[0]} | to_lif T={steps[0]} | "
              + " | ".join(f"memory T={t}" for t in steps) + " | "
              + " | ".join(f"s/minibatch T={t}" for t in steps) + " |")
    lines = [header, "|" + "---|" * (3 + 3 * len(steps))]
    for method in METHODS:
        entries = summary.get(method, {})
        first = entries.get(steps[0], {})
        cells = [method] + [fmt_accuracy(entries.get(t, {}).get("accuracy")) for t in steps]
        cells += [fmt_accuracy(first.get("accuracy_own_readout")), fmt_accuracy(first.get("lif_accuracy"))]
        cells += [fmt_memory(entries.get(t, {}).get("memory_kib")) for t in steps]
        cells += [fmt_time(entries.get(t, {}).get("seconds_per_minibatch")) for t in steps]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


COLOURS = {"saf-e-acc": "tab:blue", "saf-f": "tab:orange", "ottt-a": "tab:green", "bptt": "tab:red",
           "bptt+memopt": "tab:purple", "saf-f, Obar[T] readout": "tab:brown"}


def plot(payload: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary, steps = payload["summary"], payload["steps"]
    panels = (("accuracy", "test accuracy (%), mean readout unless named", 100.0), ("memory_kib", "training memory (MiB)", 1 / 1024),
              ("seconds_per_minibatch", "time per minibatch (s)", 1.0))
    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    for ax, (key, label, scale) in zip(axes, panels):
        # SAF-F trains Obar[T]: its own readout is drawn too (dashed), the sixth line of the panel.
        lines = [(method, key, method, "-") for method in METHODS]
        if key == "accuracy":
            lines.append(("saf-f", "accuracy_own_readout", "saf-f, Obar[T] readout", "--"))
        for method, field, name, style in lines:
            points = [(t, summary[method][str(t)][field]) for t in steps
                      if field in summary.get(method, {}).get(str(t), {})]
            if points:
                ax.errorbar([t for t, _ in points], [s["mean"] * scale for _, s in points],
                            yerr=[s["std"] * scale for _, s in points], marker="o", capsize=3,
                            label=name, color=COLOURS[name], linestyle=style)
        ax.set_xlabel("time steps T")
        ax.set_ylabel(label)
        ax.set_xticks(steps)
        if key != "accuracy":
            ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
    axes[0].legend(fontsize=8)
    config = payload["config"]
    fig.suptitle(f"Sequential Fashion-MNIST, recurrent SNN (hidden {config['hidden']}): "
                 f"{config['train_subset']} training images, {config['epochs']} epoch, "
                 f"{len(config['seeds'])} seeds, full test set (bptt and bptt+memopt: identical "
                 "accuracy)", fontsize=10)
    fig.tight_layout()
    return common.save_figure(fig, path, dpi=110)


def metadata(command: str) -> dict:
    import datetime
    import platform
    from importlib.metadata import version

    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return {"date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": platform.node(), "platform": platform.platform(), "cpu_model": cpu,
            "cpu_count": os.cpu_count(), "threads_per_run": 1, "python": platform.python_version(),
            "torch": torch.__version__,
            "spikingjelly": version("spikingjelly"), "command": command}


def run_all(config: dict, results_dir: Path, name: str = NAME, command: str = "",
            runner=run_in_child) -> dict:
    """Every (setting, seed, method), each through ``runner`` (a fresh process by default); writes
    ``<name>.json``, ``<name>.png`` and ``<name>_table.md`` under ``results_dir``."""
    runs = []
    for pixels in config["pixels"]:
        for seed in config["seeds"]:
            for method in config["methods"]:
                run = runner({**config, "method": method, "pixels": pixels, "seed": seed})
                print(json.dumps({k: v for k, v in run.items() if k != "memory_kib_per_minibatch"}),
                      flush=True)
                runs.append(run)
    payload = {"metadata": metadata(command), "config": config,
               "steps": [28 * 28 // p for p in config["pixels"]],
               "note": (f"{config['train_subset']} of the 60,000 training images (a seeded random "
                        f"subset), {config['epochs']} epoch, minibatch {config['batch']}, Adam lr "
                        f"{config['lr']}; the full 10,000-image test set; memory and time over "
                        f"minibatches 2..{config['timed'] + 1} of each run."),
               "runs": runs}
    payload["summary"] = summarise(runs)
    common.write_text(results_dir / f"{name}.json", json.dumps(payload, indent=1) + "\n")
    replot(payload, results_dir, name)
    return payload


def pixels_per_step(text: str) -> int:
    value = common.positive_int(text)
    if 28 % value:
        raise argparse.ArgumentTypeError(f"{value} does not divide 28 (a row of 28 pixels per step, "
                                         "or a part of one: 28, 14, 7, 4, 2, 1)")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--replot", action="store_true",
                        help="redraw the plot and the table from the existing JSON, without running")
    parser.add_argument("--root", default=None, help="folder of the Fashion-MNIST idx files")
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument("--name", type=common.file_stem, default=NAME, help="results file name stem")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--pixels", nargs="+", type=pixels_per_step, default=list(DEFAULTS["pixels"]),
                        help="pixels per step (28: T=28, 14: T=56)")
    parser.add_argument("--seeds", nargs="+", type=common.seed, default=list(DEFAULTS["seeds"]))
    parser.add_argument("--train-subset", type=common.positive_int, default=DEFAULTS["train_subset"])
    parser.add_argument("--test-subset", type=common.positive_int, default=None)
    parser.add_argument("--batch", type=common.positive_int, default=DEFAULTS["batch"])
    parser.add_argument("--hidden", type=common.positive_int, default=DEFAULTS["hidden"])
    parser.add_argument("--lr", type=common.positive_float, default=DEFAULTS["lr"])
    parser.add_argument("--epochs", type=common.positive_int, default=DEFAULTS["epochs"])
    parser.add_argument("--timed", type=common.positive_int, default=DEFAULTS["timed"],
                        help="minibatches measured for time and memory (after one warm-up)")
    return parser


def replot(payload: dict, results_dir: Path, name: str) -> None:
    plot(payload, results_dir / f"{name}.png")
    common.write_text(results_dir / f"{name}_table.md", table(payload) + "\n")


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.child is not None:
        print(json.dumps(run_one(json.loads(args.child))))
        return 0
    results_dir = common.results_dir_arg(parser, args.results_dir)
    if args.replot:
        common.build_from(parser, results_dir, args.name,
                          lambda payload: replot(payload, results_dir, args.name))
        return 0
    if args.train_subset < args.batch:
        parser.error(f"--train-subset {args.train_subset} is smaller than --batch {args.batch}: not one "
                     "full minibatch to train on.")
    try:
        load_mnist_family("fashion_mnist", args.root, train=False)
    except (IdxDataMissing, IdxFormatError) as error:
        parser.error(f"--root: {error}")
    config = {"methods": args.methods, "pixels": args.pixels, "seeds": args.seeds,
              "train_subset": args.train_subset, "test_subset": args.test_subset,
              "batch": args.batch, "hidden": args.hidden, "lr": args.lr, "epochs": args.epochs,
              "timed": args.timed, "root": args.root}
    command = "python -m benchmarks.bench_sequential " + " ".join(argv if argv is not None else sys.argv[1:])
    run_all(config, results_dir, args.name, command.strip())
    return 0


if __name__ == "__main__":
    main()
