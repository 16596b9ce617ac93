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


def test_wrapped_transformer_in_an_unchanged_img2img_pipeline_starting_mid_way():
    """strength < 1: each generation starts at an intermediate timestep (a partial generation)."""
    from diffusers import StableDiffusion3Img2ImgPipeline
    T, strength, K = 20, 0.6, 6
    pipe, prompt = build_tiny_sd3()
    pipe = StableDiffusion3Img2ImgPipeline.from_pipe(pipe)
    pipe.set_progress_bar_config(disable=True)
    source = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    transformer, calls = pipe.transformer, []
    transformer.register_forward_hook(lambda module, args, kwargs_out: calls.append(1))

    def edit(seed, steps=T):
        return pipe(image=source, strength=strength, generator=torch.Generator().manual_seed(seed),
                    num_inference_steps=steps, guidance_scale=5.0, height=32, width=32, output_type="pt",
                    **prompt).images.double()
    full = edit(3)
    run = len(calls)
    assert run == int(T * strength)  # the pipeline's own steps from the intermediate timestep
    plain = edit(3, steps=T // 2)    # the plain pipeline with about K real steps
    calls.clear()
    pipe.transformer = wrapped = ff.SkipWrapper(transformer, calls=K)
    edit(4)                                                  # calibration generation, every step real
    assert len(calls) == run
    fast = edit(3)
    wrapped.reset()
    assert len(calls) == run + K and wrapped.last_generation["model_calls"] == K
    assert psnr(fast, full) > 45 and psnr(fast, full) > psnr(plain, full) + 10
