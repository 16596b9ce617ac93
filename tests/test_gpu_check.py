"""The prepared GPU check: on a machine without CUDA it says so in one line, writes its JSON with
the machine named and what it found, and fails (it never passes without a GPU)."""
import json
import os
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.skipif(torch.cuda.is_available(), reason="the no-GPU path")
def test_without_a_gpu_it_records_the_machine_and_fails(tmp_path):
    out = tmp_path / "g.json"
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "gpu_check.py"), "--out", str(out), "--budget", "60"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "no CUDA device here" in proc.stderr
    report = json.loads(out.read_text())
    assert report["all_ok"] is False and report["machine"]["cuda"] is False
    assert set(report["machine"]["modules"]) == {"torch", "numpy", "einops", "tqdm", "matplotlib", "pytest"}
    assert [s["step"] for s in report["steps"]] == ["imports"]
