"""edit.py on the shipped DiT, on a few fake digits in the real idx format: exact model calls per
method, the .npz layout of sample.py plus the sources, FastFlow's K calls, and one-line errors."""
import json
import re

import numpy as np
import pytest

import edit
from problems import fake_digits, write_idx

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def mnist_root(tmp_path):
    """40 fake MNIST test digits (labels 0..9 in turn) in idx .gz format."""
    return write_idx(tmp_path, "t10k", *fake_digits(40))


def run(root, tmp_path, *flags):
    out = tmp_path / "o"
    argv = ["--data-root", str(root), "--n", "3", "--steps", "6", "--quiet", "--device", "cpu",
            "--out", str(out / "e.png"), "--out-npz", str(out / "e.npz"), "--report-json", str(out / "r.json"), *flags]
    assert edit.cli(argv) == 0
    with open(out / "r.json") as f:
        report = json.load(f)
    with np.load(out / "e.npz") as z:
        arrays = {k: z[k] for k in z.files}
    return report, arrays


@pytest.mark.parametrize("method, calls", [("invert", 12), ("sdedit", 6), ("flowedit", 24)])
def test_each_method_makes_its_calls_and_writes_the_sample_layout(mnist_root, tmp_path, method, calls):
    report, arrays = run(mnist_root, tmp_path, "--method", method, "--target-class", "8", "--n-avg", "2")
    assert report["model_calls"] == calls and report["n"] == 3 and 0 <= report["edit_success"] <= 1
    assert arrays["arr_0"].shape == (3, 28, 28, 1) and arrays["arr_0"].dtype == np.uint8
    assert arrays["arr_1"].tolist() == [8, 8, 8] and arrays["sources"].shape == (3, 28, 28, 1)
    assert (tmp_path / "o" / "e.png").stat().st_size > 0


def test_sources_skip_the_target_class_and_source_keeps_their_labels(mnist_root, tmp_path):
    _, arrays = run(mnist_root, tmp_path, "--method", "sdedit", "--target-class", "source", "--n", "9")
    assert arrays["arr_1"].tolist() == list(range(9))
    _, arrays = run(mnist_root, tmp_path, "--method", "sdedit", "--target-class", "1", "--n", "3")
    assert arrays["arr_1"].tolist() == [1, 1, 1]


def test_fastflow_makes_its_k_calls_and_is_compared_with_the_full_step_edit(mnist_root, tmp_path):
    report, _ = run(mnist_root, tmp_path, "--method", "sdedit", "--sampler", "fastflow", "--steps", "10",
                    "--calls", "6", "--calibration-samples", "2")
    assert report["model_calls"] == 6 and report["full_model_calls"] == 10
    assert report["psnr_vs_full_steps"] > 10 and report["calibration_seconds"] > 0


@pytest.mark.parametrize("flags, message", [
    (["--method", "sdedit", "--t0", "1.0"], r"--t0 must lie in \(0, 1\)"),
    (["--target-class", "12"], "--target-class must be 'source' or a class in 0..9"),
    (["--calls", "8"], "--calls sets FastFlow's budget"),
    (["--n", "40"], "usable sources"),
])
def test_bad_input_is_one_line_before_any_model_call(mnist_root, tmp_path, capsys, flags, message):
    argv = ["--data-root", str(mnist_root), "--quiet", "--device", "cpu", "--out", str(tmp_path / "e.png"), *flags]
    assert edit.cli(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("edit.py: error:") and re.search(message, err[0])


def test_an_image_of_the_wrong_size_is_refused(tmp_path, capsys):
    from PIL import Image
    Image.fromarray(np.zeros((32, 32), dtype=np.uint8)).save(tmp_path / "big.png")
    assert edit.cli(["--image", str(tmp_path / "big.png"), "--quiet", "--device", "cpu",
                     "--out", str(tmp_path / "e.png")]) == 1
    assert "(1, 32, 32) (C, H, W), the model takes (1, 28, 28)" in capsys.readouterr().err


def test_a_run_leaves_the_callers_autograd_on(mnist_root, tmp_path):
    import torch
    run(mnist_root, tmp_path, "--method", "sdedit")
    assert torch.is_grad_enabled()


def test_a_saved_edit_state_skips_the_calibration_and_is_refused_for_another_edit(mnist_root, tmp_path, capsys):
    state = tmp_path / "s.json"
    flags = ["--method", "flowedit", "--t0", "0.2", "--sampler", "fastflow", "--steps", "10", "--calls", "6",
             "--calibration-samples", "2", "--state", str(state)]
    first, a = run(mnist_root, tmp_path, *flags)
    assert not first["state_loaded"] and first["calibration_seconds"] > 0 and state.exists()
    second, b = run(mnist_root, tmp_path, *flags)
    assert second["state_loaded"] and second["calibration_seconds"] is None and second["model_calls"] == 12
    assert np.array_equal(a["arr_0"], b["arr_0"])  # the loaded plan replays the same edit
    base = ["--data-root", str(mnist_root), "--quiet", "--device", "cpu", "--out", str(tmp_path / "x.png")]
    for change, message in ((["--method", "sdedit"], "saved for method = 'flowedit', this edit has method = 'sdedit'"),
                            (["--t0", "0.3"], "saved for t0 = 0.2, this edit has t0 = 0.3"),
                            (["--noise", "fresh"], "saved for noise = 'shared'")):
        argv = base + flags + change
        assert edit.cli(argv) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0] and str(state) in err[0]


def test_state_without_fastflow_is_refused(mnist_root, tmp_path, capsys):
    argv = ["--data-root", str(mnist_root), "--quiet", "--device", "cpu", "--out", str(tmp_path / "e.png"),
            "--state", str(tmp_path / "s.json")]
    assert edit.cli(argv) == 1
    assert "--state keeps FastFlow's calibration" in capsys.readouterr().err
