"""Build the notebooks: run each source, save the .ipynb with its outputs (text and figures).

Every notebook is written as a plain Python file in the "percent" format (``# %%`` starts a code
cell, ``# %% [markdown]`` a markdown cell whose lines are ``# ``-commented), which reviews and
diffs well. This script executes the code cells top to bottom in one namespace, from the
repository root, captures what each prints and every matplotlib figure it leaves open, and
writes ``<name>.ipynb`` beside the source with those outputs saved, so the notebook reads on a
code host without running it. ``tests/test_notebooks.py`` executes the sources again and
checks that the saved outputs are the ones the code produces now (numbers to 6 significant
digits, figures by count), so saved outputs cannot go stale.

    python notebooks/build.py                           # every notebook
    python notebooks/build.py fastflow_walkthrough      # one
"""
from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import re
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
NOTEBOOKS = ["fastflow_walkthrough", "image_model"]


def parse_percent(path: str) -> list[dict]:
    """Cells of a percent-format file: [{"cell_type": "code" | "markdown", "source": str}]."""
    with open(path) as f:
        text = f.read()
    cells = []
    for block in re.split(r"^# %%", text, flags=re.M)[1:]:
        header, _, body = block.partition("\n")
        if header.strip() == "[markdown]":
            lines = [line[2:] if line.startswith("# ") else line.lstrip("#") for line in body.strip("\n").split("\n")]
            cells.append({"cell_type": "markdown", "source": "\n".join(lines).strip("\n")})
        else:
            cells.append({"cell_type": "code", "source": body.strip("\n")})
    if not cells:
        raise ValueError(f"{path}: no '# %%' cells")
    return cells


def execute(cells: list[dict]) -> list[list[dict]]:
    """Run the code cells in order in one namespace, from the repository root; per cell, its
    outputs in nbformat: a stdout stream, then one image/png display per open figure."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    namespace: dict = {"__name__": "__main__"}
    outputs = []
    cwd = os.getcwd()
    os.chdir(ROOT)
    sys.path.insert(0, ROOT)
    try:
        for i, cell in enumerate(cells):
            if cell["cell_type"] != "code":
                outputs.append([])
                continue
            buf = io.StringIO()
            start = time.time()
            with contextlib.redirect_stdout(buf):
                exec(compile(cell["source"], f"<cell {i}>", "exec"), namespace)
            if os.environ.get("NOTEBOOK_TIMES"):
                print(f"cell {i}: {time.time() - start:.1f} s", file=sys.stderr)
            out = []
            if buf.getvalue():
                out.append({"output_type": "stream", "name": "stdout", "text": buf.getvalue()})
            for num in plt.get_fignums():
                png = io.BytesIO()
                plt.figure(num).savefig(png, format="png", dpi=80, bbox_inches="tight")
                out.append({"output_type": "display_data", "metadata": {},
                            "data": {"image/png": base64.b64encode(png.getvalue()).decode("ascii"),
                                     "text/plain": "<Figure>"}})
            plt.close("all")
            outputs.append(out)
    finally:
        os.chdir(cwd)
        sys.path.remove(ROOT)
    return outputs


def _lines(text: str) -> list[str]:
    return text.splitlines(keepends=True)


def to_ipynb(cells: list[dict], outputs: list[list[dict]]) -> dict:
    nb_cells, count = [], 0
    for cell, out in zip(cells, outputs):
        if cell["cell_type"] == "markdown":
            nb_cells.append({"cell_type": "markdown", "metadata": {}, "source": _lines(cell["source"])})
            continue
        count += 1
        saved = [dict(o, text=_lines(o["text"])) if o["output_type"] == "stream" else o for o in out]
        nb_cells.append({"cell_type": "code", "execution_count": count, "metadata": {}, "outputs": saved,
                         "source": _lines(cell["source"])})
    return {"cells": nb_cells, "nbformat": 4, "nbformat_minor": 5,
            "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
                         "language_info": {"name": "python"}}}


def build(name: str) -> str:
    src = os.path.join(HERE, f"{name}.py")
    cells = parse_percent(src)
    start = time.time()
    nb = to_ipynb(cells, execute(cells))
    out = os.path.join(HERE, f"{name}.ipynb")
    with open(out, "w") as f:
        json.dump(nb, f, indent=1)
        f.write("\n")
    print(f"{out}: {len(cells)} cells, executed in {time.time() - start:.0f} s")
    return out


if __name__ == "__main__":
    for name in sys.argv[1:] or NOTEBOOKS:
        if name not in NOTEBOOKS:
            sys.exit(f"build.py: error: unknown notebook {name!r}, choose from {NOTEBOOKS}")
        build(name)
