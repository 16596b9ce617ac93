"""SkipWrapper inside a real, unchanged diffusers StableDiffusion3Pipeline (tiny, random weights, offline)."""
import os
import sys

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("transformers")  # StableDiffusion3Pipeline needs it importable (no model is loaded)

import fastflow as ff  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples"))
from diffusers_sd3 import build_tiny_sd3  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


def images(pipe, prompt, steps, seed):
    out = pipe(generator=torch.Generator().manual_seed(seed), num_inference_steps=steps, guidance_scale=5.0,
               height=32, width=32, output_type="pt", **prompt).images
    return out.double()


def psnr(a, b):
    return -10 * torch.log10((a - b).square().mean()).item()


def test_wrapped_transformer_makes_the_planned_calls_in_an_unchanged_pipeline():
    T, K = 20, 9
    pipe, prompt = build_tiny_sd3()
    pipe.set_progress_bar_config(disable=True)
    transformer = pipe.transformer
    calls = []
    transformer.register_forward_hook(lambda module, args, kwargs_out: calls.append(1))
    full = images(pipe, prompt, T, seed=3)
    plain = images(pipe, prompt, K, seed=3)
    assert len(calls) == T + K
    calls.clear()

    pipe.transformer = wrapped = ff.SkipWrapper(transformer, calls=K)
    images(pipe, prompt, T, seed=4)                          # calibration generation
    assert len(calls) == T and not wrapped.calibrated
    fast = images(pipe, prompt, T, seed=3)                   # the pipeline's timesteps go back up: generation 2
    wrapped.reset()
    assert len(calls) == T + K and wrapped.model_calls == T + K
    g = wrapped.last_generation
    assert g["model_calls"] == K and g["skipped_calls"] == T - K and g["skipped_steps"] == wrapped.schedule()
    # close to the full pipeline from the same generator, and closer than the plain K-step pipeline
    assert psnr(fast, full) > 40 and psnr(fast, full) > psnr(plain, full) + 3
