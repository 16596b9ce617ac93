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
    assert r["nfe"] == 8 and r["seconds"] > 0 and r["seconds_per_call"] == pytest.approx(r["seconds"] / 8)
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


# ---------------------------------------------------------------- checked before any work, nothing lost


@pytest.mark.parametrize("argv, message", [
    (["--n", "0"], "argument --num-samples/--n: expected an integer >= 1, got '0'"),
    (["--batch-size", "-1"], "argument --batch-size: expected an integer >= 1, got '-1'"),
    (["--batch-size", "0"], "argument --batch-size: expected an integer >= 1"),
    (["--seed", "1e20"], "argument --seed: expected an integer seed"),
    (["--seed", str(2 ** 70)], "argument --seed: expected an integer seed"),
    (["--mu", "inf"], "argument --mu: expected a finite number >= 0, got 'inf'"),
    (["--cfg", "nan"], "argument --cfg: expected a finite number, got 'nan'"),
    (["--tolerance", "0"], "argument --tolerance: expected a finite number > 0"),
    (["--warmup", "-1"], "argument --warmup: expected an integer >= 0"),
    (["--warmup-batch-size", "0"], "argument --warmup-batch-size: expected an integer >= 1"),
    (["--device", "tpu"], "argument --device: unknown device 'tpu'"),
])
def test_bad_flags_exit_2_in_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        cli(["--sampler", "fastflow", *argv])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and len(err.splitlines()) == 1 and err.startswith("sample.py: error:") and message in err


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("device", ["cuda", "cuda:7"])
def test_missing_cuda_is_a_bad_flag(device, capsys):
    with pytest.raises(SystemExit) as e:
        cli(["--device", device])
    assert e.value.code == 2 and "CUDA requested" in capsys.readouterr().err


@pytest.mark.parametrize("flag", ["--bandit-state", "--out-npz", "--report-json", "--out"])
def test_an_unwritable_output_stops_the_run_before_sampling(flag, tmp_path, capsys, count_runs):
    blocker = tmp_path / "file"
    blocker.write_text("a file where a folder should be")
    bad = str(blocker / "x.out")  # its folder cannot be created
    outputs = {"--out": str(tmp_path / "g.png"), "--out-npz": str(tmp_path / "a.npz"),
               "--report-json": str(tmp_path / "r.json"), "--bandit-state": str(tmp_path / "s.json")}
    outputs[flag] = bad
    argv = ["--sampler", "fastflow", *FAST] + [a for kv in outputs.items() for a in kv]
    assert cli(argv) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and ".tmp" not in err
    assert f"{flag} {bad}: cannot write there ({blocker} is a file, not a folder)" in err
    assert count_runs == [] and sorted(p.name for p in tmp_path.iterdir()) == ["file"]  # nothing sampled or written


def test_bad_files_are_read_before_sampling(tmp_path, capsys, count_runs):
    truncated = tmp_path / "clf.pt"
    truncated.write_bytes(b"PK\x03\x04 truncated")
    assert cli(["--sampler", "euler", *FAST, "--classifier", str(truncated), "--out", str(tmp_path / "g.png")]) == 1
    assert str(truncated) in capsys.readouterr().err
    state = tmp_path / "state.json"
    state.write_bytes(b"\xff\xfe not json")
    assert cli(["--sampler", "fastflow", *FAST, "--bandit-state", str(state), "--out", str(tmp_path / "g.png")]) == 1
    assert f"{state}: corrupt FastFlow state file (not UTF-8 text)" in capsys.readouterr().err
    assert cli(["--sampler", "euler", *FAST, "--classifier", str(tmp_path / "missing.pt"),
                "--out", str(tmp_path / "g.png")]) == 1  # a classifier asked for must exist
    assert "missing.pt" in capsys.readouterr().err
    assert cli(["--sampler", "flowturbo", *FAST, "--turbo", "H0P0R0", "--out", str(tmp_path / "g.png")]) == 1
    assert "at least 2 blocks" in capsys.readouterr().err
    assert count_runs == [] and not (tmp_path / "g.png").exists()


def test_outputs_go_to_the_exact_paths_and_missing_folders_are_made(tmp_path):
    npz, report = tmp_path / "new" / "samples", tmp_path / "other" / "r.json"  # no .npz suffix
    assert cli(["--sampler", "flowturbo", "--turbo", "H2P1", *FAST, "--out", str(tmp_path / "g.png"),
                "--out-npz", str(npz), "--report-json", str(report)]) == 0
    assert np.load(npz)["images"].shape == (6, 28, 28, 1) and not npz.with_suffix(".npz").exists()
    r = json.loads(report.read_text())
    assert r["steps"] == 3 and r["turbo"] == "H2P1R0" and r["nfe"] == 5  # the blocks' steps, not --steps 4


def test_one_failed_output_does_not_lose_the_others(tmp_path, capsys, monkeypatch):
    import sample

    def broken(*a, **k):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(sample, "write_npz", broken)
    paths = {"--out": tmp_path / "g.png", "--out-npz": tmp_path / "a.npz", "--report-json": tmp_path / "r.json",
             "--bandit-state": tmp_path / "s.json"}
    assert cli(["--sampler", "fastflow", *FAST, "--warmup", "0"] + [str(a) for kv in paths.items() for a in kv]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"could not write --out-npz {paths['--out-npz']}" in err
    assert "No space left on device" in err and "written: --out" in err
    assert paths["--out"].exists() and paths["--report-json"].exists() and paths["--bandit-state"].exists()
    assert json.loads(paths["--report-json"].read_text())["nfe"] > 0 and not paths["--out-npz"].exists()


def test_a_state_learned_at_another_guidance_scale_is_refused(tmp_path, capsys, count_runs):
    state = tmp_path / "s.json"
    args = ["--sampler", "fastflow", *FAST, "--out", str(tmp_path / "g.png"), "--bandit-state", str(state)]
    assert cli(args) == 0 and "cfg 1" in json.loads(state.read_text())["tag"]
    count_runs.clear()
    assert cli([*args, "--cfg", "2"]) == 1
    err = capsys.readouterr().err
    assert "state was saved with tag 'dit_mnist.pt" in err and "cfg 2" in err and count_runs == []
