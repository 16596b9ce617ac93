"""fastflow.choice.BudgetSampler: the K-call candidate with the least replayed deviation, exact call
counts, the Euler-K floor, tolerance, state round trips and bad input."""
import os

import pytest
import torch

import fastflow as ff
from fastflow.choice import BudgetSampler, deviation, describe, rebuild
from problems import Counted, noise, sharp_mixture

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def calibrated():
    flow, x0 = sharp_mixture(), noise(64, 2, 1)
    s = BudgetSampler(24, calls=10, refine=0)  # the candidates alone; the grid tuning is tested below
    before = s.expected_calls()
    counted = Counted(flow)
    first = s.sample(counted, x0)
    return flow, x0, s, before, counted.calls, first


def test_calibration_makes_the_calls_it_announces_then_k_per_run(calibrated):
    flow, x0, s, before, made, first = calibrated
    # AB2-48 reference, three plan bases of 24 calls, every candidate once with 10 calls
    assert len(ff.choice.CANDIDATES) == 15
    assert before == made == first.nfe == 2 * 24 + 3 * 24 + 15 * 10
    assert s.expected_calls() == 10 and first.info["calibration_run"] and s.choice["calibration_calls"] == made
    counted = Counted(flow)
    later = s.sample(counted, noise(32, 2, 2))
    assert counted.calls == later.nfe == 10 and not later.info["calibration_run"]


def test_the_choice_is_the_least_deviation_and_never_worse_than_euler_k(calibrated):
    flow, x0, s, _, _, first = calibrated
    devs = {n: d for n, d in s.choice["deviations"]["10"].items() if d is not None}
    assert set(devs) == set(s.candidates) and s.choice["deviation"] == min(devs.values()) <= devs["euler"]
    assert s.choice["name"] == min(devs, key=devs.get)
    ref = ff.AdamsBashforthSampler(48).sample(flow, x0).x  # the exact target's reference
    assert deviation(first.x, ref) == pytest.approx(s.choice["deviation"], rel=1e-12)
    # the replayed deviation is what the frozen choice gives on the calibration noise
    assert torch.equal(s.freeze().sample(flow, x0).x, first.x)


def test_target_euler_at_full_budget_is_euler_itself():
    flow, x0 = sharp_mixture(), noise(16, 2, 3)
    s = BudgetSampler(8, calls=8, target="euler", candidates=["ab2", "unipc"])
    s.sample(flow, x0)
    assert s.choice["name"] == "euler" and s.choice["deviation"] == 0.0


def test_tolerance_takes_the_fewest_budget_that_meets_it():
    flow, x0 = sharp_mixture(), noise(32, 2, 4)
    s = BudgetSampler(20, tolerance=0.05, candidates=["ab2", "unipc"])
    s.sample(flow, x0)
    tried = s.choice["deviations"]
    best = {int(k): min(d for d in v.values() if d is not None) for k, v in tried.items()}
    K = s.choice["calls"]
    assert best[K] <= 0.05 and all(b > 0.05 for k, b in best.items() if k < K) and max(best) == K
    with pytest.warns(RuntimeWarning, match="no candidate reaches tolerance"):
        BudgetSampler(8, tolerance=1e-12, candidates=["ab2"]).sample(flow, x0)


def test_state_round_trip_and_refusals(calibrated, tmp_path):
    flow, x0, s, _, _, _ = calibrated
    path = tmp_path / "choice.json"
    s.save_state(path)
    again = BudgetSampler(24, calls=10, refine=0)
    again.load_state(path)
    assert again.choice == s.choice and torch.equal(again.sample(flow, x0).x, s.freeze().sample(flow, x0).x)
    with pytest.raises(ValueError, match="choice was made with target='exact', this sampler has target='euler'"):
        BudgetSampler(24, calls=10, target="euler", refine=0).load_state(path)
    with pytest.raises(ValueError, match="choice was made with calls=10, this sampler has calls=12"):
        BudgetSampler(24, calls=12, refine=0).load_state(path)
    for sampler in (ff.EulerSampler(5), ff.AdamsBashforthSampler(6), ff.UniPCSampler(7, order=3), s.freeze()):
        rebuilt = rebuild(describe(sampler))
        assert type(rebuilt) is type(sampler) and torch.equal(rebuilt.sample(flow, x0).x, sampler.sample(flow, x0).x)


@pytest.mark.parametrize("kwargs, message", [
    (dict(calls=1), "calls=1: no candidate can make fewer than 2 model calls"),
    (dict(calls=30), r"calls must be an int in \[2, 24\]"),
    (dict(calls=8, tolerance=0.1), "exactly one of calls=K or tolerance="),
    (dict(), "exactly one of calls=K or tolerance="),
    (dict(tolerance=0.0), "tolerance must be > 0"),
    (dict(calls=8, target="heun"), "unknown target 'heun'"),
    (dict(calls=8, candidates=["dpm"]), "unknown candidates"),
    (dict(calls=8, refine=-1), "refine must be a non-negative int, got -1"),
    (dict(calls=8, refine=2.5), "refine must be a non-negative int, got 2.5"),
])
def test_bad_settings_are_refused_before_any_call(kwargs, message):
    with pytest.raises(ValueError, match=message):
        BudgetSampler(24, **kwargs)


def test_registry_builds_it():
    s = ff.make_sampler("best", steps=20, calls=8)
    assert isinstance(s, BudgetSampler) and s.calls == 8


def test_the_order_2_collapse_on_the_shipped_dit_is_caught():
    """At K = 10 the order-2 Euler plan's summed one-step error hides an unstable run; the replay sees it."""
    from models.checkpoint import load_model
    model, _, _ = load_model(os.path.join(REPO, "checkpoints", "dit_mnist.pt"))
    x0 = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    s = BudgetSampler(50, calls=10, target="euler", candidates=["plan-euler", "plan-euler-o2"])
    s.sample(model.forward_with_cfg, x0, y=torch.arange(4), cfg_scale=1.0)
    devs = s.choice["deviations"]["10"]
    assert devs["plan-euler-o2"] > devs["euler"] and s.choice["name"] != "plan-euler-o2"
    assert s.choice["deviation"] < devs["euler"]


def test_sample_py_runs_the_choice_at_k_calls(tmp_path):
    import json
    import subprocess
    import sys
    report = tmp_path / "r.json"
    cmd = [sys.executable, "sample.py", "--sampler", "best", "--calls", "8", "--refine", "5", "--n", "4", "--batch-size", "4",
           "--warmup-batch-size", "4", "--timing-rounds", "1", "--timing-samples", "2", "--threads", "1", "--quiet",
           "--out", str(tmp_path / "g.png"), "--report-json", str(report)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert proc.returncode == 0, proc.stderr
    row = json.loads(report.read_text())["rows"][0]
    assert row["nfe"] == 8 and row["calls_target"] == 8 and row["choice"] in ff.choice.CANDIDATES
    assert f"chose {row['choice']}" in proc.stdout


def test_plans_reach_6_calls_at_t_50_on_a_coarser_grid_and_cost_what_was_announced():
    flow, x0 = sharp_mixture(), noise(64, 2, 7)
    s = BudgetSampler(50, calls=6, candidates=["plan-euler", "plan-ab2", "plan-euler-o2"], refine=0)
    assert [s._plan_run(n, 6) for n in ("plan-euler", "plan-ab2", "plan-euler-o2")] == [
        ("euler", 1, 30), ("ab2", 1, 30), ("euler", 2, 24)]
    assert s._plan_run("plan-euler", 8) == ("euler", 1, 44) and s._plan_run("plan-euler", 9) == ("euler", 1, 50)
    before = s.expected_calls()
    counted = Counted(flow)
    s.sample(counted, x0)
    # AB2-100 reference, plan calibration runs of 30, 30 and 24 steps, four candidates of 6 calls
    assert before == counted.calls == 100 + 30 + 30 + 24 + 4 * 6
    devs = s.choice["deviations"]["6"]
    assert all(devs[n] is not None for n in ("plan-euler", "plan-ab2", "plan-euler-o2"))
    chosen = s.freeze()
    assert chosen.expected_calls() == 6
    if s.choice["name"].startswith("plan"):
        assert chosen.steps < 50
    counted = Counted(flow)
    assert s.sample(counted, noise(8, 2, 8)).nfe == counted.calls == 6


def test_euler_grids_are_cut_along_euler_t_at_no_extra_cost_when_the_euler_plan_runs_it():
    flow, x0 = sharp_mixture(), noise(32, 2, 9)
    alone = BudgetSampler(20, calls=8, candidates=["euler-grid", "unipc-eulergrid"], refine=0)
    with_plan = BudgetSampler(20, calls=8, candidates=["euler-grid", "plan-euler"], refine=0)
    for s, expected in ((alone, 40 + 20 + 3 * 8), (with_plan, 40 + 20 + 3 * 8)):
        counted = Counted(flow)
        assert s.expected_calls() == expected
        s.sample(counted, x0)
        assert counted.calls == expected
    # the Euler grid is the one the Euler-20 run gives, whichever run made it
    from fastflow.optgrid import optimal_times
    run = ff.EulerSampler(20).sample(flow, x0, trace=True)
    grid = optimal_times(ff.EulerSampler(20).times.tolist(), run.trace, 8)
    ab2 = ff.AdamsBashforthSampler(40)
    grids = alone._grid_tables(ab2.times.tolist(), ab2.sample(flow, x0, trace=True).trace, ["euler"], [], run.trace)
    assert set(grids) == {"T"}
    cand = alone._build("euler-grid", 8, grids, {})
    assert torch.allclose(cand.times, grid)


def test_fine_grids_are_cut_along_all_2t_reference_states_at_no_extra_cost():
    flow, x0 = sharp_mixture(), noise(32, 2, 11)
    s = BudgetSampler(12, calls=6, candidates=["ab2-finegrid", "unipc-finegrid", "unipc3-finegrid"], refine=0)
    counted = Counted(flow)
    # AB2-24 reference, the three fine candidates and the Euler-6 floor
    assert s.expected_calls() == 24 + 4 * 6
    s.sample(counted, x0)
    assert counted.calls == 24 + 4 * 6
    # the grid is the optimal cut of the AB2-24 reference's own 24-step grid, not of every other state
    from fastflow.optgrid import optimal_grid, step_errors, trajectory_velocities
    ref = ff.AdamsBashforthSampler(24)
    times = ref.times.tolist()
    trace = ref.sample(flow, x0, trace=True).trace
    errors = step_errors(times, trace, "unipc", velocities=trajectory_velocities(times, trace))
    expected = torch.as_tensor(times, dtype=torch.float64)[optimal_grid(errors, 6)]
    grids = s._grid_tables(times, trace, [], ["unipc"], None)
    assert torch.allclose(s._build("unipc-finegrid", 6, grids, {}).times, expected)
    assert torch.allclose(s._build("unipc3-finegrid", 6, grids, {}).times, expected)


@pytest.mark.parametrize("kwargs", [dict(steps=12, target="euler"), dict(steps=51, target="exact")])
def test_fine_grids_are_left_out_for_the_euler_target_and_past_100_reference_steps(kwargs):
    flow, x0 = sharp_mixture(), noise(8, 2, 12)
    s = BudgetSampler(calls=6, candidates=["ab2", "ab2-finegrid"], refine=0, **kwargs)
    reference = kwargs["steps"] * (2 if kwargs["target"] == "exact" else 1)
    counted = Counted(flow)
    assert s.expected_calls() == reference + 2 * 6  # AB2-6 and the Euler-6 floor
    s.sample(counted, x0)
    assert counted.calls == reference + 2 * 6 and s.choice["deviations"]["6"]["ab2-finegrid"] is None


@pytest.fixture(scope="module")
def tuned():
    """The same choice as ``calibrated``, its winner's grid then tuned by replays."""
    flow, x0 = sharp_mixture(), noise(64, 2, 1)
    s = BudgetSampler(24, calls=10)
    assert s.expected_calls() is None  # the tuning's replays depend on what it finds
    counted = Counted(flow)
    first = s.sample(counted, x0)
    return flow, x0, s, counted.calls, first


def test_the_winners_grid_is_tuned_by_replays_that_are_counted(calibrated, tuned):
    flow, x0, plain, _, _, _ = calibrated
    _, _, s, made, first = tuned
    tuning = s.choice["refined"]
    assert s.refine == ff.choice.REFINE_EVALS and plain.choice["refined"] is None
    assert s.choice["name"] == plain.choice["name"] and tuning["deviation_before"] == plain.choice["deviation"]
    # every replay is K calls on the calibration batch, on top of what the choice alone made
    assert 1 <= tuning["replays"] <= s.refine and tuning["calls"] == 10 * tuning["replays"]
    assert made == first.nfe == s.choice["calibration_calls"] == plain.choice["calibration_calls"] + tuning["calls"]
    # the tuned grid is measured, not planned: its replay is the deviation reported, and lower
    ref = ff.AdamsBashforthSampler(48).sample(flow, x0).x
    assert deviation(first.x, ref) == pytest.approx(s.choice["deviation"], rel=1e-12)
    assert s.choice["deviation"] < tuning["deviation_before"]
    assert torch.equal(s.freeze().sample(flow, x0).x, first.x)
    old, new = plain.freeze().times, s.freeze().times
    assert type(s.freeze()) is type(plain.freeze()) and len(new) == len(old) == 11
    assert new[0] == old[0] and new[-1] == old[-1] and bool((new[1:] > new[:-1]).all()) and not torch.equal(new, old)
    counted = Counted(flow)
    assert s.sample(counted, noise(8, 2, 2)).nfe == counted.calls == 10


def test_a_tuned_choice_round_trips_and_is_refused_by_other_tuning_settings(tuned, tmp_path):
    flow, x0, s, _, _ = tuned
    path = tmp_path / "tuned.json"
    s.save_state(path)
    again = BudgetSampler(24, calls=10)
    again.load_state(path)
    assert torch.equal(again.freeze().times, s.freeze().times) and again.choice == s.choice
    with pytest.raises(ValueError, match="choice was made with refine=100, this sampler has refine=0"):
        BudgetSampler(24, calls=10, refine=0).load_state(path)


def test_skip_plans_are_not_tuned():
    flow, x0 = sharp_mixture(), noise(32, 2, 5)
    s = BudgetSampler(24, calls=16, target="euler", candidates=["plan-euler"])
    counted = Counted(flow)
    s.sample(counted, x0)
    assert s.choice["name"] == "plan-euler"  # against Euler-24 the plan beats Euler-16 here by 7x
    # Euler-24 reference, the plan's Euler-24 calibration run, two replays of 16 calls: nothing more
    assert s.choice["refined"] is None and counted.calls == 24 + 24 + 2 * 16


def test_a_tuning_that_finds_nothing_still_counts_its_replays():
    """Euler-8 against Euler-8 deviates 0: no move can help, the replays are still paid and reported."""
    flow, x0 = sharp_mixture(), noise(16, 2, 3)
    s = BudgetSampler(8, calls=8, target="euler", candidates=["ab2"], refine=5)
    counted = Counted(flow)
    s.sample(counted, x0)
    tuning = s.choice["refined"]
    assert s.choice["name"] == "euler" and s.choice["deviation"] == tuning["deviation_before"] == 0.0
    assert tuning["replays"] == 5 and counted.calls == 8 + 2 * 8 + 5 * 8 == s.choice["calibration_calls"]
    assert torch.equal(s.freeze().times, ff.EulerSampler(8).times)
