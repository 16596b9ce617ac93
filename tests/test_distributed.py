"""One FastFlow policy for many batches or processes: deferred updates, rounds, and two gloo
processes that must end with the state one process reaches."""
import copy
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

import fastflow as ff
from fastflow.toy import GaussianMixtureFlow

FLOW = GaussianMixtureFlow([[-2.0, 0.0], [1.5, 1.0], [0.0, -1.5]], [0.15, 0.3, 0.2])
POLICIES = [dict(policy="paper", calls=12), dict(policy="bandit", calls=12),
            dict(policy="paper", bandit="thompson", mu=0.02)]


def noise(i, n=16):
    return torch.randn(n, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(100 + i))


def calibrated(kw):
    s = ff.FastFlowSampler(24, generator=torch.Generator().manual_seed(0) if kw.get("bandit") else None, **kw)
    s.sample(FLOW, noise(-1))  # calibration
    s.sample(FLOW, noise(-2))
    return s


@pytest.mark.parametrize("kw", POLICIES)
def test_a_deferred_update_applied_later_is_the_update_the_run_makes(kw):
    a = calibrated(kw)
    b = copy.deepcopy(a)
    before = copy.deepcopy(b.state_dict())
    ra = a.sample(FLOW, noise(0))
    with b.deferred_updates() as queued:
        rb = b.sample(FLOW, noise(0))
        assert b.state_dict() == before  # nothing learned inside the block
    assert torch.equal(ra.x, rb.x) and queued == [rb.info["update"]] and queued[0]["nfe"] == rb.nfe
    b.apply_updates(queued)
    assert b.state_dict() == a.state_dict()


def test_plan_policy_has_no_updates_and_bad_updates_change_nothing():
    s = calibrated(dict(calls=12))
    assert s.sample(FLOW, noise(0)).info["update"] is None
    p = calibrated(dict(policy="paper", calls=12))
    before = copy.deepcopy(p.state_dict())
    good = p.sample(FLOW, noise(0)).info["update"]
    after_one = copy.deepcopy(p.state_dict())
    for bad in ({"nfe": 5}, {"observations": [[1, [1], 2, float("nan")]], "nfe": 5},
                {"observations": [[99, [1], 2, 0.1]], "nfe": 5}, {"observations": "x", "nfe": 5}):
        with pytest.raises(ValueError, match="malformed FastFlow update"):
            p.apply_updates([good, bad])  # checked as a whole: the good one is not applied either
        assert p.state_dict() == after_one
    assert before != after_one
    with pytest.raises(ValueError, match="needs a calibration run"):
        with ff.FastFlowSampler(24).deferred_updates():
            pass


@pytest.mark.parametrize("kw", POLICIES)
def test_a_round_plays_one_state_for_every_batch(kw):
    s = calibrated(kw)
    start = copy.deepcopy(s)
    results = ff.distributed.sample_round(s, FLOW, [noise(0), noise(1), noise(2)])
    for i, r in enumerate(results):  # each batch as if it were the first after the round began
        alone = copy.deepcopy(start).sample(FLOW, noise(i))
        assert torch.equal(r.x, alone.x) and r.info["decisions"] == alone.info["decisions"]
    start.apply_updates([r.info["update"] for r in results])
    assert s.state_dict() == start.state_dict()


def _rank(rank, world, port, kw, rounds, queue):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    s = ff.FastFlowSampler(24, generator=torch.Generator().manual_seed(rank) if kw.get("bandit") else None, **kw)
    if rank == 0:  # only rank 0 calibrates; its generator state travels too
        s.sample(FLOW, noise(-1))
        s.sample(FLOW, noise(-2))
    ff.distributed.broadcast_state(s)
    decisions = []
    for q in range(rounds):
        with s.deferred_updates():
            r = s.sample(FLOW, noise(q * world + rank))
        decisions.append(r.info["decisions"])
        ff.distributed.share_updates(s, r.info["update"])
    queue.put((rank, s.state_dict(), decisions))
    torch.distributed.destroy_process_group()


@pytest.mark.parametrize("kw", [POLICIES[0], POLICIES[2]])
def test_two_processes_end_with_the_state_of_one_process_in_rounds(kw):
    world, rounds = 2, 3
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_rank, args=(r, world, port, kw, rounds, queue)) for r in range(world)]
    for p in procs:
        p.start()
    got = dict((rank, (state, dec)) for rank, state, dec in (queue.get(timeout=120) for _ in procs))
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    reference = calibrated(kw)
    decisions = []
    for q in range(rounds):
        results = ff.distributed.sample_round(reference, FLOW, [noise(q * world + r) for r in range(world)])
        decisions.append([r.info["decisions"] for r in results])
    for rank in range(world):
        state, dec = got[rank]
        assert state == reference.state_dict()  # exactly: the same updates in the same order
        assert dec == [d[rank] for d in decisions]
    assert got[0][1] == got[1][1]  # the same decisions at the same batch position on every rank


def test_an_update_the_policy_refuses_is_not_half_applied():
    p = calibrated(dict(policy="paper", calls=12))
    good = p.sample(FLOW, noise(0)).info["update"]
    before = copy.deepcopy(p.state_dict())
    no_bandit = {"observations": [[0, [1], 2, 0.1]], "nfe": 20}  # step 0 has no bandit (order 1 decides from 1)
    with pytest.raises(ValueError, match="the policy refused it"):
        p.apply_updates([good, no_bandit])
    assert p.state_dict() == before
