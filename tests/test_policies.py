"""FastFlowSampler's knobs (calls, tolerance), its three policies, freezing, and persistence."""
import json

import numpy as np
import pytest
import torch

import fastflow as ff
from problems import Counted, mixture, noise, rms, sharp_mixture


def calibrated(T=50, flow=None, seed=100, **kw):
    s = ff.FastFlowSampler(T, **kw)
    s.sample(flow or sharp_mixture(), noise(128, 2, seed=seed))
    return s


@pytest.mark.parametrize("policy", ["plan", "bandit"])
def test_a_call_budget_is_met_exactly_on_every_run(policy):
    flow = sharp_mixture()
    s = calibrated(calls=16, policy=policy)
    for seed in range(6):
        counted = Counted(flow)
        out = s.sample(counted, noise(64, 2, seed=seed))
        assert out.nfe == counted.calls == 16 and len(out.skipped) == 34
        assert out.info["calls_target"] == 16 and not out.info["calibration_run"]


def test_the_plan_is_the_dp_optimum_of_the_calibration_table_and_plays_without_host_reads():
    s = calibrated(calls=18)
    assert s.schedule() == ff.plan_skips(s.table, 50, 18, 1, ff.controller.DEFAULT_MAX_RUN)
    out = s.sample(sharp_mixture(), noise(32, 2, seed=3))
    assert out.skipped == s.schedule() and out.info["host_reads"] == 1  # the finiteness check's one read
    assert s.sample(sharp_mixture(), noise(32, 2, seed=3), check=False).info["host_reads"] == 0


def test_paper_bandit_with_a_budget_adapts_mu_until_the_mean_calls_meet_it():
    flow, K = sharp_mixture(), 20
    s = calibrated(calls=K, policy="paper", mu=1e-5)  # a start far off: almost no skip pays
    mus, nfes = [], []
    for i in range(120):
        out = s.sample(flow, noise(64, 2, seed=1000 + i))
        nfes.append(out.nfe)
        mus.append(out.info["mu"])
    assert len(set(mus)) > 10  # mu moved
    assert abs(np.mean(nfes[-40:]) - K) < 1.0, nfes[-40:]
    assert np.mean(nfes[:10]) > K + 5  # it started far off


def test_tolerance_picks_the_fewest_calls_whose_planned_error_fits():
    for tau in (0.25, 1.0, 3.0):
        s = calibrated(tolerance=tau)
        costs = ff.plan.planned_costs(s.table, 50, 1, ff.controller.DEFAULT_MAX_RUN)
        budget = tau * float(s.euler_errors.sum())
        K = s.calls_target
        assert costs[K] <= budget and (K == ff.plan.min_calls(50, 1, 6) or costs[K - 1] > budget)
        assert s.planned_error() <= tau
    ks = [calibrated(tolerance=tau).calls_target for tau in (0.1, 0.3, 1.0, 3.0)]
    assert ks == sorted(ks, reverse=True) and ks[0] > ks[-1]


def test_euler_error_estimate_is_half_the_relative_change_of_consecutive_velocities():
    flow, x0, T = mixture(), noise(64, 2), 10
    s = ff.FastFlowSampler(T)
    s.sample(flow, x0)
    traj = ff.EulerSampler(T).sample(flow, x0, trace=True).trace
    vs = [flow(x=traj[k], t=torch.full((64,), k / T, dtype=torch.float64)) for k in range(T)]
    want = [((vs[k + 1] - vs[k]).norm() / (2 * vs[k + 1].norm())).item() for k in range(T - 1)]
    assert s.euler_errors.tolist() == pytest.approx(want, rel=1e-12)


@pytest.mark.parametrize("flow", [mixture(), sharp_mixture()], ids=["mixture", "sharp"])
def test_the_default_skips_at_least_60_percent_and_stays_closer_to_euler50_than_euler_at_equal_calls(flow):
    s = ff.FastFlowSampler(50)
    s.sample(flow, noise(256, 2, seed=7))
    x0 = noise(1024, 2, seed=8)
    out = s.sample(flow, x0)
    assert out.nfe <= 20 and out.info["policy"] == "plan"
    ref = ff.EulerSampler(50).sample(flow, x0).x
    assert rms(out.x, ref) < 0.5 * rms(ff.EulerSampler(out.nfe).sample(flow, x0).x, ref)


def test_planning_bandit_learns_under_drift_what_the_stale_static_plan_cannot():
    """Calibrated on one flow, used on another: its learned schedule beats the calibration plan there."""
    used = sharp_mixture()
    truth = ff.FastFlowSampler(50, calls=16)
    truth.sample(used, noise(512, 2, seed=1))  # the table of the flow in use
    s = ff.FastFlowSampler(50, calls=16, policy="bandit")
    s.sample(mixture(), noise(128, 2, seed=100))
    stale = s.schedule()
    before = s.policy.ucb.counts.clone()
    for i in range(30):
        assert s.sample(used, noise(64, 2, seed=200 + i)).nfe == 16
    assert (s.policy.ucb.counts - before).sum() == 30 * (16 - 2)  # one observation per decision (reals 1..48)
    cost = lambda skip: ff.plan.plan_cost(truth.table, 50, skip)  # noqa: E731
    assert cost(s.schedule()) < cost(stale)
    assert cost(truth.schedule()) <= cost(s.schedule())  # the optimum on the true table bounds both


def test_freeze_reproduces_the_plan_bit_for_bit_and_round_trips_through_json(tmp_path):
    flow = sharp_mixture()
    s = calibrated(calls=15)
    frozen = s.freeze()
    assert isinstance(frozen, ff.ExtrapolatedEulerSampler) and sorted(frozen.skip) == s.schedule()
    x0 = noise(64, 2, seed=4)
    a, b = s.sample(flow, x0), frozen.sample(flow, x0)
    assert torch.equal(a.x, b.x) and a.nfe == b.nfe == 15
    path = tmp_path / "schedule.json"
    frozen.save(path)
    again = ff.ExtrapolatedEulerSampler.load(path)
    assert again.skip == frozen.skip and torch.equal(again.sample(flow, x0).x, a.x)
    path.write_bytes(b"\xff\xfe not json")
    with pytest.raises(ValueError, match="schedule.json"):
        ff.ExtrapolatedEulerSampler.load(path)
    paper = calibrated(T=20, policy="paper", mu=1e3, arms=(0, 2))
    assert sorted(paper.freeze().skip) == paper.policy.schedule()


@pytest.mark.parametrize("kw", [dict(calls=16), dict(calls=16, policy="bandit"), dict(policy="paper", calls=20),
                                dict(policy="paper")])
def test_state_round_trips_and_a_reloaded_sampler_makes_the_same_choices(kw, tmp_path):
    flow = sharp_mixture()
    a = calibrated(**kw)
    for i in range(3):
        a.sample(flow, noise(32, 2, seed=50 + i))
    path = tmp_path / "state.json"
    a.save_state(path)
    b = ff.FastFlowSampler(50, **kw)
    b.load_state(path)
    assert {**b.state_dict(), "tag": None} == {**a.state_dict(), "tag": None} == json.loads(path.read_text())
    x0 = noise(32, 2, seed=77)
    ra, rb = a.sample(flow, x0), b.sample(flow, x0)
    assert ra.skipped == rb.skipped and torch.equal(ra.x, rb.x)
    assert a.state_dict() == b.state_dict()


def test_a_state_from_another_policy_or_budget_is_refused(tmp_path):
    path = tmp_path / "state.json"
    calibrated(calls=16).save_state(path)
    with pytest.raises(ValueError, match=r"policy='plan' \(sampler has 'bandit'\)"):
        ff.FastFlowSampler(50, calls=16, policy="bandit").load_state(path)
    with pytest.raises(ValueError, match=r"calls=16 \(sampler has 18\)"):
        ff.FastFlowSampler(50, calls=18).load_state(path)
    state = json.loads(path.read_text())
    state["plan"] = state["plan"][:-1]
    with pytest.raises(ValueError, match="'plan' skips 33 steps"):
        ff.FastFlowSampler(50, calls=16).load_state_dict(state)
    state = json.loads(path.read_text())
    state["table"][5] = -1.0
    with pytest.raises(ValueError, match="'table'"):
        ff.FastFlowSampler(50, calls=16).load_state_dict(state)


@pytest.mark.parametrize("kw", [dict(policy="paper"), dict(policy="bandit", calls=16), dict(calls=16)])
def test_a_run_that_fails_part_way_leaves_the_state_as_it_was(kw):
    flow = sharp_mixture()

    class Dies:
        def __init__(self, after):
            self.after, self.calls = after, 0

        def __call__(self, x, t):
            self.calls += 1
            if self.calls > self.after:
                raise RuntimeError("model died")
            return flow(x=x, t=t)

    fresh = ff.FastFlowSampler(50, **kw)
    with pytest.raises(RuntimeError):
        fresh.sample(Dies(30), noise(16, 2))  # during calibration
    assert not fresh.calibrated and fresh.state_dict() == ff.FastFlowSampler(50, **kw).state_dict()
    s = calibrated(**kw)
    s.sample(flow, noise(16, 2, seed=1))
    before = json.dumps(s.state_dict())
    with pytest.raises(RuntimeError):
        s.sample(Dies(10), noise(16, 2, seed=2))
    assert json.dumps(s.state_dict()) == before


def test_paper_configuration_is_one_line():
    s = ff.FastFlowSampler.paper(20)
    assert s.policy_name == "paper" and not s.spec.normalize and s.tolerance is None
    s.sample(sharp_mixture(), noise(32, 2))
    pol = s.policy
    one_step = [float(s.table[k, 1, 1]) for k in range(1, 19)]
    assert pol.reward_scale == 1.0 and pol.mu == pytest.approx(max(one_step) / 20, rel=1e-12)
    assert all(b.c == 2.0 and b.kind == "ucb1" for b in pol.bandits.values())


def test_bad_input_gets_clear_errors():
    with pytest.raises(ValueError, match="not both"):
        ff.FastFlowSampler(50, calls=16, tolerance=0.5)
    for tau in (0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="tolerance must be"):
            ff.FastFlowSampler(50, tolerance=tau)
    with pytest.raises(ValueError, match=r"calls must be an int in \[3, 50\]"):
        ff.FastFlowSampler(50, calls=2)
    with pytest.raises(ValueError, match=r"calls must be an int in \[4, 50\]"):
        ff.FastFlowSampler(50, calls=51, order=2)
    with pytest.raises(ValueError, match="too few .* at least 9"):
        ff.FastFlowSampler(50, calls=8)
    with pytest.raises(ValueError, match="unknown policy"):
        ff.FastFlowSampler(50, policy="greedy")
    with pytest.raises(ValueError, match="mu is the paper bandit's"):
        ff.FastFlowSampler(50, mu=0.1, policy="plan")
    for what in ("schedule", "freeze", "planned_error"):
        with pytest.raises(ValueError, match="needs a calibration run"):
            getattr(ff.FastFlowSampler(50), what)()
    with pytest.raises(AttributeError, match="arm_counts"):  # per-step bandits exist only in the paper policy
        calibrated(calls=16).policy.arm_counts()
