#!/usr/bin/env python
r"""Generate the SAF patch series for SpikingJelly 2.0 from this package's modules.

    python upstream/generate.py                 # writes upstream/saf-series/*.patch
    python upstream/generate.py --out DIR       # writes the series elsewhere (the staleness check)

The code of the series is not kept twice. Each module of ``spikingjelly_saf`` that the upstream
classes need (found by following the package's own imports from :data:`ROOTS`) is read from this
tree and placed where SpikingJelly keeps that kind of code (:data:`MODULE_TARGETS`); imports are
rewritten for the new location (relative, in SpikingJelly's style), names that would clash with a
host module's are renamed, and what SpikingJelly 2.0 does not ship (the CuPy backend) is dropped.
Only glue that exists solely upstream (the ``functional`` entry points in SpikingJelly's calling
convention, the device dispatch, exports, tests, the tutorial page) comes from
``upstream/templates/``; the tests' helpers are not copied there but taken from the project's own
tests (:data:`HELPERS_DIRECTIVE`).

The patches are made with ``git format-patch`` against the installed SpikingJelly (the 2.0.0
wheel), with a fixed author and date, so that the output depends only on the sources.
"""

from __future__ import annotations

import argparse
import ast
import io
import os
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
import tokenize
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PACKAGE = "spikingjelly_saf"
PACKAGE_DIR = ROOT / PACKAGE
TEMPLATES = HERE / "templates"
DEFAULT_OUT = HERE / "saf-series"

#: Where the upstream code starts; every module they import from this package follows.
ROOTS = (
    f"{PACKAGE}.neuron",
    f"{PACKAGE}.layer",
    f"{PACKAGE}.surrogate",
    f"{PACKAGE}.training",
    f"{PACKAGE}.backends.triton_backend",
)

#: Modules that stay in the plugin. SpikingJelly 2.0.0 removed CuPy and its kernel-string machinery,
#: so neither the CuPy backend nor the CUDA source it compiles goes upstream (``cupy_backend``,
#: ``kernel_source``, and ``cuda_host``, the host side of those kernels that only ``cupy_backend``
#: and the plugin's CPU test of the CUDA source use); nor does the ``'cpp'`` backend, that same CUDA
#: source compiled for the CPU with the system's C++ compiler at first use (``cpp_backend``,
#: ``cpu_source``, ``cpu_build``): SpikingJelly builds no code at run time. Statements and definitions
#: that load them are dropped (:func:`drop_excluded`), with the registrations that name those
#: definitions; ``'auto'`` skips the priority names a registry lacks, so upstream it runs Triton on
#: CUDA and the torch reference elsewhere.
EXCLUDED = {
    f"{PACKAGE}.backends.cupy_backend",
    f"{PACKAGE}.backends.kernel_source",
    f"{PACKAGE}.backends.cuda_host",
    f"{PACKAGE}.backends.cpp_backend",
    f"{PACKAGE}.backends.cpu_source",
    f"{PACKAGE}.backends.cpu_build",
}

#: module -> (file in SpikingJelly's tree, mode). "new" creates the file; "append" adds the module's
#: code to an existing SpikingJelly module. Modules not listed go under ``spikingjelly/_ops/saf/``
#: with the package's own layout, so that their relative imports keep working.
MODULE_TARGETS = {
    f"{PACKAGE}.neuron": ("spikingjelly/activation_based/neuron/saf.py", "new"),
    f"{PACKAGE}.layer": ("spikingjelly/activation_based/layer/saf.py", "new"),
    f"{PACKAGE}.functional": ("spikingjelly/_ops/saf/reference.py", "new"),
    f"{PACKAGE}.surrogate": ("spikingjelly/activation_based/surrogate.py", "append"),
    f"{PACKAGE}.training": ("spikingjelly/activation_based/learning/online_learning.py", "append"),
    # SAF's delayed connections (twins of layer.LinearRecurrentContainer and friends), which
    # saf_online_training checks for; not exported from ``layer`` (their helpers are not layers)
    f"{PACKAGE}.recurrent": ("spikingjelly/activation_based/layer/saf_recurrent.py", "new"),
}

#: Third-party imports the upstream modules may use (SpikingJelly's own dependencies).
ALLOWED_THIRD_PARTY = {"torch", "triton", "spikingjelly", "numpy"}

#: Plain-text substitutions in the generated files (docstrings, messages, operator names).
TEXT_SUBSTITUTIONS = (
    ("spikingjelly_saf::", "sj_saf::"),
    ("torch.ops.spikingjelly_saf.", "torch.ops.sj_saf."),
    ("``'torch'``, ``'cupy'`` or ``'triton'``", "``'torch'`` or ``'triton'``"),
    ("``'torch'``、``'cupy'`` 或 ``'triton'``", "``'torch'`` 或 ``'triton'``"),
    ("(``'cupy'``, ``'triton'``)", "(``'triton'``)"),
    ("（``'cupy'``、``'triton'``）", "（``'triton'``）"),
    # SpikingJelly's per-operator override is SJ_<NAME>_CUDA_IMPLEMENTATION (_ops/selection.py)
    ("SAF_BACKEND", "SJ_SAF_CUDA_IMPLEMENTATION"),
    ('logger.enable("spikingjelly_saf")', 'logger.enable("spikingjelly._ops.saf")'),
    # the backends the series does not have (cpp, cupy); unmatched ones are harmless
    ("(``'cpp'``, ``'cupy'``, ``'triton'``)", "(``'triton'``)"),
    ("（``'cpp'``、``'cupy'``、``'triton'``）", "（``'triton'``）"),
    # 'auto' skips names a registry lacks anyway; upstream it names only what the series has
    ('PRIORITY = {"cuda": ("cupy", "triton"), "cpu": ("cpp",)}', 'PRIORITY = {"cuda": ("triton",)}'),
)
#: Edits of a module's source before it is placed: (module, old text, new text, required). A required
#: edit whose text is gone stops the generator; an optional one only warns. None is needed now:
#: ``SAFNode`` defaults to ``backend='auto'`` in the package itself (the choice SpikingJelly's neurons
#: make from the input's device), and its ``'auto'`` is the one the series registers.
SOURCE_EDITS: tuple[tuple[str, str, str, bool], ...] = ()

#: Regular-expression substitutions: the plugin's extras, its notes, what exists only in the plugin.
REGEX_SUBSTITUTIONS = (
    (r'"spikingjelly-saf\[(\w+)\]"', r"\1"),                      # pip install "spikingjelly-saf[triton]"
    (r" ?\(SAF_SPEC[^)]*\)", ""),                                   # citations of the plugin's notes
    (r"CuPy and Triton kernels implement", "the Triton kernels implement"),
    (r"never imports CuPy\s+or Triton", "never imports Triton"),
    (r",\s*:mod:`\.(?:cupy_backend|kernel_source|cuda_host|cpp_backend|cpu_source|cpu_build)`", ""),
    (r":mod:`\.(?:cupy_backend|kernel_source|cuda_host|cpp_backend|cpu_source|cpu_build)`,?\s*", ""),
    # 'auto' as the series has it: Triton on CUDA, else torch
    (r"on CUDA ``'cupy'``, else ``'triton'``, else ``'torch'``; on\s+CPU ``'cpp'`` \(the CUDA source compiled "
     r"for the CPU\), else ``'torch'``", "on CUDA ``'triton'``, else ``'torch'``; on CPU ``'torch'``"),
    (r"On CUDA ``'cupy'``, else ``'triton'``, else ``'torch'``; on CPU ``'cpp'``, else ``'torch'``",
     "On CUDA ``'triton'``, else ``'torch'``; on CPU ``'torch'``"),
    (r"the fused kernels of the input's device, CuPy then Triton\s+on CUDA and ``'cpp'``, the CUDA source "
     r"compiled for the CPU, on CPU, else ``'torch'``", "Triton on CUDA when it is installed, else ``'torch'``"),
    (r"按输入所在设备选择融合内核——CUDA 上 CuPy、Triton，CPU 上由 CUDA 源码编译的\s+``'cpp'``——没有时用 ``'torch'``",
     "按输入所在设备选择：CUDA 上 Triton（已安装时），否则 ``'torch'``"),
    (r"``torch``, ``cpp``, ``cupy`` or ``triton``", "``torch`` or ``triton``"),
    (r"``'torch'``,(\s+)``'cpp'``,\s+``'cupy'``\s+or\s+``'triton'``", r"``'torch'``\1or ``'triton'``"),
    (r"``'torch'``、``'cpp'``、\s*``'cupy'``\s*(?:或|、)\s*``'triton'``", "``'torch'`` 或 ``'triton'``"),
    # plugin-only conversion (to_saf, to_lif)
    (r"deployed with\s+:func:`~spikingjelly_saf\.to_lif`", "deployed with the same weights"),
    (r"Convert the model with \"\s*\"spikingjelly_saf\.to_saf\(model\), which swaps in the SAF twins of ",
     "Use the SAF twins of "),
    (r"neither CuPy nor Triton", "not Triton"),
    (r",? or convert it with\s+(\"\s*\")?\s*spikingjelly_saf\.to_saf\(model\)", ""),
    # the plugin's documents: the theory is the SAF tutorial upstream; backends.md has no counterpart
    (r"``docs/theory\.md``", ":doc:`/tutorials/en/saf`"),
    (r"\s*(?:and|与)\s*``docs/backends\.md``", ""),
    (r"\s*See ``docs/backends\.md``\.", ""),
    (r" ?\(``docs/[\w.]+``\)", ""),
)
#: Text that must not reach SpikingJelly; generate.py warns, naming the file and line.
RESIDUE = re.compile(r"spikingjelly_saf|spikingjelly-saf|SAF_SPEC|``docs/|\bplugin\b")

#: A line of a test template that generate.py replaces with top-level definitions of the project's
#: tests, exactly as they are there, so that the upstream tests and ours share one copy of their
#: helpers (names separated by spaces; a helper that another one uses must be named too):
#:     # generate.py: helpers from tests/nets.py: Residual conv_net randomise
HELPERS_DIRECTIVE = re.compile(r"^# generate\.py: helpers from (\S+): (.*)$", re.M)
#: The project's own test helpers. No test template may define a function or class under one of
#: their names, nor under the name of a file's helpers it pulls in or of a definition of the series
#: (a leading underscore aside): that would be a hand copy, free to drift from the original.
TEST_HELPERS = "tests/nets.py"

#: The patches: (file name stem, subject, body, files). A file belongs to the first patch naming it.
SERIES = (
    ("surrogate-add-SpikeRepresentation",
     "surrogate: add SpikeRepresentation, a representation-level surrogate",
     """\
Add RepresentationSurrogate and SpikeRepresentation. Every existing
surrogate acts at spike level, on H[t] - V_th. These act on the whole map
from a neuron's input current I[t] to its weighted firing rate: with
spiking=True the forward is the exact spiking step and the backward is
(s / V_th) * 1{0 < s I / V_th < 1}, the derivative of Spike
Representation's clamp(s I / V_th, 0, 1); with spiking=False the forward
is the clamp itself (the rate network). SAF-F (the next patches) is
stated for this surrogate: its gradients equal the Spike Representation
gradient (DSR) of the same network.""",
     ("spikingjelly/activation_based/surrogate.py",)),
    ("ops-saf-reference-and-triton",
     "_ops/saf: SAF reference operator and fused Triton operator",
     """\
The operators behind SAFNode. reference.py holds every SAF formula as a
small pure function (the torch reference: one autograd node per step for
SpikingJelly's explicit-backward surrogates, a traceable form for
torch.compile). backends/ holds the fused multi-step Triton kernels,
registered as torch.library custom ops (sj_saf::triton_forward,
_forward_only, _backward) with fake implementations, so torch.compile
and torch.export see opaque operators. The Triton kernels reuse
SpikingJelly's own surrogate derivatives (_ops/triton_surrogate.py).

__init__.py selects the implementation from the input's device, like
the other neuron operators: the torch reference on CPU, Triton on CUDA
when it is installed and the surrogate and dtype have a kernel, and the
torch reference otherwise; SJ_SAF_CUDA_IMPLEMENTATION=auto|triton|torch
overrides the choice on CUDA.""",
     ("spikingjelly/_ops/saf/",)),
    ("functional-saf_step-and-saf_multi_step",
     "functional: add saf_step and saf_multi_step",
     """\
Explicit-state SAF transitions next to lif_step and lif_multi_step, with
their argument order (input, state, tau, decay_input, v_threshold,
surrogate_function) and return convention: saf_step returns
(abar, (abar, weight_sum)), saf_multi_step returns
(abar_seq, (abar, weight_sum), v_seq_or_None). The SAF neuron's output is
its weighted firing rate abar, which is also its state together with the
Python float weight_sum c[t]. v_seq is the membrane of the LIF neuron with
the same weights, rebuilt from abar.""",
     ("spikingjelly/activation_based/functional/neuron.py",)),
    ("neuron-SAFNode",
     "neuron: add SAFNode, the Spike Accumulation Forwarding neuron",
     """\
SAFNode (Saiin et al., "Spike Accumulation Forwarding for Effective
Training of Spiking Neural Networks", TMLR 2024) is a drop-in for a
soft-reset LIFNode. It forwards its weighted firing rate
abar[t] = (lam c[t-1] abar[t-1] + S[t]) / c[t] instead of spikes, so
every layer runs once per step (OTTT runs each twice), and its spikes are
exactly those of the LIF network with the same weights (Theorem 1).
Trained weights run unchanged in LIFNode.

Also adds layer.InputAverage (the running average of input frames for
sequence inputs), layer.OutputRecovery and layer.predict.""",
     ("spikingjelly/activation_based/neuron/", "spikingjelly/activation_based/layer/")),
    ("learning-saf_online_training",
     "learning: add saf_online_training next to ottt_online_training",
     """\
One minibatch of SAF-E (a loss and an optimizer step at every time step,
like OTTT_O), SAF-E with accumulated updates (like OTTT_A) or SAF-F (one
loss on the final weighted-average output; earlier steps run without a
graph, so memory does not grow with T). The interface follows
ottt_online_training: x_seq is [B, T, ...], and the function returns the
summed loss and the stacked outputs [B, T, ...].""",
     ("spikingjelly/activation_based/learning/online_learning.py",)),
    ("test-saf",
     "test: SAF theorems and API",
     """\
Theorem 1: SAFNode's spikes equal LIFNode's (soft reset) for the same
weights, in float64, with bias, average pooling, eval-mode batch norm, a
residual add and dropout between neurons. Theorem 2: each step's weight gradients of SAF-E equal
those of OTTTLIFNode + OTTTSequential. Theorem 3: SAF-F with
SpikeRepresentation gives the Spike Representation gradient of
DSRIFNode networks. API: argument checks, supported_step_mode,
extra_repr, reset_net, set_step_mode, functional entry points, and the
Triton operator against the reference (skipped without Triton).""",
     ("test/",)),
    ("docs-saf-tutorial",
     "docs: SAF tutorial",
     """\
A short tutorial page: what SAF is, its three theorems, and how to swap
LIFNode for SAFNode, train with saf_online_training and deploy the
weights in LIFNode.""",
     ("docs/",)),
)

AUTHOR = "SpikingJelly SAF contributors <saf@users.noreply.github.com>"
DATE = "2026-01-01T00:00:00+00:00"


class GenerateError(RuntimeError):
    """The package changed in a way the generator cannot follow; the message says where."""


# ---- reading the package --------------------------------------------------------------------------
def module_file(module: str) -> Path:
    parts = module.split(".")
    base = ROOT.joinpath(*parts)
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    raise GenerateError(f"module {module} has no file under {ROOT}")


def is_package(module: str) -> bool:
    return module_file(module).name == "__init__.py"


def resolve_relative(module: str, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = module.split(".") if is_package(module) else module.split(".")[:-1]
    if node.level > 1:
        base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def module_exists(module: str) -> bool:
    try:
        module_file(module)
        return True
    except GenerateError:
        return False


def internal_imports(module: str, tree: ast.AST) -> set[str]:
    """The package modules ``module`` imports (at any depth of its code)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            source = resolve_relative(module, node)
            if not (source == PACKAGE or source.startswith(PACKAGE + ".")):
                continue
            for alias in node.names:
                child = f"{source}.{alias.name}"
                found.add(child if module_exists(child) else source)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == PACKAGE:
                    raise GenerateError(f"{module}: write `import {alias.name}` as a relative import")
    return found


def third_party(tree: ast.AST) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return {n for n in names if n != PACKAGE and n not in sys.stdlib_module_names}


def closure() -> list[str]:
    """The package modules reachable from :data:`ROOTS`, minus :data:`EXCLUDED`."""
    seen: dict[str, None] = {}
    todo = list(ROOTS)
    while todo:
        module = todo.pop(0)
        if module in seen or module in EXCLUDED:
            continue
        seen[module] = None
        tree = ast.parse(module_file(module).read_text())
        foreign = third_party(tree) - ALLOWED_THIRD_PARTY
        if foreign:
            raise GenerateError(
                f"{module} imports {sorted(foreign)}, which SpikingJelly does not depend on; move that "
                "code out of the modules the upstream classes import, or extend ROOTS/EXCLUDED in "
                "upstream/generate.py")
        # A package's __init__ runs whenever a submodule is imported.
        parts = module.split(".")
        for i in range(2, len(parts)):
            parent = ".".join(parts[:i])
            if is_package(parent):
                todo.append(parent)
        todo.extend(sorted(internal_imports(module, tree)))
    return [m for m in seen if m != PACKAGE]


def target_of(module: str) -> tuple[str, str]:
    """(path in SpikingJelly's tree, mode) of a package module."""
    if module in MODULE_TARGETS:
        return MODULE_TARGETS[module]
    rest = module.split(".")[1:]
    suffix = "/".join(rest) + ("/__init__.py" if is_package(module) else ".py")
    return f"spikingjelly/_ops/saf/{suffix}", "new"


def dotted(path: str) -> str:
    name = path[:-3].replace("/", ".")
    return name[: -len(".__init__")] if name.endswith(".__init__") else name


def target_module(module: str) -> str:
    return dotted(target_of(module)[0])


# ---- rewriting ------------------------------------------------------------------------------------
def relative(from_path: str, to_module: str) -> tuple[int, str]:
    """``(level, module)`` of a relative import of ``to_module`` inside the file ``from_path``."""
    here = dotted(from_path).split(".")
    package = here if from_path.endswith("__init__.py") else here[:-1]
    target = to_module.split(".")
    common = 0
    while common < min(len(package), len(target)) and package[common] == target[common]:
        common += 1
    return len(package) - common + 1, ".".join(target[common:])


def import_line(level: int, module: str, names: list[tuple[str, str | None]]) -> str:
    rendered = ", ".join(n if a in (None, n) else f"{n} as {a}" for n, a in names)
    return f"from {'.' * level}{module} import {rendered}"


@dataclass
class Rewritten:
    body: str
    imports: list[str] = field(default_factory=list)  # import lines (append mode hoists them)
    self_aliases: set[str] = field(default_factory=set)  # aliases of the host module itself


def rewrite_imports(module: str, source: str, path: str, hoist: bool) -> Rewritten:
    """Rewrite the package's and SpikingJelly's imports for the file at ``path``."""
    tree = ast.parse(source)
    lines = source.splitlines(keepends=True)
    host = dotted(path)
    edits = []  # (first line, last line, replacement text)
    result = Rewritten("")
    for node in ast.walk(tree):
        if not isinstance(node, (ast.ImportFrom, ast.Import)):
            continue
        top_level = node in tree.body
        indent = " " * node.col_offset
        if isinstance(node, ast.Import):
            if hoist and top_level:
                result.imports.append(ast.get_source_segment(source, node))
                edits.append((node.lineno, node.end_lineno, ""))
            continue
        absolute = resolve_relative(module, node)
        root = absolute.split(".")[0]
        if root not in (PACKAGE, "spikingjelly") and not (hoist and top_level):
            continue
        if absolute == "__future__":
            if hoist:
                edits.append((node.lineno, node.end_lineno, ""))
            continue
        if root not in (PACKAGE, "spikingjelly"):
            result.imports.append(ast.get_source_segment(source, node))
            edits.append((node.lineno, node.end_lineno, ""))
            continue
        out: dict[tuple[int, str], list] = {}
        assignments = []
        for alias in node.names:
            child = f"{absolute}.{alias.name}"
            if root == PACKAGE:
                child_target = target_module(child) if module_exists(child) else None
                source_target = target_module(absolute) if absolute != PACKAGE else None
            else:
                child_target = child if _sj_module_exists(child) else None
                source_target = absolute
            if child_target is not None:  # a module imported as a name
                if child_target == host:
                    result.self_aliases.add(alias.asname or alias.name)
                    continue
                parent, _, last = child_target.rpartition(".")
                level, rel = relative(path, parent)
                out.setdefault((level, rel), []).append(
                    (last, alias.asname or (alias.name if alias.name != last else None)))
            else:
                if source_target is None:
                    raise GenerateError(f"{module}: cannot place `from {absolute} import {alias.name}`")
                if source_target == host:
                    if alias.asname not in (None, alias.name):
                        assignments.append(f"{alias.asname} = {alias.name}")
                    continue
                level, rel = relative(path, source_target)
                out.setdefault((level, rel), []).append((alias.name, alias.asname))
        out = [import_line(level, rel, names) for (level, rel), names in out.items()] + assignments
        text = "".join(indent + line + "\n" for line in out)
        if hoist and top_level:
            result.imports.extend(out)
            text = ""
        edits.append((node.lineno, node.end_lineno, text))
    for first, last, text in sorted(edits, reverse=True):
        lines[first - 1:last] = [text] if text else []
    result.body = "".join(lines)
    return result


def _sj_module_exists(module: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def rename_names(source: str, renames: dict[str, str], strip: set[str]) -> str:
    """Rename NAME tokens (never inside strings or comments); ``strip`` drops ``alias.`` prefixes."""
    if not renames and not strip:
        return source
    tokens = list(tokenize.generate_tokens(io.StringIO(source).readline))
    lines = source.splitlines(keepends=True)
    offsets = [0]
    for line in lines:
        offsets.append(offsets[-1] + len(line))
    edits = []
    for i, tok in enumerate(tokens):
        if tok.type != tokenize.NAME:
            continue
        previous = tokens[i - 1] if i else None
        if previous is not None and previous.type == tokenize.OP and previous.string == ".":
            continue  # an attribute, not a global name
        start = offsets[tok.start[0] - 1] + tok.start[1]
        end = offsets[tok.end[0] - 1] + tok.end[1]
        if tok.string in strip and i + 1 < len(tokens) and tokens[i + 1].string == ".":
            edits.append((start, end + 1, ""))
        elif tok.string in renames:
            edits.append((start, end, renames[tok.string]))
    for start, end, text in sorted(edits, reverse=True):
        source = source[:start] + text + source[end:]
    return source


#: An import of the package in a docstring's example (``>>> from spikingjelly_saf import SAFNode``).
DOCTEST_IMPORT = re.compile(
    rf"^(?P<prefix>[ \t]*>>> )from (?P<module>{PACKAGE}(?:\.\w+)*) import (?P<names>[\w ,]+?)[ \t]*$", re.M)


def exported_by_package(target: str, owner: str, name: str) -> str:
    """``target``'s package when its ``__init__`` (SpikingJelly's, or as a template extends it) has
    ``from .<module> import *`` and ``name`` is in the module's ``__all__``; else ``target``."""
    package, _, last = target.rpartition(".")
    if name not in module_all(ast.parse(module_file(owner).read_text())):
        return target
    folder = package.replace(".", "/")
    texts = [TEMPLATES / folder / "__init__.py.insert", spikingjelly_dir().parent / folder / "__init__.py"]
    star = re.compile(rf"^from \.{re.escape(last)} import \*$", re.M)
    return package if any(t.is_file() and star.search(t.read_text()) for t in texts) else target


def upstream_import(module: str, name: str) -> tuple[str, str]:
    """(module, attribute) that a SpikingJelly user imports for ``from <module> import <name>``."""
    child = f"{module}.{name}"
    if module_exists(child):  # a package module imported as a name
        if child not in closure():
            raise GenerateError(f"an example imports {child}, which the series does not add")
        parent, _, last = target_module(child).rpartition(".")
        return parent, last
    owner = module if module != PACKAGE else defined_in().get(name)
    if owner is None or owner not in closure():
        raise GenerateError(f"an example imports {name} from {module}, which the series does not add")
    return exported_by_package(target_module(owner), owner, name), name


def doctest_imports(source: str) -> str:
    """Rewrite the examples' imports of the package as imports of the modules the series adds."""

    def replace(match: re.Match) -> str:
        groups: dict[str, list[tuple[str, str | None]]] = {}
        for part in match.group("names").split(","):
            name, _, alias = (p.strip() for p in part.strip().partition(" as "))
            where, attribute = upstream_import(match.group("module"), name)
            groups.setdefault(where, []).append((attribute, alias or (name if name != attribute else None)))
        return "\n".join(match.group("prefix") + import_line(0, where, names) for where, names in groups.items())

    return DOCTEST_IMPORT.sub(replace, source)


def substitute_text(source: str) -> str:
    source = doctest_imports(source)
    for old, new in TEXT_SUBSTITUTIONS:
        source = source.replace(old, new)
    for pattern, replacement in REGEX_SUBSTITUTIONS:
        source = re.sub(pattern, replacement, source)

    def module_reference(match: re.Match) -> str:
        name = match.group(0)
        parts = name.split(".")
        for cut in range(len(parts), 0, -1):
            candidate = ".".join(parts[:cut])
            if candidate != PACKAGE and module_exists(candidate) and candidate not in EXCLUDED:
                return ".".join([target_module(candidate)] + parts[cut:])
        # a name the package re-exports: point at the module that defines it
        owner = defined_in().get(parts[1])
        if owner is not None:
            return ".".join([target_module(owner)] + parts[1:])
        return name

    return re.sub(rf"\b{PACKAGE}(?:\.\w+)+", module_reference, source)


_DEFINED_IN: dict[str, str] = {}


def defined_in() -> dict[str, str]:
    """Top-level name -> the upstream-bound module that defines it."""
    if not _DEFINED_IN:
        for module in closure():
            tree = ast.parse(module_file(module).read_text())
            for name, what in top_level_bindings(tree).items():
                if what in ("definition", "assignment"):
                    _DEFINED_IN.setdefault(name, module)
    return _DEFINED_IN


def drop_excluded(module: str, source: str) -> str:
    """Remove what loads an excluded module, what uses that, and private helpers left unused.

    A top-level statement that imports an excluded module or names one in a string (a backend's
    kernel module) is dropped; so is a definition whose code imports one (``class CppBackend``,
    whose methods import ``cpp_backend``), then every statement that uses a dropped definition
    (``REGISTRY.register(CppBackend())``), and the dropped definitions' entries in ``__all__``. A
    definition that only mentions an excluded module in a string (a docstring) stays.
    """
    excluded_names = {m.rsplit(".", 1)[1] for m in EXCLUDED}
    tree = ast.parse(source)
    dropped, referenced, definitions = [], set(), set()

    def is_all(node: ast.stmt) -> bool:
        return isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__"
                                                    for t in node.targets)

    def names_in(node: ast.AST) -> set[str]:
        return {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}

    for node in tree.body:
        strings = {n.value for n in ast.walk(node) if isinstance(n, ast.Constant) and isinstance(n.value, str)}
        imports = set()
        for n in ast.walk(node):
            if isinstance(n, ast.ImportFrom):
                imports.add(resolve_relative(module, n))
                imports.update(f"{resolve_relative(module, n)}.{a.name}" for a in n.names)
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            if imports & EXCLUDED:
                dropped.append(node)
                definitions.add(node.name)
            continue  # one that only mentions them is handled as an unused helper below
        if strings & excluded_names or imports & EXCLUDED:
            dropped.append(node)
            referenced |= names_in(node)
    # what uses a dropped definition goes too (a registration, a subclass), until nothing changes
    changed = bool(definitions)
    while changed:
        changed = False
        for node in tree.body:
            if node in dropped or is_all(node) or not names_in(node) & definitions:
                continue
            dropped.append(node)
            referenced |= names_in(node)
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                definitions.add(node.name)
            changed = True
    remaining = [n for n in tree.body if n not in dropped]
    for node in tree.body:
        if not (isinstance(node, ast.FunctionDef) and node.name.startswith("_") and node.name in referenced):
            continue
        used_elsewhere = {n.id for other in remaining if other is not node
                          for n in ast.walk(other) if isinstance(n, ast.Name)}
        if node.name not in used_elsewhere:
            dropped.append(node)
    source = remove_nodes(source, dropped)
    return remove_from_all(module, source, definitions)


def remove_from_all(module: str, source: str, names: set[str]) -> str:
    """Remove ``names`` from the module's ``__all__`` list literal (one name per line)."""
    tree = ast.parse(source)
    node = next((n for n in tree.body if isinstance(n, ast.Assign)
                 and any(isinstance(t, ast.Name) and t.id == "__all__" for t in n.targets)), None)
    if node is None or not names:
        return source
    lines = source.splitlines(keepends=True)
    remove = []
    for element in node.value.elts:
        if isinstance(element, ast.Constant) and element.value in names:
            line = lines[element.lineno - 1]
            if line.strip() not in (f'"{element.value}",', f"'{element.value}',"):
                raise GenerateError(f"{module}: __all__ lists {element.value!r}, which is not placed upstream; "
                                    "keep one name per line there so that generate.py can remove it")
            remove.append(element.lineno)
    for number in sorted(remove, reverse=True):
        del lines[number - 1]
    return "".join(lines)


def remove_nodes(source: str, nodes: list[ast.stmt]) -> str:
    lines = source.splitlines(keepends=True)
    for node in sorted(nodes, key=lambda n: n.lineno, reverse=True):
        first = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
        last = node.end_lineno
        # take the blank lines after a definition with it
        while last < len(lines) and not lines[last].strip():
            last += 1
        del lines[first - 1:last]
    return "".join(lines)


def reuse_spikingjelly_surrogates(source: str, path: str) -> str:
    """Point the Triton backend's built-in surrogate table at SpikingJelly's own derivatives."""
    tree = ast.parse(source)
    table = next((n for n in tree.body if isinstance(n, ast.Assign)
                  and any(isinstance(t, ast.Name) and t.id == "BUILTIN_TRITON_SURROGATES" for t in n.targets)),
                 None)
    if table is None or not isinstance(table.value, ast.Dict):
        raise GenerateError(
            f"{path}: BUILTIN_TRITON_SURROGATES (a dict of surrogate name -> triton.jit derivative) is "
            "gone; update reuse_spikingjelly_surrogates in upstream/generate.py")
    from spikingjelly._ops.surrogate import _SURROGATE_IDS

    names = [k.value for k in table.value.keys]
    missing = [n for n in names if n not in _SURROGATE_IDS]
    if missing:
        raise GenerateError(f"{path}: SpikingJelly has no Triton derivative for {missing}")
    level, rel = relative(path, "spikingjelly._ops.triton_surrogate")
    wrappers = [
        "# SpikingJelly's own surrogate derivatives (_ops/triton_surrogate.py), in the signature\n"
        "# fn(x, p0, p1) of this module's kernels; p0 is alpha.\n"
    ]
    entries = []
    for name in names:
        function = "_" + re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower() + "_derivative"
        wrappers.append(
            f"@triton.jit\ndef {function}(x, p0, p1):\n"
            f"    return _surrogate_gradient(x, p0, {_SURROGATE_IDS[name]})\n\n\n")
        entries.append(f'    "{name}": {function},\n')
    replacement = "".join(wrappers) + "BUILTIN_TRITON_SURROGATES = {\n" + "".join(entries) + "}\n"
    # old derivative -> SpikingJelly's, for the references outside the table
    renames = {v.id: "_" + re.sub(r"(?<!^)(?=[A-Z])", "_", k.value).lower() + "_derivative"
               for k, v in zip(table.value.keys, table.value.values) if isinstance(v, ast.Name)}
    replaced = set(renames)
    lines = source.splitlines(keepends=True)
    lines[table.lineno - 1:table.end_lineno] = [replacement]
    source = "".join(lines)
    tree = ast.parse(source)
    source = remove_nodes(source, [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name in replaced])
    source = rename_names(source, renames, set())
    import_text = f"from {'.' * level}{rel} import _surrogate_gradient\n"
    tree = ast.parse(source)
    last_import = max(n.end_lineno for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom)))
    lines = source.splitlines(keepends=True)
    lines.insert(last_import, import_text)
    return "".join(lines)


# ---- test helpers shared with the project's tests -------------------------------------------------
def import_bindings(tree: ast.Module) -> dict[str, tuple[str, str | None, str]]:
    """name -> (module, attribute or None for ``import module``, a statement binding only that name)."""
    bound = {}
    for node in tree.body:
        if isinstance(node, ast.Import):
            for a in node.names:
                name = a.asname or a.name.split(".")[0]
                module = a.name if a.asname else name
                bound[name] = (module, None, f"import {a.name}" + (f" as {a.asname}" if a.asname else ""))
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module != "__future__":
            for a in node.names:
                bound[a.asname or a.name] = (node.module, a.name, import_line(0, node.module, [(a.name, a.asname)]))
    return bound


def module_source(module: str, read) -> str | None:
    """The text of ``module`` in the generated SpikingJelly tree (``read(path)``), or None."""
    stem = module.replace(".", "/")
    for path in (f"{stem}/__init__.py", f"{stem}.py"):
        text = read(path)
        if text is not None:
            return text
    return None


def module_exports(module: str, read, seen: frozenset = frozenset()) -> set[str]:
    """The names ``module.name`` reaches in the generated tree, following its ``import *`` lines."""
    text = module_source(module, read)
    if text is None or module in seen:
        return set()
    tree = ast.parse(text)
    names = set(top_level_bindings(tree))
    package = read(f"{module.replace('.', '/')}/__init__.py") is not None
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and any(a.name == "*" for a in node.names):
            base = module.split(".") if package else module.split(".")[:-1]
            if node.level > 1:
                base = base[: len(base) - (node.level - 1)]
            source = node.module if node.level == 0 else ".".join(base + ([node.module] if node.module else []))
            source_text = module_source(source, read)
            if source_text is None:
                continue
            public = module_all(ast.parse(source_text))
            names |= set(public) if public else {n for n in module_exports(source, read, seen | {module})
                                                 if not n.startswith("_")}
    return names


def upstream_reference(template: str, used: str, module: str, attribute: str | None,
                       template_imports: dict, added: dict[str, str], read) -> str:
    """How the series' test ``template`` spells a package object that a shared helper imports.

    Through a SpikingJelly module the template already imports, when that module exports it
    (``SAFNode`` -> ``neuron.SAFNode``): looked up when the test runs, so that without the series
    each test still fails by itself (check_series.py counts them). Otherwise through an import of
    the module that defines it upstream, added to the template's imports.
    """
    child = f"{module}.{attribute}" if attribute else module
    if attribute is None or module_exists(child):  # a package module imported as a name
        if child not in closure():
            raise GenerateError(f"{template}: a shared helper uses {child}, which the series does not add")
        parent, _, last = target_module(child).rpartition(".")
        added[used] = import_line(0, parent, [(last, used if used != last else None)])
        return used
    owner = module if module != PACKAGE else defined_in().get(attribute)
    if owner is None or owner not in closure():
        raise GenerateError(f"{template}: a shared helper uses {attribute} from {module}, which the series "
                            "does not add")
    target = target_module(owner)
    for alias, (bound_module, bound_attribute, _) in sorted(template_imports.items()):
        bound = f"{bound_module}.{bound_attribute}" if bound_attribute else bound_module
        if (target == bound or target.startswith(bound + ".")) and attribute in module_exports(bound, read):
            return f"{alias}.{attribute}"
    added[used] = import_line(0, target, [(attribute, used if used != attribute else None)])
    return used


def top_level_definitions(tree: ast.Module) -> dict[str, ast.stmt]:
    found = {}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            found[node.name] = node
        elif (isinstance(node, ast.Assign) and len(node.targets) == 1
              and isinstance(node.targets[0], ast.Name)):
            found[node.targets[0].id] = node
    return found


def expand_helpers(template: str, text: str, read) -> str:
    """Replace each :data:`HELPERS_DIRECTIVE` of a test template with the named definitions.

    A definition's source is copied as it is in the project's test file; the names it imports there
    must be bound the same way in the template (a missing import is added), and the package's
    names become their SpikingJelly names (:func:`upstream_reference`).
    """
    template_imports = import_bindings(ast.parse(text))
    added: dict[str, str] = {}

    def expand(match: re.Match) -> str:
        source_path, names = match.group(1), match.group(2).split()
        file = ROOT / source_path
        if not file.is_file() or not names:
            raise GenerateError(f"{template}: {match.group(0)!r} must name a file of this project and "
                                "some of its definitions")
        source = file.read_text()
        tree = ast.parse(source)
        lines = source.splitlines(keepends=True)
        definitions = top_level_definitions(tree)
        imports = import_bindings(tree)
        renames, segments = {}, []
        for name in names:
            node = definitions.get(name)
            if node is None:
                raise GenerateError(f"{template}: {source_path} has no top-level definition {name}")
            for used in sorted({n.id for n in ast.walk(node) if isinstance(n, ast.Name)} - {name}):
                if used in definitions and used not in names:
                    raise GenerateError(f"{template}: {name} of {source_path} uses {used}; name it in the "
                                        "directive too")
                if used not in imports:
                    continue  # a local, a builtin or another shared helper
                module, attribute, statement = imports[used]
                if module.split(".")[0] == PACKAGE:
                    renames[used] = upstream_reference(template, used, module, attribute, template_imports,
                                                       added, read)
                elif used in template_imports:
                    if template_imports[used][:2] != (module, attribute):
                        raise GenerateError(f"{template}: {used} means {template_imports[used][2]!r} there and "
                                            f"{statement!r} in {source_path}, whose {name} uses it")
                elif added.setdefault(used, statement) != statement:
                    raise GenerateError(f"{template}: shared helpers import {used} in two ways")
            first = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
            segments.append("".join(lines[first - 1:node.end_lineno]).rstrip("\n"))
        return substitute_text(rename_names("\n\n\n".join(segments) + "\n", renames, set())).rstrip("\n")

    text = HELPERS_DIRECTIVE.sub(expand, text)
    if added:
        tree = ast.parse(text)
        last_import = max(n.end_lineno for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom)))
        lines = text.splitlines(keepends=True)
        lines[last_import:last_import] = [line + "\n" for line in sorted(set(added.values()))]
        text = "".join(lines)
    return text


def check_no_hand_copies(template: str, text: str) -> None:
    """Refuse a test template that defines its own copy of a helper the project already has."""
    sources = [TEST_HELPERS] + [m.group(1) for m in HELPERS_DIRECTIVE.finditer(text)]
    shared = {}  # name without leading underscores -> where it is defined, and how to use that one
    for source_path in sources:
        file = ROOT / source_path
        if file.is_file():
            for name in top_level_definitions(ast.parse(file.read_text())):
                shared.setdefault(name.lstrip("_"), f"{name} of {source_path}; bring it in with a line "
                                                    f"'# generate.py: helpers from {source_path}: {name}'")
    for name, module in defined_in().items():
        shared.setdefault(name.lstrip("_"), f"{name} of {module}; import it from {target_module(module)}, "
                                            "where the series puts it")
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.name.lstrip("_") in shared:
            raise GenerateError(f"{template}:{node.lineno}: {node.name} copies {shared[node.name.lstrip('_')]}")


# ---- building files -------------------------------------------------------------------------------
def top_level_bindings(tree: ast.Module) -> dict[str, str]:
    """name -> what it is bound to, for the host module's top level."""
    bound = {}
    for node in tree.body:
        if isinstance(node, ast.Import):
            for a in node.names:
                bound[a.asname or a.name.split(".")[0]] = f"import {a.name}"
        elif isinstance(node, ast.ImportFrom):
            for a in node.names:
                bound[a.asname or a.name] = f"from {'.' * node.level}{node.module} import {a.name}"
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            bound[node.name] = "definition"
        elif isinstance(node, ast.Assign):
            for t in node.targets:
                if isinstance(t, ast.Name):
                    bound[t.id] = "assignment"
    return bound


def binding_of(line: str) -> dict[str, str]:
    tree = ast.parse(line)
    return {k: v for k, v in top_level_bindings(tree).items()}


def extend_all(source: str, names: list[str]) -> str:
    """Add ``names`` to the host's ``__all__`` list literal (kept one name per line)."""
    tree = ast.parse(source)
    node = next((n for n in tree.body if isinstance(n, ast.Assign)
                 and any(isinstance(t, ast.Name) and t.id == "__all__" for t in n.targets)), None)
    if node is None:
        return source
    existing = [e.value for e in node.value.elts]
    added = [n for n in names if n not in existing]
    if not added:
        return source
    lines = source.splitlines(keepends=True)
    last = node.value.elts[-1]
    line = lines[last.end_lineno - 1]
    indent = re.match(r"\s*", line).group(0)
    text = line[:last.end_col_offset] + "," + line[last.end_col_offset:].lstrip(" ,")
    lines[last.end_lineno - 1] = text
    lines[last.end_lineno:last.end_lineno] = [f'{indent}"{n}",\n' for n in added]
    return "".join(lines)


def module_all(tree: ast.Module) -> list[str]:
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets):
            return [e.value for e in node.value.elts]
    return []


def append_module(host_source: str, module: str, source: str, path: str) -> str:
    """The host module with ``module``'s code appended and its imports hoisted."""
    host_tree = ast.parse(host_source)
    host_bound = top_level_bindings(host_tree)
    rewritten = rewrite_imports(module, source, path, hoist=True)
    body = rewritten.body
    tree = ast.parse(body)
    exported = module_all(tree)
    docstring = ast.get_docstring(tree)
    remove = [n for n in tree.body if isinstance(n, ast.Assign)
              and any(isinstance(t, ast.Name) and t.id == "__all__" for t in n.targets)]
    if docstring is not None:
        remove.append(tree.body[0])
    body = remove_nodes(body, remove)
    # Names of ours that the host binds to something else get a saf_ prefix.
    ours = top_level_bindings(ast.parse(body))
    imports = []
    for line in rewritten.imports:
        for name, what in binding_of(line).items():
            ours[name] = what
    renames = {}
    for name, what in ours.items():
        if name in host_bound and host_bound[name] != what:
            renames[name] = ("_saf_" + name.lstrip("_")) if name.startswith("_") else f"saf_{name}"
    keep_imports = []  # (is relative, line)
    for line in rewritten.imports:
        node = ast.parse(line).body[0]
        if isinstance(node, ast.ImportFrom):
            names = [a for a in node.names
                     if host_bound.get(a.asname or a.name) != f"from {'.' * node.level}{node.module} import {a.name}"]
            if not names:
                continue  # the host already imports exactly these
            names = [(a.name, renames.get(a.asname or a.name, a.asname)) for a in names]
            keep_imports.append((node.level > 0, import_line(node.level, node.module or "", names)))
        else:
            alias = node.names[0]
            bound = alias.asname or alias.name.split(".")[0]
            if host_bound.get(bound) == f"import {alias.name}":
                continue
            if bound in renames:
                line = f"import {alias.name} as {renames[bound]}"
            keep_imports.append((False, line))
    body = rename_names(body, renames, rewritten.self_aliases).strip("\n")
    body = body.replace("the module docstring", "the comment that opens this section")
    exported = [renames.get(n, n) for n in exported]
    # The module docstring becomes the section's comment: it may state contracts the code refers to.
    described = (docstring or module).strip().splitlines()
    section = "\n\n# ---- " + described[0].strip() + "\n" + "".join(
        ("# " + line).rstrip() + "\n" for line in described[1:])
    result = host_source.rstrip("\n") + "\n" + section + "\n\n" + body + "\n"
    if keep_imports:
        lines = result.splitlines(keepends=True)
        host_imports = [n for n in host_tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
        last_any = max(n.end_lineno for n in host_imports)
        absolute = [n.end_lineno for n in host_imports
                    if not (isinstance(n, ast.ImportFrom) and n.level > 0)]
        last_absolute = max(absolute) if absolute else last_any
        for relative_import, at in ((True, last_any), (False, last_absolute)):  # bottom first
            block = [line + "\n" for is_relative, line in keep_imports if is_relative == relative_import]
            lines[at:at] = block
        result = "".join(lines)
    if exported:
        result = extend_all(result, exported)
    return result


def new_module(module: str, source: str, path: str) -> str:
    rewritten = rewrite_imports(module, source, path, hoist=False)
    body = rename_names(rewritten.body, {}, rewritten.self_aliases)
    return body


def generate_tree(base: Path, work: Path) -> dict[str, list[str]]:
    """Write the changed and new files under ``work``; returns {path: [package modules]}."""
    origins: dict[str, list[str]] = {}
    modules = closure()
    contents: dict[str, str] = {}

    def host(path: str) -> str:
        if path in contents:
            return contents[path]
        original = base / path
        if not original.is_file():
            raise GenerateError(f"{path} is not in SpikingJelly at {base}")
        return original.read_text()

    for module in modules:
        path, mode = target_of(module)
        source = module_file(module).read_text()
        for edited, old, new, required in SOURCE_EDITS:
            if edited != module:
                continue
            if source.count(old) != 1:
                message = (f"{module}: the text {old!r} of SOURCE_EDITS in upstream/generate.py is "
                           f"there {source.count(old)} times instead of once; update the edit")
                if required:
                    raise GenerateError(message)
                print(f"generate.py: warning: {message}", file=sys.stderr)
                continue
            source = source.replace(old, new)
        source = drop_excluded(module, source)
        if mode == "append":
            text = append_module(host(path), module, source, path)
        else:
            if path in contents:
                raise GenerateError(f"{module} and another module both map to {path}")
            text = new_module(module, source, path)
        if module == f"{PACKAGE}.backends.triton_backend":
            text = reuse_spikingjelly_surrogates(text, path)
        contents[path] = substitute_text(text)
        origins.setdefault(path, []).append(module)
    for template in sorted(TEMPLATES.rglob("*")):
        if template.is_dir():
            continue
        relative_path = template.relative_to(TEMPLATES).as_posix()
        if relative_path.endswith(".append"):
            path = relative_path[: -len(".append")]
            text = template.read_text()
            exported = re.findall(r"^#\s*__all__\s*\+=\s*(.*)$", text, flags=re.M)
            text = re.sub(r"^#\s*__all__\s*\+=.*\n", "", text, flags=re.M)
            merged = host(path).rstrip("\n") + "\n\n\n" + text.strip("\n") + "\n"
            if exported:
                merged = extend_all(merged, exported[0].split())
            contents[path] = merged
        elif relative_path.endswith(".insert"):
            # "<anchor line>\n---\n<lines to insert after it>"
            path = relative_path[: -len(".insert")]
            anchor, _, addition = template.read_text().partition("\n---\n")
            original = host(path)
            if original.count(anchor + "\n") != 1:
                raise GenerateError(f"{path}: the line {anchor!r} is not there exactly once")
            contents[path] = original.replace(anchor + "\n", anchor + "\n" + addition, 1)
        else:
            path = relative_path
            if path in contents:
                raise GenerateError(f"template {path} would overwrite generated code")
            contents[path] = template.read_text()
        origins.setdefault(path, []).append(f"upstream/templates/{relative_path}")

    def read(path: str) -> str | None:
        if path in contents:
            return contents[path]
        return (base / path).read_text() if (base / path).is_file() else None

    # After every template is placed, so that a helper's names resolve against the finished tree.
    for path in sorted(contents):
        if path.startswith("test/") and path.endswith(".py"):
            check_no_hand_copies(path, contents[path])
            origins[path] += sorted({m.group(1) for m in HELPERS_DIRECTIVE.finditer(contents[path])})
            contents[path] = expand_helpers(path, contents[path], read)
    for path, text in contents.items():
        for number, line in enumerate(text.splitlines(), start=1):
            if RESIDUE.search(line):
                print(f"generate.py: warning: {path}:{number} still names the plugin: {line.strip()[:120]}",
                      file=sys.stderr)
        target = work / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text.rstrip("\n") + "\n")
    return origins


def patch_of(path: str) -> int:
    for index, (_, _, _, prefixes) in enumerate(SERIES):
        if any(path == p or (p.endswith("/") and path.startswith(p)) for p in prefixes):
            return index
    raise GenerateError(f"{path} belongs to no patch of SERIES in upstream/generate.py")


def git(*args: str, cwd: Path, env: dict | None = None) -> str:
    full_env = dict(os.environ, GIT_CONFIG_NOSYSTEM="1", HOME=str(cwd), **(env or {}))
    return subprocess.run(["git", *args], cwd=cwd, env=full_env, check=True,
                          capture_output=True, text=True).stdout


def spikingjelly_dir() -> Path:
    import spikingjelly

    return Path(spikingjelly.__file__).resolve().parent


def spikingjelly_version() -> str:
    import importlib.metadata

    return importlib.metadata.version("spikingjelly")


def generate(out: Path) -> list[Path]:
    base = spikingjelly_dir().parent
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        work = scratch / "tree"
        generated = scratch / "generated"
        origins = generate_tree(base, generated)
        work.mkdir()
        name, _, email = AUTHOR.partition(" <")
        env = {"GIT_AUTHOR_NAME": name, "GIT_AUTHOR_EMAIL": email.rstrip(">"),
               "GIT_COMMITTER_NAME": name, "GIT_COMMITTER_EMAIL": email.rstrip(">"),
               "GIT_AUTHOR_DATE": DATE, "GIT_COMMITTER_DATE": DATE}
        git("init", "-q", "-b", "base", cwd=work, env=env)
        hosts = [p for p in origins if (base / p).is_file()]
        for path in hosts:
            (work / path).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(base / path, work / path)
        git("add", "-A", cwd=work, env=env)
        git("commit", "-q", "-m", "SpikingJelly 2.0.0", cwd=work, env=env)
        start = git("rev-parse", "HEAD", cwd=work).strip()
        by_patch: dict[int, list[str]] = {}
        for path in origins:
            by_patch.setdefault(patch_of(path), []).append(path)
        for index, (_, subject, body, _) in enumerate(SERIES):
            paths = sorted(by_patch.get(index, []))
            if not paths:
                raise GenerateError(f"patch {index + 1} ({subject}) has no files")
            for path in paths:
                (work / path).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(generated / path, work / path)
            sources = sorted({o for p in paths for o in origins[p]})
            message = (f"{subject}\n\n{body}\n\nGenerated from: " + ", ".join(sources) + "\n")
            git("add", *paths, cwd=work, env=env)
            git("commit", "-q", "-m", message, cwd=work, env=env)
        out.mkdir(parents=True, exist_ok=True)
        for old in out.glob("*.patch"):
            old.unlink()
        git("format-patch", "-q", "--zero-commit", "--no-signature", "--no-numbered", "--full-index",
            "-o", str(out), f"{start}..HEAD", cwd=work, env=env)
        # The patches' context and index lines come from this SpikingJelly: record which one.
        (out / "BASE").write_text(f"spikingjelly {spikingjelly_version()}\n")
        written = sorted(out.glob("*.patch"))
        # format-patch names files after the subject; use the series' own stems
        final = []
        for index, (patch_path, (stem, _, _, _)) in enumerate(zip(written, SERIES), start=1):
            target = out / f"{index:04d}-{stem}.patch"
            if patch_path != target:
                patch_path.rename(target)
            final.append(target)
        return final


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help="folder for the .patch files (default: upstream/saf-series)")
    args = parser.parse_args(argv)
    try:
        patches = generate(args.out)
    except GenerateError as error:
        print(f"generate.py: {error}", file=sys.stderr)
        return 2
    for patch in patches:
        lines = patch.read_text().count("\n")
        print(f"{patch.relative_to(args.out.parent) if args.out.parent in patch.parents else patch}  "
              f"({lines} lines)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
