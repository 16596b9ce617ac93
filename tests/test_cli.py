"""Every script's command line: a bad flag is one line and exit status 2, a user's error (a missing or
corrupt file, an output that cannot be written) one line and exit status 1, --help shows each default once."""
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "benchmarks"))
sys.path.insert(0, os.path.join(REPO, "scripts"))

import bench  # noqa: E402
import gpu_overhead  # noqa: E402
import peer_model  # noqa: E402
import policies  # noqa: E402
import sample  # noqa: E402
import sample_ddp  # noqa: E402
import theorem  # noqa: E402
import toy_bandit  # noqa: E402
import train  # noqa: E402
import train_classifier  # noqa: E402
import train_overhead  # noqa: E402
import train_refiner  # noqa: E402
from models.cli import run_cli  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")  # the training mains set torch's thread count

SCRIPTS = {"train.py": train, "train_refiner.py": train_refiner, "train_classifier.py": train_classifier,
           "gpu_overhead.py": gpu_overhead, "peer_model.py": peer_model, "policies.py": policies,
           "theorem.py": theorem, "toy_bandit.py": toy_bandit, "train_overhead.py": train_overhead,
           "sample.py": sample, "sample_ddp.py": sample_ddp, "bench.py": bench}

BAD_FLAGS = [
    ("train.py", ["--batch-size", "0"], "--batch-size"),
    ("train.py", ["--steps", "-5"], "--steps"),
    ("train.py", ["--lr", "-1"], "--lr"),
    ("train.py", ["--lr", "nan"], "--lr"),
    ("train.py", ["--weight-decay", "-0.1"], "--weight-decay"),
    ("train.py", ["--grad-clip", "inf"], "--grad-clip"),
    ("train.py", ["--ema-decay", "1"], "--ema-decay"),
    ("train.py", ["--seed", "1e20"], "--seed"),
    ("train.py", ["--seed", str(2 ** 62)], "--seed"),
    ("train.py", ["--sample-steps", "1"], "--sample-steps"),
    ("train.py", ["--num-workers", "-2"], "--num-workers"),
    ("train.py", ["--ckpt-every", "-1"], "--ckpt-every"),
    ("train.py", ["--image-size", "30"], "--image-size"),  # not a multiple of the patch size 4
    ("train_refiner.py", ["--steps", "0"], "--steps"),
    ("train_refiner.py", ["--max-dt", "0"], "--max-dt"),
    ("train_refiner.py", ["--ema-decay", "-0.5"], "--ema-decay"),
    ("train_refiner.py", ["--hidden-size", "50"], "--hidden-size"),  # not a multiple of 4 heads
    ("train_refiner.py", ["--hidden-size", "54", "--num-heads", "3"], "--hidden-size"),  # nor of 4 (sin-cos)
    ("train_refiner.py", ["--frequency-size", "63"], "--frequency-size"),
    ("train_refiner.py", ["--eval-every", "-1"], "--eval-every"),
    ("train_classifier.py", ["--batch-size", "1"], "--batch-size"),
    ("train_classifier.py", ["--dropout", "1"], "--dropout"),
    ("train_classifier.py", ["--channels", "16", "0", "64"], "--channels"),
    ("train_classifier.py", ["--epochs", "0"], "--epochs"),
    ("gpu_overhead.py", ["--repeats", "0"], "--repeats"),
    ("gpu_overhead.py", ["--calls", "2"], "--calls"),
    ("gpu_overhead.py", ["--device", "bogus"], "--device"),
    ("gpu_overhead.py", ["--device", "cuda:99"], "--device"),
    ("peer_model.py", ["--lr", "0"], "--lr"),
    ("peer_model.py", ["--hidden", "0"], "--hidden"),
    ("peer_model.py", ["--seed", "-1"], "--seed"),
    ("policies.py", ["--budgets", "12", "60"], "--budgets"),
    ("policies.py", ["--repeats", "0"], "--repeats"),
    ("policies.py", ["--warmup", "-1"], "--warmup"),
    ("theorem.py", ["--steps", "3"], "--steps"),
    ("toy_bandit.py", ["--eval", "0"], "--eval"),
    ("toy_bandit.py", ["--batch", "-1"], "--batch"),
    ("train_overhead.py", ["--steps", "0"], "--steps"),
    ("train_overhead.py", ["--images", "4"], "--images"),  # fewer than one batch
]


def one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    return lines[0]


@pytest.mark.parametrize("prog, argv, flag", BAD_FLAGS, ids=[f"{p}{' '.join(a)}" for p, a, _ in BAD_FLAGS])
def test_a_bad_flag_is_one_line_and_status_2(prog, argv, flag, capsys):
    with pytest.raises(SystemExit) as e:
        SCRIPTS[prog].parse_args(argv)
    assert e.value.code == 2
    line = one_line(capsys.readouterr().err)
    assert line.startswith(f"{prog}: error: ") and flag in line


@pytest.mark.parametrize("prog", sorted(SCRIPTS))
def test_help_shows_each_default_once(prog, capsys):
    with pytest.raises(SystemExit) as e:
        SCRIPTS[prog].parse_args(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: {prog}")
    flags = [line for line in out.splitlines() if line.startswith("  --")]  # one line starts each flag
    assert out.count("(default:") == len(flags)
    parser = SCRIPTS[prog].__dict__.get("build_parser")
    if parser is not None:  # every flag explains itself
        assert all(a.help for a in parser()._actions)


def test_good_flags_parse():
    args = train.parse_args(["--num-workers", "-1", "--ema-decay", "0", "--grad-clip", "0", "--image-size", "32"])
    assert (args.num_workers, args.ema_decay, args.grad_clip, args.image_size) == (-1, 0.0, 0.0, 32)
    assert train_refiner.parse_args(["--max-dt", "1", "--threads", "0"]).max_dt == 1.0
    assert policies.parse_args(["--budgets", "12", "50"]).budgets == [12, 50]


def status_and_line(main, args, prog, capsys):
    status = run_cli(main, args, prog)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return status, one_line(err)


def not_a_folder(tmp_path, name):
    """A path under an existing regular file: no folder can be made there."""
    (tmp_path / "file").write_text("")
    return str(tmp_path / "file" / name)


def test_train_checks_export_before_work(tmp_path, capsys):
    out_dir, export = tmp_path / "run", not_a_folder(tmp_path, "slim.pt")
    args = train.parse_args(["--data-root", str(tmp_path / "no-data"), "--out-dir", str(out_dir),
                             "--export", export, "--no-progress"])
    status, line = status_and_line(train.main, args, "train.py", capsys)
    assert status == 1 and line.startswith("train.py: error: --export") and export in line
    assert not (out_dir / "last.pt").exists()


def test_train_missing_data_is_one_line(tmp_path, capsys):
    root = str(tmp_path / "no-data")
    args = train.parse_args(["--data-root", root, "--out-dir", str(tmp_path / "run"), "--no-progress",
                             "--threads", "1"])
    status, line = status_and_line(train.main, args, "train.py", capsys)
    assert status == 1 and line.startswith("train.py: error: ") and root in line


def test_train_out_dir_that_is_a_file(tmp_path, capsys):
    out_dir = not_a_folder(tmp_path, "run")
    args = train.parse_args(["--out-dir", out_dir, "--no-progress"])
    status, line = status_and_line(train.main, args, "train.py", capsys)
    assert status == 1 and line.startswith("train.py: error: --out-dir") and out_dir in line


def test_train_refiner_corrupt_base_and_unwritable_export(tmp_path, capsys):
    base = tmp_path / "base.pt"
    base.write_bytes(b"not a checkpoint")
    args = train_refiner.parse_args(["--base", str(base), "--out-dir", str(tmp_path / "run"), "--no-progress"])
    status, line = status_and_line(train_refiner.main, args, "train_refiner.py", capsys)
    assert status == 1 and line.startswith("train_refiner.py: error: ") and str(base) in line
    export = not_a_folder(tmp_path, "refiner.pt")
    args = train_refiner.parse_args(["--base", str(base), "--out-dir", str(tmp_path / "run"), "--export", export])
    status, line = status_and_line(train_refiner.main, args, "train_refiner.py", capsys)
    assert status == 1 and line.startswith("train_refiner.py: error: --export") and export in line


def test_train_classifier_missing_data_and_unwritable_stats(tmp_path, capsys):
    root = str(tmp_path / "no-data")
    outs = ["--out", str(tmp_path / "c.pt"), "--stats-out", str(tmp_path / "s.pt")]
    args = train_classifier.parse_args(["--data-root", root, *outs])
    status, line = status_and_line(train_classifier.main, args, "train_classifier.py", capsys)
    assert status == 1 and line.startswith("train_classifier.py: error: ") and root in line
    stats = not_a_folder(tmp_path, "s.pt")
    args = train_classifier.parse_args(["--data-root", root, "--out", str(tmp_path / "c.pt"), "--stats-out", stats])
    status, line = status_and_line(train_classifier.main, args, "train_classifier.py", capsys)
    assert status == 1 and line.startswith("train_classifier.py: error: --stats-out") and stats in line


@pytest.mark.parametrize("prog, argv_of", [
    ("gpu_overhead.py", lambda path: ["--device", "cpu", "--workloads", "mnist", "--out-json", path]),
    ("peer_model.py", lambda path: ["--out", path]),
    ("policies.py", lambda path: ["--models", "toy", "--quick", "--out-json", path]),
    ("toy_bandit.py", lambda path: ["--out", path]),
    ("train_overhead.py", lambda path: ["--out", path]),
])
def test_benchmark_outputs_are_checked_before_work(prog, argv_of, tmp_path, capsys):
    path = not_a_folder(tmp_path, "result.json")
    module = SCRIPTS[prog]
    status, line = status_and_line(module.main, module.parse_args(argv_of(path)), prog, capsys)
    assert status == 1 and line.startswith(f"{prog}: error: --o") and path in line


def test_policies_update_of_a_corrupt_file_fails_before_work(tmp_path, capsys):
    out_json = tmp_path / "p.json"
    out_json.write_text("{not json")
    args = policies.parse_args(["--models", "toy", "--quick", "--update", "--out-json", str(out_json),
                                "--out-plot", str(tmp_path / "p.png")])
    status, line = status_and_line(policies.main, args, "policies.py", capsys)
    assert status == 1 and line.startswith("policies.py: error: --out-json") and str(out_json) in line
    assert out_json.read_text() == "{not json"  # left as it was


# ---------------------------------------------------------------- the __main__ blocks (one process each)


def run_script(*argv):
    return subprocess.run([sys.executable, *argv], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})


def test_script_bad_flag_exits_2_in_one_line():
    proc = run_script("benchmarks/toy_bandit.py", "--eval", "0")
    assert proc.returncode == 2 and proc.stdout == ""
    line = one_line(proc.stderr)
    assert line.startswith("toy_bandit.py: error: argument --eval")


def test_script_user_error_exits_1_in_one_line(tmp_path):
    base = str(tmp_path / "missing.pt")
    proc = run_script("scripts/train_refiner.py", "--base", base, "--out-dir", str(tmp_path / "run"), "--no-progress")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    line = one_line(proc.stderr)
    assert line.startswith("train_refiner.py: error: ") and base in line
