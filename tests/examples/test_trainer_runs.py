"""What a run of the trainer does besides training, each checked on fabricated tiny CIFAR-10:
short runs and their progress lines, TensorBoard curves that stay whole across a resume, the
warning for a loss stuck at chance, file modes from the umask, Ctrl-C, and the runs a resume may
not touch (another folder, a checkpoint with NaN weights)."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
import torch

import fabricate
from saf_examples import checkpoint as ckpt
from saf_examples import run as run_module

TINY = ["-device", "cpu", "-T", "2", "-b", "4", "-j", "0", "-lr", "0.05",
        "-model", "ottt_spiking_vggws", "-channels", "2", "-method", "saf-e-acc"]
PER_RUN = ["-device", "cpu", "-j", "0"]

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    # 5 training minibatches of 4 and 2 test minibatches.
    return fabricate.make_cifar10(tmp_path_factory.mktemp("runs_data"), per_batch=4, test_count=8)


def _main(*argv) -> int:
    try:
        return run_module.main([str(a) for a in argv])
    except SystemExit as exit_:
        return exit_.code


def _train(data, out, *flags) -> int:
    return _main("-data-dir", data, "-out-dir", out, *TINY, *flags)


def _files(root: Path) -> dict:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _error_lines(err: str) -> list:
    assert "Traceback" not in err
    return [line for line in err.splitlines() if line.strip() and not line.startswith("warning:")]


@pytest.fixture(scope="module")
def short_run(data, tmp_path_factory):
    """Two minibatches per epoch, one test minibatch, progress lines every minibatch, stopped
    after the first of two epochs: what the resume tests continue."""
    out = tmp_path_factory.mktemp("short") / "run"
    assert _train(data, out, "-epochs", "2", "-stop-after", "1", "-max-train-batches", "2",
                  "-max-test-batches", "1", "-no-progress", "-progress-every", "1") == 0
    return out


def _copy(source: Path, target: Path) -> Path:
    target.mkdir(parents=True)
    for name in ("checkpoint_last.pth", "checkpoint_best.pth", "history.json", "args.json"):
        (target / name).write_bytes((source / name).read_bytes())
    return target


# ---- short runs and progress ----------------------------------------------------------------------
def test_limited_loader_serves_only_its_first_minibatches():
    loader = list(range(7))
    assert list(run_module._Limited(loader, 3)) == [0, 1, 2] and len(run_module._Limited(loader, 3)) == 3
    assert list(run_module._Limited(loader, 10)) == loader and len(run_module._Limited(loader, 10)) == 7
    assert list(run_module._Limited(loader, None)) == loader


def test_short_run_is_recorded_and_kept_on_resume(short_run, tmp_path, capsys):
    args = json.loads((short_run / "args.json").read_text())
    assert (args["max_train_batches"], args["max_test_batches"]) == (2, 1)
    state = ckpt.load_checkpoint(short_run / "checkpoint_last.pth")
    assert state["history"][0]["train_batches"] == 2  # of the 5 the data hold
    run = _copy(short_run, tmp_path / "run")
    assert _main("-resume", run / "checkpoint_last.pth", *PER_RUN, "-no-progress") == 0
    state = ckpt.load_checkpoint(run / "checkpoint_last.pth")
    assert [row["train_batches"] for row in state["history"]] == [2, 2]


def test_no_progress_prints_a_plain_line_every_n_minibatches(data, tmp_path, capsys):
    assert _train(data, tmp_path / "out", "-epochs", "1", "-no-progress", "-progress-every", "2",
                  "-max-test-batches", "1") == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("epoch 0/1 [")]
    # Every second minibatch of 5, and the last one.
    assert [line.split("]")[0] for line in lines] == ["epoch 0/1 [2/5", "epoch 0/1 [4/5",
                                                       "epoch 0/1 [5/5"]
    for line in lines:
        assert " loss " in line and " acc " in line and " img/s | ETA " in line and "\r" not in line


def test_progress_printer_reports_running_means_rate_and_eta():
    from io import StringIO

    from saf_examples.report import progress_printer

    clock = iter([0.0, 2.0, 4.0]).__next__
    stream = StringIO()
    log = progress_printer(3, 10, batches=4, images_per_batch=8, every=2, stream=stream, clock=clock)
    log(0, {"loss": 2.0, "acc": 0.0})
    log(1, {"loss": 1.0, "acc": 0.5})
    log(2, {"loss": 0.0, "acc": 1.0})
    log(3, {"loss": 1.0, "acc": 0.5})
    assert stream.getvalue().splitlines() == [
        "epoch 3/10 [2/4] loss 1.5000 acc 0.2500 | 8.0 img/s | ETA 0:02",
        "epoch 3/10 [4/4] loss 1.0000 acc 0.5000 | 8.0 img/s | ETA 0:00"]


# ---- TensorBoard across a resume ----------------------------------------------------------------
def _scalars(folder: Path, tag: str) -> list:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder))
    events.Reload()
    return [event.step for event in events.Scalars(tag)]


def test_resumed_run_keeps_every_tensorboard_curve_whole(short_run, tmp_path):
    run = _copy(short_run, tmp_path / "run")
    (run / "tb").mkdir()
    for source in (short_run / "tb").rglob("*"):
        target = run / "tb" / source.relative_to(short_run / "tb")
        if source.is_dir():
            target.mkdir(exist_ok=True)
        else:
            target.write_bytes(source.read_bytes())
    assert _main("-resume", run / "checkpoint_last.pth", *PER_RUN, "-no-progress") == 0
    # Two epochs of two minibatches: the per-minibatch curve has all four, the epoch curves both.
    assert _scalars(run / "tb" / "iteration", "iteration/loss") == [0, 1, 2, 3]
    assert _scalars(run / "tb", "train_loss") == [0, 1]


# ---- a loss stuck at chance --------------------------------------------------------------------------
def test_a_loss_at_chance_for_a_long_stretch_is_said_once(data, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(run_module, "CHANCE_PATIENCE", 3)
    # A learning rate of almost 0: the untrained two-channel network stays at chance.
    assert _train(data, tmp_path / "out", "-epochs", "2", "-lr", "1e-30", "-no-progress") == 0
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if "stayed at chance level" in line]
    assert len(warnings) == 1 and warnings[0].startswith("warning: the training loss")
    assert "for 3 minibatches in a row" in warnings[0] and "-v-threshold 0.5" in warnings[0]


def test_a_learning_run_does_not_hear_about_chance(data, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(run_module, "CHANCE_PATIENCE", 3)
    real = run_module._Trainer.chance_watch

    def chance_watch(self, then=None):
        call = real(self, then)

        def shifted(batch, values):  # a loss that moves away from chance at every minibatch
            call(batch, dict(values, loss=values["loss"] / (batch + 2)))

        return shifted

    monkeypatch.setattr(run_module._Trainer, "chance_watch", chance_watch)
    assert _train(data, tmp_path / "out", "-epochs", "1", "-no-progress") == 0
    assert "stayed at chance level" not in capsys.readouterr().err


# ---- file modes ------------------------------------------------------------------------------------
@pytest.mark.parametrize("mask", [0o022, 0o002])
def test_files_take_the_mode_of_the_umask(data, tmp_path, mask):
    old = os.umask(mask)
    try:
        out = tmp_path / "out"
        assert _train(data, out, "-epochs", "1", "-no-progress", "-deploy-lif",
                      "-max-test-batches", "1") == 0
    finally:
        os.umask(old)
    expected = 0o666 & ~mask
    for name in ("checkpoint_last.pth", "checkpoint_best.pth", "args.json", "lif_net.pt",
                 "lif_exactness.json", "history.json", "history.csv", "summary.json", "curves.png"):
        assert stat.S_IMODE((out / name).stat().st_mode) == expected, name


# ---- Ctrl-C ------------------------------------------------------------------------------------------
def _interrupt_at(monkeypatch, at_epoch: int):
    real = run_module._Trainer.train_epoch

    def train_epoch(self, epoch, *args, **kwargs):
        if epoch == at_epoch:
            raise KeyboardInterrupt
        return real(self, epoch, *args, **kwargs)

    monkeypatch.setattr(run_module._Trainer, "train_epoch", train_epoch)


def test_ctrl_c_prints_one_line_with_the_resume_command(data, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    _interrupt_at(monkeypatch, 1)
    assert _train(data, out, "-epochs", "2", "-no-progress") == run_module.EXIT_INTERRUPTED == 130
    lines = _error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and lines[0].startswith("interrupted (Ctrl-C)")
    assert f"-resume {out / 'checkpoint_last.pth'}" in lines[0]
    assert not (out / ".lock").exists() and not list(out.glob(".*.tmp"))
    assert ckpt.load_checkpoint(out / "checkpoint_last.pth")["epoch"] == 0
    monkeypatch.undo()
    assert _main("-resume", out / "checkpoint_last.pth", *PER_RUN, "-no-progress") == 0
    assert ckpt.load_checkpoint(out / "checkpoint_last.pth")["epoch"] == 1


def test_ctrl_c_before_the_first_epoch_says_there_is_nothing_to_resume(data, tmp_path, capsys,
                                                                         monkeypatch):
    _interrupt_at(monkeypatch, 0)
    assert _train(data, tmp_path / "out", "-epochs", "1", "-no-progress") == 130
    lines = _error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and "nothing to resume" in lines[0]


# ---- runs a resume must not touch ------------------------------------------------------------------
@pytest.mark.slow
def test_resume_into_another_runs_folder_is_refused_before_anything_is_written(short_run, data,
                                                                                tmp_path, capsys):
    a = _copy(short_run, tmp_path / "a")
    b = tmp_path / "b"
    assert _train(data, b, "-epochs", "1", "-no-progress", "-max-train-batches", "1",
                  "-max-test-batches", "1") == 0
    before_a, before_b = _files(a), _files(b)
    capsys.readouterr()
    assert _main("-resume", a / "checkpoint_last.pth", "-out-dir", b, *PER_RUN) == 2
    lines = _error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and "never writes into another run's folder" in lines[0]
    assert _files(a) == before_a and _files(b) == before_b
    # The same folder spelled differently is the run's own.
    assert _main("-resume", a / "checkpoint_last.pth", "-out-dir", a / "." , *PER_RUN,
                 "-no-progress") == 0


@pytest.mark.parametrize("mode", [["-test-only"], ["-test-only", "-deploy-lif"], []])
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_a_checkpoint_with_nonfinite_weights_exits_3_and_writes_nothing(short_run, tmp_path, capsys,
                                                                          mode, value):
    run = _copy(short_run, tmp_path / "run")
    state = ckpt.load_checkpoint(run / "checkpoint_last.pth")
    key = next(k for k, v in state["net"].items() if v.is_floating_point())
    state["net"][key].view(-1)[0] = value
    ckpt.save_checkpoint(state, run / "checkpoint_last.pth")  # a valid checksum: only the value is bad
    before = _files(tmp_path)
    assert _main("-resume", run / "checkpoint_last.pth", *PER_RUN, *mode) == 3
    lines = _error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and f"weight {key} holds" in lines[0] and "nothing was" in lines[0]
    assert _files(tmp_path) == before


def test_out_dir_with_a_component_over_255_bytes_is_one_message(data, tmp_path, capsys):
    out = tmp_path / ("x" * 256) / "run"
    assert _train(data, out, "-epochs", "1") == 2
    lines = _error_lines(capsys.readouterr().err)
    assert len(lines) == 2 and "argument -out-dir" in lines[0] and "at most 255 bytes" in lines[0]
    assert os.listdir(tmp_path) == []


def test_banner_reports_the_exactness_check(data, tmp_path, capsys):
    assert _train(data, tmp_path / "out", "-epochs", "1", "-no-progress", "-max-train-batches", "1",
                  "-max-test-batches", "1") == 0
    out = capsys.readouterr().out
    assert "exactness (the SAF network against the LIF network -deploy-lif builds, eval mode): " \
           in out and ": exact" in out


def test_history_and_plots_are_written_atomically(data, tmp_path, monkeypatch, capsys):
    """A full disk while history.csv or a plot is written leaves the previous whole file."""
    written = []
    real = ckpt._write_temporary

    def write_temporary(write, file):
        written.append(os.path.basename(file.name).lstrip(".").split(".tmp")[0])
        return real(write, file)

    monkeypatch.setattr(ckpt, "_write_temporary", write_temporary)
    assert _train(data, tmp_path / "out", "-epochs", "1", "-no-progress", "-max-test-batches",
                  "1") == 0
    names = {name.rsplit(".", 1)[0] for name in written}
    for name in ("history.json", "history.csv", "curves.png", "firing_rates.png", "cost.png"):
        assert any(entry.startswith(name) for entry in names), (name, names)
    json.loads((tmp_path / "out" / "history.json").read_text())
