"""A plan is replayed before it is trusted: calibrate(replay=True) replays the schedule and Euler
with as many calls from the calibration noise and compares both with the calibration run."""
import warnings

import pytest
import torch

import fastflow as ff
from problems import Counted, noise, sharp_mixture

pytestmark = pytest.mark.usefixtures("one_thread")


def test_the_replay_makes_2k_calls_and_measures_what_it_says():
    flow, T, K = sharp_mixture(), 30, 12
    s = ff.FastFlowSampler(T, calls=K)
    counted, x = Counted(flow), noise(64, 2, seed=1)
    result = s.calibrate(counted, x, replay=True)
    check = result.info["replay"]
    assert counted.calls == T + 2 * K and result.nfe == T and check["calls"] == K and check["trusted"]
    full = result.x
    plan = s.freeze().sample(flow, x).x
    euler = ff.EulerSampler(K).sample(flow, x).x
    assert check["plan_deviation"] == pytest.approx(float((plan - full).norm() / full.norm()), rel=1e-12)
    assert check["euler_deviation"] == pytest.approx(float((euler - full).norm() / full.norm()), rel=1e-12)
    assert "replay" not in s.calibrate(flow, x).info  # opt-in: a plain calibration makes T calls


def dit():
    from models.checkpoint import load_model
    from models.evaluation import make_noise
    model, _, _ = load_model("checkpoints/dit_mnist.pt")
    y = torch.arange(16) % 10
    return (lambda x, t: model.forward_with_cfg(x, t, y=y, cfg_scale=1.0)), make_noise(16, (1, 28, 28), seed=1)


def test_on_the_shipped_dit_the_order_2_collapse_at_10_calls_is_caught_and_order_1_is_trusted():
    velocity, x = dit()
    with torch.no_grad():
        with pytest.warns(RuntimeWarning, match="deviates .* more than Euler with 10 steps"):
            bad = ff.FastFlowSampler(50, calls=10, order=2).calibrate(velocity, x, replay=True).info["replay"]
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            good = ff.FastFlowSampler(50, calls=10).calibrate(velocity, x, replay=True).info["replay"]
    assert not bad["trusted"] and bad["plan_deviation"] > 2 * bad["euler_deviation"]
    assert good["trusted"] and good["plan_deviation"] < 0.6 * good["euler_deviation"]
