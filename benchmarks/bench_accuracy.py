"""Accuracy parity on scikit-learn's digits (8x8 images, shipped with scikit-learn, no download).

Every method trains the same small CNN (built from ``OTTTSequential`` so that OTTT runs) with the
same data, schedule and seeds; the test accuracy is reported as mean and standard deviation over
seeds. SAF models are also converted to LIF networks with ``spikingjelly_saf.conversion.to_lif``
and evaluated again (the deployment accuracy).
"""

from __future__ import annotations

import statistics
from pathlib import Path

import torch

from saf_examples import digits

from . import common

METHODS = ["saf-e", "saf-e-acc", "saf-f", "saf-f-rep", "ottt-o", "ottt-a", "bptt", "sltt", "dsr", "ideal"]


def build_digits_model(method_name: str, steps: int, tau: float = 2.0, width: int = 16):
    """The package's digits CNN for any method of the table, DSR included (its neuron needs T)."""
    return digits.build_digits_model(method_name, tau, width, steps=steps)


def train_one(method_name: str, seed: int, data, steps: int, epochs: int, tau: float = 2.0,
              batch: int = 64, lr: float = 2e-2, width: int = 16, on_epoch=None) -> dict:
    """:func:`saf_examples.digits.train` with DSR available."""
    return digits.train(method_name, seed, data, steps, epochs, tau, batch, lr, width, on_epoch,
                        build=lambda name, tau_, width_: build_digits_model(name, steps, tau_, width_))


def _mean_std(values):
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def run(results_dir: Path, quick: bool = False, log=print) -> dict:
    torch.set_num_threads(1)  # tiny networks: one thread is faster and leaves the other core free
    seeds = [0] if quick else [0, 1, 2, 3, 4]
    epochs = 1 if quick else 5
    steps = 2 if quick else 4
    methods = ["saf-e", "ottt-o"] if quick else METHODS
    data = digits.load_digits_tensors()
    if quick:
        data = (data[0][:128], data[1][:128], data[2][:128], data[3][:128])
    rows = {}
    for name in methods:
        runs = [train_one(name, seed, data, steps, epochs) for seed in seeds]
        accs = [r["accuracy"] for r in runs]
        mean, std = _mean_std(accs)
        row = {"accuracies": accs, "mean": mean, "std": std,
               "epoch_seconds_mean": statistics.mean(r["epoch_seconds"] for r in runs)}
        if all("to_lif_accuracy" in r for r in runs):  # the methods that deploy to LIF
            lif = [r["to_lif_accuracy"] for r in runs]
            row["to_lif_accuracies"] = lif
            row["to_lif_mean"], row["to_lif_std"] = _mean_std(lif)
        rows[name] = row
        log(f"  accuracy {name}: {mean:.4f} +- {std:.4f}"
            + (f", to_lif {row['to_lif_mean']:.4f}" if row.get("to_lif_mean") is not None else ""))
    payload = {"meta": common.metadata("cpu"),
               "settings": {"data": "sklearn.datasets.load_digits, 80/20 stratified split "
                                    f"(train {len(data[1])}, test {len(data[3])})",
                            "network": "OTTTSequential(Conv 1-16, N, AvgPool, Conv 16-32, N, AvgPool, "
                                       "Flatten, Linear 128-10)",
                            "T": steps, "epochs": epochs, "batch": 64,
                            "optimizer": "Adam(lr=2e-2), cosine schedule",
                            "seeds": seeds, "tau": 2.0, "encoding": "direct (image at every step)",
                            "readout": "every method: the firing rate of its output (SAF: the mean "
                                       "of the recovered output over T; others and the to_lif "
                                       "network: the mean output over T)",
                            "loss": "cross-entropy; per-step losses averaged over T (SAF-E, "
                                    "SAF-E-acc, OTTT, SLTT); saf-f: SAF-F with the sigmoid "
                                    "surrogate, saf-f-rep: with SpikeRepresentation"},
               "methods": rows}
    common.write_json(results_dir, "accuracy", payload)
    return payload


def main(argv=None) -> int:
    return common.suite_main(run, __doc__, argv)


if __name__ == "__main__":
    main()
