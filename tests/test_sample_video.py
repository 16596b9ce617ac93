"""sample.py on a video checkpoint (a tiny VideoDiT trained here on fake digits): GIF, PNG strips
and npz outputs, the model calls, and the one-line errors of image-only paths."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from models.video_dit import VideoDiT
from sample import cli

pytestmark = pytest.mark.usefixtures("one_thread")
FAST = ["--steps", "4", "--n", "3", "--batch-size", "4", "--timing-rounds", "1", "--warmup-batch-size", "2", "--quiet"]
FRAMES, SIZE = 8, 32
PAD = 2  # grid_image's padding between tiles


@pytest.fixture
def model_calls(monkeypatch):
    """Model calls made inside each sampling run of sample.py (``run_batched``), and its batches."""
    import sample
    counted, runs = [0], []
    forward = VideoDiT.forward
    monkeypatch.setattr(VideoDiT, "forward", lambda self, *a, **k: counted.__setitem__(0, counted[0] + 1) or
                        forward(self, *a, **k))
    real = sample.run_batched

    def run_batched(*a, **k):
        before = counted[0]
        out = real(*a, **k)
        runs.append((counted[0] - before, len(out.results)))
        return out
    monkeypatch.setattr(sample, "run_batched", run_batched)
    return runs


def tiles(n, nrow):
    """(width, height) of grid_image's grid of n tiles of SIZE px, nrow to a row."""
    cols, rows = min(n, nrow), -(-n // nrow)
    return cols * (SIZE + PAD) + PAD, rows * (SIZE + PAD) + PAD


def test_gif_npz_and_calls_of_euler(video_ckpt, tmp_path, model_calls):
    gif, npz, report = tmp_path / "c.gif", tmp_path / "c.npz", tmp_path / "r.json"
    assert cli(["--ckpt", video_ckpt, "--sampler", "euler", *FAST, "--out", str(gif), "--out-npz", str(npz),
                "--report-json", str(report)]) == 0
    with Image.open(gif) as im:
        assert im.n_frames == FRAMES and im.info["loop"] == 0
        width, height = tiles(3, 10)
        assert im.size == (width, height + 3)                 # the clips side by side, the frame bar under them
    data = np.load(npz)
    assert data["arr_0"].dtype == np.uint8 and data["arr_0"].shape == (3, FRAMES, SIZE, SIZE, 1)
    assert np.array_equal(data["arr_0"], data["images"]) and data["labels"].tolist() == [0, 1, 2]
    r = json.loads(report.read_text())
    assert r["nfe"] == 4 and model_calls == [(4, 1)]           # 4 steps, one batch: 4 calls of the video model
    assert r["motion_residual"] >= 0 and "psnr_vs_euler" not in r
    if "accuracy" in r:  # the shipped digit classifier, on a crop of every frame: a multiple of 1 / (3 x 8)
        assert r["accuracy"] * 3 * FRAMES == pytest.approx(round(r["accuracy"] * 3 * FRAMES))


def test_png_strips_and_fastflow_calls_and_the_class_flag(video_ckpt, tmp_path, model_calls):
    png, npz, report = tmp_path / "s.png", tmp_path / "s.npz", tmp_path / "r.json"
    assert cli(["--ckpt", video_ckpt, "--sampler", "fastflow", "--calls", "5", *FAST, "--steps", "8", "--class", "7",
                "--out", str(png), "--out-npz", str(npz), "--report-json", str(report)]) == 0
    with Image.open(png) as im:
        assert im.format == "PNG" and im.size == tiles(3 * FRAMES, FRAMES)  # one row of 8 frames per clip
    assert set(np.load(npz)["labels"].tolist()) == {7}
    r = json.loads(report.read_text())
    assert r["nfe"] == 5 and r["calls_target"] == 5 and model_calls == [(5, 1)]


def test_the_comparison_runs_both_samplers_on_clips(video_ckpt, tmp_path):
    gif, report = tmp_path / "cmp.gif", tmp_path / "r.json"
    assert cli(["--ckpt", video_ckpt, *FAST, "--steps", "6", "--calls", "4", "--out", str(gif),
                "--report-json", str(report)]) == 0
    r = json.loads(report.read_text())
    assert [(row["sampler"], row["nfe"]) for row in r["rows"]] == [("euler", 6), ("fastflow", 4)]
    assert np.isfinite(r["rows"][1]["psnr_vs_euler"]) and -1 <= r["rows"][1]["ssim_vs_euler"] <= 1  # per frame
    with Image.open(gif) as im:
        assert im.n_frames == FRAMES and im.size[0] > 2 * tiles(3, 10)[0]  # two grids side by side


def test_flowturbo_without_refiner_blocks_samples_clips(video_ckpt, tmp_path):
    report = tmp_path / "r.json"
    assert cli(["--ckpt", video_ckpt, "--sampler", "flowturbo", "--turbo", "H2P1", *FAST,
                "--out", str(tmp_path / "t.png"), "--report-json", str(report)]) == 0
    assert json.loads(report.read_text())["nfe"] == 5


def one_line(capsys):
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


@pytest.mark.parametrize("argv, message", [
    (["--sampler", "euler", "--out", "{tmp}/c.jpg"],
     "--out {tmp}/c.jpg: a video model's samples are written as .gif or .png"),
    (["--sampler", "euler", "--out", "{tmp}/c"], "not a file without an extension"),
    (["--sampler", "flowturbo", "--out", "{tmp}/c.gif"],
     "--turbo H1P5R3: FlowTurbo's refiner (--refiner) is an image model and cannot refine clips"),
])
def test_bad_video_input_is_one_line_before_any_sampling(argv, message, video_ckpt, tmp_path, capsys, count_runs):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert cli(["--ckpt", video_ckpt, *FAST, *argv]) == 1
    err = one_line(capsys)
    assert err.startswith("sample.py: error:") and message.replace("{tmp}", str(tmp_path)) in err
    assert count_runs == [] and list(tmp_path.iterdir()) == []


IMAGE_ONLY = "holds a video model but this path takes image models only"


def test_edit_refuses_a_video_checkpoint(video_ckpt, tmp_path, capsys):
    import edit
    out = tmp_path / "e.png"
    assert edit.cli(["--ckpt", video_ckpt, "--n", "2", "--steps", "2", "--out", str(out), "--quiet"]) == 1
    assert IMAGE_ONLY in one_line(capsys) and not out.exists()


def test_sample_ddp_refuses_a_video_checkpoint(video_ckpt, tmp_path):
    from sample_ddp import main, parse_args
    with pytest.raises(ValueError, match=IMAGE_ONLY):
        main(parse_args(["--ckpt", video_ckpt, "--steps", "2", "--n", "2", "--quiet", "--out-npz",
                         str(tmp_path / "s.npz")]))
    assert not (tmp_path / "s.npz.shards").exists()


def test_the_benchmarks_refuse_a_video_checkpoint(video_ckpt, tmp_path):
    from benchmarks import bench
    from models import CheckpointError
    with pytest.raises(CheckpointError, match=IMAGE_ONLY):
        bench.main(bench.parse_args(["--ckpt", video_ckpt, "--out-json", str(tmp_path / "b.json"),
                                     "--out-plot", str(tmp_path / "b.png")]))


def test_the_refiner_distils_image_models_only(video_ckpt, tmp_path):
    import os
    import sys
    from models import CheckpointError
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts"))
    import train_refiner  # as tests/test_refiner.py imports it
    with pytest.raises(CheckpointError, match=IMAGE_ONLY):
        train_refiner.main(train_refiner.parse_args(["--base", video_ckpt, "--out-dir", str(tmp_path / "r")]))


def test_a_clip_of_another_frame_count_is_a_one_line_error(video_ckpt):
    from models import load_model
    model, config, _ = load_model(video_ckpt, kind="video")
    with pytest.raises(ValueError, match=r"takes clips of 8 frames of \(1, 32, 32\), got \(4, 1, 32, 32\)"):
        model.forward_with_cfg(torch.zeros(2, 4, 1, 32, 32), torch.zeros(2), torch.zeros(2, dtype=torch.long), 2.0)
