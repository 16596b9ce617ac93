"""examples/diffusers_sd3.py --tiny end to end: timed through models.timing, the calibration shown
apart, the image written where --out says (nothing in the current folder)."""
import os
import sys

import pytest

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples"))
from diffusers_sd3 import main  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


def test_tiny_run_times_three_pipelines_and_writes_only_its_out(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "images" / "sd3.png"
    assert main(["--tiny", "--steps", "8", "--calls", "4", "--rounds", "3", "--device", "cpu", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images"] and out.read_bytes()[:4] == b"\x89PNG"
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("pipeline"))
    table = {line[:16].strip(): line[16:].split() for line in lines[start + 1:start + 4]}
    assert list(table) == ["full 8 steps", "FastFlow", "plain 4 steps"]
    assert [r[0] for r in table.values()] == ["8", "4", "4"]  # transformer calls, counted at the transformer
    assert table["FastFlow"][-3] == table["plain 4 steps"][-3] == "2.00x"  # the ceiling: 8 / 4 calls
    assert table["full 8 steps"][-1] == "-" and table["FastFlow"][-1] == "dB"
    assert "median of 3 interleaved rounds" in text and "1 CPU thread(s)" in text and "calibration generation:" in text
    assert "paid once per model, image size and step count" in text


def test_default_out_is_under_outputs(tmp_path, monkeypatch):
    from diffusers_sd3 import main as run
    monkeypatch.chdir(tmp_path)
    assert run(["--tiny", "--steps", "6", "--calls", "3", "--rounds", "1", "--device", "cpu"]) == 0
    assert [p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()] == \
        ["outputs/sd3_fastflow.png"]
