r"""
What a run leaves behind besides checkpoints: CSV/JSON history, PNG plots and the summary line.
"""

from __future__ import annotations

import csv
import io
import json
import math
import sys
import time
from pathlib import Path

import torch

from .checkpoint import atomic_write_bytes, atomic_write_text
from .measure import max_rss_bytes

__all__ = ["peak_memory_mib", "reset_peak_memory", "write_history", "plot_history", "summary_line",
           "short_layer_names", "minibatch_logger", "progress_printer", "format_duration",
           "MEMORY_KINDS"]

_SCALAR_KEYS = ("epoch", "train_loss", "train_acc", "test_loss", "test_acc", "lr", "epoch_time_s",
                "train_samples_per_s", "peak_memory_mib", "grad_syncs_per_batch")


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


#: What ``peak_memory_mib`` measures, per device type: named where it is printed or plotted.
MEMORY_KINDS = {
    "cuda": "peak CUDA tensor memory of the epoch (torch.cuda.max_memory_allocated)",
    "cpu": "peak resident memory of the whole process since it started (max RSS: Python, "
           "PyTorch and the data set in memory included)",
}


def peak_memory_mib(device: torch.device) -> tuple[float, str]:
    """CUDA ``max_memory_allocated`` since the last reset, or the process's maximum RSS on CPU,
    with the name of the quantity (:data:`MEMORY_KINDS`)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, MEMORY_KINDS["cuda"]
    return max_rss_bytes() / 2**20, MEMORY_KINDS["cpu"]


def write_history(history: list, out_dir: Path) -> None:
    """``history.json`` and ``history.csv``, each written atomically (a temporary file moved into
    place), so a kill or a full disk leaves the previous whole file."""
    out_dir = Path(out_dir)
    atomic_write_text(out_dir / "history.json", json.dumps(history, indent=1))
    layers = list(history[-1].get("firing_rate", {})) if history else []
    text = io.StringIO(newline="")
    writer = csv.writer(text)
    writer.writerow(list(_SCALAR_KEYS) + [f"firing_rate/{name}" for name in layers])
    for row in history:
        rates = row.get("firing_rate", {})
        writer.writerow([row.get(k, "") for k in _SCALAR_KEYS] + [rates.get(n, "") for n in layers])
    atomic_write_text(out_dir / "history.csv", text.getvalue())


def _save_figure(figure, path: Path) -> None:
    """Render to memory, then write atomically: a plot on disk is always a whole PNG."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120)
    atomic_write_bytes(path, buffer.getvalue())


def short_layer_names(names) -> list:
    """Layer names as a plot shows them: without DDP's ``module.`` and without a leading index that
    every name shares (``1.`` when an ``nn.Sequential`` puts ``InputAverage`` in front)."""
    names = [name.removeprefix("module.") for name in names]
    parts = [name.split(".") for name in names]
    common = 0
    while (len(parts) > 1 and all(len(p) > common + 1 for p in parts)
           and len({p[common] for p in parts}) == 1 and parts[0][common].isdigit()):
        common += 1
    return [".".join(p[common:]) for p in parts]


def _integer_epochs(axis) -> None:
    from matplotlib.ticker import MaxNLocator

    axis.xaxis.set_major_locator(MaxNLocator(integer=True))


def plot_history(history: list, out_dir: Path, title: str, memory_kind: str) -> list:
    """``curves.png`` (accuracy, loss), ``firing_rates.png`` and ``cost.png`` (time, memory per epoch)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    epochs = [row["epoch"] for row in history]
    written = []

    figure, (acc_axis, loss_axis) = plt.subplots(1, 2, figsize=(10, 4))
    for split in ("train", "test"):
        acc_axis.plot(epochs, [row[f"{split}_acc"] for row in history], marker="o", label=split)
        loss_axis.plot(epochs, [row[f"{split}_loss"] for row in history], marker="o", label=split)
    acc_axis.set(xlabel="epoch", ylabel="accuracy", title="accuracy")
    # Both losses are the loss of the prediction scores, so the curves are on one scale.
    loss_axis.set(xlabel="epoch", ylabel="loss of the prediction scores", title="loss")
    for axis in (acc_axis, loss_axis):
        axis.legend()
        axis.grid(alpha=0.3)
        _integer_epochs(axis)
    figure.suptitle(title)
    figure.tight_layout()
    _save_figure(figure, out_dir / "curves.png")
    plt.close(figure)
    written.append(out_dir / "curves.png")

    rates = history[-1].get("firing_rate", {})
    if rates:
        figure, axis = plt.subplots(figsize=(max(6, 0.5 * len(rates) + 2), 4))
        axis.bar(range(len(rates)), list(rates.values()))
        axis.set_xticks(range(len(rates)), short_layer_names(rates), rotation=60, ha="right",
                        fontsize=7)
        axis.set(ylabel="spikes per neuron per step", title=f"firing rate per layer (test set, "
                 f"epoch {history[-1]['epoch']})")
        axis.set_ylim(bottom=0)
        figure.suptitle(title)
        figure.tight_layout()
        _save_figure(figure, out_dir / "firing_rates.png")
        plt.close(figure)
        written.append(out_dir / "firing_rates.png")

    figure, (time_axis, memory_axis) = plt.subplots(1, 2, figsize=(10, 4))
    time_axis.plot(epochs, [row["epoch_time_s"] for row in history], marker="o")
    time_axis.set(xlabel="epoch", ylabel="seconds", title="training time per epoch")
    memory_axis.plot(epochs, [row["peak_memory_mib"] for row in history], marker="o")
    memory_axis.set(xlabel="epoch", ylabel="MiB", title="peak memory")
    memory_axis.set_title(f"peak memory:\n{memory_kind}", fontsize=8)
    for axis in (time_axis, memory_axis):
        axis.grid(alpha=0.3)
        _integer_epochs(axis)
        axis.set_ylim(bottom=0)  # a flat line near its top must not look like a large change
    figure.suptitle(title)
    figure.tight_layout()
    _save_figure(figure, out_dir / "cost.png")
    plt.close(figure)
    written.append(out_dir / "cost.png")
    return written


def format_duration(seconds: float) -> str:
    """``h:mm:ss`` (or ``m:ss`` under an hour)."""
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def progress_printer(epoch: int, epochs: int, batches: int, images_per_batch: int, every: int,
                     stream=None, clock=time.perf_counter):
    """A ``train_one_epoch(on_minibatch=...)`` callback that prints one plain line every ``every``
    minibatches and after the last: the running mean loss and accuracy of the epoch so far, images
    per second (``images_per_batch`` per minibatch, over all processes) and the time the epoch still
    needs at that speed. One line per call and no carriage returns, so it reads well in a log::

        epoch 0/20 [50/468] loss 2.1032 acc 0.2311 | 812.4 img/s | ETA 2:03
    """
    stream = sys.stdout if stream is None else stream
    start = clock()
    totals = {"loss": 0.0, "acc": 0.0, "seen": 0}

    def log(batch: int, values: dict) -> None:
        totals["loss"] += float(values["loss"])
        totals["acc"] += float(values["acc"])
        totals["seen"] += 1
        done = batch + 1
        if done % every and done != batches:
            return
        elapsed = max(clock() - start, 1e-9)
        seen = totals["seen"]
        rate = seen * images_per_batch / elapsed
        eta = elapsed / seen * max(batches - done, 0)
        print(f"epoch {epoch}/{epochs} [{done}/{batches}] loss {totals['loss'] / seen:.4f} "
              f"acc {totals['acc'] / seen:.4f} | {rate:.1f} img/s | ETA {format_duration(eta)}",
              file=stream, flush=True)

    return log


def minibatch_logger(writer, epoch: int, batches_per_epoch: int, first_step=None):
    """A ``train_one_epoch(on_minibatch=...)`` callback that writes each minibatch's values to
    TensorBoard under ``iteration/<name>``, at the global minibatch index: ``first_step`` (the
    minibatches trained before this epoch) plus the minibatch, or ``epoch * batches_per_epoch``
    plus the minibatch when ``first_step`` is not given."""
    start = epoch * batches_per_epoch if first_step is None else int(first_step)

    def log(batch: int, values: dict) -> None:
        step = start + batch
        for name, value in values.items():
            writer.add_scalar(f"iteration/{name}", value, step)

    return log


def summary_line(title: str, history: list, best: dict, memory_kind: str, deployed_acc=None) -> str:
    last = history[-1]
    mean_time = sum(row["epoch_time_s"] for row in history) / len(history)
    peak = max(row["peak_memory_mib"] for row in history)
    text = (f"{title}: test acc {last['test_acc']:.4f} (best {best['test_acc']:.4f} at epoch "
            f"{best['epoch']}), {mean_time:.2f} s/epoch, {memory_kind}: {peak:.1f} MiB")
    if deployed_acc is not None and not math.isnan(deployed_acc):
        text += f", LIF deployment acc {deployed_acc:.4f}"
    return text
