"""Faults injected into training runs, and what each must leave: the exit code, one message and
the files on disk.

Crafted and damaged checkpoints, paths that would leave the output folder, reused and busy output
folders, SIGKILL during every checkpoint write, a full disk, NaN/inf in the weights, gradients and
input, resumes with changed flags, -test-only and the saved LIF deployment. Runs happen in-process
(``main(argv)``) on fabricated tiny CIFAR-10, except the kill tests, which need a process to kill.
"""

from __future__ import annotations

import errno
import json
import math
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from saf_examples import checkpoint as ckpt
from saf_examples import run as run_module
from saf_examples.rundir import RunDirectory

import fabricate  # noqa: E402

TINY = ["-device", "cpu", "-T", "2", "-b", "4", "-j", "0", "-no-progress", "-lr", "0.05",
        "-model", "ottt_spiking_vggws", "-channels", "2", "-method", "saf-e-acc"]
PER_RUN = ["-device", "cpu", "-j", "0", "-no-progress"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return fabricate.make_cifar10(tmp_path_factory.mktemp("faults_data"), per_batch=4, test_count=4)


def _main(*argv) -> int:
    try:
        return run_module.main([str(a) for a in argv])
    except SystemExit as exit_:  # argparse refusing a value
        return exit_.code


def _train(data, out, *flags) -> int:
    return _main("-data-dir", data, "-out-dir", out, *TINY, *flags)


def _one_error(captured) -> str:
    err = captured.err
    assert "Traceback" not in err and "Traceback" not in captured.out
    # Firing-health warnings about the tiny untrained nets may come first; the error is one line.
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("warning:")]
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    return lines[0]


def _tree(root: Path) -> dict:
    return {str(p.relative_to(root)): (p.stat().st_size if p.is_file() else None)
            for p in sorted(root.rglob("*"))}


def _all_finite(state: dict) -> bool:
    return all(torch.isfinite(v).all() for v in state["net"].values() if v.is_floating_point())


@pytest.fixture(scope="module")
def stopped_run(data, tmp_path_factory):
    """A run of 2 epochs stopped after the first: the checkpoint the resume tests start from."""
    out = tmp_path_factory.mktemp("stopped") / "run"
    assert _train(data, out, "-epochs", "2", "-stop-after", "1") == 0
    return out


def _copy_run(source: Path, target: Path) -> Path:
    target.mkdir(parents=True)
    for name in ("checkpoint_last.pth", "checkpoint_best.pth", "history.json", "args.json"):
        (target / name).write_bytes((source / name).read_bytes())
    return target


def _improving_accuracy(monkeypatch):
    """Test accuracy (epoch + 1) / 10: every epoch improves, so every epoch writes checkpoint_best."""
    real = run_module._Trainer.evaluate

    def evaluate(self, model=None, readout=None):
        loss, _, rates = real(self, model, readout)
        return loss, (self.epoch + 1) / 10.0, rates

    monkeypatch.setattr(run_module._Trainer, "evaluate", evaluate)


# ---- security -----------------------------------------------------------------------------------
class _Payload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("container", ["torch.save", "raw pickle"])
def test_malicious_checkpoint_is_refused_without_running_it(data, tmp_path, capsys, container):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    payload = {"net": {}, "optimizer": _Payload(marker), "epoch": 0}
    if container == "torch.save":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload))
    assert not marker.exists()
    assert _main("-data-dir", data, "-out-dir", tmp_path / "out", *TINY, "-resume", path) == 2
    line = _one_error(capsys.readouterr())
    assert str(path) in line and "weights_only" in line
    assert not marker.exists(), "unpickling ran the payload"
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("model", ["../../escape", "a/b", "..", "x\\y"])
def test_model_with_path_separators_is_refused_before_any_folder(data, tmp_path, monkeypatch,
                                                                capsys, model):
    monkeypatch.chdir(tmp_path)
    before = _tree(tmp_path)
    flags = [f for f in TINY if f not in ("-model", "ottt_spiking_vggws")]
    assert _main("-data-dir", data, *flags, "-model", model, "-epochs", "1") == 2
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err and "-model" in captured.err
    assert _tree(tmp_path) == before
    assert not (tmp_path.parent / "escape").exists()


def test_a_run_writes_nothing_outside_its_output_folder(data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    watched = [tmp_path, Path(data)]
    before = [_tree(root) for root in watched]
    out = tmp_path / "out"
    assert _train(data, out, "-epochs", "1", "-deploy-lif") == 0
    after = [{k: v for k, v in _tree(root).items() if not k.startswith("out")} if root == tmp_path
             else _tree(root) for root in watched]
    assert after == before
    assert {"checkpoint_last.pth", "checkpoint_best.pth", "lif_net.pt", "lif_exactness.json",
            "args.json", "summary.json"} <= set(os.listdir(out))
    assert not (out / ".lock").exists(), "the lock outlived the run"


# ---- nothing is lost ----------------------------------------------------------------------------
@pytest.mark.slow
def test_non_empty_folder_needs_resume_or_overwrite(data, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()  # an empty folder is fine
    assert _train(data, out, "-epochs", "1") == 0
    (out / "notes.txt").write_text("mine")
    kept = (out / "checkpoint_last.pth").read_bytes()
    capsys.readouterr()
    assert _train(data, out, "-epochs", "1") == 2
    line = _one_error(capsys.readouterr())
    assert "not empty" in line and "-resume" in line and "-overwrite" in line
    assert (out / "checkpoint_last.pth").read_bytes() == kept
    assert _train(data, out, "-epochs", "1", "-seed", "7", "-overwrite") == 0
    assert (out / "notes.txt").read_text() == "mine"  # -overwrite removes only a run's own files
    assert json.loads((out / "args.json").read_text())["seed"] == 7
    assert len(json.loads((out / "history.json").read_text())) == 1


# A process that holds a run folder's lock the way a live run does (flock on .lock, its pid
# inside) and sleeps; plain Python, so it starts in a blink.
_HOLDER = textwrap.dedent("""
    import fcntl, os, sys, time
    os.makedirs(sys.argv[1], exist_ok=True)
    handle = os.open(os.path.join(sys.argv[1], ".lock"), os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.write(handle, f"{os.getpid()} on a test machine".encode())
    open(sys.argv[2], "w").write("held")
    time.sleep(600)
""")


def _wait_for(path: Path, process: subprocess.Popen, seconds: float = 180.0) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists():
        if process.poll() is not None:
            raise AssertionError(f"the child ended early: {process.communicate()}")
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError("the child never reached its pause")
        time.sleep(0.05)


@pytest.mark.slow
def test_second_run_in_a_live_folder_fails_at_once_and_a_killed_holder_frees_it(data, tmp_path,
                                                                                capsys):
    out, ready = tmp_path / "out", tmp_path / "ready"
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(out), str(ready)])
    try:
        _wait_for(ready, holder)
        started = time.monotonic()
        for extra in ([], ["-overwrite"]):
            assert _train(data, out, "-epochs", "1", *extra) == 2
            line = _one_error(capsys.readouterr())
            assert "in use" in line and f"process {holder.pid}" in line
        assert time.monotonic() - started < 30, "the second run waited instead of failing at once"
        assert os.listdir(out) == [".lock"]
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # The system released the killed holder's lock; its lock file is no obstacle.
    assert _train(data, out, "-epochs", "1") == 0


_KILL_RUNNER = textwrap.dedent("""
    import io, os, sys, time
    import torch
    torch.set_num_threads(1)
    from saf_examples import checkpoint as ckpt, run
    target, stage, ready = sys.argv[1], sys.argv[2], sys.argv[3]
    seen = {"n": 0}

    def pause():
        open(ready, "w").write(str(os.getpid()))
        time.sleep(600)

    def second_write_of_target(name):
        if os.path.basename(name).lstrip(".").startswith(target):
            seen["n"] += 1
            return seen["n"] == 2
        return False

    real_write = ckpt._write_temporary

    def write_temporary(write, file):
        if stage in ("mid-write", "before-rename") and second_write_of_target(file.name):
            if stage == "mid-write":
                buffer = io.BytesIO()
                write(buffer)
                file.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
                file.flush()
                os.fsync(file.fileno())
                pause()
            real_write(write, file)
            pause()
        return real_write(write, file)

    real_replace = os.replace

    def replace(source, destination):
        real_replace(source, destination)
        if stage == "after-rename" and second_write_of_target(str(destination)):
            pause()

    real_evaluate = run._Trainer.evaluate

    def evaluate(self, model=None, readout=None):
        loss, _, rates = real_evaluate(self, model, readout)
        return loss, (self.epoch + 1) / 10.0, rates  # every epoch improves: best is written too

    ckpt._write_temporary, os.replace, run._Trainer.evaluate = write_temporary, replace, evaluate
    sys.exit(run.main(sys.argv[4:]))
""")


@pytest.mark.slow
@pytest.mark.parametrize("target", ["checkpoint_best.pth", "checkpoint_last.pth"])
@pytest.mark.parametrize("stage", ["mid-write", "before-rename", "after-rename"])
def test_sigkill_during_a_checkpoint_write_leaves_loadable_checkpoints_and_a_resumable_run(
        data, tmp_path, capsys, target, stage):
    out, ready = tmp_path / "out", tmp_path / "ready"
    argv = ["-data-dir", data, "-out-dir", out, *TINY, "-epochs", "2"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    child = subprocess.Popen([sys.executable, "-c", _KILL_RUNNER, target, stage, str(ready),
                              *map(str, argv)], env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE)
    try:
        _wait_for(ready, child)
        if target == "checkpoint_best.pth" and stage == "mid-write":
            # A second run while the first is live: refused at once, naming the live process.
            assert _main(*argv, "-resume", out / "checkpoint_last.pth") == 2
            assert f"process {child.pid}" in _one_error(capsys.readouterr())
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    # The second write is epoch 1's; best is written before last.
    last = ckpt.load_checkpoint(out / "checkpoint_last.pth")
    best = ckpt.load_checkpoint(out / "checkpoint_best.pth")
    renamed = stage == "after-rename"
    assert last["epoch"] == (1 if renamed and target == "checkpoint_last.pth" else 0)
    assert best["epoch"] == (1 if renamed or target == "checkpoint_last.pth" else 0)
    for path in out.glob("*.pth"):
        torch.load(path, weights_only=True)
    leftovers = list(out.glob(".*.tmp"))
    assert bool(leftovers) == (stage != "after-rename")

    capsys.readouterr()
    assert _main("-resume", out / "checkpoint_last.pth", *PER_RUN) == 0
    assert "Traceback" not in capsys.readouterr().err
    assert not list(out.glob(".*.tmp")) and not (out / ".lock").exists()
    last = ckpt.load_checkpoint(out / "checkpoint_last.pth")
    best = ckpt.load_checkpoint(out / "checkpoint_best.pth")
    assert last["epoch"] == 1 and [row["epoch"] for row in last["history"]] == [0, 1]
    assert best["epoch"] == last["best"]["epoch"]
    assert best["history"] == last["history"][:len(best["history"])]
    assert [row["epoch"] for row in json.loads((out / "history.json").read_text())] == [0, 1]


class _FullDisk:
    """A file whose writes fail with ENOSPC after ``room`` bytes."""

    def __init__(self, file, room: int):
        self.file, self.room = file, room

    def write(self, data):
        if len(data) > self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(data)
        return self.file.write(data)

    def __getattr__(self, name):
        return getattr(self.file, name)


@pytest.mark.parametrize("target, epoch_of_failure", [("checkpoint_best.pth", 1),
                                                      ("checkpoint_last.pth", 1),
                                                      ("summary.json", None)])
def test_full_disk_ends_with_one_message_and_intact_checkpoints(data, tmp_path, capsys, monkeypatch,
                                                                target, epoch_of_failure):
    _improving_accuracy(monkeypatch)
    real = ckpt._write_temporary
    seen = {"n": 0}

    def write_temporary(write, file):
        if os.path.basename(file.name).lstrip(".").startswith(target):
            seen["n"] += 1
            if target == "summary.json" or seen["n"] == 2:
                return real(write, _FullDisk(file, room=100))
        return real(write, file)

    monkeypatch.setattr(ckpt, "_write_temporary", write_temporary)
    out = tmp_path / "out"
    assert _train(data, out, "-epochs", "2") == 2
    line = _one_error(capsys.readouterr())
    assert "OSError: No space left on device" in line and str(out / target) in line
    assert not list(out.glob(".*.tmp"))
    last = ckpt.load_checkpoint(out / "checkpoint_last.pth")
    best = ckpt.load_checkpoint(out / "checkpoint_best.pth")
    assert last["epoch"] == (0 if epoch_of_failure == 1 else 1)
    assert best["epoch"] == (0 if target == "checkpoint_best.pth" else 1)
    monkeypatch.setattr(ckpt, "_write_temporary", real)
    if epoch_of_failure is not None:  # room again: the run continues from the intact checkpoint
        assert _main("-resume", out / "checkpoint_last.pth", *PER_RUN) == 0
        assert ckpt.load_checkpoint(out / "checkpoint_last.pth")["epoch"] == 1


# ---- silent corruption --------------------------------------------------------------------------
def _at_epoch_one(monkeypatch, action):
    real = run_module._Trainer.train_epoch

    def train_epoch(self, epoch, *args, **kwargs):
        if epoch == 1:
            action(self)
        return real(self, epoch, *args, **kwargs)

    monkeypatch.setattr(run_module._Trainer, "train_epoch", train_epoch)


def _poison_weight(value):
    def action(trainer):
        with torch.no_grad():
            next(trainer.module.parameters()).view(-1)[0] = value
    return action


def _poison_gradient(trainer):
    next(trainer.module.parameters()).register_hook(lambda grad: grad * float("nan"))


def _poison_pixel(split):
    def action(trainer):
        wrapper = trainer.train_loader if split == "training" else trainer.test_loader
        clean = wrapper.loader

        class Poisoned:
            def __len__(self):
                return len(clean)

            def __iter__(self):
                for index, (x, label) in enumerate(clean):
                    if index == 1 or len(clean) == 1:
                        x = x.float().clone()
                        x[0, 0, 0, 0] = float("nan")
                    yield x, label

        wrapper.loader = Poisoned()
    return action


@pytest.mark.parametrize("fault, action, expected", [
    # A NaN weight shows first in the loss, the gradient or the weight, whichever the step meets.
    ("nan weight", _poison_weight(float("nan")), ("nan", "epoch 1")),
    ("inf weight", _poison_weight(float("inf")), ("became", "epoch 1")),
    ("nan gradient", _poison_gradient, ("the gradient of", "nan")),
    ("nan training pixel", _poison_pixel("training"), ("the training input", "epoch 1, minibatch 1")),
    ("nan test pixel", _poison_pixel("test"), ("the test input", "epoch 1")),
])
def test_nonfinite_state_stops_with_exit_3_and_keeps_the_last_good_checkpoint(
        data, tmp_path, capsys, monkeypatch, fault, action, expected):
    _at_epoch_one(monkeypatch, action)
    out = tmp_path / "out"
    # saf-e: T optimizer steps per minibatch, the schedule where a NaN pixel went unnoticed.
    flags = ["-epochs", "2", "-method", "saf-e"]
    assert _train(data, out, *flags) == 3, fault
    line = _one_error(capsys.readouterr())
    assert "stopped because" in line and str(out / "checkpoint_last.pth") in line
    assert expected[0] in line and expected[1] in line, line
    for name in ("checkpoint_last.pth", "checkpoint_best.pth"):
        state = ckpt.load_checkpoint(out / name)
        assert state["epoch"] == 0 and _all_finite(state), name
    assert not (out / "summary.json").exists()


def test_alpha_nan_never_ends_well(data, tmp_path, capsys):
    out = tmp_path / "out"
    code = _train(data, out, "-epochs", "1", "-method", "saf-e", "-alpha", "nan")
    captured = capsys.readouterr()
    assert code in (2, 3) and "Traceback" not in captured.err
    for path in out.glob("*.pth") if out.exists() else []:
        assert _all_finite(ckpt.load_checkpoint(path))


# ---- resume -------------------------------------------------------------------------------------
@pytest.mark.parametrize("changed", [
    ["-method", "saf-f"], ["-T", "3"], ["-tau", "4"], ["-model", "CIFAR10Net"],
    ["-channels", "4"], ["-dataset", "cifar100"], ["-opt", "adam"], ["-seed", "1"],
    ["-v-threshold", "0.5"], ["-surrogate", "atan"],
])
def test_resume_refuses_changes_that_make_the_checkpoint_meaningless(stopped_run, tmp_path, capsys,
                                                                     changed):
    run = _copy_run(stopped_run, tmp_path / "run")
    before = _tree(run)
    assert _main("-resume", run / "checkpoint_last.pth", *PER_RUN, *changed) == 2
    line = _one_error(capsys.readouterr())
    assert f"{changed[0]} " in line and f"-> {changed[1]}" in line, line
    assert _tree(run) == before


def test_resume_lists_every_refused_change(stopped_run, tmp_path, capsys):
    run = _copy_run(stopped_run, tmp_path / "run")
    assert _main("-resume", run / "checkpoint_last.pth", *PER_RUN, "-method", "saf-f", "-T", "3",
                 "-channels", "8") == 2
    line = _one_error(capsys.readouterr())
    assert all(f in line for f in ("-method saf-e-acc -> saf-f", "-T 2 -> 3", "-channels 2 -> 8"))


def test_resume_applies_lr_and_epochs_and_says_so(stopped_run, tmp_path, capsys):
    run = _copy_run(stopped_run, tmp_path / "run")
    assert _main("-resume", run / "checkpoint_last.pth", *PER_RUN, "-lr", "0.01", "-epochs",
                 "4") == 0
    out = capsys.readouterr().out
    said = [line for line in out.splitlines() if "on resume:" in line]
    assert len(said) == 1 and "-lr 0.05 -> 0.01" in said[0] and "-epochs 2 -> 4" in said[0]
    state = ckpt.load_checkpoint(run / "checkpoint_last.pth")
    rates = [row["lr"] for row in state["history"]]
    assert rates[0] == pytest.approx(0.05) and rates[1] == pytest.approx(0.01)
    assert all(b <= a for a, b in zip(rates[1:], rates[2:])), rates  # never climbs back up
    assert rates[2:] == pytest.approx([0.01 * (1 + math.cos(math.pi * k / 3)) / 2 for k in (1, 2)])
    assert state["args"]["lr"] == 0.01 and state["args"]["epochs"] == 4
    assert all(group["initial_lr"] == 0.01 for group in state["optimizer"]["param_groups"])


def test_resume_longer_schedule_continues_from_the_current_rate(stopped_run, tmp_path, capsys):
    run = _copy_run(stopped_run, tmp_path / "run")
    assert _main("-resume", run / "checkpoint_last.pth", *PER_RUN, "-epochs", "3") == 0
    rates = [row["lr"] for row in ckpt.load_checkpoint(run / "checkpoint_last.pth")["history"]]
    # The 2-epoch cosine was at 0.025 after one epoch; it goes on from there to 0 at epoch 3.
    assert rates == pytest.approx([0.05, 0.025, 0.0125])
    assert _main("-resume", run / "checkpoint_last.pth", *PER_RUN, "-epochs", "2") == 2
    assert "trained 3 epochs already" in _one_error(capsys.readouterr())


def test_resume_alone_continues_in_the_checkpoint_folder_with_its_flags(stopped_run, tmp_path,
                                                                        capsys, monkeypatch):
    run = _copy_run(stopped_run, tmp_path / "run")
    monkeypatch.chdir(tmp_path)
    assert _main("-resume", run / "checkpoint_last.pth", *PER_RUN) == 0
    out = capsys.readouterr().out
    assert f"output folder: {run.resolve()}" in out
    assert "resumed from" in out and "continues at epoch 1 of 2" in out
    assert "device: cpu" in out and "-channels 2" in out
    assert ckpt.load_checkpoint(run / "checkpoint_last.pth")["epoch"] == 1
    assert sorted(os.listdir(tmp_path)) == ["run"]


def test_banner_and_stop_after_say_where_and_how_to_continue(data, tmp_path, capsys):
    out = tmp_path / "out"
    assert _train(data, out, "-epochs", "2", "-stop-after", "1") == 0
    printed = capsys.readouterr().out
    assert f"output folder: {out}" in printed and "start: a new run" in printed
    assert "device: cpu" in printed and "-method saf-e-acc" in printed
    assert "-stop-after asks; continue with:" in printed
    assert f"-resume {out / 'checkpoint_last.pth'}" in printed


def _save_altered(source: Path, target: Path, **changes) -> Path:
    state = ckpt.load_checkpoint(source)
    state.update(changes)
    ckpt.save_checkpoint(state, target)
    return target


def _bit_flipped(source: Path, target: Path) -> Path:
    state = ckpt.load_checkpoint(source)
    weight = max(state["net"].values(), key=lambda t: t.numel() if t.is_floating_point() else 0)
    raw = bytearray(source.read_bytes())
    offset = bytes(raw).find(weight.numpy().tobytes())
    assert offset > 0
    raw[offset + 5] ^= 0x04
    target.write_bytes(bytes(raw))
    return target


def _make_bad(kind: str, good: Path, folder: Path) -> Path:
    path = folder / f"{kind}.pth"
    if kind == "missing":
        return path
    if kind == "folder":
        path.mkdir()
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        path.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    elif kind == "garbage":
        path.write_bytes(os.urandom(4096))
    elif kind == "bit-flipped":
        _bit_flipped(good, path)
    elif kind == "state_dict only":
        torch.save(ckpt.load_checkpoint(good)["net"], path)
    elif kind == "a list":
        torch.save([1, 2, 3], path)
    elif kind == "wrong optimizer":
        state = ckpt.load_checkpoint(good)
        net = torch.nn.Linear(2, 2)
        state["optimizer"] = torch.optim.Adam(net.parameters()).state_dict()
        ckpt.save_checkpoint(state, path)
    elif kind == "wrong shape":
        state = ckpt.load_checkpoint(good)
        key = next(k for k, v in state["net"].items() if v.dim() == 4)
        state["net"][key] = torch.zeros(3, 3, 3, 3)
        ckpt.save_checkpoint(state, path)
    elif kind == "bad saved flag":
        state = ckpt.load_checkpoint(good)
        _save_altered(good, path, args=dict(state["args"], T="two", lr=-1.0))
    elif kind == "unknown saved method":
        state = ckpt.load_checkpoint(good)
        _save_altered(good, path, args=dict(state["args"], method="magic"))
    elif kind == "epoch not a number":
        _save_altered(good, path, epoch="three")
    elif kind == "history not a list":
        _save_altered(good, path, history={"epoch": 0})
    elif kind == "damaged rng":
        _save_altered(good, path, rng=[{"python": 1}])
    elif kind in ("int64 weights", "bool weights", "float16 weights"):
        state = ckpt.load_checkpoint(good)
        dtype = {"int64 weights": torch.int64, "bool weights": torch.bool,
                 "float16 weights": torch.float16}[kind]
        key = next(k for k, v in state["net"].items() if v.is_floating_point())
        state["net"][key] = state["net"][key].to(dtype)
        ckpt.save_checkpoint(state, path)
    elif kind == "float16 momentum":
        state = ckpt.load_checkpoint(good)
        slot = next(iter(state["optimizer"]["state"].values()))
        slot["momentum_buffer"] = slot["momentum_buffer"].half()
        ckpt.save_checkpoint(state, path)
    elif kind == "no checksum":
        state = ckpt.load_checkpoint(good)
        del state["checksum"]
        torch.save(state, path)
    elif kind in ("args without T", "args without tau"):
        state = ckpt.load_checkpoint(good)
        args = dict(state["args"])
        del args[kind.rsplit(" ", 1)[1]]
        _save_altered(good, path, args=args)
    elif kind in ("negative lr", "momentum 5", "nan weight decay"):
        state = ckpt.load_checkpoint(good)
        key, value = {"negative lr": ("lr", -0.1), "momentum 5": ("momentum", 5.0),
                      "nan weight decay": ("weight_decay", float("nan"))}[kind]
        for group in state["optimizer"]["param_groups"]:
            group[key] = value
        ckpt.save_checkpoint(state, path)
    elif kind in ("T 2**63", "lr above float32", "threshold 1e-320", "momentum 5 in args"):
        state = ckpt.load_checkpoint(good)
        key, value = {"T 2**63": ("T", 2**63), "lr above float32": ("lr", 1e39),
                      "threshold 1e-320": ("v_threshold", 1e-320),
                      "momentum 5 in args": ("momentum", 5.0)}[kind]
        _save_altered(good, path, args=dict(state["args"], **{key: value}))
    elif kind in ("history row without epoch", "history row with text"):
        state = ckpt.load_checkpoint(good)
        row = dict(state["history"][0])
        if kind == "history row without epoch":
            del row["epoch"]
        else:
            row["test_acc"] = "high"
        _save_altered(good, path, history=[row])
    elif kind == "numpy inside":
        import numpy as np

        state = ckpt.load_checkpoint(good)
        state["rng"][0]["numpy"] = np.random.get_state()
        torch.save(state, path)
    return path


@pytest.mark.parametrize("kind", ["missing", "folder", "empty", "truncated", "garbage",
                                  "bit-flipped", "state_dict only", "a list", "wrong optimizer",
                                  "wrong shape", "damaged rng", "numpy inside", "bad saved flag",
                                  "unknown saved method", "epoch not a number",
                                  "history not a list", "int64 weights", "bool weights",
                                  "float16 weights", "float16 momentum", "no checksum",
                                  "args without T", "args without tau", "negative lr",
                                  "momentum 5", "nan weight decay", "T 2**63", "lr above float32",
                                  "threshold 1e-320", "momentum 5 in args",
                                  "history row without epoch", "history row with text"])
def test_every_damaged_checkpoint_is_one_message_and_exit_2(stopped_run, tmp_path, capsys, kind):
    folder = tmp_path / "run"
    folder.mkdir()
    path = _make_bad(kind, stopped_run / "checkpoint_last.pth", folder)
    before = _tree(tmp_path)
    assert _main("-resume", path, *PER_RUN) == 2
    line = _one_error(capsys.readouterr())
    assert str(path) in line, line
    assert _tree(tmp_path) == before


def test_checkpoints_load_with_plain_torch_load_and_spikingjelly_keys(stopped_run):
    state = torch.load(stopped_run / "checkpoint_last.pth", weights_only=True)
    for key in ("net", "optimizer", "lr_scheduler", "epoch", "max_test_acc"):
        assert key in state, key
    assert state["epoch"] == 0 and state["max_test_acc"] == state["best"]["test_acc"]
    assert isinstance(state["rng"][0]["python"]["words"], torch.Tensor)
    assert state["checksum"] == ckpt.state_digest(state)


@pytest.mark.parametrize("damage", ["missing", "truncated"])
def test_resume_rebuilds_a_missing_or_damaged_best_checkpoint(stopped_run, tmp_path, capsys, damage):
    run = _copy_run(stopped_run, tmp_path / "run")
    best = run / "checkpoint_best.pth"
    if damage == "missing":
        best.unlink()
    else:
        best.write_bytes(best.read_bytes()[:100])
    (run / ".checkpoint_last.pth.leftover.tmp").write_bytes(b"half")
    assert _main("-resume", run / "checkpoint_last.pth", *PER_RUN, "-stop-after", "1",
                 "-epochs", "2") == 0
    out = capsys.readouterr().out
    assert "rebuilt checkpoint_best.pth from epoch 0" in out
    assert "removed temporary files" in out and not list(run.glob(".*.tmp"))
    last = ckpt.load_checkpoint(run / "checkpoint_last.pth")
    assert ckpt.load_checkpoint(best)["epoch"] == last["best"]["epoch"]


# ---- evaluation and deployment --------------------------------------------------------------------
def test_test_only_evaluates_without_training_and_deploys_lif(data, stopped_run, tmp_path, capsys):
    from spikingjelly.activation_based import functional

    from saf_examples.methods import get_method
    from spikingjelly_saf.training import run_sequence
    from saf_examples.cli import build_parser
    from saf_examples.models import build_model

    run = _copy_run(stopped_run, tmp_path / "run")
    # The run's own deployment files: an evaluation never writes over them.
    (run / "lif_net.pt").write_bytes(b"the run's own LIF network")
    (run / "lif_exactness.json").write_text("{}")
    before = {p: p.read_bytes() for p in run.iterdir()}
    assert _main("-resume", run / "checkpoint_last.pth", "-test-only", "-deploy-lif", *PER_RUN) == 0
    printed = capsys.readouterr().out
    assert "test only" in printed and "LIF deployment acc" in printed
    assert "test_only_epoch0.json" in printed
    assert {p: p.read_bytes() for p in before} == before
    assert sorted(set(p.name for p in run.iterdir()) - {p.name for p in before}) == [
        "test_only_epoch0.json", "test_only_epoch0_lif_exactness.json",
        "test_only_epoch0_lif_net.pt"]
    result = json.loads((run / "test_only_epoch0.json").read_text())
    state = ckpt.load_checkpoint(run / "checkpoint_last.pth")
    assert result["epoch"] == 0 and result["test_acc"] == state["history"][0]["test_acc"]
    assert result["deployed_lif_test_acc"] == result["test_acc"]
    report = json.loads((run / "test_only_epoch0_lif_exactness.json").read_text())
    assert report["exact"] is True and report["findings"] == []

    # The saved LIF network loads into the same zoo model built with LIFNode and predicts what
    # the SAF network predicts.
    args = build_parser(("cifar10", "cifar100")).parse_args(
        ["-data-dir", str(data), *TINY, "-method", "bptt"])
    lif_method = get_method("bptt")
    lif_model = build_model(args, lif_method, 10, 3, False)
    lif_model.load_state_dict(torch.load(run / "test_only_epoch0_lif_net.pt", weights_only=True))
    saf_method = get_method("saf-e-acc")
    saf_args = build_parser(("cifar10", "cifar100")).parse_args(["-data-dir", str(data), *TINY])
    saf_model = build_model(saf_args, saf_method, 10, 3, False)
    saf_model.load_state_dict(state["net"])
    saf_model.eval(), lif_model.eval()
    functional.set_step_mode(lif_model, saf_method.step_mode)
    torch.manual_seed(0)
    x_seq = torch.rand(4, 1, 3, 32, 32).expand(4, 2, 3, 32, 32)
    with torch.no_grad():
        saf_scores = saf_method.reader(saf_model, x_seq)(
            run_sequence(saf_model, x_seq, saf_method.step_mode))
        functional.reset_net(saf_model)
        lif_outputs = run_sequence(lif_model, x_seq, saf_method.step_mode)
    # Read as SpikingJelly reads any network, the mean over T, it gives the SAF model's scores.
    torch.testing.assert_close(lif_outputs.mean(1), saf_scores)

    # A second evaluation takes new names and leaves the first one's files as they are.
    first = {p: p.read_bytes() for p in run.iterdir()}
    assert _main("-resume", run / "checkpoint_last.pth", "-test-only", *PER_RUN) == 0
    assert {p: p.read_bytes() for p in first} == first
    assert (run / "test_only_epoch0_2.json").is_file()


def test_test_only_needs_a_checkpoint(data, tmp_path, capsys):
    assert _train(data, tmp_path / "out", "-test-only") == 2
    assert "-resume" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_run_directory_lock_is_exclusive_and_released(tmp_path):
    first = RunDirectory(tmp_path / "out", resume=False, overwrite=False).open()
    with pytest.raises(ValueError, match=f"process {os.getpid()}"):
        RunDirectory(tmp_path / "out", resume=True, overwrite=False).open()
    first.close()
    assert not (tmp_path / "out" / ".lock").exists()
    RunDirectory(tmp_path / "out", resume=False, overwrite=False).open().close()


def test_saved_rng_state_round_trips(tmp_path):
    import random

    import numpy as np

    torch.manual_seed(3), random.seed(3), np.random.seed(3)
    np.random.standard_normal()  # a cached Gaussian in NumPy's state
    state = ckpt.rng_state()
    ckpt.atomic_save(state, tmp_path / "rng.pt")
    expected = (random.random(), float(np.random.standard_normal()), float(torch.rand(())))
    ckpt.set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert (random.random(), float(np.random.standard_normal()), float(torch.rand(()))) == expected


_DDP_RUNNER = textwrap.dedent("""
    import sys
    import torch
    from saf_examples import run

    real = run._Trainer.train_epoch

    def train_epoch(self, epoch, *args, **kwargs):
        if epoch == 1 and self.ddp.rank == 1:  # one NaN pixel on the second process only
            clean = self.train_loader.loader

            class Poisoned:
                def __len__(self):
                    return len(clean)

                def __iter__(self):
                    for index, (x, label) in enumerate(clean):
                        if index == 1:
                            x = x.float().clone()
                            x[0, 0, 0, 0] = float("nan")
                        yield x, label

            self.train_loader.loader = Poisoned()
        return real(self, epoch, *args, **kwargs)

    run._Trainer.train_epoch = train_epoch
    sys.exit(run.main(sys.argv[1:]))
""")


@pytest.mark.slow
def test_ddp_nan_input_on_one_process_stops_both_and_keeps_the_checkpoint(data, tmp_path):
    """Under torchrun both processes agree on every minibatch's input check: no hang, exit 3 on
    each, the last good checkpoint kept."""
    runner, out = tmp_path / "runner.py", tmp_path / "out"
    runner.write_text(_DDP_RUNNER)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone",
         str(runner), "-data-dir", str(data), "-out-dir", str(out), *TINY, "-b", "2",
         "-epochs", "2"], capture_output=True, text=True, timeout=240, env=env)
    assert result.returncode != 0
    assert "stopped because the training input (a value in the data) became nan or inf at epoch " \
           "1, minibatch 1" in result.stderr
    assert "the training input on another process" in result.stderr
    state = ckpt.load_checkpoint(out / "checkpoint_last.pth")
    assert state["epoch"] == 0 and _all_finite(state) and len(state["rng"]) == 2
    assert not (out / ".lock").exists()
