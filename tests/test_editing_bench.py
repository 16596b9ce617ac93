"""benchmarks/editing.py end to end on a few fake digits in the real idx format and a short grid:
every method's rows, calls, sweeps, paths and plot."""
import json

import numpy as np
import pytest

from benchmarks import editing
from problems import fake_digits, write_idx

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def mnist_root(tmp_path):
    return write_idx(tmp_path, "t10k", *fake_digits(30, seed=1))


def test_the_editing_benchmark_measures_every_method_at_every_budget(mnist_root, tmp_path):
    out = editing.main(editing.parse_args([
        "--data-root", str(mnist_root), "--n", "2", "--steps", "12", "--budgets", "6", "8", "--calibration-samples", "2",
        "--sweep-n", "2", "--sdedit-t0", "0.3", "0.5", "--flowedit-t0", "0.2", "--timing-samples", "1", "--rounds", "1",
        "--quiet", "--out-json", str(tmp_path / "e.json"), "--plot", str(tmp_path / "e.png")]))
    with open(tmp_path / "e.json") as f:
        assert json.load(f)["methods"].keys() == out["methods"].keys() == set(editing.SETTINGS)
    per_pass = {"reconstruct": 2, "invert": 2, "sdedit": 1, "flowedit": 2, "flowedit-fresh": 2}  # passes, or calls per step
    for name, m in out["methods"].items():
        calls = {r["sampler"]: r["calls"] for r in m["rows"]}
        assert calls == {"Euler-12": 12 * per_pass[name], "FastFlow K=6": 6 * per_pass[name],
                         "Euler-6": 6 * per_pass[name], "FastFlow K=8": 8 * per_pass[name], "Euler-8": 8 * per_pass[name]}
        assert all(0 <= r["edit_success"] <= 1 for r in m["rows"])
        assert not m["timing"]["repeated"] and any("unrepeated" in n for n in m["timing_notes"])
    assert [r["t0"] for r in out["sweeps"]["sdedit"]] == [0.3, 0.5] and len(out["sweeps"]["flowedit"]) == 1
    assert len(out["sweeps"]["flowedit-fresh"]) == 1
    # the methods that draw noise are run again on another seed: how far the edit moves with its noise
    assert set(out["reseeded"]) == {"sdedit", "flowedit", "flowedit-fresh"}
    assert all(0 < r["psnr_vs_full_steps"] < 200 for r in out["reseeded"].values())
    assert len(out["paths"]["invert"]) == 2 and len(out["paths"]["generation"][0]["error"]) == 10
    assert (tmp_path / "e.png").stat().st_size > 0


def test_fastflow_plans_a_budget_below_its_fewest_calls_on_the_finest_grid_that_admits_it():
    from fastflow.plan import min_calls
    from fastflow.specs import DEFAULT_MAX_RUN
    assert editing.plan_steps(9, 50) == editing.plan_steps(16, 50) == 50
    assert editing.plan_steps(8, 50) == 44
    for K in (5, 6, 7, 8):
        T = editing.plan_steps(K, 50)
        assert min_calls(T, 1, DEFAULT_MAX_RUN) <= K < min_calls(T + 1, 1, DEFAULT_MAX_RUN)
