"""The SAF patch series for SpikingJelly (upstream/saf-series) is current, applies and passes.

* Regenerating the series from the package's modules must reproduce the committed patches byte for
  byte: a change to the package that is not regenerated (``python upstream/generate.py``) fails here.
* ``upstream/check_series.py --quick`` applies the series to a copy of the installed SpikingJelly,
  runs the tests it adds (they must pass there and fail on the unpatched copy), SpikingJelly's
  contract checks on both copies, and compares the touched modules' public names. With
  ``SPIKINGJELLY_TESTS=<checkout>/test/activation_based`` it also runs a few of SpikingJelly's own
  tests on the patched copy.
* The series' tests take their helpers from the project's tests (``# generate.py: helpers from ...``
  lines in the templates), and the generator refuses a template that hand-copies one.
"""

import ast
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


@pytest.mark.slow
def test_generator_refuses_what_it_cannot_place(tmp_path, monkeypatch):
    generate = _load("generate")
    monkeypatch.setattr(generate, "SERIES", generate.SERIES[:-1])  # no patch takes docs/
    with pytest.raises(generate.GenerateError, match="docs/"):
        generate.generate(tmp_path / "series")
    assert generate.main(["--out", str(tmp_path / "out")]) == 2


THEOREMS = "test/activation_based/test_saf_theorems.py"


@pytest.mark.slow
def test_series_tests_carry_the_project_test_helpers_as_they_are(tmp_path):
    generate = _load("generate")
    generate.generate_tree(generate.spikingjelly_dir().parent, tmp_path)
    generated = (tmp_path / THEOREMS).read_text()
    defined = set(generate.top_level_definitions(ast.parse(generated)))
    directives = generate.HELPERS_DIRECTIVE.findall((UPSTREAM / "templates" / THEOREMS).read_text())
    assert any(path == "tests/nets.py" for path, _ in directives)
    for path, names in directives:
        source = (ROOT / path).read_text()
        tree = ast.parse(source)
        package_names = {name for name, (module, _, _) in generate.import_bindings(tree).items()
                         if module.split(".")[0] == "spikingjelly_saf"}
        definitions = generate.top_level_definitions(tree)
        for name in names.split():
            assert name in defined, f"{name} of {path} is not in the generated {THEOREMS}"
            node = definitions[name]
            if not {n.id for n in ast.walk(node) if isinstance(n, ast.Name)} & package_names:
                assert ast.get_source_segment(source, node) in generated, f"{name} of {path} was changed"
    # SAFNode, which saf_factory imports from the package, is SpikingJelly's neuron.SAFNode there.
    assert "lambda: neuron.SAFNode(tau=tau, decay_input=decay_input" in generated
    assert "spikingjelly_saf" not in generated and "generate.py:" not in generated


@pytest.mark.slow
def test_what_stays_in_the_plugin_is_dropped_and_examples_import_spikingjelly(tmp_path):
    generate = _load("generate")
    generate.generate_tree(generate.spikingjelly_dir().parent, tmp_path)
    files = {p.relative_to(tmp_path).as_posix(): p.read_text() for p in tmp_path.rglob("*.py")}
    backends = files["spikingjelly/_ops/saf/backends/__init__.py"]
    for excluded in generate.EXCLUDED:
        name = excluded.rsplit(".", 1)[1]
        assert f"spikingjelly/_ops/saf/backends/{name}.py" not in files
        assert not any(f"import {name}" in text or f".{name} import" in text for text in files.values()), name
    # the cpp backend's class, its registration and export, the CuPy registration
    assert "CppBackend" not in backends and '"cupy_backend"' not in backends
    assert "class AutomaticBackend" in backends and '"SJ_SAF_CUDA_IMPLEMENTATION"' in backends
    # 'auto' is registered once, by the package's code, and the dispatch template uses it
    assert backends.count("REGISTRY.register(AutomaticBackend(REGISTRY))") == 1
    dispatch = files["spikingjelly/_ops/saf/__init__.py"]
    assert "REGISTRY.register" not in dispatch and 'REGISTRY.get("auto").choose(' in dispatch
    examples = [line.strip() for text in files.values() for line in text.splitlines()
                if line.strip().startswith(">>> from") or line.strip().startswith(">>> import")]
    assert examples and not [line for line in examples if "spikingjelly_saf" in line]
    assert ">>> from spikingjelly.activation_based.neuron import SAFNode" in examples


def test_drop_excluded_follows_definitions_to_their_registrations():
    generate = _load("generate")
    module = "spikingjelly_saf.backends"
    source = (
        '__all__ = [\n    "Kept",\n    "Gone",\n    "Sub",\n]\n\n\n'
        "class Kept:\n    def load(self):\n        from . import triton_backend\n\n\n"
        "class Gone(Kept):\n    def load(self):\n        from . import cpp_backend\n\n\n"
        "class Sub(Gone):\n    pass\n\n\n"
        "def _only_for_cupy():\n    return 1\n\n\n"
        "REGISTRY.register(Kept())\nREGISTRY.register(Gone())\n"
        'REGISTRY.register(Fused("cupy", "cupy_backend", _only_for_cupy()))\n'
    )
    result = generate.drop_excluded(module, source)
    assert "class Kept" in result and "REGISTRY.register(Kept())" in result
    for gone in ("Gone", "Sub", "cupy", "_only_for_cupy"):
        assert gone not in result, gone
    assert '"Kept",' in result


def test_hand_copied_helpers_are_refused():
    generate = _load("generate")
    for template in ("test_saf_theorems.py", "test_saf_node.py"):
        generate.check_no_hand_copies(template, (UPSTREAM / "templates/test/activation_based" / template).read_text())
    template = (UPSTREAM / "templates" / THEOREMS).read_text()
    copies = {
        "randomise of tests/nets.py": "def _randomise(net, seed):\n    pass\n",
        "weight_sums of spikingjelly_saf.functional": "def _weight_sums(tau, steps):\n    return []\n",
        # a helper of a file that a directive names, copied inside a test
        "_mlp of tests/library/test_theorem3": "def test_x():\n    def mlp():\n        pass\n",
    }
    for what, copy in copies.items():
        with pytest.raises(generate.GenerateError, match=what):
            generate.check_no_hand_copies(THEOREMS, template + "\n\n" + copy)


def test_helpers_directive_brings_what_the_helpers_need():
    generate = _load("generate")
    directive = "# generate.py: helpers from tests/nets.py: {}\n"
    no_tree = lambda path: None  # noqa: E731 - a SpikingJelly tree without the series
    with pytest.raises(generate.GenerateError, match="conv_net of tests/nets.py uses Residual"):
        generate.expand_helpers("t.py", directive.format("conv_net"), no_tree)
    with pytest.raises(generate.GenerateError, match="no top-level definition conv_nett"):
        generate.expand_helpers("t.py", directive.format("conv_nett"), no_tree)
    with pytest.raises(generate.GenerateError, match="nn means 'import numpy as nn' there"):
        generate.expand_helpers("t.py", "import numpy as nn\n\n" + directive.format("Residual"), no_tree)
    # Missing imports are added; a package name is imported from where the series puts it ...
    text = generate.expand_helpers("t.py", "import math\n\n" + directive.format("lif_factory saf_factory"),
                                   no_tree)
    assert "from spikingjelly.activation_based import neuron\n" in text
    assert "from spikingjelly.activation_based.neuron.saf import SAFNode\n" in text
    assert "def lif_factory(" in text and "lambda: SAFNode(" in text
    # ... or, when a module the template imports exports it, named through that module.
    series_tree = {"spikingjelly/activation_based/neuron/__init__.py": "from .saf import *\n",
                   "spikingjelly/activation_based/neuron/saf.py": '__all__ = ["SAFNode"]\n'}
    text = generate.expand_helpers("t.py", "from spikingjelly.activation_based import neuron\n\n"
                                   + directive.format("saf_factory"), series_tree.get)
    assert "lambda: neuron.SAFNode(" in text and "import SAFNode" not in text


@pytest.mark.slow
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
