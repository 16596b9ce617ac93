import pytest
import torch

import fastflow as ff
from problems import Counted, mixture, noise, rms


def quadratic_in_t(x, t):
    return torch.stack([1 + 2 * t - 3 * t ** 2, 0.5 * t ** 2], dim=1).to(x)


def test_teacache_threshold_zero_is_euler_and_infinite_threshold_calls_twice():
    flow, x0 = mixture(), noise(16, 2)
    euler = ff.EulerSampler(20).sample(flow, x0)
    zero = ff.TeaCacheSampler(20, threshold=0.0).sample(flow, x0)
    assert zero.nfe == 20 and torch.equal(zero.x, euler.x)
    counted = Counted(flow)
    lazy = ff.TeaCacheSampler(20, threshold=float("inf")).sample(counted, x0)
    assert lazy.nfe == counted.calls == 2 and lazy.skipped == list(range(1, 19))


def test_teacache_skips_more_as_the_threshold_grows():
    flow, x0 = mixture(), noise(16, 2)
    nfes = [ff.TeaCacheSampler(50, threshold=d).sample(flow, x0).nfe for d in (0.02, 0.1, 0.5)]
    assert nfes[0] > nfes[1] > nfes[2] >= 2


@pytest.mark.parametrize("interval", [1, 2, 3, 5])
def test_taylorseer_call_count_and_exactness_on_quadratic_velocity(interval):
    x0 = noise(4, 2)
    s = ff.TaylorSeerSampler(30, interval=interval, order=2)
    counted = Counted(quadratic_in_t)
    res = s.sample(counted, x0)
    expected = [k for k in range(30) if k <= 2 or k % interval == 0]
    assert res.nfe == counted.calls == s.expected_calls() == len(expected)
    assert res.skipped == sorted(set(range(30)) - set(expected))
    assert torch.allclose(res.x, ff.EulerSampler(30).sample(quadratic_in_t, x0).x, atol=1e-12)


def test_static_schedule_skips_every_other_step():
    assert ff.caching.static_skip_schedule(10) == [2, 4, 6, 8]
    res = ff.extrapolated_euler(mixture(), noise(4, 2), 50, ff.caching.static_skip_schedule(50))
    assert res.nfe == 26


def test_caching_rules_stay_close_to_euler_when_mild():
    flow, x0 = mixture(), noise(64, 2)
    ref = ff.EulerSampler(50).sample(flow, x0).x
    assert rms(ff.TaylorSeerSampler(50, interval=2).sample(flow, x0).x, ref) < 0.01
    tea = ff.TeaCacheSampler(50, threshold=0.02).sample(flow, x0)
    assert tea.nfe < 50 and rms(tea.x, ref) < 0.03


def test_bad_caching_configuration():
    with pytest.raises(ValueError, match="threshold"):
        ff.TeaCacheSampler(10, threshold=-1)
    with pytest.raises(ValueError, match="interval"):
        ff.TaylorSeerSampler(10, interval=0)
