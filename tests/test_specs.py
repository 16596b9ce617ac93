"""Policies as settings objects, the sampler registry, expected_calls on every sampler, the
calibration record and the public surface."""
import json
import math

import pytest
import torch

import fastflow as ff
from fastflow.persist import Calibration, read_json
from problems import Counted, noise, sharp_mixture


def run_twice(make, n=3):
    """States and outputs of a sampler made by ``make`` after calibration and n runs."""
    s, flow = make(), sharp_mixture()
    s.calibrate(flow, noise(64, 2, seed=1))
    xs = [s.sample(flow, noise(16, 2, seed=10 + i)).x for i in range(n)]
    return s.state_dict(), xs


@pytest.mark.parametrize("spec, flat", [
    (ff.Plan(), dict(policy="plan")),
    (ff.PlanningBandit(explore=0.3), dict(policy="bandit", explore=0.3)),
    (ff.PaperBandit(arms=(0, 1, 2), kind="thompson", prior_var=2.0, normalize=False,
                    generator=torch.Generator().manual_seed(4)),
     dict(arms=(0, 1, 2), bandit="thompson", prior_var=2.0, normalize_rewards=False,
          generator=torch.Generator().manual_seed(4))),
])
def test_a_spec_and_its_flat_keywords_build_the_same_sampler(spec, flat):
    a_state, a_x = run_twice(lambda: ff.FastFlowSampler(24, calls=12, policy=spec))
    b_state, b_x = run_twice(lambda: ff.FastFlowSampler(24, calls=12, **flat))
    assert a_state == b_state and all(torch.equal(a, b) for a, b in zip(a_x, b_x))
    assert ff.FastFlowSampler(24, calls=12, policy=spec).policy_name == spec.name


def test_settings_of_another_policy_or_beside_a_spec_are_refused_before_any_model_call():
    with pytest.raises(ValueError, match="explore belong.* 'bandit' policy, not 'paper'"):
        ff.FastFlowSampler(20, policy="paper", explore=0.3)
    with pytest.raises(ValueError, match="arms belong.* 'paper' policy, not 'plan'"):
        ff.FastFlowSampler(20, policy="plan", arms=(0, 1))
    with pytest.raises(ValueError, match="belong.* 'paper' policy, not 'bandit'"):
        ff.FastFlowSampler(20, policy="bandit", normalize_rewards=False)
    with pytest.raises(ValueError, match=r"inside the policy spec \(PaperBandit"):
        ff.FastFlowSampler(20, policy=ff.PaperBandit(), mu=0.1)
    with pytest.raises(TypeError, match="no skip policy takes them"):
        ff.FastFlowSampler(20, policy="plan", arm=(0, 1))
    with pytest.raises(ValueError, match="unknown policy"):
        ff.FastFlowSampler(20, policy=3)
    with pytest.raises(ValueError, match="explore belong"):
        ff.SkipWrapper(lambda x, t: x, policy="plan", explore=0.2)  # the wrapper, before any call
    with pytest.raises(ValueError, match="calls must be an int >= 3"):
        ff.SkipWrapper(lambda x, t: x, calls=2)
    with pytest.raises(TypeError, match="epsilon"):  # a hyperparameter UCB1 does not take
        ff.PaperBandit(kind="ucb1", epsilon=0.1)


@pytest.mark.parametrize("make, message", [
    (lambda: ff.PlanningBandit(explore=math.inf), "explore must be a finite number >= 0"),
    (lambda: ff.PlanningBandit(explore=-1.0), "explore must be"),
    (lambda: ff.PaperBandit(mu=1e308), "overflows"),
    (lambda: ff.PaperBandit(mu=-1.0), "mu must be finite and >= 0"),
    (lambda: ff.PaperBandit(arms=(0, 0, 1)), "distinct"),
    (lambda: ff.PaperBandit(arms=(0,)), "at least one skip"),
    (lambda: ff.PaperBandit(kind="greedy"), "unknown bandit"),
    (lambda: ff.FastFlowSampler(20, extrapolation_order=10 ** 100), r"int in \[1, 16\]"),
    (lambda: ff.FastFlowSampler(20, order=2, extrapolation_order=3), "alias"),
    (lambda: ff.FastFlowSampler(20, policy=ff.PaperBandit(arms=(0, 3)), max_run=2), "runs are its arms"),
])
def test_bad_spec_settings_fail_when_made(make, message):
    with pytest.raises(ValueError, match=message):
        make()


@pytest.mark.parametrize("steps, order", [(2, 1), (3, 2), (4, 4), (6, 4)])
def test_a_step_count_too_small_for_the_order_is_refused_by_the_constructor(steps, order):
    with pytest.raises(ValueError, match=f"order-{order} skipping needs at least {order + 3} steps"):
        ff.FastFlowSampler(steps, order=order)
    ff.FastFlowSampler(order + 3, order=order)  # the smallest that works


def test_the_order_alias_and_the_paper_configuration():
    s = ff.FastFlowSampler(20, extrapolation_order=2)
    assert s.order == s.extrapolation_order == 2 == ff.FastFlowSampler(20, order=2).extrapolation_order
    p = ff.FastFlowSampler.paper(20, arms=(0, 1), mu=0.2)
    assert p.spec == ff.PaperBandit(arms=(0, 1), mu=0.2, kind="ucb1", c=2.0, normalize=False)
    with pytest.raises(TypeError, match="sets c itself"):
        ff.FastFlowSampler.paper(20, c=1.0)


def build(name, steps=12):
    settings = {"flowturbo": dict(heun=3, pseudo=2), "static": dict(steps=steps, order=2),
                "fastflow": dict(steps=steps, calls=8), "best": dict(steps=steps, calls=6, refine=0)}.get(name, dict(steps=steps))
    return ff.make_sampler(name, **settings)


@pytest.mark.parametrize("name", list(ff.SAMPLERS))
def test_every_registered_sampler_makes_the_calls_it_expects(name):
    s, flow = build(name), sharp_mixture()
    if callable(getattr(s, "calibrate", None)):
        counted = Counted(flow)
        announced = s.expected_calls()  # FastFlow's calibration is one full run; the budget choice's its replays too
        assert s.calibrate(counted, noise(32, 2)).nfe == announced == counted.calls
        assert announced == (s.steps if name == "fastflow" else 2 * 12 + 3 * 12 + len(ff.choice.CANDIDATES) * 6)
    counted = Counted(flow)
    nfe = s.sample(counted, noise(32, 2)).nfe
    assert nfe == counted.calls
    assert s.expected_calls() == (None if name == "teacache" else nfe)


def test_expected_calls_by_hand():
    assert ff.HeunSampler(10).expected_calls() == 20 and ff.HeunSampler(10, correct_last=False).expected_calls() == 19
    assert ff.AdamsBashforthSampler(10, order=4).expected_calls() == 19
    assert ff.FlowTurboSampler(heun=2, pseudo=1, correct_last=False).expected_calls() == 4
    assert ff.ExtrapolatedEulerSampler(10, [3, 5]).expected_calls() == 8
    with pytest.raises(ValueError, match="unknown sampler 'dpm'"):
        ff.make_sampler("dpm", steps=10)


def test_sample_py_offers_exactly_the_registry():
    from models.sampling import build_parser
    action = next(a for a in build_parser()._actions if a.dest == "sampler")
    assert list(action.choices) == list(ff.SAMPLERS)


def test_the_calibration_record_round_trips_and_refuses_bad_tables():
    s = ff.FastFlowSampler(16, calls=9, order=2)
    s.calibrate(sharp_mixture(), noise(32, 2))
    rec = s.skips.record
    back = Calibration.from_state_dict(json.loads(json.dumps(rec.state_dict())), 16, 2, rec.max_run)
    assert torch.equal(back.table, rec.table) and torch.equal(back.euler_errors, rec.euler_errors)
    assert back.plan(9) == rec.plan(9) == s.schedule()
    assert back.fewest_calls(1e9) == int(min(c for c in range(17) if math.isfinite(rec.costs[c])))
    with pytest.raises(ValueError, match="NaN"):
        Calibration(rec.table * math.nan, rec.euler_errors, 2, rec.max_run)
    with pytest.raises(ValueError, match="shape"):
        Calibration(rec.table, rec.euler_errors, 1, rec.max_run)


def test_state_files_too_deep_or_too_long_are_refused_naming_the_file(tmp_path):
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ValueError, match="deep.json: .*nested more than 16 deep"):
        read_json(deep)
    with pytest.raises(ValueError, match="deep.json"):
        ff.FastFlowSampler(20).load_state(deep)
    digits = tmp_path / "digits.json"
    digits.write_text('{"format": "fastflow-bandit-state", "version": 2, "calls_target": ' + "9" * 5000 + "}")
    with pytest.raises(ValueError, match="digits.json"):
        ff.FastFlowSampler(20).load_state(digits)


def test_the_top_level_is_small_and_the_rest_is_in_namespaces():
    assert set(ff.__all__) == {
        "__version__", "Sampler", "EulerSampler", "HeunSampler", "AdamsBashforthSampler", "ExtrapolatedEulerSampler",
        "FastFlowSampler", "FlowTurboSampler", "TeaCacheSampler", "TaylorSeerSampler", "UniPCSampler", "extrapolated_euler",
        "SAMPLERS", "make_sampler", "SampleResult", "SkipWrapper", "adapt", "Plan", "PlanningBandit", "PaperBandit",
        "plan_skips", "grids"}
    assert all(hasattr(ff, n) for n in ff.__all__)
    assert ff.plan.min_calls and ff.policy.PlanPolicy and ff.bandit.UCB1 and ff.errors.TableRecorder
    assert ff.controller.SkipController and ff.persist.Calibration and ff.checks.int_in
    assert not hasattr(ff, "UCB1") and not hasattr(ff, "TableRecorder")


def test_the_wrapper_takes_a_spec_and_plays_what_the_sampler_plays():
    flow, T = sharp_mixture(), 20
    spec = ff.PaperBandit(arms=(0, 1, 2), mu=0.05)
    w = ff.SkipWrapper(flow, policy=spec)
    loop = ff.EulerSampler(T)
    w.calibrate(loop.sample, w, noise(64, 2, seed=1))
    s = ff.FastFlowSampler(T, policy=spec)
    s.calibrate(flow, noise(64, 2, seed=1))
    assert w.spec is spec and w.skips.max_run == 2 == s.max_run
    torch.testing.assert_close(w.skips.table, s.table, rtol=1e-9, atol=0)  # times as floats read back
    assert w.schedule() == s.schedule()
    frozen = w.freeze()  # the paper policy's schedule, played as a fixed plan
    loop.sample(frozen, noise(8, 2))
    frozen.reset()
    assert frozen.last_generation["skipped_steps"] == s.schedule()
