"""Smoke test of the benchmark script: tiny settings, well-formed outputs."""
import json
import os
import struct

from benchmarks.bench import main, parse_args

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_benchmark_writes_well_formed_json_and_plot(tmp_path):
    out_json, out_png = tmp_path / "bench.json", tmp_path / "pareto.png"
    # the smoke command of the docstring, smaller; the default --warmup-batch-size 25 exceeds --n
    args = parse_args(["--device", "cpu", "--n", "4", "--batch-size", "4", "--repeats", "1", "--warmup", "1", "--quick",
                       "--mu", "0.01", "--exact-steps", "4", "--out-json", str(out_json), "--out-plot", str(out_png)])
    main(args)
    result = json.loads(out_json.read_text())  # strict JSON: no NaN or Infinity
    assert {"machine", "args", "rows", "targets"} <= set(result)
    assert result["machine"]["device"] == "cpu" and result["machine"]["threads"] >= 1
    rows = {r["label"]: r for r in result["rows"]}
    families = {r["family"] for r in result["rows"]}
    assert {"euler", "heun", "ab2", "static", "fastflow", "teacache", "taylorseer", "flowturbo"} <= families
    assert rows["Euler-50"]["nfe"] == 50 and rows["Euler-50"]["psnr"] is None
    for r in result["rows"]:
        assert r["seconds_per_batch"] > 0 and 0 <= r["overhead_share"] < 1
        assert r["timed_nfe"] == r["nfe"]  # the timed runs are the measured first batch
        assert 0 <= r["accuracy"] <= 1 and r["fid_features"] >= 0
        assert r["psnr_vs_exact"] > 0
        if r["label"] != "Euler-50":
            assert r["psnr"] > 0 and -1 <= r["ssim"] <= 1
    assert rows["Static-50 (every other step)"]["nfe"] == 26
    for entry in result["targets"].values():
        assert isinstance(entry["speedup_2.6x_at_30dB_and_1pt"], bool)
    png = out_png.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", png[16:24])
    assert width > 1000 and height > 300


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
    times, nfes = time_interleaved([for_timing], flow, x0[:8], labels[:8], args, torch.device("cpu"))
    assert len(times[0]) == 3 and nfes[0] == [row["nfe"]] * 3
    replay = for_timing().sample(flow, x0[:8], y=labels[:8])
    assert torch.equal(replay.x.clamp(-1, 1), images[:8])  # the same decisions, so the same samples
    assert for_timing() is not for_timing()  # a fresh copy each time: timing never trains the measured state
