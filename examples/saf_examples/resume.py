r"""
Continuing a run: which flags a checkpoint keeps, which a resumed run may change and how those
changes take effect, and how the checkpoints of the output folder are made consistent again.

* Flags that define the network or its data (``-dataset -model -channels -method -T -tau
  -v-threshold -surrogate -opt -seed -train-split``) cannot change: the checkpoint would be
  meaningless. Resuming with another value is refused, naming each of them.
* Flags not given on the command line take the checkpoint's values (``-resume path`` alone
  continues the run as it was); the bookkeeping flags of one invocation (``-device -j -out-dir
  -stop-after -no-progress -deploy-lif ...``) are never taken from it.
* ``-lr`` and ``-epochs`` may change: the cosine schedule restarts from the new learning rate (or
  the current one) and decays to 0 at the new last epoch, so the rate never climbs back up.
  ``-momentum`` and ``-weight-decay`` apply to every parameter group. Other changes (``-b``,
  ``-alpha``, ``-loss-lambda``, ...) apply as given.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Optional, Sequence

import torch

from . import checkpoint as ckpt

__all__ = ["ResumeError", "FIXED", "PER_INVOCATION", "explicit_flags", "value_checker",
           "merge_arguments",
           "apply_changes", "flag", "reconcile_folder"]

#: Flags whose change would make a checkpoint meaningless.
FIXED = ("dataset", "model", "channels", "method", "T", "tau", "v_threshold", "surrogate", "opt",
         "seed", "train_split")
#: Flags of one invocation: never taken from the checkpoint.
PER_INVOCATION = ("device", "j", "out_dir", "resume", "stop_after", "no_progress", "progress_every",
                  "count_grad_syncs", "deploy_lif", "download", "inject_nan_epoch", "overwrite",
                  "test_only")


class ResumeError(ValueError):
    """A resume that cannot continue the checkpoint's run."""


def flag(dest: str) -> str:
    """The command-line spelling of an argument (``v_threshold`` -> ``-v-threshold``)."""
    return "-" + dest.replace("_", "-")


def explicit_flags(parser: argparse.ArgumentParser, argv: Optional[Sequence[str]]) -> set:
    """The destinations of the flags actually written in ``argv``."""
    import sys

    for action in parser._actions:
        action.default = argparse.SUPPRESS
        action.required = False
    # Parser-level defaults (set_defaults, e.g. a data set's recipe) would count as written.
    parser._defaults.clear()
    # The base class's parsing: a parser subclass may check combinations of values, and here
    # only the flags that were written are present.
    namespace, _ = argparse.ArgumentParser.parse_known_args(
        parser, list(sys.argv[1:] if argv is None else argv), argparse.Namespace())
    return set(vars(namespace))


def value_checker(parser: argparse.ArgumentParser):
    """``check(dest, value)``: raise :class:`ResumeError` unless ``value`` is one the parser would
    produce for that flag (its type check, its choices, a bool for a switch)."""
    actions = {action.dest: action for action in parser._actions}

    def check(dest: str, value) -> None:
        action = actions.get(dest)
        if action is None or value is None:
            return
        problem = None
        if action.nargs == 0:  # a switch such as -amp
            problem = None if isinstance(value, bool) else "not true or false"
        elif isinstance(value, (bool, list, dict, tuple)):
            problem = f"a {type(value).__name__}"
        else:
            try:
                converted = action.type(str(value)) if callable(action.type) else str(value)
            except (argparse.ArgumentTypeError, TypeError, ValueError) as error:
                problem = str(error) or "not a valid value"
            else:
                if action.choices is not None and converted not in action.choices:
                    problem = f"not one of {', '.join(map(str, action.choices))}"
                elif isinstance(value, str) and not isinstance(converted, str):
                    # The trainer stores numbers as numbers; the text would reach the run as text.
                    problem = "text where the flag takes a number"
        if problem:
            raise ResumeError(f"the checkpoint's arguments hold {flag(dest)} {value!r}: {problem}; "
                              "it was not written by this trainer or is damaged.")

    return check


def merge_arguments(args: argparse.Namespace, saved: dict, given: set,
                    datasets: Sequence[str], check_value=None) -> dict:
    """Fill ``args`` from the checkpoint's arguments where the user gave no flag; return the
    changes ``{dest: (old, new)}``; raise :class:`ResumeError` for changes of :data:`FIXED` and
    (with ``check_value``, see :func:`value_checker`) for values no flag could have given."""
    lacking = [key for key in FIXED if key in vars(args) and key not in saved]
    if lacking:
        raise ResumeError(
            f"-resume {args.resume}: the checkpoint's arguments lack "
            f"{', '.join(flag(k) for k in lacking)}, which define its network and data; without "
            "them a resume would take today's defaults, which may not be what it was trained "
            "with. It was not written by this trainer or is damaged.")
    for key, old in saved.items():
        if key in PER_INVOCATION or key in given or key not in vars(args):
            continue
        if check_value is not None:
            try:
                check_value(key, old)
            except ResumeError as error:
                raise ResumeError(f"-resume {args.resume}: {error}") from None
        setattr(args, key, old)
    changes = {key: (saved[key], getattr(args, key)) for key in sorted(given)
               if key in saved and key not in PER_INVOCATION and saved[key] != getattr(args, key)}
    fixed = [key for key in FIXED if key in changes]
    if fixed:
        listed = ", ".join(f"{flag(k)} {changes[k][0]} -> {changes[k][1]}" for k in fixed)
        raise ResumeError(
            f"-resume {args.resume}: the checkpoint was trained with other settings ({listed}); "
            "its weights mean nothing for the new ones. Drop these flags to continue the run, or "
            "start a new run in another -out-dir.")
    if args.dataset not in datasets:
        raise ResumeError(f"-resume {args.resume}: the checkpoint trains -dataset {args.dataset}, "
                          f"which this script does not serve ({', '.join(datasets)}); resume it "
                          "with the script that trained it.")
    return changes


def _cosine(start_lr: float, step: int, length: int) -> float:
    return start_lr * (1.0 + math.cos(math.pi * step / length)) / 2.0


def apply_changes(args, changes: dict, optimizer: torch.optim.Optimizer, scheduler,
                  epochs_done: int) -> list:
    """Make ``-lr``, ``-epochs``, ``-momentum`` and ``-weight-decay`` changes take effect after
    the optimizer and scheduler states were loaded; returns one phrase per change."""
    said = []
    for key in ("momentum", "weight_decay"):
        if key in changes:
            groups = [group for group in optimizer.param_groups if key in group]
            for group in groups:
                group[key] = getattr(args, key)
            said.append(f"{flag(key)} {changes[key][0]} -> {changes[key][1]}"
                        + ("" if groups else f" (not used by -opt {args.opt})"))
    if "lr" in changes or "epochs" in changes:
        if args.epochs <= epochs_done:
            raise ResumeError(
                f"-epochs {args.epochs}: the checkpoint has trained {epochs_done} epochs already; "
                f"give -epochs above {epochs_done} to train on, or -test-only to evaluate it.")
        remaining = args.epochs - epochs_done
        start_lr = args.lr if "lr" in changes else optimizer.param_groups[0]["lr"]
        for group in optimizer.param_groups:
            group["lr"] = group["initial_lr"] = start_lr
        # A fresh cosine over the remaining epochs, from the chosen rate down to 0.
        scheduler.base_lrs = [start_lr] * len(optimizer.param_groups)
        scheduler.T_max = remaining
        scheduler.eta_min = 0.0
        scheduler.last_epoch = 0
        scheduler._last_lr = [start_lr] * len(optimizer.param_groups)
        for key in ("lr", "epochs"):
            if key in changes:
                said.append(f"{flag(key)} {changes[key][0]} -> {changes[key][1]}")
        said.append(f"learning rate {start_lr:g} now, cosine to 0 at epoch {args.epochs} "
                    f"({_cosine(start_lr, 1, remaining):g} after the next epoch)")
        if start_lr == 0.0:
            said.append("the rate is 0, so nothing will change: pass -lr to train on")
    for key, (old, new) in changes.items():
        if key not in ("momentum", "weight_decay", "lr", "epochs"):
            said.append(f"{flag(key)} {old} -> {new}")
    return said


def reconcile_folder(out_dir: Path, state: dict, last_path: Path, best_path: Path) -> list:
    """Make the folder's best checkpoint agree with the resumed state: keep it when it is the
    epoch the state calls best, rebuild it from the state when the state is that epoch, and
    otherwise remove it (a stale or unreadable one) so the next improvement writes it again.
    Returns one phrase per repair; updates ``state['best']`` when no best checkpoint is left."""
    said = []
    best_epoch, epoch = state["best"]["epoch"], state["epoch"]
    present = None
    if best_path.exists():
        try:
            present = ckpt.load_checkpoint(best_path)
        except ckpt.CheckpointError:
            present = None
    if present is not None and present["epoch"] == best_epoch and \
            present["history"] == state["history"][:len(present["history"])]:
        return said
    if best_epoch == epoch:
        ckpt.save_checkpoint(state, best_path)
        said.append(f"rebuilt {best_path.name} from epoch {epoch}")
        return said
    if best_path.exists():
        best_path.unlink()
        said.append(f"removed {best_path.name}: it did not hold epoch {best_epoch}, the best one "
                    "the resumed checkpoint records")
    else:
        said.append(f"{best_path.name} (epoch {best_epoch}) is missing")
    state["best"] = {"test_acc": -1.0, "epoch": -1}
    said.append("the next epoch writes a new best checkpoint")
    return said
