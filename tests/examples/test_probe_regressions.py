"""Faults the reliability probe (tests/probe/reliability_probe.py) found in the training scripts,
each injected again: the exit code, one message naming the argument or file, no traceback, and
the given files unchanged."""

from __future__ import annotations

import hashlib
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import fabricate
from saf_examples import checkpoint as ckpt
from saf_examples import digits
from saf_examples.run import main

ROOT = Path(__file__).resolve().parents[2]
CIFAR = ("cifar10", "cifar100")
DVS = ("dvs128_gesture", "cifar10_dvs")
TINY = ["-device", "cpu", "-T", "2", "-b", "4", "-j", "0", "-no-progress", "-epochs", "1",
        "-model", "ottt_spiking_vggws", "-channels", "2", "-method", "saf-e-acc",
        "-max-train-batches", "1", "-max-test-batches", "1"]
CHILD_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "examples")}

pytestmark = pytest.mark.usefixtures("one_thread")


def _exit(argv, datasets=CIFAR) -> int:
    try:
        return main([str(a) for a in argv], datasets=datasets)
    except SystemExit as exit_:
        return exit_.code


def _digest(root: Path) -> dict:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _one_error(err: str) -> str:
    assert "Traceback" not in err
    lines = [line for line in err.splitlines()
             if line.strip() and not line.startswith(("warning:", " "))]
    assert len(lines) == 1 and "error:" in lines[0], err
    return lines[0]


def test_cifar_batch_with_fewer_labels_than_images_is_refused(tmp_path, capsys):
    data = fabricate.make_cifar10(tmp_path / "data")
    fabricate.rewrite_cifar10_batch(data, "data_batch_1", labels=[0, 1])
    before = _digest(data)
    out = tmp_path / "run"
    assert _exit(["-data-dir", data, "-out-dir", out, *TINY]) == 2
    err = capsys.readouterr().err
    assert "hold 20 images but 18 labels" in _one_error(err)
    assert "data_batch_1" in err
    assert _digest(data) == before and not out.exists()


@pytest.mark.parametrize("times", [np.full(50, np.inf), np.full(50, np.nan)])
def test_dvs_events_with_non_finite_timestamps_are_refused(tmp_path, capsys, times):
    data = fabricate.make_dvs128_gesture(tmp_path / "data", per_class=1, events=50)
    bad = data / "events_np" / "train" / "3" / "user00_lab_3.npz"
    arrays = dict(np.load(bad))
    np.savez(bad, **{**arrays, "t": times})
    before = _digest(data)
    out = tmp_path / "run"
    assert _exit(["-data-dir", data, "-out-dir", out, *TINY], DVS) == 2
    err = capsys.readouterr().err
    assert "user00_lab_3.npz" in err and "t values" in err and "Traceback" not in err
    after = _digest(data)  # the conversion lock (.frames.lock) may be added
    assert all(after.get(name) == sha for name, sha in before.items()) and not out.exists()


def test_non_utf8_out_dir_is_refused_before_writing(tmp_path, capsys):
    data = fabricate.make_cifar10(tmp_path / "data")
    out = Path(os.fsdecode(os.fsencode(str(tmp_path)) + b"/run\xff"))
    assert _exit(["-data-dir", data, "-out-dir", out, *TINY]) == 2
    line = _one_error(capsys.readouterr().err)
    assert "-out-dir" in line and "not valid UTF-8" in line
    assert not out.exists()


def test_train_split_with_a_data_set_that_has_a_test_set_is_refused(tmp_path, capsys):
    data = fabricate.make_dvs128_gesture(tmp_path / "data", per_class=1, events=50)
    out = tmp_path / "run"
    assert _exit(["-data-dir", data, "-out-dir", out, *TINY, "-train-split", "0.5"], DVS) == 2
    line = _one_error(capsys.readouterr().err)
    assert "argument -train-split: applies to cifar10_dvs only" in line
    assert not out.exists()


def test_train_split_default_still_accepted_for_cifar10_dvs():
    from saf_examples.cli import build_parser

    args = build_parser(DVS).parse_args(["-data-dir", "x", "-dataset", "cifar10_dvs",
                                         "-train-split", "0.5"])
    assert args.train_split == 0.5 and type(args.train_split) is float
    default = build_parser(DVS).parse_args(["-data-dir", "x"])
    assert default.train_split == 0.9 and type(default.train_split) is float


@pytest.mark.parametrize("flag, value", [("-lr", "0"), ("-T", "2**70"), ("-seed", "-1")])
def test_digits_bad_flag_is_one_line(capsys, monkeypatch, flag, value):
    monkeypatch.setattr(digits, "train_in_fresh_process", lambda **kw: pytest.fail("trained"))
    with pytest.raises(SystemExit) as exit_:
        digits.main([flag, value])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "usage:" not in err
    assert f"argument {flag}" in _one_error(err)


# ---- signals and a file-size limit, which need a process ------------------------------------------
def _script(*argv, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(ROOT / "examples" / "train_cifar.py"), *map(str, argv)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=CHILD_ENV,
                            cwd=str(ROOT), **kwargs)


@pytest.mark.slow
def test_sigterm_during_training_names_the_resume_command(tmp_path):
    data = fabricate.make_cifar10(tmp_path / "data")
    out = tmp_path / "run"
    process = _script("-data-dir", data, "-out-dir", out, *TINY, "-epochs", "100000",
                      "-progress-every", "1")
    deadline = time.monotonic() + 120
    while ckpt_epoch(out) is None and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 143, err
    line = _one_error(err.replace("interrupted", "error: interrupted"))
    assert "interrupted (SIGTERM)" in line and "-resume" in line
    saved = ckpt_epoch(out)
    assert saved is not None
    command = line.split("with: ", 1)[1].split()[2:]
    resumed = _script(*command, "-epochs", str(saved + 2), "-j", "0", "-no-progress")
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    assert ckpt_epoch(out) == saved + 1


def ckpt_epoch(out: Path):
    try:
        return int(ckpt.load_checkpoint(out / "checkpoint_last.pth")["epoch"])
    except Exception:  # noqa: BLE001 - absent or being written
        return None


@pytest.mark.parametrize("number", [signal.SIGINT, signal.SIGTERM])
def test_signal_while_starting_is_one_line(tmp_path, number):
    process = _script("-data-dir", tmp_path, "-out-dir", tmp_path / "run", *TINY)
    time.sleep(1.0)  # PyTorch takes seconds to load
    process.send_signal(number)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 128 + number, err
    assert "Traceback" not in err
    assert err.strip() == f"interrupted ({signal.Signals(number).name}) while starting; nothing was written."
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_unicode_out_dir_under_an_ascii_terminal_trains_and_escapes_the_name(tmp_path):
    data = fabricate.make_cifar10(tmp_path / "data")
    out = tmp_path / "sortie \u2603"
    process = subprocess.Popen([sys.executable, str(ROOT / "examples" / "train_cifar.py"), "-data-dir",
                                str(data), "-out-dir", str(out), *TINY], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, env={**CHILD_ENV, "PYTHONIOENCODING": "ascii"},
                               cwd=str(ROOT))
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr.decode("ascii", "replace")
    assert b"Traceback" not in stderr
    assert b"sortie \\u2603" in stdout  # printed as an escape, not as a crash
    assert (out / "checkpoint_last.pth").is_file()


def test_no_room_for_a_temporary_file_at_start_is_one_line(tmp_path):
    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))

    process = _script("-data-dir", tmp_path, "-out-dir", tmp_path / "run", *TINY, preexec_fn=limit)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 2, err
    line = _one_error(err)
    assert "temporary folder" in line and "TMPDIR" in line


def test_resume_from_a_nan_momentum_buffer_stops_before_writing(tmp_path, capsys):
    import torch

    data = fabricate.make_cifar10(tmp_path / "data")
    out = tmp_path / "run"
    assert _exit(["-data-dir", data, "-out-dir", out, *TINY, "-epochs", "2", "-stop-after", "1"]) == 0
    last = out / "checkpoint_last.pth"
    state = torch.load(last, weights_only=True)
    buffers = [v for v in state["optimizer"]["state"].values() if v.get("momentum_buffer") is not None]
    buffers[0]["momentum_buffer"] = buffers[0]["momentum_buffer"] * float("nan")
    ckpt.save_checkpoint(state, last)
    before = _digest(out)
    capsys.readouterr()
    assert _exit(["-resume", last, "-j", "0", "-no-progress"]) == 3
    line = _one_error(capsys.readouterr().err)
    assert "optimizer state (parameter" in line and "momentum_buffer) holds nan" in line
    assert _digest(out) == before
    # Evaluating needs no optimizer: -test-only still runs.
    assert _exit(["-resume", last, "-j", "0", "-no-progress", "-test-only"]) == 0


def _resume_of_damaged_checkpoint_is_refused(tmp_path, capsys, damage, epochs: int) -> tuple[str, Path]:
    """Train one epoch of ``epochs``, apply ``damage`` to checkpoint_last.pth, resume: exit 2, one
    line, the run's files unchanged. Returns the line and the checkpoint."""
    import torch

    data = fabricate.make_cifar10(tmp_path / "data")
    out = tmp_path / "run"
    assert _exit(["-data-dir", data, "-out-dir", out, *TINY, "-epochs", str(epochs), "-stop-after", "1"]) == 0
    last = out / "checkpoint_last.pth"
    state = torch.load(last, weights_only=True)
    damage(state)
    ckpt.save_checkpoint(state, last)
    before = _digest(out)
    capsys.readouterr()
    assert _exit(["-resume", last, "-j", "0", "-no-progress"]) == 2
    line = _one_error(capsys.readouterr().err)
    assert _digest(out) == before
    return line, last


@pytest.mark.parametrize("entries, words", [
    ({"T": "2"}, "the checkpoint's arguments hold -T '2': text where the flag takes a number"),
    ({"lr": "0.05"}, "the checkpoint's arguments hold -lr '0.05': text where the flag takes a number"),
    ({"tau": 0.5}, "tau must be >= 1"),
])
def test_resume_names_the_checkpoint_for_its_bad_arguments(tmp_path, capsys, entries, words):
    line, last = _resume_of_damaged_checkpoint_is_refused(
        tmp_path, capsys, lambda state: state["args"].update(entries), epochs=2)
    assert words in line and f"-resume {last}" in line


@pytest.mark.parametrize("entries, words", [
    ({"T_max": 0}, "its schedule state holds the schedule length T_max 0"),
    ({"last_epoch": float("nan")}, "its schedule state holds the schedule step last_epoch nan"),
    ({"base_lrs": [float("inf")]}, "its schedule state holds the schedule's learning rates"),
])
def test_resume_refuses_a_damaged_schedule_before_writing(tmp_path, capsys, entries, words):
    line, last = _resume_of_damaged_checkpoint_is_refused(
        tmp_path, capsys, lambda state: state["lr_scheduler"].update(entries), epochs=3)
    assert words in line and str(last) in line


@pytest.mark.parametrize("change, words", [
    (lambda s: s["best"].__setitem__("test_acc", float("nan")), "its 'best' entry lacks an epoch and a test accuracy"),
    (lambda s: s.__setitem__("max_test_acc", float("nan")), "its max_test_acc is nan, not an accuracy"),
    (lambda s: s["best"].__setitem__("test_acc", 7.0), "its 'best' entry lacks an epoch and a test accuracy"),
])
def test_resume_refuses_an_accuracy_that_is_not_one(tmp_path, capsys, change, words):
    line, last = _resume_of_damaged_checkpoint_is_refused(tmp_path, capsys, change, epochs=3)
    assert words in line and str(last) in line


def test_ctrl_c_before_the_first_save_names_a_restart_that_works(tmp_path, capsys, monkeypatch):
    from saf_examples import run as run_module

    real = run_module._Trainer.train_epoch

    def interrupted(self, epoch, *args, **kwargs):
        raise KeyboardInterrupt

    data = fabricate.make_cifar10(tmp_path / "data")
    out = tmp_path / "run"
    argv = ["-data-dir", data, "-out-dir", out, *TINY]
    monkeypatch.setattr(run_module._Trainer, "train_epoch", interrupted)
    assert _exit(argv) == 130
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert f"start the run again with the same flags and -overwrite, which replaces what it began " \
           f"to write in {out}" in err
    monkeypatch.setattr(run_module._Trainer, "train_epoch", real)
    assert _exit(argv) == 2  # what the message warns about
    assert _exit([*argv, "-overwrite"]) == 0
    assert ckpt_epoch(out) == 0


def test_docs_quote_the_committed_probe_tally():
    import json

    tally = json.loads((ROOT / "tests" / "probe" / "reliability_probe.json").read_text())
    assert not tally["quick"] and tally["only"] is None  # a full run
    assert tally["not_ok"] == []
    assert sum(tally["totals"]["by_outcome"].values()) == tally["totals"]["by_outcome"]["ok"]
    docs = " ".join((ROOT / "docs" / "examples.md").read_text().split())
    bad, faults = tally["totals"]["bad_inputs"], tally["totals"]["faults"]
    assert f"{bad:,} bad inputs and {faults:,} faults, every one ending as promised" in docs
