"""What the samplers and the wrapper promise about the model's outputs and calls: a reused output
buffer is copied, and a changed batch, branch count, NaN timestep, second thread or crafted file
is a clear error."""
import collections
import json
import threading

import pytest
import torch

import fastflow as ff
from problems import noise, sharp_mixture


class OneBuffer:
    """A model that writes every output into the same tensor, as CUDA graphs do."""

    def __init__(self, flow):
        self.flow, self.out = flow, None

    def __call__(self, x, t, **extras):
        v = self.flow(x=x, t=t)
        if self.out is None or self.out.shape != v.shape:
            self.out = torch.empty_like(v)
        return self.out.copy_(v)


def test_a_model_reusing_one_output_buffer_is_refused_where_it_would_corrupt_what_is_kept():
    flow, T = sharp_mixture(), 24
    with pytest.raises(ValueError, match="reused output buffer.*clone"):
        ff.FastFlowSampler(T, calls=10).calibrate(OneBuffer(flow), noise(32, 2))
    for sampler in (ff.HeunSampler(8), ff.AdamsBashforthSampler(8), ff.ExtrapolatedEulerSampler(8, [3])):
        with pytest.raises(ValueError, match="reused output buffer"):
            sampler.sample(OneBuffer(flow), noise(8, 2))
    # Euler keeps nothing across calls: the same numbers as with fresh outputs
    assert torch.equal(ff.EulerSampler(T).sample(OneBuffer(flow), noise(8, 2)).x,
                       ff.EulerSampler(T).sample(flow, noise(8, 2)).x)
    # and the fix the message gives works: the same table as a model with fresh outputs
    fresh, cloned = ff.FastFlowSampler(T, calls=10), ff.FastFlowSampler(T, calls=10)
    fresh.calibrate(flow, noise(32, 2))
    model = OneBuffer(flow)
    cloned.calibrate(lambda **kw: model(**kw).clone(), noise(32, 2))
    assert torch.equal(fresh.table, cloned.table)


def test_the_wrapper_refuses_a_reused_output_buffer_too():
    loop = ff.EulerSampler(12)
    w = ff.SkipWrapper(OneBuffer(sharp_mixture()), calls=7)
    with pytest.raises(ValueError, match="SkipWrapper still uses .*reused output buffer"):
        w.calibrate(loop.sample, w, noise(8, 2))


def wrapped_calibrated(T=12):
    flow = sharp_mixture()
    w = ff.SkipWrapper(lambda x, t: flow(x=x, t=t), calls=7)
    w.calibrate(ff.EulerSampler(T).sample, w, noise(4, 2))
    return w


def test_a_batch_that_changes_within_a_generation_is_an_error():
    w, T = wrapped_calibrated(), 12
    x = noise(4, 2)
    skipped = w.schedule()[0]
    for k in range(skipped):  # real steps with a batch of 4
        w(x=x, t=torch.full((4,), k / T, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"input changed shape within a generation, from \(4, 2\) to \(2, 2\)"):
        w(x=x[:2], t=torch.full((2,), skipped / T, dtype=torch.float64))


def test_a_branch_count_that_changes_during_calibration_is_an_error():
    w = ff.SkipWrapper(lambda x, t: -x, calls=5)
    x = noise(4, 2)
    w(x=x, t=0.0)
    w(x=x, t=0.0)  # two guidance branches at step 0
    w(x=x, t=0.1)  # one at step 1
    with pytest.raises(ValueError, match="step 1 made 1 model calls, the steps before it 2"):
        w(x=x, t=0.2)


@pytest.mark.parametrize("t", [float("nan"), torch.full((3,), float("nan")), float("inf")])
def test_a_non_finite_timestep_is_named_as_such(t):
    w = ff.SkipWrapper(lambda x, t: -x, calls=5)
    with pytest.raises(ValueError, match="timestep must be finite"):
        w(x=noise(3, 2), t=t)


def test_namedtuple_outputs_keep_their_type_on_skipped_steps():
    Out = collections.namedtuple("Out", "sample extra")
    flow, T = sharp_mixture(), 12
    w = ff.SkipWrapper(lambda x, t: Out(flow(x=x, t=t), "kept"), calls=7)
    loop = ff.EulerSampler(T)
    w.calibrate(loop.sample, lambda x, t: w(x=x, t=t).sample, noise(4, 2))
    outs = [w(x=noise(4, 2), t=torch.full((4,), k / T, dtype=torch.float64)) for k in range(T)]
    assert all(type(o) is Out and o.extra == "kept" for o in outs) and w.model_calls == T + 0 + 7 - 0


def test_a_second_thread_is_refused_while_a_generation_is_open():
    w = wrapped_calibrated()
    w(x=noise(3, 2), t=0.0)
    errors = []

    def other():
        try:
            w(x=noise(3, 2), t=0.1)
        except RuntimeError as e:
            errors.append(str(e))
    th = threading.Thread(target=other)
    th.start()
    th.join()
    assert len(errors) == 1 and "not thread-safe" in errors[0]
    w.reset()  # the owning thread ends it: another thread may then start a generation
    th = threading.Thread(target=lambda: w(x=noise(3, 2), t=0.0))
    th.start()
    th.join()


def test_a_missing_attribute_of_a_wrapped_function_is_named():
    w = ff.SkipWrapper(lambda x, t: x, calls=5)
    with pytest.raises(AttributeError, match="has an attribute 'config'"):
        w.config


def test_a_crafted_schedule_file_cannot_make_the_loader_allocate(tmp_path):
    path = tmp_path / "s.json"
    path.write_text(json.dumps({"format": "fastflow-skip-schedule", "steps": 100_000_000, "order": 1, "skip": []}))
    with pytest.raises(ValueError, match=r"s.json: .*steps must be an int in \[2, 100000\]"):
        ff.ExtrapolatedEulerSampler.load(path)


def test_a_crafted_plan_with_repeated_steps_is_refused(tmp_path):
    w = wrapped_calibrated()
    state = w.state_dict()
    assert len(state["plan"]) == 5
    state["plan"] = [state["plan"][0]] * 2 + state["plan"][2:]  # five entries, one step twice
    with pytest.raises(ValueError, match="repeats a step"):
        ff.SkipWrapper(lambda x, t: x, calls=7).load_state_dict(state)


@pytest.mark.parametrize("call, message", [
    (lambda: ff.plan_skips(torch.zeros(10, 8, 8), 10, 6, order=0), r"order must be an int in \[1, 16\]"),
    (lambda: ff.plan_skips(torch.zeros(10, 8, 8), 10, 6, order=1.5), r"order must be an int"),
    (lambda: ff.plan_skips(torch.zeros(10, 8, 8), 10.0, 6), r"steps must be an int >= 4"),
    (lambda: ff.plan_skips(torch.zeros(2, 8, 8), 2, 2), r"steps must be an int >= 4, got 2"),
    (lambda: ff.adapt(lambda x, t: x, "sd3", scale=float("inf")), "scale"),
])
def test_plan_and_adapter_arguments_fail_in_one_line(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_a_float16_overflow_is_named_as_such_not_as_a_non_finite_model():
    x = noise(4, 2).half()
    with pytest.raises(ValueError, match=r"overflow the dtype of x \(torch.float16, largest 65504\)"):
        ff.EulerSampler(4).sample(lambda x, t: torch.full(x.shape, 1e5, dtype=torch.float32), x)
    with pytest.raises(ValueError, match="non-finite values"):
        ff.EulerSampler(4).sample(lambda x, t: torch.full(x.shape, float("nan"), dtype=torch.float32), x)


def test_a_grid_step_too_short_to_extrapolate_over_is_refused_when_the_grid_is_made():
    with pytest.raises(ValueError, match=r"step of 1e-300 at index 0 .* shorter than 1e-09 of its span"):
        ff.FastFlowSampler(times=[0.0, 1e-300, 0.5, 0.75, 1.0], calls=4)
