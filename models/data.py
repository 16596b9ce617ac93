"""Datasets as (image, label) pairs with images in [-1, 1], shape (C, H, W).

`build_dataset(name, root, ...)` for
    mnist       raw idx(.gz) files in `root` or in root/MNIST/raw (torchvision's layout;
                torchvision only downloads, with download=True)
    cifar10     `cifar-10-batches-py` pickles (own reader; torchvision for --download)
    imagenet64  downsampled-ImageNet .npz batches (train_data_batch_*.npz, val_data.npz)
    folder      a directory of images: class subfolders, or flat (single class 0)

Normalisation: x = uint8 / 127.5 - 1. In the flow convention of this project the
data sit at t = 1 and Gaussian noise at t = 0.
"""

import glob
import gzip
import math
import os
import pickle
import re
import zlib
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import ConcatDataset, Dataset

__all__ = ["DatasetInfo", "ImageTensorDataset", "ImageFolderDataset", "build_dataset", "DATASETS", "VIDEO_DATASETS",
           "MovingMNIST", "bouncing_track", "build_moving_mnist",
           "default_root", "read_idx"]

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the checkout
NORMALIZATION = "x / 127.5 - 1 (uint8 -> [-1, 1])"


@dataclass
class DatasetInfo:
    name: str
    channels: int
    image_size: int
    num_classes: int
    normalization: str = NORMALIZATION
    num_examples: int = 0
    frames: int | None = None  # clips of this many frames (video data); None for images


def to_unit_range(images_uint8: torch.Tensor, image_size: int | None = None) -> torch.Tensor:
    """uint8 (..., C, H, W) -> float32 in [-1, 1], bilinearly resized to image_size if given."""
    x = images_uint8.float() / 127.5 - 1.0
    if image_size is not None and tuple(x.shape[-2:]) != (image_size, image_size):
        squeeze = x.ndim == 3
        x = F.interpolate(x[None] if squeeze else x, size=(image_size, image_size), mode="bilinear",
                          antialias=True, align_corners=False).clamp(-1, 1)
        x = x[0] if squeeze else x
    return x


class ImageTensorDataset(Dataset):
    """In-memory uint8 images (N, C, H, W) and int labels (N,); items are ((C, H, W) in [-1, 1], int)."""

    def __init__(self, images: np.ndarray | torch.Tensor, labels, image_size: int | None = None):
        if isinstance(images, np.ndarray) and not images.flags.writeable:
            images = images.copy()  # np.frombuffer / np.load give read-only arrays
        self.images = torch.as_tensor(images)
        self.labels = torch.as_tensor(np.array(labels, dtype=np.int64))
        if self.images.dtype != torch.uint8 or self.images.ndim != 4:
            raise ValueError(f"images must be uint8 (N, C, H, W), got {self.images.dtype} {tuple(self.images.shape)}")
        if len(self.images) != len(self.labels):
            raise ValueError(f"{len(self.images)} images but {len(self.labels)} labels")
        self.image_size = image_size

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return to_unit_range(self.images[i], self.image_size), int(self.labels[i])


# ---------------------------------------------------------------- MNIST


IDX_MAGIC = {2051: "images", 2049: "labels"}  # 0x0803: uint8 in 3 dimensions, 0x0801: in 1
IDX_NDIM = {"images": 3, "labels": 1}
GZIP_MAX_RATIO = 1032  # deflate expands at most 1032:1, so a .gz of S bytes holds at most 1032 S


def read_idx(path: str, kind: str | None = None) -> np.ndarray:
    """Read an idx file (optionally .gz): magic 2051 = images (N, rows, cols), 2049 = labels (N,).

    Header: big-endian int32 magic, then one big-endian int32 per dimension; data uint8. The size
    the header declares is checked against the file before the body is read (a .gz file: against
    what its size can hold, and at most that size plus one byte is decompressed), so a small file
    cannot make a large allocation.

    Args:
        kind: "images" or "labels" to refuse the other kind (None: either).
    Raises:
        ValueError: naming the file: a bad magic number or the other kind, a header cut short, a
            negative or zero dimension, a body of another size than the header says, a corrupt
            .gz.
    """
    gz = path.endswith(".gz")
    size = os.path.getsize(path)
    try:
        with (gzip.open if gz else open)(path, "rb") as f:
            head = f.read(4)
            if len(head) < 4:
                raise ValueError(f"{path}: {len(head)} bytes{' decompressed' if gz else ''}, too short for an idx "
                                 f"header")
            magic = int.from_bytes(head, "big")
            if magic not in IDX_MAGIC:
                raise ValueError(f"{path}: bad idx magic number {magic} (expected 2051 images or 2049 labels)")
            if kind is not None and IDX_MAGIC[magic] != kind:
                raise ValueError(f"{path} is an idx {IDX_MAGIC[magic]} file (magic {magic}), expected {kind} "
                                 f"(magic {next(m for m, k in IDX_MAGIC.items() if k == kind)})")
            ndim = IDX_NDIM[IDX_MAGIC[magic]]
            raw = f.read(4 * ndim)
            if len(raw) < 4 * ndim:
                raise ValueError(f"{path}: idx header cut short ({4 + len(raw)} of {4 + 4 * ndim} bytes)")
            dims = [int.from_bytes(raw[4 * i:4 * i + 4], "big", signed=True) for i in range(ndim)]
            if min(dims) < 0:
                raise ValueError(f"{path}: the idx header has a negative dimension {dims}")
            if dims[0] == 0:
                raise ValueError(f"{path}: holds no {IDX_MAGIC[magic]} (idx header {dims})")
            if min(dims) == 0:
                raise ValueError(f"{path}: the idx header declares empty images {dims}")
            body = math.prod(dims)
            header = 4 + 4 * ndim
            if not gz and size - header != body:
                raise ValueError(f"{path}: header says {dims} = {body} bytes but the file holds {size - header} "
                                 f"after the header")
            if gz and body > GZIP_MAX_RATIO * size:
                raise ValueError(f"{path}: header says {dims} = {body} bytes, more than a {size}-byte .gz file "
                                 f"can hold")
            data = bytearray()
            while len(data) <= body:  # in pieces: never more than body + 1 bytes, whatever the stream holds
                piece = f.read(min(1 << 20, body + 1 - len(data)))
                if not piece:
                    break
                data += piece
    except (gzip.BadGzipFile, EOFError, zlib.error) as e:
        raise ValueError(f"{path}: not a readable .gz file ({e or type(e).__name__})") from None
    if len(data) != body:
        found = f"more than {body}" if len(data) > body else str(len(data))
        raise ValueError(f"{path}: header says {dims} = {body} bytes but found {found}")
    return np.frombuffer(bytes(data), dtype=np.uint8).reshape(dims)


def _find(root: str, stem: str) -> str | None:
    for name in (stem + ".gz", stem, stem.replace("-idx", ".idx") + ".gz", stem.replace("-idx", ".idx")):
        if os.path.isfile(os.path.join(root, name)):
            return os.path.join(root, name)
    return None


def check_mnist(images: np.ndarray, labels: np.ndarray, img: str, lab: str, what: str = "MNIST labels are digits") -> None:
    """Images and labels that belong together: as many of each, square images, labels 0..9.

    Raises:
        ValueError: naming the file at fault.
    """
    if len(images) != len(labels):
        raise ValueError(f"{img} holds {len(images)} images but {lab} holds {len(labels)} labels")
    if images.shape[1] != images.shape[2]:
        raise ValueError(f"{img}: images are {images.shape[1]}x{images.shape[2]}; the model needs square images")
    if labels.max() > 9:
        raise ValueError(f"{lab}: {what} 0..9, found {int(labels.max())}")


# name -> (torchvision class and raw folder, what its labels are, where a system package puts its files)
IDX_SETS = {
    "mnist": ("MNIST", "MNIST labels are digits", None),
    "fashion-mnist": ("FashionMNIST", "Fashion-MNIST labels are clothing classes",
                      "/usr/share/fashion-mnist"),  # Debian's dataset-fashion-mnist
}


def build_idx_dataset(name: str, root, train, download, image_size):
    """MNIST-format data (idx files, 28 x 28 grey, 10 classes) from ``root``, ``root/<Set>/raw`` (the
    torchvision layout) or, for Fashion-MNIST, Debian's package folder; else torchvision's download.

    Raises:
        FileNotFoundError: when the split is nowhere and ``download`` is off.
        ValueError: naming the file, for a malformed one (``read_idx``, ``check_mnist``).
    """
    tv_name, labels_are, system = IDX_SETS[name]
    prefix = "train" if train else "t10k"
    raw_dirs = [root, os.path.join(root, tv_name, "raw")] + ([system] if system else [])
    for d in raw_dirs:
        img, lab = _find(d, f"{prefix}-images-idx3-ubyte"), _find(d, f"{prefix}-labels-idx1-ubyte")
        if img and lab:
            images, labels = read_idx(img, "images"), read_idx(lab, "labels")
            check_mnist(images, labels, img, lab, labels_are)
            break
    else:
        if not download:
            found = sorted(os.listdir(root)) if os.path.isdir(root) else "directory does not exist"
            hint = " (pass train=False / --split test for the 10k test images)" if train else ""
            raise FileNotFoundError(
                f"no {tv_name} {'train' if train else 'test'} split in {root}: expected "
                f"{prefix}-images-idx3-ubyte[.gz] and {prefix}-labels-idx1-ubyte[.gz] here or in {tv_name}/raw"
                f"{' or ' + system if system else ''}; found {found}{hint} (or pass download=True / --download)")
        import torchvision

        ds = getattr(torchvision.datasets, tv_name)(root, train=train, download=download)
        images, labels = ds.data.numpy(), ds.targets.numpy()
    dataset = ImageTensorDataset(images[:, None], labels, image_size)
    return dataset, DatasetInfo(name, 1, image_size or images.shape[-1], 10, num_examples=len(dataset))


def build_mnist(root, train, download, image_size):
    """MNIST digits (``build_idx_dataset``)."""
    return build_idx_dataset("mnist", root, train, download, image_size)


def build_fashion_mnist(root, train, download, image_size):
    """Fashion-MNIST (Xiao et al. 2017): 60,000 + 10,000 clothing images, 28 x 28 grey, 10 classes."""
    return build_idx_dataset("fashion-mnist", root, train, download, image_size)


# ---------------------------------------------------------------- Moving MNIST (video)


def bouncing_track(frames: int, room: float, rng: np.random.Generator, speed: tuple = (1.5, 3.0)) -> np.ndarray:
    """(frames, 2) top-left positions (row, col) of a sprite moving at constant speed inside
    [0, room] on each axis and bouncing off the edges (position and velocity reflected)."""
    pos = rng.uniform(0, room, size=2)
    angle, v = rng.uniform(0, 2 * np.pi), rng.uniform(*speed)
    vel = v * np.array([np.sin(angle), np.cos(angle)])
    track = np.empty((frames, 2))
    for f in range(frames):
        track[f] = pos
        pos = pos + vel
        for a in range(2):  # reflect off the walls (a step never crosses the room twice: speed < room)
            if pos[a] < 0:
                pos[a], vel[a] = -pos[a], -vel[a]
            elif pos[a] > room:
                pos[a], vel[a] = 2 * room - pos[a], -vel[a]
    return track


class MovingMNIST(Dataset):
    """Moving-MNIST-style clips synthesised from MNIST digits (as Srivastava et al. 2015 made theirs):
    ``digits`` digits, each downscaled to ``digit_size`` pixels, move at constant speed on a black
    ``size`` x ``size`` canvas and bounce off its edges; overlapping digits combine by maximum.

    Clip i is a pure function of (``seed``, i): its digits (drawn from ``images``), start positions
    and velocities come from a generator seeded with both, so any clip can be regenerated alone.
    The condition is the class of its first digit. Items are ((F, C=1, H, W) in [-1, 1], label);
    ``track(i)`` gives the digits' positions per frame (the motion the data obeys).
    CPU configuration: 8 frames of 32 x 32, one 16 px digit; GPU: 16 frames of 64 x 64, two digits.

    Raises:
        ValueError: for images that are not uint8 (N, H, W), labels of another count, or a digit
            that does not fit the canvas.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, clips: int, frames: int = 8, size: int = 32,
                 digit_size: int = 16, digits: int = 1, seed: int = 0):
        images = np.asarray(images)
        if images.dtype != np.uint8 or images.ndim != 3 or len(images) != len(labels) or len(images) == 0:
            raise ValueError(f"need uint8 images (N, H, W) and N labels, got {images.dtype} {images.shape} and "
                             f"{len(labels)} labels")
        if not 1 <= digit_size < size:
            raise ValueError(f"a digit of {digit_size} px does not fit a {size} px canvas")
        small = F.interpolate(torch.from_numpy(images).float()[:, None], size=(digit_size, digit_size),
                              mode="bilinear", antialias=True, align_corners=False)
        self.sprites = small[:, 0].clamp(0, 255).round().to(torch.uint8)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.clips, self.frames, self.size, self.digit_size, self.digits, self.seed = \
            clips, frames, size, digit_size, digits, seed

    def __len__(self):
        return self.clips

    def _draw(self, i: int):
        rng = np.random.default_rng([self.seed, i])
        which = rng.integers(0, len(self.sprites), size=self.digits)
        tracks = [bouncing_track(self.frames, self.size - self.digit_size, rng) for _ in range(self.digits)]
        return which, tracks

    def track(self, i: int) -> np.ndarray:
        """(digits, frames, 2) top-left positions (row, col) of clip i's digits, before rounding to pixels."""
        return np.stack(self._draw(i)[1])

    def clip(self, i: int) -> tuple[torch.Tensor, int]:
        """Clip i as uint8 (F, 1, H, W) and its label (the first digit's class)."""
        which, tracks = self._draw(i)
        out = torch.zeros(self.frames, 1, self.size, self.size, dtype=torch.uint8)
        d = self.digit_size
        for k, track in zip(which, tracks):
            for f, (r, c) in enumerate(np.rint(track).astype(int)):
                region = out[f, 0, r:r + d, c:c + d]
                torch.maximum(region, self.sprites[k], out=region)
        return out, int(self.labels[which[0]])

    def __getitem__(self, i):
        clip, label = self.clip(i)
        return clip.float() / 127.5 - 1.0, label


def build_moving_mnist(root, train, download, frames: int = 8, size: int = 32, digits: int | None = None,
                       clips: int = 60_000, seed: int | None = None):
    """Moving-MNIST clips (``MovingMNIST``) made from the MNIST split in ``root``.

    Digits are ``size // 2`` px (16 on the 32 px CPU canvas) and there is one of them up to 32 px,
    two above (the 64 px GPU configuration) unless ``digits`` says otherwise. ``clips`` clips are
    indexed (each regenerated from its index); the train split's clips use seed 0 and the test
    split's seed 1, so the two never share a clip.

    Returns:
        (dataset of ((F, 1, size, size) in [-1, 1], label), DatasetInfo with ``frames``)
    """
    digit_set, _ = build_idx_dataset("mnist", root, train, download, None)
    digits = digits if digits is not None else (1 if size <= 32 else 2)
    seed = seed if seed is not None else (0 if train else 1)
    data = MovingMNIST(digit_set.images[:, 0].numpy(), digit_set.labels.numpy(), clips=clips, frames=frames,
                       size=size, digit_size=size // 2, digits=digits, seed=seed)
    return data, DatasetInfo("moving-mnist", 1, size, 10, num_examples=clips, frames=frames)


# ---------------------------------------------------------------- CIFAR-10


# What the CIFAR-10 python batches (and numpy arrays pickled by any protocol) need to rebuild themselves;
# a pickle naming anything else is refused instead of run.
SAFE_PICKLE_GLOBALS = {
    ("_codecs", "encode"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),  # labels saved as numpy ints
}


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickler that admits only SAFE_PICKLE_GLOBALS (plain containers need no globals)."""

    def find_class(self, module, name):
        if (module, name) not in SAFE_PICKLE_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}: not part of a CIFAR-10 batch")
        return super().find_class(module, name)


def _unpickle(path):
    """A CIFAR-10 batch file, read without running code from it.

    Raises:
        ValueError: naming the file, for a pickle that is corrupt or asks for anything but arrays.
    """
    try:
        with open(path, "rb") as f:
            return _ArrayUnpickler(f, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as e:
        raise ValueError(f"{path}: not a CIFAR-10 batch ({e})") from None


def cifar_batch(path: str) -> tuple[np.ndarray, np.ndarray]:
    """A CIFAR-10 batch file's (uint8 (N, 3072) images, int64 (N,) labels in 0..9).

    Raises:
        ValueError: naming the file, for anything else (see also ``_unpickle``).
    """
    batch = _unpickle(path)
    data = batch.get(b"data") if isinstance(batch, dict) else None
    labels = batch.get(b"labels") if isinstance(batch, dict) else None
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        got = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise ValueError(f"{path}: not a CIFAR-10 batch (b'data' should be uint8 N x 3072, got {got})")
    try:
        labels = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"{path}: not a CIFAR-10 batch (b'labels' should be N integers)") from None
    if labels.shape != (len(data),):
        raise ValueError(f"{path}: {len(data)} images but labels of shape {labels.shape}")
    if len(data) and (labels.min() < 0 or labels.max() > 9):
        raise ValueError(f"{path}: CIFAR-10 labels are 0..9, found {int(labels.min())}..{int(labels.max())}")
    return data, labels


def build_cifar10(root, train, download, image_size):
    """Reads cifar-10-batches-py/{data_batch_1..5, test_batch}: dicts with b'data' uint8 (N, 3072)
    in CHW plane order and b'labels'. torchvision is only used to download (it checks md5s)."""
    if download:
        import torchvision

        torchvision.datasets.CIFAR10(root, train=train, download=True)
    base = root if os.path.basename(os.path.normpath(root)) == "cifar-10-batches-py" else os.path.join(
        root, "cifar-10-batches-py")
    names = [f"data_batch_{i}" for i in range(1, 6)] if train else ["test_batch"]
    missing = [n for n in names if not os.path.isfile(os.path.join(base, n))]
    if missing:
        raise FileNotFoundError(f"CIFAR-10 batches {missing} not found in {base} (use --download)")
    parts = [cifar_batch(os.path.join(base, n)) for n in names]
    images = np.concatenate([d for d, _ in parts]).reshape(-1, 3, 32, 32)
    labels = np.concatenate([lab for _, lab in parts])
    dataset = ImageTensorDataset(images, labels, image_size)
    return dataset, DatasetInfo("cifar10", 3, image_size or 32, 10, num_examples=len(dataset))


# ---------------------------------------------------------------- ImageNet 64x64


def build_imagenet64(root, train, download, image_size):
    """Downsampled ImageNet (Chrabaszcz et al. 2017): .npz with `data` uint8 (N, 3*S*S) in CHW
    plane order and `labels` 1..1000 (converted to 0..999). Batches stay separate (no big concat)."""
    if download:
        raise ValueError("imagenet64 cannot be downloaded automatically (it needs an image-net.org login)")
    if train:
        paths = glob.glob(os.path.join(root, "**", "train_data_batch_*.npz"), recursive=True)
        paths.sort(key=lambda p: int(re.findall(r"(\d+)\.npz$", p)[0]))
    else:
        paths = glob.glob(os.path.join(root, "**", "val_data.npz"), recursive=True)
    if not paths:
        raise FileNotFoundError(f"no {'train_data_batch_*.npz' if train else 'val_data.npz'} under {root}")
    from models.npz import NpzError, read_npz
    parts = []
    for p in paths:
        try:  # each array's size is checked against the file before it is read
            z = read_npz(p, {"data": (np.dtype(np.uint8), None, None), "labels": ("iu", None, None)}, exact=False)
        except NpzError as e:
            raise ValueError(f"{p}: {e}") from None
        data, labels = z["data"], z["labels"].astype(np.int64) - 1
        side = int(round((data.shape[1] / 3) ** 0.5)) if data.ndim == 2 else 0
        if data.ndim != 2 or side == 0 or 3 * side * side != data.shape[1] or labels.shape != (len(data),):
            raise ValueError(f"{p}: data {data.shape} and labels {labels.shape} are not N x (3 S S) images with N "
                             f"labels")
        if len(data) == 0:
            raise ValueError(f"{p}: holds no images")
        if labels.min() < 0 or labels.max() > 999:
            raise ValueError(f"{p}: labels should be 1..1000, got range {labels.min() + 1}..{labels.max() + 1}")
        parts.append(ImageTensorDataset(data.reshape(-1, 3, side, side), labels, image_size))
    dataset = parts[0] if len(parts) == 1 else ConcatDataset(parts)
    return dataset, DatasetInfo("imagenet64", 3, image_size or side, 1000, num_examples=len(dataset))


# ---------------------------------------------------------------- folder of images

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff")


class ImageFolderDataset(Dataset):
    """Images from class subfolders (ImageFolder-style, classes sorted) or a flat folder (class 0).

    Grayscale folders give 1 channel, anything else RGB (3). Images are resized to image_size
    (default: the size of the first image, which must be square).
    """

    def __init__(self, root: str, image_size: int | None = None):
        from PIL import Image

        self.Image = Image
        subdirs = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
        is_image = lambda f: f.lower().endswith(IMAGE_EXTENSIONS)
        if subdirs:
            self.classes = subdirs
            self.samples = [(os.path.join(root, d, f), i) for i, d in enumerate(subdirs)
                            for f in sorted(os.listdir(os.path.join(root, d))) if is_image(f)]
        else:
            self.classes = [os.path.basename(os.path.normpath(root))]
            self.samples = [(os.path.join(root, f), 0) for f in sorted(os.listdir(root)) if is_image(f)]
        if not self.samples:
            raise FileNotFoundError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found in {root}")
        with Image.open(self.samples[0][0]) as first:
            self.mode = "L" if first.mode in ("L", "1", "I;16", "I") else "RGB"
            w, h = first.size
        if image_size is None and w != h:
            raise ValueError(f"{self.samples[0][0]} is {w}x{h}; pass image_size for non-square images")
        self.image_size = image_size or w
        self.channels = 1 if self.mode == "L" else 3

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        path, label = self.samples[i]
        with self.Image.open(path) as im:
            arr = np.asarray(im.convert(self.mode), dtype=np.uint8)
        arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)  # (C, H, W)
        return to_unit_range(torch.from_numpy(arr.copy()), self.image_size), label


def build_folder(root, train, download, image_size):
    dataset = ImageFolderDataset(root, image_size)
    return dataset, DatasetInfo("folder", dataset.channels, dataset.image_size, len(dataset.classes),
                                num_examples=len(dataset))


# ---------------------------------------------------------------- registry

DATASETS = {"mnist": build_mnist, "fashion-mnist": build_fashion_mnist, "cifar10": build_cifar10,
            "imagenet64": build_imagenet64, "folder": build_folder}

VIDEO_DATASETS = {"moving-mnist": build_moving_mnist}  # clips (N, F, C, H, W), shaped by the video model

def default_root(name: str) -> str:
    """Default data folder: ../shared/data/<name> next to the repository (Moving MNIST: the MNIST one)."""
    name = "mnist" if name == "moving-mnist" else name
    return os.path.normpath(os.path.join(REPO_ROOT, "..", "shared", "data", name))


def build_dataset(name: str, root: str | None = None, train: bool = True, download: bool = False,
                  image_size: int | None = None) -> tuple[Dataset, DatasetInfo]:
    """Build a dataset by name.

    Args:
        name: one of DATASETS (mnist, fashion-mnist, cifar10, imagenet64, folder).
        root: data folder; None -> default_root(name), resolved relative to the repository.
        train: train split (False -> test/val split).
        download: let torchvision download (mnist, cifar10).
        image_size: resize images to (image_size, image_size); None keeps the native size.

    Returns:
        (dataset of ((C, H, W) float32 in [-1, 1], int label), DatasetInfo)
    """
    if name not in DATASETS:
        raise KeyError(f"unknown dataset {name!r}; choose from {sorted(DATASETS)}")
    root = os.fspath(root) if root is not None else default_root(name)
    return DATASETS[name](root, train, download, image_size)
