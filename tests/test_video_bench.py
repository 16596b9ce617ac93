"""benchmarks/video.py end to end on a tiny video model and fake digits in the real idx format:
exact calls per row, per-frame and per-clip PSNR, the real clips' motion, the class transfer,
the error tables and the one-line errors."""
import json

import pytest
import torch

from benchmarks import video
from problems import fake_digits, write_idx

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def mnist_root(tmp_path_factory):
    return write_idx(tmp_path_factory.mktemp("mnist"), "t10k", *fake_digits(20, seed=3))


def small(tmp_path, *extra):
    return ["--n", "4", "--steps", "12", "--budgets", "6", "8", "--transfer-calls", "8", "--transfer-classes", "0", "3",
            "--calibration-samples", "2", "--timing-n", "2", "--per-call-batch", "2", "--rounds", "1", "--threads", "1", "--quiet",
            "--out-json", str(tmp_path / "v.json"), "--plot", str(tmp_path / "v.png"), *extra]


def test_every_sampler_makes_its_calls_and_is_measured_per_clip_and_per_frame(video_ckpt, mnist_root, tmp_path, capsys):
    args = [a for a in small(tmp_path, "--ckpt", video_ckpt, "--data-root", str(mnist_root)) if a != "--quiet"]
    out = video.main(video.parse_args(args))
    printed = capsys.readouterr().out
    assert "real clips (4)" in printed and "calibrated on class 3" in printed
    with open(tmp_path / "v.json") as f:
        saved = json.load(f)
    assert [r["sampler"] for r in saved["rows"]] == [r["sampler"] for r in out["rows"]]
    calls = {r["sampler"]: r["calls"] for r in out["rows"]}
    assert {k: v for k, v in calls.items() if not k.startswith("FastFlow ")} == {
        "Euler-12": 12, "Euler-6": 6, "AB2-6": 6, "Euler-8": 8, "AB2-8": 8}
    assert calls["FastFlow plan K=6"] == 6 and calls["FastFlow plan K=8"] == 8
    frames = out["frames"]
    for r in out["rows"][1:]:  # everything but the reference is measured against it
        assert len(r["psnr_per_frame"]) == frames and len(r["psnr_per_clip"]) == 4
        assert r["psnr_vs_euler50"] == pytest.approx(sum(r["psnr_per_clip"]) / 4)
        assert r["psnr_vs_euler50"] == pytest.approx(sum(r["psnr_per_frame"]) / frames)
        assert 0 <= r["accuracy"] <= 1 and r["motion_residual"] >= 0
    assert "psnr_vs_euler50" not in out["rows"][0]
    plan = next(r for r in out["rows"] if r["sampler"] == "FastFlow plan K=8")
    assert len(plan["skipped"]) == 12 - 8  # every skipped step saves one call
    # real clips move as the generator made them: only the rounding of positions to pixels is left
    assert out["real"]["clips"] == 4 and out["real"]["motion_residual"] < 0.6
    assert [c["class"] for c in out["transfer"]["classes"]] == [0, 3]
    for c in out["transfer"]["classes"]:
        assert c["calls"] == 8 and len(c["skipped"]) == 4 and 0 <= c["jaccard_vs_all_classes"] <= 1
    # labels are balanced: class 0 and class 3 each own exactly one of the 4 clips
    assert all(c["psnr_own_class"] is not None and c["psnr_other_classes"] is not None
               for c in out["transfer"]["classes"])
    assert len(out["tables"]["video"]["error"]) == len(out["tables"]["image"]["error"]) == 12 - 2
    assert out["per_call"]["ratio"] > 0 and (tmp_path / "v.png").stat().st_size > 0


def test_the_same_seed_gives_the_same_clips_scores(video_ckpt, tmp_path):
    args = small(tmp_path, "--ckpt", video_ckpt, "--data-root", "none", "--budgets", "8", "--transfer-classes", "1")
    a, b = video.main(video.parse_args(args)), video.main(video.parse_args(args))
    assert "real" not in a
    key = lambda o: [(r["sampler"], r.get("psnr_per_clip"), r["accuracy"]) for r in o["rows"]]
    assert key(a) == key(b)


@pytest.mark.parametrize("flags, message", [
    (["--transfer-calls", "9"], "--transfer-calls 9 must be one of --budgets"),
    (["--transfer-classes", "10"], "--transfer-classes: 10 is not a class"),
])
def test_bad_settings_are_one_line(flags, message, tmp_path, capsys):
    with pytest.raises(SystemExit):
        video.parse_args(small(tmp_path, *flags))
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_an_image_checkpoint_is_refused_before_any_model_call(tmp_path, monkeypatch):
    from models.checkpoint import CheckpointError
    from models.dit import DiT
    monkeypatch.setattr(DiT, "forward", lambda *a, **k: pytest.fail("a model call was made"))
    with pytest.raises(CheckpointError, match="holds an image model but this path takes video models only"):
        video.main(video.parse_args(small(tmp_path, "--ckpt", video.DEFAULT_CKPT)))
    assert not (tmp_path / "v.json").exists()
