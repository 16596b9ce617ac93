"""What a user gets wrong with sample_ddp.py or train.py ends in one line that names the file or
flag at fault, with no traceback: tables of cases, each run the way the script runs
(``sys.exit(run_cli(main, parse_args()))``), then a few through the scripts themselves."""
import gzip
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

import sample_ddp
import train
from models.cli import run_cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAST = ["--sampler", "euler", "--steps", "2", "--num-samples", "4", "--batch-size", "2", "--quiet", "--device", "cpu"]
FASTFLOW = ["--sampler", "fastflow", "--calls", "3", "--steps", "4", "--num-samples", "4", "--batch-size", "2",
            "--quiet", "--device", "cpu"]

pytestmark = pytest.mark.usefixtures("one_thread")


def run_script(main, parse, argv, prog):
    """The exit status of ``prog`` run with ``argv``: 2 for a bad flag, 1 for a user's error."""
    try:
        args = parse(argv)
    except SystemExit as e:
        return e.code
    return run_cli(main, args, prog)


def one_line(capsys) -> str:
    """The run's only line on stderr (asserting there is exactly one, and no traceback)."""
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err.strip()


# ---------------------------------------------------------------- sample_ddp.py


@pytest.fixture(scope="module")
def kept_fastflow(tmp_path_factory):
    """The shard folder of a finished FastFlow run (state0.json and every shard)."""
    d = tmp_path_factory.mktemp("kept")
    sample_ddp.main(sample_ddp.parse_args([*FASTFLOW, "--out-npz", str(d / "a.npz"), "--shard-dir", str(d / "shards"),
                                           "--keep-shards"]))
    return d / "shards"


def user_folder(tmp):
    (tmp / "mine").mkdir()
    (tmp / "mine" / "notes.txt").write_text("mine")
    return [*FAST, "--out-npz", str(tmp / "a.npz"), "--shard-dir", str(tmp / "mine")]


def shard_dot(tmp):
    (tmp / "notes.txt").write_text("mine")
    os.chdir(tmp)
    return [*FAST, "--out-npz", "a.npz", "--shard-dir", "."]


def outputs_inside(tmp):
    return [*FAST, "--out-npz", str(tmp / "d" / "a.npz"), "--report-json", str(tmp / "d" / "r.json"),
            "--shard-dir", str(tmp / "d")]


def bad_marker(tmp):
    (tmp / "s").mkdir()
    (tmp / "s" / sample_ddp.MARKER).write_text("[1, 2]")
    return [*FAST, "--out-npz", str(tmp / "a.npz"), "--shard-dir", str(tmp / "s")]


def with_state0(text):
    """A copy of the kept FastFlow folder whose state0.json holds ``text`` (str or bytes)."""
    def setup(tmp, kept):
        shutil.copytree(kept, tmp / "s")
        path = tmp / "s" / "state0.json"
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
        return [*FASTFLOW, "--out-npz", str(tmp / "a.npz"), "--shard-dir", str(tmp / "s")]
    return setup


def with_shard_meta(meta: str):
    def setup(tmp, kept):
        shutil.copytree(kept, tmp / "s")
        path = tmp / "s" / "shard_000001.npz"
        with np.load(path) as z:
            arrays = {k: z[k] for k in z.files}
        with open(path, "wb") as f:
            np.savez(f, **{**arrays, "meta": np.array(meta)})
        return [*FASTFLOW, "--out-npz", str(tmp / "a.npz"), "--shard-dir", str(tmp / "s")]
    return setup


def state_with(change):
    def text(kept):
        saved = json.loads((kept / "state0.json").read_text())
        change(saved)
        return json.dumps(saved)
    return text


STATE0 = "{tmp}/s/state0.json"
SHARD1 = "{tmp}/s/shard_000001.npz"
DDP_CASES = [  # (id, setup, status, the line's start or a fragment of it)
    ("timeout-0", lambda tmp: [*FAST, "--out-npz", str(tmp / "a.npz"), "--timeout", "0"], 2,
     "sample_ddp.py: error: argument --timeout: expected seconds in [10, 604800], got '0'"),
    ("timeout-1", lambda tmp: [*FAST, "--out-npz", str(tmp / "a.npz"), "--timeout", "1"], 2,
     "sample_ddp.py: error: argument --timeout: expected seconds in [10, 604800], got '1'"),
    ("timeout-huge", lambda tmp: [*FAST, "--out-npz", str(tmp / "a.npz"), "--timeout", "86400000000"], 2,
     "sample_ddp.py: error: argument --timeout: expected seconds in [10, 604800], got '86400000000'"),
    ("timeout-overflow", lambda tmp: [*FAST, "--out-npz", str(tmp / "a.npz"), "--timeout", "1" + "0" * 30], 2,
     "sample_ddp.py: error: argument --timeout: expected seconds in [10, 604800]"),
    ("timeout-text", lambda tmp: [*FAST, "--out-npz", str(tmp / "a.npz"), "--timeout", "1e3"], 2,
     "sample_ddp.py: error: argument --timeout: expected an integer number of seconds, got '1e3'"),
    ("user-folder", user_folder, 1, "sample_ddp.py: error: --shard-dir {tmp}/mine holds files that are not this "
                                    "run's (notes.txt); give a new or empty folder"),
    ("shard-dir-dot", shard_dot, 1, "sample_ddp.py: error: --out-npz a.npz is inside --shard-dir ., whose files "
                                    "the run deletes at the end"),
    ("outputs-inside", outputs_inside, 1, "sample_ddp.py: error: --out-npz {tmp}/d/a.npz is inside --shard-dir "
                                          "{tmp}/d"),
    ("bad-marker", bad_marker, 1, "sample_ddp.py: error: {tmp}/s/sample_ddp-run.json is not a sample_ddp.py shard "
                                  "folder marker; remove {tmp}/s or use another --shard-dir"),
    ("state0-list", with_state0("[]"), 0,
     f"sample_ddp.py: {STATE0} is corrupt (not a mapping with args, run and state): calibrating again"),
    ("state0-no-state", with_state0('{"args": {}, "run": "x"}'), 0,
     f"sample_ddp.py: {STATE0} is corrupt (not a mapping with args, run and state): calibrating again"),
    ("state0-deep", with_state0("[" * 100_000), 0,
     f"sample_ddp.py: {STATE0} is corrupt (not JSON: RecursionError): calibrating again"),
    ("state0-binary", with_state0(b"\xff\xfe\x00"), 0,
     f"sample_ddp.py: {STATE0} is corrupt (not JSON: UnicodeDecodeError): calibrating again"),
    ("state0-bad-state", "bad-state", 1,
     f"sample_ddp.py: error: {STATE0}: its FastFlow state is refused ("),
    ("state0-other-run", "other-run", 1,
     f"sample_ddp.py: error: {STATE0} was written by another run (run id 'x', this folder's is"),
    ("meta-list", with_shard_meta("[1, 2]"), 0,
     f"sample_ddp.py: {SHARD1} is corrupt or incomplete (its meta is not a fastflow-sample-shard record): "
     f"sampling it again"),
    ("meta-null", with_shard_meta("null"), 0,
     f"sample_ddp.py: {SHARD1} is corrupt or incomplete (its meta is not a fastflow-sample-shard record)"),
    ("meta-text", with_shard_meta("abc"), 0, f"sample_ddp.py: {SHARD1} is corrupt or incomplete (its meta is not "
                                             f"JSON): sampling it again"),
    ("class", lambda tmp: [*FAST, "--out-npz", str(tmp / "a.npz"), "--class", "10"], 1,
     "sample_ddp.py: error: --class 10 is out of range: the model has classes 0..9"),
]


@pytest.mark.parametrize("case, setup, status, line", DDP_CASES, ids=[c[0] for c in DDP_CASES])
def test_sample_ddp_messages(case, setup, status, line, kept_fastflow, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # shard_dot moves into tmp_path; the others must not see the checkout
    if setup == "bad-state":
        setup = with_state0(state_with(lambda s: s.update(state={}))(kept_fastflow))
    elif setup == "other-run":
        setup = with_state0(state_with(lambda s: s.update(run="x"))(kept_fastflow))
    if setup.__code__.co_argcount == 2:
        argv = setup(tmp_path, kept_fastflow)
    else:
        argv = setup(tmp_path)
    capsys.readouterr()
    assert run_script(sample_ddp.main, sample_ddp.parse_args, argv, "sample_ddp.py") == status
    assert one_line(capsys).startswith(line.format(tmp=tmp_path))


def test_a_failed_collective_is_one_line_naming_the_rank_and_the_timeout(tmp_path, monkeypatch, capsys):
    import torch.distributed as dist

    def broken(args, rank, world, device):
        raise dist.DistBackendError("[gloo/transport/tcp/pair.cc:534] Connection closed by peer [127.0.0.1]:4321\n"
                                    "Exception raised from ...")
    monkeypatch.setattr(sample_ddp, "run", broken)
    argv = [*FAST, "--out-npz", str(tmp_path / "a.npz"), "--timeout", "30"]
    assert run_script(sample_ddp.main, sample_ddp.parse_args, argv, "sample_ddp.py") == 1
    assert one_line(capsys) == ("sample_ddp.py: error: rank 0: waiting for the other processes failed "
                                "([gloo/transport/tcp/pair.cc:534] Connection closed by peer [127.0.0.1]:4321): one "
                                "of them died or took longer than --timeout 30 s")


@pytest.mark.parametrize("fault, line", [
    ("SAMPLE_DDP_DAMAGE", "rank 0: {shard} is corrupt (not a readable .npz (BadZipFile: File is not a zip file)) "
                          "after sampling; rerun to sample it again"),
    ("SAMPLE_DDP_FULL", "rank 1: [Errno 28] cannot write {shard}: No space left on device")], ids=["merge", "write"])
def test_one_ranks_failure_is_every_ranks_error(fault, line, tmp_path):
    """Rank 1's shard lost after it was written, so rank 0's merge fails; or rank 1's disk full:
    both ranks end with the failing rank's reason, neither dies in a collective. The two ranks
    are started by hand (torchrun would stop one as soon as the other exits), so each one's
    last words are seen."""
    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    out = tmp_path / "a.npz"
    cmd = [sys.executable, "sample_ddp.py", *FAST, "--num-samples", "8", "--out-npz", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", fault: "1", "WORLD_SIZE": "2",
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    ranks = [subprocess.Popen(cmd, cwd=ROOT, env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in range(2)]
    ends = [p.communicate(timeout=300) for p in ranks]
    line = "sample_ddp.py: error: " + line.format(shard=tmp_path / "a.npz.shards" / "shard_000001.npz") + "\n"
    for p, (_, err) in zip(ranks, ends):
        assert p.returncode == 1 and err == line, err[-3000:]
    assert not out.exists()


# ---------------------------------------------------------------- train.py


def idx(path, dims, body: bytes | None = None, magic=None, compress=False):
    """An idx file with header ``dims`` and ``body`` (default: zeros of the declared size)."""
    magic = magic or {3: 2051, 1: 2049}[len(dims)]
    data = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big", signed=True) for d in dims)
    data += bytes(max(0, int(np.prod(dims)))) if body is None else body
    with (gzip.open if compress else open)(path, "wb") as f:
        f.write(data)


IMAGES, LABELS = "train-images-idx3-ubyte", "train-labels-idx1-ubyte"


def mnist(tmp, images=(16, 28, 28), labels=None, image_body=None, label_body=None):
    root = tmp / "data"
    root.mkdir(exist_ok=True)
    idx(root / IMAGES, images, image_body)
    n = images[0] if labels is None else labels
    idx(root / LABELS, (n,), bytes(i % 10 for i in range(n)) if label_body is None else label_body)
    return root


def six_bytes(tmp):
    root = mnist(tmp)
    (root / IMAGES).write_bytes((2051).to_bytes(4, "big") + b"\x00\x10")
    return root


def images_as_labels(tmp):
    root = mnist(tmp)
    shutil.copy(root / IMAGES, root / LABELS)
    return root


def corrupt_gz(tmp):
    root = mnist(tmp)
    os.remove(root / IMAGES)
    (root / (IMAGES + ".gz")).write_bytes(b"\x1f\x8b\x08\x00" + bytes(6) + b"\xff" * 20)  # a bad deflate block
    return root


def locked(tmp):
    from models.training import RunLock
    root = mnist(tmp)
    (tmp / "run").mkdir()
    locked.lock = RunLock(str(tmp / "run")).acquire()  # another open file: flock refuses it like another process
    return root


DATA = "{tmp}/data/"
TRAIN_CASES = [
    ("six-byte-file", six_bytes, f"train.py: error: {DATA}{IMAGES}: idx header cut short (6 of 16 bytes)"),
    ("negative-dims", lambda tmp: mnist(tmp, images=(16, -28, 28)),
     f"train.py: error: {DATA}{IMAGES}: the idx header has a negative dimension [16, -28, 28]"),
    ("zero-images", lambda tmp: mnist(tmp, images=(0, 28, 28)),
     f"train.py: error: {DATA}{IMAGES}: holds no images (idx header [0, 28, 28])"),
    ("body-short", lambda tmp: mnist(tmp, image_body=bytes(12000)),
     f"train.py: error: {DATA}{IMAGES}: header says [16, 28, 28] = 12544 bytes but the file holds 12000 after "
     f"the header"),
    ("label-count", lambda tmp: mnist(tmp, labels=15),
     f"train.py: error: {DATA}{IMAGES} holds 16 images but {DATA}{LABELS} holds 15 labels"),
    ("labels-0-199", lambda tmp: mnist(tmp, label_body=bytes([i % 10 for i in range(15)] + [199])),
     f"train.py: error: {DATA}{LABELS}: MNIST labels are digits 0..9, found 199"),
    ("non-square", lambda tmp: mnist(tmp, images=(16, 28, 14)),
     f"train.py: error: {DATA}{IMAGES}: images are 28x14; the model needs square images"),
    ("images-as-labels", images_as_labels,
     f"train.py: error: {DATA}{LABELS} is an idx images file (magic 2051), expected labels (magic 2049)"),
    ("corrupt-gz", corrupt_gz, f"train.py: error: {DATA}{IMAGES}.gz: not a readable .gz file (Error -3 while "
                               f"decompressing data: invalid block type)"),
    ("locked-out-dir", locked, "train.py: error: --out-dir {tmp}/run is in use by another train.py (pid "
                               f"{os.getpid()} on "),
]


@pytest.mark.parametrize("case, setup, line", TRAIN_CASES, ids=[c[0] for c in TRAIN_CASES])
def test_train_messages(case, setup, line, tmp_path, capsys):
    root = setup(tmp_path)
    argv = ["--dataset", "mnist", "--data-root", str(root), "--steps", "2", "--batch-size", "8", "--out-dir",
            str(tmp_path / "run"), "--sample-every", "0", "--ckpt-every", "0", "--threads", "1", "--no-progress"]
    try:
        assert run_script(train.main, train.parse_args, argv, "train.py") == 1
    finally:
        if case == "locked-out-dir":
            locked.lock.release()
    assert one_line(capsys).startswith(line.format(tmp=tmp_path))
    assert not (tmp_path / "run" / "last.pt").exists()


# ---------------------------------------------------------------- through the scripts


def test_the_scripts_print_the_one_line_themselves(tmp_path):
    here = tmp_path / "here"
    here.mkdir()
    (here / "notes.txt").write_text("mine")
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "sample_ddp.py"), *FAST, "--out-npz",
                           str(tmp_path / "a.npz"), "--shard-dir", "."], cwd=here, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 1 and proc.stderr == ("sample_ddp.py: error: --shard-dir . holds files that are not "
                                                    "this run's (notes.txt); give a new or empty folder\n")
    assert os.listdir(here) == ["notes.txt"]
    root = six_bytes(tmp_path)
    proc = subprocess.run([sys.executable, "train.py", "--data-root", str(root), "--out-dir", str(tmp_path / "run"),
                           "--no-progress"], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert proc.returncode == 1 and proc.stderr == (f"train.py: error: {root / IMAGES}: idx header cut short (6 of 16 "
                                                    f"bytes)\n")


def cifar(tmp, data, labels):
    import pickle
    base = tmp / "data" / "cifar-10-batches-py"
    base.mkdir(parents=True)
    with open(base / "test_batch", "wb") as f:
        pickle.dump({b"data": data, b"labels": labels}, f, protocol=2)
    return tmp / "data"


CIFAR = "{tmp}/data/cifar-10-batches-py/test_batch"
CIFAR_CASES = [
    ("labels-out-of-range", lambda tmp: cifar(tmp, np.zeros((2, 3072), np.uint8), [3, 12]),
     f"train.py: error: {CIFAR}: CIFAR-10 labels are 0..9, found 3..12"),
    ("label-count", lambda tmp: cifar(tmp, np.zeros((2, 3072), np.uint8), [3]),
     f"train.py: error: {CIFAR}: 2 images but labels of shape (1,)"),
    ("image-shape", lambda tmp: cifar(tmp, np.zeros((2, 1024), np.uint8), [3, 4]),
     f"train.py: error: {CIFAR}: not a CIFAR-10 batch (b'data' should be uint8 N x 3072, got uint8 (2, 1024))"),
    ("no-data", lambda tmp: cifar(tmp, None, [3, 4]),
     f"train.py: error: {CIFAR}: not a CIFAR-10 batch (b'data' should be uint8 N x 3072, got NoneType)"),
]


@pytest.mark.parametrize("case, setup, line", CIFAR_CASES, ids=[c[0] for c in CIFAR_CASES])
def test_train_cifar_messages(case, setup, line, tmp_path, capsys):
    argv = ["--dataset", "cifar10", "--split", "test", "--data-root", str(setup(tmp_path)), "--steps", "2",
            "--batch-size", "2", "--out-dir", str(tmp_path / "run"), "--threads", "1", "--no-progress"]
    assert run_script(train.main, train.parse_args, argv, "train.py") == 1
    assert one_line(capsys) == line.format(tmp=tmp_path)


def test_an_oversized_state0_is_not_read(kept_fastflow, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sample_ddp, "STATE0_MAX_BYTES", 100)
    argv = with_state0(" " * 101 + "{}")(tmp_path, kept_fastflow)
    capsys.readouterr()
    assert run_script(sample_ddp.main, sample_ddp.parse_args, argv, "sample_ddp.py") == 0
    assert one_line(capsys) == (f"sample_ddp.py: {tmp_path}/s/state0.json is corrupt (103 bytes, more than a state "
                                f"ever takes (100)): calibrating again")
