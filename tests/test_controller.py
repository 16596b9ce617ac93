"""The skip engine shared by FastFlowSampler and SkipWrapper: explicit calibration, one state
machine, the wrapper's persistence and rollback, streaming calibration memory."""
import pytest
import torch

import fastflow as ff
from fastflow.errors import TableRecorder
from problems import Counted, noise, sharp_mixture


def test_calibrate_is_explicit_and_replaces_the_first_sample_run():
    flow, T = sharp_mixture(), 30
    s = ff.FastFlowSampler(T, calls=12)
    assert s.expected_calls() == T
    first = s.calibrate(flow, noise(64, 2, seed=1))
    assert first.nfe == T and first.info["calibration_run"] and s.calibrated and s.expected_calls() == 12
    implicit = ff.FastFlowSampler(T, calls=12)
    implicit.sample(flow, noise(64, 2, seed=1))
    assert s.schedule() == implicit.schedule() and torch.equal(s.table, implicit.table)
    counted = Counted(flow)
    assert s.sample(counted, noise(8, 2)).nfe == 12 == counted.calls
    again = s.calibrate(flow, noise(64, 2, seed=5))  # a second calibration replaces the first
    assert again.nfe == T and not torch.equal(s.table, implicit.table)
    kept = s.table.clone()
    with pytest.raises(ValueError, match="at least one sample"):
        s.calibrate(flow, noise(0, 2))
    with pytest.raises(ValueError, match="non-finite"):
        s.calibrate(lambda x, t: x * float("nan"), noise(4, 2))
    assert torch.equal(s.table, kept)  # a failed calibration keeps the earlier one


def test_the_calibration_run_reads_the_device_once_for_table_and_estimates():
    s = ff.FastFlowSampler(20, calls=10)
    assert s.calibrate(sharp_mixture(), noise(16, 2)).info["host_reads"] == 2  # the table + the finiteness check


@pytest.mark.parametrize("order, R", [(1, 6), (2, 4), (3, 2)])
def test_streaming_recorder_equals_the_table_of_every_entry_by_hand(order, R):
    T = 14
    g = torch.Generator().manual_seed(order)
    times = torch.linspace(0, 1, T + 1, dtype=torch.float64)[:-1]
    vs = [torch.randn(5, 3, generator=g, dtype=torch.float64) for _ in range(T)]
    with_grid, streamed = TableRecorder(times, order, R), TableRecorder(None, order, R, chunk=3, slack=1)
    for j, v in enumerate(vs):
        with_grid.add(j, v)
        streamed.add(j, v, t=float(times[j]))
    table = with_grid.table()
    torch.testing.assert_close(table, streamed.table(), rtol=1e-12, atol=0)  # other chunks: other rounding
    for k in range(T):  # every finite entry is the Newton extrapolation through its nodes
        for gaps in torch.cartesian_prod(*[torch.arange(1, R + 2)] * order).reshape(-1, order).tolist():
            nodes = [k - sum(gaps[:r]) for r in range(order + 1)]
            for lead in range(1, R + 2):
                j = k + lead
                if nodes[-1] < 0 or j >= T:
                    assert table[(k, *gaps, lead)] == float("inf")
                    continue
                est = ff.extrapolate.newton_extrapolate([float(times[n]) for n in nodes[::-1]], [vs[n] for n in nodes[::-1]],
                                            float(times[j]))
                want = ((est - vs[j]).norm() / vs[j].norm()).item()
                assert table[(k, *gaps, lead)].item() == pytest.approx(want, rel=1e-10)


def test_the_recorder_keeps_a_bounded_window_of_velocities():
    rec = TableRecorder(None, 1, 6, chunk=4, slack=4)
    for j in range(60):
        rec.add(j, torch.randn(3, 4), t=j / 60)
    assert rec.buffer.shape == (15 + 4, 12)  # p (R + 1) + R + 2 = 15 rows, plus the slack


def wrapped_run(wrapped, seed, T=30):
    return ff.EulerSampler(T).sample(wrapped, noise(16, 2, seed=seed))


def test_a_wrapper_state_skips_from_the_first_generation_in_a_new_process(tmp_path):
    flow, T, K = sharp_mixture(), 30, 12
    a = ff.SkipWrapper(Counted(flow), calls=K)
    a.calibrate(wrapped_run, a, 1)
    assert a.calibrated and a.model.calls == T and a.last_generation["calibration"]
    a.save_state(tmp_path / "w.json", tag="toy v1")
    b = ff.SkipWrapper(Counted(flow), calls=K)
    b.load_state(tmp_path / "w.json", tag="toy v1")
    xa, xb = wrapped_run(a, 2).x, wrapped_run(b, 2).x
    b.reset()
    assert b.model.calls == K and b.last_generation["model_calls"] == K and torch.equal(xa, xb)
    assert b.schedule() == a.schedule()
    with pytest.raises(ValueError, match="tag 'toy v1'"):
        ff.SkipWrapper(flow, calls=K).load_state(tmp_path / "w.json", tag="other")
    with pytest.raises(ValueError, match=r"calls=12 \(sampler has 14\)"):
        ff.SkipWrapper(flow, calls=14).load_state(tmp_path / "w.json", tag="toy v1")
    with pytest.raises(ValueError, match="policy='plan'"):
        ff.SkipWrapper(flow, calls=K, policy="bandit").load_state(tmp_path / "w.json", tag="toy v1")
    s = ff.FastFlowSampler(T, calls=K)
    s.save_state(tmp_path / "s.json")
    with pytest.raises(ValueError, match="not a SkipWrapper state"):
        ff.SkipWrapper(flow, calls=K).load_state(tmp_path / "s.json")


def test_a_frozen_wrapper_plays_the_schedule_and_learns_nothing():
    flow, K = sharp_mixture(), 14
    w = ff.SkipWrapper(flow, calls=K, policy="bandit")
    for seed in range(3):
        wrapped_run(w, seed)
    w.reset()
    frozen = w.freeze()
    counted = Counted(flow)
    frozen.model = counted
    wrapped_run(frozen, 7)
    frozen.reset()
    assert frozen.last_generation["skipped_steps"] == w.schedule() and counted.calls == K
    assert frozen.host_reads == 0
    by_tolerance = ff.SkipWrapper(flow, tolerance=1.0, policy="bandit")
    wrapped_run(by_tolerance, 0)
    wrapped_run(by_tolerance, 1)
    by_tolerance.reset()
    still = by_tolerance.freeze()
    wrapped_run(still, 2)
    still.reset()
    assert still.last_generation["skipped_steps"] == by_tolerance.schedule()


def test_a_refused_wrapper_update_changes_nothing_and_a_nan_generation_learns_nothing():
    flow, K = sharp_mixture(), 14
    w = ff.SkipWrapper(flow, calls=K, policy="bandit")
    wrapped_run(w, 0)
    wrapped_run(w, 1)
    w.reset()
    before = w.state_dict()
    with pytest.raises(ValueError, match="refused"):
        w.apply_updates([{"observations": [[5, [1], 2, 0.1]], "nfe": K}, {"observations": [[5, [1], 99, 0.1]],
                                                                          "nfe": K}])
    assert w.state_dict() == before
    with w.deferred_updates() as queued:
        wrapped_run(w, 2)
        w.reset()
    assert w.state_dict() == before and len(queued) == 1
    w.apply_updates(queued)
    assert w.state_dict() != before


def test_a_decreasing_wrapper_loop_is_calibrated_and_skips():
    flow, T, K = sharp_mixture(), 24, 10
    # a loop in noise level sigma = 1 - t, going from 1 down to 0, the model predicting noise - data
    model = Counted(lambda x, t: -flow(x, 1 - t))
    w = ff.SkipWrapper(model, calls=K)
    sigmas = torch.linspace(1, 0, T + 1, dtype=torch.float64)

    def loop(x):
        for s, s_next in zip(sigmas[:-1].tolist(), sigmas[1:].tolist()):
            x = x + (s_next - s) * w(x, torch.full((len(x),), s, dtype=x.dtype))
        return x
    w.calibrate(loop, noise(32, 2, seed=1))
    loop(noise(8, 2, seed=2))
    w.reset()
    assert model.calls == T + K and w.last_generation["skipped_steps"] == w.schedule()
