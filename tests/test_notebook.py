"""The walkthrough notebook runs top to bottom; its cells assert the numbers they show."""
import json
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_walkthrough_notebook_cells_run_and_their_asserts_hold(monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    with open(os.path.join(ROOT, "notebooks", "fastflow_walkthrough.ipynb")) as f:
        nb = json.load(f)
    namespace = {}
    code_cells = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert len(code_cells) >= 4
    for cell in code_cells:
        exec(compile("".join(cell["source"]), "notebook", "exec"), namespace)
    out = capsys.readouterr().out
    assert "fitted slope" in out and "FastFlow:" in out
