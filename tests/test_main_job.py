"""The README's main job and swap example run as documented."""

import re
from pathlib import Path

import pytest
import torch

from spikingjelly_saf import digits

README = Path(__file__).resolve().parents[1] / "README.md"


def test_digits_training_learns_and_deploys_identically():
    data = digits.load_digits_tensors()
    result = digits.train("saf-e", seed=0, data=data, steps=4, epochs=1, width=8)
    assert result["accuracy"] > 0.6, result  # chance is 0.1
    # Theorem 1 at work: the LIF twin predicts exactly what the SAF model predicts.
    assert result["to_lif_accuracy"] == result["accuracy"]


def test_digits_command_line_rejects_unknown_method(capsys):
    with pytest.raises(SystemExit):
        digits.main(["--methods", "saf-x"])
    assert "choose from" in capsys.readouterr().err


def test_readme_swap_example_runs():
    code = re.search(r"## Swap LIFNode for SAFNode\n\n```python\n(.*?)```", README.read_text(), re.S)
    assert code, "README lost its swap example"
    namespace = {}
    exec(compile(code.group(1), "README-example", "exec"), namespace)
    assert namespace["y_seq"].shape == (8, 6, 10)
    assert torch.isfinite(namespace["loss"])
