"""How closely each online gradient follows the exact gradient of its own objective, on the
Fashion-MNIST CSNN of ``bench_fashion_mnist``: SAF-F's against BPTT on SAF-F's objective
(``bptt-final``), and SAF-E-acc's (OTTT_A's gradient, Theorem 2) against BPTT on OTTT's objective
(``bptt-every-step``).

    # 3 seeds, measured at 0, 100 and 468 minibatches (one epoch) of training: minutes on 2 cores
    python -m benchmarks.bench_gradient_alignment
    python -m benchmarks.bench_fashion_mnist --replot --tag fashion_mnist_T6   # the docs tables

The SAF network runs with BatchNorm frozen (eval mode: a fixed affine map), so that it and its
``to_lif`` twin compute the same spikes and differ only in how the gradient is formed. At each
checkpoint every method computes its gradient of the same weights on the same held-out minibatches
(nothing is updated); the cosine between two methods' gradients is reported per synaptic layer
(a scale-free measure: SAF's gradient of a layer fed by the direct-encoded input is c[t] times
OTTT's, so the layers' relative sizes differ between methods by design). Between checkpoints the SAF network trains with SAF-E-acc (Adam). The Obar[T] loss
reaches the layers through step T alone, so SAF-F's gradient weights every neuron by the surrogate
slope of its last step; ``starved_fraction`` counts, per neuron layer, the neurons whose slope at
step T is below a tenth of their mean slope over the T steps: neurons OTTT_A trains and SAF-F
barely does. Results: ``gradient_alignment.json`` and
``gradient_alignment.png`` in ``benchmarks/results``.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn
from spikingjelly.activation_based import functional, neuron

from spikingjelly_saf import to_lif
from saf_examples.methods import get_method

from . import common
from .bench_fashion_mnist import build_csnn, load_data, mse_one_hot, set_training, to_input_seq

#: (online method, the exact gradient of its objective).
PAIRS = (("saf-f", "bptt-final"), ("saf-e-acc", "bptt-every-step"), ("bptt-final", "bptt-every-step"))
#: Methods whose gradient is taken on the SAF network; the others on its to_lif twin.
ON_SAF = ("saf-f", "saf-e-acc")
LAYERS = ("conv1", "conv2", "fc1", "fc2")


def synaptic_weights(model: nn.Module) -> list[torch.Tensor]:
    """The weights of the CSNN's four synaptic layers, in order."""
    return [m.weight for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def gradient_of(method_name: str, model: nn.Module, x_seq: torch.Tensor, target: torch.Tensor
                ) -> list[torch.Tensor]:
    """``method_name``'s gradient of the synaptic weights on one minibatch; the weights stay as
    they are (SGD with learning rate 0)."""
    method = get_method(method_name)
    method.prepare(model)
    functional.reset_net(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    method.train_step(model, optimizer, x_seq, target, mse_one_hot)
    functional.reset_net(model)
    return [w.grad.detach().clone() for w in synaptic_weights(model)]


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.flatten().double(), b.flatten().double()
    norm = a.norm() * b.norm()
    return float(a @ b / norm) if norm > 0 else float("nan")


def starved_fraction(lif: nn.Module, x_seq: torch.Tensor) -> list[float]:
    """Per neuron layer of the LIF twin: the fraction of neurons whose surrogate slope at step T is
    below a tenth of their mean slope over the T steps. SAF-F's gradient reaches a neuron through
    its slope at step T alone; OTTT_A's through the slopes of every step."""
    nodes = [m for m in lif.modules() if isinstance(m, neuron.LIFNode)]
    records = {id(node): [] for node in nodes}

    def record(node, inputs, output):
        # The membrane before firing, H[t] - V_th, what the surrogate is applied to: the soft reset
        # left v[t] = H[t] - V_th S[t].
        records[id(node)].append(node.v_seq.detach() + node.v_threshold * output.detach()
                                 - node.v_threshold)

    hooks = []
    for node in nodes:
        node.store_v_seq = True
        hooks.append(node.register_forward_hook(record))
    try:
        functional.set_step_mode(lif, "m")
        functional.reset_net(lif)
        with torch.no_grad():
            lif(x_seq.transpose(0, 1).contiguous())
    finally:
        for hook in hooks:
            hook.remove()
        for node in nodes:
            node.store_v_seq = False
        functional.reset_net(lif)
    fractions = []
    for node in nodes:
        slope = surrogate_slope(node.surrogate_function, records[id(node)][0])
        fractions.append(float((slope[-1] < 0.1 * slope.mean(0)).double().mean()))
    return fractions


def surrogate_slope(surrogate_function, x: torch.Tensor) -> torch.Tensor:
    """``sg'(x)`` elementwise, from the surrogate object's own backward."""
    x = x.detach().requires_grad_()
    with torch.enable_grad():
        surrogate_function(x).sum().backward()
    return x.grad


def measure(model: nn.Module, batches: list) -> dict:
    """Cosines of :data:`PAIRS` per layer and over all layers, and the starved fractions, each a list
    over ``batches``."""
    lif = set_training(to_lif(model), "frozen")
    result = {f"{a} vs {b}": {layer: [] for layer in LAYERS} for a, b in PAIRS}
    result["starved_fraction"] = {layer: [] for layer in LAYERS}
    for x_seq, target in batches:
        grads = {name: gradient_of(name, model if name in ON_SAF else lif, x_seq, target)
                 for name in {n for pair in PAIRS for n in pair}}
        for a, b in PAIRS:
            cell = result[f"{a} vs {b}"]
            for layer, ga, gb in zip(LAYERS, grads[a], grads[b]):
                cell[layer].append(cosine(ga, gb))
        for layer, fraction in zip(LAYERS, starved_fraction(lif, x_seq)):
            result["starved_fraction"][layer].append(fraction)
    return result


def run_seed(seed: int, cfg: dict) -> dict:
    """Train the SAF CSNN with SAF-E-acc from ``seed``, measuring at every checkpoint."""
    x_train, y_train, x_test, y_test = load_data(cfg["data_root"], cfg["train_subset"], 0)
    torch.manual_seed(seed)
    model, _ = build_csnn("saf-e-acc", cfg["channels"], cfg["tau"])
    set_training(model, "frozen")
    batch, steps = cfg["batch"], cfg["T"]
    held_out = [(to_input_seq(x_test[k * batch:(k + 1) * batch], steps, torch.device("cpu")),
                 y_test[k * batch:(k + 1) * batch]) for k in range(cfg["measure_batches"])]
    trainer = get_method("saf-e-acc")
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg["lr"])
    order = torch.randperm(len(y_train), generator=torch.Generator().manual_seed(seed))
    points, trained = [], 0
    for checkpoint in cfg["checkpoints"]:
        trainer.prepare(model)  # measure() leaves the model in the last measured method's step mode
        while trained < checkpoint:
            index = order[(trained * batch) % len(order):][:batch]
            functional.reset_net(model)
            trainer.train_step(model, optimizer, to_input_seq(x_train[index], steps, torch.device("cpu")),
                               y_train[index], mse_one_hot)
            trained += 1
        points.append({"minibatches": checkpoint, **measure(model, held_out)})
    return {"seed": seed, "points": points}


def summarize(runs: list) -> dict:
    """Mean and std over seeds and minibatches, per checkpoint, comparison and layer; a cosine is
    undefined (NaN) where a gradient is zero (a layer whose input is silent), and such values are
    counted apart (``undefined``)."""
    summary = {}
    for k, point in enumerate(runs[0]["points"]):
        cell = {}
        for key, layers in point.items():
            if key == "minibatches":
                continue
            cell[key] = {}
            for layer in LAYERS:
                values = [v for run in runs for v in run["points"][k][key][layer]]
                finite = [v for v in values if math.isfinite(v)]
                cell[key][layer] = {
                    "mean": statistics.mean(finite) if finite else None,
                    "std": statistics.stdev(finite) if len(finite) > 1 else 0.0,
                    "undefined": len(values) - len(finite)}
        summary[str(point["minibatches"])] = cell
    return summary


def plot(results_dir: Path, tag: str, payload: dict) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = payload["summary"]
    checkpoints = list(summary)
    fig, axes = plt.subplots(1, len(checkpoints), figsize=(4.6 * len(checkpoints), 4), squeeze=False,
                             sharey=True)
    colors = plt.get_cmap("tab10").colors
    width = 0.8 / len(PAIRS)
    for ax, checkpoint in zip(axes[0], checkpoints):
        for i, (a, b) in enumerate(PAIRS):
            cell = summary[checkpoint][f"{a} vs {b}"]
            ax.bar([x + i * width for x in range(len(LAYERS))],
                   [cell[l]["mean"] if cell[l]["mean"] is not None else float("nan") for l in LAYERS],
                   width, yerr=[cell[l]["std"] for l in LAYERS], capsize=2, color=colors[i],
                   label=f"{a} vs {b}")
            ax.set_xticks([x + width for x in range(len(LAYERS))], LAYERS)
        for x, layer in enumerate(LAYERS):
            if all(summary[checkpoint][f"{a} vs {b}"][layer]["mean"] is None for a, b in PAIRS):
                ax.text(x + width, 0.5, "gradient zero\n(silent input)", ha="center", fontsize=7,
                        transform=ax.get_xaxis_transform())
        ax.set_title(f"after {checkpoint} minibatches of SAF-E-acc", fontsize=9)
        ax.set_xlabel("synaptic layer")
        ax.grid(True, axis="y", alpha=0.3)
    lows = [cell[layer]["mean"] - cell[layer]["std"] for point in summary.values()
            for key, cell in point.items() if key != "starved_fraction" for layer in LAYERS
            if cell[layer]["mean"] is not None]
    axes[0][0].set_ylim(max(0.0, min(lows, default=0.0) - 0.02), 1.005)
    axes[0][0].set_ylabel("cosine between the two gradients")
    axes[0][0].legend(fontsize=7, loc="lower left")
    s, meta = payload["settings"], payload["meta"]
    fig.suptitle(f"Gradient alignment, Fashion-MNIST CSNN C={s['channels']}, T={s['T']}, "
                 f"tau={s['tau']}, BatchNorm frozen, seeds {s['seeds']}", fontsize=10)
    fig.text(0.01, 0.01, f"{meta['device']} ({meta['cpu_model']}), {meta['date_utc']}", fontsize=6)
    fig.tight_layout(rect=(0, 0.03, 1, 0.95))
    return common.save_figure(fig, results_dir / f"{tag}.png", dpi=110)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_gradient_alignment",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=common.seed_list, default="0,1,2")
    parser.add_argument("--checkpoints", type=common.non_negative_int_list, default="0,100,468",
                        help="minibatches of SAF-E-acc training before each measurement, increasing")
    parser.add_argument("--measure-batches", type=common.positive_int, default=4,
                        help="held-out test minibatches each gradient is measured on")
    parser.add_argument("--channels", type=common.positive_int, default=16)
    parser.add_argument("-T", "--steps", type=common.positive_int, default=6, dest="T")
    parser.add_argument("--tau", type=float, default=2.0)
    parser.add_argument("--batch", type=common.positive_int, default=128)
    parser.add_argument("--lr", type=common.positive_float, default=1e-2, help="Adam, constant")
    parser.add_argument("--train-subset", type=common.non_negative_int, default=0,
                        help="first N training images (0: all 60000)")
    parser.add_argument("--data-root", default=None,
                        help="folder with the Fashion-MNIST idx files (also searched: "
                             "/usr/share/datasets/fashion-mnist)")
    parser.add_argument("--threads", type=common.non_negative_int, default=0,
                        help="torch threads (0: torch's default)")
    parser.add_argument("--tag", type=common.file_stem, default="gradient_alignment")
    parser.add_argument("--results-dir", type=Path, default=None)
    parser.add_argument("--replot", action="store_true",
                        help="measure nothing: rebuild the summary and plot from <tag>.json")
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.replot:
        results_dir = common.results_dir_arg(parser, args.results_dir)

        def rebuild(payload):
            payload["summary"] = summarize(payload["runs"])
            common.write_json(results_dir, args.tag, payload)
            plot(results_dir, args.tag, payload)

        common.build_from(parser, results_dir, args.tag, rebuild)
        return 0
    if not args.tau > 1:
        parser.error(f"--tau: LIF needs tau > 1, got {args.tau}.")
    if args.checkpoints != sorted(set(args.checkpoints)):
        parser.error(f"--checkpoints: must increase, got {args.checkpoints}.")
    from saf_examples.idx import IdxDataMissing, IdxFormatError

    try:
        x_test = load_data(args.data_root, 1, 0)[2]
    except (IdxDataMissing, IdxFormatError) as error:
        parser.error(str(error))
    if args.measure_batches * args.batch > len(x_test):
        parser.error(f"--measure-batches {args.measure_batches} x --batch {args.batch} exceeds the "
                     f"{len(x_test)} test images.")
    results_dir = common.results_dir_arg(parser, args.results_dir)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = {"data_root": args.data_root, "train_subset": args.train_subset, "channels": args.channels,
           "tau": args.tau, "T": args.T, "batch": args.batch, "lr": args.lr,
           "checkpoints": args.checkpoints, "measure_batches": args.measure_batches}
    start = time.perf_counter()
    runs = []
    for seed in args.seeds:
        runs.append(run_seed(seed, cfg))
        print(f"[{time.perf_counter() - start:6.1f} s] seed {seed} done", flush=True)
    payload = {"meta": common.metadata("cpu"),
               "settings": {**cfg, "seeds": args.seeds, "batchnorm": "frozen (eval mode throughout)",
                            "training": "SAF-E-acc, Adam with a constant learning rate, MSE to one-hot",
                            "gradients": "each method's gradient of the same weights on the same "
                                         "held-out test minibatches (SGD with lr 0); SAF-F and "
                                         "SAF-E-acc on the SAF network, BPTT on its to_lif twin",
                            "starved_fraction": "per neuron layer of the LIF twin, the fraction of "
                                                "neurons whose surrogate slope at step T is below a "
                                                "tenth of their mean slope over the T steps"},
               "wall_seconds": time.perf_counter() - start, "runs": runs, "summary": summarize(runs)}
    common.write_json(results_dir, args.tag, payload)
    plot(results_dir, args.tag, payload)
    for checkpoint, cell in payload["summary"].items():
        print(f"after {checkpoint} minibatches: " + "; ".join(
            f"{key} " + "/".join("-" if value[layer]["mean"] is None else f"{value[layer]['mean']:.3f}"
                                 for layer in LAYERS) for key, value in cell.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
