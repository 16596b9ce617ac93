"""Sample many images with torchrun: sharded, resumable, one .npz for the evaluators.

    torchrun --standalone --nproc_per_node=8 sample_ddp.py --sampler fastflow --calls 16 \\
        --num-samples 50000 --batch-size 125 --out-npz samples.npz --report-json report.json

Every flag of sample.py is accepted here with the same meaning (--out, the PNG grid, shows the
first 100 images). Without torchrun it runs as one process.

Which image is which. Global index i in [0, --num-samples) has noise drawn from a generator
seeded by (seed, i) alone and label i mod classes (or --class); the indices are cut into
batches of --batch-size, and rank r samples batches r, r + N, r + 2N, ... So the images do not
depend on the number of processes N: with the plan policy and the non-learning samplers they
are byte-identical whenever the batches are (same --batch-size), and otherwise float rounding
apart.

Shards and resume. Each batch is written as soon as it is done, atomically, to
<--shard-dir>/shard_<batch>.npz with its indices, the run's arguments (with the sha256 of the
checkpoint, so a retrained model of the same name and size is another run), the run id and
what FastFlow learned from it. A rerun with the same arguments skips the valid shards,
resamples corrupt ones (and says why), and refuses shards written with other arguments or by
another run (naming them). Valid means checked, not trusted: the members, dtypes and shapes of
the run, read from the zip directory and the .npy headers before anything is decompressed; the
batch's indices; labels that are the function of the indices above; an nfe in range. Rank 0
merges the shards into --out-npz (arr_0: uint8 N x H x W x C images, arr_1: int64 labels; the
layout of the ADM evaluation suite and DiT's sample_ddp.py), checks that every index is there
exactly once, and removes the shards only after the merged file is written. An error on any
rank (rank 0's merge included) ends every rank with that rank's reason.

The shard folder belongs to the run. The run creates it (or takes a given one only if it is
empty) and writes a marker, sample_ddp-run.json, with its fingerprint and a run id; a folder
with other files and no marker, or the marker of a run with other arguments, is refused before
any work. Rank 0 holds an exclusive lock on the marker for the run, so a second run into the
folder stops at once. No output (--out-npz, --out, --report-json, --bandit-state) may lie inside
it. At the end the run deletes only the files it wrote, by name, and removes the folder only if
it created it and nothing else is left in it.

One policy for all ranks. FastFlow calibrates once (rank 0, on other noise, after loading
--bandit-state if it exists) and sends the state to every rank. Learning policies learn in
rounds (fastflow.distributed): the N batches of a round are sampled from one state, then every
rank applies every batch's update in batch order, so all ranks stay identical and equal to one
process running the same rounds (fastflow.distributed.sample_round), also across a resume. Rank 0 writes
--bandit-state at the end.

Time convention: t = 0 is noise, t = 1 is data; samples are images in [-1, 1].
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime
import errno
import fcntl
import json
import math
import os
import re
import signal
import sys
import time
import uuid

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from fastflow.atomic import atomic_write
from fastflow.distributed import broadcast_state, learns, share_updates
from models.cli import check_writable, run_cli
from models.evaluation import index_noise
from models.npz import NpzError, read_npz
from models.sampling import (build_parser, build_sampler, grid_image, load_for_sampling, parse_checked, state_tag,
                             warm_up_bandit, write_json, write_png)

SHARD_FORMAT = "fastflow-sample-shard"
MARKER = "sample_ddp-run.json"  # the shard folder's owner: {"format", "args", "run", "created"}
MARKER_FORMAT = "fastflow-sample-shard-dir"
# atomic_write's temporary files for the run's own files (mkstemp adds 8 characters)
OWN_TEMP = re.compile(r"\.(shard_\d{6}\.npz|state0\.json|" + re.escape(MARKER) + r")\.[A-Za-z0-9_]{8}\.tmp")
# Flags that do not change the images (where they go, how they are reported, where they run).
NOT_IN_FINGERPRINT = {"out", "out_npz", "report_json", "quiet", "device", "shard_dir", "overwrite", "timeout",
                      "keep_shards", "bandit_state"}


def index_labels(indices, num_classes: int, cls=None) -> torch.Tensor:
    """Label of global index i: i mod num_classes, or ``cls`` for all."""
    idx = torch.as_tensor(list(indices), dtype=torch.long)
    return torch.full_like(idx, cls) if cls is not None else idx % num_classes


def fingerprint(args) -> dict:
    """The arguments that decide the images, and the sha256 of the model (and FlowTurbo refiner)
    file, so a file replaced by another of the same name and size is noticed."""
    from models.checkpoint import file_sha256
    fp = {k: v for k, v in sorted(vars(args).items()) if k not in NOT_IN_FINGERPRINT}
    fp["ckpt_sha256"] = file_sha256(args.ckpt) if os.path.isfile(args.ckpt) else None
    if args.sampler == "flowturbo":
        fp["refiner_sha256"] = file_sha256(args.refiner) if os.path.isfile(args.refiner) else None
    return fp


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(N, C, H, W) in [-1, 1] -> (N, H, W, C) uint8."""
    return ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def shard_path(shard_dir: str, batch: int) -> str:
    return os.path.join(shard_dir, f"shard_{batch:06d}.npz")


def write_shard(path: str, images: np.ndarray, labels: torch.Tensor, indices, fp: dict, run_id: str, update,
                nfe: int) -> None:
    meta = {"format": SHARD_FORMAT, "args": fp, "run": run_id, "update": update, "nfe": nfe}
    atomic_write(path, lambda f: np.savez(f, images=images, labels=labels.numpy(),
                                          indices=np.asarray(list(indices), dtype=np.int64),
                                          meta=np.array(json.dumps(meta))))


class ShardMismatch(ValueError):
    """A shard from a run with other arguments: refuse, never mix."""


def mismatch(path: str, theirs, fp: dict) -> ShardMismatch:
    """The error for a file of this run's shard folder written with other arguments, naming them."""
    theirs = theirs if isinstance(theirs, dict) else {}
    diff = sorted(k for k in set(fp) | set(theirs) if fp.get(k) != theirs.get(k))
    shown = ", ".join(f"{k}: {theirs.get(k)!r} there, {fp.get(k)!r} now" for k in diff[:4])
    return ShardMismatch(f"{path} was written by a run with other arguments ({shown}); use another --shard-dir "
                         f"or remove it")


@dataclasses.dataclass(frozen=True)
class ShardSpec:
    """What every shard of a run must hold beyond its indices: (H, W, C) uint8 images, labels
    ``index_labels(indices, num_classes, cls)``, an nfe in [1, max_nfe]."""
    image_shape: tuple[int, int, int]
    num_classes: int
    cls: int | None
    max_nfe: int


def shard_spec(args, config) -> ShardSpec:
    """The ShardSpec of a run; max_nfe is twice the sampler's steps (Heun's calls), or twice
    FlowTurbo's block count plus two."""
    if args.sampler == "flowturbo":
        from models.refiner import parse_turbo
        max_nfe = 2 * sum(parse_turbo(args.turbo)) + 2
    else:
        max_nfe = 2 * args.steps
    return ShardSpec((config.image_size, config.image_size, config.in_channels), config.num_classes, args.cls,
                     max_nfe)


META_MAX_BYTES = 16 << 20  # a shard's meta: arguments and one run's FastFlow update, a few kB


def read_shard(path: str, indices, fp: dict, run_id: str, spec: ShardSpec):
    """A shard's (images, labels, update, nfe) if it is a valid shard of this run; None if it is
    missing; a string saying what is wrong if it cannot be used (to sample it again). Valid means:
    the members, dtypes and shapes of the run (checked before decompressing anything, see
    models.npz), its indices, labels ``index_labels(indices)``, an nfe in [1, spec.max_nfe], an
    update that is a mapping or None.

    Raises:
        ShardMismatch: for a readable shard written with other arguments, naming them, or by
            another run (copied in from another shard folder).
    """
    if not os.path.exists(path):
        return None
    n = len(indices)
    try:
        z = read_npz(path, {"images": (np.dtype(np.uint8), (n, *spec.image_shape), n * math.prod(spec.image_shape)),
                            "labels": (np.dtype(np.int64), (n,), 8 * n), "indices": (np.dtype(np.int64), (n,), 8 * n),
                            "meta": ("U", (), META_MAX_BYTES)})
    except NpzError as e:
        return str(e)
    try:
        meta = json.loads(str(z["meta"]))
    except (ValueError, RecursionError):
        return "its meta is not JSON"
    if not isinstance(meta, dict) or meta.get("format") != SHARD_FORMAT:
        return f"its meta is not a {SHARD_FORMAT} record"
    if meta.get("args") != fp:
        raise mismatch(path, meta.get("args"), fp)
    if meta.get("run") != run_id:
        raise ShardMismatch(f"{path} was written by another run (run id {meta.get('run')!r}, this folder's is "
                            f"{run_id!r}); remove it to sample it again")
    if z["indices"].tolist() != list(indices):
        return f"its indices are not {indices.start}..{indices.stop - 1}"
    want = index_labels(indices, spec.num_classes, spec.cls).numpy()
    if not np.array_equal(z["labels"], want):
        bad = int(np.flatnonzero(z["labels"] != want)[0])
        return f"label {int(z['labels'][bad])} of index {indices[bad]} should be {int(want[bad])}"
    nfe = meta.get("nfe")
    if (isinstance(nfe, bool) or not isinstance(nfe, (int, float)) or not math.isfinite(nfe) or nfe != int(nfe)
            or not 1 <= nfe <= spec.max_nfe):
        return f"its nfe {nfe!r} is not a call count in [1, {spec.max_nfe}]"
    update = meta.get("update")
    if update is not None and not isinstance(update, dict):
        return f"its FastFlow update is a {type(update).__name__}, not a mapping"
    return z["images"], torch.from_numpy(z["labels"].copy()), update, int(nfe)


def setup_distributed(args):
    """(rank, world size, device); a process group when run by torchrun (NCCL on CUDA, else gloo)
    with ``--timeout`` seconds for every collective, so a dead rank ends the others."""
    from models.cli import resolve_device
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    device = resolve_device(args.device)
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if world > 1:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                timeout=datetime.timedelta(seconds=args.timeout))
    return rank, world, device


def main(args) -> dict:
    rank, world, device = setup_distributed(args)
    try:
        return run(args, rank, world, device)
    except dist.DistError as e:  # a collective that failed or timed out: say so in one line, on this rank
        first = next((line.strip() for line in str(e).splitlines() if line.strip()), type(e).__name__)
        raise ValueError(f"rank {rank}: waiting for the other processes failed ({first[:300]}): one of them died "
                         f"or took longer than --timeout {args.timeout} s") from None
    finally:
        if world > 1 and dist.is_initialized():
            dist.destroy_process_group()


def agree(world: int, step, *args):
    """``step(*args)`` on this rank; if it raises a user's error on any rank, every rank raises it,
    naming the rank (so no rank is left waiting in a collective for one that gave up)."""
    from models.cli import USER_ERRORS
    try:
        out, problem = step(*args), None
    except USER_ERRORS as e:
        out, problem = None, " ".join(str(e).split())
    if world > 1:
        flags = [None] * world
        dist.all_gather_object(flags, problem)
        failed = [(r, m) for r, m in enumerate(flags) if m is not None]
        if failed:
            raise ValueError("; ".join(f"rank {r}: {m}" for r, m in failed))
    elif problem is not None:
        raise ValueError(problem)
    return out


OUTPUT_FLAGS = (("--out-npz", "out_npz"), ("--out", "out"), ("--report-json", "report_json"),
                ("--bandit-state", "bandit_state"))


def check_outputs(args, shard_dir: str, fp: dict) -> None:
    """Rank 0, before any model call: outputs writable and outside the shard folder, no result
    overwritten by accident, and a shard folder this run may use (see ``shard_dir_owner``)."""
    if os.path.exists(args.out_npz) and not args.overwrite:
        raise ValueError(f"--out-npz {args.out_npz} exists; pass --overwrite to replace it")
    for flag, name in OUTPUT_FLAGS:
        path = getattr(args, name)
        if path and inside(path, shard_dir):
            raise ValueError(f"{flag} {path} is inside --shard-dir {shard_dir}, whose files the run deletes at the "
                             f"end; put the outputs or the shards elsewhere")
    for flag, name in OUTPUT_FLAGS:
        if getattr(args, name):
            check_writable(getattr(args, name), flag)
    shard_dir_owner(shard_dir, fp)


def inside(path: str, folder: str) -> bool:
    """Whether ``path`` is ``folder`` or lies below it (links resolved)."""
    path, folder = os.path.realpath(path), os.path.realpath(folder)
    return os.path.commonpath([path, folder]) == folder


def own_file(name: str) -> bool:
    """A name this run writes in its shard folder (marker, state0.json, shards, their temp files)."""
    return (name in (MARKER, "state0.json") or re.fullmatch(r"shard_\d{6}\.npz", name) is not None
            or OWN_TEMP.fullmatch(name) is not None)


def shard_dir_owner(shard_dir: str, fp: dict):
    """The marker of ``shard_dir`` if it is this run's (same fingerprint), None if it is missing or
    empty (the run may take it).

    Raises:
        ValueError: naming the folder, for a file, a folder holding anything without a marker, or
            a corrupt marker; ShardMismatch for the marker of a run with other arguments.
    """
    if not os.path.exists(shard_dir):
        return None
    if not os.path.isdir(shard_dir):
        raise ValueError(f"--shard-dir {shard_dir} is a file, not a folder")
    names = sorted(os.listdir(shard_dir))
    if MARKER not in names:
        if names:
            shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
            raise ValueError(f"--shard-dir {shard_dir} holds files that are not this run's ({shown}); give a new "
                             f"or empty folder")
        return None
    marker = os.path.join(shard_dir, MARKER)
    try:
        with open(marker) as f:
            saved = json.load(f)
    except (OSError, ValueError) as e:
        raise ValueError(f"{marker} is corrupt ({' '.join(str(e).split())}); remove {shard_dir} or use another "
                         f"--shard-dir") from None
    if (not isinstance(saved, dict) or saved.get("format") != MARKER_FORMAT or not isinstance(saved.get("run"), str)
            or not isinstance(saved.get("created"), bool)):
        raise ValueError(f"{marker} is not a sample_ddp.py shard folder marker; remove {shard_dir} or use another "
                         f"--shard-dir")
    if saved.get("args") != fp:
        raise mismatch(marker, saved.get("args"), fp)
    return saved


def claim_shard_dir(shard_dir: str, fp: dict, held: contextlib.ExitStack) -> str:
    """Rank 0: make ``shard_dir`` this run's (create it, or take it if empty, and write the marker)
    and lock its marker until ``held`` closes, so a second run into the folder stops at once;
    returns the run id its shards carry.

    Raises:
        ValueError / OSError: naming the folder, for one the run may not take (``shard_dir_owner``),
            cannot create, or that another run holds.
    """
    saved = shard_dir_owner(shard_dir, fp)
    if saved is None:
        created = not os.path.exists(shard_dir)
        try:
            os.makedirs(shard_dir, exist_ok=True)
        except OSError as e:
            raise OSError(f"--shard-dir {shard_dir}: cannot create it ({e.strerror or e})") from None
        saved = {"format": MARKER_FORMAT, "args": fp, "run": uuid.uuid4().hex, "created": created}
        atomic_write(os.path.join(shard_dir, MARKER), lambda f: json.dump(saved, f), binary=False)
    held.callback(os.close, lock_marker(shard_dir, saved["run"]))
    return saved["run"]


def lock_marker(shard_dir: str, run_id: str) -> int:
    """An open descriptor of ``shard_dir``'s marker holding an exclusive flock, after checking that
    the locked file is still the folder's marker and this run's (two runs that made a marker at
    once: one of them stops).

    Raises:
        ValueError: naming the folder, when another run holds it; OSError when it cannot be locked.
    """
    path = os.path.join(shard_dir, MARKER)
    busy = ValueError(f"--shard-dir {shard_dir} is in use by another sample_ddp.py run; wait for it to end or "
                      f"use another --shard-dir")
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with open(os.dup(fd), encoding="utf-8") as f:  # the locked file itself, whatever the name holds now
            ours = json.load(f).get("run") == run_id and os.stat(path).st_ino == os.fstat(fd).st_ino
    except OSError as e:
        os.close(fd)
        if e.errno in (errno.EAGAIN, errno.EACCES, errno.ENOENT):  # ENOENT: the marker went while we looked
            raise busy from None
        raise OSError(e.errno, f"--shard-dir {shard_dir}: cannot lock {path} ({e.strerror})") from None
    except (ValueError, AttributeError):
        ours = False
    if not ours:
        os.close(fd)
        raise busy
    return fd


def release_shard_dir(shard_dir: str, run_id: str) -> None:
    """Rank 0, after the merge: delete the run's own files by name (the marker last), then the folder
    if the run created it and nothing else is in it; anything else is kept, and said so. A folder
    whose marker is no longer this run's is left as it is."""
    try:
        with open(os.path.join(shard_dir, MARKER)) as f:
            saved = json.load(f)
        mine = isinstance(saved, dict) and saved.get("run") == run_id
    except (OSError, ValueError):
        mine = False
    if not mine:  # the marker went missing or was replaced during the run
        print(f"sample_ddp.py: kept {shard_dir}: its marker {MARKER} is gone or changed, so it is not this "
              f"run's to delete", file=sys.stderr)
        return
    created = saved.get("created") is True
    for name in sorted(os.listdir(shard_dir)):
        if own_file(name) and name != MARKER:
            os.remove(os.path.join(shard_dir, name))
    os.remove(os.path.join(shard_dir, MARKER))
    left = sorted(os.listdir(shard_dir))
    if left:
        shown = ", ".join(left[:5]) + (f" and {len(left) - 5} more" if len(left) > 5 else "")
        print(f"sample_ddp.py: kept {shard_dir}: it holds files this run did not write ({shown})", file=sys.stderr)
    elif created:
        os.rmdir(shard_dir)


def load(args, device):
    """Model, config, sampler (refiner included), all flags checked against the model."""
    model, config, refiner = load_for_sampling(args, device, kind="image")  # image shards only
    return model, config, build_sampler(args.sampler, args, refiner)


STATE0_MAX_BYTES = 256 << 20  # far above any calibrated state: about 1 kB a step (53 kB at T = 50, order 1)


def read_state0(path: str):
    """state0.json as {"args", "run", "state"} (a dict), or a string saying why it cannot be used.

    Raises:
        OSError: the file cannot be read.
    """
    size = os.path.getsize(path)
    if size > STATE0_MAX_BYTES:
        return f"{size} bytes, more than a state ever takes ({STATE0_MAX_BYTES})"
    try:
        with open(path, encoding="utf-8") as f:
            saved = json.load(f)
    except (ValueError, RecursionError) as e:  # UnicodeDecodeError is a ValueError
        return f"not JSON: {type(e).__name__}"
    if not isinstance(saved, dict) or not {"args", "run", "state"} <= set(saved) or not isinstance(saved["state"],
                                                                                                   dict):
        return "not a mapping with args, run and state"
    return saved


def calibrate(sampler, args, fp, run_id, shard_dir, velocity, shape, num_classes, device) -> None:
    """Rank 0: the state this run's shards were made with, if there is one; else --bandit-state
    (if it exists) and the calibration and warm-up runs on other noise, saved for a resume."""
    state0 = os.path.join(shard_dir, "state0.json")
    if os.path.exists(state0):
        saved = read_state0(state0)
        if isinstance(saved, dict):
            if saved["args"] != fp:
                raise mismatch(state0, saved["args"], fp)
            if saved["run"] != run_id:
                raise ShardMismatch(f"{state0} was written by another run (run id {saved['run']!r}, this "
                                    f"folder's is {run_id!r}); remove it to calibrate again")
            try:
                sampler.load_state_dict(saved["state"])
            except (ValueError, KeyError, TypeError) as e:
                raise ValueError(f"{state0}: its FastFlow state is refused ({' '.join(str(e).split())}); remove it "
                                 f"to calibrate again") from None
            return
        print(f"sample_ddp.py: {state0} is corrupt ({saved}): calibrating again", file=sys.stderr)
    if args.bandit_state and os.path.exists(args.bandit_state):
        sampler.load_state(args.bandit_state, tag=state_tag(args))
    labels = index_labels(range(args.warmup_batch_size), num_classes, args.cls)
    warm_up_bandit(sampler, velocity, shape, labels, args, device)
    atomic_write(state0, lambda f: json.dump({"args": fp, "run": run_id, "state": sampler.state_dict()}, f),
                 binary=False)


def run(args, rank: int, world: int, device: torch.device) -> dict:
    """The sampling run of ``main`` on a set-up process group (or one process)."""
    with contextlib.ExitStack() as held:  # what rank 0 holds for the run: its shard folder's lock
        return sample_run(args, rank, world, device, held)


def sample_run(args, rank: int, world: int, device: torch.device, held: contextlib.ExitStack) -> dict:
    n, B = args.n, args.batch_size
    if n < world:
        raise ValueError(f"--num-samples {n} is smaller than the number of processes ({world})")
    shard_dir = args.shard_dir or args.out_npz + ".shards"
    fp = fingerprint(args)
    agree(world, check_outputs if rank == 0 else (lambda *a: None), args, shard_dir, fp)
    model, config, sampler = agree(world, load, args, device)
    run_id = [agree(world, claim_shard_dir if rank == 0 else (lambda *a: None), shard_dir, fp, held)]
    if world > 1:
        dist.broadcast_object_list(run_id, src=0)
    run_id = run_id[0]
    shape = (config.in_channels, config.image_size, config.image_size)
    velocity = model.forward_with_cfg
    spec = shard_spec(args, config)
    if learns(sampler):  # calibrate once, on rank 0; every rank gets its state
        agree(world, calibrate if rank == 0 else (lambda *a: None), sampler, args, fp, run_id, shard_dir, velocity,
              shape, config.num_classes, device)
        if world > 1:
            broadcast_state(sampler)

    batches = math.ceil(n / B)
    rounds = math.ceil(batches / world)

    def batch(j: int):
        """Batch j's (update, nfe, images sampled, seconds, the path if a bad shard was replaced):
        from its valid shard, or sampled and written."""
        indices, path = range(j * B, min((j + 1) * B, n)), shard_path(shard_dir, j)
        found = read_shard(path, indices, fp, run_id, spec)
        if isinstance(found, tuple):
            return found[2], found[3], 0, 0.0, None
        if found is not None:
            print(f"sample_ddp.py: {path} is corrupt or incomplete ({found}): sampling it again", file=sys.stderr)
        x0 = index_noise(indices, shape, args.seed).to(device)
        y = index_labels(indices, config.num_classes, args.cls)
        start = time.perf_counter()
        if learns(sampler):
            with sampler.deferred_updates():
                res = sampler.sample(velocity, x0, y=y.to(device), cfg_scale=args.cfg)
            update = res.info.get("update")
        else:
            res, update = sampler.sample(velocity, x0, y=y.to(device), cfg_scale=args.cfg), None
        images = to_uint8(res.x)  # the host copy also waits for the device
        seconds = time.perf_counter() - start
        if os.environ.get("SAMPLE_DDP_FULL") == str(j):  # fault injection: see fault_for_test
            raise OSError(errno.ENOSPC, f"cannot write {path}: {os.strerror(errno.ENOSPC)}")
        write_shard(path, images, y, indices, fp, run_id, update, res.nfe)
        return update, res.nfe, len(indices), seconds, path if found is not None else None

    bar = tqdm(total=n, desc=f"sampling on {world} process(es)", disable=rank != 0 or args.quiet)
    seconds, nfes, mine, resampled = 0.0, [], 0, []
    for q in range(rounds):
        j = q * world + rank
        update = None
        # Any rank's error (a shard of another run, a disk that is full) is every rank's.
        if j < batches:
            update, nfe, made, took, replaced = agree(world, batch, j)
            nfes.append(nfe)
            seconds, mine = seconds + took, mine + made
            resampled += [replaced] if replaced else []
            if made:
                fault_for_test(rank, mine, j, shard_path(shard_dir, j))
        else:
            agree(world, lambda: None)
        try:  # every rank applies the same updates: a refused one fails on every rank alike
            if world > 1:
                share_updates(sampler, update)
            elif learns(sampler):
                sampler.apply_updates([update])
        except ValueError as e:
            paths = ", ".join(shard_path(shard_dir, k) for k in range(q * world, min((q + 1) * world, batches)))
            raise ValueError(f"the FastFlow updates of {paths} are refused ({' '.join(str(e).split())}); remove "
                             f"those shards to sample them again") from None
        bar.update(min(n, (q + 1) * world * B) - bar.n)
    bar.close()

    stats = torch.tensor([seconds, float(mine), float(sum(nfes)), float(len(nfes))], dtype=torch.float64)
    per_rank = [stats]
    if world > 1:
        per_rank = [torch.zeros_like(stats) for _ in range(world)]
        dist.all_gather(per_rank, stats.to(device) if device.type == "cuda" else stats)
        per_rank = [s.cpu() for s in per_rank]
        every = [None] * world
        dist.all_gather_object(every, resampled)  # also: every shard is on disk
        resampled = sorted(p for r in every for p in r)
    # Rank 0 merges and writes; its error, if any, is every rank's (the others wait for it here).
    return agree(world, finish if rank == 0 else (lambda *a: {}), args, sampler, shard_dir, fp, run_id, spec,
                 per_rank, world, resampled, device)


def finish(args, sampler, shard_dir, fp, run_id, spec, per_rank, world, resampled, device) -> dict:
    """Rank 0: merge the shards into --out-npz, write the other outputs, then delete the shards."""
    n = args.n
    images, labels = merge(shard_dir, n, args.batch_size, fp, run_id, spec)
    atomic_write(args.out_npz, lambda f: np.savez(f, arr_0=images, arr_1=labels, images=images, labels=labels))
    report = make_report(args, per_rank, world, resampled, device)
    if args.out:
        grid = grid_image(torch.from_numpy(images[:100]).permute(0, 3, 1, 2).float() / 127.5 - 1,
                          min(10, len(images)))
        write_png(grid, args.out)
    if learns(sampler) and args.bandit_state:
        sampler.save_state(args.bandit_state, tag=state_tag(args))
    if args.report_json:
        write_json(report, args.report_json)
    if not args.keep_shards:
        release_shard_dir(shard_dir, run_id)
    print(f"wrote {args.out_npz}: {n} images, {report['images_per_second']:.2f} images/s on {world} "
          f"process(es), mean NFE {report['nfe']:.2f}")
    return report


def merge(shard_dir: str, n: int, B: int, fp: dict, run_id: str, spec: ShardSpec):
    """Every shard of the run, checked (``read_shard``): each index in [0, n) exactly once, in order."""
    images, labels, seen = [], [], []
    for j in range(math.ceil(n / B)):
        indices = range(j * B, min((j + 1) * B, n))
        path = shard_path(shard_dir, j)
        found = read_shard(path, indices, fp, run_id, spec)
        if not isinstance(found, tuple):
            raise ValueError(f"{path} is {'missing' if found is None else f'corrupt ({found})'} after sampling; "
                             f"rerun to sample it again")
        images.append(found[0])
        labels.append(found[1].numpy())
        seen.extend(indices)
    if seen != list(range(n)):
        raise ValueError("the shards do not hold every index exactly once")
    return np.concatenate(images), np.concatenate(labels).astype(np.int64)


def make_report(args, per_rank, world, resampled, device) -> dict:
    from models.evaluation import machine_info
    seconds = [float(s[0]) for s in per_rank]
    made = [int(s[1]) for s in per_rank]
    nfe_sum, batches = sum(float(s[2]) for s in per_rank), sum(float(s[3]) for s in per_rank)
    wall = max(seconds)  # 0 when every shard was there already
    return {"sampler": args.sampler, "n": args.n, "seed": args.seed, "cfg": args.cfg, "batch_size": args.batch_size,
            "world_size": world, "nfe": nfe_sum / batches if batches else float("nan"),
            "images_sampled_here": sum(made), "sampling_seconds": wall,
            "images_per_second": sum(made) / wall if sum(made) else 0.0,
            "images_per_second_per_rank": [m / s if s > 0 else 0.0 for m, s in zip(made, seconds)],
            "resampled_shards": resampled, "fingerprint": fingerprint(args), "machine": machine_info(device)}


def fault_for_test(rank: int, done: int, batch: int, path: str) -> None:
    """Fault injection for the tests: SAMPLE_DDP_KILL="rank:images" makes that rank kill itself
    with SIGKILL once it has sampled that many images in this run; SAMPLE_DDP_DAMAGE="batch"
    truncates that batch's shard right after it is written (a disk that lost it). (And
    SAMPLE_DDP_FULL="batch" fails that batch's shard write as a full disk would.)"""
    if os.environ.get("SAMPLE_DDP_DAMAGE") == str(batch):
        with open(path, "r+b") as f:
            f.truncate(100)
    spec = os.environ.get("SAMPLE_DDP_KILL")
    if spec:
        r, images = (int(v) for v in spec.split(":"))
        if r == rank and done >= images:
            os.kill(os.getpid(), signal.SIGKILL)


TIMEOUT_RANGE = (10, 7 * 24 * 3600)  # below: calibration alone outlasts it; above: the backends overflow


def timeout_seconds(text: str) -> int:
    """argparse type: --timeout, an integer number of seconds in TIMEOUT_RANGE."""
    import argparse
    low, high = TIMEOUT_RANGE
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer number of seconds, got {text!r}") from None
    if not low <= value <= high:
        raise argparse.ArgumentTypeError(f"expected seconds in [{low}, {high}], got {text!r}")
    return value


def parse_args(argv=None):
    p = build_parser("sample_ddp.py", __doc__)
    p.set_defaults(sampler="fastflow")
    p.add_argument("--shard-dir", default=None,
                   help="where shards go while sampling: a new or empty folder, or this run's from before "
                        "(default: <--out-npz>.shards)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out-npz")
    p.add_argument("--keep-shards", action="store_true", help="keep the shards after merging")
    p.add_argument("--timeout", type=timeout_seconds, default=600,
                   help=f"seconds a collective may wait for the other ranks before the run fails, "
                        f"{TIMEOUT_RANGE[0]} to {TIMEOUT_RANGE[1]} (a week)")
    args = parse_checked(p, argv)
    if not args.out_npz:
        p.error("--out-npz is required")
    return args


if __name__ == "__main__":
    sys.exit(run_cli(main, parse_args(), "sample_ddp.py"))
