"""Smoke test of the benchmark script: tiny settings, well-formed outputs."""
import json
import os
import struct

from benchmarks.bench import main, parse_args

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_benchmark_writes_well_formed_json_and_plot(tmp_path):
    out_json, out_png = tmp_path / "bench.json", tmp_path / "pareto.png"
    args = parse_args(["--device", "cpu", "--n", "4", "--batch-size", "4", "--repeats", "1", "--warmup", "1", "--warmup-batch-size", "4", "--quick",
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
