"""Test-session settings shared by every test module."""

import os
import sys

# Test helpers (nets.py, fabricate.py) live beside the tests.
sys.path.insert(0, os.path.dirname(__file__))


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
