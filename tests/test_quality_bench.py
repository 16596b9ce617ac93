"""benchmarks/quality.py: its verdicts and per-budget winners on hand-made rows, and one small
end-to-end run on the shipped Fashion-MNIST model (exact calls, columns, seeds, merge, plot)."""
import json

import pytest

from benchmarks import quality

pytestmark = pytest.mark.usefixtures("one_thread")


def row(label, calls, fd, acc=0.9, fds=None):
    r = {"label": label, "family": label.split("-")[0], "calls": calls, "fd": fd, "accuracy": acc}
    if fds is not None:
        r["fd_seeds"] = {str(i): v for i, v in enumerate(fds)}
    return r


def test_verdicts_compare_each_fd_gap_with_the_spread_of_euler_50_over_the_seeds():
    out = {"steps": 50, "seeds": [0, 1, 2], "rows": [
        row("Euler-50", 50, 3.3, 0.95, [3.2, 3.3, 3.5]),       # spread 0.3, mean 3.333
        row("Euler-10", 10, 3.9, 0.93, [3.8, 3.9, 4.0]),       # 0.567 above: more than the spread
        row("FastFlow default", 16, 3.4, 0.95, [3.3, 3.5, 3.4])]}  # 0.067 above: within it
    v = quality.verdicts(out, "fashion-mnist")
    assert v["euler50_fd_spread"] == pytest.approx(0.3)
    assert v["euler10_minus_euler50_fd"] == pytest.approx(3.9 - 10 / 3)
    assert v["euler10_gap_above_spread"] and v["fastflow_default_within_spread"]
    assert v["fastflow_default_3x_fewer_calls"]  # 48 <= 50
    assert v["fd_within_3x_halves"] is False  # 3.33 > 3 x 0.29
    assert v["accuracy_at_least_75"]
    out["rows"][2]["calls"] = 17
    out["rows"][2]["fd_seeds"] = {"0": 4.0, "1": 4.1, "2": 4.2}
    v = quality.verdicts(out, "mnist")
    assert not v["fastflow_default_3x_fewer_calls"] and not v["fastflow_default_within_spread"]
    assert "halves_fd" not in v  # no half-vs-half FD measured for MNIST


def test_the_winner_at_a_budget_is_the_lowest_fd_among_the_rows_within_it():
    rows = [row("Euler-6", 6, 9.0), row("AB2-6", 6, 7.0), row("Euler-10", 10, 8.0), row("Euler-50", 50, 3.0)]
    assert quality.best_per_budget(rows, [6, 10, 50]) == {"6": "AB2-6", "10": "AB2-6", "50": "Euler-50"}
    assert quality.best_per_budget(rows, [4]) == {}


def test_a_small_run_on_the_fashion_model_measures_every_configuration_and_merges(tmp_path):
    path = tmp_path / "q.json"
    kept = {"model": "other", "cfg": 1.0, "n": 1, "steps": 50, "rows": [row("Euler-50", 50, 4.0)]}
    with open(path, "w") as f:
        json.dump({"models": {"mnist": kept}}, f)
    out = quality.main(quality.parse_args([
        "--models", "fashion-mnist", "--n", "130", "--psnr-n", "8", "--budgets", "6", "10", "--steps", "10",
        "--exact-steps", "12", "--seeds", "0", "1", "--calibration-samples", "4", "--batch-size", "130",
        "--timing-n", "2", "--rounds", "1", "--threads", "1", "--quick", "--quiet",
        "--out-json", str(path), "--plot", str(tmp_path / "q.png")]))
    with open(path) as f:
        saved = json.load(f)
    assert saved["models"]["mnist"] == kept  # another model's entry is left as it was
    res = saved["models"]["fashion-mnist"]
    assert res == json.loads(json.dumps(out["models"]["fashion-mnist"]))
    calls = {r["label"]: r["calls"] for r in res["rows"]}
    assert calls["Euler-10"] == 10 and calls["Euler-6"] == 6 and calls["AB2-6"] == 6 and calls["AB2-10"] == 10
    assert calls["FastFlow plan K=6"] == 6
    assert list(calls)[0] == "Euler-10"  # the reference comes first and has no PSNR against itself
    assert "psnr_vs_euler50" not in res["rows"][0] and all("psnr_vs_euler50" in r for r in res["rows"][1:])
    for r in res["rows"]:
        assert r["fd"] > 0 and 0 <= r["accuracy"] <= 1 and r["batch_seconds"] > 0
    seeded = [r for r in res["rows"] if "fd_seeds" in r]
    assert {r["label"] for r in seeded} == {"Euler-10", "FastFlow default"}
    assert all(set(r["fd_seeds"]) == {"0", "1"} for r in seeded)
    assert res["verdicts"]["seeds"] == 2 and "euler50_fd_spread" in res["verdicts"]
    assert res["cfg"] == 2.0 and (tmp_path / "q.png").stat().st_size > 0


def test_the_budgets_must_include_the_reference_steps(capsys):
    with pytest.raises(SystemExit):
        quality.parse_args(["--budgets", "10", "20"])
    assert "--budgets must include --steps (50)" in capsys.readouterr().err


def saved_run(path, dataset, fd):
    res = {"model": dataset, "cfg": 1.0, "n": 10, "steps": 50,
           "rows": [row("Euler-50", 50, fd, fds=[fd, fd + 0.1]), row("AB2-10", 10, fd + 1)]}
    with open(path, "w") as f:
        json.dump({"models": {dataset: res}}, f)
    return res


def test_replot_puts_saved_runs_side_by_side_without_sampling(tmp_path):
    a = saved_run(tmp_path / "a.json", "fashion-mnist", 3.0)
    b = saved_run(tmp_path / "b.json", "mnist", 4.0)
    fig = tmp_path / "both.png"
    out = quality.main(quality.parse_args(["--replot", str(tmp_path / "a.json"), str(tmp_path / "b.json"),
                                           "--plot", str(fig)]))
    assert out["models"] == {"fashion-mnist": a, "mnist": b}
    assert fig.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_replot_refuses_a_dataset_in_two_files_and_a_figure_over_its_input(tmp_path):
    saved_run(tmp_path / "a.json", "mnist", 3.0)
    saved_run(tmp_path / "b.json", "mnist", 4.0)
    with pytest.raises(ValueError, match="mnist is in more than one file"):
        quality.replot([str(tmp_path / "a.json"), str(tmp_path / "b.json")], str(tmp_path / "x.png"))
    before = (tmp_path / "a.json").read_bytes()
    with pytest.raises(ValueError, match="is one of the --replot files"):
        quality.replot([str(tmp_path / "a.json")], str(tmp_path / "a.json"))
    assert (tmp_path / "a.json").read_bytes() == before
    (tmp_path / "bad.json").write_text("[]")
    with pytest.raises(ValueError, match="not a results file"):
        quality.replot([str(tmp_path / "bad.json")], str(tmp_path / "x.png"))
