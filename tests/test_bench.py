"""Smoke test of the benchmark script: tiny settings, well-formed outputs."""
import json
import os
import struct

import pytest

from benchmarks.bench import main, parse_args

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_benchmark_writes_well_formed_json_and_plot(tmp_path, capsys):
    out_json, out_png = tmp_path / "bench.json", tmp_path / "pareto.png"
    # the smoke command of the docstring, smaller; the default --warmup-batch-size 25 exceeds --n
    args = parse_args(["--device", "cpu", "--n", "4", "--batch-size", "4", "--repeats", "1", "--warmup", "1", "--quick",
                       "--mu", "0.01", "--exact-steps", "4", "--out-json", str(out_json), "--out-plot", str(out_png)])
    main(args)
    out = capsys.readouterr().out
    result = json.loads(out_json.read_text())  # strict JSON: no NaN or Infinity
    assert {"machine", "args", "rows", "targets"} <= set(result)
    assert result["machine"]["device"] == "cpu" and result["machine"]["threads"] >= 1
    rows = {r["label"]: r for r in result["rows"]}
    families = {r["family"] for r in result["rows"]}
    assert {"euler", "heun", "ab2", "static", "fastflow", "teacache", "taylorseer", "flowturbo"} <= families
    assert rows["Euler-50"]["nfe"] == 50 and rows["Euler-50"]["psnr"] is None
    for r in result["rows"]:
        assert r["seconds_per_batch"] > 0 and 0 <= r["overhead_share"] < 1
        assert r["speedup_ceiling"] == pytest.approx(50 / r["timed_nfe"])
        assert (r["speedup"] is None) == (r["measured_speedup"] > 1.05 * r["speedup_ceiling"])
        assert r["timed_nfe"] == r["nfe"]  # the timed runs are the measured first batch
        assert 0 <= r["accuracy"] <= 1 and r["fid_features"] is None  # 4 samples: too few for 128 feature dims
        assert r["psnr_vs_exact"] > 0
        if r["label"] != "Euler-50":
            assert r["psnr"] > 0 and -1 <= r["ssim"] <= 1
    assert rows["Static-50 (every other step)"]["nfe"] == 26
    for entry in result["targets"].values():  # 4 samples and one round judge nothing
        assert entry["speedup_2.6x_at_30dB_and_1pt"] is None and entry["beats_euler_at_equal_nfe"] is None
        assert entry["not_judged"] == "4 samples, unrepeated timing, 1 round"
    assert result["timing"]["rounds"] == 1 and not result["timing"]["repeated"]
    assert "no verdicts on this run (4 samples, unrepeated timing, 1 round)" in out and "UNREPEATED" in out
    assert " met" not in out and "MISSED" not in out
    png = out_png.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", png[16:24])
    assert width > 1000 and height > 300


def test_verdicts_need_enough_samples_repeated_timing_and_a_speedup_under_its_ceiling():
    from benchmarks.bench import targets, verdict
    rows = [{"label": "Euler-50", "family": "euler", "nfe": 50, "accuracy": 0.9, "speedup": 1.0, "speedup_ceiling": 1.0},
            {"label": "ok", "family": "fastflow", "nfe": 16, "psnr": 50.0, "euler_same_nfe_psnr": 40.0,
             "accuracy": 0.9, "speedup": 2.9, "speedup_ceiling": 3.125},
            {"label": "too fast", "family": "fastflow", "nfe": 16, "psnr": 50.0, "euler_same_nfe_psnr": 40.0,
             "accuracy": 0.9, "speedup": None, "speedup_ceiling": 3.125}]
    t = targets(rows)
    assert t["ok"]["speedup_2.6x_at_30dB_and_1pt"] is True and t["ok"]["beats_euler_at_equal_nfe"] is True
    assert t["too fast"]["speedup_2.6x_at_30dB_and_1pt"] is None and t["too fast"]["beats_euler_at_equal_nfe"]
    assert "above its ceiling (not a result)" in verdict("too fast", t["too fast"])
    assert "2.6x target met" in verdict("ok", t["ok"])
    small = targets(rows, "8 samples")
    assert all(e["speedup_2.6x_at_30dB_and_1pt"] is None and e["beats_euler_at_equal_nfe"] is None
               for e in small.values())
    assert verdict("ok", small["ok"]).endswith("2.6x target not judged, equal-NFE target not judged (8 samples)")


def test_timed_runs_replay_the_measured_batch_of_a_learning_policy():
    """A learning policy changes between batches; timing must replay the state and the calls of the
    batch whose quality was measured, not whatever the policy plays after the measurement."""
    import argparse

    import torch

    import fastflow as ff
    from benchmarks.bench import BenchConfig, measure, time_interleaved
    from fastflow.toy import GaussianMixtureFlow

    flow = GaussianMixtureFlow([[-1.5, 0.0], [1.5, 0.5]], [0.2, 0.3])
    args = argparse.Namespace(cfg=1.0, warmup=2, warmup_batch_size=8, seed=0, batch_size=8, repeats=3)
    cfg = BenchConfig("fastflow", "paper", lambda: ff.FastFlowSampler(20, mu=0.02, policy="paper"))
    x0 = torch.randn(32, 2, generator=torch.Generator().manual_seed(1)).clamp(-1, 1) * 0.5
    labels = torch.zeros(32, dtype=torch.long)
    row, images, for_timing = measure(cfg, flow, x0, labels, args, torch.device("cpu"), None, None)
    timed = time_interleaved({"paper": for_timing}, flow, x0[:8], labels[:8], args, torch.device("cpu"))["paper"]
    assert len(timed.runs) == 3 and timed.run_calls == [row["nfe"]] * 3
    replay = for_timing().sample(flow, x0[:8], y=labels[:8])
    assert torch.equal(replay.x.clamp(-1, 1), images[:8])  # the same decisions, so the same samples
    assert for_timing() is not for_timing()  # a fresh copy each time: timing never trains the measured state
