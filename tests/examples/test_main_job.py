"""The README's main job and swap example run as documented."""

import re
from pathlib import Path

import pytest
import torch

from saf_examples import digits

README = Path(__file__).resolve().parents[2] / "README.md"


def test_digits_training_learns_and_deploys_identically():
    data = digits.load_digits_tensors()
    result = digits.train("saf-e", seed=0, data=data, steps=4, epochs=1, width=8)
    assert result["accuracy"] > 0.6, result  # chance is 0.1
    # Theorem 1 at work: the LIF twin predicts exactly what the SAF model predicts.
    assert result["to_lif_accuracy"] == result["accuracy"]


def test_digits_command_line_rejects_unknown_method(capsys):
    with pytest.raises(SystemExit) as exit:
        digits.main(["-method", "saf-x"])
    assert exit.value.code == 2
    err = capsys.readouterr().err
    assert "argument -method: 'saf-x' is unknown" in err and "dsr" in err and "Traceback" not in err


@pytest.mark.parametrize("argv, flag", [(["-T", "0"], "-T"), (["-epochs", "0"], "-epochs"),
                                        (["-lr", "-1"], "-lr"), (["-tau", "0.5"], "-tau"),
                                        (["-seed", "-1"], "-seed"), (["--methods", "saf-e"], "")])
def test_digits_command_line_refuses_bad_values(capsys, argv, flag):
    with pytest.raises(SystemExit) as exit:
        digits.main(argv)
    assert exit.value.code == 2
    assert f"argument {flag}" in capsys.readouterr().err if flag else True


def test_digits_flags_match_the_examples_and_the_readme_table():
    """Single-dash flags like the examples; defaults are the README table's settings (one seed),
    and every method of the table can be chosen."""
    parser = digits.build_parser()
    assert {"-method", "-T", "-epochs", "-seed", "-tau", "-lr", "-b"} <= set(parser._option_string_actions)
    assert not any(option.startswith("--") and option != "--help"
                   for option in parser._option_string_actions)
    args = parser.parse_args([])
    assert (args.T, args.epochs, args.lr, args.b, args.tau) == (4, 5, 2e-2, 64, 2.0)
    table = re.search(r"Digits \(scikit-learn\), T=(\d+), (\d+) epochs", README.read_text())
    assert table and (int(table.group(1)), int(table.group(2))) == (args.T, args.epochs)
    digits_table = README.read_text()[table.end():].split("\n\n", 2)[1]
    rows = re.findall(r"^\| (\S+) \| [\d.]+ ± [\d.]+ % \|", digits_table, re.M)
    assert rows and digits._method_list(["all"]) == rows
    assert digits._method_list(["saf-e,dsr", "ideal"]) == ["saf-e", "dsr", "ideal"]


@pytest.mark.parametrize("method", ["dsr", "ideal"])
def test_digits_trains_every_table_method(method):
    data = digits.load_digits_tensors()
    small = (data[0][:96], data[1][:96], data[2][:64], data[3][:64])
    result = digits.train(method, seed=0, data=small, steps=2, epochs=1, width=4)
    assert 0.0 <= result["accuracy"] <= 1.0 and "to_lif_accuracy" not in result


@pytest.mark.slow
def test_readme_swap_example_runs():
    code = re.search(r"## Swap LIFNode for SAFNode\n\n```python\n(.*?)```", README.read_text(), re.S)
    assert code, "README lost its swap example"
    namespace = {}
    exec(compile(code.group(1), "README-example", "exec"), namespace)
    assert namespace["y_seq"].shape == (8, 6, 10)
    assert torch.isfinite(namespace["loss"])
