"""Benchmarks of SAF against OTTT, BPTT, BPTT+memopt, SLTT and the ReLU ideal (``python -m benchmarks``).

They train with the examples' engine (``examples/saf_examples``), which is not installed with the
library: its folder goes on ``sys.path`` here, as it does for the scripts in ``examples/``.
"""
import sys
from pathlib import Path

_EXAMPLES = str(Path(__file__).resolve().parents[1] / "examples")
if _EXAMPLES not in sys.path:
    sys.path.insert(0, _EXAMPLES)
