"""Smoke test of benchmarks/policies.py on the toy model: well-formed output, numbers that hold."""
import json
import os
import struct

import pytest

from benchmarks.policies import main, parse_args

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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


def test_replot_redraws_the_figure_from_the_saved_json_alone(tmp_path, monkeypatch, capsys):
    import benchmarks.policies as policies
    saved = json.loads(open(os.path.join(ROOT, "results", "policies.json")).read())
    out_json, out_png = tmp_path / "p.json", tmp_path / "p.png"
    out_json.write_text(json.dumps(saved))
    monkeypatch.setattr(policies, "evaluate", lambda *a: pytest.fail("--replot ran a model"))
    drawn = {}
    real_plot = policies.plot
    monkeypatch.setattr(policies, "plot", lambda results, path: drawn.setdefault("names", real_plot(results, path)))
    main(parse_args(["--replot", "--out-json", str(out_json), "--out-plot", str(out_png)]))
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out_json.read_text() == json.dumps(saved)
    lines = {r["label"] for m in saved["models"] for r in m["rows"] if r["budget"] is not None}
    assert len(lines) >= 7 and lines <= set(drawn["names"])  # the legend names every line of every panel
    assert "Euler-50" in drawn["names"] and f"wrote {out_png} from {out_json}" in capsys.readouterr().out
    with pytest.raises(ValueError, match="cannot --replot it, no such file"):
        main(parse_args(["--replot", "--out-json", str(tmp_path / "none.json"), "--out-plot", str(out_png)]))
