"""Accuracy parity on scikit-learn's digits (8x8 images, shipped with scikit-learn, no download).

Every method trains the same small CNN (built from ``OTTTSequential`` so that OTTT runs) with the
same data, schedule and seeds; the test accuracy is reported as mean and standard deviation over
seeds. SAF models are also converted to LIF networks with ``spikingjelly_saf.conversion.to_lif``
and evaluated again (the deployment accuracy).
"""

from __future__ import annotations

import argparse
import copy
import math
import statistics
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from spikingjelly.activation_based import functional, layer

from spikingjelly_saf.methods import evaluate_sequence, get_method

from . import common

METHODS = ["saf-e", "saf-e-acc", "saf-f", "ottt-o", "ottt-a", "bptt", "sltt", "dsr", "ideal"]


def load_digits_tensors(seed: int = 0):
    """Train/test split (80/20, stratified, fixed) of the digits, scaled to [0, 1], shape [N, 1, 8, 8]."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(digits.target, dtype=torch.long)
    idx_train, idx_test = train_test_split(range(len(y)), test_size=0.2, random_state=seed,
                                           stratify=digits.target)
    return x[idx_train], y[idx_train], x[idx_test], y[idx_test]


def digits_cnn(neuron_factory, kwargs: dict, width: int = 16) -> nn.Module:
    """conv-neuron-avgpool x2, then a linear readout: every module between neurons is affine."""
    return layer.OTTTSequential(
        layer.Conv2d(1, width, 3, padding=1), neuron_factory(**copy.deepcopy(kwargs)),
        layer.AvgPool2d(2),
        layer.Conv2d(width, 2 * width, 3, padding=1), neuron_factory(**copy.deepcopy(kwargs)),
        layer.AvgPool2d(2),
        layer.Flatten(1),
        layer.Linear(2 * width * 4, 10),
    )


def build_digits_model(method_name: str, steps: int, tau: float = 2.0, width: int = 16):
    if method_name == "dsr":
        model = digits_cnn(common.DSRFactory(steps), {}, width)
        functional.set_step_mode(model, "m")
        return model, get_method("bptt")
    method = get_method(method_name)
    model = digits_cnn(method.neuron_type, common.neuron_kwargs(method, tau), width)
    method.prepare(model)
    return model, method


def _sequence(x: torch.Tensor, steps: int) -> torch.Tensor:
    return x.unsqueeze(1).repeat(1, steps, *([1] * (x.dim() - 1)))


@torch.no_grad()
def evaluate(model, method, x, y, steps, step_mode, batch=512, scores_fn=None) -> float:
    model.eval()
    correct = 0
    for i in range(0, len(y), batch):
        functional.reset_net(model)
        y_seq = evaluate_sequence(model, _sequence(x[i:i + batch], steps), step_mode)
        scores = (scores_fn or method.prediction_scores)(y_seq)
        correct += (scores.argmax(1) == y[i:i + batch]).sum().item()
    functional.reset_net(model)
    model.train()
    return correct / len(y)


def weighted_average_scores(decay: float):
    """The prediction of a deployed LIF network: the weighted average of its instantaneous outputs,
    with the weights lam^(T-t) of SAF's readout Obar[T]."""

    def scores(y_seq: torch.Tensor) -> torch.Tensor:
        steps = y_seq.shape[1]
        weights = torch.tensor([decay ** (steps - 1 - t) for t in range(steps)], dtype=y_seq.dtype)
        shape = (1, steps) + (1,) * (y_seq.dim() - 2)
        return (y_seq * weights.view(shape)).sum(1) / weights.sum()

    return scores


def deployment_accuracy(model, data, steps, tau) -> dict:
    """Accuracy of ``to_lif(model)``; reported as unavailable while the conversion module is missing."""
    try:
        from spikingjelly_saf.conversion import to_lif
    except ImportError as error:
        return {"error": f"spikingjelly_saf.conversion.to_lif not available: {error}"}
    x_test, y_test = data[2], data[3]
    lif_model = to_lif(copy.deepcopy(model), memoryless="keep")  # tau=1 stays exact as SAFNode
    functional.set_step_mode(lif_model, "s")
    decay = 1.0 - 1.0 / tau if math.isfinite(tau) else 1.0
    accuracy = evaluate(lif_model, None, x_test, y_test, steps, "s",
                        scores_fn=weighted_average_scores(decay))
    return {"accuracy": accuracy}


def train_one(method_name: str, seed: int, data, steps: int, epochs: int, tau: float = 2.0,
              batch: int = 64, lr: float = 2e-2, width: int = 16, on_epoch=None) -> dict:
    """Train ``method_name`` from seed ``seed``; returns test accuracy (and to_lif's for SAF)."""
    torch.manual_seed(seed)
    x_train, y_train, x_test, y_test = data
    model, method = build_digits_model(method_name, steps, tau, width)
    step_mode = "m" if method_name in ("dsr", "ideal", "bptt", "saf-e-acc") else "s"
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    for epoch in range(epochs):
        order = torch.randperm(len(y_train), generator=generator)
        for i in range(0, len(order), batch):
            idx = order[i:i + batch]
            functional.reset_net(model)
            method.train_step(model, optimizer, _sequence(x_train[idx], steps), y_train[idx],
                              F.cross_entropy)
        if on_epoch is not None:
            on_epoch(epoch, model)
    functional.reset_net(model)
    result = {"accuracy": evaluate(model, method, x_test, y_test, steps, step_mode),
              "train_seconds": time.perf_counter() - start}
    if method_name.startswith("saf-"):
        result["to_lif"] = deployment_accuracy(model, data, steps, tau)
    return result


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
    data = load_digits_tensors()
    if quick:
        data = (data[0][:128], data[1][:128], data[2][:128], data[3][:128])
    rows = {}
    for name in methods:
        runs = [train_one(name, seed, data, steps, epochs) for seed in seeds]
        accs = [r["accuracy"] for r in runs]
        mean, std = _mean_std(accs)
        row = {"accuracies": accs, "mean": mean, "std": std,
               "train_seconds_mean": statistics.mean(r["train_seconds"] for r in runs)}
        if name.startswith("saf-"):
            lif = [r["to_lif"].get("accuracy") for r in runs]
            row["to_lif_accuracies"] = lif
            row["to_lif_mean"], row["to_lif_std"] = _mean_std(lif)
            errors = {r["to_lif"]["error"] for r in runs if "error" in r["to_lif"]}
            if errors:
                row["to_lif_error"] = errors.pop()
        rows[name] = row
        log(f"  accuracy {name}: {mean:.4f} +- {std:.4f}"
            + (f", to_lif {row['to_lif_mean']:.4f}" if row.get("to_lif_mean") is not None else ""))
    payload = {"meta": common.metadata("cpu"),
               "settings": {"data": "sklearn.datasets.load_digits, 80/20 stratified split "
                                    f"(train {len(data[1])}, test {len(data[3])})",
                            "network": "OTTTSequential(Conv 1-16, N, AvgPool, Conv 16-32, N, AvgPool, "
                                       "Flatten, Linear 128-10)",
                            "T": steps, "epochs": epochs, "batch": 64, "optimizer": "Adam(lr=2e-2)",
                            "seeds": seeds, "tau": 2.0, "encoding": "direct (image at every step)",
                            "readout": "SAF: Obar[T]; others: mean output over T; "
                                       "to_lif: lam-weighted average of the LIF outputs"},
               "methods": rows}
    common.write_json(results_dir, "accuracy", payload)
    return payload


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--results-dir", type=Path, default=common.RESULTS_DIR)
    args = parser.parse_args(argv)
    run(args.results_dir, args.quick)


if __name__ == "__main__":
    main()
