"""FastFlow inside an unchanged diffusers Stable Diffusion 3 pipeline: wrap the transformer, keep the loop.

    pip install "fastflow[bench]" transformers     # diffusers, transformers (for the text encoders)
    python examples/diffusers_sd3.py --model-id stabilityai/stable-diffusion-3-medium-diffusers \\
        --prompt "a photo of a red fox in the snow" --steps 28 --calls 12 --device cuda
    python examples/diffusers_sd3.py --tiny        # offline: a tiny SD3 with random weights

What it does, all with one seed:
1. the full pipeline (``--steps`` transformer calls per image, two guidance branches batched);
2. the same pipeline with ``pipe.transformer = fastflow.SkipWrapper(transformer, calls=K)``: its first
   generation calibrates (all steps real), the second makes K real steps and extrapolates the rest;
3. the pipeline with K steps, the plain alternative at equal cost.
It prints the transformer calls, wall time and the distance of (2) and (3) from (1), and saves the
three images side by side.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import torch

if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import fastflow as ff  # noqa: E402


def build_tiny_sd3(seed: int = 0):
    """A tiny SD3 pipeline with random weights, built from configs (no download, no text encoder),
    and prompt embeddings for it: (pipe, dict of prompt_embeds / pooled / negative ones)."""
    from diffusers import (AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel,
                           StableDiffusion3Pipeline)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer = SD3Transformer2DModel(
            sample_size=32, patch_size=1, in_channels=4, num_layers=1, attention_head_dim=8, num_attention_heads=4,
            caption_projection_dim=32, joint_attention_dim=32, pooled_projection_dim=64, out_channels=4)
        vae = AutoencoderKL(sample_size=32, in_channels=3, out_channels=3, block_out_channels=(4,), layers_per_block=1,
                            latent_channels=4, norm_num_groups=1, use_quant_conv=False, use_post_quant_conv=False,
                            shift_factor=0.0609, scaling_factor=1.5035)
    pipe = StableDiffusion3Pipeline(transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
                                    vae=vae, text_encoder=None, tokenizer=None, text_encoder_2=None, tokenizer_2=None,
                                    text_encoder_3=None, tokenizer_3=None)
    g = torch.Generator().manual_seed(seed + 1)
    prompt = {"prompt_embeds": torch.randn(1, 7, 32, generator=g), "pooled_prompt_embeds": torch.randn(1, 64, generator=g),
              "negative_prompt_embeds": torch.randn(1, 7, 32, generator=g),
              "negative_pooled_prompt_embeds": torch.randn(1, 64, generator=g)}
    return pipe, prompt


def run(pipe, seed: int, steps: int, device: torch.device, **kwargs):
    """One image as float32 numpy (H, W, 3) in [0, 1], and the wall time."""
    start = time.perf_counter()
    image = pipe(generator=torch.Generator(device="cpu").manual_seed(seed), num_inference_steps=steps,
                 output_type="np", **kwargs).images[0]
    if device.type == "cuda":
        torch.cuda.synchronize()
    return image, time.perf_counter() - start


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-id", default="stabilityai/stable-diffusion-3-medium-diffusers",
                   help="a diffusers SD3 model id or folder (default: %(default)s)")
    p.add_argument("--tiny", action="store_true", help="use a tiny random SD3 built offline instead of --model-id")
    p.add_argument("--prompt", default="a photo of a red fox in the snow")
    p.add_argument("--steps", type=int, default=28, help="the pipeline's steps (default: 28)")
    p.add_argument("--calls", type=int, default=12, help="real transformer steps per image after calibration (default: 12)")
    p.add_argument("--guidance", type=float, default=7.0, help="guidance scale (default: 7.0)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="cuda, cpu or auto (default: auto)")
    p.add_argument("--out", default="sd3_fastflow.png", help="side-by-side image: full, FastFlow, plain K steps")
    args = p.parse_args(argv)
    if not 3 <= args.calls < args.steps:
        p.error(f"--calls must be in [3, --steps), got {args.calls}")
    try:
        import diffusers  # noqa: F401
    except ImportError:
        print("diffusers_sd3.py: error: needs diffusers and transformers (pip install diffusers transformers)",
              file=sys.stderr)
        return 1
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    if args.tiny:
        pipe, kwargs = build_tiny_sd3(args.seed)
        kwargs.update(height=32, width=32)
    else:
        from diffusers import StableDiffusion3Pipeline
        dtype = torch.float16 if device.type == "cuda" else torch.float32
        pipe = StableDiffusion3Pipeline.from_pretrained(args.model_id, torch_dtype=dtype)
        kwargs = {"prompt": args.prompt}
    pipe = pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    kwargs["guidance_scale"] = args.guidance

    full, t_full = run(pipe, args.seed, args.steps, device, **kwargs)
    transformer = pipe.transformer
    pipe.transformer = ff.SkipWrapper(transformer, calls=args.calls)
    run(pipe, args.seed + 1, args.steps, device, **kwargs)          # calibration generation (another seed)
    fast, t_fast = run(pipe, args.seed, args.steps, device, **kwargs)
    pipe.transformer.reset()
    info = pipe.transformer.last_generation
    pipe.transformer = transformer
    plain, t_plain = run(pipe, args.seed, args.calls, device, **kwargs)

    def psnr(a, b):
        mse = float(((a - b) ** 2).mean())
        return float("inf") if mse == 0 else -10 * torch.log10(torch.tensor(mse)).item()
    print(f"full {args.steps} steps: {t_full:.2f} s")
    print(f"FastFlow, {info['model_calls']} transformer calls ({info['skipped_calls']} skipped, steps "
          f"{info['skipped_steps']}): {t_fast:.2f} s, PSNR to full {psnr(fast, full):.1f} dB")
    print(f"plain {args.calls} steps: {t_plain:.2f} s, PSNR to full {psnr(plain, full):.1f} dB")
    try:
        from PIL import Image
        import numpy as np
        row = np.concatenate([full, fast, plain], axis=1)
        Image.fromarray((row * 255).round().astype("uint8")).save(args.out)
        print(f"wrote {args.out} (full | FastFlow | plain {args.calls} steps)")
    except ImportError:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
