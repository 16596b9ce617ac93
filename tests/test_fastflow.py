import json

import numpy as np
import pytest
import torch

import fastflow as ff
from problems import Counted, gaussian, mixture, noise, rms, sharp_mixture


# -- fixed schedules ------------------------------------------------------------------

@pytest.mark.parametrize("skip", [[], [2], [2, 3, 4], [5, 7, 9, 11, 13, 15], list(range(3, 20, 2))])
def test_a_run_with_skip_set_S_makes_T_minus_S_calls(skip):
    counted = Counted(mixture())
    res = ff.extrapolated_euler(counted, noise(8, 2), 20, skip)
    assert res.nfe == counted.calls == 20 - len(skip)
    assert res.skipped == sorted(skip)
    # the model was never called at a skipped time
    called = {round(t[0].item() * 20) for t in counted.times}
    assert called == set(range(20)) - set(skip)


def test_no_skips_is_plain_euler_and_linear_velocity_is_extrapolated_exactly():
    flow, x0 = mixture(), noise(8, 2)
    assert torch.equal(ff.extrapolated_euler(flow, x0, 10, []).x, ff.EulerSampler(10).sample(flow, x0).x)

    def affine_in_t(x, t):  # v(t) = a + b t does not depend on x: order 1 is exact
        return torch.stack([1 + 2 * t, -3 + 0.5 * t], dim=1).to(x)

    full = ff.EulerSampler(16).sample(affine_in_t, x0).x
    skipped = ff.extrapolated_euler(affine_in_t, x0, 16, [2, 3, 4, 8, 9, 15]).x
    assert torch.allclose(full, skipped, atol=1e-13)


def theorem_deviation(flow, x0, T, skip, order=1):
    full = ff.EulerSampler(T).sample(flow, x0).x
    return rms(ff.extrapolated_euler(flow, x0, T, skip, order=order).x, full)


def test_deviation_from_full_euler_falls_like_T_to_the_minus_3_at_fixed_S():
    """Theorem: ||x_T^S - x_T|| = O(|S| / T^3) for order-1 extrapolation."""
    flow, x0 = mixture(), noise(256, 2)
    Ts = [50, 100, 200, 400]
    devs = [theorem_deviation(flow, x0, T, [round(f * T) for f in (0.2, 0.4, 0.6, 0.8)]) for T in Ts]
    slope = np.polyfit(np.log(Ts), np.log(devs), 1)[0]
    assert abs(slope + 3) < 0.2, (slope, devs)


def test_deviation_grows_linearly_with_the_number_of_skips_at_fixed_T():
    flow, x0, T = mixture(), noise(256, 2), 400
    sizes = [1, 2, 4, 8, 16]
    devs = [theorem_deviation(flow, x0, T, [160 + 4 * i for i in range(n)]) for n in sizes]
    slope = np.polyfit(np.log(sizes), np.log(devs), 1)[0]
    assert abs(slope - 1) < 0.15, (slope, devs)


def test_order_two_extrapolation_is_one_order_better():
    flow, x0 = mixture(), noise(256, 2)
    Ts = [50, 100, 200, 400]
    devs = [theorem_deviation(flow, x0, T, [round(f * T) for f in (0.2, 0.4, 0.6, 0.8)], order=2) for T in Ts]
    slope = np.polyfit(np.log(Ts), np.log(devs), 1)[0]
    assert slope < -3.5, (slope, devs)


# -- the bandit-driven sampler --------------------------------------------------------

def warm(sampler, flow, batches, dim=2, seed=100):
    for i in range(batches):
        sampler.sample(flow, noise(128, dim, seed=seed + i))


def test_first_call_is_full_then_skips_learned_cheaply_and_close_to_euler():
    flow = sharp_mixture()
    sampler = ff.FastFlowSampler(50, mu=0.1)
    first = Counted(flow)
    res = sampler.sample(first, noise(128, 2, seed=99))
    assert res.nfe == first.calls == 50 and res.info["calibration_run"]
    warm(sampler, flow, 40)
    nfes, devs, euler_devs = [], [], []
    for seed in range(5):
        x0 = noise(256, 2, seed=seed)
        counted = Counted(flow)
        out = sampler.sample(counted, x0)
        assert out.nfe == counted.calls == 50 - len(out.skipped)
        ref = ff.EulerSampler(50).sample(flow, x0).x
        nfes.append(out.nfe)
        devs.append(rms(out.x, ref))
        euler_devs.append(rms(ff.EulerSampler(out.nfe).sample(flow, x0).x, ref))
    assert np.mean(nfes) < 50 / 2.6 - 2, nfes
    # the data spread is ~2: samples stay close to Euler-50, much closer than Euler at the same NFE
    assert np.mean(devs) < 0.06, devs
    assert all(d < 0.6 * e for d, e in zip(devs, euler_devs)), (devs, euler_devs)


def test_calibrated_mu_and_bandit_initialisation():
    flow = sharp_mixture()
    sampler = ff.FastFlowSampler(20, arms=(0, 1, 2), policy="paper")
    assert sampler.mu is None and not sampler.calibrated
    sampler.sample(flow, noise(64, 2))
    assert sampler.calibrated and sampler.mu > 0
    # every bandit got one reward per arm that fits before the last step
    for k, counts in sampler.policy.arm_counts().items():
        assert counts == [1 if k + m + 1 <= 19 else 0 for m in (0, 1, 2)]
    # mu is the largest one-step extrapolation MSE over the run, divided by T
    x0 = noise(64, 2)
    traj = ff.EulerSampler(20).sample(flow, x0, trace=True).trace
    assert len(traj) == 21


def test_mu_calibration_formula():
    flow, x0, T = sharp_mixture(), noise(64, 2), 12
    sampler = ff.FastFlowSampler.paper(T, arms=(0, 1))
    sampler.sample(flow, x0)
    traj = ff.EulerSampler(T).sample(flow, x0, trace=True).trace
    v = [flow(x=traj[k], t=torch.full((64,), k / T, dtype=torch.float64)) for k in range(T)]
    # relative one-step-ahead errors ||v_hat - v|| / ||v|| over the batch
    errs = [((ff.extrapolate.newton_extrapolate([(k - 2) / T, (k - 1) / T], [v[k - 2], v[k - 1]], k / T) - v[k]).norm()
             / v[k].norm()).item() for k in range(2, T)]
    assert sampler.mu == pytest.approx(max(errs) / T, rel=1e-12)


def test_results_are_deterministic_for_a_fixed_seed():
    flow = sharp_mixture()

    def run(kind):
        sampler = ff.FastFlowSampler(30, mu=0.05, bandit=kind, generator=torch.Generator().manual_seed(3))
        warm(sampler, flow, 5)
        return sampler.sample(flow, noise(64, 2, seed=1))

    for kind in ff.bandit.BANDITS:
        a, b = run(kind), run(kind)
        assert torch.equal(a.x, b.x) and a.skipped == b.skipped


def test_state_persists_across_calls_and_round_trips_through_a_file(tmp_path):
    flow = sharp_mixture()
    a = ff.FastFlowSampler(30, mu=0.05)
    warm(a, flow, 6)
    path = tmp_path / "bandit.json"
    a.save_state(path)
    b = ff.FastFlowSampler(30, mu=0.05)
    b.load_state(path)
    assert {**b.state_dict(), "tag": None} == {**a.state_dict(), "tag": None} == json.loads(path.read_text())
    x0 = noise(64, 2, seed=5)
    ra, rb = a.sample(flow, x0), b.sample(flow, x0)
    assert not rb.info["calibration_run"] and torch.equal(ra.x, rb.x) and ra.skipped == rb.skipped
    before = sum(sum(c) for c in a.policy.arm_counts().values())
    a.sample(flow, x0)
    assert sum(sum(c) for c in a.policy.arm_counts().values()) > before  # it keeps learning


def test_a_state_file_for_another_sampler_or_a_corrupt_one_is_refused(tmp_path):
    a = ff.FastFlowSampler(30, mu=0.05)
    a.sample(sharp_mixture(), noise(16, 2))
    path = tmp_path / "state.json"
    a.save_state(path)
    with pytest.raises(ValueError, match=r"steps=30 \(sampler has 40\)"):
        ff.FastFlowSampler(40, mu=0.05).load_state(path)
    with pytest.raises(ValueError, match=r"arms=\[0, 1, 2, 3, 4\] \(sampler has \[0, 1, 2\]\)"):
        ff.FastFlowSampler(30, arms=(0, 1, 2), mu=0.05).load_state(path)
    with pytest.raises(ValueError, match="mu=0.05"):
        ff.FastFlowSampler(30, mu=0.2).load_state(path)
    path.write_text(path.read_text()[:-40])
    with pytest.raises(ValueError, match="corrupt FastFlow state"):
        ff.FastFlowSampler(30).load_state(path)
    path.write_text(json.dumps({"format": "fastflow-bandit-state", "version": 1}))
    with pytest.raises(ValueError, match="version 1 is not supported"):
        ff.FastFlowSampler(30).load_state(path)
    path.write_text(json.dumps({"format": "fastflow-bandit-state", "version": 2}))
    with pytest.raises(ValueError, match="does not match"):
        ff.FastFlowSampler(30).load_state(path)
    broken = a.state_dict()
    broken["bandits"]["20"]["counts"] = [1]
    b = ff.FastFlowSampler(30, mu=0.05)
    before = b.state_dict()
    with pytest.raises(ValueError, match="'counts' must list 5 numbers"):
        b.load_state_dict(broken)
    assert b.state_dict() == before  # a bad entry leaves the sampler untouched


def test_save_is_atomic(tmp_path, monkeypatch):
    a = ff.FastFlowSampler(10, mu=0.05)
    path = tmp_path / "state.json"
    a.save_state(path)
    good = path.read_text()

    def broken_dump(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(json, "dump", broken_dump)
    with pytest.raises(OSError):
        a.save_state(path)
    assert path.read_text() == good and [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_bad_configuration_gets_clear_errors():
    with pytest.raises(ValueError, match="steps must be >= 2"):
        ff.FastFlowSampler(1)
    with pytest.raises(ValueError, match="non-negative"):
        ff.FastFlowSampler(10, arms=(0, -1))
    with pytest.raises(ValueError, match="distinct"):
        ff.FastFlowSampler(10, arms=(0, 1, 1))
    with pytest.raises(ValueError, match="unknown bandit"):
        ff.FastFlowSampler(10, bandit="exp3")
    with pytest.raises(ValueError, match="mu must be"):
        ff.FastFlowSampler(10, mu=-1.0)
    with pytest.raises(ValueError, match="order"):
        ff.FastFlowSampler(10, order=0)
    with pytest.raises(ValueError, match="cannot skip step 0"):
        ff.extrapolated_euler(gaussian(), noise(2, 3), 10, [0])
    with pytest.raises(ValueError, match="cannot skip step 1"):
        ff.extrapolated_euler(gaussian(), noise(2, 3), 10, [1])
    with pytest.raises(ValueError, match="cannot skip step 2: order-2 .* only 2 precede"):
        ff.extrapolated_euler(gaussian(), noise(2, 3), 10, [2], order=2)
    with pytest.raises(ValueError, match=r"ints in \[0, 9\]"):
        ff.extrapolated_euler(gaussian(), noise(2, 3), 10, [10])
    with pytest.raises(ValueError, match="non-finite"):
        ff.FastFlowSampler(10).sample(lambda x, t: x * float("inf"), noise(2, 3))


def test_greedy_schedule_follows_the_best_mean_arms():
    flow = sharp_mixture()
    never = ff.FastFlowSampler(20, arms=(0, 2), mu=0.0)
    assert never.policy is None  # not calibrated yet: no schedule
    never.sample(flow, noise(32, 2))
    assert never.policy.schedule() == []  # mu = 0: every skip only costs
    eager = ff.FastFlowSampler(20, arms=(0, 2), mu=1e3)
    eager.sample(flow, noise(32, 2))
    # a huge mu makes arm 2 best wherever it fits: decide at 1, skip 2-3, real 4, skip 5-6, ...
    assert eager.policy.schedule() == [2, 3, 5, 6, 8, 9, 11, 12, 14, 15, 17, 18]


def test_a_saved_state_is_tied_to_its_tag(tmp_path):
    """A state is one model's error table at one setting: a tag the sampler cannot check by itself."""
    flow = ff.toy.GaussianMixtureFlow([[2.0, 0.0], [-2.0, 1.0]], [0.4, 0.5])
    s = ff.FastFlowSampler(20, calls=8)
    s.sample(flow, torch.randn(64, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0)))
    path = tmp_path / "s.json"
    s.save_state(path, tag="toy cfg=1.5")
    again = ff.FastFlowSampler(20, calls=8)
    for wrong in (None, "toy cfg=2"):
        with pytest.raises(ValueError, match=rf"s.json: state was saved with tag 'toy cfg=1.5', this sampler is "
                                             rf"loading it with tag {wrong!r}"):
            again.load_state(path, tag=wrong)
        assert not again.calibrated
    again.load_state(path, tag="toy cfg=1.5")
    assert again.state_dict() == s.state_dict()
    with pytest.raises(ValueError, match="tag must be a string"):
        s.save_state(path, tag=1.5)
