"""Shared by sample.py and benchmarks/bench.py: workloads, batched sampling, timing,
quality scores against Euler-50 and against real digits, image grids, machine info.

Images are (N, C, H, W) in [-1, 1]; t = 0 is noise, t = 1 is data.
"""
from __future__ import annotations

import hashlib

import os
import platform
import time
from dataclasses import dataclass
from typing import Callable, Optional

import torch

import fastflow as ff
from fastflow.metrics import classifier_accuracy, feature_statistics, frechet_distance, psnr, ssim

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the checkout
DEFAULT_CKPT = os.path.join(ROOT, "checkpoints", "dit_mnist.pt")
DEFAULT_CLASSIFIER = os.path.join(ROOT, "checkpoints", "mnist_classifier.pt")
DEFAULT_FEATURE_STATS = os.path.join(ROOT, "checkpoints", "mnist_feature_stats.pt")
DEFAULT_REFINER = os.path.join(ROOT, "checkpoints", "refiner_mnist.pt")


def balanced_labels(n: int, num_classes: int, cls: Optional[int] = None) -> torch.Tensor:
    """(n,) labels: all ``cls`` if given, else 0, 1, ..., num_classes - 1, 0, 1, ..."""
    if cls is not None:
        return torch.full((n,), cls, dtype=torch.long)
    return torch.arange(n) % num_classes


def index_noise(indices, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """(len(indices), *shape) standard normal noise; row j depends only on (seed, indices[j]): sample i
    gets the same noise whatever the batch or process it is drawn in (sample.py and sample_ddp.py)."""
    rows = []
    for i in indices:
        key = hashlib.blake2b(f"{seed}:{int(i)}".encode(), digest_size=8).digest()
        g = torch.Generator().manual_seed(int.from_bytes(key, "little") & (2 ** 63 - 1))
        rows.append(torch.randn(shape, generator=g))
    return torch.stack(rows)


def make_noise(n: int, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """(n, *shape) standard normal noise from a generator seeded with ``seed``."""
    return torch.randn(n, *shape, generator=torch.Generator().manual_seed(seed))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class BatchedRun:
    """Images of a batched sampling run and its cost."""

    images: torch.Tensor       # (N, C, H, W), on the CPU
    nfe: float                 # model calls per batch, averaged over batches
    seconds: float             # wall time of the sampling loop alone
    results: list


def run_batched(sampler: ff.Sampler, velocity: Callable, x0: torch.Tensor, labels: torch.Tensor,
                batch_size: int, device: torch.device, progress: Optional[Callable] = None,
                **extras) -> BatchedRun:
    """Sample ``x0`` in batches with ``sampler``, labels passed to the model as ``y``."""
    images, results, seconds = [], [], 0.0
    batches = range(0, x0.shape[0], batch_size)
    for i in (progress(batches) if progress else batches):
        xb, yb = x0[i:i + batch_size].to(device), labels[i:i + batch_size].to(device)
        sync(device)
        start = time.perf_counter()
        res = sampler.sample(velocity, xb, y=yb, **extras)
        sync(device)
        seconds += time.perf_counter() - start
        images.append(res.x.clamp(-1, 1).cpu())
        results.append(res)
    nfe = sum(r.nfe for r in results) / len(results)
    return BatchedRun(torch.cat(images), nfe, seconds, results)


class Judge:
    """Scores samples with a classifier (digits or clothes) and its real-data feature statistics.

    ``model_meta`` (``load_model``'s meta of the model whose samples are judged) makes it refuse a
    classifier of another dataset (``models.classifier.check_judge``); :meth:`for_model` also picks
    the shipped files of the model's dataset.
    """

    def __init__(self, classifier_path: str = DEFAULT_CLASSIFIER, stats_path: str = DEFAULT_FEATURE_STATS,
                 model_meta: Optional[dict] = None):
        from models.classifier import check_judge, extract_features, load_classifier, load_feature_stats
        self.classifier = load_classifier(classifier_path)
        if model_meta is not None:
            check_judge(self.classifier, model_meta)
        self.real_mu, self.real_sigma = load_feature_stats(stats_path, self.classifier)
        self._features = extract_features
        self.min_fd_samples = self.classifier.config.feature_dim + 1  # a full-rank covariance needs N > D

    @classmethod
    def for_model(cls, model_meta: Optional[dict]) -> "Judge":
        """The shipped judge of the model's dataset (``models.classifier.default_judge_files``).

        Raises:
            ValueError: for a dataset that no classifier judges, or a judge file that is missing.
        """
        from models.classifier import default_judge_files, model_dataset
        files = default_judge_files(model_dataset(model_meta))
        if files is None:
            raise ValueError(f"no classifier judges samples of a model trained on {model_dataset(model_meta)}")
        return cls(*files, model_meta=model_meta)

    def accuracy(self, images: torch.Tensor, labels: torch.Tensor) -> float:
        return classifier_accuracy(self.classifier, images, labels)

    def fid(self, images: torch.Tensor) -> float:
        """FID-style Frechet distance in the classifier's feature space (not Inception FID)."""
        mu, sigma = feature_statistics(self._features(self.classifier, images))
        return frechet_distance(mu, sigma, self.real_mu, self.real_sigma)


PSNR_CAP = 100.0  # dB; per-image PSNR of identical images is +inf, counted as this cap in the mean


def fidelity(images: torch.Tensor, reference: torch.Tensor) -> tuple[float, float]:
    """Mean per-image PSNR (dB, each capped at PSNR_CAP) and mean SSIM against the reference
    run from the same noise and labels."""
    return psnr(images, reference).clamp(max=PSNR_CAP).mean().item(), ssim(images, reference).mean().item()


def save_grid(images: torch.Tensor, path: str, nrow: int = 10) -> None:
    """Write (N, C, H, W) images in [-1, 1] as one PNG grid."""
    from torchvision.utils import save_image
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    save_image((images.clamp(-1, 1) + 1) / 2, path, nrow=nrow, padding=2, pad_value=1.0)


def machine_info(device: torch.device) -> dict:
    info = {"device": str(device), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "python": platform.python_version()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    else:
        cpu = platform.processor() or platform.machine()
        try:
            with open("/proc/cpuinfo") as f:
                cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
        except (OSError, StopIteration):
            pass
        info["cpu"] = cpu
        info["cpu_count"] = os.cpu_count()
    return info
