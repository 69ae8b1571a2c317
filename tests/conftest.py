"""Test-session settings shared by every test module."""

import os
import sys

import pytest

# Test helpers (nets.py, fabricate.py) live beside the tests; the examples' engine (saf_examples)
# lives in examples/, which is not installed with the library.
_EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")
sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, _EXAMPLES)
# Child processes (torchrun, spawned trainers, "python -c") import saf_examples too.
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (_EXAMPLES, os.environ.get("PYTHONPATH")) if p)


def pytest_collection_modifyitems(config, items):
    """Triton-interpreter tests run in the child process started by test_triton_interpreter_suite."""
    if os.environ.get("SAF_TRITON_INTERPRETER_CHILD") == "1":
        return
    kept, deselected = [], []
    for item in items:
        (deselected if item.get_closest_marker("triton_interpreter") else kept).append(item)
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = kept


@pytest.fixture
def one_thread():
    """One torch thread for CLI runs on tiny data: on two shared cores, more threads than cores
    make tiny convolutions many times slower."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
