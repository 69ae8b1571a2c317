"""Data the trainer reads: MNIST-family idx files in place, and damaged data sets (CIFAR content,
DVS events, SpikingJelly's unfinished-conversion marker) ending in one message and exit status 2."""

from __future__ import annotations

import json
import os
import time

import numpy as np
import pytest
import torch

import fabricate
from saf_examples.cli import build_parser
from saf_examples.run import main
from saf_examples import idx
from saf_examples.data import DataMissingError, build_datasets, check_event_file

CIFAR = ("cifar10", "cifar100")
DVS = ("dvs128_gesture", "cifar10_dvs")
MNIST = ("fashion_mnist", "mnist")
TINY = ["-device", "cpu", "-T", "2", "-b", "4", "-j", "0", "-no-progress", "-epochs", "1"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def no_debian_package(monkeypatch, tmp_path):
    # The tests must not depend on whether this machine has dataset-fashion-mnist installed.
    monkeypatch.setattr(idx, "DEBIAN_FASHION_MNIST", tmp_path / "no-debian-package")


def _exit(argv, datasets):
    try:
        return main(argv, datasets=datasets)
    except SystemExit as exit:
        return exit.code


def _args(datasets, data_dir, *flags):
    return build_parser(datasets).parse_args(["-data-dir", str(data_dir), *TINY, *flags])


def _refused(capsys, datasets, data_dir, out_dir, *flags) -> str:
    code = _exit(["-data-dir", str(data_dir), "-out-dir", str(out_dir), *TINY, *flags], datasets)
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    return err


# ---- MNIST and Fashion-MNIST ---------------------------------------------------------------------
@pytest.mark.parametrize("name, layout, gzipped", [
    ("fashion_mnist", None, True),            # the original files in the folder (Debian's layout)
    ("fashion_mnist", "FashionMNIST", True),  # torchvision's layout
    ("mnist", "MNIST", False),                # torchvision's layout, raw idx files
])
def test_mnist_family_read_in_place(tmp_path, no_debian_package, name, layout, gzipped):
    root = fabricate.make_mnist_family(tmp_path / "data", layout, train_count=8, test_count=4,
                                       gzipped=gzipped)
    before = sorted(p.relative_to(root) for p in root.rglob("*"))
    train, test, info = build_datasets(_args(MNIST, root, "-dataset", name))
    assert (len(train), len(test), info.num_classes, info.in_channels) == (8, 4, 10, 1)
    image, label = train[3]
    assert image.shape == (1, 28, 28) and image.dtype == torch.float32 and label == 3
    images, _ = idx.load_mnist_family(name, root, train=True)
    mean, std = {"mnist": (0.1307, 0.3081), "fashion_mnist": (0.2860, 0.3530)}[name]
    torch.testing.assert_close(image[0], (images[3].float() / 255 - mean) / std)
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == before, "files were copied"


def test_fashion_mnist_reads_only_the_folder_given(tmp_path, monkeypatch, capsys):
    """A -data-dir without the files is refused even where Debian's folder has them; without
    -data-dir the run reads Debian's folder (the documented default), and records it absolute."""
    debian = fabricate.make_mnist_family(tmp_path / "usr-share-datasets-fashion-mnist")
    monkeypatch.setattr(idx, "DEBIAN_FASHION_MNIST", debian)
    (tmp_path / "empty").mkdir()
    err = _refused(capsys, MNIST, tmp_path / "empty", tmp_path / "out", "-dataset", "fashion_mnist")
    assert str(tmp_path / "empty") in err and "not found" in err
    assert not (tmp_path / "out").exists()
    out = tmp_path / "default"
    monkeypatch.chdir(tmp_path)
    assert _exit(["-out-dir", "default", *TINY, "-channels", "2"], MNIST) == 0
    assert f"data: {debian} (the default" in capsys.readouterr().out
    assert json.loads((out / "args.json").read_text())["data_dir"] == str(debian)


@pytest.mark.slow
def test_relative_data_dir_is_stored_absolute_and_a_resume_with_other_data_is_refused(
        tmp_path, monkeypatch, capsys, no_debian_package):
    first = fabricate.make_mnist_family(tmp_path / "data", train_count=8, test_count=4, seed=0)
    other = fabricate.make_mnist_family(tmp_path / "other", train_count=8, test_count=4, seed=1)
    monkeypatch.chdir(tmp_path)
    flags = [*TINY, "-channels", "2", "-epochs", "2", "-stop-after", "1"]
    assert _exit(["-data-dir", "data", "-out-dir", "run", *flags], MNIST) == 0
    last = tmp_path / "run" / "checkpoint_last.pth"
    state = torch.load(last, weights_only=True)
    assert state["args"]["data_dir"] == str(first) == state["data"]["data_dir"]
    before = {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir() if p.is_file()}
    capsys.readouterr()
    # From another working folder the stored absolute path finds the same data.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    err = _refused(capsys, MNIST, other, tmp_path / "run", "-resume", str(last))
    assert "differ from the data the checkpoint was trained on" in err and str(other) in err
    assert {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir() if p.is_file()} == before
    assert _exit(["-resume", str(last), "-device", "cpu", "-j", "0", "-no-progress"], MNIST) == 0


def test_fashion_mnist_one_epoch(tmp_path, no_debian_package):
    root = fabricate.make_mnist_family(tmp_path / "data", "FashionMNIST")
    out = tmp_path / "out"
    code = _exit(["-data-dir", str(root), "-out-dir", str(out), *TINY, "-channels", "4",
                  "-lr", "0.025"], MNIST)
    assert code == 0
    history = json.loads((out / "history.json").read_text())
    assert history[0]["epoch"] == 0 and 0.0 <= history[0]["test_acc"] <= 1.0


@pytest.mark.parametrize("name", MNIST)
def test_missing_mnist_family_names_how_to_get_it(tmp_path, capsys, no_debian_package, name):
    err = _refused(capsys, MNIST, tmp_path / "data", tmp_path / "out", "-dataset", name)
    assert "-download" in err and str(tmp_path / "data") in err
    assert ("apt-get install dataset-fashion-mnist" in err) == (name == "fashion_mnist")
    assert not (tmp_path / "out").exists()


def test_truncated_idx_file_is_named(tmp_path, capsys, no_debian_package):
    root = fabricate.make_mnist_family(tmp_path / "data", gzipped=False)
    fabricate.truncate(root / "train-images-idx3-ubyte", 0.7)
    err = _refused(capsys, MNIST, root, tmp_path / "out")
    assert str(root / "train-images-idx3-ubyte") in err and "truncated" in err


# ---- CIFAR content -------------------------------------------------------------------------------
@pytest.mark.parametrize("entries, message", [
    ({"labels": [0, 1, 10, 3]}, "the label 10 at sample 2, outside the 10 classes 0..9 of cifar10"),
    ({"labels": [0, -1, 2, 3]}, "the label -1 at sample 1, outside the 10 classes"),
    ({"labels": ["cat", "dog", "cat", "dog"]}, "the label 'cat' (str) at sample 0; labels must be "
                                               "class indices 0..9"),
    ({"labels": [0.0, 1.0, 2.0, 3.0]}, "the label 0.0 (float) at sample 0"),
    ({"data": np.random.default_rng(0).random((4, 3072))}, "hold float64 pixels; the python version "
                                                           "of cifar10 stores every pixel as one byte"),
    ({"data": np.zeros((4, 100), dtype=np.uint8)}, "holds unreadable files (ValueError"),
])
def test_damaged_cifar_content_is_refused(tmp_path, capsys, entries, message):
    root = fabricate.make_cifar10(tmp_path / "cifar")
    fabricate.rewrite_cifar10_batch(root, **entries)
    err = _refused(capsys, CIFAR, root, tmp_path / "out", "-channels", "2")
    assert message in err and str(root / "cifar-10-batches-py") in err


def test_truncated_cifar_pickle_is_refused(tmp_path, capsys):
    root = fabricate.make_cifar10(tmp_path / "cifar")
    fabricate.truncate(root / "cifar-10-batches-py" / "test_batch", 0.5)
    err = _refused(capsys, CIFAR, root, tmp_path / "out")
    assert "unreadable files" in err and "-download" in err


# ---- DVS events and SpikingJelly's conversion marker ----------------------------------------------
def _frames(root, steps=2):
    return root / f"frames_number_{steps}_split_by_number"


def _marker(root, steps=2):
    return root / f"frames_number_{steps}_split_by_number.building"


def test_truncated_events_named_and_no_marker_left(tmp_path, capsys):
    root = fabricate.make_dvs128_gesture(tmp_path / "gesture")
    damaged = sorted((root / "events_np" / "train" / "3").glob("*.npz"))[0]
    good = damaged.read_bytes()
    fabricate.truncate(damaged, 0.5)
    err = _refused(capsys, DVS, root, tmp_path / "out")
    assert str(damaged) in err and "truncated" in err and "replace" in err
    assert len(err.strip().splitlines()) == 4, err  # the one bad file, expected, to fix it
    # The failed conversion cleaned up after itself: the next run converts afresh.
    assert not _marker(root).exists() and not _frames(root).exists()
    damaged.write_bytes(good)
    train, test, _ = build_datasets(_args(DVS, root))
    assert len(train) == len(test) == 11 and not _marker(root).exists()


@pytest.mark.parametrize("arrays, problem", [
    (dict(t=np.arange(5), x=np.zeros(5), y=np.zeros(5)), "lacks the array(s) p"),
    (dict(t=np.arange(5), x=np.zeros(5), y=np.zeros(5), p=np.zeros(4)), "must be 1-D of one length"),
    (dict(t=np.arange(5), x=np.full(5, 300), y=np.zeros(5), p=np.zeros(5)), "x values in 300..300, "
                                                                            "outside 0..127"),
    (dict(t=np.arange(5), x=np.zeros(5), y=np.zeros(5), p=np.full(5, 3)), "p values in 3..3, "
                                                                         "outside 0..1"),
    (dict(arr_0=np.zeros(3)), "lacks the array(s) t, x, y, p (it holds arr_0)"),
])
def test_malformed_events_are_named(tmp_path, capsys, arrays, problem):
    root = fabricate.make_cifar10_dvs(tmp_path / "c10dvs", per_class=2)
    damaged = sorted((root / "events_np" / "cat").glob("*.npz"))[0]
    np.savez(damaged, **arrays)
    assert problem in check_event_file(damaged)
    err = _refused(capsys, DVS, root, tmp_path / "out", "-dataset", "cifar10_dvs")
    assert str(damaged) in err and problem in err
    assert not _marker(root).exists() and not _frames(root).exists()
    assert not (tmp_path / "out").exists()


def test_sound_events_pass_the_check(tmp_path):
    root = fabricate.make_dvs128_gesture(tmp_path / "gesture")
    assert all(check_event_file(path) is None for path in (root / "events_np").rglob("*.npz"))


def test_stale_marker_is_cleared_and_the_conversion_reruns(tmp_path, capsys):
    root = fabricate.make_dvs128_gesture(tmp_path / "gesture")
    frames, marker = _frames(root), _marker(root)
    (frames / "train" / "0").mkdir(parents=True)
    (frames / "train" / "0" / "half_written.npz").write_bytes(b"PK\x03\x04")
    marker.touch()
    an_hour_ago = time.time() - 3600
    for path in (frames / "train" / "0" / "half_written.npz", frames / "train" / "0",
                 frames / "train", frames, marker):
        os.utime(path, (an_hour_ago, an_hour_ago))
    train, test, _ = build_datasets(_args(DVS, root))
    out = capsys.readouterr().out
    assert "removed" in out and str(frames) in out and "converting again" in out
    assert not marker.exists() and not (frames / "train" / "0" / "half_written.npz").exists()
    assert len(train) == len(test) == 11


def test_recent_marker_may_be_live_and_is_left_alone(tmp_path, capsys):
    root = fabricate.make_dvs128_gesture(tmp_path / "gesture")
    frames, marker = _frames(root), _marker(root)
    frames.mkdir()
    marker.touch()
    err = _refused(capsys, DVS, root, tmp_path / "out")
    assert "wait for the other process" in err and str(marker) in err
    assert marker.exists() and frames.exists()


def test_unfinished_events_conversion_is_explained(tmp_path, capsys):
    root = fabricate.make_dvs128_gesture(tmp_path / "gesture")
    (root / "events_np.building").touch()
    err = _refused(capsys, DVS, root, tmp_path / "out")
    assert "did not finish" in err and "delete" in err


def test_data_missing_error_is_the_one_kind(tmp_path, no_debian_package):
    with pytest.raises(DataMissingError):
        build_datasets(_args(MNIST, tmp_path))


# ---- CIFAR pickles are data, not code -------------------------------------------------------------
class _Payload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("target", ["batches.meta", "data_batch_3", "test_batch"])
def test_cifar_pickle_with_a_payload_is_refused_without_running_it(tmp_path, capsys, target):
    import pickle

    root = fabricate.make_cifar10(tmp_path / "cifar")
    marker = tmp_path / "pwned"
    path = root / "cifar-10-batches-py" / target
    with open(path, "rb") as file:
        entry = pickle.load(file, encoding="latin1")
    entry["extra"] = _Payload(marker)
    path.write_bytes(pickle.dumps(entry, protocol=2))
    err = _refused(capsys, CIFAR, root, tmp_path / "out", "-channels", "2")
    assert not marker.exists()
    assert f"{path}: it asks for the Python object " in err and "open" in err
    assert not (tmp_path / "out").exists()


def test_restricted_reader_reads_what_torchvision_reads(tmp_path):
    from saf_examples.data import SafeCIFAR10, read_cifar_pickle

    root = fabricate.make_cifar10(tmp_path / "cifar", per_batch=3, test_count=2)
    ours = SafeCIFAR10(str(root), train=True)
    import pickle

    batches = []
    for index in range(1, 6):
        with open(root / "cifar-10-batches-py" / f"data_batch_{index}", "rb") as file:
            batches.append(pickle.load(file, encoding="latin1"))  # trusted: fabricated above
    data = np.vstack([b["data"] for b in batches]).reshape(-1, 3, 32, 32).transpose((0, 2, 3, 1))
    assert np.array_equal(ours.data, data)
    assert ours.targets == [label for b in batches for label in b["labels"]]
    assert ours.classes == fabricate.CIFAR10_CLASSES and len(ours[0]) == 2
    assert read_cifar_pickle(root / "cifar-10-batches-py" / "batches.meta")["num_vis"] == 3072


@pytest.mark.parametrize("key", ["x", "y"])
def test_dvs_events_with_fractional_coordinates_are_refused(tmp_path, capsys, key):
    root = fabricate.make_cifar10_dvs(tmp_path / "c10dvs", per_class=2)
    damaged = sorted((root / "events_np" / "dog").glob("*.npz"))[0]
    arrays = dict(np.load(damaged))
    arrays[key] = arrays[key].astype(np.float64) + 0.5
    np.savez(damaged, **arrays)
    err = _refused(capsys, DVS, root, tmp_path / "out", "-dataset", "cifar10_dvs")
    assert str(damaged) in err and f"has the {key} value" in err and "whole numbers" in err
    assert not _frames(root).exists() and not (tmp_path / "out").exists()
