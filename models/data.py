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
import os
import pickle
import re
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import ConcatDataset, Dataset

__all__ = ["DatasetInfo", "ImageTensorDataset", "ImageFolderDataset", "build_dataset", "DATASETS",
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
        assert self.images.dtype == torch.uint8 and self.images.ndim == 4, (
            f"images must be uint8 (N, C, H, W), got {self.images.dtype} {tuple(self.images.shape)}")
        assert len(self.images) == len(self.labels), f"{len(self.images)} images but {len(self.labels)} labels"
        self.image_size = image_size

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return to_unit_range(self.images[i], self.image_size), int(self.labels[i])


# ---------------------------------------------------------------- MNIST


def read_idx(path: str) -> np.ndarray:
    """Read an idx file (optionally .gz): magic 2051 = images (N, rows, cols), 2049 = labels (N,).

    Header: big-endian int32 magic, then one big-endian int32 per dimension; data uint8.
    """
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        raw = f.read()
    magic = int.from_bytes(raw[0:4], "big")
    ndim = {2051: 3, 2049: 1}.get(magic)
    if ndim is None:
        raise ValueError(f"{path}: bad idx magic number {magic} (expected 2051 images or 2049 labels)")
    dims = [int(d) for d in np.frombuffer(raw, dtype=">i4", count=ndim, offset=4)]
    offset = 4 + 4 * ndim
    data = np.frombuffer(raw, dtype=np.uint8, offset=offset)
    if data.size != int(np.prod(dims)):
        raise ValueError(f"{path}: header says {dims} = {int(np.prod(dims))} bytes but found {data.size}")
    return data.reshape(dims)


def _find(root: str, stem: str) -> str | None:
    for name in (stem + ".gz", stem, stem.replace("-idx", ".idx") + ".gz", stem.replace("-idx", ".idx")):
        if os.path.isfile(os.path.join(root, name)):
            return os.path.join(root, name)
    return None


def build_mnist(root, train, download, image_size):
    prefix = "train" if train else "t10k"
    raw_dirs = [root, os.path.join(root, "MNIST", "raw")]
    for d in raw_dirs:
        img, lab = _find(d, f"{prefix}-images-idx3-ubyte"), _find(d, f"{prefix}-labels-idx1-ubyte")
        if img and lab:
            images, labels = read_idx(img), read_idx(lab)
            break
    else:
        if not download:
            found = sorted(os.listdir(root)) if os.path.isdir(root) else "directory does not exist"
            hint = " (pass train=False / --split test for the 10k test digits)" if train else ""
            raise FileNotFoundError(
                f"no MNIST {'train' if train else 'test'} split in {root}: expected "
                f"{prefix}-images-idx3-ubyte[.gz] and {prefix}-labels-idx1-ubyte[.gz] here or in MNIST/raw; "
                f"found {found}{hint}")
        import torchvision

        ds = torchvision.datasets.MNIST(root, train=train, download=download)
        images, labels = ds.data.numpy(), ds.targets.numpy()
    dataset = ImageTensorDataset(images[:, None], labels, image_size)
    return dataset, DatasetInfo("mnist", 1, image_size or images.shape[-1], 10, num_examples=len(dataset))


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
    batches = [_unpickle(os.path.join(base, n)) for n in names]
    images = np.concatenate([b[b"data"] for b in batches]).reshape(-1, 3, 32, 32)
    labels = np.concatenate([np.asarray(b[b"labels"]) for b in batches])
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
    parts = []
    for p in paths:
        with np.load(p) as z:
            data, labels = z["data"], np.asarray(z["labels"]).astype(np.int64) - 1
        side = int(round((data.shape[1] / 3) ** 0.5))
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

DATASETS = {"mnist": build_mnist, "cifar10": build_cifar10, "imagenet64": build_imagenet64, "folder": build_folder}


def default_root(name: str) -> str:
    """Default data folder: ../shared/data/<name> next to the repository."""
    return os.path.normpath(os.path.join(REPO_ROOT, "..", "shared", "data", name))


def build_dataset(name: str, root: str | None = None, train: bool = True, download: bool = False,
                  image_size: int | None = None) -> tuple[Dataset, DatasetInfo]:
    """Build a dataset by name.

    Args:
        name: one of DATASETS (mnist, cifar10, imagenet64, folder).
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
