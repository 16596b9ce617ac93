"""A small CNN classifier of 28 x 28 images (MNIST digits, Fashion-MNIST clothes): the metrics' feature extractor.

It plays the role Inception-v3 plays for FID on natural images: its
penultimate-layer activations ``features(x)`` define the feature space in which
a Frechet distance between generated and real digits is measured, and its
logits give the class-accuracy of class-conditional samples.

Architecture (input ``(N, 1, 28, 28)`` in [-1, 1]), top to bottom::

    conv3x3(1 -> c1) + ReLU, maxpool 2     (N, c1, 14, 14)
    conv3x3(c1 -> c2) + ReLU, maxpool 2    (N, c2, 7, 7)
    conv3x3(c2 -> c3) + ReLU, maxpool 2    (N, c3, 3, 3)
    flatten, linear -> D, BatchNorm, ReLU  (N, D)        <- features(x)
    dropout, linear -> 10                  (N, 10)       <- forward(x)

Checkpoints store the config next to the weights and rebuild themselves; the
real-data feature statistics live in a separate small file that records a
fingerprint of the classifier that produced them.

A classifier knows the dataset it was trained on (``dataset``, stored in its
file; a file without it is an MNIST one). A generative model is judged by the
classifier of its own data (``JUDGE_FOR``: Moving-MNIST clips are made of MNIST
digits, so the digit classifier judges them): :func:`check_judge` refuses any
other pairing and :func:`default_judge_files` names the shipped pair of files.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn as nn
import torch.nn.functional as F

from fastflow.atomic import atomic_write

__all__ = [
    "ClassifierConfig",
    "DigitClassifier",
    "save_classifier",
    "load_classifier",
    "classifier_fingerprint",
    "extract_features",
    "save_feature_stats",
    "load_feature_stats",
    "JUDGE_FOR",
    "default_judge_files",
    "model_dataset",
    "check_judge",
]

CLASSIFIER_FORMAT = "fastflow-mnist-classifier"
STATS_FORMAT = "fastflow-mnist-feature-stats"
FORMAT_VERSION = 1
CHECKPOINTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "checkpoints")

# dataset a generative model was trained on -> dataset of the classifier that judges its samples
JUDGE_FOR = {"mnist": "mnist", "moving-mnist": "mnist", "fashion-mnist": "fashion-mnist"}
# classifier dataset -> (classifier file, feature statistics file) under checkpoints/
JUDGE_FILES = {"mnist": ("mnist_classifier.pt", "mnist_feature_stats.pt"),
               "fashion-mnist": ("fashion_classifier.pt", "fashion_feature_stats.pt")}


@dataclass
class ClassifierConfig:
    """Hyper-parameters that fully determine the classifier's shapes.

    Attributes:
        channels: output channels of the three conv layers ``(c1, c2, c3)``.
        feature_dim: D, the width of the penultimate (feature) layer.
        num_classes: number of output logits.
        dropout: dropout probability before the head (train mode only).
    """

    channels: tuple[int, int, int] = (16, 32, 64)
    feature_dim: int = 128
    num_classes: int = 10
    dropout: float = 0.2

    def __post_init__(self) -> None:
        self.channels = tuple(int(c) for c in self.channels)
        if len(self.channels) != 3 or min(self.channels) < 1:
            raise ValueError(f"channels must be 3 positive ints, got {self.channels}")
        if self.feature_dim < 1 or self.num_classes < 2:
            raise ValueError(f"bad feature_dim={self.feature_dim} or num_classes={self.num_classes}")


class DigitClassifier(nn.Module):
    """CNN for (N, 1, 28, 28) images in [-1, 1] of ``dataset`` (a key of JUDGE_FILES); see the module docstring."""

    def __init__(self, config: ClassifierConfig | None = None, dataset: str = "mnist") -> None:
        super().__init__()
        if dataset not in JUDGE_FILES:
            raise ValueError(f"dataset must be one of {sorted(JUDGE_FILES)}, got {dataset!r}")
        self.config = config or ClassifierConfig()
        self.dataset = dataset
        c1, c2, c3 = self.config.channels
        self.conv1 = nn.Conv2d(1, c1, 3, padding=1)
        self.conv2 = nn.Conv2d(c1, c2, 3, padding=1)
        self.conv3 = nn.Conv2d(c2, c3, 3, padding=1)
        self.fc = nn.Linear(c3 * 3 * 3, self.config.feature_dim, bias=False)
        self.fc_norm = nn.BatchNorm1d(self.config.feature_dim)  # keeps every feature unit alive
        self.dropout = nn.Dropout(self.config.dropout)
        self.head = nn.Linear(self.config.feature_dim, self.config.num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate-layer features.

        Args:
            x: images, shape (N, 1, 28, 28), values in [-1, 1].

        Returns:
            Post-ReLU features, shape (N, D) with D = ``config.feature_dim``.
        """
        if x.dim() != 4 or x.shape[1:] != (1, 28, 28):
            raise ValueError(f"expected images of shape (N, 1, 28, 28), got {tuple(x.shape)}")
        h = F.max_pool2d(F.relu(self.conv1(x)), 2)  # (N, c1, 14, 14)
        h = F.max_pool2d(F.relu(self.conv2(h)), 2)  # (N, c2, 7, 7)
        h = F.max_pool2d(F.relu(self.conv3(h)), 2)  # (N, c3, 3, 3)
        return F.relu(self.fc_norm(self.fc(h.flatten(1))))  # (N, D)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits, shape (N, num_classes), for images (N, 1, 28, 28) in [-1, 1]."""
        return self.head(self.dropout(self.features(x)))  # (N, num_classes)


def _load_dict(path: str | os.PathLike, fmt: str) -> dict:
    """Load a checkpoint dict and check its format tag; ValueError on any problem."""
    if not os.path.isfile(path):
        raise ValueError(f"{fmt} file not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt zip, truncated file, pickle error, ...
        raise ValueError(f"could not read {fmt} file {path}: it is corrupt or not a torch file ({e})") from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != fmt:
        got = ckpt.get("format") if isinstance(ckpt, dict) else type(ckpt).__name__
        raise ValueError(f"{path} is not a {fmt} file (format tag: {got!r})")
    if ckpt.get("version") != FORMAT_VERSION:
        raise ValueError(f"{path}: unsupported {fmt} version {ckpt.get('version')!r} (expected {FORMAT_VERSION})")
    return ckpt


def save_classifier(path: str | os.PathLike, model: DigitClassifier, meta: dict | None = None) -> None:
    """Write ``model`` (config + weights + ``model.dataset``, plus optional ``meta`` of plain values) atomically."""
    payload = {
        "format": CLASSIFIER_FORMAT,
        "version": FORMAT_VERSION,
        "dataset": model.dataset,
        "config": asdict(model.config),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "meta": dict(meta or {}),
    }
    atomic_write(path, lambda f: torch.save(payload, f))


def load_classifier(path: str | os.PathLike, device: str | torch.device = "cpu") -> DigitClassifier:
    """Rebuild a classifier from the config and dataset stored in ``path``; returned in eval mode.

    A file without a ``dataset`` entry (written before there was more than one) is an MNIST classifier.

    Raises:
        ValueError: if the file is missing, corrupt, not a classifier file, names an unknown
            dataset, or its weights do not match the shapes its config describes.
    """
    ckpt = _load_dict(path, CLASSIFIER_FORMAT)
    dataset = ckpt.get("dataset", "mnist")
    if dataset not in JUDGE_FILES:
        raise ValueError(f"{path}: classifier of unknown dataset {dataset!r} (known: {', '.join(sorted(JUDGE_FILES))})")
    try:
        names = {f.name for f in fields(ClassifierConfig)}
        config = ClassifierConfig(**{k: v for k, v in ckpt["config"].items() if k in names})
        model = DigitClassifier(config, dataset)
        model.load_state_dict(ckpt["state_dict"], strict=True)
    except (KeyError, TypeError, RuntimeError, ValueError, AttributeError) as e:
        raise ValueError(f"{path}: classifier weights do not match its stored config ({e})") from e
    return model.to(device).eval()


def classifier_fingerprint(model: nn.Module) -> str:
    """SHA-256 (hex, first 16 chars) of the weights, in sorted key order, as float32 bytes."""
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


@torch.inference_mode()
def extract_features(model: DigitClassifier, images: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """Penultimate features of many images, in batches, with the model in eval mode.

    Args:
        model: the classifier (its train/eval mode is restored afterwards).
        images: (N, 1, 28, 28) in [-1, 1], on any device.
        batch_size: images per forward pass.

    Returns:
        (N, D) float32 features on the CPU.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        out = [model.features(images[i : i + batch_size].to(device)).float().cpu() for i in range(0, len(images), batch_size)]
    finally:
        model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0, model.config.feature_dim)


def save_feature_stats(path: str | os.PathLike, mu: torch.Tensor, sigma: torch.Tensor, n: int,
                       model: DigitClassifier, source: str) -> None:
    """Store real-data feature statistics (float64) with the fingerprint of ``model``.

    Args:
        path: output file, written atomically.
        mu: (D,) feature mean.  sigma: (D, D) feature covariance.
        n: number of images the statistics were computed from.
        model: the classifier whose ``features`` produced them.
        source: a human-readable description of the data.
    """
    payload = {
        "format": STATS_FORMAT,
        "version": FORMAT_VERSION,
        "mu": mu.detach().cpu().double(),
        "sigma": sigma.detach().cpu().double(),
        "n": int(n),
        "classifier_fingerprint": classifier_fingerprint(model),
        "source": source,
    }
    atomic_write(path, lambda f: torch.save(payload, f))


def load_feature_stats(path: str | os.PathLike, model: DigitClassifier | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Load ``(mu (D,), sigma (D, D))`` in float64.

    Args:
        path: a file written by :func:`save_feature_stats`.
        model: if given, the statistics must have been computed with this exact
            classifier (checked by weight fingerprint).

    Raises:
        ValueError: missing/corrupt file, bad shapes, or a classifier mismatch.
    """
    ckpt = _load_dict(path, STATS_FORMAT)
    mu, sigma = ckpt.get("mu"), ckpt.get("sigma")
    if not (isinstance(mu, torch.Tensor) and isinstance(sigma, torch.Tensor)
            and mu.dim() == 1 and sigma.shape == (mu.numel(), mu.numel())):
        raise ValueError(f"{path}: expected mu (D,) and sigma (D, D) tensors")
    if model is not None:
        if mu.numel() != model.config.feature_dim:
            raise ValueError(f"{path}: statistics have D={mu.numel()} but the classifier has D={model.config.feature_dim}")
        fp = classifier_fingerprint(model)
        if ckpt.get("classifier_fingerprint") != fp:
            raise ValueError(f"{path}: statistics were computed with classifier {ckpt.get('classifier_fingerprint')!r}, "
                             f"not with the given one ({fp!r}); recompute them with scripts/train_classifier.py")
    return mu.double(), sigma.double()


def default_judge_files(dataset: str, folder: str | os.PathLike = CHECKPOINTS) -> tuple[str, str] | None:
    """``(classifier path, feature statistics path)`` of the shipped judge for samples of a model
    trained on ``dataset`` (``JUDGE_FOR``), under ``folder``; None for a dataset no classifier judges.
    The files are named, not checked: they may not exist."""
    judge = JUDGE_FOR.get(dataset)
    if judge is None:
        return None
    return tuple(os.path.join(os.fspath(folder), name) for name in JUDGE_FILES[judge])


def model_dataset(model_meta: dict | None) -> str:
    """The dataset a generative model was trained on: ``meta["data"]["name"]`` of ``load_model``'s
    meta; "mnist" for a checkpoint that does not say (the project's first and, then, only data)."""
    data = (model_meta or {}).get("data")
    name = data.get("name") if isinstance(data, dict) else None
    return name if isinstance(name, str) else "mnist"


def check_judge(classifier: DigitClassifier, model_meta: dict | None) -> None:
    """Refuse to judge samples of a model with the classifier of another dataset.

    Args:
        classifier: the judge; its ``dataset`` says what it was trained on.
        model_meta: the generative model's meta dict from ``models.checkpoint.load_model``
            (its dataset: :func:`model_dataset`).

    Raises:
        ValueError: one line naming both datasets, when ``JUDGE_FOR`` does not pair them.
    """
    data = model_dataset(model_meta)
    want = JUDGE_FOR.get(data)
    if want != classifier.dataset:
        fix = (f"use checkpoints/{JUDGE_FILES[want][0]}" if want is not None
               else f"classifiers exist for models of {', '.join(sorted(JUDGE_FOR))} only")
        raise ValueError(f"the {classifier.dataset} classifier cannot judge samples of a model trained on {data}: "
                         f"{fix}")
