"""sample.py on the shipped checkpoint: outputs and bad input."""
import json

import numpy as np
import pytest

from sample import cli

FAST = ["--steps", "4", "--n", "6", "--batch-size", "4", "--quiet"]


def test_one_sampler_writes_grid_npz_and_report(tmp_path):
    npz, report, png = tmp_path / "s.npz", tmp_path / "r.json", tmp_path / "g.png"
    assert cli(["--sampler", "heun", *FAST, "--seed", "3", "--out", str(png),
                "--out-npz", str(npz), "--report-json", str(report)]) == 0
    data = np.load(npz)
    assert data["images"].dtype == np.uint8 and data["images"].shape == (6, 28, 28, 1)
    assert data["labels"].tolist() == [0, 1, 2, 3, 4, 5]
    r = json.loads(report.read_text())
    assert r["sampler"] == "heun" and r["steps"] == 4 and r["n"] == 6 and r["seed"] == 3
    assert r["nfe"] == 8 and r["sampling_seconds"] > 0
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_same_seed_same_images_and_class_flag(tmp_path):
    paths = [tmp_path / f"{i}.npz" for i in range(2)]
    for p in paths:
        assert cli(["--sampler", "euler", *FAST, "--class", "7", "--out", str(tmp_path / "g.png"),
                    "--out-npz", str(p)]) == 0
    a, b = (np.load(p) for p in paths)
    assert np.array_equal(a["images"], b["images"]) and set(a["labels"].tolist()) == {7}


@pytest.mark.parametrize("flags, nfe", [(["--calls", "6"], 6), (["--calls", "5", "--policy", "bandit"], 5),
                                        (["--tolerance", "1e-9"], 12), (["--calls", "6", "--base", "ab2"], 6)])
def test_fastflow_knobs_reach_the_sampler(flags, nfe, tmp_path):
    report = tmp_path / "r.json"
    assert cli(["--sampler", "fastflow", "--steps", "12", "--n", "4", "--batch-size", "4", "--quiet", *flags,
                "--out", str(tmp_path / "g.png"), "--report-json", str(report)]) == 0
    r = json.loads(report.read_text())
    assert r["nfe"] == nfe and r["calls_target"] == nfe


def test_bad_fastflow_knobs_are_one_line_errors(tmp_path, capsys):
    base = ["--sampler", "fastflow", "--steps", "12", "--n", "4", "--quiet", "--out", str(tmp_path / "g.png")]
    assert cli([*base, "--calls", "5", "--tolerance", "0.5"]) == 1
    assert "not both" in capsys.readouterr().err
    assert cli([*base, "--calls", "2"]) == 1
    assert "calls must be an int in [3, 12]" in capsys.readouterr().err


def test_bandit_state_is_loaded_and_saved_back(tmp_path):
    state = tmp_path / "bandit.json"
    args = ["--sampler", "fastflow", "--policy", "paper", "--steps", "8", "--n", "4", "--batch-size", "4", "--warmup", "1",
            "--quiet", "--out", str(tmp_path / "g.png"), "--bandit-state", str(state)]
    assert cli(args) == 0
    first = json.loads(state.read_text())
    assert first["calibrated"] and first["steps"] == 8
    assert cli(args) == 0
    second = json.loads(state.read_text())
    pulls = lambda s: sum(sum(b["counts"]) for b in s["bandits"].values())  # noqa: E731
    assert pulls(second) > pulls(first)


@pytest.mark.parametrize("argv, message", [
    (["--ckpt", "/nonexistent/model.pt"], "model.pt"),
    (["--class", "10"], "--class 10 is out of range"),
    (["--n", "0"], "--n must be > 0"),
])
def test_bad_input_gives_one_line_error(argv, message, capsys, tmp_path):
    assert cli([*argv, "--sampler", "euler", "--steps", "2", "--quiet", "--out", str(tmp_path / "g.png")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err and err.startswith("sample.py: error:")


def test_corrupt_checkpoint_and_unknown_sampler(tmp_path, capsys):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    assert cli(["--ckpt", str(bad), "--sampler", "euler", "--quiet"]) == 1
    assert str(bad) in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        cli(["--sampler", "rk45"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "invalid choice: 'rk45'" in err
