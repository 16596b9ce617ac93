"""Sampler.sample: extras reach the model, whatever their names."""
import pytest
import torch

import fastflow as ff


def test_model_arguments_named_like_sample_options_go_through_model_kwargs():
    seen = []

    def velocity(x, t, trace, check):
        seen.append((trace, check))
        return -x
    x0 = torch.ones(2, 3)
    out = ff.EulerSampler(4).sample(velocity, x0, model_kwargs={"trace": "model's", "check": 7})
    assert seen == [("model's", 7)] * 4 and out.trace is None
    with pytest.raises(ValueError, match=r"sample\(\)'s 'trace' must be True or False, got str; to pass the model "
                                         r"an argument named 'trace', use model_kwargs"):
        ff.EulerSampler(4).sample(velocity, x0, trace="model's")
    with pytest.raises(ValueError, match=r"\['y'\] given both"):
        ff.EulerSampler(4).sample(lambda x, t, y: -x, x0, y=1, model_kwargs={"y": 2})
