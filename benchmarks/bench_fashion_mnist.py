"""Full Fashion-MNIST: SAF-E, SAF-E-acc, SAF-F (with the paper's sigmoid surrogate and, as
``saf-f-rep``, with SpikeRepresentation) against OTTT_O, OTTT_A, BPTT, BPTT with SpikingJelly's
``memopt.optimize_memory`` and SLTT, all on one network with the same settings, trained, evaluated
and deployed to LIF through the examples' engine (``saf_examples.engine``).

    # every method, 3 seeds, 3 full epochs, T=6, C=16 (the defaults): this repository's
    # fashion_mnist_T6.json, about 2 hours on 2 cores (one thread per run)
    python -m benchmarks.bench_fashion_mnist --workers 2 --tag fashion_mnist_T6
    python -m benchmarks.bench_fashion_mnist --replot --tag fashion_mnist_T6   # summary, plot, tables
    python -m benchmarks.bench_fashion_mnist --device cuda --channels 128 --epochs 64 --threads 0

Every test point reads each method's default prediction, the firing rate of its output (for SAF
the mean of the recovered output, which the ``to_lif`` twin gives read as ``out_seq.mean(0)``), and
SAF's Obar[T] (``weighted``) as a second readout; SAF models are deployed with ``to_lif`` and the
differing predictions counted. Earlier results (``fashion_mnist_1epoch.json``, ``fashion_mnist.json``,
C=8, T=4, SAF read from Obar[T]) came from an earlier version of this script.

The network is the CSNN of SpikingJelly's ``examples/conv_fashion_mnist.py``
(conv3x3(1->C)-BN-neuron-pool, conv3x3(C->C)-BN-neuron-pool, flatten, linear(C*7*7 -> C*4*4)-neuron,
linear(C*4*4 -> 10)-neuron, no biases) with average pooling in place of max pooling: max pooling of
SAF's weighted averages is not the average of max-pooled spikes, so only average pooling keeps the
SAF network equal to its LIF twin (``spikingjelly_saf.check_exactness``). Every method uses the
same neuron (soft-reset LIF, tau=2, V_th=1, detach_reset: the OTTT setting), T=6 steps of direct
input, the example's loss (MSE between the output spikes' readout and the one-hot label), one
optimizer and cosine schedule, the same data order and the same seeds. BatchNorm runs in train
mode (batch statistics, the way the example trains) for every method.

Each (method, seed) trains in a fresh process; runs are interleaved round-robin (seed 0 of every
method, then seed 1, ...) so that load from other jobs on a shared machine spreads over all
methods. Results go to ``benchmarks/results/<tag>.json`` (rewritten after every run, so an
interrupted run keeps what finished) and ``<tag>_accuracy.png``.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import copy
import functools
import itertools
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from spikingjelly.activation_based import functional, layer

from spikingjelly_saf.functional import decay_factor
from saf_examples import engine
from saf_examples.measure import max_rss_bytes, warm_up_runtime
from saf_examples.methods import get_method, saf_weighted_readout, weighted_average_readout

from . import common

METHODS = ("saf-e", "saf-e-acc", "saf-f", "saf-f-rep", "ottt-o", "ottt-a", "bptt", "bptt+memopt", "sltt")
#: Exact gradients (BPTT) of SAF-F's objective and of OTTT's: with SAF-F, OTTT_A and BPTT they
#: separate what an objective costs from what an online gradient costs (run by name only).
DIAGNOSTIC_METHODS = ("bptt-final", "bptt-every-step")
#: The variant built on top of a method of :mod:`saf_examples.methods`.
MEMOPT_SUFFIX = "+memopt"
NUM_CLASSES = 10


# ----------------------------------------------------------------------------------------------
# network


class CSNNBlock(nn.Sequential):
    """The unit that ``memopt.optimize_memory`` checkpoints: the layers from one neuron's output to
    the next neuron (inclusive), so that every block after the first receives binary spikes and its
    saved input can be bit-compressed."""


def csnn_blocks(neuron_factory, neuron_kwargs: dict, channels: int, pool: str = "avg") -> list:
    """The example's CSNN as four lists of layers, each ending with a neuron."""
    if pool not in ("avg", "max"):
        raise ValueError(f"pool={pool!r}: use 'avg' (exact for SAF) or 'max' (the example's).")

    def make_pool():
        return layer.AvgPool2d(2, 2) if pool == "avg" else layer.MaxPool2d(2, 2)

    def make_neuron():
        return neuron_factory(**copy.deepcopy(neuron_kwargs))

    c = channels
    return [
        [layer.Conv2d(1, c, 3, padding=1, bias=False), layer.BatchNorm2d(c), make_neuron()],
        [make_pool(), layer.Conv2d(c, c, 3, padding=1, bias=False), layer.BatchNorm2d(c), make_neuron()],
        [make_pool(), layer.Flatten(), layer.Linear(c * 7 * 7, c * 4 * 4, bias=False), make_neuron()],
        [layer.Linear(c * 4 * 4, NUM_CLASSES, bias=False), make_neuron()],
    ]


def base_method_name(name: str) -> str:
    return name[:-len(MEMOPT_SUFFIX)] if name.endswith(MEMOPT_SUFFIX) else name


def build_csnn(name: str, channels: int = 16, tau: float = 2.0, pool: str = "avg"):
    """``(model, method)`` for a benchmark method name (``'bptt+memopt'`` included).

    Layers are created in the same order for every method, so one seed gives every method the same
    initial weights. The plain model is one flat ``OTTTSequential`` (OTTT needs it; the other
    methods run it like ``nn.Sequential``); ``+memopt`` groups the same layers into
    :class:`CSNNBlock` units for :func:`apply_memopt`.
    """
    method = get_method(base_method_name(name))
    # The OTTT setting's sigmoid surrogate for every method; saf-f-rep gets SpikeRepresentation.
    kwargs = common.neuron_kwargs(method, tau)
    blocks = csnn_blocks(method.neuron_type, kwargs, channels, pool)
    if name.endswith(MEMOPT_SUFFIX):
        model = nn.Sequential(*[CSNNBlock(*block) for block in blocks])
    else:
        model = layer.OTTTSequential(*[m for block in blocks for m in block])
    method.prepare(model)
    return model, method


def apply_memopt(model: nn.Module, example_x_seq: torch.Tensor, level: int = 1) -> nn.Module:
    """SpikingJelly 2.0's ``memopt.optimize_memory`` on the :class:`CSNNBlock` units.

    ``example_x_seq`` ``[T, B, 1, 28, 28]`` must be real data: memopt compresses a block's saved
    input when the probe finds it binary, which an all-zero example would wrongly claim of the
    image. Level 1 (selective checkpointing with spike compression) runs anywhere; levels 2-4 search
    by measuring CUDA memory.
    """
    from spikingjelly.activation_based import memopt

    memopt.optimize_memory(model, CSNNBlock, lambda current: current(example_x_seq), level=level,
                           compress=True)
    functional.reset_net(model)
    return model


def set_training(model: nn.Module, batchnorm: str = "train") -> nn.Module:
    """Training mode; with ``batchnorm='frozen'`` every BatchNorm stays in eval mode.

    Frozen BatchNorm keeps its initial running statistics (mean 0, variance 1) and learns only its
    affine weight and bias: a fixed affine map between neurons, which keeps SAF exactly equal to the
    LIF network during training too (train-mode batch statistics of SAF's weighted averages differ
    from those of LIF spikes, and change from step to step).
    """
    model.train()
    if batchnorm == "frozen":
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()
    return model


def mse_one_hot(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The example's loss: MSE between the output readout and the one-hot label."""
    return F.mse_loss(output, F.one_hot(target, NUM_CLASSES).to(output.dtype))


# ----------------------------------------------------------------------------------------------
# data


def load_data(root, train_subset: int = 0, test_subset: int = 0):
    """Fashion-MNIST as uint8 images ``[N, 28, 28]`` and int64 labels (first ``*_subset`` images
    of each split when nonzero)."""
    from saf_examples.idx import load_mnist_family

    x_train, y_train = load_mnist_family("fashion_mnist", root, train=True)
    x_test, y_test = load_mnist_family("fashion_mnist", root, train=False)
    if train_subset:
        x_train, y_train = x_train[:train_subset], y_train[:train_subset]
    if test_subset:
        x_test, y_test = x_test[:test_subset], y_test[:test_subset]
    return x_train, y_train, x_test, y_test


def to_input_seq(images: torch.Tensor, steps: int, device: torch.device) -> torch.Tensor:
    """Direct encoding, the example's ``ToTensor`` scaling: ``[B, T, 1, 28, 28]`` in [0, 1]."""
    x = images.to(device).unsqueeze(1).float().div_(255.0)
    return x.unsqueeze(1).expand(x.shape[0], steps, *x.shape[1:])


# ----------------------------------------------------------------------------------------------
# one run (in a fresh process), through the examples' engine


def image_batches(images: torch.Tensor, labels: torch.Tensor, batch: int,
                  generator: Optional[torch.Generator] = None, drop_last: bool = False):
    """:func:`saf_examples.engine.tensor_batches` of uint8 images as ``[B, 1, 28, 28]`` in [0, 1]
    (the example's ``ToTensor`` scaling); the engine repeats each image over the T steps."""
    for x, y in engine.tensor_batches(images, labels, batch, generator, drop_last):
        yield x.unsqueeze(1).float().div_(255.0), y


def make_optimizer(name: str, parameters, lr: float, momentum: float):
    if name == "sgd":
        return torch.optim.SGD(parameters, lr=lr, momentum=momentum)
    if name == "adam":
        return torch.optim.Adam(parameters, lr=lr)
    raise ValueError(f"optimizer={name!r}: use 'sgd' or 'adam'.")


def weighted_readout(method, decay: float):
    """SAF's Obar[T] by name: the last weighted average of a SAF network, the same average of the
    per-step outputs of any other (the second readout every run reports)."""
    return saf_weighted_readout if method.uses_saf_readout else weighted_average_readout(decay)


def train_run(name: str, seed: int, cfg: dict) -> dict:
    """Train one method from one seed with :mod:`saf_examples.engine`: test accuracy after every
    epoch (and ``evals - 1`` points inside it), time, peak memory, and the LIF deployment check."""
    if cfg.get("threads"):
        torch.set_num_threads(cfg["threads"])
    device = torch.device(cfg["device"])
    steps, batch = cfg["T"], cfg["batch"]
    x_train, y_train, x_test, y_test = load_data(cfg["data_root"], cfg["train_subset"], cfg["test_subset"])
    curve_test = cfg.get("curve_test_subset") or len(y_test)
    torch.manual_seed(seed)
    model, method = build_csnn(name, cfg["channels"], cfg["tau"], cfg["pool"])
    model.to(device)
    batchnorm = cfg.get("batchnorm", "train")
    train_mode = functools.partial(set_training, batchnorm=batchnorm)
    train_mode(model)
    decay = decay_factor(cfg["tau"])
    generator = torch.Generator().manual_seed(seed)
    if name.endswith(MEMOPT_SUFFIX):
        example = to_input_seq(x_train[:batch], steps, device).transpose(0, 1).contiguous()
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            apply_memopt(model, example, cfg["memopt_level"])
    optimizer = make_optimizer(cfg["optimizer"], model.parameters(), cfg["lr"], cfg["momentum"])
    full_epoch = len(y_train) // batch  # drop_last, as in the example
    per_epoch = min(cfg.get("batches_per_epoch") or full_epoch, full_epoch)
    epochs = cfg["epochs"]
    total = epochs * per_epoch
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, total)
    evals = cfg.get("evals", 1)
    # Test points inside an epoch: after these many of its minibatches (the last is the epoch's end).
    bounds = sorted({max(1, round(per_epoch * (k + 1) / evals)) for k in range(evals)})
    test_batches = list(image_batches(x_test, y_test, 256))
    curve_batches = list(image_batches(x_test[:curve_test], y_test[:curve_test], 256))
    readouts = {"weighted": weighted_readout(method, decay)}
    warm_up_runtime(device)
    _sync(device)
    baseline_rss = max_rss_bytes()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        baseline_cuda = torch.cuda.memory_allocated(device)
    result = {"method": name, "seed": seed, "curve": [], "minibatches": total,
              "batches_per_epoch": per_epoch, "full_epoch_batches": full_epoch}
    minibatch_seconds, objectives = [], []

    def on_minibatch(batch_index, values):
        # The cosine schedule steps every minibatch; the step's time is the engine's (train_step alone).
        minibatch_seconds.append(values["seconds"])
        objectives.append(values["objective"])
        scheduler.step()

    train_seconds, done = 0.0, 0
    saf_predictions = None
    try:
        for epoch in range(epochs):
            # One shuffle of the whole training set per epoch; an epoch trains its first per_epoch
            # minibatches (all of them unless --batches-per-epoch is given).
            batches = image_batches(x_train, y_train, batch, generator, drop_last=True)
            previous = 0
            for bound in bounds:
                trained = engine.train_one_epoch(
                    model, method, optimizer, itertools.islice(batches, bound - previous), mse_one_hot,
                    steps=steps, device=device, epoch=epoch, on_minibatch=on_minibatch,
                    train_mode=train_mode)
                train_seconds += trained.seconds
                done += bound - previous
                previous = bound
                if "train_peak_bytes" not in result:
                    # Read before any evaluation, whose batches must not count as training memory.
                    if device.type == "cuda":
                        result["train_peak_bytes"] = torch.cuda.max_memory_allocated(device) - baseline_cuda
                    else:
                        result["train_peak_bytes"] = max_rss_bytes() - baseline_rss
                        result["baseline_rss_bytes"] = baseline_rss
                end_of_epoch = bound == per_epoch
                last = end_of_epoch and epoch == epochs - 1
                test = engine.evaluate(model, method, test_batches if end_of_epoch else curve_batches,
                                       mse_one_hot, steps=steps, device=device, check_health=False,
                                       readouts=readouts,
                                       keep_predictions=last and method.deploys_to_lif)
                if last:
                    saf_predictions = test.predictions
                result["curve"].append({
                    "epoch": round(epoch + bound / per_epoch, 4), "minibatches": done,
                    "test_images": test.samples,
                    "test": {"rate": test.accuracy, "weighted": test.readout_accuracy("weighted")},
                    "train_loss": trained.loss_sum / trained.samples,
                    "train_objective": statistics.mean(objectives),
                    "train_accuracy": trained.correct / trained.samples,
                    "lr": optimizer.param_groups[0]["lr"]})
                objectives.clear()
    except engine.NonFiniteLossError as error:
        result["error"] = str(error)
        return result
    result["train_seconds"] = train_seconds
    result["epoch_seconds"] = train_seconds * full_epoch / total  # a full 60000-image epoch
    result["minibatch_seconds_mean"] = statistics.mean(minibatch_seconds)
    result["minibatch_seconds_median"] = statistics.median(minibatch_seconds)
    final = result["curve"][-1]["test"]
    result["accuracy"] = final["rate"]
    result["accuracy_weighted_readout"] = final["weighted"]
    if method.deploys_to_lif:
        deployed = engine.check_deployment(model, method, test_batches, mse_one_hot, steps=steps,
                                           device=device, saf_predictions=saf_predictions)
        result["to_lif_accuracy"] = deployed.accuracy
        result["to_lif_prediction_mismatches"] = deployed.mismatches
    return result


def _sync(device: torch.device) -> None:
    common.synchronize(device)


# ----------------------------------------------------------------------------------------------
# summary, plot, tables


def _mean_std(values):
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarize(runs: list, methods) -> dict:
    summary = {}
    for name in methods:
        mine = [r for r in runs if r.get("method") == name and "error" not in r]
        if not mine:
            continue
        row = {"seeds": [r["seed"] for r in mine]}
        for key in ("accuracy", "accuracy_weighted_readout", "to_lif_accuracy"):
            mean, std = _mean_std([r.get(key) for r in mine])
            if mean is not None:
                row[key] = {"mean": mean, "std": std, "values": [r.get(key) for r in mine]}
        if any("to_lif_prediction_mismatches" in r for r in mine):
            row["to_lif_prediction_mismatches"] = [r["to_lif_prediction_mismatches"] for r in mine]
        row["epoch_seconds_mean"] = statistics.mean(r["epoch_seconds"] for r in mine)
        row["epoch_seconds_min"] = min(r["epoch_seconds"] for r in mine)
        row["minibatch_seconds_mean"] = statistics.mean(r["minibatch_seconds_mean"] for r in mine)
        row["minibatch_seconds_median"] = statistics.median(r["minibatch_seconds_median"] for r in mine)
        # The least-loaded run: on a shared machine the others mostly measure the other jobs.
        row["minibatch_seconds_best"] = min(r["minibatch_seconds_median"] for r in mine)
        row["train_peak_mib_mean"] = statistics.mean(r["train_peak_bytes"] for r in mine) / 2 ** 20
        row["train_peak_mib_max"] = max(r["train_peak_bytes"] for r in mine) / 2 ** 20
        points = min(len(r["curve"]) for r in mine)
        row["curve_epochs"] = [p["epoch"] for p in mine[0]["curve"][:points]]
        row["curve_test_images"] = [p["test_images"] for p in mine[0]["curve"][:points]]
        row["curve_accuracy_mean"] = [statistics.mean(r["curve"][k]["test"]["rate"] for r in mine)
                                      for k in range(points)]
        row["curve_accuracy_std"] = [
            statistics.stdev([r["curve"][k]["test"]["rate"] for r in mine]) if len(mine) > 1 else 0.0
            for k in range(points)]
        summary[name] = row
    return summary


#: The accuracy panels: each SAF method with its OTTT twin and BPTT, at most six lines per panel.
PANELS = (("per-step updates: SAF-E vs OTTT_O", ("saf-e", "ottt-o", "sltt", "bptt")),
          ("one update per minibatch: SAF-E-acc, SAF-F vs OTTT_A",
           ("saf-e-acc", "saf-f", "saf-f-rep", "ottt-a", "bptt", "bptt+memopt")),
          ("each objective with an online and an exact gradient",
           ("saf-f", "bptt-final", "ottt-a", "bptt-every-step", "bptt")))


def _grid_references(results_dir: Path, tag: str, payload: dict) -> dict:
    """For a run of the diagnostics alone: the summary rows of the other methods in their panel,
    from the grid run of the tables (same settings), so that the plot shows each objective with both
    gradients; ``{}`` otherwise."""
    from . import tables

    if tag == tables.FASHION_MNIST_CURRENT or not set(payload["summary"]) & set(DIAGNOSTIC_METHODS):
        return {}
    grid = common.read_json(results_dir, tables.FASHION_MNIST_CURRENT)
    if not grid or tables.differing_settings(grid, payload):
        return {}
    panel = next(names for _, names in PANELS if set(names) & set(DIAGNOSTIC_METHODS))
    return {name: grid["summary"][name] for name in panel if name in grid["summary"]}


def plot(results_dir: Path, tag: str, payload: dict) -> Path:
    """Small multiples: one accuracy panel per group of :data:`PANELS` (a method keeps its colour
    in every panel), then time and memory per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = payload["settings"]
    own = payload["summary"]
    summary = {**_grid_references(results_dir, tag, payload), **own}
    # Times from the separate one-at-a-time timing run when there is one (see tables.py).
    timing = (common.read_json(results_dir, f"{tag}_timing") or {}).get("summary", {})
    panels = [(title, [m for m in names if m in summary]) for title, names in PANELS if set(names) & set(own)]
    leftover = [m for m in summary if not any(m in names for _, names in PANELS)]
    shown, kept = set(), []
    for title, names in panels:  # a panel adds at least one method (the main grid skips the diagnostics')
        if set(names) - shown:
            kept.append((title, names))
            shown.update(names)
    panels = kept
    for start in range(0, len(leftover), 6):
        panels.append(("other methods", leftover[start:start + 6]))
    fig, axes = plt.subplots(1, len(panels) + 1, figsize=(5.2 * (len(panels) + 1), 4.5), squeeze=False)
    axes = axes[0]
    colors = plt.get_cmap("tab10").colors
    color = {name: colors[index % len(colors)] for index, name in enumerate(METHODS)}
    color.update({name: colors[(len(METHODS) + i) % len(colors)]
                  for i, name in enumerate(m for m in summary if m not in color)})
    short = s.get("batches_per_epoch") not in (None, "all")
    for ax, (title, names) in zip(axes, panels):
        for name in names:
            row = summary[name]
            mean = [100 * v for v in row["curve_accuracy_mean"]]
            std = [100 * v for v in row["curve_accuracy_std"]]
            style = "-" if get_method(base_method_name(name)).deploys_to_lif else "--"
            ax.errorbar(row["curve_epochs"], mean, yerr=std, marker="o", markersize=3, capsize=2,
                        linestyle=style, color=color[name],
                        label=f"{name} (n={len(row['seeds'])}{'' if name in own else ', grid run'})")
        ax.set_xlabel(f"epochs trained ({s['batches_per_epoch']} minibatches of {s['batch']} each)"
                      if short else "epochs trained (60000 images each)")
        ax.set_ylabel("test accuracy (%), firing-rate readout")
        ax.set_title(title, fontsize=9)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    ax2 = axes[-1]
    for name, row in own.items():
        seconds = timing.get(name, row)["epoch_seconds_min"]
        ax2.scatter(seconds, row["train_peak_mib_mean"], color=color[name])
        ax2.annotate(name, (seconds, row["train_peak_mib_mean"]), fontsize=7,
                     xytext=(3, 3), textcoords="offset points")
    ax2.set_xlabel("seconds per full epoch (timing run, one run at a time)" if timing else
                   "seconds per full epoch (fastest seed; shared machine)" if s.get("machine_shared")
                   else "seconds per full epoch (fastest seed)")
    ax2.set_ylabel("training peak memory (MiB)")
    ax2.set_title("time and memory per method", fontsize=9)
    ax2.grid(True, alpha=0.3)
    meta = payload["meta"]
    curve_note = (f"; points inside an epoch on the first {s['curve_test_subset']} test images"
                  if s.get("curve_test_subset") and s.get("evals_per_epoch", 1) > 1 else "")
    seeds = sorted({seed for row in summary.values() for seed in row["seeds"]})
    fig.suptitle(f"Fashion-MNIST, CSNN C={s['channels']} ({s['pool']} pool), T={s['T']}, "
                 f"tau={s['tau']}, mean ± std over the finished seeds {seeds} (n per method)",
                 fontsize=10)
    fig.text(0.01, 0.01, f"{meta['device']} ({meta['cpu_model']}, {meta['cpu_count']} cores, "
             f"{'shared' if s.get('machine_shared') else 'dedicated'}), batch {s['batch']}, "
             f"{s['optimizer']}, {meta['date_utc']}{curve_note}", fontsize=6)
    fig.tight_layout(rect=(0, 0.03, 1, 0.95))
    return common.save_figure(fig, results_dir / f"{tag}_accuracy.png", dpi=110)


def check_exactness_of_pools(channels: int = 4, tau: float = 2.0) -> dict:
    """What ``spikingjelly_saf.check_exactness`` says of the SAF CSNN (eval mode) per pooling."""
    from spikingjelly_saf import check_exactness

    findings = {}
    for pool in ("max", "avg"):
        model, _ = build_csnn("saf-e", channels, tau, pool)
        report = check_exactness(model.eval())
        findings[pool] = {"exact": report.exact, "kinds": sorted(report.kinds())}
    model, _ = build_csnn("saf-e", channels, tau, "avg")
    findings["avg_train_mode"] = {"exact": check_exactness(model.train()).exact,
                                  "kinds": sorted(check_exactness(model.train()).kinds())}
    return findings


# ----------------------------------------------------------------------------------------------
# command line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_fashion_mnist",
                                     description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated, from "
                        + ", ".join(METHODS + DIAGNOSTIC_METHODS))
    parser.add_argument("--seeds", type=common.seed_list, default="0,1,2", help="comma-separated integers")
    parser.add_argument("--epochs", type=common.positive_int, default=3, help="epochs of training")
    parser.add_argument("--batches-per-epoch", type=common.non_negative_int, default=0,
                        help="train only the first N minibatches of each epoch's shuffle of the whole "
                             "training set (0: all of them, a full epoch)")
    parser.add_argument("--evals", type=common.positive_int, default=1,
                        help="test points per epoch (the last at the epoch's end, on the whole test set)")
    parser.add_argument("--curve-test-subset", type=common.non_negative_int, default=2000,
                        help="test images for the points inside an epoch (0: all); the end of "
                             "every epoch always uses the whole test split")
    parser.add_argument("--channels", type=common.positive_int, default=16,
                        help="C of the CSNN (the example's default: 128)")
    parser.add_argument("-T", "--steps", type=common.positive_int, default=6, dest="T")
    parser.add_argument("--batch", type=common.positive_int, default=128)
    parser.add_argument("--optimizer", choices=("sgd", "adam"), default="adam")
    parser.add_argument("--lr", type=common.positive_float, default=1e-2)
    parser.add_argument("--momentum", type=float, default=0.9, help="for SGD")
    parser.add_argument("--tau", type=float, default=2.0)
    parser.add_argument("--pool", choices=("avg", "max"), default="avg")
    parser.add_argument("--batchnorm", choices=("train", "frozen"), default="train",
                        help="'train': batch statistics while training (the example's); 'frozen': "
                             "BatchNorm in eval mode throughout (a learned affine map, exact for SAF)")
    parser.add_argument("--memopt-level", type=common.memopt_level, default=1,
                        help="optimize_memory level for bptt+memopt (2-4 need CUDA)")
    parser.add_argument("--train-subset", type=common.non_negative_int, default=0,
                        help="first N training images (0: all 60000)")
    parser.add_argument("--test-subset", type=common.non_negative_int, default=0,
                        help="first N test images (0: all 10000)")
    parser.add_argument("--data-root", default=None,
                        help="folder with the idx files (also searched: its FashionMNIST/raw, "
                             "/usr/share/datasets/fashion-mnist)")
    parser.add_argument("--device", type=common.device_name, default="cpu")
    parser.add_argument("--threads", type=common.non_negative_int, default=1,
                        help="torch threads per run (0: torch's default); one thread is the fastest "
                             "for this small network on a loaded machine")
    parser.add_argument("--workers", type=common.positive_int, default=1,
                        help="runs trained at the same time (each in its own process)")
    parser.add_argument("--shared-machine", action="store_true",
                        help="record that other jobs shared the machine during the run")
    parser.add_argument("--tag", type=common.file_stem, default="fashion_mnist",
                        help="results file name stem")
    parser.add_argument("--results-dir", type=Path, default=common.RESULTS_DIR)
    parser.add_argument("--timeout", type=common.positive_float, default=4 * 3600, help="seconds per run")
    parser.add_argument("--no-readme", action="store_true",
                        help="do not regenerate the README table (a tag starting with fashion_mnist "
                             "regenerates it, and the docs table, from the committed results only)")
    parser.add_argument("--replot", action="store_true",
                        help="train nothing: rebuild the summary, plot and tables from <tag>.json")
    return parser


def check_args(parser: argparse.ArgumentParser, args) -> None:
    """The checks that span flags; ``--replot`` trains nothing and needs no data."""
    args.methods = common.choose(parser, "--methods", args.methods, METHODS + DIAGNOSTIC_METHODS)
    if not 0 <= args.momentum < 1:
        parser.error(f"--momentum: must lie in [0, 1), got {args.momentum}.")
    if not args.tau > 1:
        parser.error(f"--tau: LIF needs tau > 1, got {args.tau}.")
    if (args.memopt_level > 1 and not args.device.startswith("cuda")
            and "bptt+memopt" in args.methods):
        parser.error(f"--memopt-level {args.memopt_level}: levels 2-4 measure CUDA memory; "
                     "use --memopt-level 1 on the CPU or --device cuda.")
    if args.replot:
        return
    from saf_examples.idx import IdxDataMissing, IdxFormatError

    try:
        load_data(args.data_root, 1, 1)
    except (IdxDataMissing, IdxFormatError) as error:
        parser.error(str(error))


def parse_args(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    check_args(parser, args)
    return args


def saf_backend_of(device: str) -> str:
    """Which kernel ``SAFNode``'s default backend ('auto') runs on ``device``."""
    from spikingjelly_saf import backends

    chosen = backends.REGISTRY.select("auto", "m").choose(torch.device(device))
    return f"SAFNode(backend='auto') runs '{chosen}' on {device}"


def settings_of(args) -> dict:
    return {
        "saf_backend": saf_backend_of(args.device),
        "data": "Fashion-MNIST idx files" + (f", first {args.train_subset} training images" if args.train_subset
                                             else ", all 60000 training images")
                + (f", first {args.test_subset} test images" if args.test_subset else ", all 10000 test images"),
        "network": (f"CSNN of SpikingJelly's conv_fashion_mnist.py, C={args.channels}: conv3x3(1-C)-BN-N-"
                    f"{args.pool}pool, conv3x3(C-C)-BN-N-{args.pool}pool, flatten, linear(C*49-C*16)-N, "
                    "linear(C*16-10)-N, no biases"),
        "channels": args.channels, "pool": args.pool, "T": args.T, "epochs": args.epochs,
        "batches_per_epoch": args.batches_per_epoch or "all",
        "epoch": ("every epoch a fresh shuffle of the training images, all of its minibatches"
                  if not args.batches_per_epoch else
                  f"every epoch a fresh shuffle of the training images, its first "
                  f"{args.batches_per_epoch} minibatches ({args.batches_per_epoch * args.batch} "
                  "images): a short epoch"),
        "evals_per_epoch": args.evals, "curve_test_subset": args.curve_test_subset,
        "batch": args.batch, "drop_last": True,
        "optimizer": (f"SGD(lr={args.lr}, momentum={args.momentum})" if args.optimizer == "sgd"
                      else f"Adam(lr={args.lr})") + ", cosine schedule stepped every minibatch to 0",
        "loss": "MSE(readout, one-hot): per step on the step's output spikes for SAF-E, SAF-E-acc, "
                "OTTT_O, OTTT_A, SLTT and bptt-every-step (averaged over t, as in OTTT); on the firing "
                "rate for BPTT; on Obar[T] for SAF-F, SAF-F-rep and bptt-final",
        "readout": "default for every method: the firing rate of the output spikes (SAF: the mean of "
                   "the recovered output, spike counts rounded; LIF/OTTT: out_seq.mean over T); "
                   "'weighted' (Obar[T], the lam^(T-t)-weighted average) is reported too",
        "engine": "training, evaluation and the to_lif deployment check through "
                  "examples/saf_examples/engine.py (train_one_epoch, evaluate, check_deployment)",
        "batchnorm": ("train mode (batch statistics) for every method during training, running "
                      "statistics at test time; single-step methods normalise each step's batch, "
                      "multi-step BPTT and SAF-E-acc the T x B batch" if args.batchnorm == "train" else
                      "frozen: eval mode throughout for every method (initial running statistics, "
                      "learned affine weight and bias)"),
        "neuron": f"soft-reset LIF tau={args.tau}, V_th=1, decay_input=False, detach_reset, sigmoid "
                  f"surrogate alpha=4 (saf-f-rep: SpikeRepresentation); OTTTLIFNode for OTTT, SLTTLIFNode "
                  "for SLTT, LIFNode for BPTT",
        "memopt": f"bptt+memopt: memopt.optimize_memory(model, CSNNBlock, level={args.memopt_level}, "
                  "compress=True) on the four neuron-terminated blocks, probed with the first "
                  "training minibatch",
        "encoding": "direct: the image at every step, pixels / 255",
        "augmentation": "none",
        "seeds": args.seeds, "tau": args.tau, "device": args.device,
        "threads": args.threads or torch.get_num_threads(), "workers": args.workers,
        "train_subset": args.train_subset, "test_subset": args.test_subset,
        "order": "round-robin: every method for seed 0, then seed 1, ...; each run in a fresh process",
        "machine_shared": bool(args.shared_machine),
        "memory": ("torch.cuda.max_memory_allocated during the first epoch minus allocated before"
                   if args.device.startswith("cuda") else
                   "ru_maxrss after the first training epoch (before any evaluation) minus ru_maxrss "
                   "after loading the data and building model and optimizer, fresh process"),
        "timing": "epoch_seconds: the engine's training time (evaluations excluded) scaled to a full "
                  "epoch of all training minibatches; minibatch_seconds: train_step alone",
    }


def _run_line(result: dict) -> str:
    if "error" in result:
        return f"failed: {result['error']}"
    lif = f", to_lif {100 * result['to_lif_accuracy']:.2f}%" if "to_lif_accuracy" in result else ""
    return (f"{100 * result['accuracy']:.2f}%{lif}, {result['epoch_seconds']:.1f} s/epoch, "
            f"{result['minibatch_seconds_median']:.3f} s/minibatch, "
            f"+{result['train_peak_bytes'] / 2 ** 20:.1f} MiB, curve "
            + " ".join(f"{100 * p['test']['rate']:.2f}" for p in result['curve']))


def replot(results_dir: Path, tag: str) -> dict:
    """Summary and plot rebuilt from the runs recorded in ``<tag>.json``."""
    payload = common.read_json(results_dir, tag)
    if payload is None:
        raise FileNotFoundError(f"{results_dir / (tag + '.json')} does not exist; run the benchmark first.")
    return resummarize(results_dir, tag, payload)


def resummarize(results_dir: Path, tag: str, payload: dict) -> dict:
    methods = list(dict.fromkeys(r["method"] for r in payload["runs"]))
    payload["summary"] = summarize(payload["runs"], methods)
    common.write_json(results_dir, tag, payload)
    plot(results_dir, tag, payload)
    return payload


def table_pages(parser: argparse.ArgumentParser, args) -> Optional[tuple]:
    """``(readme, docs)`` to regenerate after the run, checked now; None when the tables are not
    rebuilt (``--no-readme``, or a tag that is not a Fashion-MNIST run of the tables)."""
    if args.no_readme or not args.tag.startswith("fashion_mnist"):
        return None
    from . import tables

    committed = common.uses_committed_results(args.results_dir)
    remedy = "restore its {region} region, or pass --no-readme to leave the tables alone"
    readme = common.page_arg(parser, "README", None, common.README_PATH, committed,
                             common.TABLE_START, common.TABLE_END, remedy)
    docs = common.page_arg(parser, "docs page", None, common.DOCS_PATH, committed,
                           tables.FASHION_DOCS_START, tables.FASHION_DOCS_END, remedy)
    try:  # the other results the tables read
        with common.results_without(args.tag):
            _render_tables(args.results_dir)
    except common.ResultsFileError as error:
        parser.error(str(error))
    return readme, docs


def _render_tables(results_dir: Path) -> tuple[str, str, str]:
    from . import tables

    return (tables.results_markdown(results_dir), tables.readme_markdown(results_dir),
            tables.fashion_mnist_docs_markdown(results_dir))


def _update_tables(results_dir: Path, readme: Optional[Path], docs: Optional[Path]) -> None:
    from . import tables

    results_md, readme_md, docs_md = _render_tables(results_dir)
    common.write_text(results_dir / "RESULTS.md", results_md)
    if readme:
        common.update_readme_table(readme_md, readme)
    if docs:
        common.update_region(docs_md, docs, tables.FASHION_DOCS_START, tables.FASHION_DOCS_END)


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_args(parser, args)
    pages = table_pages(parser, args)
    args.results_dir = common.results_dir_arg(parser, args.results_dir)
    if args.replot:
        common.build_from(parser, args.results_dir, args.tag,
                          lambda payload: resummarize(args.results_dir, args.tag, payload))
    else:
        train_all(args)
    if pages:
        try:
            _update_tables(args.results_dir, *pages)
        except common.ResultsFileError as error:
            parser.error(str(error))
    return 0


def train_all(args) -> None:
    """Every (method, seed) of ``args``, the JSON rewritten after each run, then the plot."""
    cfg = {"device": args.device, "T": args.T, "batch": args.batch, "epochs": args.epochs,
           "channels": args.channels, "tau": args.tau, "pool": args.pool, "optimizer": args.optimizer,
           "lr": args.lr, "momentum": args.momentum, "memopt_level": args.memopt_level,
           "data_root": args.data_root, "train_subset": args.train_subset,
           "test_subset": args.test_subset, "threads": args.threads,
           "evals": args.evals, "curve_test_subset": args.curve_test_subset,
           "batchnorm": args.batchnorm, "batches_per_epoch": args.batches_per_epoch}
    plan = [(name, seed) for seed in args.seeds for name in args.methods]
    start = time.perf_counter()
    # Also starts the fork server before any worker thread needs it.
    exactness = common.run_in_fresh_process(check_exactness_of_pools, 4, args.tau)
    payload = {"meta": common.metadata(args.device), "settings": settings_of(args),
               "exactness": exactness, "runs": [], "complete": False}
    done = {}
    lock = threading.Lock()

    def run_one(index: int) -> None:
        name, seed = plan[index]
        result = common.run_in_fresh_process(train_run, name, seed, cfg, timeout=args.timeout)
        result.setdefault("method", name)
        result.setdefault("seed", seed)
        with lock:
            done[index] = result
            payload["runs"] = [done[i] for i in sorted(done)]
            payload["complete"] = len(done) == len(plan)
            payload["finished_runs"] = f"{len(done)}/{len(plan)}"
            payload["wall_seconds"] = time.perf_counter() - start
            payload["summary"] = summarize(payload["runs"], args.methods)
            common.write_json(args.results_dir, args.tag, payload)
            print(f"[{time.perf_counter() - start:7.1f} s] {len(done)}/{len(plan)} {name} seed {seed}: "
                  f"{_run_line(result)}", flush=True)

    # Runs start in plan order (round-robin over methods); with several workers the next one starts
    # whenever one finishes.
    with concurrent.futures.ThreadPoolExecutor(max_workers=args.workers) as pool:
        for future in [pool.submit(run_one, index) for index in range(len(plan))]:
            future.result()
    if payload["summary"]:
        plot(args.results_dir, args.tag, payload)




if __name__ == "__main__":
    sys.exit(main())
