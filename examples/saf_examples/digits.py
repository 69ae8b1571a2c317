"""
The main job: SAF-E, SAF-E-acc and SAF-F next to SpikingJelly's OTTT on scikit-learn's digits.

    python examples/digits.py [-epochs 5] [-T 4] [-method saf-e saf-f ...] [-seed 0]

The 8x8 digits ship inside scikit-learn, so nothing is downloaded. Every method trains the same
small CNN (conv-neuron-avgpool twice and a linear readout, built from ``OTTTSequential`` so that
OTTT runs on it) with the same data order, schedule and seed. Each method runs in a fresh process so
that its peak memory (maximum resident set growth during training) is its own. SAF models are also
converted with :func:`spikingjelly_saf.to_lif` and evaluated as LIF networks.

The defaults are the settings of the README's digits table (T=4, 5 epochs, Adam at 2e-2, batch 64,
tau 2) for one of its five seeds; ``-method all`` runs every method of the table.
"""

from __future__ import annotations

import argparse
import copy
import math
import multiprocessing
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
from spikingjelly.activation_based import functional, layer

from . import cli, engine
from .measure import max_rss_bytes, warm_up_runtime
from .methods import ALL_METHOD_NAMES, get_method

__all__ = [
    "load_digits_tensors", "digits_cnn", "build_digits_model", "train", "build_parser", "main",
]

#: The methods the main job runs by default: SAF's three and the OTTT they are compared with.
DEFAULT_METHODS = ("saf-e", "saf-e-acc", "saf-f", "ottt-o", "ottt-a")
#: Every method of the README's digits table, in its order.
TABLE_METHODS = ("saf-e", "saf-e-acc", "saf-f", "saf-f-rep", "ottt-o", "ottt-a", "bptt", "sltt", "dsr",
                 "ideal")
#: Test images per evaluation minibatch.
EVALUATION_BATCH = 512


def load_digits_tensors(seed: int = 0):
    """A fixed stratified 80/20 split of the digits, scaled to [0, 1], images ``[N, 1, 8, 8]``."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(digits.target, dtype=torch.long)
    idx_train, idx_test = train_test_split(range(len(y)), test_size=0.2, random_state=seed,
                                           stratify=digits.target)
    return x[idx_train], y[idx_train], x[idx_test], y[idx_test]


def digits_cnn(neuron_factory, neuron_kwargs: dict, width: int = 16) -> nn.Module:
    """conv-neuron-avgpool twice, then a linear readout: every module between neurons is affine."""
    return layer.OTTTSequential(
        layer.Conv2d(1, width, 3, padding=1), neuron_factory(**copy.deepcopy(neuron_kwargs)),
        layer.AvgPool2d(2),
        layer.Conv2d(width, 2 * width, 3, padding=1), neuron_factory(**copy.deepcopy(neuron_kwargs)),
        layer.AvgPool2d(2),
        layer.Flatten(1),
        layer.Linear(2 * width * 4, 10),
    )


def build_digits_model(method_name: str, tau: float = 2.0, width: int = 16, steps: int = None):
    """``(model, method)``: the digits CNN with the method's neuron, in the method's step mode.

    ``steps`` is needed by methods whose neuron is built for a fixed number of steps (DSR)."""
    method = get_method(method_name)
    model = digits_cnn(method.neuron_type, method.neuron_kwargs(tau=tau, steps=steps), width)
    return method.prepare(model), method


def train(method_name: str, seed: int, data, steps: int = 4, epochs: int = 5, tau: float = 2.0,
          batch: int = 64, lr: float = 2e-2, width: int = 16, on_epoch=None,
          build=None) -> dict:
    """Train one method from one seed with Adam and a cosine schedule; returns its measurements.

    Training, evaluation and the LIF deployment check are the engine's (:mod:`saf_examples.engine`).
    ``build(method_name, tau, width) -> (model, method)`` makes the model; by default
    :func:`build_digits_model`, which builds every method of :mod:`saf_examples.methods`.
    """
    torch.manual_seed(seed)
    x_train, y_train, x_test, y_test = data
    if build is None:
        model, method = build_digits_model(method_name, tau, width, steps=steps)
    else:
        model, method = build(method_name, tau, width)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    batches_per_epoch = math.ceil(len(y_train) / batch)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs * batches_per_epoch)
    generator = torch.Generator().manual_seed(seed)
    warm_up_runtime()
    rss_before = max_rss_bytes()
    epoch_seconds = []
    for epoch in range(epochs):
        result = engine.train_one_epoch(model, method, optimizer,
                                        engine.tensor_batches(x_train, y_train, batch, generator),
                                        F.cross_entropy, steps=steps,
                                        on_minibatch=lambda *_: scheduler.step())
        epoch_seconds.append(result.seconds)
        if on_epoch is not None:
            on_epoch(epoch, model)
    training_peak = max(max_rss_bytes() - rss_before, 0)  # before evaluation's larger batches
    test_batches = list(engine.tensor_batches(x_test, y_test, EVALUATION_BATCH))
    evaluation = engine.evaluate(model, method, test_batches, F.cross_entropy, steps=steps,
                                 check_health=False, keep_predictions=method.deploys_to_lif)
    result = {
        "method": method_name,
        "accuracy": evaluation.accuracy,
        "epoch_seconds": sum(epoch_seconds) / len(epoch_seconds),
        "peak_memory_growth_bytes": training_peak,
    }
    if method.deploys_to_lif:
        deployment = engine.check_deployment(model, method, test_batches, F.cross_entropy,
                                             steps=steps, saf_predictions=evaluation.predictions)
        result["to_lif_accuracy"] = deployment.accuracy
        result["to_lif_mismatches"] = deployment.mismatches
    model.train()
    return result


def _train_in_child(queue, kwargs):
    torch.set_num_threads(kwargs.pop("threads"))
    try:
        queue.put(train(data=load_digits_tensors(), **kwargs))
    except BaseException as error:  # the parent reports it with the method's name
        queue.put({"method": kwargs["method_name"], "error": repr(error)})


def train_in_fresh_process(**kwargs) -> dict:
    """:func:`train` in a new process, so that its peak memory is not shared with other methods."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    kwargs.setdefault("threads", torch.get_num_threads())
    process = context.Process(target=_train_in_child, args=(queue, kwargs))
    process.start()
    result = queue.get()
    process.join()
    return result


def _format_row(result: dict) -> str:
    if "error" in result:
        return f"{result['method']:<10} failed: {result['error']}"
    deploy = result.get("to_lif_accuracy")
    return (f"{result['method']:<10} {100 * result['accuracy']:>8.2f}% "
            f"{'' if deploy is None else f'{100 * deploy:.2f}%':>10} "
            f"{result['epoch_seconds']:>9.2f} s {result['peak_memory_growth_bytes'] / 2**20:>9.1f} MiB")


def _method_list(values) -> list:
    names = []
    for value in values:
        names += [name.strip() for name in value.split(",") if name.strip()]
    return list(TABLE_METHODS) if names == ["all"] else names


def build_parser() -> argparse.ArgumentParser:
    """The main job's flags, in the examples' single-dash style."""
    parser = cli.OneLineErrorParser(
        prog="python examples/digits.py", description=__doc__.strip().splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        epilog="The README's digits table uses these settings with seeds 0-4 "
               "(python -m benchmarks --only accuracy).")
    parser.add_argument("-method", nargs="+", default=list(DEFAULT_METHODS), metavar="METHOD",
                        help=f"methods to train, space- or comma-separated, from "
                             f"{', '.join(ALL_METHOD_NAMES)}; 'all' for every method of the README table")
    parser.add_argument("-T", type=cli.positive_int, default=4, help="time steps")
    parser.add_argument("-epochs", type=cli.positive_int, default=5, help="epochs per method")
    parser.add_argument("-seed", type=cli.seed, default=0, help="seed of weights and data order")
    parser.add_argument("-tau", type=cli.tau, default=2.0, help="membrane time constant")
    parser.add_argument("-lr", type=cli.positive_float, default=2e-2,
                        help="Adam learning rate (cosine schedule)")
    parser.add_argument("-b", type=cli.positive_int, default=64, help="batch size")
    parser.add_argument("-threads", type=cli.positive_int, default=1,
                        help="CPU threads per method; this network is so small that more threads "
                             "mostly wait on each other (many times slower on a busy machine)")
    return parser


def main(argv=None) -> int:
    """Run the main job; returns the exit status (2 for bad flags, 1 when a method failed)."""
    cli.escape_unencodable_output()
    parser = build_parser()
    args = parser.parse_args(argv)
    methods = _method_list(args.method)
    for name in methods:
        if name not in ALL_METHOD_NAMES:
            parser.error(f"argument -method: {name!r} is unknown; choose from "
                         f"{', '.join(ALL_METHOD_NAMES)} or all")
    if not methods:
        parser.error("argument -method: give at least one method")
    for name in methods:
        try:
            get_method(name).check_neuron_arguments(args.tau)
        except ValueError as error:
            parser.error(f"argument -tau: {error}")

    print(f"digits (scikit-learn), T={args.T}, tau={args.tau}, {args.epochs} epochs, seed {args.seed}, "
          f"Adam lr {args.lr}, batch {args.b}, {args.threads} CPU thread(s) per method")
    print(f"{'method':<10} {'test acc':>9} {'to_lif acc':>10} {'epoch time':>11} {'peak memory':>13}")
    failed = False
    for name in methods:
        result = train_in_fresh_process(method_name=name, seed=args.seed, steps=args.T,
                                        epochs=args.epochs, tau=args.tau, lr=args.lr, batch=args.b,
                                        threads=args.threads)
        failed |= "error" in result
        print(_format_row(result), flush=True)
    print("peak memory: growth of the process's maximum resident set during training.")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
