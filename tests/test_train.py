"""train.py and models/training.py: data order, exact resume, export, and a two-rank torchrun run."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch.utils.data import DistributedSampler

import train
from models import load_checkpoint, load_model, training
from models.checkpoint import FULL_KEYS
from problems import fake_digits, write_idx

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def mnist_root(tmp_path):
    """64 fake MNIST training digits in idx .gz format."""
    return write_idx(tmp_path, "train", *fake_digits(64))


def tiny_args(root, out_dir, steps, *extra):
    return train.parse_args([
        "--dataset", "mnist", "--data-root", str(root), "--model", "DiT-MNIST-tiny", "--steps", str(steps),
        "--batch-size", "8", "--lr", "1e-3", "--warmup", "2", "--out-dir", str(out_dir), "--ckpt-every", "0",
        "--sample-every", "0", "--sample-steps", "2", "--log-every", "1", "--threads", "1", "--no-progress", *extra,
    ])


def test_step_batches_do_not_depend_on_start():
    sampler = DistributedSampler(range(20), num_replicas=1, rank=0, shuffle=True, seed=3, drop_last=True)
    full = list(training.StepBatchSampler(sampler, 4, 0, 12))
    tail = list(training.StepBatchSampler(sampler, 4, 7, 12))
    assert tail == full[7:]
    assert sorted(sum(full[:5], [])) == list(range(20))  # one epoch = one permutation
    assert full[:5] != full[5:10]  # reshuffled each epoch


def test_step_generators_are_reproducible_and_distinct():
    a = torch.randn(3, generator=training.step_generator(0, 5))
    assert torch.equal(a, torch.randn(3, generator=training.step_generator(0, 5)))
    assert not torch.equal(a, torch.randn(3, generator=training.step_generator(0, 6)))
    assert not torch.equal(a, torch.randn(3, generator=training.step_generator(1, 5)))


def test_t_sampling_in_unit_interval():
    for kind in ("uniform", "logit-normal"):
        t = training.sample_t(1000, kind, torch.Generator().manual_seed(0))
        assert t.shape == (1000,) and 0 < t.min() and t.max() < 1
    with pytest.raises(ValueError):
        training.sample_t(3, "cosine", torch.Generator())


def test_resume_reaches_same_weights_and_export(mnist_root, tmp_path):
    straight = train.main(tiny_args(mnist_root, tmp_path / "a", 10))
    assert straight["step"] == 10 and np.isfinite(straight["loss"])

    first = train.main(tiny_args(mnist_root, tmp_path / "b", 5))  # 8 batches per epoch: resume mid-epoch 0
    assert load_checkpoint(tmp_path / "b" / "last.pt", required=FULL_KEYS)["step"] == 5
    resumed = train.main(tiny_args(mnist_root, tmp_path / "b", 10, "--resume", "--export", str(tmp_path / "slim.pt"),
                                   "--export-dtype", "float16"))
    assert resumed["step"] == 10 and first["step"] == 5
    for key in ("model", "ema"):
        a, b = straight[key].state_dict(), resumed[key].state_dict()
        for name in a:
            torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-6, msg=f"{key}.{name}")

    model, config, meta = load_model(tmp_path / "slim.pt")
    assert config.hidden_size == 64 and meta["step"] == 10 and meta["data"]["num_examples"] == 64
    assert os.path.getsize(tmp_path / "slim.pt") < 0.6 * os.path.getsize(tmp_path / "b" / "last.pt")
    assert os.path.isfile(tmp_path / "b" / "samples" / "step_0000010.png")
    assert len((tmp_path / "b" / "log.jsonl").read_text().splitlines()) == 10


@pytest.mark.skipif(os.environ.get("FASTFLOW_SKIP_DDP") == "1", reason="FASTFLOW_SKIP_DDP=1")
@pytest.mark.skipif(shutil.which("torchrun", path=os.path.dirname(sys.executable)) is None, reason="no torchrun")
def test_ddp_torchrun_two_ranks(mnist_root, tmp_path):
    """Two gloo ranks for 3 steps; deselect with -k 'not ddp' or FASTFLOW_SKIP_DDP=1."""
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable))
    cmd = [torchrun, "--standalone", "--nproc_per_node=2", "train.py", "--dataset", "mnist", "--data-root",
           str(mnist_root), "--model", "DiT-MNIST-tiny", "--steps", "3", "--batch-size", "8", "--out-dir",
           str(tmp_path / "ddp"), "--sample-every", "0", "--sample-steps", "2", "--no-progress", "--threads", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    ckpt = load_checkpoint(tmp_path / "ddp" / "last.pt", required=FULL_KEYS)
    assert ckpt["step"] == 3 and ckpt["config"]["hidden_size"] == 64
    assert sorted(os.listdir(tmp_path / "ddp")) == ["last.pt", "log.jsonl", "samples"]  # rank 0 wrote once


def test_device_batches_equal_the_data_loader_batches(mnist_root):
    """The device-resident path draws the same indices and values as the DataLoader, resized too."""
    from torch.utils.data import DataLoader

    from models.data import build_dataset
    for size in (None, 16):
        dataset, _ = build_dataset("mnist", str(mnist_root), train=True, image_size=size)
        sampler = DistributedSampler(dataset, num_replicas=1, rank=0, shuffle=True, seed=1, drop_last=True)
        loader = list(DataLoader(dataset, batch_sampler=training.StepBatchSampler(sampler, 8, 3, 20)))
        batches = training.StepBatchSampler(sampler, 8, 3, 20)
        device = list(training.DeviceBatches(dataset, batches, torch.device("cpu")))
        assert len(loader) == len(device) == 17
        for (xa, ya), (xb, yb) in zip(loader, device):
            assert xb.shape == (8, 1, size or 28, size or 28) and xb.dtype == torch.float32
            torch.testing.assert_close(xa, xb, rtol=0, atol=1e-6)
            assert torch.equal(ya, yb)


def test_data_on_device_trains_the_same_weights_as_the_loader(mnist_root, tmp_path):
    a = train.main(tiny_args(mnist_root, tmp_path / "a", 6, "--data-on-device", "yes"))
    b = train.main(tiny_args(mnist_root, tmp_path / "b", 6, "--data-on-device", "no", "--num-workers", "0"))
    assert a["data_on_device"] and not b["data_on_device"] and a["precision"] == b["precision"] == "fp32"
    for name, p in a["ema"].state_dict().items():
        torch.testing.assert_close(p, b["ema"].state_dict()[name], rtol=1e-5, atol=1e-6, msg=name)
    assert [s for s, _ in a["clock"]] == list(range(1, 7))  # one host read of the loss per log step


def test_precision_and_data_placement_choices():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert training.choose_precision("auto", cpu, 10**9) == "fp32"
    assert training.choose_precision("auto", cuda, 1_300_000) == "fp32"
    assert training.choose_precision("auto", cuda, 32_000_000) == "bf16"
    assert training.choose_precision("fp32", cuda, 10**9) == "fp32"
    folder = torch.utils.data.TensorDataset(torch.zeros(2))
    assert not training.keep_data_on_device(folder, cpu, "auto")
    with pytest.raises(ValueError, match="in-memory"):
        training.keep_data_on_device(folder, cpu, "yes")


def test_an_existing_run_is_not_overwritten_and_resume_logs_each_step_once(mnist_root, tmp_path):
    out = tmp_path / "run"
    train.main(tiny_args(mnist_root, out, 4, "--ckpt-every", "2"))
    with pytest.raises(ValueError, match="already holds a run .*--resume .*--overwrite"):
        train.main(tiny_args(mnist_root, out, 3))
    assert load_checkpoint(out / "last.pt", required=FULL_KEYS)["step"] == 4  # untouched
    with pytest.raises(ValueError, match="at step 4 already; --steps 4 must be greater"):
        train.main(tiny_args(mnist_root, out, 4, "--resume"))
    # a run killed after its step-6 log lines but before a step-6 checkpoint: the resume drops them
    with open(out / "log.jsonl", "a") as f:
        f.write('{"step": 5, "loss": 1.0}\n{"step": 6, "loss": 1.0}\n')
    train.main(tiny_args(mnist_root, out, 6, "--resume"))
    steps = [json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]
    train.main(tiny_args(mnist_root, out, 2, "--overwrite"))
    assert [json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines()] == [1, 2]


@pytest.mark.parametrize("argv, message", [
    (["--steps", "0"], "argument --steps: expected an integer >= 1"),
    (["--batch-size", "0"], "argument --batch-size: expected an integer >= 1"),
    (["--resume", "--overwrite"], "exclude each other")])
def test_bad_train_flags_are_one_line_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        train.parse_args(argv)
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_train_script_reports_a_corrupt_resume_in_one_line(mnist_root, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "last.pt").write_bytes(b"not a checkpoint")
    cmd = [sys.executable, "train.py", "--dataset", "mnist", "--data-root", str(mnist_root), "--steps", "2",
           "--batch-size", "8", "--out-dir", str(out), "--resume", "--no-progress", "--threads", "1"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("train.py: error: ") and "last.pt" in proc.stderr
