r"""
Command-line flags. The first group is SpikingJelly's own example flags (``-T -device -b -epochs -j
-data-dir -out-dir -resume -amp -opt -momentum -lr``); the rest choose the method, the neuron and
the run's bookkeeping.

Every value is checked while the flags are parsed, so that a bad one ends the script with one
``error: argument -X: ...`` line and exit status 2 before anything is built or written. A script
shows only the flags of its own data sets (``-cutout`` only for CIFAR, ``-train-split`` only for
CIFAR10-DVS, ``-download`` only where something can be downloaded).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
from typing import Optional, Sequence

import torch

from spikingjelly_saf import backends
from .methods import METHOD_NAMES, get_method
from .models import SURROGATES, takes_width
from .recipes import recipe_defaults
from .rundir import add_run_flags

__all__ = ["build_parser", "DEFAULT_MODELS", "DATASET_FLAGS", "TrainingArguments", "BACKENDS",
           "INJECT_NAN_EPOCH_ENV"]

#: The model each dataset trains when ``-model`` is not given.
DEFAULT_MODELS = {
    "cifar10": "ottt_spiking_vggws",
    "cifar100": "ottt_spiking_vggws",
    "fashion_mnist": "ottt_spiking_vggws",
    "mnist": "ottt_spiking_vggws",
    "dvs128_gesture": "DVSGestureNet",
    "cifar10_dvs": "CIFAR10DVSNet",
}

#: The data-set flags and the data sets they apply to; a script shows a flag only when one of its
#: data sets uses it.
DATASET_FLAGS = {
    "cutout": ("cifar10", "cifar100"),
    "download": ("cifar10", "cifar100", "fashion_mnist", "mnist", "cifar10_dvs"),
    "train_split": ("cifar10_dvs",),
}

#: The value a data-set flag has in a script that does not show it (the data set ignores it).
_ABSENT_FLAG_VALUES = {"cutout": 0, "download": False, "train_split": 0.9}

#: Fault injection for the trainer's tests: the first process's loss becomes NaN in this epoch
#: (0-based). An environment variable rather than a flag, so that no run records it in args.json.
INJECT_NAN_EPOCH_ENV = "SPIKINGJELLY_SAF_INJECT_NAN_EPOCH"

#: ``-backend`` choices: every SAFNode backend of the registry (the torch step and the fused
#: multi-step kernels), so that a registered backend is a choice without a change here.
BACKENDS = tuple(backends.SUPPORTED_BACKENDS["m"])


class TrainingArguments(argparse.Namespace):
    """The parsed flags of a training script.

    ``vars(args)`` holds exactly the flags the script shows, so that ``args.json`` records nothing
    hidden; a data-set flag the script does not show still reads as the value its data sets ignore.
    """

    def __getattr__(self, name: str):
        # Only called for attributes that are not set.
        if name in _ABSENT_FLAG_VALUES:
            return _ABSENT_FLAG_VALUES[name]
        if name == "inject_nan_epoch":
            value = os.environ.get(INJECT_NAN_EPOCH_ENV, "")
            return int(value) if value.strip() else None
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")


# ---- value checks (argparse turns ArgumentTypeError into "error: argument -X: ...", exit 2) ------
def _number(text: str, kind=float):
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None


#: The largest integer a count flag takes: C's int, which PyTorch's kernels and shapes index with;
#: a larger -T, -b or -epochs could never finish anyway.
MAX_COUNT = 2**31 - 1
#: The model's tensors are float32: a value above its largest finite number becomes inf there, and
#: a positive value below its smallest normal number becomes 0 (or loses its precision).
FLOAT32_MAX = float(torch.finfo(torch.float32).max)
FLOAT32_TINY = float(torch.finfo(torch.float32).tiny)


def _count(value: int) -> int:
    if value > MAX_COUNT:
        raise argparse.ArgumentTypeError(f"{value} is too large (at most 2**31 - 1 = {MAX_COUNT})")
    return value


def positive_int(text: str) -> int:
    value = _number(text, int)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be a positive integer (1 or more)")
    return _count(value)


def _non_negative_int(text: str) -> int:
    value = _number(text, int)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} must be 0 or more")
    return _count(value)


def _float32_range(text: str, value: float) -> float:
    """Refuse a nonzero value that float32 turns into inf or 0."""
    if abs(value) > FLOAT32_MAX:
        raise argparse.ArgumentTypeError(
            f"{text} is above float32's largest number ({FLOAT32_MAX:.4g}); the model's float32 "
            "tensors would hold inf")
    if 0.0 < abs(value) < FLOAT32_TINY:
        raise argparse.ArgumentTypeError(
            f"{text} is below float32's smallest normal number ({FLOAT32_TINY:.4g}); the model's "
            "float32 tensors would hold 0 or lose its precision")
    return value


def positive_float(text: str) -> float:
    value = _number(text)
    if not (math.isfinite(value) and value > 0.0):
        raise argparse.ArgumentTypeError(f"{text} must be a finite number above 0")
    return _float32_range(text, value)


def _non_negative_float(text: str) -> float:
    value = _number(text)
    if not (math.isfinite(value) and value >= 0.0):
        raise argparse.ArgumentTypeError(f"{text} must be a finite number, 0 or more")
    return _float32_range(text, value)


def _momentum(text: str) -> float:
    value = _non_negative_float(text)
    if value >= 1.0:
        raise argparse.ArgumentTypeError(
            f"{text} must lie in [0, 1): SGD's momentum keeps that fraction of the last update, and "
            "1 or more makes the updates grow without end (0.9 is usual)")
    return value


def tau(text: str) -> float:
    value = _number(text)
    # inf is SAF's IF neuron (no leak); the lower bound depends on the method and is checked later.
    if math.isnan(value) or value <= 0.0:
        raise argparse.ArgumentTypeError(f"{text} must be a number above 0 (inf for no leak)")
    if math.isfinite(value) and value > FLOAT32_MAX:
        raise argparse.ArgumentTypeError(
            f"{text} is above float32's largest number ({FLOAT32_MAX:.4g}); give inf for no leak")
    return value


#: Linux's limits on a file name (one path component) and a whole path, in bytes.
NAME_MAX, PATH_MAX = 255, 4095


def _path(text: str) -> str:
    """A file or folder path: not empty, and within the system's limits, so that a bad one is a
    message here rather than an error from the file system later."""
    if not text.strip():
        raise argparse.ArgumentTypeError(
            "an empty path; give a folder or file (drop the flag for its default)")
    if "\0" in text:
        raise argparse.ArgumentTypeError(f"{text!r} contains a NUL character")
    encoded = os.fsencode(text)
    if len(encoded) > PATH_MAX:
        raise argparse.ArgumentTypeError(
            f"the path is {len(encoded)} bytes long; the system takes at most {PATH_MAX}")
    for part in encoded.split(b"/"):
        if len(part) > NAME_MAX:
            raise argparse.ArgumentTypeError(
                f"the path component {os.fsdecode(part[:40])}... is {len(part)} bytes long; the "
                f"system takes at most {NAME_MAX} bytes per file or folder name")
    return text


def _fraction(text: str) -> float:
    value = _number(text)
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"{text} must lie strictly between 0 and 1")
    return value


def _unit_interval(text: str) -> float:
    value = _number(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} must lie in [0, 1]")
    return value


def seed(text: str) -> int:
    value = _number(text, int)
    # NumPy's legacy seeding, which every run uses, takes 0 .. 2**32 - 1.
    if not 0 <= value <= 2**32 - 1:
        raise argparse.ArgumentTypeError(f"{value} must lie in 0 .. 2**32 - 1 = {2**32 - 1}")
    return value


def _model_name(text: str) -> str:
    # The name is used in the default output folder: nothing that could leave it.
    if not text or any(sep in text for sep in ("/", "\\", os.sep)) or text in (".", ".."):
        raise argparse.ArgumentTypeError(f"{text!r} is not a model name (no path separators)")
    return text


def _device(text: str) -> str:
    try:
        device = torch.device(text)
    except RuntimeError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a device; use cpu, cuda or cuda:N") from None
    if device.type == "cpu":
        return text
    if device.type != "cuda":
        raise argparse.ArgumentTypeError(
            f"{text!r}: training runs on cpu or cuda"
            + (" (a meta tensor holds no data)" if device.type == "meta" else ""))
    if not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(f"{text!r}: no CUDA device is available; use -device cpu")
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise argparse.ArgumentTypeError(
            f"{text!r}: there are {torch.cuda.device_count()} CUDA devices (cuda:0 .. "
            f"cuda:{torch.cuda.device_count() - 1})")
    return text


def default_device() -> str:
    """``cuda:0`` when PyTorch sees a CUDA device, ``cpu`` otherwise."""
    return "cuda:0" if torch.cuda.is_available() else "cpu"


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows ``(default: ...)`` where there is a default worth showing (not None, not an off switch)."""

    def _get_help_string(self, action):
        if action.default in (None, False) or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


class _RecipeWidth(int):
    """A recipe's ``-channels`` default, told apart from a width written on the command line."""


class _DefaultSplit(float):
    """``-train-split``'s default, told apart from a fraction written on the command line."""


def escape_unencodable_output() -> None:
    """Print what the output's encoding cannot show (a run folder named in Unicode under
    ``PYTHONIOENCODING=ascii`` or a C locale) as backslash escapes, rather than end the run with a
    ``UnicodeEncodeError`` at the first line that names it."""
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            with contextlib.suppress(ValueError, OSError):
                reconfigure(errors="backslashreplace")


class OneLineErrorParser(argparse.ArgumentParser):
    """An argument parser whose errors are one line naming the flag (and where to look), not the
    usage block followed by the error."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n  (every flag and its default: {self.prog} -h)\n")


class _TrainingParser(OneLineErrorParser):
    """Parses into :class:`TrainingArguments` and checks the flags that depend on each other."""

    def parse_args(self, args=None, namespace=None):
        namespace = TrainingArguments() if namespace is None else namespace
        parsed = super().parse_args(args, namespace)
        if isinstance(parsed.channels, _RecipeWidth):
            # Not written on the command line: the recipe's width is the default model's, and a
            # zoo network chosen with -model keeps the zoo's widths.
            model = parsed.model or DEFAULT_MODELS[parsed.dataset]
            parsed.channels = int(parsed.channels) if takes_width(model) else None
        self._check_train_split(parsed)
        self._check_combinations(parsed)
        return parsed

    def _check_train_split(self, args) -> None:
        if "train_split" not in vars(args):
            return
        users = DATASET_FLAGS["train_split"]
        # On -resume the data set comes from the checkpoint, which the resume checks compare.
        if not isinstance(args.train_split, _DefaultSplit) and args.dataset not in users and not args.resume:
            self.error(f"argument -train-split: applies to {', '.join(users)} only; -dataset "
                       f"{args.dataset} has an official test set (drop the flag).")
        args.train_split = float(args.train_split)

    def _check_combinations(self, args) -> None:
        method = get_method(args.method)
        try:
            method.check_neuron_arguments(args.tau)
        except ValueError as error:
            self.error(f"argument -tau: {error}")
        try:
            method.step_mode_for(args.backend)
        except ValueError as error:
            self.error(f"argument -backend: {error}")
        if args.backend != "torch":
            try:
                backends.REGISTRY.check(args.backend, "m")
            except (RuntimeError, ValueError) as error:
                self.error(f"argument -backend: {error}")
        if args.alpha is not None and args.surrogate == "rep":
            self.error("argument -alpha: -surrogate rep (SpikeRepresentation) has no sharpness; "
                       "drop -alpha or choose a spike-level surrogate.")
        if args.amp and not method.supports_amp:
            capable = [name for name in METHOD_NAMES if get_method(name).supports_amp]
            self.error(f"argument -amp: method {method.name} cannot train with automatic mixed "
                       f"precision; methods that can: {', '.join(capable)}.")
        if args.deploy_lif and not method.deploys_to_lif:
            capable = [name for name in METHOD_NAMES if get_method(name).deploys_to_lif]
            self.error(f"argument -deploy-lif: method {method.name} already trains LIF-type "
                       f"neurons; -deploy-lif converts the networks of {', '.join(capable)}.")
        if args.device is None:
            args.device = default_device()
            if os.environ.get("RANK", "0") == "0":
                reason = ("PyTorch sees a CUDA device" if args.device != "cpu"
                          else "PyTorch sees no CUDA device")
                print(f"device: {args.device} ({reason}; choose with -device)", flush=True)


def build_parser(datasets: Sequence[str], description: str = "",
                 epilog: Optional[str] = None) -> argparse.ArgumentParser:
    r"""
    **API Language** - :ref:`中文 <trainer.build_parser-cn>` | :ref:`English <trainer.build_parser-en>`

    ----

    .. _trainer.build_parser-cn:

    * **中文**

    训练脚本的参数解析器：SpikingJelly 示例参数（``-T -device -b -epochs -j -data-dir -out-dir -resume -amp
    -opt -momentum -lr``）以及方法、神经元与记录相关的参数；``datasets`` 为 ``-dataset`` 的可选值，第一个为默认值。
    每个取值在解析时检查（错误只打印一行并以状态 2 退出）；只显示 ``datasets`` 用到的数据集参数；``-h`` 显示默认值。

    ----

    .. _trainer.build_parser-en:

    * **English**

    The argument parser of a training script: SpikingJelly's example flags (``-T -device -b -epochs
    -j -data-dir -out-dir -resume -amp -opt -momentum -lr``) plus the method, neuron and
    bookkeeping flags; ``datasets`` are the ``-dataset`` choices, the first being the default.
    Every value is checked while parsing (one error line, exit status 2); only the data-set flags
    that ``datasets`` use are shown; ``-h`` shows the defaults.
    """
    unknown = [name for name in datasets if name not in DEFAULT_MODELS]
    if not datasets or unknown:
        raise ValueError(f"datasets must be chosen from {', '.join(DEFAULT_MODELS)}; got {list(datasets)}.")
    shows = {flag: any(name in users for name in datasets) for flag, users in DATASET_FLAGS.items()}
    parser = _TrainingParser(description=description, epilog=epilog, formatter_class=_HelpFormatter)
    sj = parser.add_argument_group("SpikingJelly example flags")
    sj.add_argument("-T", type=positive_int, default=6,
                    help="time steps (frames per sample for DVS data)")
    sj.add_argument("-device", type=_device, default=None,
                    help="cpu, cuda or cuda:N (default: cuda:0 when PyTorch sees a CUDA device, else "
                         "cpu); under torchrun each process takes cuda:LOCAL_RANK")
    sj.add_argument("-b", type=positive_int, default=128,
                    help="batch size (per process under torchrun)")
    sj.add_argument("-epochs", type=positive_int, default=300, help="number of epochs")
    sj.add_argument("-j", type=_non_negative_int, default=4, help="data-loading workers")
    sj.add_argument("-data-dir", type=_path, required=True, help="root of the dataset")
    sj.add_argument("-out-dir", type=_path, default=None,
                    help="where checkpoints, logs and plots go (default: runs/<dataset>_<model>_"
                         "<method>_T<T>_b<b>_<opt>_lr<lr>)")
    sj.add_argument("-resume", type=_path, default=None, help="checkpoint to continue from (e.g. "
                    "<out-dir>/checkpoint_last.pth)")
    sj.add_argument("-amp", action="store_true", help="automatic mixed precision (CUDA only)")
    sj.add_argument("-opt", choices=("sgd", "adam"), default="sgd", help="optimizer")
    sj.add_argument("-momentum", type=_momentum, default=0.9, help="SGD momentum, in [0, 1)")
    sj.add_argument("-lr", type=positive_float, default=0.1,
                    help="learning rate (cosine schedule); saf-e and ottt-o step the optimizer T "
                         "times per minibatch and usually need a smaller one, see docs/examples.md")

    model = parser.add_argument_group("method and model")
    model.add_argument("-dataset", choices=tuple(datasets), default=datasets[0], help="data set")
    model.add_argument("-model", type=_model_name, default=None,
                       help="SpikingJelly zoo model: the OTTT VGGs (ottt_spiking_vggws, "
                            "ottt_spiking_vgg11 ... vgg19, _ws), the parametric-LIF nets "
                            "(DVSGestureNet, CIFAR10DVSNet, CIFAR10Net), every spiking_resnet*, "
                            "spiking_resnext*, spiking_wide_resnet*, sew_resnet*, sew_resnext*, "
                            "sew_wide_resnet* and spiking_vgg* (docs/examples.md lists all 38; default: "
                            + ", ".join(f"{k}: {v}" for k, v in DEFAULT_MODELS.items() if k in datasets)
                            + ")")
    model.add_argument("-channels", type=positive_int, default=None,
                       help="width: channels of the parametric-LIF nets; for ottt_spiking_vggws the "
                            "first layer's width (64 in the zoo), later layers scaled alike")
    model.add_argument("-method", choices=METHOD_NAMES, default="saf-e",
                       help="training method; see docs/examples.md")
    model.add_argument("-tau", type=tau, default=2.0,
                       help="membrane time constant (SAF methods: >= 1, inf for no leak; others > 1)")
    model.add_argument("-v-threshold", type=positive_float, default=1.0, help="firing threshold")
    model.add_argument("-surrogate", choices=tuple(SURROGATES), default="sigmoid",
                       help="surrogate gradient; 'rep' is SpikeRepresentation (SAF methods only)")
    model.add_argument("-alpha", type=positive_float, default=None,
                       help="surrogate sharpness (default: 4 for sigmoid, the surrogate's own "
                            "default otherwise)")
    model.add_argument("-backend", choices=BACKENDS, default="auto",
                       help="SAFNode backend: auto picks the fused kernel of the device (CUDA: cupy, "
                            "then triton; CPU: cpp; else torch) in either step mode; a fused "
                            "backend named explicitly runs the model in multi-step mode")
    model.add_argument("-deploy-lif", action="store_true",
                       help="also evaluate the trained SAF weights in the LIF network (to_lif)")

    train = parser.add_argument_group("training")
    train.add_argument("-seed", type=seed, default=2022, help="seed of every random generator")
    train.add_argument("-weight-decay", type=_non_negative_float, default=0.0, help="weight decay")
    train.add_argument("-loss-lambda", type=_unit_interval, default=0.05,
                       help="weight of the MSE (to the one-hot target) in the per-step loss "
                            "(1 - lambda) CE + lambda MSE")
    if shows["cutout"]:
        train.add_argument("-cutout", type=_non_negative_int, default=16,
                           help="cutout hole length for CIFAR augmentation (0 turns cutout off)")
    if shows["train_split"]:
        train.add_argument("-train-split", type=_fraction, default=_DefaultSplit(0.9),
                           help="CIFAR10-DVS: fraction of each class used for training (seeded split)")
    if shows["download"]:
        where = [name for name in DATASET_FLAGS["download"] if name in datasets]
        train.add_argument("-download", action="store_true",
                           help=f"download {', '.join(where)} when missing (needs a network)")
    train.add_argument("-stop-after", type=positive_int, default=None,
                       help="stop after this many epochs in this invocation (for job time limits); "
                            "continue later with -resume")
    train.add_argument("-max-train-batches", type=positive_int, default=None,
                       help="train on at most this many minibatches per epoch (a short run; "
                            "default: all); recorded in args.json and kept on -resume")
    train.add_argument("-max-test-batches", type=positive_int, default=None,
                       help="evaluate on at most this many test minibatches (default: all)")
    train.add_argument("-no-progress", action="store_true",
                       help="no tqdm progress bars; print a progress line every -progress-every "
                            "minibatches instead (for logs)")
    train.add_argument("-progress-every", type=positive_int, default=50,
                       help="with -no-progress: minibatches between two progress lines (loss, "
                            "accuracy, images/s, ETA)")
    train.add_argument("-count-grad-syncs", action="store_true",
                       help="record how many gradient all-reduces DDP runs per minibatch")
    add_run_flags(parser)
    recipe = recipe_defaults(datasets)  # the data sets' recipe (recipes.py)
    if "channels" in recipe:
        recipe["channels"] = _RecipeWidth(recipe["channels"])
    parser.set_defaults(**recipe)
    return parser
