"""Edit real digits with a trained DiT: partial generation, inversion, or FlowEdit (fastflow.editing).

Sources are the first --num-samples digits of the split whose label is not --target-class (or
one --image PNG); each is edited into --target-class, or regenerated under its own label with
--target-class source (a reconstruction check). The report gives model calls, wall time, edit
success (the project's digit classifier reads the target class), preservation (PSNR to the
source) and, with --sampler fastflow, PSNR against the same edit run with every step real.
FastFlow calibrates on the edit's own path, on --calibration-samples other sources, before the
measured run.

    python edit.py --method invert --target-class source            # inversion, then regeneration
    python edit.py --method sdedit --t0 0.3 --target-class 8 --cfg 2
    python edit.py --method flowedit --t0 0.1 --sampler fastflow --calls 16 --state flowedit_state.json

Time convention: t = 0 is noise, t = 1 is data; images are in [-1, 1].
"""
from __future__ import annotations

import os
import sys
import time

import numpy as np
import torch

from fastflow.atomic import atomic_write
from models.cli import (OneLineParser, check_writable, finite_float, positive_int, resolve_device, run_cli,
                        seed_int)
from models.classifier import check_judge, default_judge_files, load_classifier, model_dataset
from models.editing import METHODS, Editor, check_args, load_sources, state_settings, to_uint8
from models.evaluation import DEFAULT_CKPT, fidelity
from models.sampling import grid_image, model_tag, write_json, write_png


def build_parser() -> OneLineParser:
    p = OneLineParser(prog="edit.py", description=__doc__)
    p.add_argument("--method", choices=METHODS, default="invert", help="the edit (fastflow.editing)")
    p.add_argument("--ckpt", default=DEFAULT_CKPT, help="model checkpoint (the shipped MNIST DiT)")
    p.add_argument("--data-root", default=None, help="MNIST folder (None: ../shared/data/mnist next to the repo)")
    p.add_argument("--split", choices=["train", "test"], default="test", help="where the sources come from")
    p.add_argument("--image", default=None, help="one source PNG of the model's size and channels, instead of the split")
    p.add_argument("--num-samples", "--n", dest="n", type=positive_int, default=16, help="sources to edit")
    p.add_argument("--target-class", default="8", help="the class to edit into, or 'source' to regenerate")
    p.add_argument("--sampler", choices=["euler", "fastflow"], default="euler", help="the sampler of every pass")
    p.add_argument("--steps", type=positive_int, default=50, help="grid steps T of each pass")
    p.add_argument("--calls", type=positive_int, default=None, help="FastFlow's model calls per pass (None: its tolerance)")
    p.add_argument("--t0", type=finite_float, default=0.3,
                   help="where sdedit and flowedit start, in (0, 1): lower edits more")
    p.add_argument("--n-avg", type=positive_int, default=1, help="FlowEdit's noise draws per step")
    p.add_argument("--noise", choices=["shared", "fresh"], default="shared",
                   help="FlowEdit's noise: one draw for the whole run (smooth, so FastFlow can skip) or the paper's "
                        "fresh draw per step")
    p.add_argument("--state", default=None, help="FastFlow's calibration of this edit: loaded if the file exists "
                                                 "(refused if saved for another edit), else calibrated and saved")
    p.add_argument("--cfg", type=finite_float, default=2.0, help="guidance scale of the target condition")
    p.add_argument("--calibration-samples", type=positive_int, default=16, help="other sources FastFlow calibrates on")
    p.add_argument("--seed", type=seed_int, default=0, help="noise seed")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--out", default="outputs/edit.png", help="PNG of source | edit pairs")
    p.add_argument("--out-npz", default=None, help="edits (arr_0, uint8 N x H x W x C), target labels (arr_1), "
                                                   "sources (sources)")
    p.add_argument("--report-json", default=None, help="write the report here")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    return p


def main(args) -> dict:
    with torch.no_grad():  # scoped: a caller's autograd state is left as it was
        return run(args)


def run(args) -> dict:
    device = resolve_device(args.device)
    for flag in ("out", "out_npz", "report_json", "state"):
        if getattr(args, flag):
            check_writable(getattr(args, flag), "--" + flag.replace("_", "-"))
    from models.checkpoint import load_model
    model, config, meta = load_model(args.ckpt, device=device, kind="image")
    check_args(args, config.num_classes)
    shape = (config.in_channels, config.image_size, config.image_size)
    sources, src_labels, cal, cal_labels = load_sources(args, config, device)
    target = (lambda lab: lab.clone()) if args.target_class == "source" else \
        (lambda lab: torch.full_like(lab, int(args.target_class)))
    velocity = model.eval().forward_with_cfg

    editor = Editor(args, velocity, shape, device)
    calibration_seconds, state_loaded = None, False
    if args.sampler == "fastflow":
        from fastflow import editing
        settings = state_settings(args, model_tag(args.ckpt))
        if args.state and os.path.exists(args.state):
            editing.load_state(args.state, editor.samplers, **settings)
            state_loaded = True
        else:  # the first run of this edit configuration: every step real
            start = time.perf_counter()
            editor(cal, cal_labels, target(cal_labels))
            calibration_seconds = time.perf_counter() - start
            if args.state:
                editing.save_state(args.state, editor.samplers, **settings)
    start = time.perf_counter()
    edits, calls = editor(sources, src_labels, target(src_labels))
    seconds = time.perf_counter() - start
    report = {"method": args.method, "sampler": args.sampler, "steps": args.steps, "t0": args.t0,
              "cfg": args.cfg, "n": len(sources), "target_class": args.target_class, "model_calls": calls,
              "seconds": seconds, "calibration_seconds": calibration_seconds, "state_loaded": state_loaded,
              "preservation_psnr": fidelity(edits, sources)[0]}
    if args.method == "flowedit":
        report.update(n_avg=args.n_avg, noise=args.noise)
    judge_files = default_judge_files(model_dataset(meta))  # the shipped judge of the model's dataset
    if judge_files is not None and os.path.exists(judge_files[0]):
        from fastflow.metrics import classifier_accuracy
        judge = load_classifier(judge_files[0])
        check_judge(judge, meta)
        report["edit_success"] = classifier_accuracy(judge, edits.cpu(), target(src_labels))
    if args.sampler == "fastflow":
        full, full_calls = Editor(args, velocity, shape, device, full=True)(sources, src_labels, target(src_labels))
        report.update(full_model_calls=full_calls, psnr_vs_full_steps=fidelity(edits, full)[0])
    if not args.quiet:
        print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in report.items()))
    pairs = torch.stack([sources, edits], 1).flatten(0, 1)
    write_png(grid_image(pairs.cpu(), nrow=2 * min(8, len(sources))), args.out)
    if args.out_npz:
        atomic_write(args.out_npz, lambda f: np.savez(f, arr_0=to_uint8(edits), arr_1=target(src_labels).numpy(),
                                                      sources=to_uint8(sources)))
    if args.report_json:
        write_json(report, args.report_json)
    return report


def cli(argv=None) -> int:
    """Run edit.py; bad input ends with a one-line error and exit status 1 (2 for bad flags)."""
    p = build_parser()
    args = p.parse_args(argv)
    return run_cli(main, args, "edit.py")


if __name__ == "__main__":
    sys.exit(cli())
