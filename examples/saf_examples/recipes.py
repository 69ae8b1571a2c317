r"""
The training recipes as data: per data set, the value of every training-script flag and where it
comes from. CIFAR-10/100: the setup of the SAF paper's experiments, which is OTTT's (Xiao et al.,
NeurIPS 2022), with the place in OTTT's public code (``pkuxmq/OTTT-SNN``, commit ``c15d5da``) of
each value. Fashion-MNIST/MNIST: SpikingJelly's Fashion-MNIST example and this project's measurements.

:func:`recipe_defaults` turns the table into parser defaults; ``cli.build_parser`` applies it in one
line, so ``python examples/train_cifar.py -data-dir ...`` trains with the paper's setup and any flag
given on the command line still wins. ``docs/examples.md`` prints the table flag by flag.

Rows whose ``flag`` is ``None`` are fixed in the code rather than set by a flag; they are listed so
that the table accounts for every part of the setup, including where this project differs.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Optional, Sequence

__all__ = ["OTTT_COMMIT", "SJ_FASHION_MNIST", "RecipeEntry", "RECIPES", "recipe_defaults", "recipe_rows"]

#: The commit of ``github.com/pkuxmq/OTTT-SNN`` the sources below were read at.
OTTT_COMMIT = "c15d5da"


class RecipeEntry(NamedTuple):
    """One part of the setup: the flag (``None``: fixed in code), its value, the source in OTTT's
    repository (``file:line``), and a note (how it is matched here, or how it differs)."""

    flag: Optional[str]
    value: Any
    source: str
    note: str = ""


_CIFAR = (
    RecipeEntry("T", 6, "train_cifar.py:38", "time steps"),
    RecipeEntry("tau", 2.0, "train_cifar.py:39", "LIF time constant (lam = 0.5)"),
    RecipeEntry("b", 128, "train_cifar.py:40", "batch size (the test batch is the same, :99)"),
    RecipeEntry("epochs", 300, "train_cifar.py:41", "epochs"),
    RecipeEntry("opt", "sgd", "train_cifar.py:52,110", "SGD"),
    RecipeEntry("lr", 0.1, "train_cifar.py:53", "learning rate; the per-step loss is averaged over T "
                "(below), so one rate serves every T, online or accumulated"),
    RecipeEntry("momentum", 0.9, "train_cifar.py:54", "SGD momentum"),
    RecipeEntry("weight_decay", 0.0, "train_cifar.py:62,110",
                "OTTT's default, which the README's commands (README.md:15,18,26) do not change"),
    RecipeEntry("loss_lambda", 0.05, "train_cifar.py:66,230-233",
                "loss (1 - 0.05) CE + 0.05 MSE(one-hot) on each step's output, divided by T: the "
                "engine's ce_mse_loss, averaged over T by Method.train_step"),
    RecipeEntry("surrogate", "sigmoid", "train_cifar.py:102", "surrogate.Sigmoid(alpha=4.)"),
    RecipeEntry("seed", 2022, "train_cifar.py:23", "the random seed"),
    RecipeEntry(None, "alpha=4", "train_cifar.py:102",
                "-alpha left unset: models.make_surrogate gives sigmoid alpha 4 (an explicit -alpha "
                "would refuse -surrogate rep)"),
    RecipeEntry(None, "cosine schedule, T_max = epochs, stepped per epoch", "train_cifar.py:55,58,284",
                "run.py: CosineAnnealingLR(T_max=args.epochs), stepped once per epoch"),
    RecipeEntry(None, "VGG-11 with weight standardisation (cfg 'A', average pooling, Scale(2.74), "
                "light classifier fc_hw=1)", "train_cifar.py:59,102; models/spiking_vgg.py:214,225,232,256",
                "the default -model ottt_spiking_vggws (SpikingJelly's cfg 'S', the same layers)"),
    RecipeEntry(None, "soft reset, decay_input=False, V_th=1, detach_reset=True",
                "modules/neuron.py:63-65; train_cifar.py:102 (v_reset=None)",
                "Method.neuron_kwargs: v_reset=None, decay_input=False, detach_reset=True; -v-threshold 1"),
    RecipeEntry(None, "gradients accumulated over the minibatch (OTTT_A); -online_update for OTTT_O",
                "train_cifar.py:67,196-248; README.md:26",
                "-method saf-e-acc is OTTT_A's twin, saf-e OTTT_O's, saf-f the paper's SAF-F"),
    RecipeEntry(None, "RandomCrop(32, padding=4), RandomHorizontalFlip", "train_cifar.py:76,78",
                "data.py: the same"),
    RecipeEntry("cutout", 16, "train_cifar.py:77 (torchtoolbox Cutout())",
                "differs: OTTT's torchtoolbox Cutout erases a random rectangle (p=0.5, 2-40 % of the "
                "area, random fill) before ToTensor; data.py's Cutout(16) zeroes a 16x16 square"),
    RecipeEntry(None, "Normalize((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010))",
                "train_cifar.py:80,85",
                "differs: data.py normalises CIFAR-10 with the standard deviations (0.2470, 0.2435, 0.2616)"),
    RecipeEntry(None, "neuron dropout 0", "train_cifar.py:60", "no dropout"),
)

#: SpikingJelly's own Fashion-MNIST example, the source of the (Fashion-)MNIST recipe.
SJ_FASHION_MNIST = "spikingjelly/activation_based/examples/conv_fashion_mnist.py"

# Neither paper trains on Fashion-MNIST: the schedule is SpikingJelly's example (its file and line in
# SpikingJelly 2.0.0), the rest what learns from the first minibatches here (docs/examples.md,
# "Fashion-MNIST and MNIST", measured with benchmarks/bench_first_minibatches.py).
_MNIST = (
    RecipeEntry("T", 4, f"{SJ_FASHION_MNIST}:83", "time steps"),
    RecipeEntry("b", 128, f"{SJ_FASHION_MNIST}:85", "batch size"),
    RecipeEntry("epochs", 64, f"{SJ_FASHION_MNIST}:86-92", "epochs, cosine schedule (:179)"),
    RecipeEntry("opt", "sgd", f"{SJ_FASHION_MNIST}:111,170-172", "SGD (the example makes -opt a choice)"),
    RecipeEntry("lr", 0.1, f"{SJ_FASHION_MNIST}:113",
                "learning rate, for every method: with the per-step loss averaged over T, SAF-E and "
                "OTTT_O take the same rate as the methods that step once per minibatch (0.1 beat "
                "0.025 for SAF-E, SAF-E-acc, SAF-F and BPTT after 100 minibatches)"),
    RecipeEntry("momentum", 0.9, f"{SJ_FASHION_MNIST}:112", "SGD momentum"),
    RecipeEntry("v_threshold", 0.5, "docs/examples.md:Fashion-MNIST and MNIST",
                "differs from every zoo default (1): at 1 the last layers of the weight-standardised "
                "VGG do not fire on one-channel images and the loss sits at chance for most of the "
                "first epoch; at 0.5 every layer fires from the first minibatch"),
    RecipeEntry("channels", 16, "docs/examples.md:Fashion-MNIST and MNIST",
                "the first layer's width (the zoo's VGG: 64, the example's CSNN: 128, :114): an "
                "epoch in minutes on a CPU; raise it on a GPU"),
    RecipeEntry(None, "ottt_spiking_vggws, LIF tau 2, soft reset, sigmoid alpha 4, "
                "0.95 CE + 0.05 MSE per step", f"{SJ_FASHION_MNIST}:17-36,268",
                "differs: the example trains a CSNN of hard-reset IF neurons with BatchNorm, "
                "MaxPool and the ATan surrogate on the MSE of the firing rate; the default model "
                "and loss here are the CIFAR recipe's"),
)

#: The recipe of each data set (CIFAR-100's README command, README.md:18, trains
#: online_spiking_vgg11f_ws, a VGG with a feedback connection that ``-model`` does not offer; the
#: table keeps the VGG-11-WS of CIFAR-10).
RECIPES: dict[str, tuple[RecipeEntry, ...]] = {"cifar10": _CIFAR, "cifar100": _CIFAR,
                                               "fashion_mnist": _MNIST, "mnist": _MNIST}


def recipe_rows(dataset: str) -> tuple[RecipeEntry, ...]:
    """The recipe of ``dataset`` (empty for a data set without one)."""
    return RECIPES.get(dataset, ())


def recipe_defaults(datasets: Sequence[str]) -> dict:
    """Parser defaults ``{dest: value}`` of the recipe shared by every one of ``datasets`` (a flag
    whose recipe value differs between them, or that one of them lacks, keeps the parser's own
    default); ``{}`` when any of them has no recipe."""
    tables = [{e.flag: e.value for e in recipe_rows(name) if e.flag is not None} for name in datasets]
    if not tables or not all(tables):
        return {}
    first = tables[0]
    return {flag: value for flag, value in first.items()
            if all(flag in table and table[flag] == value for table in tables[1:])}
