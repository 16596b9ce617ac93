"""FastFlow inside an unchanged diffusers Stable Diffusion 3 pipeline: wrap the transformer, keep the loop.

    pip install "fastflow[bench]" transformers     # diffusers, transformers (for the text encoders)
    python examples/diffusers_sd3.py --model-id stabilityai/stable-diffusion-3-medium-diffusers \\
        --prompt "a photo of a red fox in the snow" --steps 28 --calls 12 --device cuda
    python examples/diffusers_sd3.py --tiny        # offline: a tiny SD3 with random weights

What it does, all with one seed:
1. the full pipeline (``--steps`` transformer calls per image, two guidance branches batched);
2. the same pipeline with ``pipe.transformer = fastflow.SkipWrapper(transformer, calls=K)``: one
   calibration generation on another seed (all steps real, timed apart: paid once per model, size
   and step count), then K real steps per image and extrapolation for the rest;
3. the pipeline with K steps, the plain alternative at equal cost.
The three are timed with models/timing.py: an untimed warm-up generation of each, then the median
of --rounds interleaved rounds, each speedup checked against its call ratio (steps / K; above 1.05 x
that, it is flagged as a measurement problem). It prints the transformer calls, time per call, the
speedups and the distance of (2) and (3) from (1), and saves the three images side by side at --out.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import fastflow as ff  # noqa: E402
from models.timing import compare, device_sync  # noqa: E402


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


def run(pipe, seed: int, steps: int, **kwargs):
    """One image as float32 numpy (H, W, 3) in [0, 1]."""
    return pipe(generator=torch.Generator(device="cpu").manual_seed(seed), num_inference_steps=steps,
                output_type="np", **kwargs).images[0]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-id", default="stabilityai/stable-diffusion-3-medium-diffusers",
                   help="a diffusers SD3 model id or folder (default: %(default)s)")
    p.add_argument("--tiny", action="store_true", help="use a tiny random SD3 built offline instead of --model-id")
    p.add_argument("--prompt", default="a photo of a red fox in the snow", help="(default: %(default)s)")
    p.add_argument("--steps", type=int, default=28, help="the pipeline's steps (default: 28)")
    p.add_argument("--calls", type=int, default=12, help="real transformer steps per image after calibration (default: 12)")
    p.add_argument("--guidance", type=float, default=7.0, help="guidance scale (default: 7.0)")
    p.add_argument("--seed", type=int, default=0, help="the compared images' seed; calibration uses seed + 1 "
                                                       "(default: 0)")
    p.add_argument("--rounds", type=int, default=5, help="timed rounds, median reported (default: 5)")
    p.add_argument("--device", default="auto", help="cuda, cpu or auto (default: auto)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads, 0 for torch's default; one keeps CPU times steady on a shared machine "
                        "(default: 1)")
    p.add_argument("--out", default="outputs/sd3_fastflow.png",
                   help="side-by-side image: full, FastFlow, plain K steps (default: %(default)s)")
    args = p.parse_args(argv)
    if not 3 <= args.calls < args.steps:
        p.error(f"--calls must be in [3, --steps), got {args.calls}")
    if args.rounds < 1:
        p.error(f"--rounds must be at least 1, got {args.rounds}")
    if args.threads < 0:
        p.error(f"--threads must be at least 0, got {args.threads}")
    try:
        import diffusers  # noqa: F401
    except ImportError:
        print("diffusers_sd3.py: error: needs diffusers and transformers (pip install diffusers transformers)",
              file=sys.stderr)
        return 1
    if args.threads:
        torch.set_num_threads(args.threads)
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

    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)

    transformer = pipe.transformer
    calls = []  # one entry per transformer call, whoever makes it
    transformer.register_forward_hook(lambda module, inputs, output: calls.append(1))
    wrapped = ff.SkipWrapper(transformer, calls=args.calls)
    pipe.transformer = wrapped
    sync = device_sync(device)
    sync()
    start = time.perf_counter()
    wrapped.calibrate(run, pipe, args.seed + 1, args.steps, **kwargs)   # every step real, another seed
    sync()
    t_calibration = time.perf_counter() - start

    images = {}

    def contender(name, model, steps):
        def go():
            pipe.transformer = model
            before = len(calls)
            images[name] = run(pipe, args.seed, steps, **kwargs)
            if model is wrapped:
                wrapped.reset()  # end the generation now, so that last_generation is this one
            return len(calls) - before
        return go
    full_name, fast_name, plain_name = f"full {args.steps} steps", "FastFlow", f"plain {args.calls} steps"
    comparison = compare({full_name: contender(full_name, transformer, args.steps),
                          fast_name: contender(fast_name, wrapped, args.steps),
                          plain_name: contender(plain_name, transformer, args.calls)},
                         full_name, rounds=args.rounds, device=device)
    pipe.transformer = transformer
    info = wrapped.last_generation

    def psnr(a, b):
        mse = float(((a - b) ** 2).mean())
        return float("inf") if mse == 0 else -10 * torch.log10(torch.tensor(mse)).item()
    full = images[full_name]
    print(f"{'pipeline':16s} {'calls':>5s} {'s/image':>8s} {'ms/call':>8s} {'speedup':>13s} {'ceiling':>8s} "
          f"{'PSNR to full':>12s}")
    for name, t in comparison.timings.items():
        dist = "-" if name == full_name else f"{psnr(images[name], full):.1f} dB"
        print(f"{name:16s} {t.calls:5.0f} {t.seconds:8.3f} {1e3 * t.seconds_per_call:8.1f} {t.speedup_text():>13s} "
              f"{t.ceiling:7.2f}x {dist:>12s}")
    for line in [f"{comparison.method()}; {torch.get_num_threads()} CPU thread(s)"] + comparison.notes():
        print(line)
    print(f"FastFlow skipped steps {info['skipped_steps']} ({info['skipped_calls']} transformer calls)")
    print(f"calibration generation: {t_calibration:.2f} s, all {args.steps} steps real on seed {args.seed + 1}; paid "
          f"once per model, image size and step count, not in the times above")
    try:
        from PIL import Image
        import numpy as np
        row = np.concatenate([full, images[fast_name], images[plain_name]], axis=1)
        Image.fromarray((row * 255).round().astype("uint8")).save(args.out)
        print(f"wrote {args.out} (full | FastFlow | plain {args.calls} steps)")
    except ImportError:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
