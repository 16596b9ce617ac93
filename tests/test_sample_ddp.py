"""sample_ddp.py: the same images whatever the number of processes, resume after a kill, one
policy for all ranks, and clear errors. Multi-process runs use torchrun with gloo on the CPU."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from sample_ddp import main, parse_args

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAST = ["--steps", "8", "--num-samples", "10", "--batch-size", "3", "--quiet", "--device", "cpu"]


def torchrun(nproc, argv, env=None):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "sample_ddp.py", *argv]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})


def test_torchrun_passes_every_flag_through():
    """torchrun abbreviates its own options: a script flag that is a prefix of one (``--n`` of
    ``--nnodes``) would be taken by it, wherever it stands on the line."""
    from torch.distributed.run import get_args_parser
    ours = [max(a.option_strings, key=len) for a in parse_args.__globals__["build_parser"]()._actions
            if a.option_strings and a.dest != "help"]
    ours += ["--shard-dir", "--overwrite", "--keep-shards", "--timeout", "--num-samples"]
    for flag in ours:
        parsed = get_args_parser().parse_args(["--standalone", "--nproc_per_node=2", "sample_ddp.py", flag, "1"])
        assert parsed.training_script_args == [flag, "1"], flag


def load(path):
    with np.load(path) as z:
        return z["arr_0"], z["arr_1"]


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    """The uninterrupted single-process run every other run is compared with."""
    d = tmp_path_factory.mktemp("one")
    main(parse_args([*FAST, "--calls", "5", "--out-npz", str(d / "a.npz"), "--report-json", str(d / "r.json")]))
    return load(d / "a.npz"), json.loads((d / "r.json").read_text())


def test_single_process_writes_the_evaluation_layout(one_process, tmp_path):
    (images, labels), report = one_process
    assert images.dtype == np.uint8 and images.shape == (10, 28, 28, 1)
    assert labels.dtype == np.int64 and labels.tolist() == [i % 10 for i in range(10)]
    assert report["world_size"] == 1 and report["nfe"] == 5 and report["images_sampled_here"] == 10
    assert not os.path.exists(str(tmp_path / "a.npz.shards"))


def test_two_processes_give_the_same_images(one_process, tmp_path):
    (images, labels), _ = one_process
    out = tmp_path / "b.npz"
    proc = torchrun(2, [*FAST, "--calls", "5", "--out-npz", str(out), "--report-json", str(tmp_path / "r.json")])
    assert proc.returncode == 0, proc.stderr[-2000:]
    b_images, b_labels = load(out)
    assert np.array_equal(b_images, images) and np.array_equal(b_labels, labels)  # same batches: byte-identical
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["world_size"] == 2 and report["nfe"] == 5 and len(report["images_per_second_per_rank"]) == 2
    assert sorted(os.listdir(tmp_path)) == ["b.npz", "r.json"]  # shards removed after the merge


def test_other_batches_are_float_rounding_apart(one_process, tmp_path):
    (images, _), _ = one_process
    main(parse_args([*FAST, "--batch-size", "4", "--calls", "5", "--out-npz", str(tmp_path / "c.npz")]))
    other, _ = load(tmp_path / "c.npz")
    assert np.abs(other.astype(int) - images.astype(int)).max() <= 1


def test_a_killed_rank_loses_nothing_and_the_policy_resumes_exactly(tmp_path):
    """A learning policy, so the resumed run must also replay what the finished shards learned."""
    flags = [*FAST, "--batch-size", "2", "--policy", "bandit", "--calls", "5", "--warmup", "2",
             "--warmup-batch-size", "4"]  # batches 0, 2, 4 on rank 0 and 1, 3 on rank 1
    ref = tmp_path / "ref"
    proc = torchrun(2, [*flags, "--out-npz", str(ref / "a.npz"), "--bandit-state", str(ref / "s.json")])
    assert proc.returncode == 0, proc.stderr[-2000:]

    run = tmp_path / "run"
    args = [*flags, "--out-npz", str(run / "a.npz"), "--bandit-state", str(run / "s.json"),
            "--report-json", str(run / "r.json")]
    killed = torchrun(2, args, env={"SAMPLE_DDP_KILL": "1:4"})  # rank 1 dies right after writing batch 3
    assert killed.returncode != 0 and not (run / "a.npz").exists()
    cause = killed.stderr.split("Root Cause")[-1]  # torchrun stops the others and names the rank that died
    assert "rank      : 1" in cause and "SIGKILL" in cause
    shards = sorted(p for p in os.listdir(run / "a.npz.shards") if p.startswith("shard_"))
    # rank 0 finished batch 2 and waits at the end of that round: the last batch (4) was never started
    assert shards == [f"shard_{j:06d}.npz" for j in range(4)]
    resumed = torchrun(2, args)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    report = json.loads((run / "r.json").read_text())
    assert report["images_sampled_here"] == 2  # only batch 4: nothing sampled twice
    a, b = load(ref / "a.npz"), load(run / "a.npz")
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert json.loads((ref / "s.json").read_text()) == json.loads((run / "s.json").read_text())


def test_bad_input_and_damaged_shards(one_process, tmp_path, capsys):
    (images, _), _ = one_process
    out = tmp_path / "a.npz"
    keep = [*FAST, "--calls", "5", "--out-npz", str(out), "--keep-shards"]
    main(parse_args(keep))
    with pytest.raises(ValueError, match=f"--out-npz {out} exists; pass --overwrite"):
        main(parse_args(keep))

    shard = tmp_path / "a.npz.shards" / "shard_000001.npz"
    shard.write_bytes(shard.read_bytes()[:100])  # truncated
    capsys.readouterr()
    report = main(parse_args([*keep, "--overwrite"]))
    assert (f"{shard} is corrupt or incomplete (not a readable .npz (BadZipFile: File is not a zip file)): sampling "
            f"it again") in capsys.readouterr().err
    assert report["resampled_shards"] == [str(shard)] and report["images_sampled_here"] == 3
    assert np.array_equal(load(out)[0], images)

    other = [*FAST, "--calls", "6", "--out-npz", str(out), "--overwrite", "--shard-dir", str(tmp_path / "a.npz.shards")]
    marker = tmp_path / "a.npz.shards" / "sample_ddp-run.json"
    with pytest.raises(ValueError, match=r"sample_ddp-run.json was written by a run with other arguments "
                                         r"\(calls: 5 there, 6 now"):
        main(parse_args(other))  # the folder's marker is checked before any work
    saved = json.loads(marker.read_text())
    marker.write_text(json.dumps({**saved, "args": {**saved["args"], "calls": 6}}))  # a marker that lies
    with pytest.raises(ValueError, match=r"state0.json was written by a run with other arguments \(calls: 5 there, 6 now"):
        main(parse_args(other))  # FastFlow's calibrated state is checked next
    os.remove(tmp_path / "a.npz.shards" / "state0.json")
    with pytest.raises(ValueError, match=r"shard_000000.npz was written by a run with other arguments "
                                         r"\(calls: 5 there, 6 now"):
        main(parse_args(other))

    from sample_ddp import run
    import torch
    with pytest.raises(ValueError, match="--num-samples 1 is smaller than the number of processes"):
        run(parse_args([*FAST, "--num-samples", "1", "--out-npz", str(tmp_path / "x.npz")]), 0, 2, torch.device("cpu"))
    with pytest.raises(SystemExit) as e:
        parse_args(FAST)
    assert e.value.code == 2 and "--out-npz is required" in capsys.readouterr().err


def test_sample_py_gives_the_same_images_and_keys_as_sample_ddp(one_process, tmp_path):
    """One noise function (row i from (seed, i)), one calibration batch and one .npz layout for both scripts."""
    import sample
    (images, labels), _ = one_process
    out = tmp_path / "s.npz"
    flags = [f for f in FAST if f != "--quiet"] + ["--quiet", "--sampler", "fastflow", "--calls", "5",
                                                    "--out-npz", str(out), "--out", str(tmp_path / "s.png")]
    assert sample.cli(flags) == 0
    with np.load(out) as z:
        assert sorted(z.files) == ["arr_0", "arr_1", "images", "labels"]
        assert np.array_equal(z["arr_0"], images) and np.array_equal(z["arr_1"], labels)
        assert np.array_equal(z["images"], z["arr_0"]) and np.array_equal(z["labels"], z["arr_1"])
    main(parse_args([*FAST, "--calls", "5", "--num-samples", "3", "--out-npz", str(tmp_path / "d.npz")]))
    with np.load(tmp_path / "d.npz") as z:
        assert sorted(z.files) == ["arr_0", "arr_1", "images", "labels"] and np.array_equal(z["arr_0"], images[:3])
