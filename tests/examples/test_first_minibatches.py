"""The Fashion-MNIST recipe's first-minibatch benchmark: it runs the real trainer, and the table of
docs/examples.md is the one generated from the committed JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import bench_first_minibatches as bench
from fabricate import make_mnist_family

REPO = Path(__file__).resolve().parents[2]


def _region(text: str) -> str:
    start = text.index(bench.DOCS_START) + len(bench.DOCS_START)
    return text[start:text.index(bench.DOCS_END)].strip()


def test_progress_lines_are_parsed_into_the_curve():
    stdout = ("spikingjelly_saf trainer: ...\n"
              "epoch 0/64 [10/100] loss 2.1390 acc 0.1500 | 812.4 img/s | ETA 2:03\n"
              "warning: something else\n"
              "epoch 0/64 [20/100] loss 1.9190 acc 0.2400 | 815.0 img/s | ETA 1:50\n"
              "epoch 0: train loss 1.9 acc 0.24 | test loss 1.5 acc 0.5 | 3.0 s\n")
    assert bench.parse_progress(stdout) == [(10, 2.139, 0.15), (20, 1.919, 0.24)]


def test_docs_table_is_generated_from_the_committed_json():
    payload = json.loads((REPO / "benchmarks" / "results" / f"{bench.NAME}.json").read_text())
    assert not payload["quick"] and set(payload["runs"]) == {label for label, _ in bench.CONFIGS}
    docs = (REPO / "docs" / "examples.md").read_text()
    assert _region(docs) == bench.docs_markdown(payload).strip()
    # What the page claims of the run: the recipe learns from the start, the zoo's threshold does not.
    # 2.1926 is the loss of a guess, 0.95 ln 10 + 0.05 / 10.
    recipe = [entry for label, entry in payload["runs"].items() if "threshold" not in label]
    assert all(entry["curve"][-1][1] < entry["curve"][0][1] < 2.1 for entry in recipe)
    assert all(entry["arguments"]["v_threshold"] == 0.5 for entry in recipe)
    zoo_threshold = payload["runs"]["saf-e, -v-threshold 1"]
    assert zoo_threshold["arguments"]["v_threshold"] == 1.0
    assert all(point[1] > 2.18 for point in zoo_threshold["curve"][:5])
    assert min(entry["test_acc"] for entry in recipe) > zoo_threshold["test_acc"]


@pytest.mark.slow
def test_quick_run_trains_through_the_trainer_and_regenerates_only_the_named_page(tmp_path):
    data = make_mnist_family(tmp_path / "data", train_count=16, test_count=8)
    docs = tmp_path / "examples.md"
    docs.write_text(f"before\n{bench.DOCS_START}\nold\n{bench.DOCS_END}\nafter\n")
    results = tmp_path / "results"
    payload = bench.run(results, quick=True, data_dir=data, batches=2, test_batches=1, every=1,
                        log=lambda *_: None, extra_flags=("-b", "4", "-channels", "4"))
    assert set(payload["runs"]) == {label for label, _ in bench.QUICK_CONFIGS}
    for entry in payload["runs"].values():
        assert [point[0] for point in entry["curve"]] == [1, 2]
        assert entry["train_batches"] == 2 and 0.0 <= entry["test_acc"] <= 1.0
    assert payload["runs"]["saf-e"]["arguments"]["v_threshold"] == 0.5
    assert payload["runs"]["saf-e, -v-threshold 1"]["arguments"]["v_threshold"] == 1.0
    assert (results / f"{bench.NAME}.json").is_file() and (results / f"{bench.NAME}.png").is_file()
    assert bench.main(["--tables-only", "--results-dir", str(results), "--docs", str(docs)]) == 0
    text = docs.read_text()
    assert text.startswith("before\n") and text.endswith("after\n")
    assert _region(text) == bench.docs_markdown(payload).strip()


def test_a_page_without_the_region_is_refused_before_anything_runs(tmp_path, capsys):
    page = tmp_path / "page.md"
    page.write_text("no markers\n")
    with pytest.raises(SystemExit) as exit_info:
        bench.main(["--docs", str(page), "--results-dir", str(tmp_path / "r")])
    assert exit_info.value.code == 2 and "--docs" in capsys.readouterr().err
    assert page.read_text() == "no markers\n" and not (tmp_path / "r").exists()
