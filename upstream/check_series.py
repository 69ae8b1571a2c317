#!/usr/bin/env python
"""Check the SAF series against a scratch copy of the installed SpikingJelly.

    python upstream/check_series.py                 # the full check
    python upstream/check_series.py --quick         # without the Triton-interpreter test
    python upstream/check_series.py --dev-head DIR  # also try the series on a SpikingJelly checkout

Steps, each of which fails the check:

1. copy the installed ``spikingjelly`` package twice (``original/`` and ``patched/``) and apply every
   patch of ``upstream/saf-series/`` in order to ``patched/`` with ``git apply`` (``--check`` first);
2. run the tests the series adds (``test/activation_based/test_saf_*.py``) against ``patched/``:
   they must pass; and against ``original/``: every one of them must fail (they test new behaviour);
3. run ``upstream/contract/`` (SpikingJelly behaviour the series must not change: neuron base
   contract, ``reset_net``, ``set_step_mode``, surrogates, OTTT training) against both trees;
4. compare every public name of the modules the series touches between the two trees: none may
   disappear or change what it is;
5. with ``--spikingjelly-tests DIR`` (SpikingJelly's own ``test/activation_based``, e.g. from a
   checkout), run the files named in ``OWN_TESTS`` that pass on ``original/`` against ``patched/``.

``--dev-head DIR`` applies the series to a SpikingJelly source checkout or bare clone (never
modified: it is copied or exported) and reports, per patch, whether it applies; it does not fail
the check.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
SERIES = HERE / "saf-series"
CONTRACT = HERE / "contract"
TOUCHED_MODULES = (
    "spikingjelly.activation_based.surrogate",
    "spikingjelly.activation_based.functional",
    "spikingjelly.activation_based.functional.neuron",
    "spikingjelly.activation_based.learning.online_learning",
    "spikingjelly.activation_based.neuron",
    "spikingjelly.activation_based.layer",
)
#: SpikingJelly's own tests worth running on the patched tree, when a checkout provides them.
OWN_TESTS = ("test_online_learning.py", "test_neuron_variants.py", "test_functional_neuron.py",
             "test_memory.py")

class CheckFailed(RuntimeError):
    pass


def spikingjelly_package() -> Path:
    import spikingjelly

    return Path(spikingjelly.__file__).resolve().parent


def copy_package(destination: Path) -> None:
    shutil.copytree(spikingjelly_package(), destination / "spikingjelly",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))


def apply_series(tree: Path, patches: list[Path]) -> list[tuple[str, bool, str]]:
    results = []
    for patch in patches:
        check = subprocess.run(["git", "apply", "--check", str(patch)], cwd=tree, capture_output=True,
                               text=True)
        if check.returncode == 0:
            subprocess.run(["git", "apply", str(patch)], cwd=tree, check=True, capture_output=True)
        results.append((patch.name, check.returncode == 0, check.stderr.strip()))
    return results


def pytest(files: list[Path], pythonpath: Path, workdir: Path, extra: tuple[str, ...] = ()) -> tuple[int, dict, str]:
    env = dict(os.environ, PYTHONPATH=str(pythonpath), PYTHONDONTWRITEBYTECODE="1")
    env.pop("TRITON_INTERPRET", None)
    command = [sys.executable, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider",
               "--import-mode=importlib", *extra, *map(str, files)]
    result = subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True, timeout=900)
    outcomes = {}
    for line in result.stdout.splitlines():
        match = re.match(r"^(PASSED|FAILED|ERROR|SKIPPED)\s+(\S+)", line)
        if match:
            outcomes[match.group(2)] = match.group(1)
    return result.returncode, outcomes, result.stdout[-4000:] + result.stderr[-2000:]


def check(quick: bool = False, spikingjelly_tests: Path | None = None, log=print) -> None:
    patches = sorted(SERIES.glob("*.patch"))
    if not patches:
        raise CheckFailed(f"no patches in {SERIES}; run python upstream/generate.py")
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        original, patched, workdir = scratch / "original", scratch / "patched", scratch / "run"
        for folder in (original, patched, workdir):
            folder.mkdir()
        copy_package(original)
        copy_package(patched)
        for name, applied, message in apply_series(patched, patches):
            if not applied:
                raise CheckFailed(f"{name} does not apply to the installed SpikingJelly:\n{message}")
            log(f"applies: {name}")

        tests = sorted((patched / "test" / "activation_based").glob("test_saf_*.py"))
        if not tests:
            raise CheckFailed("the series adds no test/activation_based/test_saf_*.py")
        shutil.copytree(CONTRACT, scratch / "contract", ignore=shutil.ignore_patterns("__pycache__"))
        contract = sorted((scratch / "contract").glob("test_*.py"))
        extra = ("--rootdir", str(scratch)) + (("-k", "not triton") if quick else ())
        names = {}
        # One run per tree: the series' tests, the contract checks and the public names together.
        for label, tree in (("patched", patched), ("unpatched", original)):
            names_file = scratch / f"names-{label}.json"
            os.environ["SJ_CHECK_NAMES_OUT"] = str(names_file)
            os.environ["SJ_CHECK_MODULES"] = " ".join(TOUCHED_MODULES)
            try:
                code, outcomes, output = pytest(tests + contract, tree, workdir, extra)
            finally:
                os.environ.pop("SJ_CHECK_NAMES_OUT")
                os.environ.pop("SJ_CHECK_MODULES")
            ours = {t: o for t, o in outcomes.items() if "/test_saf_" in t}
            host = {t: o for t, o in outcomes.items() if t not in ours}
            if not host or any(o != "PASSED" for o in host.values()):
                raise CheckFailed(f"SpikingJelly's contract checks fail on the {label} tree:\n{output}")
            if label == "patched":
                if not ours or any(o not in ("PASSED", "SKIPPED") for o in ours.values()):
                    raise CheckFailed(f"the series' tests fail on the patched tree:\n{output}")
                passed = sum(o == "PASSED" for o in ours.values())
                log(f"patched: {passed} passed, {len(ours) - passed} skipped; contract: {len(host)} passed")
            else:
                passing = sorted(t for t, o in ours.items() if o == "PASSED")
                if passing or not ours:
                    raise CheckFailed(f"these tests pass without the series, so they do not test it: {passing}")
                log(f"unpatched: the series' tests fail ({len(ours)} of {len(ours)}); "
                    f"contract: {len(host)} passed")
            names[label] = json.loads(names_file.read_text())

        before, after = names["unpatched"], names["patched"]
        for module, module_names in before.items():
            changed = {k: (v, after[module].get(k)) for k, v in module_names.items()
                       if after[module].get(k) != v}
            if changed:
                raise CheckFailed(f"{module}: the series removes or rebinds {changed}")
        added = {m: sorted(set(after[m]) - set(before[m])) for m in before}
        log("public names kept; added: " + "; ".join(f"{m.rsplit('.', 1)[-1]}: {', '.join(v)}"
                                                       for m, v in added.items() if v))

        if spikingjelly_tests is not None:
            own = [spikingjelly_tests / name for name in OWN_TESTS if (spikingjelly_tests / name).is_file()]
            for test in own:
                code, _, _ = pytest([test], original, workdir)
                if code:
                    log(f"skipped {test.name}: it does not pass on the installed SpikingJelly either")
                    continue
                code, outcomes, output = pytest([test], patched, workdir)
                if code:
                    raise CheckFailed(f"SpikingJelly's {test.name} fails on the patched tree:\n{output}")
                log(f"SpikingJelly's {test.name}: {len(outcomes)} passed on the patched tree")


def try_dev_head(checkout: Path, log=print) -> list[tuple[str, bool, str]]:
    patches = sorted(SERIES.glob("*.patch"))
    with tempfile.TemporaryDirectory() as scratch:
        tree = Path(scratch) / "head"
        bare = subprocess.run(["git", "-C", str(checkout), "rev-parse", "--is-bare-repository"],
                              capture_output=True, text=True).stdout.strip() == "true"
        if bare:  # a mirror without a work tree: export its HEAD
            tree.mkdir()
            archive = subprocess.run(["git", "-C", str(checkout), "archive", "HEAD"], capture_output=True,
                                     check=True).stdout
            subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
        else:
            shutil.copytree(checkout, tree, ignore=shutil.ignore_patterns(".git", "__pycache__"))
        results = apply_series(tree, patches)
    for name, applied, message in results:
        log(f"dev head: {name}: {'applies' if applied else 'does not apply'}"
            + ("" if applied else f"\n    " + message.replace("\n", "\n    ")))
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="skip the Triton-interpreter test")
    parser.add_argument("--spikingjelly-tests", type=Path,
                        help="SpikingJelly's test/activation_based folder (from a checkout)")
    parser.add_argument("--dev-head", type=Path, help="a SpikingJelly source checkout to try the series on")
    args = parser.parse_args(argv)
    for option in ("spikingjelly_tests", "dev_head"):
        folder = getattr(args, option)
        if folder is not None and not folder.is_dir():
            print(f"check_series.py: --{option.replace('_', '-')} {folder} is not a folder", file=sys.stderr)
            return 2
    try:
        check(quick=args.quick, spikingjelly_tests=args.spikingjelly_tests)
    except CheckFailed as error:
        print(f"check_series.py: {error}", file=sys.stderr)
        return 1
    if args.dev_head is not None:
        try_dev_head(args.dev_head)
    print("ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
