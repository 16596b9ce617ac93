"""sample.py's timing and its outputs: the times come from models.timing (warm-up, interleaved
rounds, ceiling), the calibration is shown apart, the PNG is labelled and lands in outputs/."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

import sample
from sample import LABEL_HEIGHT, cli, print_table

TINY = ["--steps", "6", "--calls", "3", "--n", "4", "--batch-size", "4", "--warmup-batch-size", "4",
        "--timing-rounds", "3", "--timing-samples", "2", "--quiet"]


def test_main_job_times_both_samplers_and_writes_a_labelled_png_under_outputs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # default outputs are relative to where it runs: nothing lands in results/
    report = tmp_path / "r.json"
    threads = torch.get_num_threads()
    assert cli([*TINY, "--report-json", str(report)]) == 0
    out = capsys.readouterr().out
    assert torch.get_num_threads() == threads  # --threads 1 (the default) held for the run only
    assert sorted(p.name for p in tmp_path.iterdir()) == ["outputs", "r.json"]
    png = tmp_path / "outputs" / "euler_vs_fastflow.png"

    r = json.loads(report.read_text())
    euler, fast = r["rows"]
    assert r["timing"]["rounds"] == 3 and r["timing"]["samples_per_round"] == 2 and r["timing"]["repeated"]
    assert len(euler["timed_runs"]) == len(fast["timed_runs"]) == 3
    assert euler["speedup_ceiling"] == 1.0 and fast["speedup_ceiling"] == pytest.approx(6 / 3)
    assert fast["seconds_per_call"] == pytest.approx(fast["seconds"] / 3)
    assert (fast["speedup"] is None) == (fast["measured_speedup"] > 1.05 * fast["speedup_ceiling"])
    assert fast["calibration_seconds"] > 0 and "calibration_seconds" not in euler
    assert "median of 3 interleaved rounds" in out and "2 samples per round, 1 CPU thread(s)" in out
    assert r["machine"]["threads"] == 1
    assert "calibration of fastflow:" in out and "paid once per model and setting" in out

    grid = np.asarray(Image.open(png).convert("L"))
    half = (grid.shape[1] - 8) // 2  # two grids and an 8-pixel gap
    title, body = grid[:LABEL_HEIGHT], grid[LABEL_HEIGHT:]
    for cols in (slice(0, half), slice(half + 8, None)):
        assert (title[:, cols] < 100).sum() > 20   # text in each half's title strip
    assert (title > 200).mean() > 0.8 and (body < 100).mean() > 0.3  # white strip over mostly dark digits
    left, right = (np.asarray(Image.fromarray(title[:, c]).resize((40, 6))) for c in (slice(0, half),
                                                                                     slice(half + 8, None)))
    assert not np.array_equal(left, right)  # two different titles


def test_one_sampler_goes_to_outputs_and_has_no_speedup(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert cli(["--sampler", "heun", "--steps", "3", "--n", "2", "--quiet", "--timing-rounds", "1"]) == 0
    out = capsys.readouterr().out
    assert (tmp_path / "outputs" / "samples_heun.png").exists()
    assert "UNREPEATED" in out and "no speedup here is a result" in out and "ceiling:" not in out


def test_a_speedup_above_its_ceiling_is_printed_as_a_problem_not_a_number(capsys):
    row = {"sampler": "fastflow", "nfe": 16.0, "seconds": 1.64, "seconds_per_call": 1.64 / 16, "speedup": None,
           "measured_speedup": 4.84, "speedup_ceiling": 3.125, "psnr_vs_euler": 51.3, "ssim_vs_euler": 0.9997}
    print_table([row])
    header, line = capsys.readouterr().out.splitlines()
    assert "above ceiling" in line and "4.84" not in line and "3.12x" in line
    assert len(header) == len(line.rstrip()) or header.index("ceiling") < len(line)


def test_table_columns_line_up_with_the_header(capsys):
    rows = [{"sampler": "euler", "nfe": 50.0, "seconds": 0.87, "seconds_per_call": 0.0174, "speedup": 1.0,
             "measured_speedup": 1.0, "speedup_ceiling": 1.0, "accuracy": 0.91},
            {"sampler": "fastflow", "nfe": 16.0, "seconds": 0.28, "seconds_per_call": 0.0178, "speedup": 3.06,
             "measured_speedup": 3.06, "speedup_ceiling": 3.125, "psnr_vs_euler": 51.32, "ssim_vs_euler": 0.9997,
             "accuracy": 0.9}]
    print_table(rows)
    lines = capsys.readouterr().out.splitlines()
    ends = [[i for i in range(11, len(s) + 1) if s[i - 1] != " " and (i == len(s) or s[i] == " ")] for s in lines]
    assert ends[1] == ends[2] and len(ends[1]) == 8  # every cell right-aligned in its column, "-" cells too
    assert set(ends[1]) <= set(ends[0])               # ... where its header ends


def test_a_speedup_just_above_its_ceiling_is_printed_at_the_ceiling_not_as_a_number(capsys):
    row = {"sampler": "fastflow", "nfe": 16.0, "seconds": 0.28, "seconds_per_call": 0.0175, "speedup": 3.16,
           "measured_speedup": 3.16, "speedup_ceiling": 3.125, "psnr_vs_euler": 50.1, "ssim_vs_euler": 0.998}
    print_table([row])
    line = capsys.readouterr().out.splitlines()[1]
    assert "at ceiling" in line and "3.16" not in line and "3.12x" in line
