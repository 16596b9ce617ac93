"""Smoke test of benchmarks/policies.py on the toy model: well-formed output, numbers that hold."""
import json
import struct

from benchmarks.policies import main, parse_args


def test_policies_benchmark_on_the_toy_model(tmp_path):
    out_json, out_png = tmp_path / "p.json", tmp_path / "p.png"
    main(parse_args(["--models", "toy", "--quick", "--budgets", "12", "16", "--warmup", "3",
                     "--out-json", str(out_json), "--out-plot", str(out_png)]))
    result = json.loads(out_json.read_text())  # strict JSON
    assert result["plan_seconds"]["50"] > 0
    (toy,) = result["models"]
    assert toy["exact_convergence"]["rel_l2_check_vs_exact"] < 1e-4  # Heun-500 vs Heun-1000: converged
    rows = {(r["label"], r["budget"]): r for r in toy["rows"]}
    for K in (12, 16):
        assert rows[("Euler", K)]["calls"] == rows[("FastFlow plan", K)]["calls"] == K
        assert rows[("FastFlow planning bandit", K)]["calls"] == K
        assert rows[("FastFlow plan", K)]["dev"] < 0.5 * rows[("Euler", K)]["dev"]
        assert 0 <= rows[("FastFlow planning bandit", K)]["batches_to_settle"] <= 3
        ab2_base, variable = rows[("FastFlow plan, AB2 base", K)], rows[("AB2, variable step on the plan's grid", K)]
        assert ab2_base["calls"] == variable["calls"] == K
        assert ab2_base["vs_exact"] < rows[("FastFlow plan", K)]["vs_exact"]  # second order beats first
    assert rows[("Static every other step", None)]["calls"] == 26
    png = out_png.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and struct.unpack(">II", png[16:24])[0] > 500
