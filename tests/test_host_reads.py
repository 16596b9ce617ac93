"""The sampling loop never waits on the device: host reads per run, counted on the CPU path."""
import contextlib

import pytest
import torch

import fastflow as ff
from problems import noise, sharp_mixture


@contextlib.contextmanager
def counting_host_reads():
    """Count the tensor-to-host conversions (item, tolist, bool, float, int) of run tensors made inside the
    block. The runs below are float32; the library's own bookkeeping (error tables, DP arrays) lives in
    float64 and int64 tensors on the CPU whatever the device, so conversions of those are not device reads."""
    count = {"n": 0}
    originals = {name: getattr(torch.Tensor, name) for name in ("item", "tolist", "__bool__", "__float__", "__int__")}

    def counted(fn):
        def wrapper(self, *args, **kwargs):
            count["n"] += self.dtype not in (torch.float64, torch.int64)
            return fn(self, *args, **kwargs)
        return wrapper

    try:
        for name, fn in originals.items():
            setattr(torch.Tensor, name, counted(fn))
        yield count
    finally:
        for name, fn in originals.items():
            setattr(torch.Tensor, name, fn)


def reads(sampler, flow, x0, **kw):
    x0 = x0.float()
    with counting_host_reads() as count:
        out = sampler.sample(flow, x0, **kw)
    return count["n"], out


@pytest.mark.parametrize("make, expected", [
    (lambda: ff.EulerSampler(30), 1),
    (lambda: ff.HeunSampler(10), 1),
    (lambda: ff.AdamsBashforthSampler(30, order=2), 1),
    (lambda: ff.ExtrapolatedEulerSampler(30, ff.caching.static_skip_schedule(30)), 1),
    (lambda: ff.TaylorSeerSampler(30), 1),
    (lambda: ff.TeaCacheSampler(30, threshold=0.1), 1 + 29),  # its rule needs a host number per step
])
def test_plain_samplers_read_the_device_once_per_run(make, expected):
    n, out = reads(make(), sharp_mixture(), noise(16, 2))
    assert n == expected == out.info["host_reads"]
    n, out = reads(make(), sharp_mixture(), noise(16, 2), check=False)
    assert n == expected - 1


@pytest.mark.parametrize("policy, expected", [("plan", 1), ("bandit", 2), ("paper", 2)])
def test_fastflow_reads_at_most_twice_per_run_and_the_plan_once(policy, expected):
    flow = sharp_mixture()
    s = ff.FastFlowSampler(30, calls=12, policy=policy)
    s.sample(flow, noise(64, 2, seed=1).float())  # calibration
    n, out = reads(s, flow, noise(16, 2, seed=2))
    assert out.nfe == 12 or policy == "paper"
    assert n == out.info["host_reads"] == expected  # the run's tensors are read at its end only


def test_a_non_finite_velocity_is_still_named_by_its_first_step():
    def bad_after_third(x, t):
        return x * (float("nan") if t[0] > 0.25 else 1.0)
    with pytest.raises(ValueError, match=r"non-finite values \(call 4, t=0\.3000\)"):
        ff.EulerSampler(10).sample(bad_after_third, noise(4, 2))
    s = ff.FastFlowSampler(10, policy="paper")
    with pytest.raises(ValueError, match=r"call 4, t=0\.3000"):
        s.sample(bad_after_third, noise(4, 2))
    assert not s.calibrated  # the failed calibration left nothing behind


class Counting(torch.Tensor):
    """A tensor that counts its conversions to host values; everything computed from it is one too."""

    reads = 0
    METHODS = {"item", "tolist", "__bool__", "__float__", "__int__", "__index__", "numpy", "cpu"}

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        if getattr(func, "__name__", None) in cls.METHODS:
            cls.reads += 1
        return super().__torch_function__(func, types, args, kwargs or {})


def counting_velocity(flow):
    """The flow's velocity, returned as a ``Counting`` tensor: every model-derived tensor counts its reads."""
    return lambda x, t: flow(x=x.as_subclass(torch.Tensor), t=t.as_subclass(torch.Tensor)).as_subclass(Counting)


SAMPLERS = {
    "euler": lambda: ff.EulerSampler(20),
    "heun": lambda: ff.HeunSampler(10),
    "ab2": lambda: ff.AdamsBashforthSampler(20, order=2),
    "ab3": lambda: ff.AdamsBashforthSampler(20, order=3),
    "fixed": lambda: ff.ExtrapolatedEulerSampler(20, ff.caching.static_skip_schedule(20)),
    "taylorseer": lambda: ff.TaylorSeerSampler(20),
    "teacache": lambda: ff.TeaCacheSampler(20, threshold=0.1),
    "flowturbo": lambda: ff.FlowTurboSampler(heun=3, pseudo=2),
    "plan": lambda: ff.FastFlowSampler(20, calls=10),
    "plan-ab2": lambda: ff.FastFlowSampler(20, calls=10, base="ab2"),
    "bandit": lambda: ff.FastFlowSampler(20, calls=10, policy="bandit"),
    "paper": lambda: ff.FastFlowSampler(20, policy="paper", calls=10),
    "paper-thompson": lambda: ff.FastFlowSampler(20, policy="paper", bandit="thompson",
                                                 generator=torch.Generator().manual_seed(0)),
}


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_reported_host_reads_are_the_reads_of_model_derived_tensors(name):
    """Counted by the tensors themselves: calibration, every later run and every policy."""
    sampler, velocity = SAMPLERS[name](), counting_velocity(sharp_mixture())
    for seed in range(3):  # FastFlow: the calibration run, then two runs with the policy
        Counting.reads = 0
        out = sampler.sample(velocity, noise(8, 2, seed=seed).float())
        assert Counting.reads == out.info["host_reads"], (seed, Counting.reads, out.info)


def test_the_wrapper_counts_its_reads_of_model_outputs():
    velocity = counting_velocity(sharp_mixture())
    for policy in ("plan", "bandit", "paper"):
        w = ff.SkipWrapper(velocity, calls=10, policy=policy)
        Counting.reads = 0
        for seed in range(3):
            ff.EulerSampler(20).sample(w, noise(8, 2, seed=seed).float(), check=False)
        w.reset()
        assert Counting.reads == w.host_reads, policy
