"""The benchmarks' command lines: a bad input ends in one message naming the flag and exit status 2,
before anything is measured, and no committed or given file is changed or lost."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import pytest

from benchmarks import __main__ as suite
from benchmarks import (bench_fashion_mnist, bench_first_minibatches, bench_neuron_kernel, bench_ops,
                        bench_sequential, bench_time_memory, common, gpu_check, tables)
from fabricate import make_mnist_family

REPO = Path(__file__).resolve().parents[2]
#: A folder that does not exist (unlike a fixed name such as /nonexistent, which any process may
#: have created).
MISSING = str(Path(tempfile.gettempdir()) / f"saf-missing-{uuid.uuid4().hex}")
COMMITTED = (REPO / "README.md", REPO / "docs" / "benchmarks.md", REPO / "docs" / "examples.md",
             common.RESULTS_DIR)


def digest(*paths: Path) -> dict:
    """Every file under ``paths`` (a file or a folder) by its SHA-256; absent paths as None."""
    found = {}
    for path in paths:
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for file in files:
            found[str(file)] = hashlib.sha256(file.read_bytes()).hexdigest() if file.exists() else None
    return found


@pytest.fixture(autouse=True)
def committed_files_unchanged():
    before = digest(*COMMITTED)
    yield
    assert digest(*COMMITTED) == before, "a command line changed the committed README, docs or results"


@pytest.fixture
def pages(tmp_path):
    """A README and a docs page with their generated regions, as a run is given them."""
    readme, docs = tmp_path / "README.md", tmp_path / "benchmarks.md"
    readme.write_text(f"# t\n{common.TABLE_START}\nold\n{common.TABLE_END}\n")
    docs.write_text(f"a\n{tables.DOCS_START}\nold\n{tables.DOCS_END}\nb\n")
    return readme, docs


@pytest.fixture
def results_copy(tmp_path):
    """A copy of the committed results (JSON and RESULTS.md only) to break."""
    folder = tmp_path / "results"
    folder.mkdir()
    for path in list(common.RESULTS_DIR.glob("*.json")) + [common.RESULTS_DIR / "RESULTS.md"]:
        shutil.copy(path, folder / path.name)
    return folder


def refused(main, argv, capsys, *named: str) -> str:
    """Run ``main(argv)``: exit status 2, one error line naming each of ``named``, no traceback."""
    with pytest.raises(SystemExit) as info:
        main(argv)
    err = capsys.readouterr().err
    assert info.value.code == 2, err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1, err
    for text in named:
        assert text in errors[0], (text, err)
    return errors[0]


def read_only_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    return folder


# ----------------------------------------------------------------------------------------------
# python -m benchmarks


@pytest.mark.parametrize("which", ["readme", "docs"])
@pytest.mark.parametrize("problem", ["missing", "no markers", "a folder", "end before start"])
def test_pages_are_checked_before_anything_is_measured(tmp_path, pages, capsys, monkeypatch, which,
                                                       problem):
    monkeypatch.setattr(bench_ops, "run", lambda *a, **k: pytest.fail("measured before the checks"))
    readme, docs = pages
    bad = tmp_path / "bad.md"
    if problem == "no markers":
        bad.write_text("no markers\n")
    elif problem == "a folder":
        bad.mkdir()
    elif problem == "end before start":
        bad.write_text(f"{common.TABLE_END}\n{tables.DOCS_END}\n{common.TABLE_START}\n{tables.DOCS_START}\n")
    readme, docs = (bad, docs) if which == "readme" else (readme, bad)
    results = tmp_path / "results"
    before = digest(*pages, bad)
    refused(suite.main, ["--only", "ops", "--results-dir", str(results), "--readme", str(readme),
                         "--docs", str(docs)], capsys, f"--{which}", str(bad))
    assert digest(*pages, bad) == before
    assert not results.exists()


def test_a_page_that_cannot_be_written_is_refused(tmp_path, pages, capsys, monkeypatch):
    readme, docs = pages
    monkeypatch.setattr(common.os, "access", lambda path, mode: Path(path) != readme)
    refused(suite.main, ["--only", "tables", "--results-dir", str(tmp_path / "r"), "--readme", str(readme),
                         "--docs", str(docs)], capsys, "--readme", "not writable")
    assert "old" in readme.read_text()


@pytest.mark.parametrize("where", ["/proc/nope", "a file", "below a file", "unwritable"])
def test_results_folder_is_checked_before_anything_is_measured(tmp_path, pages, capsys, monkeypatch, where):
    monkeypatch.setattr(bench_ops, "run", lambda *a, **k: pytest.fail("measured before the checks"))
    readme, docs = pages
    afile = tmp_path / "a-file"
    afile.write_text("keep me\n")
    folder = {"/proc/nope": Path("/proc/nope"), "a file": afile, "below a file": afile / "results",
              "unwritable": tmp_path / "unwritable" / "results"}[where]
    if where == "unwritable":
        (tmp_path / "unwritable").mkdir()

        mkstemp = common.tempfile.mkstemp

        def refuse_there(*args, dir=None, **kwargs):
            if Path(dir) == tmp_path / "unwritable":
                raise OSError(errno.EACCES, "Permission denied")
            return mkstemp(*args, dir=dir, **kwargs)

        monkeypatch.setattr(common.tempfile, "mkstemp", refuse_there)
    refused(suite.main, ["--only", "ops", "--results-dir", str(folder), "--readme", str(readme),
                         "--docs", str(docs)], capsys, "--results-dir", str(folder))
    assert afile.read_text() == "keep me\n" and "old" in readme.read_text()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_results_folder_is_refused(tmp_path, pages, capsys):
    folder = read_only_folder(tmp_path)
    refused(suite.main, ["--only", "tables", "--results-dir", str(folder), "--readme", str(pages[0]),
                         "--docs", str(pages[1])], capsys, "--results-dir")


@pytest.mark.parametrize("device", ["bogus", "meta", "cuda:7", "", "cuda:-1", "cpu:x"])
def test_device_must_be_one_this_machine_has(capsys, monkeypatch, device):
    monkeypatch.setattr(common.torch.cuda, "is_available", lambda: False)
    message = refused(suite.main, ["--device", device, "--only", "tables"], capsys, "--device", "accepted: cpu")
    assert repr(device) in message


def test_device_lists_the_cuda_devices_there_are(capsys, monkeypatch):
    monkeypatch.setattr(common.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(common.torch.cuda, "device_count", lambda: 2)
    assert common.device_name("cuda:1") == "cuda:1" and common.device_name("cuda") == "cuda"
    assert common.device_name("cpu") == "cpu"
    refused(suite.main, ["--device", "cuda:2", "--only", "tables"], capsys, "--device",
            "accepted: cpu, cuda, cuda:0 .. cuda:1")


@pytest.mark.parametrize("only", ["", ",", " , ", "bogus", "ops,bogus"])
def test_an_empty_or_unknown_selection_is_refused(tmp_path, pages, capsys, only):
    results = tmp_path / "results"
    before = digest(*pages)
    refused(suite.main, ["--only", only, "--results-dir", str(results), "--readme", str(pages[0]),
                         "--docs", str(pages[1])], capsys, "--only", "ops,time,accuracy,reviewers,tables")
    assert digest(*pages) == before and not results.exists()


def test_tables_rebuilt_from_the_committed_results_are_the_committed_ones(tmp_path, results_copy):
    readme, docs = tmp_path / "README.md", tmp_path / "benchmarks.md"
    shutil.copy(REPO / "README.md", readme)
    shutil.copy(REPO / "docs" / "benchmarks.md", docs)
    assert suite.main(["--only", "tables", "--results-dir", str(results_copy), "--readme", str(readme),
                       "--docs", str(docs)]) == 0
    assert readme.read_text() == (REPO / "README.md").read_text()
    assert docs.read_text() == (REPO / "docs" / "benchmarks.md").read_text()
    assert (results_copy / "RESULTS.md").read_text() == (common.RESULTS_DIR / "RESULTS.md").read_text()


#: The entry each file's tables are built from.
MAIN_ENTRY = {"ops": "models", "time_memory": "models", "time_memory_account": "models",
              "accuracy": "methods"}


def _without_main_entry(text: str, name: str) -> str:
    return json.dumps({k: v for k, v in json.loads(text).items() if k != MAIN_ENTRY[name]})


def _entries_of_another_type(text: str, name: str) -> str:
    payload = json.loads(text)
    return json.dumps({**payload, MAIN_ENTRY[name]: {key: 3 for key in payload[MAIN_ENTRY[name]]}})


BROKEN = {
    "cut in half": lambda text, name: text[:len(text) // 2],
    "empty": lambda text, name: "",
    "a list": lambda text, name: "[]",
    "a string": lambda text, name: '"results"',
    "an empty object": lambda text, name: "{}",
    "without its main entry": _without_main_entry,
    "entries of another type": _entries_of_another_type,
    "not UTF-8": lambda text, name: "\udcff",
}


@pytest.mark.parametrize("name", list(MAIN_ENTRY))
@pytest.mark.parametrize("broken", list(BROKEN))
def test_a_broken_results_file_is_named_with_its_command(results_copy, pages, capsys, name, broken):
    path = results_copy / f"{name}.json"
    path.write_bytes(BROKEN[broken](path.read_text(), name).encode("utf-8", "surrogateescape"))
    before = digest(results_copy, *pages)
    message = refused(suite.main, ["--only", "tables", "--results-dir", str(results_copy),
                                   "--readme", str(pages[0]), "--docs", str(pages[1])], capsys, str(path))
    assert f"`{common.writer_of(name)}`" in message
    assert digest(results_copy, *pages) == before
    with pytest.raises(common.ResultsFileError, match=f"{name}.json"):
        tables.results_markdown(results_copy)


def test_a_suite_may_replace_the_broken_file_it_writes(tmp_path, results_copy, pages, monkeypatch):
    (results_copy / "ops.json").write_text("{")
    written = {}

    def fake_ops(results_dir, quick, device):
        written["ops"] = common.write_json(results_dir, "ops", json.loads(
            (common.RESULTS_DIR / "ops.json").read_text()))
        return {"models": {}}

    monkeypatch.setattr(bench_ops, "run", fake_ops)
    assert suite.main(["--only", "ops", "--results-dir", str(results_copy), "--readme", str(pages[0]),
                       "--docs", str(pages[1])]) == 0
    assert written["ops"] == results_copy / "ops.json" and "| Claim |" in pages[0].read_text()


def test_quick_without_a_results_folder_leaves_every_committed_file_alone(capsys):
    assert suite.main(["--quick", "--only", "tables"]) == 0
    out = capsys.readouterr().out
    folder = Path(out.split("results go to ", 1)[1].split()[0])
    try:
        assert folder != common.RESULTS_DIR and (folder / "RESULTS.md").is_file()
        assert "README.md is left alone" in out and "benchmarks.md is left alone" in out
    finally:
        shutil.rmtree(folder)


def test_quick_regenerates_only_the_pages_it_is_given(tmp_path, pages):
    readme, docs = pages
    assert suite.main(["--quick", "--only", "tables", "--results-dir", str(tmp_path / "r"),
                       "--readme", str(readme), "--docs", ""]) == 0
    assert "| Claim |" in readme.read_text() and "old" in docs.read_text()


def test_another_results_folder_does_not_rewrite_the_committed_pages(tmp_path, capsys):
    assert suite.main(["--only", "tables", "--results-dir", str(tmp_path / "r")]) == 0
    assert "left alone" in capsys.readouterr().out


def test_suites_quick_runs_go_to_a_fresh_temporary_folder(monkeypatch):
    seen = []
    assert common.suite_main(lambda folder, quick: seen.append((folder, quick)), "", ["--quick"]) == 0
    (folder, quick), = seen
    try:
        assert quick and folder != common.RESULTS_DIR and folder.is_dir() and not any(folder.iterdir())
    finally:
        folder.rmdir()
    common.suite_main(lambda folder, quick: seen.append((folder, quick)), "", [])
    assert seen[-1] == (common.RESULTS_DIR, False)


@pytest.mark.slow
def test_the_command_line_prints_no_traceback():
    done = subprocess.run([sys.executable, "-m", "benchmarks", "--device", "bogus"], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("python -m benchmarks: error: argument --device")


# ----------------------------------------------------------------------------------------------
# every write replaces its file whole


def _no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def _leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.startswith(".")]


def test_a_failed_json_write_keeps_the_previous_file(tmp_path, monkeypatch):
    common.write_json(tmp_path, "ops", {"meta": {}, "old": 1})
    before = (tmp_path / "ops.json").read_bytes()
    monkeypatch.setattr(common.os, "fsync", _no_space)
    with pytest.raises(OSError, match="No space"):
        common.write_json(tmp_path, "ops", {"meta": {}, "new": 2})
    assert (tmp_path / "ops.json").read_bytes() == before and not _leftovers(tmp_path)


def test_a_failed_region_update_keeps_the_page(pages, monkeypatch):
    readme, _ = pages
    before = readme.read_bytes()
    monkeypatch.setattr(common.os, "replace", _no_space)
    with pytest.raises(OSError):
        common.update_readme_table("| new |", readme)
    assert readme.read_bytes() == before and not _leftovers(readme.parent)


def test_a_failed_plot_keeps_the_previous_plot(tmp_path, monkeypatch):
    import matplotlib.figure

    path = common.plot_lines(tmp_path / "p.png", {"a": ([1, 2], [1, 2])}, "x", "y", "t")
    before = path.read_bytes()

    def full_disk(self, file, **kwargs):
        file.write(b"\x89PNG half")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", full_disk)
    with pytest.raises(OSError):
        common.plot_lines(path, {"b": ([1, 2], [2, 1])}, "x", "y", "t")
    assert path.read_bytes() == before and not _leftovers(tmp_path)


def test_a_failed_results_md_write_keeps_the_previous_one(tmp_path, results_copy, pages, monkeypatch):
    before = digest(results_copy, *pages)
    monkeypatch.setattr(common.os, "fsync", _no_space)
    with pytest.raises(OSError):
        suite.main(["--only", "tables", "--results-dir", str(results_copy), "--readme", str(pages[0]),
                    "--docs", str(pages[1])])
    assert digest(results_copy, *pages) == before and not _leftovers(results_copy)


def test_a_replaced_file_keeps_its_permissions(tmp_path):
    path = tmp_path / "page.md"
    path.write_text("old")
    path.chmod(0o640)
    common.write_text(path, "new")
    assert path.read_text() == "new" and path.stat().st_mode & 0o777 == 0o640


# ----------------------------------------------------------------------------------------------
# the other command lines


@pytest.fixture
def fashion_data(tmp_path):
    return make_mnist_family(tmp_path / "fashion", train_count=16, test_count=8)


BIG = str(2**31)

FASHION_BAD = [
    (["--seeds", ""], "--seeds"), (["--seeds", ","], "--seeds"), (["--seeds", "0,0"], "--seeds"),
    (["--seeds", "-1"], "--seeds"), (["--seeds", str(2**32)], "--seeds"), (["--epochs", "0"], "--epochs"),
    (["--epochs", BIG], "--epochs"), (["--workers", "0"], "--workers"), (["--workers", BIG], "--workers"),
    (["-T", "0"], "-T"), (["--batch", "-3"], "--batch"), (["--channels", "x"], "--channels"),
    (["--evals", "0"], "--evals"), (["--threads", "-1"], "--threads"),
    (["--batches-per-epoch", "-1"], "--batches-per-epoch"), (["--train-subset", BIG], "--train-subset"),
    (["--tag", "../README"], "--tag"), (["--tag", "a/b"], "--tag"), (["--tag", ""], "--tag"),
    (["--tag", ".hidden"], "--tag"), (["--lr", "nan"], "--lr"), (["--lr", "0"], "--lr"),
    (["--timeout", "inf"], "--timeout"), (["--tau", "nan"], "--tau"), (["--tau", "1"], "--tau"),
    (["--momentum", "1"], "--momentum"), (["--memopt-level", "9"], "--memopt-level"),
    (["--device", "meta"], "--device"), (["--methods", ""], "--methods"),
    (["--methods", "saf-e,adam"], "--methods"),
]


@pytest.mark.parametrize("argv,flag", FASHION_BAD, ids=[" ".join(a) for a, _ in FASHION_BAD])
def test_fashion_mnist_refuses_bad_values(tmp_path, fashion_data, capsys, argv, flag):
    results = tmp_path / "results"
    refused(bench_fashion_mnist.main, ["--data-root", str(fashion_data), "--results-dir", str(results),
                                       "--no-readme"] + argv, capsys, flag)
    assert not results.exists()


def test_fashion_mnist_refuses_an_unusable_results_folder(tmp_path, fashion_data, capsys):
    refused(bench_fashion_mnist.main, ["--data-root", str(fashion_data), "--results-dir", "/proc/nope",
                                       "--no-readme"], capsys, "--results-dir")


def test_fashion_mnist_replot_names_a_missing_or_broken_file(tmp_path, capsys):
    path, argv = tmp_path / "fashion_mnist_x.json", ["--replot", "--tag", "fashion_mnist_x",
                                                     "--results-dir", str(tmp_path), "--no-readme"]
    refused(bench_fashion_mnist.main, argv, capsys, str(path), "does not exist")
    path.write_text('{"meta": {}, "runs": [{"seed": 0}]}')
    refused(bench_fashion_mnist.main, argv, capsys, str(path), "'method'",
            "bench_fashion_mnist --tag fashion_mnist_x")
    assert path.read_text() == '{"meta": {}, "runs": [{"seed": 0}]}'


def test_fashion_mnist_tables_come_from_the_committed_results_only(tmp_path, results_copy, capsys):
    """A Fashion-MNIST tag without --no-readme regenerates RESULTS.md of its own folder; the README
    and the docs page (checked by the autouse fixture) only from the committed results."""
    (results_copy / "RESULTS.md").unlink()
    assert bench_fashion_mnist.main(["--replot", "--tag", tables.FASHION_MNIST_CURRENT,
                                     "--results-dir", str(results_copy)]) == 0
    assert "left alone" in capsys.readouterr().out
    assert "Fashion-MNIST" in (results_copy / "RESULTS.md").read_text()


def test_fashion_mnist_checks_the_other_results_before_training(tmp_path, results_copy, fashion_data,
                                                               capsys, monkeypatch):
    monkeypatch.setattr(bench_fashion_mnist, "train_all", lambda args: pytest.fail("trained"))
    monkeypatch.setattr(common, "uses_committed_results", lambda given, quick=False: True)
    readme, docs = tmp_path / "README.md", tmp_path / "benchmarks.md"
    shutil.copy(REPO / "README.md", readme)
    docs.write_text("no region\n")
    monkeypatch.setattr(common, "README_PATH", readme)
    monkeypatch.setattr(common, "DOCS_PATH", docs)
    refused(bench_fashion_mnist.main, ["--data-root", str(fashion_data), "--results-dir", str(results_copy),
                                       "--tag", "fashion_mnist_x"], capsys, str(docs), "--no-readme")
    docs.write_text(f"{tables.FASHION_DOCS_START}\n{tables.FASHION_DOCS_END}\n")
    (results_copy / "ops.json").write_text("[]")
    refused(bench_fashion_mnist.main, ["--data-root", str(fashion_data), "--results-dir", str(results_copy),
                                       "--tag", "fashion_mnist_x"], capsys, "ops.json")
    assert readme.read_text() == (REPO / "README.md").read_text()


TIME_BAD = [
    (["--steps", "0"], "--steps"), (["--steps", ""], "--steps"), (["--steps", "1,,2"], "--steps"),
    (["--steps", "2,2"], "--steps"), (["--steps", BIG], "--steps"), (["--rounds", "0"], "--rounds"),
    (["--threads", "-1"], "--threads"), (["--tag", "a/b"], "--tag"),
    (["--variants", ""], "--variants"), (["--variants", "nope"], "--variants"),
    (["--variants", "bptt"], "--tag"), (["--archs", "nope"], "--archs"), (["--archs", ","], "--archs"),
    (["--profile", ""], "--profile"), (["--profile", "saf-e", "--archs", "vggws/full"], "--archs"),
    (["--memopt-level", "5"], "--memopt-level"), (["--memopt-level", "2"], "--memopt-level"),
    (["--device", "cuda:7"], "--device"), (["--results-dir", "/proc/nope"], "--results-dir"),
]


@pytest.mark.parametrize("argv,flag", TIME_BAD, ids=[" ".join(a) for a, _ in TIME_BAD])
def test_time_memory_refuses_bad_values(tmp_path, capsys, monkeypatch, argv, flag):
    for name in ("run", "run_memory", "profile"):
        monkeypatch.setattr(bench_time_memory, name, lambda *a, **k: pytest.fail("measured"))
    argv = (["--results-dir", str(tmp_path / "r")] if "--results-dir" not in argv else []) + argv
    refused(bench_time_memory.main, ["--device", "cpu"] + argv if "--device" not in argv else argv,
            capsys, flag)
    assert not (tmp_path / "r").exists()


SEQUENTIAL_BAD = [
    (["--pixels", "0"], "--pixels"), (["--pixels", "5"], "--pixels"), (["--seeds", "-1"], "--seeds"),
    (["--batch", "0"], "--batch"), (["--train-subset", "0"], "--train-subset"),
    (["--train-subset", "4", "--batch", "8"], "--train-subset"), (["--lr", "inf"], "--lr"),
    (["--epochs", BIG], "--epochs"), (["--timed", "0"], "--timed"), (["--hidden", "0"], "--hidden"),
    (["--name", "../x"], "--name"), (["--methods"], "--methods"), (["--root", MISSING], "--root"),
    (["--results-dir", "/proc/nope"], "--results-dir"),
]


@pytest.mark.parametrize("argv,flag", SEQUENTIAL_BAD, ids=[" ".join(a) for a, _ in SEQUENTIAL_BAD])
def test_sequential_refuses_bad_values(tmp_path, fashion_data, capsys, monkeypatch, argv, flag):
    monkeypatch.setattr(bench_sequential, "run_all", lambda *a, **k: pytest.fail("measured"))
    argv = (["--root", str(fashion_data)] if "--root" not in argv else []) + argv
    argv = (["--results-dir", str(tmp_path / "r")] if "--results-dir" not in argv else []) + argv
    refused(bench_sequential.main, argv, capsys, flag)


def test_sequential_replot_names_a_missing_or_broken_file(tmp_path, capsys):
    refused(bench_sequential.main, ["--replot", "--results-dir", str(tmp_path)], capsys,
            str(tmp_path / "sequential.json"), "does not exist")
    (tmp_path / "sequential.json").write_text('{"metadata": {}, "runs": []')
    refused(bench_sequential.main, ["--replot", "--results-dir", str(tmp_path)], capsys,
            str(tmp_path / "sequential.json"), "python -m benchmarks.bench_sequential")
    assert not (tmp_path / "sequential.png").exists()


FIRST_BAD = [
    (["--batches", "0"], "--batches"), (["--every", BIG], "--every"), (["--test-batches", "-1"], "--test-batches"),
    (["--data-dir", MISSING], "--data-dir"), (["--docs", MISSING + ".md"], "--docs"),
    (["--results-dir", "/proc/nope", "--docs", ""], "--results-dir"),
]


@pytest.mark.parametrize("argv,flag", FIRST_BAD, ids=[" ".join(a) for a, _ in FIRST_BAD])
def test_first_minibatches_refuses_bad_values(tmp_path, capsys, monkeypatch, argv, flag):
    monkeypatch.setattr(bench_first_minibatches, "run", lambda *a, **k: pytest.fail("measured"))
    argv = (["--results-dir", str(tmp_path / "r")] if "--results-dir" not in argv else []) + argv
    refused(bench_first_minibatches.main, argv, capsys, flag)


def test_first_minibatches_tables_only_names_a_missing_or_broken_file(tmp_path, capsys):
    page = tmp_path / "examples.md"
    page.write_text(f"{bench_first_minibatches.DOCS_START}\nold\n{bench_first_minibatches.DOCS_END}\n")
    path = tmp_path / f"{bench_first_minibatches.NAME}.json"
    argv = ["--tables-only", "--results-dir", str(tmp_path), "--docs", str(page)]
    refused(bench_first_minibatches.main, argv, capsys, str(path), "does not exist")
    for text in ("{", '{"metadata": {}}', '{"metadata": {}, "runs": {"a": 1}}'):
        path.write_text(text)
        refused(bench_first_minibatches.main, argv, capsys, str(path), "bench_first_minibatches")
    assert "old" in page.read_text()


def test_first_minibatches_docs_flag_can_name_no_page(tmp_path, monkeypatch):
    shutil.copy(common.RESULTS_DIR / f"{bench_first_minibatches.NAME}.json", tmp_path)
    assert bench_first_minibatches.main(["--tables-only", "--results-dir", str(tmp_path), "--docs", ""]) == 0


KERNEL_BAD = [
    (["--steps", "0"], "--steps"), (["--reps", "-1"], "--reps"), (["--warmup", BIG], "--warmup"),
    (["--dtypes", ""], "--dtypes"), (["--dtypes", "float8"], "--dtypes"), (["--backends", "nope"], "--backends"),
    (["--min-log2n", "25", "--max-log2n", "20"], "--min-log2n"), (["--max-log2n", "40"], "--max-log2n"),
    (["--results-dir", "/proc/nope"], "--results-dir"),
]


@pytest.mark.parametrize("argv,flag", KERNEL_BAD, ids=[" ".join(a) for a, _ in KERNEL_BAD])
def test_neuron_kernel_refuses_bad_values(capsys, argv, flag):
    refused(bench_neuron_kernel.main, argv, capsys, flag)


@pytest.mark.parametrize("module", ["bench_ops", "bench_accuracy", "bench_reviewers"])
def test_suites_refuse_an_unusable_results_folder(tmp_path, capsys, monkeypatch, module):
    import importlib

    bench = importlib.import_module(f"benchmarks.{module}")
    monkeypatch.setattr(bench, "run", lambda *a, **k: pytest.fail("measured"))
    afile = tmp_path / "a-file"
    afile.write_text("")
    refused(bench.main, ["--results-dir", str(afile)], capsys, "--results-dir", "not a folder")


GPU_BAD = [
    (["--dry-run", "--only", ""], "--only"), (["--dry-run", "--only", "tests,nope"], "--only"),
    (["--dry-run", "--budget", "0"], "--budget"), (["--dry-run", "--budget", "nan"], "--budget"),
    (["--dry-run", "--budget", "-5"], "--budget"), (["--dry-run", "--data-root", MISSING], "--data-root"),
    ([], "--dry-run"),
]


@pytest.mark.parametrize("argv,flag", GPU_BAD, ids=[" ".join(a) or "no CUDA" for a, _ in GPU_BAD])
def test_gpu_check_refuses_bad_values(capsys, monkeypatch, argv, flag):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(gpu_check, "run_check", lambda args: pytest.fail("ran"))
    refused(gpu_check.main, argv, capsys, flag)


def test_gpu_check_on_a_gpu_machine_checks_its_results_folder(capsys, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(gpu_check, "run_check", lambda args: pytest.fail("ran"))
    refused(gpu_check.main, ["--results-dir", "/proc/nope"], capsys, "--results-dir")
