r"""
``main``: parse the flags, build data and model, train with checkpoints, write history and plots.
Under ``torchrun --nproc_per_node=N`` it trains with DistributedDataParallel.

One concern per piece: :func:`_prepare` decides everything that needs no writing (flags, the
checkpoint to resume and its arguments, the output folder); :class:`_Trainer` holds the model,
optimizer and loaders and trains, evaluates, restores and saves; :func:`_record_epoch` logs an
epoch; :func:`_deploy` evaluates and saves the LIF network; :func:`_finish` writes the summary.
The output folder and its lock live in :mod:`.rundir`, checkpoints in :mod:`.checkpoint`, resume
rules in :mod:`.resume`, finiteness guards in :mod:`.guard`, the process group in
:mod:`.distributed`.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import math
import os
import random
import shlex
import signal
import sys
import tempfile
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

#: The scripts that import this module to run it.
_SCRIPTS = ("train_cifar.py", "train_mnist.py", "train_dvs.py")


def _stop_while_starting(number, _frame) -> None:
    print(f"interrupted ({signal.Signals(number).name}) while starting; nothing was written.",
          file=sys.stderr, flush=True)
    raise SystemExit(128 + number)


def _check_temporary_folder() -> None:
    # PyTorch's import asks for a temporary folder and fails with a traceback without one (a full
    # disk, a file-size limit, TMPDIR pointing nowhere).
    try:
        tempfile.gettempdir()
    except FileNotFoundError as error:
        print(f"error: OSError: {error.strerror or error}; PyTorch needs a writable temporary folder "
              "with free space to start: free some space or set TMPDIR to such a folder.",
              file=sys.stderr, flush=True)
        raise SystemExit(2) from None


if Path(sys.argv[0] if sys.argv else "").name in _SCRIPTS:
    # A signal while PyTorch loads (seconds) ends the script with one line, not a traceback;
    # main() takes the signals over once it runs.
    signal.signal(signal.SIGINT, _stop_while_starting)
    signal.signal(signal.SIGTERM, _stop_while_starting)
    _check_temporary_folder()

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import DataLoader, Subset  # noqa: E402
from torch.utils.data.distributed import DistributedSampler  # noqa: E402

from spikingjelly_saf.training import NonFiniteTrainingError  # noqa: E402

from .methods import get_method  # noqa: E402
from . import checkpoint as ckpt  # noqa: E402
from .checkpoint import CheckpointError  # noqa: E402
from .cli import DEFAULT_MODELS, build_parser, escape_unencodable_output  # noqa: E402
from .data import DataMissingError, build_datasets, data_fingerprint, default_data_dir  # noqa: E402
from .distributed import Distributed  # noqa: E402
from .guard import (FiniteBatches, NonFiniteStateError, StepGuard, check_model_finite,  # noqa: E402
                    first_nonfinite)
from .engine import (FiringRateRecorder, NonFiniteLossError, ce_mse_loss, deploy_to_lif, evaluate,  # noqa: E402
                     train_one_epoch)
from .models import ModelChoiceError, build_model  # noqa: E402
from .report import (minibatch_logger, peak_memory_mib, plot_history, progress_printer,  # noqa: E402
                     reset_peak_memory, summary_line, write_history)
from .resume import (ResumeError, apply_changes, explicit_flags, flag, merge_arguments,  # noqa: E402
                     reconcile_folder, value_checker)
from .rundir import RunDirectory, RunDirectoryError, add_run_flags, check_name, default_out_dir  # noqa: E402

__all__ = ["main", "run", "EXIT_OK", "EXIT_USAGE", "EXIT_NONFINITE"]

#: Exit codes: done; bad input (flags, data, checkpoint, output folder) or a full disk; a NaN or
#: infinity in the loss, a gradient, a weight or the input.
EXIT_OK, EXIT_USAGE, EXIT_NONFINITE = 0, 2, 3
EXIT_DATA = EXIT_USAGE
#: Ctrl-C: the shell's convention for a process ended by SIGINT (128 + 2); SIGTERM (128 + 15).
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143


class _Terminated(KeyboardInterrupt):
    """SIGTERM (a job scheduler's or ``kill``'s stop), handled like Ctrl-C: the ``finally`` blocks
    release the folder's lock and the last checkpoint stays the last whole one."""


def _raise_terminated(_number, _frame) -> None:
    raise _Terminated()


@contextmanager
def _signals_as_interrupts():
    """SIGINT raises KeyboardInterrupt and SIGTERM :class:`_Terminated` while the run lasts."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {number: signal.getsignal(number) for number in (signal.SIGINT, signal.SIGTERM)}
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
#: The image side of each data set, for the models that need images of a least size.
_IMAGE_SIDES = {"cifar10": 32, "cifar100": 32, "fashion_mnist": 28, "mnist": 28,
                "dvs128_gesture": 128, "cifar10_dvs": 128}
#: Consecutive minibatches with the training loss at chance level before the run says so.
CHANCE_PATIENCE = 200
LAST, BEST = "checkpoint_last.pth", "checkpoint_best.pth"
_USAGE_ERRORS = (DataMissingError, ModelChoiceError, RunDirectoryError, CheckpointError, ResumeError)


class NonFiniteCheckpointError(RuntimeError):
    """The checkpoint to resume or evaluate holds a NaN or infinite weight (exit 3)."""


def _optimizer_tensors(optimizer) -> list:
    """``(name, tensor)`` of the per-parameter state (momentum buffers, Adam's averages)."""
    per_parameter = optimizer.get("state", {}) if isinstance(optimizer, dict) else {}
    return [(f"parameter {index}: {key}", value) for index, values in per_parameter.items()
            if isinstance(values, dict) for key, value in values.items()
            if isinstance(value, torch.Tensor)]


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class _Limited:
    """A data loader cut to its first ``limit`` minibatches (``-max-train-batches``,
    ``-max-test-batches``); ``len()`` counts only those."""

    def __init__(self, loader, limit: Optional[int]):
        self.loader, self.limit = loader, limit

    def __len__(self) -> int:
        return len(self.loader) if self.limit is None else min(len(self.loader), self.limit)

    def __iter__(self):
        return itertools.islice(iter(self.loader), len(self))

    def __getattr__(self, name):
        if name == "loader":
            raise AttributeError(name)
        return getattr(self.loader, name)


def _loaders(args, train_set, test_set, ddp: Distributed):
    pin = ddp.device.type == "cuda"
    if ddp.enabled:
        train_sampler = DistributedSampler(train_set, num_replicas=ddp.world_size, rank=ddp.rank,
                                           shuffle=True, seed=args.seed)
        # Test shards without padding, so every test sample is counted exactly once.
        test_set = Subset(test_set, list(range(ddp.rank, len(test_set), ddp.world_size)))
        train = DataLoader(train_set, batch_size=args.b, sampler=train_sampler, num_workers=args.j,
                           pin_memory=pin, drop_last=False)
    else:
        train_sampler = None
        train = DataLoader(train_set, batch_size=args.b, shuffle=True, num_workers=args.j,
                           pin_memory=pin, drop_last=False)
    test = DataLoader(test_set, batch_size=args.b, shuffle=False, num_workers=args.j, pin_memory=pin)
    return (_Limited(train, getattr(args, "max_train_batches", None)),
            _Limited(test, getattr(args, "max_test_batches", None)), train_sampler)


def _optimizer(args, model):
    if args.opt == "sgd":
        return torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum,
                               weight_decay=args.weight_decay)
    return torch.optim.Adam(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)


#: A key only the named optimizer's parameter groups have: a checkpoint of the other one is refused.
_OPTIMIZER_MARK = {"sgd": "momentum", "adam": "betas"}


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _optimizer_problem(saved: dict, parameters: list) -> Optional[str]:
    """What is wrong with a saved optimizer state, or ``None``: hyperparameters a run could have
    (a learning rate and weight decay of 0 or more, a momentum in [0, 1)) and state tensors of the
    parameters' type."""
    for index, group in enumerate(saved["param_groups"]):
        for key, low, high in (("lr", 0.0, math.inf), ("weight_decay", 0.0, math.inf),
                               ("momentum", 0.0, 1.0)):
            if key not in group:
                continue
            value = group[key]
            if not (_number(value) and low <= value and (value < high or high == math.inf)):
                return (f"holds {key} {value!r} in parameter group {index} (it must be a finite "
                        f"number, at least {low:g}{'' if high == math.inf else f' and below {high:g}'})")
    state = saved.get("state", {})
    if not isinstance(state, dict):
        return "holds a damaged 'state' entry"
    for key, entry in state.items():
        if not (isinstance(key, int) and 0 <= key < len(parameters) and isinstance(entry, dict)):
            return f"holds state for a parameter {key!r} the model does not have"
        for name, value in entry.items():
            if isinstance(value, torch.Tensor) and name != "step" and \
                    value.dtype != parameters[key].dtype:
                return (f"holds {name} of parameter {key} as {value.dtype}, not "
                        f"{parameters[key].dtype}")
    return None


def _schedule_problem(saved: dict) -> Optional[str]:
    """What is wrong with a saved cosine schedule, or ``None``: a positive length, a step count
    of 0 or more and finite learning rates (PyTorch divides by the length without a check)."""
    length, step = saved.get("T_max"), saved.get("last_epoch")
    if not (_is_count(length) and length >= 1):
        return f"holds the schedule length T_max {length!r} (it must be a whole number of epochs, 1 or more)"
    if not (_is_count(step) and step >= 0):
        return f"holds the schedule step last_epoch {step!r} (it must be a whole number, 0 or more)"
    rates = [saved.get("eta_min"), *(saved.get("base_lrs") or [None])]
    if not all(_number(rate) and rate >= 0.0 for rate in rates):
        return f"holds the schedule's learning rates {rates!r} (they must be finite numbers, 0 or more)"
    return None


def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class _SyncCounter:
    """Counts DDP's gradient all-reduces (one per bucket per synchronisation)."""

    def __init__(self):
        self.calls = 0


def _counting_allreduce(counter: _SyncCounter, bucket):
    """A DDP communication hook: DDP's default all-reduce, counted in ``counter``."""
    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

    counter.calls += 1
    return default_hooks.allreduce_hook(None, bucket)


def _step_mode(method, args) -> str:
    return method.step_mode_for(getattr(args, "backend", "torch"))


def _check_arguments(args, method) -> None:
    """What the parser cannot see alone: the method's neuron against -tau, -amp against the
    device; and the basic ranges again for callers that build ``args`` themselves."""
    if args.T < 1 or args.b < 1 or args.epochs < 1 or args.j < 0:
        raise ModelChoiceError("-T, -b and -epochs must be positive integers and -j >= 0.")
    try:
        method.check_neuron_arguments(args.tau)
    except ValueError as error:
        raise ModelChoiceError(f"-tau {args.tau}: {error}") from None
    if not args.v_threshold > 0.0:
        raise ModelChoiceError(f"-v-threshold {args.v_threshold}: the threshold must be positive.")
    if args.amp and not method.supports_amp:
        raise ModelChoiceError(f"-amp is not available with {method.name}: SpikingJelly's "
                               "ottt_online_training takes no gradient scaler.")
    if args.deploy_lif and not method.deploys_to_lif:
        raise ModelChoiceError(f"-deploy-lif converts a SAF network to LIF; method {method.name} "
                               "already trains LIF-type neurons. Drop -deploy-lif.")
    if args.stop_after is not None and args.stop_after < 1:
        raise ModelChoiceError("-stop-after must be a positive number of epochs.")


# ---- before anything is written ----------------------------------------------------------------
@dataclass
class _Plan:
    """Everything decided before a file is written or a model is built."""

    args: argparse.Namespace
    method: object
    folder: RunDirectory
    state: Optional[dict] = None
    changes: dict = field(default_factory=dict)
    #: :func:`.data.data_fingerprint` of the data this invocation reads (set once they are read).
    data_fingerprint: Optional[str] = None

    @property
    def out_dir(self) -> Path:
        return self.folder.path

    @property
    def test_only(self) -> bool:
        return bool(getattr(self.args, "test_only", False))


def _prepare(args, given: Optional[set], datasets: Optional[Sequence[str]],
             check_value=None) -> _Plan:
    """Read and check the checkpoint to resume, merge its arguments, check the flags and the
    output folder; raises a usage error (exit 2) before anything is written."""
    state, changes = None, {}
    if args.resume:
        state = ckpt.load_checkpoint(args.resume)
        if not isinstance(state["args"], dict):
            raise CheckpointError(f"{args.resume}: its 'args' entry is not a dict of flags.")
        if given is None:  # called with a namespace: its unset (None) values are not choices
            given = {key for key, value in vars(args).items() if value is not None}
        changes = merge_arguments(args, state["args"], given, datasets or (args.dataset,),
                                  check_value)
        damaged = first_nonfinite(state["net"].items())
        if damaged is not None:
            raise NonFiniteCheckpointError(
                f"-resume {args.resume}: the checkpoint's weight {damaged[0]} holds {damaged[1]}, so "
                "the network is damaged; nothing was evaluated, trained or written. Use an earlier "
                "checkpoint of the run (checkpoint_best.pth) or start again.")
        damaged = first_nonfinite(_optimizer_tensors(state["optimizer"]))
        if damaged is not None and not getattr(args, "test_only", False):
            raise NonFiniteCheckpointError(
                f"-resume {args.resume}: the checkpoint's optimizer state ({damaged[0]}) holds "
                f"{damaged[1]}, so the first step would write it into the weights; nothing was "
                "trained or written. Use an earlier checkpoint of the run (checkpoint_best.pth) or "
                "start again.")
    args.model = args.model or DEFAULT_MODELS[args.dataset]
    check_name("-model", args.model)
    if not args.data_dir:
        raise ModelChoiceError("-data-dir is needed: the folder of the data set.")
    # Absolute, so that a resume from another working folder reads the same files.
    args.data_dir = os.path.abspath(os.path.expanduser(str(args.data_dir)))
    try:
        method = get_method(args.method)
    except ValueError as error:
        raise ModelChoiceError(f"-method {args.method}: {error}") from None
    try:
        _check_arguments(args, method)
    except ModelChoiceError as error:
        if state is None:
            raise
        # The value may come from the checkpoint rather than from the command line.
        raise ModelChoiceError(f"{error} (-resume {args.resume}: the run's flags are the "
                               "checkpoint's, with those given on the command line)") from None
    test_only = bool(getattr(args, "test_only", False))
    if test_only and state is None:
        raise ModelChoiceError("-test-only evaluates a checkpoint: give it with -resume PATH.")
    if args.resume:
        own = Path(args.resume).resolve().parent  # a resume continues in the checkpoint's folder
        if args.out_dir and Path(args.out_dir).resolve() != own:
            raise RunDirectoryError(
                f"-resume {args.resume} continues the run in {own}; -out-dir {args.out_dir} is "
                "another folder, and a resume never writes into another run's folder. Drop "
                "-out-dir to continue the run where it is, or copy the run's folder first and "
                "resume the copy's checkpoint.")
        out_dir = own
    elif args.out_dir:
        out_dir = Path(args.out_dir)
    else:
        out_dir = default_out_dir(args)
    args.out_dir = str(out_dir)
    folder = RunDirectory(out_dir, resume=state is not None,
                          overwrite=bool(getattr(args, "overwrite", False)))
    folder.check()
    return _Plan(args, method, folder, state, changes)


# ---- the model, its optimizer and its data ------------------------------------------------------
class _Trainer:
    """The model (DDP-wrapped where distributed), optimizer, schedule, loaders and guards of a run:
    trains and evaluates one epoch, restores a checkpoint and builds the state to save."""

    def __init__(self, plan: _Plan, ddp: Distributed, train_set, test_set, info):
        args, method = plan.args, plan.method
        self.args, self.method, self.ddp, self.info = args, method, ddp, info
        device = ddp.device
        train_loader, test_loader, self.train_sampler = _loaders(args, train_set, test_set, ddp)
        self.epoch: Optional[int] = None
        # The training loader agrees across processes (same length); the test shards may differ.
        self.train_loader = FiniteBatches(train_loader, "training", lambda: self.epoch, ddp.all_true,
                                          between=lambda: self.guard.raise_pending())
        self.test_loader = FiniteBatches(test_loader, "test", lambda: self.epoch)
        self.module = build_model(args, method, info.num_classes, info.in_channels, info.sequence,
                                  image_side=_IMAGE_SIDES.get(args.dataset)).to(device)
        self.optimizer = _optimizer(args, self.module)
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=args.epochs)
        self.grad_scaler = torch.amp.GradScaler("cuda") if args.amp else None
        self.f_loss = ce_mse_loss(info.num_classes, args.loss_lambda)
        self.model = self.module
        self.sync_counter = None
        self.guard = StepGuard(self.optimizer, self.module, ddp.all_true,
                               lambda: (self.epoch, self.train_loader.batch_index))
        self._chance = None
        #: What the checkpoints record of the data: folder and fingerprint.
        self.data_record = {"data_dir": args.data_dir, "fingerprint": plan.data_fingerprint}

    def chance_watch(self, then=None):
        """An ``on_minibatch`` callback (main process) that calls ``then`` and warns once when the
        training loss stays at chance for :data:`CHANCE_PATIENCE` minibatches in a row."""
        if not self.ddp.main:
            return then
        if self._chance is None:
            from spikingjelly_saf.health import ChanceLossWatch

            classes = self.info.num_classes
            # The loss of an all-zero output: the guess, on the scale of this run's loss.
            chance = float(self.f_loss(torch.zeros(1, classes), torch.zeros(1, dtype=torch.long)))
            hint = (f"{self.method.name} steps the optimizer T={self.args.T} times per minibatch, "
                    f"so a learning rate {self.args.T} times smaller may be needed; "
                    if getattr(self.method, "updates_every_step", False) else "")
            self._chance = ChanceLossWatch(
                classes, chance_loss=chance, patience=CHANCE_PATIENCE,
                advice=hint + "the deep layers do not fire yet (a threshold too high for the "
                "input: the Fashion-MNIST recipe of docs/examples.md lowers it with -v-threshold "
                "0.5), or a learning rate too high (layers fall silent) or too low")
        watch = self._chance

        def call(batch: int, values: dict) -> None:
            if then is not None:
                then(batch, values)
            message = watch.update(values["loss"])
            if message:
                print(f"warning: {message}", file=sys.stderr, flush=True)

        return call

    def distribute(self) -> None:
        """Wrap the model for DistributedDataParallel (after a checkpoint was loaded into it)."""
        if not self.ddp.enabled:
            return
        device = self.ddp.device
        self.model = torch.nn.parallel.DistributedDataParallel(
            self.module, device_ids=[device.index] if device.type == "cuda" else None)
        if self.args.count_grad_syncs:
            self.sync_counter = _SyncCounter()
            self.model.register_comm_hook(self.sync_counter, _counting_allreduce)

    def restore(self, state: dict, changes: dict, path) -> tuple:
        """Load ``state``; returns ``(start_epoch, history, best, phrases about applied changes)``."""
        def refuse(what: str, error: Exception) -> CheckpointError:
            reason = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
            return CheckpointError(f"-resume {path}: {what} ({reason}).")

        expected = self.module.state_dict()
        other = [f"{key} ({value.dtype}, the model's is {expected[key].dtype})"
                 for key, value in state["net"].items()
                 if key in expected and value.dtype != expected[key].dtype]
        if other:
            raise CheckpointError(
                f"-resume {path}: its network holds tensors of another type: "
                f"{'; '.join(other[:3])}{' ...' if len(other) > 3 else ''}. Loading would cast "
                "them without a word (int64 truncates every weight); use a checkpoint this "
                "trainer wrote.")
        try:
            self.module.load_state_dict(state["net"])
        except (RuntimeError, KeyError, TypeError, ValueError, AttributeError) as error:
            raise refuse(f"its network does not fit -model {self.args.model} with these flags",
                         error) from None
        saved = state["optimizer"]
        mark = _OPTIMIZER_MARK[self.args.opt]
        groups = saved.get("param_groups") if isinstance(saved, dict) else None
        if not groups or not all(isinstance(g, dict) and mark in g for g in groups):
            raise CheckpointError(f"-resume {path}: its optimizer state is not that of -opt "
                                  f"{self.args.opt} (no '{mark}' in its parameter groups).")
        for part, problem in (("optimizer", _optimizer_problem(saved, list(self.module.parameters()))),
                              ("schedule", _schedule_problem(state["lr_scheduler"]))):
            if problem:
                raise CheckpointError(f"-resume {path}: its {part} state {problem}; it was not "
                                      "written by this trainer or is damaged.")
        try:
            self.optimizer.load_state_dict(saved)
            self.scheduler.load_state_dict(state["lr_scheduler"])
            if self.grad_scaler is not None and state.get("grad_scaler"):
                self.grad_scaler.load_state_dict(state["grad_scaler"])
        except (RuntimeError, KeyError, TypeError, ValueError, AttributeError, IndexError) as error:
            raise refuse("its optimizer or schedule state does not fit this model", error) from None
        self._check_rng(state, path)
        said = apply_changes(self.args, changes, self.optimizer, self.scheduler, state["epoch"] + 1)
        return state["epoch"] + 1, list(state["history"]), dict(state["best"]), said

    def _chosen_rng(self, state: dict) -> dict:
        rng = state["rng"]
        # One state per process; a run resumed with another process count reuses the first.
        return rng[self.ddp.rank] if len(rng) == self.ddp.world_size else rng[0]

    def _check_rng(self, state: dict, path) -> None:
        """Try the saved generator states now, so a damaged one is refused before any writing."""
        current = ckpt.rng_state()
        try:
            ckpt.set_rng_state(self._chosen_rng(state))
        except (KeyError, TypeError, ValueError, RuntimeError, AttributeError, IndexError) as error:
            raise CheckpointError(f"-resume {path}: its random generator states are damaged "
                                  f"({type(error).__name__}: {error}).") from None
        finally:
            ckpt.set_rng_state(current)

    def set_rng(self, state: dict) -> None:
        ckpt.set_rng_state(self._chosen_rng(state))

    def train_epoch(self, epoch: int, progress=None, writer=None, step_offset: int = 0,
                    on_minibatch=None) -> tuple:
        """One training pass; returns ``(loss_sum, correct, samples, seconds)`` over all processes.
        With a TensorBoard ``writer`` each minibatch's values go to ``iteration/<name>`` at the
        global minibatch index (``step_offset`` minibatches were trained before this epoch);
        ``on_minibatch`` (the progress lines) is called after each minibatch too."""
        self.epoch = epoch
        if self.train_sampler is not None:
            self.train_sampler.set_epoch(epoch)
        if self.sync_counter is not None:
            self.sync_counter.calls = 0
        inject = getattr(self.args, "inject_nan_epoch", None)
        try:
            result = self._train_one_epoch(epoch, progress, writer, step_offset, on_minibatch,
                                           inject)
        except NonFiniteTrainingError as error:
            # The library stopped before an optimizer step; an engine that does not name the
            # epoch and minibatch itself gets them here.
            where = {"gradient": f"the gradient of {getattr(error, 'parameter', None)}",
                     "input": "the training input (a value in the data)"}.get(
                getattr(error, "what", None), "the training loss")
            raise NonFiniteStateError(where, epoch, self.train_loader.batch_index,
                                      getattr(error, "value", None) or "nan or inf") from None
        return (*self.ddp.sum(result.loss_sum, result.correct, result.samples), result.seconds)

    def _train_one_epoch(self, epoch, progress, writer, step_offset, on_minibatch, inject):
        return train_one_epoch(
            self.model, self.method, self.optimizer, self.train_loader, self.f_loss, epoch=epoch,
            steps=self.args.T, sequence=self.info.sequence, device=self.ddp.device,
            grad_scaler=self.grad_scaler, amp=self.args.amp, progress=progress,
            inject_nan=inject == epoch and self.ddp.main, all_finite=self.ddp.all_true,
            on_minibatch=_both(None if writer is None
                               else minibatch_logger(writer, epoch, 0, first_step=step_offset),
                               on_minibatch))

    def evaluate(self, model=None, readout=None) -> tuple:
        """``(mean loss, accuracy, firing rates)`` on the test set over all processes."""
        model = self.module if model is None else model
        recorder = FiringRateRecorder(model)
        try:
            result = evaluate(
                model, readout or self.method, self.test_loader, self.f_loss, steps=self.args.T,
                sequence=self.info.sequence, device=self.ddp.device, amp=self.args.amp)
        finally:
            recorder.remove()
        self.test_loader.raise_if_bad(self.ddp.all_true)
        loss, correct, samples = self.ddp.sum(result.loss_sum, result.correct, result.samples)
        layers = list(recorder.sums)
        sums = self.ddp.sum(*recorder.sums.values(), *recorder.counts.values())
        rates = {name: sums[i] / sums[len(layers) + i] if sums[len(layers) + i] else 0.0
                 for i, name in enumerate(layers)}
        return loss / samples, correct / samples, rates

    def state(self, epoch: int, history: list, best: dict, data: Optional[dict] = None) -> dict:
        """The checkpoint of ``epoch`` (every process takes part: the RNG states are gathered)."""
        rng_states = self.ddp.gather(ckpt.rng_state())
        return {"net": self.module.state_dict(), "optimizer": self.optimizer.state_dict(),
                "lr_scheduler": self.scheduler.state_dict(), "epoch": epoch,
                "max_test_acc": best["test_acc"],
                "grad_scaler": self.grad_scaler.state_dict() if self.grad_scaler is not None else None,
                "history": history, "best": best, "rng": rng_states, "args": dict(vars(self.args)),
                "data": data or {}}


def _both(first, second):
    """One ``on_minibatch`` callback calling ``first`` and ``second`` (either may be ``None``)."""
    if first is None or second is None:
        return first or second

    def call(batch: int, values: dict) -> None:
        first(batch, values)
        second(batch, values)

    return call


# ---- what a run prints and writes ---------------------------------------------------------------
def _exactness_lines(module: torch.nn.Module) -> list:
    """The exactness check of the network as deployed (eval mode): the report's summary and, where
    something breaks the SAF-LIF equivalence, one line per kind of module (grouped, counted)."""
    from spikingjelly_saf.exactness import check_exactness

    was_training = module.training
    module.eval()
    try:
        report = check_exactness(module)
    finally:
        module.train(was_training)
    summary = report.summary() if hasattr(report, "summary") else str(report).splitlines()[0]
    lines = [f"exactness (the SAF network against the LIF network -deploy-lif builds, eval mode): "
             f"{summary}"]
    lines += ["  " + line.strip() for line in str(report).splitlines() if line.startswith("  [")]
    return lines


def _banner(plan: _Plan, ddp: Distributed, start_epoch: int, said: list,
            exactness: Optional[list] = None) -> None:
    args = plan.args
    processes = (f", {ddp.world_size} processes (DistributedDataParallel)" if ddp.enabled else "")
    lines = [f"spikingjelly_saf trainer: {args.dataset} {args.model} {args.method} T={args.T}",
             f"  output folder: {plan.out_dir}",
             f"  device: {ddp.device}{processes}"]
    if plan.state is None:
        lines.append(f"  start: a new run, epochs 0 to {args.epochs - 1}")
    elif plan.test_only:
        lines.append(f"  test only: {args.resume} (epoch {plan.state['epoch']}), no training")
    elif start_epoch >= args.epochs:
        lines.append(f"  resumed from {args.resume} (epoch {plan.state['epoch']} done): all "
                     f"{args.epochs} epochs are trained; give a larger -epochs to train on, or "
                     "-test-only to evaluate")
    else:
        lines.append(f"  resumed from {args.resume} (epoch {plan.state['epoch']} done): continues "
                     f"at epoch {start_epoch} of {args.epochs}")
    if said:
        lines.append("  on resume: " + "; ".join(said))
    if exactness:
        lines.extend("  " + line for line in exactness)
    lines.append("  arguments: " + " ".join(f"{flag(k)} {v}" for k, v in sorted(vars(args).items())))
    print("\n".join(lines), flush=True)


def _continue_command(plan: _Plan, ddp: Distributed) -> str:
    """The command that continues this run where it stopped."""
    return _resume_command(plan.args, plan.out_dir, ddp.world_size if ddp.enabled else None)


def _resume_command(args, out_dir, world_size: Optional[int] = None) -> str:
    script = sys.argv[0] if sys.argv and sys.argv[0].endswith(".py") else None
    runner = ["torchrun", f"--nproc_per_node={world_size}"] if world_size else ["python"]
    if script is None:
        dataset = getattr(args, "dataset", None)
        script = ("examples/train_dvs.py" if dataset in ("dvs128_gesture", "cifar10_dvs") else
                  "examples/train_mnist.py" if dataset in ("fashion_mnist", "mnist") else
                  "examples/train_cifar.py")
    return shlex.join(runner + [script, "-resume", str(Path(out_dir) / LAST), "-device",
                                str(args.device)])


def _record_epoch(writer, row: dict, history: list, out_dir: Path) -> None:
    write_history(history, out_dir)
    epoch = row["epoch"]
    for key in ("train_loss", "train_acc", "test_loss", "test_acc", "lr", "epoch_time_s",
                "train_samples_per_s", "peak_memory_mib"):
        writer.add_scalar(key, row[key], epoch)
    for name, rate in row["firing_rate"].items():
        writer.add_scalar(f"firing_rate/{name}", rate, epoch)
    writer.flush()
    print(f"epoch {epoch}: train loss {row['train_loss']:.4f} acc {row['train_acc']:.4f} | "
          f"test loss {row['test_loss']:.4f} acc {row['test_acc']:.4f} | "
          f"{row['epoch_time_s']:.1f} s, {row['train_samples_per_s']:.1f} samples/s", flush=True)


def _save(state: dict, improved: bool, out_dir: Path) -> None:
    """The best checkpoint first, then the last: a kill or a full disk between the two leaves the
    last checkpoint of the previous epoch, which resumes, and a best one at least as good."""
    if improved:
        ckpt.save_checkpoint(state, out_dir / BEST)
    ckpt.save_checkpoint(state, out_dir / LAST)


def _deploy(trainer: _Trainer, out_dir: Path, names=("lif_net.pt", "lif_exactness.json")
            ) -> Optional[float]:
    """Accuracy of the trained weights in the LIF network that ``to_lif`` builds; the main process
    saves that network's ``state_dict`` (``lif_net.pt``) and its exactness report
    (``lif_exactness.json``), or under the two ``names`` given."""
    from spikingjelly_saf.exactness import check_exactness

    module = trainer.module
    lif_model, readout = deploy_to_lif(module, trainer.method)
    _, accuracy, _ = trainer.evaluate(lif_model, readout)
    error = None
    if trainer.ddp.main:
        report = check_exactness(module)
        summary = report.summary() if hasattr(report, "summary") else str(report)
        try:
            ckpt.atomic_save(lif_model.state_dict(), out_dir / names[0])
            ckpt.atomic_write_text(out_dir / names[1], json.dumps(
                {"exact": len(report) == 0, "summary": summary, "test_acc": accuracy,
                 "readout_decay": readout.decay, "findings": report.to_dicts()}, indent=1))
        except OSError as failure:
            error = failure
    trainer.ddp.agree(error)
    return accuracy


def _finish(plan: _Plan, ddp: Distributed, history: list, best: dict, deployed, memory_kind: str,
            stopped_early: bool) -> dict:
    args, out_dir = plan.args, plan.out_dir
    title = f"{args.dataset} {args.model} {args.method} T={args.T}"
    summary = {"out_dir": str(out_dir), "epochs_done": len(history), "best": best,
               "last": history[-1] if history else None, "deployed_lif_test_acc": deployed}
    if ddp.main and history:
        plot_history(history, out_dir, title, memory_kind)
        summary["line"] = summary_line(title, history, best, memory_kind, deployed)
        ckpt.atomic_write_text(out_dir / "summary.json", json.dumps(summary, indent=1))
        print(summary["line"], flush=True)
    if ddp.main and stopped_early:
        print(f"stopped after epoch {history[-1]['epoch']} as -stop-after asks; continue with:\n"
              f"  {_continue_command(plan, ddp)}", flush=True)
    return summary


def evaluation_names(out_dir: Path, epoch: int) -> tuple:
    """The files of one ``-test-only`` evaluation: ``test_only_epoch<E>.json`` and, with
    ``-deploy-lif``, ``test_only_epoch<E>_lif_net.pt`` and ``..._lif_exactness.json``; with a
    ``_<n>`` suffix when an earlier evaluation took those names. Never a name a run writes, never
    an existing file."""
    out_dir = Path(out_dir)
    for number in itertools.count(1):
        stem = f"test_only_epoch{epoch}" + ("" if number == 1 else f"_{number}")
        names = (f"{stem}.json", f"{stem}_lif_net.pt", f"{stem}_lif_exactness.json")
        if not any((out_dir / name).exists() for name in names):
            return names


def _test_only(plan: _Plan, trainer: _Trainer) -> dict:
    args, ddp = plan.args, trainer.ddp
    names = evaluation_names(plan.out_dir, plan.state["epoch"])
    loss, accuracy, _ = trainer.evaluate()
    result = {"checkpoint": str(args.resume), "epoch": plan.state["epoch"], "test_loss": loss,
              "test_acc": accuracy, "deployed_lif_test_acc": None, "files": list(names[:1])}
    if args.deploy_lif:
        result["deployed_lif_test_acc"] = _deploy(trainer, plan.out_dir, names[1:])
        result["files"] = list(names)
    if ddp.main:
        line = (f"test only, epoch {result['epoch']}: test loss {loss:.4f} acc {accuracy:.4f}")
        if result["deployed_lif_test_acc"] is not None:
            line += f" | LIF deployment acc {result['deployed_lif_test_acc']:.4f}"
        print(line + f" (written to {plan.out_dir / names[0]})", flush=True)
        ckpt.atomic_write_text(plan.out_dir / names[0], json.dumps(result, indent=1))
    return result


# ---- the run --------------------------------------------------------------------------------------
def run(args: argparse.Namespace, given: Optional[set] = None,
        datasets: Optional[Sequence[str]] = None, check_value=None) -> dict:
    """Train as ``args`` says; returns the summary dict (also written to ``summary.json``).

    ``given`` names the flags written on the command line: on ``-resume`` the others take the
    checkpoint's values (``None``: every flag not ``None`` counts as given). ``datasets`` are the
    data sets the calling script serves; ``check_value(dest, value)`` vets each value taken from
    the checkpoint (:func:`.resume.value_checker`).
    """
    plan = _prepare(args, given, datasets, check_value)
    ddp = Distributed(args.device)
    try:
        summary = _run(plan, ddp)
    except BaseException:
        ddp.close()
        raise
    ddp.close(finished=True)
    return summary


def _datasets(args, ddp: Distributed):
    # The first process converts DVS events to frames on disk; the others then read them.
    if ddp.main:
        built = build_datasets(args)
    ddp.barrier()
    if not ddp.main:
        built = build_datasets(args)
    return built


def _check_same_data(plan: _Plan) -> None:
    """A resumed run trains on the data its checkpoint was trained on (same files anywhere)."""
    saved = plan.state.get("data") if plan.state is not None else None
    if not isinstance(saved, dict) or plan.test_only:
        return
    if saved.get("fingerprint") != plan.data_fingerprint:
        raise DataMissingError(
            f"-resume {plan.args.resume}: the data in {plan.args.data_dir} differ from the data the "
            f"checkpoint was trained on (in {saved.get('data_dir')}): other images, labels or "
            "sizes. Resume with -data-dir naming the run's own data, or start a new run.")


def _open_folder(plan: _Plan, ddp: Distributed) -> None:
    error = None
    if ddp.main:
        try:
            plan.folder.open()
        except RunDirectoryError as failure:
            error = failure
    ddp.agree(error)


def _run(plan: _Plan, ddp: Distributed) -> dict:
    args = plan.args
    if args.amp and ddp.device.type != "cuda":
        raise ModelChoiceError("-amp needs a CUDA device (float16 autocast with a GradScaler).")
    _seed_everything(args.seed)
    train_set, test_set, info = _datasets(args, ddp)
    plan.data_fingerprint = data_fingerprint(train_set, test_set)
    _check_same_data(plan)
    _open_folder(plan, ddp)
    try:
        return _train(plan, ddp, _Trainer(plan, ddp, train_set, test_set, info))
    finally:
        if ddp.main:
            plan.folder.close()


def _resume_into(plan: _Plan, ddp: Distributed, trainer: _Trainer) -> tuple:
    """Load the checkpoint (if any) and repair the folder; ``(start, history, best, phrases)``."""
    if plan.state is None:
        return 0, [], {"test_acc": -1.0, "epoch": -1}, []
    out_dir = plan.out_dir
    start_epoch, history, best, said = trainer.restore(plan.state, plan.changes, plan.args.resume)
    if ddp.main and not plan.test_only:
        state = dict(plan.state, best=best)
        said += reconcile_folder(out_dir, state, out_dir / LAST, out_dir / BEST)
        best = state["best"]
        if history:
            write_history(history, out_dir)
    return start_epoch, history, best, said


def _minibatches_before(history: list, batches: int) -> int:
    """The minibatches trained in the epochs of ``history`` (the TensorBoard step of the next)."""
    return sum(int(row.get("train_batches", batches)) for row in history)


def _epoch(trainer: _Trainer, epoch: int, history: list, best: dict, writers, out_dir: Path) -> dict:
    """Train, evaluate and save one epoch; returns the best record afterwards. ``writers``: the
    TensorBoard writers of the epoch scalars and of the per-minibatch scalars (or ``None``s)."""
    from tqdm import tqdm

    args, ddp, device = trainer.args, trainer.ddp, trainer.ddp.device
    writer, iteration_writer = writers
    reset_peak_memory(device)
    progress = printer = None
    batches = len(trainer.train_loader)
    if ddp.main and not args.no_progress:
        progress = tqdm(total=batches, desc=f"epoch {epoch}/{args.epochs}",
                        dynamic_ncols=True, leave=False)
    elif ddp.main:
        printer = progress_printer(epoch, args.epochs, batches, args.b * ddp.world_size,
                                   getattr(args, "progress_every", None) or 50)
    watch = trainer.chance_watch(printer)
    try:
        loss_sum, correct, samples, seconds = trainer.train_epoch(
            epoch, progress, iteration_writer, _minibatches_before(history, batches), watch)
    finally:
        if progress is not None:
            progress.close()
    test_loss, test_acc, rates = trainer.evaluate()
    row = {"epoch": epoch, "train_loss": loss_sum / samples, "train_acc": correct / samples,
           "test_loss": test_loss, "test_acc": test_acc,
           "lr": trainer.optimizer.param_groups[0]["lr"], "epoch_time_s": seconds,
           "train_samples_per_s": samples / seconds,
           "peak_memory_mib": max(ddp.gather(peak_memory_mib(device)[0])), "firing_rate": rates,
           "train_batches": batches}
    if trainer.sync_counter is not None:
        row["grad_syncs_per_batch"] = trainer.sync_counter.calls / len(trainer.train_loader)
    trainer.scheduler.step()
    history.append(row)
    improved = row["test_acc"] > best["test_acc"]
    if improved:
        best = {"test_acc": row["test_acc"], "epoch": epoch}
    check_model_finite(trainer.module, epoch)  # never save a damaged network
    state = trainer.state(epoch, history, best, trainer.data_record)
    error = None
    if ddp.main:
        try:
            _save(state, improved, out_dir)
            _record_epoch(writer, row, history, out_dir)
        except OSError as failure:
            error = failure
    ddp.agree(error)
    return best


def _train(plan: _Plan, ddp: Distributed, trainer: _Trainer) -> dict:
    args, out_dir = plan.args, plan.out_dir
    start_epoch, history, best, said = _resume_into(plan, ddp, trainer)
    if plan.folder.cleaned and ddp.main:
        said.append("removed temporary files of an interrupted save: " + ", ".join(plan.folder.cleaned))
    if ddp.main:
        exactness = (_exactness_lines(trainer.module) if plan.method.deploys_to_lif else None)
        _banner(plan, ddp, start_epoch, said, exactness)
    if plan.test_only:
        return _test_only(plan, trainer)
    trainer.distribute()
    writer = iteration_writer = None
    if ddp.main:
        from torch.utils.tensorboard import SummaryWriter

        # Two writers, each purging from where the resumed run continues on its own axis: the
        # epoch scalars from epoch start_epoch, the per-minibatch ones from the first minibatch
        # of that epoch. One writer would purge the minibatch curve from step start_epoch on,
        # i.e. almost all of the epochs before.
        writer = SummaryWriter(str(out_dir / "tb"), purge_step=start_epoch)
        iteration_writer = SummaryWriter(
            str(out_dir / "tb" / "iteration"),
            purge_step=_minibatches_before(history, len(trainer.train_loader)))
        ckpt.atomic_write_text(out_dir / "args.json", json.dumps(vars(args), indent=1))
    memory_kind = peak_memory_mib(ddp.device)[1]
    if plan.state is not None:
        trainer.set_rng(plan.state)
    end_epoch = args.epochs if args.stop_after is None else min(args.epochs, start_epoch + args.stop_after)
    try:
        for epoch in range(start_epoch, end_epoch):
            best = _epoch(trainer, epoch, history, best, (writer, iteration_writer), out_dir)
        deployed = _deploy(trainer, out_dir) if args.deploy_lif else None
        return _finish(plan, ddp, history, best, deployed, memory_kind,
                       stopped_early=start_epoch < end_epoch < args.epochs)
    finally:
        for each in (writer, iteration_writer):
            if each is not None:
                each.close()


def _parser(datasets: Sequence[str], description: str) -> argparse.ArgumentParser:
    parser = build_parser(datasets, description)
    add_run_flags(parser)
    for action in parser._actions:
        if action.dest == "data_dir":
            # -resume alone takes the data folder from the checkpoint; checked after parsing.
            action.required = False
            action.default = None
    return parser


def _stopped_message(error: Exception, out_dir: Optional[str]) -> str:
    last = Path(out_dir) / LAST if out_dir else None
    if last is not None and _is_file(last):
        advice = ("check the data" if isinstance(error, NonFiniteStateError) and "input" in error.where
                  else "resume with a lower -lr")
        kept = f"the last good checkpoint is kept: {last} ({advice}: -resume {last})"
    else:
        kept = "no epoch finished, so there is no checkpoint to resume"
    return f"error: stopped because {error}; {kept}."


def _is_file(path) -> bool:
    """``Path.is_file`` that answers False where the path itself is an error (too long, ...)."""
    try:
        return Path(path).is_file()
    except (OSError, ValueError):
        return False


def _interrupted_message(args, how: str = "Ctrl-C") -> str:
    out_dir = getattr(args, "out_dir", None)
    if getattr(args, "test_only", False):
        return f"interrupted ({how}) during the evaluation; nothing of it was written."
    if out_dir and _is_file(Path(out_dir) / LAST):
        world = int(os.environ["WORLD_SIZE"]) if os.environ.get("WORLD_SIZE", "1") != "1" else None
        return (f"interrupted ({how}); the run resumes after its last saved epoch with: "
                f"{_resume_command(args, out_dir, world)}")
    begun = out_dir and RunDirectory(out_dir, resume=False, overwrite=False).contents()
    if begun:
        # Without -overwrite the new start would refuse the folder this run began to fill.
        return (f"interrupted ({how}) before the first epoch was saved; there is nothing to resume: "
                f"start the run again with the same flags and -overwrite, which replaces what it "
                f"began to write in {out_dir}.")
    return (f"interrupted ({how}) before the first epoch was saved; there is nothing to resume, "
            "start the run again.")


def _os_error_message(error: OSError, out_dir: Optional[str]) -> str:
    if error.errno is None or not error.strerror:
        return f"error: {error}"
    where = f": {error.filename}" if error.filename else ""
    kept = ""
    if out_dir and _is_file(Path(out_dir) / LAST):
        kept = (f"; the checkpoints written before are intact (continue with -resume "
                f"{Path(out_dir) / LAST} once the problem is fixed)")
    return f"error: OSError: {error.strerror}{where}{kept}."


def main(argv: Optional[Sequence[str]] = None, datasets: Sequence[str] = ("cifar10", "cifar100"),
         description: str = "") -> int:
    r"""
    **API Language** - :ref:`中文 <trainer.main-cn>` | :ref:`English <trainer.main-en>`

    ----

    .. _trainer.main-cn:

    * **中文**

    示例脚本的入口：解析 ``argv`` （SpikingJelly 示例的参数加上 ``-method`` 等），训练并返回进程退出码：
    0 成功；2 输入有误（参数、数据、检查点、输出目录）或磁盘已满（只打印一条说明，不打印 traceback）；
    3 损失、梯度、权重或输入出现 NaN/inf（保留上一个完好的检查点）。
    在 ``torchrun`` 下以 DistributedDataParallel 训练。

    ----

    .. _trainer.main-en:

    * **English**

    Entry point of the example scripts: parse ``argv`` (SpikingJelly's example flags plus
    ``-method`` and the rest), train, and return the exit code: 0 done; 2 bad input (flags, data,
    checkpoint, output folder) or a full disk (one message, no traceback); 3 a NaN or infinity in
    the loss, a gradient, a weight or the input (the last good checkpoint is kept). Under
    ``torchrun`` it trains with DistributedDataParallel.

    :param argv: the arguments; ``None`` reads ``sys.argv``
    :param datasets: the ``-dataset`` choices, the first being the default
    :param description: the ``-h`` description
    """
    escape_unencodable_output()
    parser = _parser(datasets, description)
    args = parser.parse_args(argv)
    if args.data_dir is None and not args.resume:
        default = default_data_dir(args.dataset)
        if default is None:
            parser.error("the following arguments are required: -data-dir (or -resume a checkpoint, "
                         "which names its data folder)")
        args.data_dir = default
        if os.environ.get("RANK", "0") == "0":
            print(f"data: {default} (the default for -dataset {args.dataset}; choose with "
                  "-data-dir)", flush=True)
    given = explicit_flags(_parser(datasets, description), argv)
    try:
        with _signals_as_interrupts():
            run(args, given=given, datasets=datasets, check_value=value_checker(parser))
    except _USAGE_ERRORS as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except NonFiniteCheckpointError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_NONFINITE
    except (NonFiniteLossError, NonFiniteStateError, NonFiniteTrainingError) as error:
        # NonFiniteTrainingError: the library's own check, where the engine did not turn it into
        # one naming the epoch and minibatch.
        print(_stopped_message(error, args.out_dir), file=sys.stderr)
        return EXIT_NONFINITE
    except KeyboardInterrupt as interrupt:
        terminated = isinstance(interrupt, _Terminated)
        print(_interrupted_message(args, "SIGTERM" if terminated else "Ctrl-C"), file=sys.stderr,
              flush=True)
        return EXIT_TERMINATED if terminated else EXIT_INTERRUPTED
    except OSError as error:
        print(_os_error_message(error, args.out_dir), file=sys.stderr)
        return EXIT_USAGE
    finally:
        # A stopped run's traceback kept the DistributedDataParallel model alive; release it (and
        # the gloo threads it holds) before the interpreter shuts down.
        gc.collect()
    return EXIT_OK
