"""The training examples end to end, on tiny data sets fabricated in the real on-disk formats."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from saf_examples.methods import METHOD_NAMES, get_method
from saf_examples.cli import build_parser
from saf_examples.run import main
from saf_examples.cli import DEFAULT_MODELS, INJECT_NAN_EPOCH_ENV
from saf_examples.data import DATASETS, Cutout, seeded_class_split
from saf_examples.models import build_model

import fabricate  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
CIFAR = ("cifar10", "cifar100")
DVS = ("dvs128_gesture", "cifar10_dvs")
TINY = ["-device", "cpu", "-T", "2", "-b", "4", "-j", "0", "-no-progress", "-lr", "0.05"]


pytestmark = pytest.mark.usefixtures("one_thread")


#: Every method trains one epoch in the full suite; the fast subset (-m "not slow") trains SAF-E.
_ONE_FAST = [name if name == "saf-e" else pytest.param(name, marks=pytest.mark.slow)
             for name in METHOD_NAMES]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    base = tmp_path_factory.mktemp("data")
    return {
        "cifar10": fabricate.make_cifar10(base / "cifar10"),
        "cifar100": fabricate.make_cifar100(base / "cifar100"),
        "dvs128_gesture": fabricate.make_dvs128_gesture(base / "gesture"),
        "cifar10_dvs": fabricate.make_cifar10_dvs(base / "cifar10_dvs"),
    }


def _train(dataset, data_dir, out_dir, *flags):
    """The example's exit status: ``main``'s return value, or argparse's for a refused flag."""
    datasets = CIFAR if dataset in CIFAR else DVS
    try:
        return main(["-dataset", dataset, "-data-dir", str(data_dir), "-out-dir", str(out_dir),
                     *TINY, *flags], datasets=datasets)
    except SystemExit as exit:
        return exit.code


def _checkpoint(out_dir, name="checkpoint_last.pth"):
    return torch.load(Path(out_dir) / name, map_location="cpu", weights_only=True)


def _initial_state(dataset, flags):
    """The model's weights before training: same flags, same seed, nothing trained."""
    args = build_parser(CIFAR if dataset in CIFAR else DVS).parse_args(
        ["-dataset", dataset, "-data-dir", "unused", *TINY, *flags])
    args.model = args.model or DEFAULT_MODELS[dataset]
    info = DATASETS[dataset]
    torch.manual_seed(args.seed)
    model = build_model(args, get_method(args.method), info.num_classes, info.in_channels,
                        info.sequence)
    return model.state_dict()


def _check_run(out_dir, dataset, flags):
    history = json.loads((out_dir / "history.json").read_text())
    assert [row["epoch"] for row in history] == [0]
    row = history[0]
    for key in ("train_loss", "test_loss", "epoch_time_s", "peak_memory_mib"):
        assert math.isfinite(row[key]) and row[key] >= 0, key
    assert 0.0 <= row["test_acc"] <= 1.0
    rates = row["firing_rate"]
    assert rates and all(0.0 <= r <= 1.0 for r in rates.values())
    for name in ("checkpoint_last.pth", "checkpoint_best.pth", "history.csv", "curves.png",
                 "firing_rates.png", "cost.png", "summary.json"):
        assert (out_dir / name).is_file(), name
    assert list((out_dir / "tb").iterdir()), "no TensorBoard events"
    # args.json records the flags this script shows, nothing hidden, no other data set's flags.
    recorded = json.loads((out_dir / "args.json").read_text())
    shown = {action.dest for action in build_parser(CIFAR if dataset in CIFAR else DVS)._actions}
    assert "inject_nan_epoch" not in recorded
    assert not {"cutout", "train_split"} <= set(recorded)
    assert set(recorded) <= shown, set(recorded) - shown
    trained = _checkpoint(out_dir)["net"]
    initial = _initial_state(dataset, flags)
    assert trained.keys() == initial.keys()
    assert all(torch.isfinite(v).all() for v in trained.values() if v.is_floating_point())
    changed = [k for k in trained if trained[k].is_floating_point() and not torch.equal(trained[k], initial[k])]
    assert changed, "training left every weight unchanged"


@pytest.mark.parametrize("method", _ONE_FAST)
def test_cifar_one_epoch_every_method(data, tmp_path, method):
    flags = ["-method", method, "-epochs", "1", "-channels", "4"]
    assert _train("cifar10", data["cifar10"], tmp_path, *flags) == 0
    _check_run(tmp_path, "cifar10", flags)


@pytest.mark.parametrize("method", _ONE_FAST)
def test_dvs_gesture_one_epoch_every_method(data, tmp_path, method):
    flags = ["-method", method, "-epochs", "1", "-model", "ottt_spiking_vggws", "-channels", "2"]
    assert _train("dvs128_gesture", data["dvs128_gesture"], tmp_path, *flags) == 0
    _check_run(tmp_path, "dvs128_gesture", flags)


@pytest.mark.parametrize("dataset, flags", [
    ("cifar100", ["-method", "saf-f", "-channels", "4"]),
    ("dvs128_gesture", ["-method", "saf-e-acc", "-channels", "4"]),  # DVSGestureNet
    ("cifar10_dvs", ["-method", "bptt", "-channels", "4"]),  # CIFAR10DVSNet
])
def test_other_datasets_and_default_models(data, tmp_path, dataset, flags):
    flags = flags + ["-epochs", "1"]
    assert _train(dataset, data[dataset], tmp_path, *flags) == 0
    _check_run(tmp_path, dataset, flags)


def test_deploy_lif_run_reports_the_lif_accuracy(data, tmp_path):
    flags = ["-method", "saf-e", "-epochs", "1", "-channels", "8", "-deploy-lif"]
    assert _train("cifar10", data["cifar10"], tmp_path, *flags) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    # The LIF network read as SpikingJelly reads any network (mean over T): same prediction.
    assert summary["deployed_lif_test_acc"] == summary["last"]["test_acc"]
    assert "LIF deployment acc" in summary["line"]


@pytest.mark.parametrize("method, sequence", [("saf-e", False), ("saf-e-acc", False),
                                              ("saf-f", True), ("saf-e-acc", True)])
def test_lif_rate_readout_equals_saf_scores(method, sequence):
    """The deployed LIF network's outputs, read as ``out_seq.mean`` over T, give the SAF model's
    default scores, the firing rate of its recovered output (float64)."""
    from spikingjelly.activation_based import functional
    from spikingjelly_saf.conversion import to_lif
    from spikingjelly_saf.training import run_sequence
    from saf_examples.engine import DeployedLIF
    from spikingjelly_saf.training import saf_nodes

    args = build_parser(CIFAR).parse_args(["-data-dir", "unused", "-method", method, "-channels", "8"])
    args.model = "ottt_spiking_vggws"
    torch.manual_seed(0)
    channels = 2 if sequence else 3
    model = build_model(args, get_method(method), 10, channels, sequence).double().eval()
    with torch.no_grad():  # livelier than the zoo's init, so spikes reach the classifier
        for parameter in model.parameters():
            parameter.normal_(0.5, 0.5)
    if sequence:  # event frames: the SAF model starts with InputAverage, the LIF twin without it
        x_seq = 3.0 * torch.rand(2, 4, channels, 16, 16, dtype=torch.float64)
    else:  # static images, repeated at every step as the CIFAR script feeds them
        x_seq = (3.0 * torch.rand(2, 1, 3, 16, 16, dtype=torch.float64)).expand(2, 4, 3, 16, 16)
    with torch.no_grad():
        model_mode = get_method(method).step_mode
        saf_scores = get_method(method).reader(model, x_seq)(run_sequence(model, x_seq, model_mode))
        functional.reset_net(model)
        lif = to_lif(model).eval()
        lif_outputs = run_sequence(lif, x_seq, model_mode)
    readout = DeployedLIF(get_method(method), saf_nodes(model)[-1].decay)
    assert saf_scores.abs().max() > 0
    torch.testing.assert_close(readout.prediction_scores(lif_outputs), saf_scores, rtol=1e-9, atol=1e-9)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["saf-e", "bptt"])
def test_resume_reproduces_uninterrupted_run_bitwise(data, tmp_path, method):
    flags = ["-method", method, "-epochs", "2", "-channels", "4"]
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert _train("cifar10", data["cifar10"], straight, *flags) == 0
    assert _train("cifar10", data["cifar10"], split, *flags, "-stop-after", "1") == 0
    assert _checkpoint(split)["epoch"] == 0
    assert _train("cifar10", data["cifar10"], split, *flags, "-resume",
                  str(split / "checkpoint_last.pth")) == 0
    a, b = _checkpoint(straight), _checkpoint(split)
    assert a["epoch"] == b["epoch"] == 1
    for key in a["net"]:
        assert torch.equal(a["net"][key], b["net"][key]), key
    for slot_a, slot_b in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert torch.equal(slot_a["momentum_buffer"], slot_b["momentum_buffer"])
    assert a["lr_scheduler"] == b["lr_scheduler"]
    strip = ("epoch_time_s", "train_samples_per_s", "peak_memory_mib")
    assert ([{k: v for k, v in r.items() if k not in strip} for r in a["history"]]
            == [{k: v for k, v in r.items() if k not in strip} for r in b["history"]])


@pytest.mark.slow
def test_resume_without_restored_rng_would_differ(data, tmp_path):
    """The exact-resume test can fail: a second epoch from a fresh seed trains other weights."""
    flags = ["-method", "saf-e", "-epochs", "2", "-channels", "4"]
    straight, fresh = tmp_path / "straight", tmp_path / "fresh"
    assert _train("cifar10", data["cifar10"], straight, *flags) == 0
    assert _train("cifar10", data["cifar10"], fresh, *flags, "-stop-after", "1") == 0
    state = _checkpoint(fresh)
    state["rng"] = [state["rng"][0] | {"torch": torch.manual_seed(12345).get_state()}]
    torch.save(state, fresh / "altered.pth")
    assert _train("cifar10", data["cifar10"], fresh, *flags, "-resume", str(fresh / "altered.pth")) == 0
    a, b = _checkpoint(straight)["net"], _checkpoint(fresh)["net"]
    assert any(not torch.equal(a[k], b[k]) for k in a)


def test_nonfinite_loss_stops_and_keeps_last_good_checkpoint(data, tmp_path, capsys, monkeypatch):
    flags = ["-method", "saf-e-acc", "-epochs", "3", "-channels", "4"]
    reference = tmp_path / "reference"
    assert _train("cifar10", data["cifar10"], reference, *flags, "-stop-after", "1") == 0
    run = tmp_path / "run"
    monkeypatch.setenv(INJECT_NAN_EPOCH_ENV, "1")
    assert _train("cifar10", data["cifar10"], run, *flags) == 3
    assert "inject" not in (run / "args.json").read_text()
    message = capsys.readouterr().err
    assert "nan" in message and "epoch 1" in message and str(run / "checkpoint_last.pth") in message
    kept, good = _checkpoint(run), _checkpoint(reference)
    assert kept["epoch"] == 0 and len(kept["history"]) == 1
    for key in good["net"]:
        assert torch.equal(kept["net"][key], good["net"][key]), key
    assert not (run / "summary.json").exists()


@pytest.mark.slow
def test_missing_cifar_gives_one_message_and_exit_code(tmp_path):
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "train_cifar.py"), "-data-dir", str(tmp_path),
         "-device", "cpu"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert str(tmp_path / "cifar-10-batches-py") in result.stderr
    assert "data_batch_1" in result.stderr and "-download" in result.stderr


def test_partial_cifar100_names_the_missing_file(data, tmp_path, capsys):
    root = fabricate.make_cifar100(tmp_path / "c100")
    (root / "cifar-100-python" / "meta").unlink()
    assert _train("cifar100", root, tmp_path / "out", "-epochs", "1") == 2
    err = capsys.readouterr().err
    assert "missing:   meta" in err and "cifar-100-python" in err


def test_partial_dvs_names_missing_class_folders(tmp_path, capsys):
    root = fabricate.make_dvs128_gesture(tmp_path / "gesture")
    for file in (root / "events_np" / "test" / "7").glob("*.npz"):
        file.unlink()
    assert _train("dvs128_gesture", root, tmp_path / "out", "-epochs", "1") == 2
    err = capsys.readouterr().err
    assert "test/7" in err and str(root / "events_np") in err
    assert _train("cifar10_dvs", tmp_path / "nothing", tmp_path / "out", "-epochs", "1") == 2
    err = capsys.readouterr().err
    assert "airplane.zip" in err and "-download" in err
    assert not (tmp_path / "out").exists()


def _torchrun(args, out_dir, **environment):
    env = dict(os.environ, OMP_NUM_THREADS="1", **environment)
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
               "--standalone",
               str(ROOT / "examples" / "train_cifar.py"), *args, "-out-dir", str(out_dir)]
    return subprocess.run(command, capture_output=True, text=True, timeout=240, env=env)


@pytest.mark.slow
def test_ddp_two_processes_gloo_syncs_once_per_minibatch(data, tmp_path):
    """Under DDP, SAF-F all-reduces gradients once per minibatch and SAF-E at every step; a NaN on
    one process stops both (no hang) and keeps the last good checkpoint."""
    steps = 3
    syncs = {}
    for method, extra, env in (("saf-f", ["-epochs", "2"], {INJECT_NAN_EPOCH_ENV: "1"}),
                               ("saf-e", ["-epochs", "1"], {})):
        out = tmp_path / method
        result = _torchrun(["-data-dir", str(data["cifar10"]), "-device", "cpu", "-T", str(steps),
                            "-b", "2", "-j", "0", "-channels", "4", "-method", method,
                            "-no-progress", "-count-grad-syncs", *extra], out, **env)
        history = json.loads((out / "history.json").read_text())
        assert [row["epoch"] for row in history] == [0]
        syncs[method] = history[0]["grad_syncs_per_batch"]
        assert math.isfinite(history[0]["train_loss"])
        if method == "saf-f":
            assert result.returncode != 0 and "the training loss became nan at epoch 1" in result.stderr
            assert _checkpoint(out)["epoch"] == 0
        else:
            assert result.returncode == 0, result.stderr[-3000:]
    assert syncs["saf-f"] >= 1
    assert syncs["saf-e"] == steps * syncs["saf-f"]


def test_parser_takes_spikingjelly_flags_and_defaults():
    args = build_parser(CIFAR).parse_args(
        ["-T", "4", "-device", "cpu", "-b", "8", "-epochs", "2", "-j", "1", "-data-dir", "d",
         "-out-dir", "o", "-resume", "r.pth", "-amp", "-opt", "adam", "-momentum", "0.8", "-lr",
         "0.01", "-model", "ottt_spiking_vggws", "-method", "saf-f", "-tau", "3", "-v-threshold",
         "0.5", "-surrogate", "atan", "-backend", "torch", "-seed", "1", "-deploy-lif",
         "-download", "-dataset", "cifar100"])
    assert (args.T, args.b, args.opt, args.method, args.dataset) == (4, 8, "adam", "saf-f", "cifar100")
    defaults = build_parser(CIFAR).parse_args(["-data-dir", "d"])
    assert (defaults.T, defaults.tau, defaults.lr, defaults.momentum, defaults.epochs, defaults.b,
            defaults.opt, defaults.loss_lambda, defaults.surrogate) == (
        6, 2.0, 0.1, 0.9, 300, 128, "sgd", 0.05, "sigmoid")


def test_incompatible_choices_are_refused_with_a_message(data, tmp_path, capsys):
    assert _train("cifar10", data["cifar10"], tmp_path, "-method", "bptt", "-surrogate", "rep") == 2
    assert "SpikeRepresentation" in capsys.readouterr().err
    assert _train("cifar10", data["cifar10"], tmp_path, "-method", "ottt-o", "-model",
                  "CIFAR10Net") == 2
    assert "OTTTSequential" in capsys.readouterr().err
    assert _train("cifar10", data["cifar10"], tmp_path, "-method", "bptt", "-deploy-lif") == 2


def test_seeded_split_and_cutout():
    class Folder(torch.utils.data.Dataset):
        samples = [(f"{i}.npz", i % 3) for i in range(30)]

    train_a, test_a = seeded_class_split(Folder(), 0.8, seed=1)
    train_b, _ = seeded_class_split(Folder(), 0.8, seed=1)
    train_c, _ = seeded_class_split(Folder(), 0.8, seed=2)
    assert train_a.indices == train_b.indices != train_c.indices
    assert sorted(train_a.indices + test_a.indices) == list(range(30))
    assert sorted(Folder.samples[i][1] for i in test_a.indices) == [0, 0, 1, 1, 2, 2]

    torch.manual_seed(0)
    image = Cutout(4)(torch.ones(3, 8, 8))
    holes = (image == 0).all(dim=0)
    assert 0 < int(holes.sum()) <= 16 and (image[:, ~holes] == 1).all()


_FUSED_CHILD = r"""
import json, sys
from saf_examples.methods import get_method
from spikingjelly_saf.neuron import SAFNode
from saf_examples.cli import build_parser
from saf_examples.run import main
from saf_examples.models import build_model

argv = sys.argv[1:]
args = build_parser(("cifar10", "cifar100")).parse_args(argv)
args.model = "ottt_spiking_vggws"
model = build_model(args, get_method(args.method), 10, 3, False)
nodes = [(m.backend, m.step_mode) for m in model.modules() if isinstance(m, SAFNode)]
print("NODES " + json.dumps(nodes), flush=True)
sys.exit(main(argv))
"""


@pytest.mark.slow
@pytest.mark.parametrize("method", ["saf-e", "saf-f"])
def test_fused_backend_trains_every_saf_schedule_under_triton_interpreter(data, tmp_path, method):
    """-backend triton builds the SAF neurons in multi-step mode (SAF-E and SAF-F default to
    single-step, where a fused backend cannot run) and trains, on Triton's CPU interpreter."""
    pytest.importorskip("triton")
    env = dict(os.environ, TRITON_INTERPRET="1", OMP_NUM_THREADS="1")
    argv = ["-data-dir", str(data["cifar10"]), "-out-dir", str(tmp_path), *TINY, "-epochs", "1",
            "-channels", "2", "-method", method, "-backend", "triton"]
    result = subprocess.run([sys.executable, "-c", _FUSED_CHILD, *argv], capture_output=True,
                            text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    nodes = json.loads(result.stdout.split("NODES ", 1)[1].splitlines()[0])
    assert nodes and all(node == ["triton", "m"] for node in nodes), nodes
    history = json.loads((tmp_path / "history.json").read_text())
    assert math.isfinite(history[0]["train_loss"]) and math.isfinite(history[0]["test_loss"])


def test_fused_backend_refused_for_methods_without_saf_neurons(data, tmp_path, capsys):
    assert _train("cifar10", data["cifar10"], tmp_path, "-method", "ottt-o", "-backend",
                  "triton") == 2
    err = capsys.readouterr().err
    assert "-backend" in err and "saf-e, saf-e-acc, saf-f" in err and "Traceback" not in err
    assert not tmp_path.exists() or not any(tmp_path.iterdir())


def _tiny_model_and_loader(method_name, channels=4, samples=8):
    from saf_examples.engine import ce_mse_loss

    args = build_parser(CIFAR).parse_args(["-data-dir", "unused", "-device", "cpu", "-T", "3",
                                           "-method", method_name, "-channels", str(channels)])
    args.model = "ottt_spiking_vggws"
    torch.manual_seed(0)
    model = build_model(args, get_method(method_name), 10, 3, False)
    x = 3.0 * torch.rand(samples, 3, 16, 16)
    y = torch.arange(samples) % 10
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=4)
    return model, loader, ce_mse_loss(10)


@pytest.mark.parametrize("method", ["saf-e", "ottt-o", "bptt"])
def test_train_and_test_loss_share_one_scale(method):
    """With a learning rate of 0 the weights stay, so the training pass must report exactly the
    test pass's loss: per sample, the loss of the prediction scores (not a sum over T steps)."""
    from saf_examples.engine import evaluate, train_one_epoch

    model, loader, f_loss = _tiny_model_and_loader(method)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    seen = []
    trained = train_one_epoch(
        model, get_method(method), optimizer, loader, f_loss, epoch=0, steps=3, sequence=False,
        device=torch.device("cpu"), on_minibatch=lambda batch, values: seen.append((batch, values)))
    tested = evaluate(
        model, get_method(method), loader, f_loss, steps=3, sequence=False,
        device=torch.device("cpu"), check_health=False)
    assert trained.samples == tested.samples == 8 and trained.correct == tested.correct
    assert trained.loss_sum == pytest.approx(tested.loss_sum, rel=1e-5)
    # Per-minibatch values for TensorBoard: both minibatches, the same loss, the method's objective.
    assert [batch for batch, _ in seen] == [0, 1]
    assert sum(values["loss"] * 4 for _, values in seen) == pytest.approx(trained.loss_sum, rel=1e-6)
    assert {"loss", "acc", "objective", "lr"} <= set(seen[0][1])


def test_evaluation_warns_about_a_dead_network_once_and_not_about_a_live_one(capsys):
    from saf_examples.engine import evaluate

    model, loader, f_loss = _tiny_model_and_loader("saf-e-acc")
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0.5, 0.5)  # every layer fires, none everywhere
    evaluate(model, get_method("saf-e-acc"), loader, f_loss, steps=3, sequence=False,
             device=torch.device("cpu"))
    assert "warning" not in capsys.readouterr().err
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.fill_(-0.1)  # nothing reaches a threshold: every layer silent
    for _ in range(2):
        evaluate(model, get_method("saf-e-acc"), loader, f_loss, steps=3, sequence=False,
                 device=torch.device("cpu"))
    err = capsys.readouterr().err
    silent = [line for line in err.splitlines() if line.startswith("warning: layer")]
    assert silent and all("is silent" in line for line in silent)
    assert "'features.1'" in silent[0]  # the first neuron layer, by its clean name
    assert len(silent) == len(set(silent)), "a second evaluation repeated the warnings"


def test_plot_names_and_minibatch_logger():
    from saf_examples.report import minibatch_logger, short_layer_names

    assert short_layer_names(["1.features.1", "1.classifier.2"]) == ["features.1", "classifier.2"]
    assert short_layer_names(["module.features.1", "module.features.4"]) == ["features.1",
                                                                             "features.4"]

    class Writer:
        def __init__(self):
            self.scalars = []

        def add_scalar(self, tag, value, step):
            self.scalars.append((tag, value, step))

    writer = Writer()
    log = minibatch_logger(writer, epoch=2, batches_per_epoch=5)
    log(3, {"loss": 1.5})
    assert writer.scalars == [("iteration/loss", 1.5, 13)]
