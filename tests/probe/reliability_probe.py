"""Reliability probe: feeds the training scripts and the library hundreds of bad inputs and injects
faults into real runs, and records for every case whether it ended as the contract says.

    python tests/probe/reliability_probe.py [--quick] [--out FILE]

Outcomes of a case:

* ``ok``: refused with one message naming the argument or file (exit 2, or 3 for non-finite
  values), or, for a fault, the files and exit code the contract promises;
* ``traceback``: a Python traceback, or an exception the code did not raise on purpose;
* ``silent``: a bad value accepted without a word (exit 0, or the library returning normally);
* ``loss``: files of another run or the given inputs changed or removed, or a checkpoint that no
  longer loads after a fault;
* ``code_execution``: a pickle payload ran (its sentinel file exists);
* ``unclear``: refused, but not as promised (another exit code, no message naming the argument or
  file, several error lines, or a run that cannot be resumed).

Bad CLI values run in-process through each script's ``main(argv)``; faults run in subprocesses
with timeouts. The tally goes to ``tests/probe/reliability_probe.json``, written atomically with the
trainer's own writer.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import gzip
import hashlib
import io
import json
import math
import os
import pickle
import platform
import resource
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass, field, asdict
from pathlib import Path
from typing import Callable, Optional

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
sys.path[:0] = [str(EXAMPLES), str(ROOT / "tests")]

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

import fabricate  # noqa: E402

OUTCOMES = ("ok", "traceback", "silent", "loss", "code_execution", "unclear")
SCRIPTS = {"cifar": "train_cifar.py", "mnist": "train_mnist.py", "dvs": "train_dvs.py"}
DATASETS = {"cifar": ("cifar10", "cifar100"), "mnist": ("fashion_mnist", "mnist"),
            "dvs": ("dvs128_gesture", "cifar10_dvs")}
TINY = ["-device", "cpu", "-T", "2", "-b", "4", "-j", "0", "-epochs", "1", "-no-progress",
        "-model", "ottt_spiking_vggws", "-channels", "2", "-method", "saf-e-acc",
        "-max-train-batches", "1", "-max-test-batches", "1", "-lr", "0.05"]
#: Epochs of the runs that get a signal: long enough that most signals find it running.
SIGNAL_EPOCHS = 30
CHILD_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(EXAMPLES)}


# ---- the tally ------------------------------------------------------------------------------------
@dataclass
class Case:
    category: str
    name: str
    input: str
    outcome: str
    detail: str = ""


@dataclass
class Tally:
    cases: list = field(default_factory=list)

    def add(self, category: str, name: str, given, outcome: str, detail: str = "") -> Case:
        assert outcome in OUTCOMES, outcome
        case = Case(category, name, given if isinstance(given, str) else json.dumps(given, default=str),
                    outcome, detail[-2000:])
        self.cases.append(case)
        if outcome != "ok":
            print(f"  [{outcome}] {category} {name}: {case.detail.splitlines()[0] if case.detail else ''}"[:300],
                  flush=True)
        return case

    def counts(self) -> dict:
        table: dict = {}
        for case in self.cases:
            row = table.setdefault(case.category, {"cases": 0, **{o: 0 for o in OUTCOMES}})
            row["cases"] += 1
            row[case.outcome] += 1
        return table


def _short(text, limit=200) -> str:
    text = str(text)
    return text if len(text) <= limit else text[:limit] + f"...({len(text)} chars)"


# ---- files: hashes before and after -------------------------------------------------------------
def tree_digest(root: Path) -> dict:
    digest = {}
    if not root.exists():
        return digest
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.is_symlink():
            digest[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return digest


def lost_files(before: dict, after: dict) -> list:
    """Files that were there before and are now gone or different."""
    return [name for name, sha in before.items() if after.get(name) != sha]


# ---- judging one refusal --------------------------------------------------------------------------
def error_lines(stderr: str) -> list:
    # Python warnings and tqdm bars (carriage returns) are not messages of the script.
    lines = [line for line in stderr.splitlines()
             if line.strip() and "Warning: " not in line and "\r" not in line]
    return [line for line in lines if not line.startswith("warning:")
            and not line.lstrip().startswith("(every flag") and not line.startswith(" ")]


def judge_refusal(code, out: str, err: str, names, exits=(2,)) -> tuple:
    """(outcome, detail) of a case that must be refused with one message naming one of ``names``."""
    if "Traceback" in err or "Traceback" in out:
        return "traceback", err[-1500:]
    if code == 0:
        return "silent", f"exit 0; stdout: {_short(out, 400)}"
    lines = error_lines(err)
    if code not in exits:
        return "unclear", f"exit {code} (expected {exits}); stderr: {_short(err, 600)}"
    if len(lines) != 1 or "error" not in lines[0]:
        return "unclear", f"expected one error line, got {len(lines)}: {_short(err, 600)}"
    wanted = [n for n in names if n and n.strip()]
    message = "\n".join(line for line in err.splitlines() if not line.startswith("warning:"))
    if wanted and not any(n in message for n in wanted):
        return "unclear", f"message names none of {[_short(n, 60) for n in wanted]}: {_short(message, 400)}"
    return "ok", _short(lines[0], 300)


# ---- in-process runs ------------------------------------------------------------------------------
def call_main(function: Callable, argv: list) -> tuple:
    """(exit code, stdout, stderr) of ``function(argv)``; an exception other than SystemExit is a
    traceback (its text goes to stderr)."""
    out, err = io.StringIO(), io.StringIO()
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = function(argv)
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
            if isinstance(exit_.code, str):
                print(exit_.code, file=sys.stderr)
        except BaseException:  # noqa: BLE001 - anything else is what the probe looks for
            code = None
            print(traceback.format_exc(), file=sys.stderr)
    for number, handler in handlers.items():
        signal.signal(number, handler)
    return code, out.getvalue(), err.getvalue()


class Workspace:
    """Fabricated data sets and a finished reference run in one temporary folder."""

    def __init__(self, root: Path):
        self.root = root
        self.cifar = fabricate.make_cifar10(root / "cifar", per_batch=4, test_count=4)
        fabricate.make_cifar100(root / "cifar")
        self.mnist = fabricate.make_mnist_family(root / "mnist")
        self.dvs = fabricate.make_dvs128_gesture(root / "dvs", per_class=1, events=200)
        self.file = root / "a_file.txt"
        self.file.write_text("not a folder\n")
        self.empty = root / "empty_dir"
        self.empty.mkdir()
        self.counter = 0

    def data_dir(self, script: str) -> Path:
        return {"cifar": self.cifar, "mnist": self.mnist, "dvs": self.dvs}[script]

    def fresh(self, stem: str = "out") -> Path:
        self.counter += 1
        return self.root / "outs" / f"{stem}{self.counter}"

    def protected(self) -> dict:
        return {name: tree_digest(path) for name, path in
                (("cifar", self.cifar), ("mnist", self.mnist), ("dvs", self.dvs),
                 ("reference", self.root / "reference"))}


# ---- bad CLI values -------------------------------------------------------------------------------
LONG_NAME = "n" * 300
COMMON_BAD = ["", " ", "nan", "NaN", "inf", "-inf", "1e39", "-1e39", str(-2**63), "abc", "\u00e9\u00e8", "\U0001F600", "x" * 5000, "0x10", "1,5", "--"]
BAD_BY_KIND = {
    "positive_int": ["0", "-1", "1.5", "2147483648", "1e3", "-0", str(2**63), str(2**70)],
    "_non_negative_int": ["-1", "1.5", "2147483648", "1e3", str(2**63), str(2**70)],
    "positive_float": ["0", "-0", "-1", "0.0", "1e-39", "1e-320", "3.5e38", "-1e-9"],
    "_non_negative_float": ["-1", "-1e-9", "3.5e38", "1e-320", "-0.5"],
    "_momentum": ["1", "1.0", "-0.1", "2", "1e-320"],
    "tau": ["0", "-2", "0.5", "1e39", "-inf", "0.999", "1e-320"],
    "_fraction": ["0", "1", "1.5", "-0.1", "1e-320"],
    "_unit_interval": ["-0.01", "1.01", "2", "-1e-9"],
    "seed": ["-1", str(2**32), "1.5", str(2**64), str(2**63), str(2**70)],
    "_model_name": ["../x", "a/b", ".", "..", "no_such_model", "os.system", "/etc/passwd"],
    "_device": ["gpu", "cuda:99", "meta", "mps", "cuda", "xla", "cuda:-1", "cpu:x", "vulkan"],
    "choice": ["SGD", "bogus", "Saf-E", "none"],
}
#: Values every kind but text and paths refuses; text (paths, choices, models) gets its own.
NUMERIC_KINDS = {"positive_int", "_non_negative_int", "positive_float", "_non_negative_float",
                 "_momentum", "tau", "_fraction", "_unit_interval", "seed"}


def path_values(ws: Workspace, dest: str) -> list:
    common = ["", " ", "/" + LONG_NAME, f"{ws.root}/{LONG_NAME}/x", "a/" * 2100,
              f"{ws.root}/\udcff\udcfe_missing"]
    if dest == "data_dir":
        return common + ["/nonexistent/dir", str(ws.file), "/proc/self/status", "/proc/self",
                         "/dev/null", str(ws.empty), f"{ws.file}/sub", "/proc"]
    if dest == "out_dir":
        return common + [str(ws.file), "/proc/self/status", "/dev/null", f"{ws.file}/sub",
                         "/proc/self/new_run", "/sys/new_run", str(ws.cifar)]
    return common + ["/nonexistent/checkpoint.pth", str(ws.empty), "/dev/null", "/proc/self/status",
                     str(ws.file), str(ws.cifar / "cifar-10-batches-py" / "data_batch_1"),
                     "/proc/self/new.pth", f"{ws.file}/sub.pth"]


def flag_kind(action) -> str:
    if action.choices is not None:
        return "choice"
    kind = getattr(action.type, "__name__", "")
    if kind in ("_path",):
        return "path"
    return kind


def flag_cases(parser, ws: Workspace) -> list:
    """(flag, value list) for every flag of a parser."""
    cases = []
    for action in parser._actions:
        if not action.option_strings or action.dest == "help":
            continue
        flag = action.option_strings[0]
        if action.nargs == 0:
            cases.append((flag, [f"{flag}=1"], "value"))
            cases.append((flag, [flag, "yes"], "value"))
            continue
        kind = flag_kind(action)
        values = (path_values(ws, action.dest) if kind == "path"
                  else BAD_BY_KIND.get(kind, []) + (COMMON_BAD if kind in NUMERIC_KINDS else
                                                    ["", " ", "\U0001F600", "x" * 5000, "nan"]))
        if kind == "tau":
            values = [v for v in values if v != "inf"]  # inf is the IF neuron
        cases.append((flag, [flag], "missing value"))
        for value in dict.fromkeys(values):
            cases.append((flag, [flag, value], value))
    return cases


SEMANTIC_BAD = [
    (["-amp"], "-amp"), (["-test-only"], "-test-only"), (["-deploy-lif", "-method", "bptt"], "-deploy-lif"),
    (["-backend", "cupy"], "-backend"), (["-backend", "triton", "-method", "bptt"], "-backend"),
    (["-alpha", "2", "-surrogate", "rep"], "-alpha"), (["-amp", "-method", "ottt-a"], "-amp"),
    (["-tau", "1", "-method", "bptt"], "-tau"), (["-tau", "1", "-method", "ottt-o"], "-tau"),
    (["-method", "ottt-o", "-model", "spiking_resnet18"], "-model"),
    (["-model", "spiking_vgg11"], "-model"), (["--lr", "0.1"], "--lr"), (["-learning-rate", "1"], "-learning-rate"),
    (["-LR", "0.1"], "-LR"), (["-stop-after", "5", "-epochs", "2", "-resume", "/nonexistent.pth"], "nonexistent"),
]


def _replace(argv: list, flag_and_value: list) -> list:
    """``argv`` with ``flag`` (and its value) taken out and the bad one appended."""
    flag = flag_and_value[0].split("=")[0]
    out, skip = [], False
    for item in argv:
        if skip:
            skip = False
            continue
        if item == flag:
            skip = flag not in ("-no-progress",)
            continue
        out.append(item)
    return out + flag_and_value


def probe_script_flags(tally: Tally, ws: Workspace, script: str, quick: bool) -> None:
    from saf_examples import run as run_module
    from saf_examples.cli import build_parser

    datasets = DATASETS[script]
    parser = build_parser(datasets)
    cases = flag_cases(parser, ws) + [(words[0], words, words[0]) for words, _ in SEMANTIC_BAD]
    names_for = {tuple(words): name for words, name in SEMANTIC_BAD}
    if quick:
        cases = cases[::6]
    category = f"cli:{SCRIPTS[script]}"
    for flag, words, label in cases:
        out = ws.fresh(script)
        base = ["-data-dir", str(ws.data_dir(script)), "-out-dir", str(out), *TINY]
        if script == "mnist":
            base += ["-dataset", "mnist"]
        argv = _replace(base, words)
        before = ws.protected()
        code, stdout, stderr = call_main(lambda a: run_module.main(a, datasets=datasets), argv)
        names = [names_for.get(tuple(words), flag)] + ([words[-1]] if len(words) > 1 else [])
        outcome, detail = judge_refusal(code, stdout, stderr, names)
        outcome, detail = _check_protected(ws, before, outcome, detail)
        tally.add(category, f"{flag} {_short(label, 40)!r}", words, outcome, detail)
        shutil.rmtree(out, ignore_errors=True)


def _check_protected(ws: Workspace, before: dict, outcome: str, detail: str) -> tuple:
    after = ws.protected()
    lost = {name: lost_files(before[name], after[name]) for name in before}
    lost = {name: files for name, files in lost.items() if files}
    if lost:
        return "loss", f"changed or removed: {lost}; {detail}"
    return outcome, detail


def probe_digits_flags(tally: Tally, ws: Workspace, quick: bool) -> None:
    from saf_examples import digits

    accepted = []
    original = digits.train_in_fresh_process
    digits.train_in_fresh_process = lambda **kw: accepted.append(kw) or {"error": "stub"}
    try:
        parser = digits.build_parser()
        cases = flag_cases(parser, ws)
        cases += [("-method", ["-method", "bogus"], "bogus"), ("-method", ["-method", ","], ","),
                  ("-method", ["-method", "saf-e", "bogus"], "saf-e bogus"), ("-tau", ["-tau", "1", "-method", "ottt-o"], "1"),
                  ("-method", ["-method", "all,bogus"], "all,bogus")]
        if quick:
            cases = cases[::6]
        for flag, words, label in cases:
            if flag == "-method" and label in ("missing value",):
                words = ["-method"]
            accepted.clear()
            argv = _replace(["-epochs", "1", "-T", "2", "-method", "saf-e"], words)
            code, out, err = call_main(digits.main, argv)
            if accepted and code != 2:
                outcome, detail = "silent", f"accepted: trainer called with {_short(accepted[0], 300)}"
            else:
                outcome, detail = judge_refusal(code, out, err, [flag] + words[1:])
            tally.add("cli:digits.py", f"{flag} {_short(label, 40)!r}", words, outcome, detail)
    finally:
        digits.train_in_fresh_process = original


# ---- library API misuse ----------------------------------------------------------------------------
def _small_net(neuron_kwargs=None):
    import spikingjelly_saf as saf

    return nn.Sequential(nn.Linear(4, 3), saf.SAFNode(**(neuron_kwargs or {})), nn.Linear(3, 2))


def library_cases() -> list:
    """(name, callable, accept-check or None). A case passes when the call raises a ValueError,
    TypeError, ArithmeticError or RuntimeError from the library itself, or warns; when it returns
    quietly, the accept-check (if any) says whether that result is right."""
    import spikingjelly_saf as saf
    from spikingjelly_saf import functional as F
    from spikingjelly_saf.health import ChanceLossWatch

    not_modules = {"None": None, "int": 42, "str": "model", "list": [nn.Linear(2, 2)], "class": nn.Linear,
                   "dict": {}, "tensor": torch.zeros(2), "function": print}
    cases = []
    for what, value in not_modules.items():
        cases += [(f"to_saf({what})", lambda v=value: saf.to_saf(v), None),
                  (f"to_lif({what})", lambda v=value: saf.to_lif(v), None),
                  (f"check_exactness({what})", lambda v=value: saf.check_exactness(v), None),
                  (f"set_backend({what}, 'torch')", lambda v=value: saf.set_backend(v, "torch"), None),
                  (f"compare_with_lif({what}, x)", lambda v=value: saf.compare_with_lif(v, torch.zeros(2, 1, 4)), None),
                  (f"FiringHealth({what})", lambda v=value: saf.FiringHealth(v), None),
                  (f"SpikeRecorder({what})", lambda v=value: saf.SpikeRecorder(v), None),
                  (f"saf_inference({what}, x)", lambda v=value: saf.saf_inference(v, torch.zeros(2, 1, 4)), None)]
    for backend in ("bogus", "", None, 5, "CUPY", "cupy", "triton", "Torch", "torch ", ["torch"]):
        cases.append((f"set_backend(net, {backend!r})", lambda b=backend: saf.set_backend(_small_net(), b), None))
    cases.append(("set_backend(net, 'torch', instance='x')",
                  lambda: saf.set_backend(_small_net(), "torch", instance="x"), None))
    cases.append(("to_lif(net, memoryless='bogus')", lambda: saf.to_lif(_small_net(), memoryless="bogus"), None))
    cases.append(("check_exactness(net, trust=5)", lambda: saf.check_exactness(_small_net(), trust=5), None))
    cases.append(("check_exactness(net, trust=['x'])", lambda: saf.check_exactness(_small_net(), trust=["x"]), None))
    bad_node = {
        "tau": [0.5, 0, -1, 0.999, math.nan, -math.inf, "2", None, nn.Parameter(torch.tensor(2.0)),
                torch.tensor([2.0, 3.0]), True, complex(2, 0)],
        "v_threshold": [0, 0.0, -1, 1e-320, 1e-45, math.nan, math.inf, -math.inf, "1", None,
                        torch.tensor([1.0, 2.0]), 1e39],
        "v_reset": [0.0, math.nan, "0"],
        "step_mode": ["x", "", None, "M", "ms", 1],
        "backend": ["bogus", None, 3, "", "CUPY"],
        "surrogate_function": [None, "sigmoid", 5],
        "decay_input": ["yes", None],
        "detach_reset": ["no", None],
    }
    for key, values in bad_node.items():
        for value in values:
            cases.append((f"SAFNode({key}={_short(repr(value), 40)})",
                          lambda k=key, v=value: saf.SAFNode(**{k: v}), None))
    cases.append(("SAFNode(tau=tensor(2.))", lambda: saf.SAFNode(tau=torch.tensor(2.0)), _same_as_tau2))

    def forward(mode, x):
        node = saf.SAFNode(step_mode=mode)
        return node(x)

    bad_inputs = {"int64": torch.ones(2, 3, dtype=torch.int64), "bool": torch.ones(2, 3, dtype=torch.bool),
                  "uint8": torch.ones(2, 3, dtype=torch.uint8), "complex": torch.ones(2, 3, dtype=torch.complex64),
                  "list": [[1.0, 2.0]], "None": None, "ndarray": np.ones((2, 3), dtype=np.float32),
                  "0-d": torch.tensor(1.0), "float": 1.0}
    for mode in ("s", "m"):
        for what, x in bad_inputs.items():
            if mode == "s" and what in ("0-d", "float"):
                continue  # a scalar is one neuron's input in single-step mode
            cases.append((f"SAFNode(step_mode={mode!r})({what})", lambda m=mode, v=x: forward(m, v), None))
    cases.append(("SAFNode 'm' empty T", lambda: forward("m", torch.zeros(0, 2, 3)), None))
    cases.append(("SAFNode 'm' 1-d", lambda: forward("m", torch.zeros(3)), None))
    cases.append(("SAFNode 's' shape change without reset", _shape_change, None))
    cases += _training_cases()
    cases += [
        ("saf_inference(readout='bogus')", lambda: saf.saf_inference(_small_net(), torch.rand(2, 1, 4), readout="bogus"), None),
        ("saf_inference(readout=None)", lambda: saf.saf_inference(_small_net(), torch.rand(2, 1, 4), readout=None), None),
        ("saf_inference(x=nan)", lambda: saf.saf_inference(_small_net(), torch.full((2, 1, 4), math.nan)), None),
        ("saf_inference(x T=0)", lambda: saf.saf_inference(_small_net(), torch.rand(0, 1, 4)), None),
        ("saf_inference(x 0-d)", lambda: saf.saf_inference(_small_net(), torch.tensor(1.0)), None),
        ("saf_inference(x list)", lambda: saf.saf_inference(_small_net(), [[0.0] * 4]), None),
        ("saf_inference(x int64)", lambda: saf.saf_inference(_small_net(), torch.ones(2, 1, 4, dtype=torch.int64)), None),
    ]
    for kw in ({"steps": 0}, {"steps": -1}, {"steps": 1.5}, {"steps": "4"}, {"steps": math.nan},
               {"silent_below": -1}, {"saturated_above": 2}, {"silent_below": 0.5, "saturated_above": 0.1},
               {"silent_below": math.nan}, {"saturated_above": math.nan}, {"method": "bogus"},
               {"steps": True}):
        cases.append((f"FiringHealth(net, {kw})", lambda k=kw: saf.FiringHealth(_small_net(), **k), None))
    for kw in ({"tau": 0.5}, {"tau": math.nan}, {"tau": "2"}, {"step_mode": "x"}, {"tau": 0}):
        cases.append((f"InputAverage({kw})", lambda k=kw: saf.InputAverage(**k), None))
    for kw in ({"decay": 2.0}, {"decay": -0.5}, {"decay": math.nan}, {"decay": "0.5"}, {"decay": 0.5, "step_mode": "x"},
               {"decay": math.inf}):
        cases.append((f"OutputRecovery({kw})", lambda k=kw: saf.OutputRecovery(**k), None))
    seq = torch.rand(3, 2, 4)
    for decay in (math.nan, 1.5, -0.5, math.inf, "0.5"):
        cases.append((f"rate_readout(decay={decay!r})", lambda d=decay: F.rate_readout(seq, d), None))
        cases.append((f"weighted_average(decay={decay!r})", lambda d=decay: F.weighted_average(seq, d), None))
    cases += [("rate_readout(dim=5)", lambda: F.rate_readout(seq, 0.5, dim=5), None),
              ("weighted_average(dim=5)", lambda: F.weighted_average(seq, 0.5, dim=5), None),
              ("rate_readout(list)", lambda: F.rate_readout([[1.0]], 0.5), None),
              ("SpikeRecorder(net, keep='bogus')", lambda: saf.SpikeRecorder(_small_net(), keep="bogus"), None),
              ("predict(0-d)", lambda: saf.predict(torch.tensor(1.0)), None),
              ("predict(list)", lambda: saf.predict([1.0, 2.0]), None),
              ("predict(nan scores)", lambda: saf.predict(torch.full((2, 3), math.nan)), None)]
    for kw in ({"num_classes": 0}, {"num_classes": 1}, {"num_classes": -1}, {"num_classes": 10, "patience": 0},
               {"num_classes": 10, "tolerance": -1}, {"num_classes": 10, "chance_loss": math.nan},
               {"num_classes": 2.5}, {"num_classes": 10, "patience": -5}):
        cases.append((f"ChanceLossWatch({kw})", lambda k=kw: ChanceLossWatch(**k), None))
    for kw in ({"num_classes": 0}, {"in_channels": 0}, {"first_width": 0}, {"drop_rate": 1.5},
               {"drop_rate": math.nan}, {"num_classes": -3}, {"first_width": -8}, {"width_divisor": 0}):
        cases.append((f"zoo.vggws({kw})", lambda k=kw: saf.zoo.vggws(**k), None))
    return cases


def _same_as_tau2(node) -> Optional[str]:
    import spikingjelly_saf as saf

    x = torch.rand(3, 2, 5) * 3
    reference = saf.SAFNode(tau=2.0, step_mode="m")
    node.step_mode = "m"
    got, want = node(x), reference(x)
    return None if torch.equal(got, want) else "tau=tensor(2.) behaves unlike tau=2.0"


def _shape_change():
    import spikingjelly_saf as saf

    node = saf.SAFNode()
    node(torch.rand(2, 3))
    return node(torch.rand(4, 5))


def _training_cases() -> list:
    import spikingjelly_saf as saf

    def train(x=None, target=None, f_loss=None, method="saf-e", optimizer="sgd", model=None, **kw):
        net = model if model is not None else _small_net()
        opt = torch.optim.SGD(net.parameters(), lr=0.1) if optimizer == "sgd" else optimizer
        x = torch.rand(2, 3, 4) if x is None else x  # [B, T, *]
        target = torch.tensor([0, 1]) if target is None else target
        f_loss = f_loss or nn.functional.cross_entropy
        return saf.saf_online_training(net, opt, x, target, f_loss, method=method, **kw)

    vector_loss = lambda y, t: nn.functional.cross_entropy(y, t, reduction="none")  # noqa: E731
    return [
        ("saf_online_training(vector loss)", lambda: train(f_loss=vector_loss), None),
        ("saf_online_training(vector loss, saf-f)", lambda: train(f_loss=vector_loss, method="saf-f"), None),
        ("saf_online_training(x nan)", lambda: train(x=torch.full((2, 3, 4), math.nan)), None),
        ("saf_online_training(x inf, saf-f)", lambda: train(x=torch.full((2, 3, 4), math.inf), method="saf-f"), None),
        ("saf_online_training(T=0)", lambda: train(x=torch.rand(2, 0, 4)), None),
        ("saf_online_training(T=0, saf-f)", lambda: train(x=torch.rand(2, 0, 4), method="saf-f"), None),
        ("saf_online_training(B=0)", lambda: train(x=torch.rand(0, 3, 4), target=torch.zeros(0, dtype=torch.long)), None),
        ("saf_online_training(x [T, B, *])", lambda: train(x=torch.rand(3, 2, 4)), None),
        ("saf_online_training(x 1-d)", lambda: train(x=torch.rand(4)), None),
        ("saf_online_training(x int64)", lambda: train(x=torch.ones(2, 3, 4, dtype=torch.int64)), None),
        ("saf_online_training(method='bogus')", lambda: train(method="bogus"), None),
        ("saf_online_training(method=None)", lambda: train(method=None), None),
        ("saf_online_training(optimizer=None)", lambda: train(optimizer=None), None),
        ("saf_online_training(optimizer='sgd str')", lambda: train(optimizer="adam"), None),
        ("saf_online_training(f_loss=5)", lambda: train(f_loss=5), None),
        ("saf_online_training(model without SAFNode)", lambda: train(model=nn.Sequential(nn.Linear(4, 2))), None),
        ("saf_online_training(target wrong batch)", lambda: train(target=torch.tensor([0, 1, 1])), None),
        ("saf_online_training(target_is_sequence, flat target)",
         lambda: train(target_is_sequence=True), None),
        ("saf_online_training(loss returns nan)",
         lambda: train(f_loss=lambda y, t: (y * math.nan).sum()), None),
        ("saf_online_training(loss returns int)", lambda: train(f_loss=lambda y, t: 3), None),
        ("saf_online_training(model=None)", lambda: saf.saf_online_training(None, None, torch.rand(2, 1, 4),
                                                                          torch.tensor([0]), nn.functional.cross_entropy), None),
    ]


def _raised_by_library(error: BaseException) -> bool:
    """Whether the innermost frame that raised lies in the library or in SpikingJelly, whose checks
    the library relies on (a deliberate check, not an accident inside torch)."""
    frames = traceback.extract_tb(error.__traceback__)
    return bool(frames) and any(part in frames[-1].filename for part in
                                ("/spikingjelly_saf/", "/spikingjelly/activation_based/"))


def probe_library(tally: Tally, quick: bool) -> None:
    import warnings

    cases = library_cases()
    if quick:
        cases = cases[::4]
    for name, function, accept_check in cases:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                result = function()
            except (ValueError, TypeError, ArithmeticError, RuntimeError, NotImplementedError) as error:
                if _raised_by_library(error) and str(error).strip():
                    tally.add("library", name, name, "ok", f"{type(error).__name__}: {_short(error, 300)}")
                else:
                    tally.add("library", name, name, "traceback", "".join(
                        traceback.format_exception(type(error), error, error.__traceback__))[-1500:])
                continue
            except Exception as error:  # noqa: BLE001
                tally.add("library", name, name, "traceback", "".join(
                    traceback.format_exception(type(error), error, error.__traceback__))[-1500:])
                continue
        said = [str(w.message) for w in caught if not issubclass(w.category, DeprecationWarning)]
        if said:
            tally.add("library", name, name, "ok", f"warned: {_short(said[0], 300)}")
        elif accept_check is not None and accept_check(result) is None:
            tally.add("library", name, name, "ok", "accepted with the right meaning")
        else:
            problem = accept_check(result) if accept_check else None
            tally.add("library", name, name, "silent", problem or f"returned {_short(type(result).__name__)} quietly")


# ---- subprocess runs ------------------------------------------------------------------------------
@dataclass
class Result:
    code: Optional[int]
    out: str
    err: str
    seconds: float


def _limit_file_size(size: int):
    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes then fail with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))
    return apply


def run_script(script: str, argv: list, timeout: float = 240, env: Optional[dict] = None,
               cwd: Optional[Path] = None, file_limit: Optional[int] = None, unset=()) -> Result:
    environment = {**os.environ, **CHILD_ENV, **(env or {})}
    for name in unset:
        environment.pop(name, None)
    start = time.monotonic()
    try:
        done = subprocess.run([sys.executable, str(EXAMPLES / SCRIPTS[script]), *map(str, argv)],
                              capture_output=True, timeout=timeout, env=environment,
                              cwd=str(cwd or ROOT), preexec_fn=_limit_file_size(file_limit) if file_limit is not None else None)
    except subprocess.TimeoutExpired as expired:
        return Result(None, (expired.stdout or b"").decode(errors="replace"),
                      (expired.stderr or b"").decode(errors="replace") + f"\n[timed out after {timeout} s]",
                      time.monotonic() - start)
    return Result(done.returncode, done.stdout.decode(errors="replace"), done.stderr.decode(errors="replace"),
                  time.monotonic() - start)


def checkpoint_epoch(path: Path) -> Optional[int]:
    """The epoch of a checkpoint that loads and passes every check, or None."""
    from saf_examples import checkpoint

    try:
        return int(checkpoint.load_checkpoint(path)["epoch"])
    except Exception:  # noqa: BLE001 - any failure means the file is not a good checkpoint
        return None


def json_ok(path: Path) -> bool:
    try:
        json.loads(path.read_text())
        return True
    except Exception:  # noqa: BLE001
        return False


class Faults:
    def __init__(self, tally: Tally, ws: Workspace, quick: bool):
        self.tally, self.ws, self.quick = tally, ws, quick
        self.base = ws.root / "reference"
        self.data = ws.cifar

    def argv(self, out: Path, *extra) -> list:
        return ["-data-dir", self.data, "-out-dir", out, *TINY, *extra]

    def make_reference(self) -> None:
        """A run of 3 epochs stopped after the first: what the resume faults start from."""
        result = run_script("cifar", self.argv(self.base, "-epochs", "3", "-stop-after", "1"))
        if result.code != 0 or checkpoint_epoch(self.base / "checkpoint_last.pth") != 0:
            raise SystemExit(f"the reference run failed: {result.err[-2000:]}")

    def copy_of_reference(self, name: str) -> Path:
        target = self.ws.root / "faults" / name
        shutil.copytree(self.base, target)
        return target

    def record(self, category, name, given, outcome, detail, before=None) -> None:
        if before is not None:
            outcome, detail = _check_protected(self.ws, before, outcome, detail)
        self.tally.add(category, name, given, outcome, detail)

    # -- a full disk ---------------------------------------------------------------------------------
    def disk_full(self) -> None:
        sizes = [0, 16, 512, 700, 1000, 2048, 4096, 8192, 20000, 30000, 45000, 60000, 80000,
                 100000, 110000, 111000, 113000, 150000, 400000]
        if self.quick:
            sizes = sizes[::4]
        for size in sizes:
            self._disk_full_resume(size)
        for size in ([0, 600, 5000, 50000, 105000, 200000] if not self.quick else [5000]):
            self._disk_full_fresh(size)

    def _disk_full_resume(self, size: int) -> None:
        run = self.copy_of_reference(f"fsize_resume_{size}")
        before = self.ws.protected()
        last = run / "checkpoint_last.pth"
        result = run_script("cifar", ["-resume", last, "-j", "0", "-no-progress"], file_limit=size)
        outcome, detail = self._judge_disk_full(result, run, previous_epoch=0, final_epoch=2)
        if outcome == "ok" and result.code != 0:
            again = run_script("cifar", ["-resume", last, "-j", "0", "-no-progress"])
            if again.code != 0 or checkpoint_epoch(last) != 2:
                outcome, detail = "unclear", f"the resume after the full disk failed: {again.err[-800:]}"
        self.record("fault:disk-full", f"resume under RLIMIT_FSIZE={size}", f"-resume {last} (ulimit -f {size} B)",
                    outcome, detail, before)

    def _judge_disk_full(self, result: Result, run: Path, previous_epoch: Optional[int], final_epoch: int) -> tuple:
        if "Traceback" in result.err or "Traceback" in result.out:
            return "traceback", result.err[-1500:]
        epoch = checkpoint_epoch(run / "checkpoint_last.pth") if (run / "checkpoint_last.pth").exists() else None
        if previous_epoch is not None and (epoch is None or epoch < previous_epoch):
            return "loss", f"checkpoint_last.pth no longer loads (epoch {epoch}); exit {result.code}"
        for name in ("args.json", "history.json"):
            if (run / name).exists() and not json_ok(run / name):
                return "loss", f"{name} is not valid JSON after the fault"
        if result.code == 0:
            return ("ok", "the limit was large enough; run finished") if epoch == final_epoch else \
                ("silent", f"exit 0 but the last checkpoint is epoch {epoch}")
        lines = error_lines(result.err)
        if result.code != 2 or len(lines) != 1:
            return "unclear", f"exit {result.code}; stderr: {result.err[-800:]}"
        if not any(word in lines[0] for word in ("File too large", "No space left", "temporary folder")):
            return "unclear", f"the message does not say the disk/file limit: {lines[0]}"
        leftovers = [p.name for p in run.glob("*.tmp*")]
        return "ok", lines[0][:300] + (f" (temporary files left: {leftovers})" if leftovers else "")

    def _disk_full_fresh(self, size: int) -> None:
        out = self.ws.fresh("fsize_fresh")
        before = self.ws.protected()
        result = run_script("cifar", self.argv(out, "-epochs", "2"), file_limit=size)
        outcome, detail = self._judge_disk_full(result, out, previous_epoch=None, final_epoch=1)
        last = out / "checkpoint_last.pth"
        if outcome == "ok" and last.exists() and checkpoint_epoch(last) is None:
            outcome, detail = "loss", "a checkpoint_last.pth that does not load was left"
        self.record("fault:disk-full", f"fresh run under RLIMIT_FSIZE={size}", f"(ulimit -f {size} B)",
                    outcome, detail, before)

    # -- signals -------------------------------------------------------------------------------------
    def signals(self) -> None:
        moments = [("during start-up", 0.3, None), ("after the banner", None, "arguments:"),
                   ("during the first epoch", None, "epoch 0/"), ("after epoch 0", None, "epoch 0:"),
                   ("in epoch 2", None, "epoch 2/"), ("after epoch 3", None, "epoch 3:"),
                   ("at 2.5 s", 2.5, None), ("in epoch 20", None, "epoch 20/"),
                   ("at the summary", None, "test acc")]
        if self.quick:
            moments = moments[1::3]
        for number in (signal.SIGINT, signal.SIGTERM):
            for label, delay, line in moments:
                self._signal_case(number, label, delay, line)

    def _signal_case(self, number, label, delay, line) -> None:
        out = self.ws.fresh("signal")
        argv = self.argv(out, "-epochs", str(SIGNAL_EPOCHS), "-max-train-batches", "3", "-progress-every", "1")
        before = self.ws.protected()
        command = [sys.executable, str(EXAMPLES / SCRIPTS["cifar"]), *map(str, argv)]
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   env={**os.environ, **CHILD_ENV}, cwd=str(ROOT), text=True)
        seen = threading.Event()
        lines: list = []

        def reader():
            for text in process.stdout:
                lines.append(text)
                if line and line in text:
                    seen.set()
        thread = threading.Thread(target=reader, daemon=True)
        thread.start()
        if delay is not None:
            time.sleep(delay)
        else:
            seen.wait(120)
        process.send_signal(number)
        try:
            err = process.stderr.read()
            process.wait(120)
        except subprocess.TimeoutExpired:
            process.kill()
            err = "[did not stop within 120 s of the signal]"
        thread.join(5)
        name = signal.Signals(number).name
        outcome, detail = self._judge_signal(number, process.returncode, "".join(lines), err, out, argv)
        self.record("fault:signal", f"{name} {label}", f"{name} {label}: {' '.join(map(str, argv))}",
                    outcome, detail, before)

    def _judge_signal(self, number, code, out, err, run: Path, argv) -> tuple:
        if "Traceback" in err or "Traceback" in out:
            return "traceback", err[-1500:]
        last = run / "checkpoint_last.pth"
        if code == 0:
            return ("ok", "finished before the signal") if checkpoint_epoch(last) == SIGNAL_EPOCHS - 1 else \
                ("silent", "exit 0 without a finished run")
        expected = 130 if number == signal.SIGINT else 143
        lines = error_lines(err)
        if code != expected or len(lines) != 1 or "interrupted" not in lines[0]:
            return "unclear", f"exit {code} (expected {expected}); stderr: {_short(err, 800)}"
        if last.exists() and checkpoint_epoch(last) is None:
            return "loss", "checkpoint_last.pth does not load after the signal"
        resume = lines[0].split("with: ", 1)[1] if "with: " in lines[0] else None
        if resume is None and last.exists():
            return "unclear", f"a checkpoint exists but the message names no resume command: {lines[0]}"
        if resume:
            command = shlex.split(resume)[2:] + ["-j", "0", "-no-progress"]
        else:
            command = argv + (["-overwrite"] if "-overwrite" in lines[0] else [])
        again = run_script("cifar", command)
        if again.code != 0 or checkpoint_epoch(last) != SIGNAL_EPOCHS - 1:
            return "unclear", f"not resumable with {_short(command, 300)}: exit {again.code}: {again.err[-600:]}"
        return "ok", lines[0][:300]

    # -- two runs in one folder ---------------------------------------------------------------------
    def concurrency(self) -> None:
        variants = [("fresh run into a live run's folder", ["-epochs", "1"], False),
                    ("-overwrite into a live run's folder", ["-epochs", "1", "-overwrite"], False),
                    ("-resume of the live run", None, True),
                    ("-test-only of the live run", ["-test-only"], True)]
        if self.quick:
            variants = variants[:2]
        for label, extra, resume in variants:
            self._concurrent_case(label, extra, resume)
        self._resume_into_other()

    def _concurrent_case(self, label, extra, resume) -> None:
        run = self.copy_of_reference(f"live_{label.split()[0].strip('-')}_{self.ws.counter}")
        self.ws.counter += 1
        before = self.ws.protected()
        first = subprocess.Popen(
            [sys.executable, str(EXAMPLES / SCRIPTS["cifar"]), "-resume", str(run / "checkpoint_last.pth"),
             "-epochs", "100000", "-max-train-batches", "1", "-j", "0", "-no-progress"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, **CHILD_ENV}, text=True)
        deadline = time.monotonic() + 120
        while not (run / ".lock").exists() or "epoch 1" not in _peek(run):
            if time.monotonic() > deadline or first.poll() is not None:
                break
            time.sleep(0.2)
        if resume:
            argv = ["-resume", run / "checkpoint_last.pth", "-j", "0", "-no-progress", *(extra or [])]
        else:
            argv = self.argv(run, *extra)
        second = run_script("cifar", argv)
        first.send_signal(signal.SIGINT)
        out, err = first.communicate(timeout=300)
        outcome, detail = judge_refusal(second.code, second.out, second.err, [str(run), ".lock", "process"])
        if outcome == "ok" and (first.returncode != 130 or checkpoint_epoch(run / "checkpoint_last.pth") is None):
            outcome, detail = "loss", f"the live run ended with {first.returncode}: {err[-600:]}"
        self.record("fault:concurrency", label, " ".join(map(str, argv)), outcome, detail, before)

    def _resume_into_other(self) -> None:
        source = self.copy_of_reference(f"resume_source_{self.ws.counter}")
        other = self.copy_of_reference(f"resume_target_{self.ws.counter}")
        self.ws.counter += 1
        for label, argv in (("-resume A -out-dir B (B a run)", ["-resume", source / "checkpoint_last.pth", "-out-dir", other]),
                            ("-resume A -out-dir B -overwrite", ["-resume", source / "checkpoint_last.pth", "-out-dir", other, "-overwrite"]),
                            ("-resume A -out-dir A/sub", ["-resume", source / "checkpoint_last.pth", "-out-dir", source / "sub"])):
            before_other, before_source = tree_digest(other), tree_digest(source)
            result = run_script("cifar", argv)
            outcome, detail = judge_refusal(result.code, result.out, result.err, ["-out-dir", "-resume", str(other)])
            lost = lost_files(before_other, tree_digest(other)) + lost_files(before_source, tree_digest(source))
            if lost:
                outcome, detail = "loss", f"changed: {lost}"
            self.record("fault:concurrency", label, " ".join(map(str, argv)), outcome, detail)

    # -- damaged data ---------------------------------------------------------------------------------
    def damaged_data(self) -> None:
        cases = self._data_cases()
        if self.quick:
            cases = cases[::4]
        for label, script, build, dataset in cases:
            root = self.ws.root / "damaged" / f"{len(self.tally.cases)}"
            root.mkdir(parents=True)
            sentinel = root / "SENTINEL"
            named = build(root, sentinel)
            out = self.ws.fresh("damaged")
            argv = ["-data-dir", root, "-out-dir", out, *TINY, "-dataset", dataset]
            digest = tree_digest(root)
            result = run_script(script, argv)
            outcome, detail = judge_refusal(result.code, result.out, result.err, named)
            if sentinel.exists():
                outcome, detail = "code_execution", f"the payload ran; {detail}"
            elif lost_files({k: v for k, v in digest.items()}, tree_digest(root)):
                outcome, detail = "loss", f"the data folder changed: {lost_files(digest, tree_digest(root))}"
            elif any(out.glob("checkpoint*")):
                outcome, detail = "silent", f"trained on damaged data; {detail}"
            self.record("fault:damaged-data", label, f"{script} -dataset {dataset}", outcome, detail)

    def _data_cases(self) -> list:
        cases = []

        def mnist(change):
            def build(root, sentinel):
                fabricate.make_mnist_family(root)
                return change(root, sentinel)
            return build

        def gz(root, name):
            return root / f"{name}.gz"

        def write_idx(name, data, compress=True):
            def change(root, _):
                (root / f"{name}.gz").write_bytes(gzip.compress(data) if compress else data)
                return [name]
            return change

        images = "train-images-idx3-ubyte"
        labels = "train-labels-idx1-ubyte"
        good_images = fabricate.idx_bytes(np.zeros((8, 28, 28), np.uint8))
        header = lambda dims, type_=0x08: bytes([0, 0, type_, len(dims)]) + b"".join(  # noqa: E731
            int(d).to_bytes(4, "big") for d in dims)
        idx_cases = [
            ("idx images truncated", lambda r, s: (fabricate.truncate(gz(r, images), 0.5), [images])[1]),
            ("idx gzip body corrupt", lambda r, s: (_flip(gz(r, images), 30), [images])[1]),
            ("idx empty file", write_idx(images, b"", compress=False)),
            ("idx empty gzip", write_idx(images, b"")),
            ("idx wrong magic", write_idx(images, b"\x01\x02" + good_images[2:])),
            ("idx wrong type byte", write_idx(images, header((8, 28, 28), 0x0D) + bytes(8 * 28 * 28 * 4))),
            ("idx overflowing dimension", write_idx(images, header((2**32 - 1, 28, 28)) + bytes(100))),
            ("idx dims product huge", write_idx(images, header((65536, 65536, 65536)) + bytes(100))),
            ("idx header only", write_idx(images, header((8, 28, 28)))),
            ("idx too many dims", write_idx(images, header((8, 28, 28, 1)) + bytes(8 * 28 * 28))),
            ("idx wrong image size 27x27", write_idx(images, header((8, 27, 27)) + bytes(8 * 27 * 27))),
            ("idx extra trailing bytes", write_idx(images, good_images + b"garbage")),
            ("idx labels out of range", write_idx(labels, header((8,)) + bytes([200] * 8))),
            ("idx label count differs", write_idx(labels, header((5,)) + bytes(5))),
            ("idx not gzip but .gz", write_idx(images, good_images, compress=False)),
            ("idx zero images", write_idx(images, header((0, 28, 28)))),
            ("idx labels 2-d", write_idx(labels, header((8, 1)) + bytes(8))),
            ("idx gzip of a pickle payload", lambda r, s: write_idx(images, _payload_pickle(s))(r, s)),
        ]
        cases += [(label, "mnist", mnist(change), "mnist") for label, change in idx_cases]

        def cifar(change):
            def build(root, sentinel):
                fabricate.make_cifar10(root, per_batch=4, test_count=4)
                return change(root / "cifar-10-batches-py", sentinel)
            return build

        def replace(name, data):
            def change(folder, sentinel):
                (folder / name).write_bytes(data(sentinel) if callable(data) else data)
                return [name]
            return change

        def rewrite(name, **entries):
            def change(folder, _):
                fabricate.rewrite_cifar10_batch(folder.parent, name, **entries)
                return [name]
            return change

        cifar_cases = [
            ("cifar payload in batches.meta", replace("batches.meta", _payload_pickle)),
            ("cifar payload in data_batch_1", replace("data_batch_1", _payload_pickle)),
            ("cifar payload in test_batch", replace("test_batch", _payload_pickle)),
            ("cifar payload nested in labels", replace("data_batch_2", _nested_payload)),
            ("cifar numpy object array", replace("data_batch_3", lambda s: pickle.dumps(
                {"data": np.array([_Payload(s)], dtype=object), "labels": [0]}, protocol=2))),
            ("cifar data wrong row size", rewrite("data_batch_1", data=np.zeros((4, 3000), np.uint8))),
            ("cifar data float pixels", rewrite("data_batch_1", data=np.zeros((4, 3072), np.float32))),
            ("cifar data 1-d", rewrite("data_batch_1", data=np.zeros(3072 * 4, np.uint8))),
            ("cifar labels out of range", rewrite("data_batch_1", labels=[10, 0, 1, 2])),
            ("cifar labels negative", rewrite("data_batch_1", labels=[-1, 0, 1, 2])),
            ("cifar labels fewer than images", rewrite("data_batch_1", labels=[0, 1])),
            ("cifar labels strings", rewrite("test_batch", labels=["a", "b", "c", "d"])),
            ("cifar labels float", rewrite("test_batch", labels=[0.5, 1.0, 2.0, 3.0])),
            ("cifar batch not a dict", replace("data_batch_4", pickle.dumps([1, 2, 3], protocol=2))),
            ("cifar batch missing data", replace("data_batch_4", pickle.dumps({"labels": [0]}, protocol=2))),
            ("cifar truncated pickle", lambda f, s: (fabricate.truncate(f / "data_batch_5", 0.4), ["data_batch_5"])[1]),
            ("cifar empty file", replace("test_batch", b"")),
            ("cifar garbage bytes", replace("data_batch_2", os.urandom(500))),
            ("cifar batches.meta missing", lambda f, s: ((f / "batches.meta").unlink(), ["batches.meta"])[1]),
            ("cifar batch is a folder", lambda f, s: ((f / "data_batch_1").unlink(), (f / "data_batch_1").mkdir(),
                                                      ["data_batch_1"])[2]),
        ]
        cases += [(label, "cifar", cifar(change), "cifar10") for label, change in cifar_cases]

        def dvs(change):
            def build(root, sentinel):
                fabricate.make_dvs128_gesture(root, per_class=1, events=50)
                target = root / "events_np" / "train" / "3" / "user00_lab_3.npz"
                return change(target, sentinel)
            return build

        def events(**overrides):
            def change(path, _):
                arrays = dict(np.load(path))
                arrays.update(overrides)
                np.savez(path, **arrays)
                return [path.name]
            return change

        dvs_cases = [
            ("dvs fractional x", events(x=np.full(50, 3.5))),
            ("dvs NaN y", events(y=np.full(50, np.nan))),
            ("dvs negative x", events(x=np.full(50, -1, dtype=np.int64))),
            ("dvs x beyond 127", events(x=np.full(50, 128, dtype=np.int64))),
            ("dvs polarity 2", events(p=np.full(50, 2, dtype=np.uint8))),
            ("dvs arrays of different lengths", events(t=np.arange(10))),
            ("dvs missing t", lambda p, s: (np.savez(p, x=np.zeros(5), y=np.zeros(5), p=np.zeros(5)), [p.name])[1]),
            ("dvs empty file", lambda p, s: (p.write_bytes(b""), [p.name])[1]),
            ("dvs truncated file", lambda p, s: (fabricate.truncate(p, 0.5), [p.name])[1]),
            ("dvs object array payload", lambda p, s: (np.savez(p, t=np.array([_Payload(s)], dtype=object),
                                                                x=np.zeros(1), y=np.zeros(1), p=np.zeros(1)), [p.name])[1]),
            ("dvs inf t", events(t=np.full(50, np.inf))),
        ]
        cases += [(label, "dvs", dvs(change), "dvs128_gesture") for label, change in dvs_cases]
        return cases

    # -- crafted checkpoints -------------------------------------------------------------------------
    def crafted_checkpoints(self) -> None:
        cases = checkpoint_cases()
        if self.quick:
            cases = cases[::4]
        state = torch.load(self.base / "checkpoint_last.pth", weights_only=True)
        for label, craft, extra, exits in cases:
            run = self.copy_of_reference(f"ckpt_{len(self.tally.cases)}")
            last = run / "checkpoint_last.pth"
            sentinel = run.parent / f"SENTINEL_{len(self.tally.cases)}"
            craft(copy.deepcopy(state), last, sentinel)
            before_run = tree_digest(run)
            before = self.ws.protected()
            result = run_script("cifar", ["-resume", last, "-j", "0", "-device", "cpu", "-no-progress", *extra])
            # A data folder taken from the checkpoint is named by the path looked in.
            names = [str(last), "checkpoint", "/nonexistent/data"]
            outcome, detail = judge_refusal(result.code, result.out, result.err, names, exits)
            if result.code == 0 and 0 in exits and "Traceback" not in result.err:
                outcome, detail = "ok", "accepted: the entry has no effect on the run"
            if sentinel.exists():
                outcome, detail = "code_execution", detail
            elif result.code != 0:
                lost = lost_files(before_run, tree_digest(run))
                if lost:
                    outcome, detail = "loss", f"refused, but the run folder changed: {lost}; {detail}"
            self.record("fault:checkpoint", label, f"-resume <crafted> {' '.join(extra)}", outcome, detail, before)

    # -- odd environments ----------------------------------------------------------------------------
    def environments(self) -> None:
        cases = self._environment_cases()
        if self.quick:
            cases = cases[::3]
        for label, setup in cases:
            before = self.ws.protected()
            argv, kwargs, expect = setup()
            result = run_script("cifar", argv, **kwargs)
            outcome, detail = self._judge_environment(result, argv, expect)
            self.record("fault:environment", label, f"{kwargs.get('env', '')} {kwargs.get('unset', '')} "
                        f"{' '.join(map(str, argv))}", outcome, detail, before)

    def _judge_environment(self, result: Result, argv, expect) -> tuple:
        if "Traceback" in result.err or "Traceback" in result.out:
            return "traceback", result.err[-1500:]
        if result.code == 0:
            out = Path(argv[argv.index("-out-dir") + 1]) if "-out-dir" in argv else None
            if expect == "refuse":
                return "silent", "accepted"
            if out is not None and checkpoint_epoch(out / "checkpoint_last.pth") is None:
                return "loss", "exit 0 without a loadable checkpoint"
            return "ok", "ran"
        return judge_refusal(result.code, result.out, result.err, expect if isinstance(expect, list) else [])

    def _environment_cases(self) -> list:
        ws = self.ws

        def plain(env=None, unset=(), out=None, cwd=None, expect="run", data=None):
            def setup():
                target = out() if callable(out) else (out or ws.fresh("env"))
                argv = ["-data-dir", data or self.data, "-out-dir", target, *TINY]
                return argv, {"env": env, "unset": unset, "cwd": cwd}, expect
            return setup

        def read_only():
            folder = ws.fresh("readonly")
            folder.mkdir(parents=True)
            folder.chmod(0o555)
            return folder / "run"

        def unwritable_cwd():
            folder = ws.fresh("cwd")
            folder.mkdir(parents=True)
            folder.chmod(0o555)
            return folder

        def default_out_in(cwd_factory):
            def setup():
                cwd = cwd_factory()
                argv = ["-data-dir", self.data, *TINY]
                return argv, {"cwd": cwd}, "run"
            return setup

        def unicode_data():
            target = ws.root / "données d'essai ☃"
            if not target.exists():
                shutil.copytree(self.data, target)
            return target

        def non_utf8_data():
            target = Path(os.fsdecode(os.fsencode(str(ws.root)) + b"/data\xff\xfe"))
            if not target.exists():
                shutil.copytree(self.data, target)
            return target

        return [
            ("HOME unset", plain(unset=("HOME",))),
            # Missing folders inside the workspace: as root, a run would create them, and nothing
            # may be written outside the probe's temporary folder.
            ("HOME nonexistent", plain(env={"HOME": str(ws.root / "missing" / "home")})),
            ("TMPDIR missing", plain(env={"TMPDIR": str(ws.root / "missing" / "tmp")})),
            ("TMPDIR is a file", plain(env={"TMPDIR": str(ws.file)})),
            ("MPLCONFIGDIR unwritable", plain(env={"MPLCONFIGDIR": "/proc/self/mpl"})),
            ("XDG_CACHE_HOME is a file", plain(env={"XDG_CACHE_HOME": str(ws.file)})),
            ("LANG=C with a unicode out dir", plain(env={"LANG": "C", "LC_ALL": "C"},
                                                  out=lambda: ws.fresh("sortie ☃ é"))),
            ("PYTHONIOENCODING=ascii with a unicode out dir", plain(env={"PYTHONIOENCODING": "ascii"},
                                                                   out=lambda: ws.fresh("sortie ☃"))),
            ("spaces in the out dir", plain(out=lambda: ws.fresh("with  spaces ")),),
            ("unicode data dir", lambda: plain(data=unicode_data())()),
            ("non-UTF-8 out dir name", plain(out=lambda: Path(os.fsdecode(os.fsencode(str(ws.fresh("x"))) + b"\xff")))),
            ("non-UTF-8 data dir name", lambda: plain(data=non_utf8_data())()),
            ("non-UTF-8 name with PYTHONIOENCODING=ascii", plain(
                env={"PYTHONIOENCODING": "ascii"},
                out=lambda: Path(os.fsdecode(os.fsencode(str(ws.fresh("y"))) + b"\xff")))),
            ("read-only parent of the out dir", plain(out=read_only, expect=["-out-dir", "Permission", "read-only"])),
            ("cwd not writable, default out dir", default_out_in(unwritable_cwd)),
        ]


def _peek(run: Path) -> str:
    history = run / "history.json"
    try:
        return "epoch 1" if len(json.loads(history.read_text())) >= 2 else ""
    except Exception:  # noqa: BLE001
        return ""


def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    for i in range(offset, min(offset + 8, len(data))):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


class _Payload:
    """Unpickling this runs ``touch <sentinel>``."""

    def __init__(self, sentinel: Path):
        self.sentinel = str(sentinel)

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(self.sentinel)}",)


def _payload_pickle(sentinel: Path) -> bytes:
    return pickle.dumps(_Payload(sentinel), protocol=2)


def _nested_payload(sentinel: Path) -> bytes:
    return pickle.dumps({"data": np.zeros((4, 3072), np.uint8), "labels": [0, 1, _Payload(sentinel), 3]},
                        protocol=2)


# ---- crafted checkpoints ---------------------------------------------------------------------------
def _resign(state: dict, path: Path) -> None:
    from saf_examples import checkpoint

    checkpoint.save_checkpoint(state, path)


def _first_weight(state: dict) -> str:
    return next(k for k, v in state["net"].items() if v.is_floating_point() and v.numel() > 1)


def _set_weight(value):
    def craft(state, path, _):
        key = _first_weight(state)
        state["net"][key] = state["net"][key].clone()
        state["net"][key].view(-1)[0] = value
        _resign(state, path)
    return craft


def _cast(dtype):
    def craft(state, path, _):
        key = _first_weight(state)
        state["net"][key] = state["net"][key].to(dtype)
        _resign(state, path)
    return craft


def _edit(change, resign=True):
    def craft(state, path, _):
        change(state)
        if resign:
            _resign(state, path)
        else:
            torch.save(state, path)
    return craft


def _args(**entries):
    return _edit(lambda s: s["args"].update(entries))


def _drop_arg(name):
    return _edit(lambda s: s["args"].pop(name))


def _group(**entries):
    return _edit(lambda s: [g.update(entries) for g in s["optimizer"]["param_groups"]])


def _raw(data):
    def craft(state, path, sentinel):
        path.write_bytes(data(path, sentinel) if callable(data) else data)
    return craft


def _torch_payload(path, sentinel) -> bytes:
    buffer = io.BytesIO()
    torch.save({"net": _Payload(sentinel)}, buffer)
    return buffer.getvalue()


def _truncated(keep):
    return _raw(lambda path, _: path.read_bytes()[:int(len(path.read_bytes()) * keep)])


def _flipped(path, _) -> bytes:
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle] ^= 0x01
    return bytes(data)


def _history(change):
    return _edit(lambda s: change(s["history"]))


def checkpoint_cases() -> list:
    """(label, craft(state, path, sentinel), extra flags, allowed exit codes)."""
    test_only = ["-test-only"]
    deploy = ["-test-only", "-deploy-lif"]
    two, three = (2,), (3,)
    cases = [
        ("NaN weight, -test-only", _set_weight(math.nan), test_only, three),
        ("inf weight, -test-only", _set_weight(math.inf), test_only, three),
        ("-inf weight, -test-only -deploy-lif", _set_weight(-math.inf), deploy, three),
        ("NaN weight, -deploy-lif", _set_weight(math.nan), deploy, three),
        ("NaN weight, resume training", _set_weight(math.nan), [], three),
        ("NaN in the momentum buffer", _edit(lambda s: [v.__setitem__("momentum_buffer", v["momentum_buffer"] * math.nan)
                                                       for v in s["optimizer"]["state"].values()
                                                       if v.get("momentum_buffer") is not None]), [], (2, 3)),
        ("weights int64", _cast(torch.int64), test_only, two),
        ("weights bool", _cast(torch.bool), [], two),
        ("weights float16", _cast(torch.float16), test_only, two),
        ("weights float64", _cast(torch.float64), [], two),
        ("weights bfloat16", _cast(torch.bfloat16), test_only, two),
        ("weight of a wrong shape", _edit(lambda s: s["net"].__setitem__(_first_weight(s), torch.zeros(3))), [], two),
        ("a weight missing", _edit(lambda s: s["net"].pop(_first_weight(s))), [], two),
        ("an extra weight", _edit(lambda s: s["net"].__setitem__("extra.weight", torch.zeros(2))), [], two),
        ("no checksum", _edit(lambda s: s.pop("checksum"), resign=False), [], two),
        ("bad checksum", _edit(lambda s: s.__setitem__("checksum", "0" * 64), resign=False), test_only, two),
        ("checksum not a string", _edit(lambda s: s.__setitem__("checksum", 5), resign=False), [], two),
        ("weight changed, old checksum", _edit(lambda s: s["net"][_first_weight(s)].mul_(2), resign=False), test_only, two),
        ("args missing T", _drop_arg("T"), [], two),
        ("args missing tau", _drop_arg("tau"), test_only, two),
        ("args missing method", _drop_arg("method"), [], two),
        ("args missing model", _drop_arg("model"), [], two),
        ("args missing v_threshold", _drop_arg("v_threshold"), test_only, two),
        ("args T = 2**63", _args(T=2**63), [], two),
        ("args T = 0", _args(T=0), test_only, two),
        ("args T = '2'", _args(T="2"), [], two),
        ("args T = 2.5", _args(T=2.5), [], two),
        ("args T = True", _args(T=True), test_only, two),
        ("args lr = 1e39", _args(lr=1e39), [], two),
        ("args lr = NaN", _args(lr=math.nan), [], two),
        ("args v_threshold = 0", _args(v_threshold=0.0), test_only, two),
        ("args tau = 0.5", _args(tau=0.5), [], two),
        ("args seed = -1", _args(seed=-1), [], two),
        ("args method unknown", _args(method="bogus"), [], two),
        ("args model with ..", _args(model="../../x"), [], two),
        ("args data_dir nonexistent", _args(data_dir="/nonexistent/data"), [], two),
        ("args epochs below the epoch", _args(epochs=0), [], two),
        ("args not a dict", _edit(lambda s: s.__setitem__("args", [1, 2])), [], two),
        ("negative lr in the optimizer", _group(lr=-0.1), [], two),
        ("NaN lr in the optimizer", _group(lr=math.nan), [], two),
        ("momentum 1.5 in the optimizer", _group(momentum=1.5), [], two),
        ("weight_decay -1 in the optimizer", _group(weight_decay=-1.0), [], two),
        ("weight_decay inf in the optimizer", _group(weight_decay=math.inf), [], two),
        ("optimizer state of another optimizer", _edit(lambda s: s.__setitem__("optimizer", {"state": {}, "param_groups": []})), [], two),
        ("history rows without epoch", _history(lambda h: [r.pop("epoch") for r in h]), [], two),
        ("history epochs out of order", _history(lambda h: h.append(dict(h[0], epoch=5))), [], two),
        ("history not a list", _edit(lambda s: s.__setitem__("history", {"a": 1})), [], two),
        ("history row a string", _history(lambda h: h.__setitem__(0, "row")), [], two),
        ("epoch negative", _edit(lambda s: s.__setitem__("epoch", -1)), [], two),
        ("epoch 2**63", _edit(lambda s: s.__setitem__("epoch", 2**63)), [], two),
        ("epoch a float", _edit(lambda s: s.__setitem__("epoch", 0.5)), test_only, two),
        ("epoch a string", _edit(lambda s: s.__setitem__("epoch", "0")), [], two),
        ("missing net", _edit(lambda s: s.pop("net")), [], two),
        ("missing optimizer", _edit(lambda s: s.pop("optimizer")), [], two),
        ("missing rng", _edit(lambda s: s.pop("rng")), [], two),
        ("rng state damaged", _edit(lambda s: _damage_rng(s)), [], two),
        ("data fingerprint of other data", _edit(lambda s: _other_data(s)), [], two),
        ("scheduler T_max 0", _edit(lambda s: s["lr_scheduler"].__setitem__("T_max", 0)), [], two),
        ("scheduler last_epoch NaN", _edit(lambda s: s["lr_scheduler"].__setitem__("last_epoch", math.nan)), [], two),
        ("state_dict only", _edit(lambda s: [s.pop(k) for k in list(s) if k != "net"] and s.update(s.pop("net")),
                                  resign=False), [], two),
        ("a list instead of a dict", lambda s, p, _: torch.save([1, 2, 3], p), [], two),
        ("a tensor instead of a dict", lambda s, p, _: torch.save(torch.zeros(3), p), test_only, two),
        ("truncated to half", _truncated(0.5), [], two),
        ("truncated to 1 byte", _truncated(0.00001), [], two),
        ("empty file", _raw(b""), test_only, two),
        ("garbage bytes", _raw(lambda p, s: os.urandom(4096)), [], two),
        ("text file", _raw(b"epoch: 3\nnet: weights\n"), [], two),
        ("one bit flipped", _raw(_flipped), test_only, two),
        ("pickle payload (torch.save)", _raw(_torch_payload), [], two),
        ("pickle payload (plain pickle)", _raw(lambda p, s: _payload_pickle(s)), test_only, two),
        ("max_test_acc NaN", _edit(lambda s: s.__setitem__("max_test_acc", math.nan)), [], two),
        ("best test_acc NaN", _edit(lambda s: s["best"].__setitem__("test_acc", math.nan)), [], two),
        ("best test_acc 7", _edit(lambda s: s["best"].__setitem__("test_acc", 7.0)), test_only, two),
        ("extra top-level key", _edit(lambda s: s.__setitem__("surprise", 1)), [], (0, 2)),
    ]
    return cases


def _damage_rng(state: dict) -> None:
    rng = state["rng"]
    entry = rng[0] if isinstance(rng, list) else rng
    for key, value in entry.items():
        if isinstance(value, torch.Tensor):
            entry[key] = value[:5]
            return
    raise RuntimeError("no tensor in the random state")


def _other_data(state: dict) -> None:
    data = state["data"]
    key = next(k for k, v in data.items() if isinstance(v, str) and len(v) == 64)
    data[key] = "f" * 64


# ---- the report ------------------------------------------------------------------------------------
def versions() -> dict:
    import spikingjelly

    return {"python": platform.python_version(), "torch": torch.__version__,
            "spikingjelly": getattr(spikingjelly, "__version__", None) or _dist_version("spikingjelly"),
            "numpy": np.__version__}


def _dist_version(name: str) -> Optional[str]:
    try:
        from importlib.metadata import version
        return version(name)
    except Exception:  # noqa: BLE001
        return None


def summary_table(counts: dict) -> str:
    columns = ("cases",) + OUTCOMES
    rows = [f"{'category':<28}" + "".join(f"{c:>15}" for c in columns)]
    total = {c: 0 for c in columns}
    for category in sorted(counts):
        row = counts[category]
        rows.append(f"{category:<28}" + "".join(f"{row[c]:>15}" for c in columns))
        for c in columns:
            total[c] += row[c]
    rows.append(f"{'total':<28}" + "".join(f"{total[c]:>15}" for c in columns))
    return "\n".join(rows)


def totals(tally: Tally) -> dict:
    bad = [c for c in tally.cases if not c.category.startswith("fault:")]
    faults = [c for c in tally.cases if c.category.startswith("fault:")]
    return {"bad_inputs": len(bad), "faults": len(faults),
            "by_outcome": {o: sum(c.outcome == o for c in tally.cases) for o in OUTCOMES}}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a sample of every kind of case")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_suffix(".json"))
    parser.add_argument("--only", nargs="*", default=None,
                        choices=("cli", "digits", "library", "disk", "signals", "concurrency", "data",
                                 "checkpoints", "environment"))
    options = parser.parse_args(argv)
    torch.set_num_threads(1)
    started = time.monotonic()
    tally = Tally()
    wanted = lambda part: options.only is None or part in options.only  # noqa: E731
    with tempfile.TemporaryDirectory(prefix="saf_probe_") as folder:
        ws = Workspace(Path(folder))
        faults = Faults(tally, ws, options.quick)
        faults.make_reference()
        steps = [("cli", lambda: [probe_script_flags(tally, ws, s, options.quick) for s in SCRIPTS]),
                 ("digits", lambda: probe_digits_flags(tally, ws, options.quick)),
                 ("library", lambda: probe_library(tally, options.quick)),
                 ("data", faults.damaged_data), ("checkpoints", faults.crafted_checkpoints),
                 ("disk", faults.disk_full), ("signals", faults.signals),
                 ("concurrency", faults.concurrency), ("environment", faults.environments)]
        for part, step in steps:
            if wanted(part):
                print(f"== {part} ({time.monotonic() - started:.0f} s)", flush=True)
                step()
        _make_writable(Path(folder))
    counts = tally.counts()
    report = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"host": platform.node(), "platform": platform.platform(), "cpus": os.cpu_count(),
                    "processor": platform.processor() or platform.machine()},
        "versions": versions(), "quick": options.quick, "only": options.only,
        "seconds": round(time.monotonic() - started, 1),
        "totals": totals(tally), "categories": counts,
        "not_ok": [asdict(c) for c in tally.cases if c.outcome != "ok"],
    }
    from saf_examples.checkpoint import atomic_write_text

    options.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(options.out, json.dumps(report, indent=1, ensure_ascii=False))
    print(summary_table(counts))
    print(f"bad inputs: {report['totals']['bad_inputs']}, faults: {report['totals']['faults']}, "
          f"not ok: {len(report['not_ok'])}, {report['seconds']} s; tally: {options.out}")
    return 0 if not report["not_ok"] else 1


def _make_writable(root: Path) -> None:
    for path in root.rglob("*"):
        with contextlib.suppress(OSError):
            if path.is_dir() and not path.is_symlink():
                path.chmod(0o755)


if __name__ == "__main__":
    sys.exit(main())
