"""What the scripts delete, overwrite and trust: sample_ddp.py's shard folder belongs to its run
(and nothing else in it is ever removed), checkpoints are told apart by content, one train.py per
run folder, and every file read back is checked before it is believed."""
import json
import os

import pytest

from sample_ddp import MARKER, main, parse_args

FAST = ["--sampler", "euler", "--steps", "2", "--num-samples", "4", "--batch-size", "2", "--quiet", "--device", "cpu"]


def snapshot(root) -> dict:
    """Every file under ``root``: relative path -> bytes (folders as None)."""
    out = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs:
            out[os.path.relpath(os.path.join(folder, name), root)] = None
        for name in files:
            path = os.path.join(folder, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, root)] = f.read()
    return out


def user_files(folder):
    """A folder of a user's own files, one of them in a subfolder, one named like a shard."""
    os.makedirs(folder / "sub", exist_ok=True)
    (folder / "notes.txt").write_text("mine")
    (folder / "sub" / "data.bin").write_bytes(b"\x00\x01")
    (folder / "shard_000000.npz").write_bytes(b"not a shard")
    return snapshot(folder)


# ---------------------------------------------------------------- sample_ddp.py --shard-dir


def test_a_shard_dir_holding_a_users_files_is_refused_and_kept(tmp_path):
    mine = tmp_path / "mydata"
    before = user_files(mine)
    with pytest.raises(ValueError, match=rf"--shard-dir {mine} holds files that are not this run's "
                                         r"\(notes.txt, shard_000000.npz, sub\); give a new or empty folder"):
        main(parse_args([*FAST, "--out-npz", str(tmp_path / "a.npz"), "--shard-dir", str(mine)]))
    assert snapshot(mine) == before and not (tmp_path / "a.npz").exists()


def test_outputs_inside_the_shard_dir_are_refused_before_work(tmp_path):
    out = tmp_path / "d" / "out"
    before = user_files(out)
    (out / "a.npz").write_bytes(b"an older result")
    before = snapshot(out)
    argv = [*FAST, "--out-npz", str(out / "a.npz"), "--report-json", str(out / "r.json"), "--shard-dir", str(out),
            "--overwrite"]
    with pytest.raises(ValueError, match=rf"--out-npz {out / 'a.npz'} is inside --shard-dir {out}, whose files the "
                                         r"run deletes at the end"):
        main(parse_args(argv))
    assert snapshot(out) == before
    argv = [*FAST, "--out-npz", str(tmp_path / "a.npz"), "--report-json", str(out / "r.json"), "--shard-dir", str(out)]
    with pytest.raises(ValueError, match=rf"--report-json {out / 'r.json'} is inside --shard-dir {out}"):
        main(parse_args(argv))
    fresh = tmp_path / "new"  # also for a folder the run would create
    with pytest.raises(ValueError, match=rf"--out {fresh / 'grid.png'} is inside --shard-dir {fresh}"):
        main(parse_args([*FAST, "--out-npz", str(tmp_path / "b.npz"), "--out", str(fresh / "grid.png"),
                         "--shard-dir", str(fresh)]))
    assert snapshot(out) == before and not fresh.exists() and not (tmp_path / "a.npz").exists()


def test_shard_dir_dot_leaves_the_current_folder_alone(tmp_path, monkeypatch):
    here = tmp_path / "here"
    before = user_files(here)
    monkeypatch.chdir(here)
    with pytest.raises(ValueError, match=r"--out-npz a.npz is inside --shard-dir \."):
        main(parse_args([*FAST, "--out-npz", "a.npz", "--shard-dir", "."]))
    with pytest.raises(ValueError, match=r"--shard-dir \. holds files that are not this run's"):
        main(parse_args([*FAST, "--out-npz", str(tmp_path / "a.npz"), "--shard-dir", "."]))
    assert snapshot(here) == before and not (tmp_path / "a.npz").exists()


def test_the_run_deletes_only_its_own_files(tmp_path, capsys):
    shards = tmp_path / "shards"
    argv = [*FAST, "--out-npz", str(tmp_path / "a.npz"), "--shard-dir", str(shards)]
    main(parse_args([*argv, "--keep-shards"]))
    assert sorted(os.listdir(shards)) == [MARKER, "shard_000000.npz", "shard_000001.npz"]
    marker = json.loads((shards / MARKER).read_text())
    assert marker["format"] == "fastflow-sample-shard-dir" and marker["created"] is True
    (shards / "notes.txt").write_text("mine")  # dropped into the run's folder before the rerun
    (shards / ".shard_000001.npz.abcd1234.tmp").write_bytes(b"a killed write")
    capsys.readouterr()
    report = tmp_path / "r.json"
    main(parse_args([*argv, "--overwrite", "--report-json", str(report)]))  # resumes from the kept shards, cleans up
    assert os.listdir(shards) == ["notes.txt"] and (shards / "notes.txt").read_text() == "mine"
    numbers = json.loads(report.read_text(), parse_constant=lambda c: pytest.fail(f"{c} in the report"))
    assert numbers["images_sampled_here"] == 0 and numbers["sampling_seconds"] == 0 and numbers["nfe"] == 2
    assert f"kept {shards}: it holds files this run did not write (notes.txt)" in capsys.readouterr().err


def test_a_folder_whose_marker_changed_during_the_run_is_left_alone(tmp_path, capsys):
    from sample_ddp import release_shard_dir
    folder = tmp_path / "s"
    folder.mkdir()
    (folder / "shard_000000.npz").write_bytes(b"shard")
    (folder / MARKER).write_text(json.dumps({"format": "fastflow-sample-shard-dir", "run": "other", "created": True}))
    before = snapshot(folder)
    release_shard_dir(str(folder), "mine")
    os.remove(folder / MARKER)
    release_shard_dir(str(folder), "mine")
    assert snapshot(folder) == {k: v for k, v in before.items() if k != MARKER}
    assert capsys.readouterr().err.count(f"kept {folder}: its marker {MARKER} is gone or changed") == 2


def test_an_empty_folder_given_by_the_user_is_used_and_kept(tmp_path):
    given = tmp_path / "given"
    given.mkdir()
    main(parse_args([*FAST, "--out-npz", str(tmp_path / "a.npz"), "--shard-dir", str(given)]))
    assert given.is_dir() and os.listdir(given) == [] and (tmp_path / "a.npz").is_file()
    main(parse_args([*FAST, "--out-npz", str(tmp_path / "b.npz"), "--shard-dir", str(tmp_path / "made")]))
    assert not (tmp_path / "made").exists()  # a folder the run made is removed with its files


def test_a_shard_dir_that_is_a_file_or_has_a_foreign_marker(tmp_path):
    (tmp_path / "f").write_text("mine")
    with pytest.raises(ValueError, match=rf"--shard-dir {tmp_path / 'f'} is a file, not a folder"):
        main(parse_args([*FAST, "--out-npz", str(tmp_path / "a.npz"), "--shard-dir", str(tmp_path / "f")]))
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / MARKER).write_text("[1, 2]")
    with pytest.raises(ValueError, match=rf"{bad / MARKER} is not a sample_ddp.py shard folder marker"):
        main(parse_args([*FAST, "--out-npz", str(tmp_path / "a.npz"), "--shard-dir", str(bad)]))
    (bad / MARKER).write_text("{")
    with pytest.raises(ValueError, match=rf"{bad / MARKER} is corrupt"):
        main(parse_args([*FAST, "--out-npz", str(tmp_path / "a.npz"), "--shard-dir", str(bad)]))
    assert (tmp_path / "f").read_text() == "mine" and os.listdir(bad) == [MARKER]


# ---------------------------------------------------------------- checkpoints told apart by content


@pytest.fixture(scope="module")
def two_models(tmp_path_factory):
    """Two checkpoints of one config and the same byte size that differ in one weight."""
    import torch
    from models.evaluation import DEFAULT_CKPT
    d = tmp_path_factory.mktemp("models")
    payload = torch.load(DEFAULT_CKPT, weights_only=True)
    torch.save(payload, d / "a.pt")
    name = next(k for k, v in payload["ema"].items() if v.is_floating_point() and v.numel() > 1)
    payload["ema"][name] = payload["ema"][name] + 1e-3
    torch.save(payload, d / "b.pt")
    assert os.path.getsize(d / "a.pt") == os.path.getsize(d / "b.pt")
    return d / "a.pt", d / "b.pt"


def test_file_sha256_hashes_the_bytes_once_per_version(tmp_path):
    import hashlib
    from models.checkpoint import _sha256, file_sha256
    path = tmp_path / "w.pt"
    path.write_bytes(b"one")
    assert file_sha256(path) == hashlib.sha256(b"one").hexdigest()
    hits = _sha256.cache_info().hits
    assert file_sha256(str(path)) == hashlib.sha256(b"one").hexdigest() and _sha256.cache_info().hits == hits + 1
    tmp = tmp_path / "new"
    tmp.write_bytes(b"two")
    os.replace(tmp, path)  # same name, same size, new content
    assert file_sha256(path) == hashlib.sha256(b"two").hexdigest()


def test_a_resume_with_another_model_of_the_same_size_is_refused(two_models, tmp_path):
    from models.checkpoint import file_sha256
    a, b = two_models
    model = tmp_path / "model.pt"
    model.write_bytes(a.read_bytes())
    argv = [*FAST, "--ckpt", str(model), "--out-npz", str(tmp_path / "a.npz"), "--keep-shards"]
    main(parse_args(argv))
    before = snapshot(tmp_path / "a.npz.shards")
    model.write_bytes(b.read_bytes())  # retrained in place
    with pytest.raises(ValueError, match=rf"{MARKER} was written by a run with other arguments \(ckpt_sha256: "
                                         rf"'{file_sha256(a)}' there, '{file_sha256(b)}' now\)"):
        main(parse_args([*argv, "--overwrite"]))
    assert snapshot(tmp_path / "a.npz.shards") == before


def test_a_fastflow_state_of_another_model_of_the_same_size_is_refused(two_models, tmp_path):
    from models.checkpoint import file_sha256
    a, b = two_models
    model, state = tmp_path / "model.pt", tmp_path / "s.json"
    model.write_bytes(a.read_bytes())
    argv = ["--sampler", "fastflow", "--calls", "3", "--steps", "4", "--num-samples", "2", "--batch-size", "2",
            "--quiet", "--device", "cpu", "--ckpt", str(model), "--bandit-state", str(state)]
    main(parse_args([*argv, "--out-npz", str(tmp_path / "a.npz")]))
    saved = state.read_text()
    assert f"model.pt (sha256 {file_sha256(a)}), cfg 1, all classes" in saved
    model.write_bytes(b.read_bytes())
    with pytest.raises(ValueError, match=rf"s.json: state was saved with tag 'model.pt \(sha256 {file_sha256(a)}\).*"
                                         rf"with tag 'model.pt \(sha256 {file_sha256(b)}\)"):
        main(parse_args([*argv, "--out-npz", str(tmp_path / "b.npz")]))
    assert state.read_text() == saved


# ---------------------------------------------------------------- one train.py per --out-dir


@pytest.fixture
def mnist_root(tmp_path):
    """16 fake MNIST training digits in idx .gz format."""
    import gzip

    import numpy as np
    root = tmp_path / "mnist"
    root.mkdir()
    images = np.random.default_rng(0).integers(0, 256, size=(16, 28, 28), dtype=np.uint8)
    labels = np.arange(16, dtype=np.uint8) % 10
    for name, arr, magic in [("train-images-idx3-ubyte.gz", images, 2051),
                             ("train-labels-idx1-ubyte.gz", labels, 2049)]:
        header = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
        with gzip.open(root / name, "wb") as f:
            f.write(header + arr.tobytes())
    return root


def train_args(root, out_dir, *extra):
    import train
    return train.parse_args(["--dataset", "mnist", "--data-root", str(root), "--steps", "2", "--batch-size", "8",
                             "--out-dir", str(out_dir), "--ckpt-every", "0", "--sample-every", "0",
                             "--sample-steps", "2", "--threads", "1", "--no-progress", *extra])


def test_a_second_train_into_a_locked_out_dir_is_refused(mnist_root, tmp_path, capsys):
    import signal
    import socket
    import subprocess
    import sys

    import train
    out = tmp_path / "run"
    out.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; from models.training import RunLock; RunLock(sys.argv[1]).acquire(); "
                               "print('locked', flush=True); sys.stdin.read()", str(out)],
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))), stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "locked\n"
        with pytest.raises(ValueError, match=rf"--out-dir {out} is in use by another train.py \(pid {holder.pid} on "
                                             rf"{socket.gethostname()}, see {out / '.train.lock'}\); wait for it"):
            train.main(train_args(mnist_root, out))
        assert os.listdir(out) == [".train.lock"]  # nothing written, nothing removed
    finally:
        holder.send_signal(signal.SIGKILL)  # a killed holder: its lock goes with it, the file stays
        holder.wait()
    (out / ".last.pt.abcd1234.tmp").write_bytes(b"a killed checkpoint write")
    (out / ".last.pt.mine").write_bytes(b"not a temp file of ours")
    capsys.readouterr()
    assert train.main(train_args(mnist_root, out))["step"] == 2
    assert "removed 1 temporary file(s) of killed checkpoint writes" in capsys.readouterr().out
    assert sorted(os.listdir(out)) == [".last.pt.mine", "last.pt", "log.jsonl", "samples"]


def test_the_lock_is_held_for_the_run_and_refused_in_process(mnist_root, tmp_path, monkeypatch):
    """Inside the run the folder is locked: a second RunLock (another open file) cannot take it."""
    from models import training
    seen = []
    real = training.run

    def spy(args, *a):
        with pytest.raises(ValueError, match="is in use by another train.py"):
            training.RunLock(args.out_dir).acquire()
        seen.append(open(os.path.join(args.out_dir, ".train.lock")).read())
        return real(args, *a)
    monkeypatch.setattr(training, "run", spy)
    training.train(train_args(mnist_root, tmp_path / "run"))
    assert seen and seen[0].startswith(f"pid {os.getpid()} on ")
    assert not (tmp_path / "run" / ".train.lock").exists()


# ---------------------------------------------------------------- shards read back


def rewrite_shard(path, **changes):
    """Rewrite a shard's arrays; ``meta`` may be a dict (updated) or a raw string (replaced)."""
    import numpy as np
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    meta = changes.pop("meta", {})
    if isinstance(meta, dict):
        arrays["meta"] = np.array(json.dumps({**json.loads(str(arrays["meta"])), **meta}))
    else:
        arrays["meta"] = np.array(meta)
    arrays.update(changes)
    with open(path, "wb") as f:
        np.savez(f, **arrays)


@pytest.fixture(scope="module")
def kept_run(tmp_path_factory):
    """A run with its shards kept: (folder, argv to rerun it, its images)."""
    import numpy as np
    d = tmp_path_factory.mktemp("kept")
    argv = [*FAST, "--out-npz", str(d / "a.npz"), "--shard-dir", str(d / "shards"), "--keep-shards"]
    main(parse_args(argv))
    with np.load(d / "a.npz") as z:
        images = z["arr_0"]
    return d, argv, images, (d / "shards" / "shard_000001.npz").read_bytes()


def labels_plus_one(z):
    return {"labels": z["labels"] + 1}


@pytest.mark.parametrize("forge, reason", [
    (labels_plus_one, "label 3 of index 2 should be 2"),
    (lambda z: {"images": z["images"][:, :14, :14]}, "images has shape (2, 14, 14, 1), not (2, 28, 28, 1)"),
    (lambda z: {"images": z["images"].astype("int8")}, "images has dtype int8, not uint8"),
    (lambda z: {"indices": z["indices"] + 2}, "its indices are not 2..3"),
    (lambda z: {"meta": {"nfe": 1e300}}, "its nfe 1e+300 is not a call count in [1, 4]"),
    (lambda z: {"meta": {"nfe": None}}, "its nfe None is not a call count in [1, 4]"),
    (lambda z: {"meta": {"update": [1]}}, "its FastFlow update is a list, not a mapping"),
    (lambda z: {"meta": "[1, 2]"}, "its meta is not a fastflow-sample-shard record"),
    (lambda z: {"meta": "null"}, "its meta is not a fastflow-sample-shard record"),
    (lambda z: {"meta": "abc"}, "its meta is not JSON"),
    (lambda z: {"extra": z["labels"]}, "it holds ['extra.npy', 'images.npy', 'indices.npy', 'labels.npy', "
                                       "'meta.npy'], not"),
], ids=["labels", "image-size", "dtype", "indices", "nfe", "no-nfe", "update", "meta-list", "meta-null",
        "meta-text", "extra-member"])
def test_a_forged_shard_is_sampled_again_not_merged(kept_run, forge, reason, capsys):
    import numpy as np
    d, argv, images, good = kept_run
    shard = d / "shards" / "shard_000001.npz"
    shard.write_bytes(good)
    with np.load(shard) as z:
        changes = forge(z)
    rewrite_shard(shard, **changes)
    capsys.readouterr()
    report = main(parse_args([*argv, "--overwrite"]))
    assert f"{shard} is corrupt or incomplete ({reason}" in capsys.readouterr().err
    assert report["resampled_shards"] == [str(shard)] and report["nfe"] == 2
    with np.load(d / "a.npz") as z:
        assert np.array_equal(z["arr_0"], images) and z["arr_1"].tolist() == [0, 1, 2, 3]


def test_a_shard_of_another_run_with_its_args_copied_in_is_refused(kept_run, tmp_path):
    import numpy as np
    d, argv, _, good = kept_run
    (d / "shards" / "shard_000001.npz").write_bytes(good)
    main(parse_args([*FAST, "--seed", "1", "--out-npz", str(tmp_path / "b.npz"), "--shard-dir",
                     str(tmp_path / "other"), "--keep-shards"]))
    foreign = tmp_path / "other" / "shard_000001.npz"
    with np.load(d / "shards" / "shard_000001.npz") as z:
        args = json.loads(str(z["meta"]))["args"]
    rewrite_shard(foreign, meta={"args": args})  # the seed-1 images with this run's arguments
    (d / "shards" / "shard_000001.npz").write_bytes(foreign.read_bytes())
    with pytest.raises(ValueError, match=r"shard_000001.npz was written by another run \(run id '[0-9a-f]{32}', "
                                         r"this folder's is '[0-9a-f]{32}'\); remove it to sample it again"):
        main(parse_args([*argv, "--overwrite"]))
    (d / "shards" / "shard_000001.npz").write_bytes(good)


def test_a_compressed_shard_is_never_decompressed_past_its_declared_size(kept_run, tmp_path):
    """A 64 MB deflated member (64 kB on disk) where 1568 bytes belong: refused from the zip
    directory, before any of it is decompressed; a header declaring 10^12 bytes likewise."""
    import tracemalloc
    import zipfile

    import numpy as np
    from sample_ddp import ShardSpec, read_shard
    d, _, _, good = kept_run
    shard = d / "shards" / "shard_000001.npz"
    marker = json.loads((d / "shards" / MARKER).read_text())
    spec = ShardSpec((28, 28, 1), 10, None, 4)
    shard.write_bytes(good)
    assert isinstance(read_shard(str(shard), range(2, 4), marker["args"], marker["run"], spec), tuple)
    with np.load(shard) as z:
        arrays = {k: z[k] for k in z.files}
    for name, header_shape, body in [("bomb.npz", (2, 28, 28, 1), 64 << 20), ("liar.npz", (10 ** 6, 28, 28, 1), 16)]:
        path = tmp_path / name
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
            for key in ("labels", "indices", "meta"):
                with zf.open(f"{key}.npy", "w") as f:
                    np.lib.format.write_array(f, arrays[key])
            with zf.open("images.npy", "w", force_zip64=True) as f:
                np.lib.format.write_array_header_1_0(f, {"descr": "|u1", "fortran_order": False,
                                                         "shape": header_shape})
                for _ in range(0, body, 1 << 20):
                    f.write(bytes(min(1 << 20, body)))
        assert path.stat().st_size < 200_000
        tracemalloc.start()
        found = read_shard(str(path), range(2, 4), marker["args"], marker["run"], spec)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert found == {"bomb.npz": f"images declares {(64 << 20) + 128} bytes uncompressed, more than 1568",
                         "liar.npz": "images has shape (1000000, 28, 28, 1), not (2, 28, 28, 1)"}[name]
        assert peak < 2 << 20, peak


# ---------------------------------------------------------------- idx files read back


def test_an_idx_gz_is_never_read_past_its_header(tmp_path):
    """64 digits and 64 MB of zeros in a 200 kB .gz: at most the header's 64 x 784 bytes + 1 are
    decompressed. A header declaring 10^9 digits in a small .gz is refused before reading."""
    import gzip
    import tracemalloc

    from models.data import read_idx
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    with gzip.open(path, "wb") as f:
        f.write((2051).to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in (64, 28, 28)))
        for _ in range(65):
            f.write(bytes(1 << 20))
    assert path.stat().st_size < 300_000
    tracemalloc.start()
    with pytest.raises(ValueError, match=rf"{path}: header says \[64, 28, 28\] = 50176 bytes but found more than "
                                         r"50176"):
        read_idx(str(path))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 4 << 20, peak
    with gzip.open(path, "wb") as f:
        f.write((2051).to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in (10 ** 9, 28, 28)))
    with pytest.raises(ValueError, match=r"header says \[1000000000, 28, 28\] = 784000000000 bytes, more than a "
                                         r"\d+-byte .gz file can hold"):
        read_idx(str(path))


def test_an_imagenet64_batch_is_never_read_past_what_it_can_hold(tmp_path):
    """A 40 kB val_data.npz whose data header claims 10^6 images of 64 x 64 x 3 (12 GB) in a
    deflated member: refused from the member's sizes, before any allocation."""
    import tracemalloc
    import zipfile

    import numpy as np
    from models.data import build_dataset
    path = tmp_path / "val_data.npz"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        with zf.open("labels.npy", "w") as f:
            np.lib.format.write_array(f, np.ones(10 ** 6, dtype=np.int64))
        with zf.open("data.npy", "w") as f:
            np.lib.format.write_array_header_1_0(f, {"descr": "|u1", "fortran_order": False,
                                                     "shape": (10 ** 6, 3 * 64 * 64)})
            f.write(bytes(1 << 20))
    assert path.stat().st_size < 60_000
    tracemalloc.start()
    with pytest.raises(ValueError, match=rf"{path}: data declares 12288000000 bytes, more than its \d+ stored bytes "
                                         r"can hold"):
        build_dataset("imagenet64", str(tmp_path), train=False)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 16 << 20, peak  # the 8 MB of labels are honest; the 12 GB of images were never allocated


def test_sample_py_refuses_a_state_of_another_model_of_the_same_size(two_models, tmp_path, capsys):
    from models.checkpoint import file_sha256
    from sample import cli
    a, b = two_models
    model, state = tmp_path / "model.pt", tmp_path / "s.json"
    model.write_bytes(a.read_bytes())
    argv = ["--sampler", "fastflow", "--calls", "3", "--steps", "4", "--n", "2", "--batch-size", "2", "--quiet",
            "--device", "cpu", "--ckpt", str(model), "--bandit-state", str(state), "--out", str(tmp_path / "g.png")]
    assert cli(argv) == 0
    saved = state.read_text()
    model.write_bytes(b.read_bytes())  # retrained in place, same size
    capsys.readouterr()
    assert cli(argv) == 1
    err = capsys.readouterr().err
    assert f"sha256 {file_sha256(a)}" in err and f"sha256 {file_sha256(b)}" in err and len(err.splitlines()) == 1
    assert state.read_text() == saved


def test_a_folder_that_cannot_be_locked_is_one_error_naming_it(tmp_path, monkeypatch):
    import errno
    import fcntl

    from models.training import RunLock

    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))
    monkeypatch.setattr(fcntl, "flock", no_locks)
    with pytest.raises(OSError, match=rf"--out-dir {tmp_path}: cannot lock {tmp_path / '.train.lock'} \(No locks "
                                      r"available\); use a local folder"):
        RunLock(str(tmp_path)).acquire()


def test_a_second_sample_ddp_run_into_a_shard_dir_in_use_is_refused(kept_run):
    from sample_ddp import lock_marker
    d, argv, _, good = kept_run
    (d / "shards" / "shard_000001.npz").write_bytes(good)
    marker = json.loads((d / "shards" / MARKER).read_text())
    fd = lock_marker(str(d / "shards"), marker["run"])  # another run holds the folder
    try:
        before = snapshot(d / "shards")
        with pytest.raises(ValueError, match=rf"--shard-dir {d / 'shards'} is in use by another sample_ddp.py run; "
                                             r"wait for it to end or use another --shard-dir"):
            main(parse_args([*argv, "--overwrite"]))
        assert snapshot(d / "shards") == before
    finally:
        os.close(fd)
    with pytest.raises(ValueError, match="is in use by another sample_ddp.py run"):
        lock_marker(str(d / "shards"), "another run id")  # a marker replaced by another run's: refused too
    main(parse_args([*argv, "--overwrite"]))  # the lock goes with its holder
