import math

import pytest
import torch

import fastflow as ff
from problems import Counted, gaussian, mixture, noise, rms


def exact_refiner(flow, calls=None):
    def refiner(x, t, u, **extras):
        if calls is not None:
            calls.append(t[0].item())
        return flow(x=x, t=t) - u
    return refiner


def test_pseudo_corrector_is_second_order_without_a_refiner():
    flow, x0 = gaussian(), noise(64, 3)
    exact = flow.solution(x0, 1.0)
    Ns = [8, 16, 32, 64]
    errs = [rms(ff.FlowTurboSampler(heun=1, pseudo=N - 1).sample(flow, x0).x, exact) for N in Ns]
    p = sum(math.log2(a / b) for a, b in zip(errs, errs[1:])) / 3
    assert abs(p - 2) < 0.2, (p, errs)


def heun_steps(flow, x, first, last, N):
    """Plain Heun steps i = first..last-1 on the grid i / N."""
    for i in range(first, last):
        t0 = torch.full((x.shape[0],), i / N, dtype=x.dtype)
        t1 = torch.full((x.shape[0],), (i + 1) / N, dtype=x.dtype)
        d0 = flow(x=x, t=t0)
        x = x + 0.5 / N * (d0 + flow(x=x + d0 / N, t=t1))
    return x


@pytest.mark.parametrize("a, b, c", [(1, 0, 9), (2, 3, 5), (1, 1, 1)])
def test_an_exact_refiner_reproduces_heun(a, b, c):
    flow, x0, N = mixture(), noise(32, 2), a + b + c
    out = ff.FlowTurboSampler(heun=a, pseudo=b, refine=c, refiner=exact_refiner(flow)).sample(flow, x0, trace=True)
    if b == 0:
        assert torch.allclose(out.x, ff.HeunSampler(N).sample(flow, x0).x, atol=1e-12)
    # every refiner block is an exact Heun step from the state it starts in
    assert torch.allclose(out.x, heun_steps(flow, out.trace[a + b], a + b, N, N), atol=1e-12)


@pytest.mark.parametrize("a, b, c, calls, refiner_calls", [(1, 0, 4, 2, 7), (2, 3, 0, 6, 0), (3, 0, 0, 5, 0)])
def test_euler_last_step_never_evaluates_at_t_equal_1(a, b, c, calls, refiner_calls):
    flow, x0, N = mixture(), noise(16, 2), a + b + c
    model, refiner_times = Counted(flow), []
    turbo = ff.FlowTurboSampler(heun=a, pseudo=b, refine=c, refiner=exact_refiner(flow, refiner_times),
                                correct_last=False)
    out = turbo.sample(model, x0)
    assert out.nfe == model.calls == calls and out.info["refiner_calls"] == refiner_calls
    assert max(t[0].item() for t in model.times) < 1 and all(t < 1 for t in refiner_times)
    if b == 0:  # exact refiner and Heun blocks: Heun with an Euler last step
        assert torch.allclose(out.x, ff.HeunSampler(N, correct_last=False).sample(flow, x0).x, atol=1e-12)


def test_published_form_double_counts_the_first_correction():
    flow, x0 = mixture(), noise(32, 2)
    heun = ff.HeunSampler(10).sample(flow, x0).x
    pub = ff.FlowTurboSampler(heun=1, refine=9, refiner=exact_refiner(flow), refiner_form="published").sample(flow, x0).x
    assert rms(pub, heun) > 1e-4


@pytest.mark.parametrize("a, b, c", [(2, 0, 0), (2, 5, 0), (1, 2, 3), (3, 0, 4)])
def test_call_accounting(a, b, c):
    flow = mixture()
    model, refiner_times = Counted(flow), []
    turbo = ff.FlowTurboSampler(heun=a, pseudo=b, refine=c, refiner=exact_refiner(flow, refiner_times))
    res = turbo.sample(model, noise(4, 2))
    assert res.nfe == model.calls == 2 * a + b
    assert res.info["refiner_calls"] == len(refiner_times) == 2 * c
    assert turbo.name == f"H{a}P{b}R{c}"


def test_extras_reach_the_refiner():
    seen = []

    def refiner(x, t, u, y):
        seen.append(y)
        return torch.zeros_like(x)

    ff.FlowTurboSampler(heun=1, refine=2, refiner=refiner).sample(lambda x, t, y: -x, torch.ones(2, 3), y="label")
    assert seen == ["label"] * 4


def test_bad_configurations():
    with pytest.raises(ValueError, match="need a Heun block first"):
        ff.FlowTurboSampler(heun=0, pseudo=3)
    with pytest.raises(ValueError, match="non-negative"):
        ff.FlowTurboSampler(heun=-1, pseudo=3)
    with pytest.raises(ValueError, match="needs a refiner"):
        ff.FlowTurboSampler(heun=2, refine=3)
    with pytest.raises(ValueError, match="refiner blocks need"):
        ff.FlowTurboSampler(heun=0, refine=3, refiner=lambda x, t, u: u)
    for counts in ((1, 0, 0), (0, 0, 0)):  # H0P0R0 names the blocks, not the steps they would make
        with pytest.raises(ValueError, match=rf"at least 2 blocks in all .*, got H{counts[0]}P0R0"):
            ff.FlowTurboSampler(*counts)
    with pytest.raises(ValueError, match="refiner_form"):
        ff.FlowTurboSampler(heun=1, refine=1, refiner=lambda x, t, u: u, refiner_form="other")
    with pytest.raises(ValueError, match="refiner returned"):
        ff.FlowTurboSampler(heun=1, refine=1, refiner=lambda x, t, u: u[:, :1]).sample(lambda x, t: -x, torch.ones(2, 3))
