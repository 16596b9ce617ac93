"""benchmarks/solvers.py: the diffusers peers driven on our grids, the verdicts, and a toy run."""
import json
import struct

import pytest
import torch

import fastflow as ff

pytest.importorskip("diffusers")
from benchmarks.solvers import DiffusersSampler, main, parse_args, verdict  # noqa: E402

FLOW = ff.toy.GaussianMixtureFlow([[1.5, 0.0], [-1.0, 1.0]], [0.5, 0.4])


def rel(a, b):
    return ((a - b).norm() / b.norm()).item()


def test_diffusers_unipc_on_an_optimised_grid_is_our_unipc_on_it():
    x0 = torch.randn(64, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    ref = ff.EulerSampler(200).sample(FLOW, x0, trace=True)
    grid = ff.optgrid.optimal_times(ff.EulerSampler(200).times.tolist(), ref.trace, 8)
    assert not torch.allclose(grid, torch.linspace(0, 1, 9, dtype=torch.float64), atol=1e-3)  # not uniform
    theirs = DiffusersSampler("unipc", 8, grid).sample(FLOW, x0)
    shifted = grid.clone()
    shifted[0] = 1e-6  # diffusers' grid starts at sigma = 1 - 1e-6: its first log-SNR step is finite
    ours = ff.UniPCSampler(times=shifted).sample(FLOW, x0)
    assert theirs.nfe == ours.nfe == 8
    assert rel(theirs.x, ours.x) < 1e-5  # diffusers keeps its sigmas in float32
    # from t = 0 the step ratios of the second step differ: the benchmark's diffusers rows are diffusers'
    assert rel(ff.UniPCSampler(times=grid).sample(FLOW, x0).x, theirs.x) > 1e-4


def test_diffusers_dpm_solver_converges_on_the_closed_form_flow_from_its_own_first_sigma():
    x0 = torch.randn(256, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    exact = ff.HeunSampler(1000).sample(FLOW, x0).x
    errs = [rel(DiffusersSampler("dpm++", K).sample(FLOW, x0).x, exact) for K in (10, 20, 40, 80)]
    assert errs == sorted(errs, reverse=True) and errs[-1] < errs[0] / 10  # measured 0.0124 -> 0.0010
    # its own flow grid starts at sigma = 0.999 (t = 0.001), not at the noise
    assert DiffusersSampler("dpm++", 8)._scheduler().sigmas[0].item() == pytest.approx(0.999, abs=1e-6)
    with pytest.raises(ValueError, match="unknown diffusers scheduler 'ddim'"):
        DiffusersSampler("ddim", 8)


def test_the_verdict_names_the_best_and_judges_the_choice_by_its_margin():
    rows = [{"sampler": "AB2", "calls": 8, "vs_exact": 30.0, "vs_euler50": 31.0},
            {"sampler": "UniPC", "calls": 8, "vs_exact": 33.0, "vs_euler50": 30.0},
            {"sampler": "wrong budget", "calls": 9, "vs_exact": 99.0, "vs_euler50": 99.0},
            {"sampler": "best, exact target", "calls": 8, "vs_exact": 32.6, "vs_euler50": 30.0, "chose": "x"},
            {"sampler": "best, Euler-50 target", "calls": 8, "vs_exact": 30.0, "vs_euler50": 30.4, "chose": "y"}]
    v = verdict(8, rows, images=True)
    assert v["vs_exact"]["best"] == "UniPC" and v["vs_exact"]["within"]            # 32.6 >= 33.0 - 0.5
    assert v["vs_euler50"]["best"] == "AB2" and not v["vs_euler50"]["within"]      # 30.4 < 31.0 - 0.5
    rel_rows = [dict(r, vs_exact=1 / r["vs_exact"], vs_euler50=1 / r["vs_euler50"]) for r in rows]
    v = verdict(8, rel_rows, images=False)                                          # lower is better
    assert v["vs_exact"]["best"] == "UniPC" and v["vs_exact"]["within"]            # 1/32.6 <= 1.1/33
    assert v["vs_euler50"]["best"] == "AB2" and v["vs_euler50"]["within"]          # 1/30.4 <= 1.1/31


def test_a_toy_run_writes_rows_at_exactly_k_calls_and_a_plot(tmp_path):
    out_json, out_png = tmp_path / "s.json", tmp_path / "s.png"
    main(parse_args(["--models", "toy", "--quick", "--budgets", "8", "12", "--quiet",
                     "--out-json", str(out_json), "--out-plot", str(out_png)]))
    (toy,) = json.loads(out_json.read_text())["models"]
    assert toy["exact_check"]["deviation"] < 1e-4
    for r in toy["rows"]:
        assert r["calls"] == r["budget"], r["sampler"]
    rows = {(r["sampler"], r["budget"]): r for r in toy["rows"]}
    # plans need 9 calls at T = 50; at 8 they skip on the 44-step grid
    assert "steps=44" in rows[("FastFlow plan", 8)]["repr"] and "steps=50" in rows[("FastFlow plan", 12)]["repr"]
    for K in (8, 12):
        assert rows[("UniPC (ours)", K)]["vs_exact"] < rows[("Euler", K)]["vs_exact"] / 2
        # the choice replayed its candidates and kept one of them; Euler-K is its floor on other noise
        assert rows[("best, exact target", K)]["chose"] in ff.choice.CANDIDATES
    assert [v["budget"] for v in toy["verdicts"]] == [8, 12]
    png = out_png.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and struct.unpack(">II", png[16:24])[0] > 500


def test_budgets_out_of_range_get_a_one_line_error(capsys):
    with pytest.raises(SystemExit) as e:
        parse_args(["--budgets", "1", "8"])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and "every K must be in [2, 50]" in err and len(err.splitlines()) == 1
