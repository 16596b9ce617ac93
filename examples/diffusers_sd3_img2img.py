"""FastFlow inside an unchanged diffusers Stable Diffusion 3 image-to-image pipeline (an edit: the
generation starts from the noised input image at an intermediate timestep, ``strength`` < 1).

    pip install "fastflow[bench]" transformers
    python examples/diffusers_sd3_img2img.py --model-id stabilityai/stable-diffusion-3-medium-diffusers \\
        --image photo.png --prompt "a watercolor painting of a fox" --strength 0.6 --steps 28 --calls 8 \\
        --device cuda --out outputs/sd3_img2img.png
    python examples/diffusers_sd3_img2img.py --tiny    # offline: a tiny SD3 with random weights, a random image

The pipeline owns its grid: with ``strength`` s it runs the last int(s * steps) of its steps, and
``SkipWrapper`` plans K of those real. Its first edit calibrates (every step real, on another
seed); the second makes K transformer calls. Printed: calls and the distance of the FastFlow edit
and of the plain pipeline with about as many steps from the full edit (for wall time under one
timing discipline, see examples/diffusers_sd3.py and models/timing.py).
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fastflow as ff  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-id", default="stabilityai/stable-diffusion-3-medium-diffusers", help="model id or folder")
    p.add_argument("--tiny", action="store_true", help="a tiny random SD3 built offline and a random image")
    p.add_argument("--image", default=None, help="the input image (not with --tiny)")
    p.add_argument("--prompt", default="a watercolor painting")
    p.add_argument("--strength", type=float, default=0.6, help="how far back the edit starts, in (0, 1]")
    p.add_argument("--steps", type=int, default=28, help="the pipeline's steps at strength 1")
    p.add_argument("--calls", type=int, default=8, help="real transformer steps per edit after calibration")
    p.add_argument("--guidance", type=float, default=7.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="cuda, cpu or auto")
    p.add_argument("--out", default="outputs/sd3_img2img.png", help="input | full | FastFlow | plain, side by side")
    args = p.parse_args(argv)
    run_steps = int(args.steps * args.strength)
    if not 0 < args.strength <= 1:
        p.error(f"--strength must be in (0, 1], got {args.strength}")
    if not 3 <= args.calls < run_steps:
        p.error(f"--calls must be in [3, int(steps * strength) = {run_steps}), got {args.calls}")
    if not args.tiny and args.image is None:
        p.error("give --image, or --tiny")
    try:
        from diffusers import StableDiffusion3Img2ImgPipeline
    except ImportError:
        print("diffusers_sd3_img2img.py: error: needs diffusers and transformers", file=sys.stderr)
        return 1
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    if args.tiny:
        from diffusers_sd3 import build_tiny_sd3
        pipe, kwargs = build_tiny_sd3(args.seed)
        pipe = StableDiffusion3Img2ImgPipeline.from_pipe(pipe)
        image = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(args.seed))
        kwargs.update(height=32, width=32)
    else:
        from PIL import Image
        dtype = torch.float16 if device.type == "cuda" else torch.float32
        pipe = StableDiffusion3Img2ImgPipeline.from_pretrained(args.model_id, torch_dtype=dtype)
        image, kwargs = Image.open(args.image).convert("RGB"), {"prompt": args.prompt}
    pipe = pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    kwargs.update(image=image, strength=args.strength, guidance_scale=args.guidance, output_type="np")

    def run(seed, steps):
        return pipe(generator=torch.Generator().manual_seed(seed), num_inference_steps=steps, **kwargs).images[0]

    full = run(args.seed, args.steps)
    transformer = pipe.transformer
    pipe.transformer = wrapped = ff.SkipWrapper(transformer, calls=args.calls)
    run(args.seed + 1, args.steps)  # calibration edit, another seed
    fast = run(args.seed, args.steps)
    wrapped.reset()
    info = wrapped.last_generation
    pipe.transformer = transformer
    plain_steps = max(2, round(args.calls / args.strength))  # the plain pipeline with about K real steps
    plain = run(args.seed, plain_steps)

    def psnr(a, b):
        return -10 * torch.log10(torch.tensor(float(((a - b) ** 2).mean())).clamp(min=1e-20)).item()
    print(f"full edit: {run_steps} transformer steps")
    print(f"FastFlow: {info['model_calls']} calls, skipped steps {info['skipped_steps']}, "
          f"PSNR to full {psnr(fast, full):.1f} dB")
    print(f"plain: {int(plain_steps * args.strength)} steps, PSNR to full {psnr(plain, full):.1f} dB")
    import numpy as np
    from PIL import Image
    src = np.asarray(image, dtype=np.float32) / 255 if not args.tiny else image[0].permute(1, 2, 0).numpy()
    src = np.asarray(Image.fromarray((src * 255).round().astype("uint8")).resize(full.shape[1::-1])) / 255
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    row = np.concatenate([src, full, fast, plain], axis=1)
    Image.fromarray((row * 255).round().astype("uint8")).save(args.out)
    print(f"wrote {args.out} (input | full | FastFlow | plain)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
