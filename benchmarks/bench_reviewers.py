"""The questions the paper's reviewers asked, answered with measurements.

(a) How far is Abar[T] from the Spike Representation mapping clamp(s I / V_th, 0, 1), as a
    function of T and lam? Since Abar[T] = I/V_th - V[T]/(V_th c[T]) for a constant input I,
    the error is |V[T]| / (V_th c[T]) outside saturation; for lam < 1, c[T] -> 1/(1-lam), so the
    error does not vanish as T grows. Only lam = 1 (IF, c[T] = T) converges, like 1/T.
(b) SAF's accuracy on digits as a function of T and tau.
(c) Why SAF's and OTTT's firing rates differ although the gradients match: both start from the
    same weights and produce identical spikes, then the per-layer firing rates are tracked over
    training, together with the distance between the two models' weights.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from spikingjelly.activation_based import functional, neuron, surrogate

from saf_examples import digits
from spikingjelly_saf import SAFNode
from spikingjelly_saf import functional as saf_functional
from spikingjelly_saf import gradients

from . import bench_accuracy, common


# (a) ------------------------------------------------------------------------------------------


def representation_error(decay: float, steps_list: list[int], samples: int = 20000,
                         v_threshold: float = 1.0) -> dict:
    """Mean and max |Abar[T] - clamp(I/V_th, 0, 1)| for constant inputs I ~ U(-0.5, 1.5) V_th."""
    generator = torch.Generator().manual_seed(0)
    current = (torch.rand(samples, generator=generator, dtype=torch.float64) * 2.0 - 0.5) * v_threshold
    target = saf_functional.representation_mapping(current, v_threshold, 1.0)
    params = saf_functional.SAFParameters(decay, v_threshold)
    state = saf_functional.SAFState()
    mean_error, max_error = {}, {}
    for t in range(1, max(steps_list) + 1):
        abar, state = gradients.step(current, state, params, surrogate.Sigmoid())
        if t in steps_list:
            error = (abar - target).abs()
            mean_error[t], max_error[t] = error.mean().item(), error.max().item()
    limit = 1.0 - decay  # 1 / c[inf] for lam < 1
    return {"mean": mean_error, "max": max_error, "c_T_limit_inverse": limit}


# (b) ------------------------------------------------------------------------------------------


def accuracy_grid(taus, steps_list, seeds, epochs, data, log=print) -> dict:
    grid = {}
    for tau in taus:
        for steps in steps_list:
            accs, lif = [], []
            for seed in seeds:
                result = bench_accuracy.train_one("saf-e", seed, data, steps, epochs, tau=tau)
                accs.append(result["accuracy"])
                lif.append(result["to_lif_accuracy"])
            grid[f"tau={tau},T={steps}"] = {"tau": tau, "T": steps, "accuracies": accs,
                                            "mean": sum(accs) / len(accs), "to_lif": lif}
            log(f"  reviewers (b) tau={tau} T={steps}: {sum(accs) / len(accs):.4f}")
    return grid


# (c) ------------------------------------------------------------------------------------------


def firing_rates(model, x, steps: int, node_type) -> list[float]:
    """Mean spikes per neuron and step of every spiking layer, in eval mode (identical spikes)."""
    sums = []
    handles = []
    nodes = [m for m in model.modules() if isinstance(m, node_type)]
    for index, node in enumerate(nodes):
        sums.append(0.0)
        target = node.spikes if isinstance(node, SAFNode) else node

        def hook(_module, _inputs, output, index=index):
            spikes = output[0] if isinstance(output, (list, tuple)) else output
            sums[index] += spikes.float().mean().item()

        handles.append(target.register_forward_hook(hook))
    model.eval()
    functional.reset_net(model)
    with torch.no_grad():
        for _ in range(steps):
            model(x)
    functional.reset_net(model)
    model.train()
    for handle in handles:
        handle.remove()
    return [s / steps for s in sums]


def weight_vector(model) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def firing_rate_race(data, steps: int, epochs: int, seed: int = 0) -> dict:
    """SAF-E and OTTT_O from identical weights; per-layer firing rates and weight distance per epoch."""
    x_probe = data[2]
    histories = {}
    weights = {}
    initial = {}
    for name, node_type in (("saf-e", SAFNode), ("ottt-o", neuron.OTTTLIFNode)):
        history = []

        def record(epoch, model, history=history, node_type=node_type, name=name):
            history.append(firing_rates(model, x_probe, steps, node_type))
            weights.setdefault(name, []).append(weight_vector(model))

        torch.manual_seed(seed)
        model, _ = bench_accuracy.build_digits_model(name, steps)
        initial[name] = weight_vector(model)
        history.append(firing_rates(model, x_probe, steps, node_type))
        weights.setdefault(name, []).append(initial[name])
        result = bench_accuracy.train_one(name, seed, data, steps, epochs, on_epoch=record)
        histories[name] = {"firing_rates_per_epoch": history, "accuracy": result["accuracy"]}
    distance = [(a - b).norm().item() / max(b.norm().item(), 1e-12)
                for a, b in zip(weights["saf-e"], weights["ottt-o"])]
    return {"same_initial_weights": bool(torch.equal(initial["saf-e"], initial["ottt-o"])),
            "relative_weight_distance_per_epoch": distance, **histories}


# ----------------------------------------------------------------------------------------------


def run(results_dir: Path, quick: bool = False, log=print) -> dict:
    torch.set_num_threads(1)
    decays = [0.0, 0.5, 0.75, 0.9, 1.0]
    steps_a = [1, 2, 4, 8, 16, 32, 64, 128]
    part_a = {str(lam): representation_error(lam, steps_a, samples=2000 if quick else 20000)
              for lam in decays}
    data = digits.load_digits_tensors()
    if quick:
        data = (data[0][:128], data[1][:128], data[2][:64], data[3][:64])
    taus = [2.0] if quick else [1.0, 2.0, 4.0, math.inf]
    steps_b = [1, 2] if quick else [1, 2, 4, 8]
    seeds = [0] if quick else [0, 1]
    epochs = 1 if quick else 4
    part_b = accuracy_grid(taus, steps_b, seeds, epochs, data, log)
    part_c = firing_rate_race(data, 2 if quick else 4, 1 if quick else 5)
    payload = {
        "meta": common.metadata("cpu"),
        "settings": {
            "a": "constant input I ~ U(-0.5, 1.5) V_th, V_th=1, float64; error |Abar[T] - clamp(I/V_th,0,1)|",
            "b": f"SAF-E on digits, taus {taus}, T {steps_b}, seeds {seeds}, epochs {epochs}",
            "c": "SAF-E vs OTTT_O on digits from identical weights, T=4; firing rates on the test "
                 "set in eval mode after each epoch",
        },
        "a_representation_error": part_a,
        "b_accuracy_vs_T_tau": part_b,
        "c_firing_rates": part_c,
    }
    common.write_json(results_dir, "reviewers", payload)
    plot(results_dir, payload)
    return payload


def plot(results_dir: Path, payload: dict) -> None:
    part_a = payload["a_representation_error"]
    series = {f"lam={lam} (mean)": ([int(t) for t in v["mean"]], list(v["mean"].values()))
              for lam, v in part_a.items()}
    common.plot_lines(results_dir / "reviewers_a_representation_error.png", series, "T",
                      "mean |Abar[T] - clamp(I/V_th, 0, 1)|",
                      "(a) distance of SAF's Abar[T] from the Spike Representation mapping",
                      logx=True, logy=True,
                      note="error = |V[T]| / (V_th c[T]) outside saturation; c[T] -> 1/(1-lam) for lam<1")
    grid = payload["b_accuracy_vs_T_tau"]
    series = {}
    for cell in grid.values():
        xs, ys = series.setdefault(f"tau={cell['tau']}", ([], []))
        xs.append(cell["T"])
        ys.append(cell["mean"])
    common.plot_lines(results_dir / "reviewers_b_accuracy_T_tau.png", series, "T",
                      "test accuracy (digits)", "(b) SAF-E accuracy vs T and tau", logx=True)
    part_c = payload["c_firing_rates"]
    series = {}
    for name in ("saf-e", "ottt-o"):
        history = part_c[name]["firing_rates_per_epoch"]
        for layer_index in range(len(history[0])):
            series[f"{name} layer {layer_index + 1}"] = (list(range(len(history))),
                                                         [h[layer_index] for h in history])
    common.plot_lines(results_dir / "reviewers_c_firing_rates.png", series, "epoch",
                      "firing rate (spikes per neuron per step)",
                      "(c) SAF-E vs OTTT_O firing rates from identical weights",
                      note="relative weight distance per epoch: "
                           + ", ".join(f"{d:.3f}" for d in part_c["relative_weight_distance_per_epoch"]))


def main(argv=None) -> int:
    return common.suite_main(run, __doc__, argv)


if __name__ == "__main__":
    main()
