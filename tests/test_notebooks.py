"""The notebooks run top to bottom (their cells assert what their figures show), and the outputs
saved in each .ipynb are the ones its source produces now: saved outputs cannot go stale."""
import json
import os
import re

import pytest

from notebooks.build import HERE, NOTEBOOKS, execute, parse_percent

NUMBER = re.compile(r"[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?")


def last_digit(token: str) -> float:
    """The value of one unit in the last printed digit of a number as printed."""
    mantissa, _, exponent = token.lower().partition("e")
    decimals = len(mantissa.split(".")[1]) if "." in mantissa else 0
    return 10.0 ** (-decimals + (int(exponent) if exponent else 0))


def assert_same_text(saved: str, now: str, where: str) -> None:
    """Equal up to one unit in the last printed digit of each number (float rounding across
    platforms can flip it); every other character equal."""
    assert NUMBER.sub("#", saved) == NUMBER.sub("#", now), f"{where}: text differs:\n{saved}\n---\n{now}"
    for a, b in zip(NUMBER.findall(saved), NUMBER.findall(now)):
        assert abs(float(a) - float(b)) <= 1.01 * max(last_digit(a), last_digit(b)), f"{where}: {a} became {b}"


def test_number_comparison_catches_a_changed_digit():
    assert_same_text("slope -3.01, dev 1.2e-05", "slope -3.00, dev 1.3e-05", "x")
    with pytest.raises(AssertionError):
        assert_same_text("slope -3.01", "slope -2.98", "x")
    with pytest.raises(AssertionError):
        assert_same_text("calls 16", "calls 17 x", "x")


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_and_its_saved_outputs_are_current(name, one_thread):
    cells = parse_percent(os.path.join(HERE, f"{name}.py"))
    with open(os.path.join(HERE, f"{name}.ipynb")) as f:
        nb = json.load(f)
    assert [(c["cell_type"], "".join(c["source"])) for c in nb["cells"]] == \
        [(c["cell_type"], c["source"]) for c in cells], f"{name}.ipynb is not built from {name}.py: run notebooks/build.py"
    outputs = execute(cells)  # every cell's own asserts run here
    figures = 0
    for i, (cell, now) in enumerate(zip(nb["cells"], outputs)):
        if cell["cell_type"] != "code":
            continue
        saved = cell["outputs"]
        assert [o["output_type"] for o in saved] == [o["output_type"] for o in now], f"cell {i}: outputs differ"
        for s, n in zip(saved, now):
            if s["output_type"] == "stream":
                assert_same_text("".join(s["text"]), n["text"], f"{name} cell {i}")
            else:
                figures += 1
                assert s["data"]["image/png"]  # a figure, saved
    assert figures >= 5
