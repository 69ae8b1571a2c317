"""The SAF patch series for SpikingJelly (upstream/saf-series) is current, applies and passes.

* Regenerating the series from the package's modules must reproduce the committed patches byte for
  byte: a change to the package that is not regenerated (``python upstream/generate.py``) fails here.
* ``upstream/check_series.py --quick`` applies the series to a copy of the installed SpikingJelly,
  runs the tests it adds (they must pass there and fail on the unpatched copy), SpikingJelly's
  contract checks on both copies, and compares the touched modules' public names. With
  ``SPIKINGJELLY_TESTS=<checkout>/test/activation_based`` it also runs a few of SpikingJelly's own
  tests on the patched copy.
"""

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
UPSTREAM = ROOT / "upstream"

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="the series is made and applied with git")


def _load(name):
    spec = importlib.util.spec_from_file_location(f"upstream_{name}", UPSTREAM / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_series_is_generated_from_the_current_package(tmp_path):
    generate = _load("generate")
    base = (UPSTREAM / "saf-series" / "BASE").read_text().split()
    if base[1] != generate.spikingjelly_version():
        pytest.skip(f"the series is made against spikingjelly {base[1]}, and {generate.spikingjelly_version()} "
                    "is installed: its context lines would differ")
    fresh = generate.generate(tmp_path / "series")
    committed = sorted((UPSTREAM / "saf-series").glob("*.patch"))
    assert [p.name for p in fresh] == [p.name for p in committed], (
        "upstream/saf-series is stale: run python upstream/generate.py")
    for new, old in zip(fresh, committed):
        assert new.read_bytes() == old.read_bytes(), (
            f"{old.name} is stale: the package changed since the series was generated; "
            "run python upstream/generate.py and commit upstream/saf-series")


def test_generator_refuses_what_it_cannot_place(tmp_path, monkeypatch):
    generate = _load("generate")
    monkeypatch.setattr(generate, "SERIES", generate.SERIES[:-1])  # no patch takes docs/
    with pytest.raises(generate.GenerateError, match="docs/"):
        generate.generate(tmp_path / "series")
    assert generate.main(["--out", str(tmp_path / "out")]) == 2


def test_series_applies_to_spikingjelly_and_its_tests_pass():
    command = [sys.executable, str(UPSTREAM / "check_series.py"), "--quick"]
    # SpikingJelly's own tests are not in the wheel; point SPIKINGJELLY_TESTS at a checkout's
    # test/activation_based to run a few of them on the patched tree too (slower).
    own_tests = os.environ.get("SPIKINGJELLY_TESTS")
    if own_tests:
        command += ["--spikingjelly-tests", own_tests]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    assert "patched: " in result.stdout and "unpatched: the series' tests fail" in result.stdout
    applied = [line for line in result.stdout.splitlines() if line.startswith("applies: ")]
    assert len(applied) == len(list((UPSTREAM / "saf-series").glob("*.patch"))) >= 7
