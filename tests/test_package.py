"""pip can build the project into a wheel that holds the library (fastflow only, not the checkout's models/)
and installs it outside the repository."""
import os
import shutil
import subprocess
import sys
import zipfile

import pytest

import fastflow

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_version_is_a_release_string():
    parts = fastflow.__version__.split(".")
    assert len(parts) == 3 and all(p.isdigit() for p in parts)
    with open(os.path.join(REPO, "CHANGELOG.md"), encoding="utf-8") as f:
        assert f"## {fastflow.__version__}" in f.read()


@pytest.mark.skipif(os.environ.get("FASTFLOW_SKIP_WHEEL") == "1", reason="FASTFLOW_SKIP_WHEEL=1")
def test_wheel_installs_and_imports_outside_the_repository(tmp_path):
    pytest.importorskip("setuptools")
    src = tmp_path / "src"  # a copy of what the build reads, so the checkout gets no build/ folder
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE", "fastflow", "models"):  # models/ present, not packaged
        copy = shutil.copytree if os.path.isdir(os.path.join(REPO, name)) else shutil.copy
        copy(os.path.join(REPO, name), src / name, **({"ignore": shutil.ignore_patterns("__pycache__")}
                                                       if copy is shutil.copytree else {}))
    # offline: no build isolation, no dependencies fetched (torch comes from this environment)
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(tmp_path / "dist"), str(src)], capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("fastflow-*.whl")
    assert wheel.name.startswith(f"fastflow-{fastflow.__version__}-")
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        meta = z.read(next(n for n in names if n.endswith("METADATA"))).decode()
    assert "fastflow/plan.py" in names and "fastflow/grids.py" in names and "fastflow/__init__.py" in names
    sources = {os.path.relpath(os.path.join(d, f), REPO).replace(os.sep, "/")  # every module, subpackages too
               for d, _, files in os.walk(os.path.join(REPO, "fastflow")) for f in files if f.endswith(".py")}
    assert sources <= set(names), sorted(sources - set(names))
    assert not any(n.startswith(("models/", "tests/", "benchmarks/", "scripts/", "notebooks/")) for n in names)
    top = {n.split("/")[0] for n in names}  # the package and its .dist-info, no top-level modules
    assert top == {"fastflow", f"fastflow-{fastflow.__version__}.dist-info"}, top
    required = [line for line in meta.splitlines() if line.startswith("Requires-Dist") and "extra ==" not in line]
    assert required == ["Requires-Dist: torch>=2.4"]
    for extra in ("models", "bench", "test"):
        assert f"Provides-Extra: {extra}" in meta

    target = tmp_path / "site"
    install = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q", "--target",
                              str(target), str(wheel)], capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stderr[-3000:]
    code = ("import fastflow, torch; from fastflow import grids; "
            "r = fastflow.EulerSampler(times=grids.shifted(8, 3.0)).sample(lambda x, t: -x, torch.ones(2, 1)); "
            "print(fastflow.__version__, fastflow.__file__, r.nfe)")
    env = {**os.environ, "PYTHONPATH": str(target)}
    run = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    version, path, nfe = run.stdout.split()
    assert version == fastflow.__version__ and path.startswith(str(target)) and nfe == "8"
