"""The same runs on a CUDA device as on the CPU: values, call counts, host reads, training batches.

Every test here is marked ``cuda`` and skipped on a machine without a CUDA device (conftest.py).
"""
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler

import fastflow as ff
from models.data import ImageTensorDataset
from models.training import DeviceBatches, StepBatchSampler
from problems import noise, sharp_mixture
from test_host_reads import counting_host_reads

pytestmark = pytest.mark.cuda
CUDA = torch.device("cuda")


@pytest.mark.parametrize("make", [
    lambda: ff.EulerSampler(30),
    lambda: ff.AdamsBashforthSampler(30, order=2),
    lambda: ff.HeunSampler(10),
    lambda: ff.ExtrapolatedEulerSampler(30, ff.caching.static_skip_schedule(30)),
])
def test_samplers_give_the_cpu_answer_on_cuda(make):
    flow, x0 = sharp_mixture(), noise(64, 2)
    cpu, gpu = make().sample(flow, x0), make().sample(flow, x0.to(CUDA))
    assert gpu.x.device.type == "cuda" and gpu.nfe == cpu.nfe
    torch.testing.assert_close(gpu.x.cpu(), cpu.x, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("policy, expected", [("plan", 1), ("bandit", 2)])
def test_fastflow_on_cuda_makes_its_calls_and_reads_the_device_once_or_twice(policy, expected):
    flow = sharp_mixture()
    s = ff.FastFlowSampler(30, calls=12, policy=policy)
    s.sample(flow, noise(64, 2, seed=1).float().to(CUDA))  # calibration
    with counting_host_reads() as count:
        out = s.sample(flow, noise(16, 2, seed=2).float().to(CUDA))
    assert out.nfe == 12 and out.x.device.type == "cuda"
    assert count["n"] == out.info["host_reads"] == expected


def test_non_finite_velocity_is_named_on_cuda():
    def bad_after_third(x, t):
        return x * (float("nan") if t[0] > 0.25 else 1.0)
    with pytest.raises(ValueError, match=r"call 4, t=0\.3000"):
        ff.EulerSampler(10).sample(bad_after_third, noise(4, 2).to(CUDA))


def test_device_batches_on_cuda_equal_the_cpu_loader():
    g = np.random.default_rng(0)
    dataset = ImageTensorDataset(g.integers(0, 256, (40, 1, 8, 8), dtype=np.uint8), np.arange(40) % 10)
    sampler = DistributedSampler(dataset, num_replicas=1, rank=0, shuffle=True, seed=2, drop_last=True)
    loader = DataLoader(dataset, batch_sampler=StepBatchSampler(sampler, 8, 0, 12))
    device = DeviceBatches(dataset, StepBatchSampler(sampler, 8, 0, 12), CUDA)
    for (xa, ya), (xb, yb) in zip(loader, device):
        assert xb.device.type == "cuda"
        torch.testing.assert_close(xa, xb.cpu(), rtol=0, atol=1e-6)
        assert torch.equal(ya, yb.cpu())
