"""Image-quality and distribution metrics, from scratch in torch.

Range convention: images are float tensors in [-1, 1], shape (N, C, H, W)
(MNIST: (N, 1, 28, 28)), so the default dynamic range is ``data_range = 2``.

* :func:`psnr`, :func:`ssim` compare each sample with a reference sample
  (e.g. a few-step sampler against a many-step reference solve from the same
  noise) and return one value per sample, shape (N,).
* :func:`feature_statistics` and :func:`frechet_distance` give an FID-style
  distance between two feature distributions (features from a classifier's
  penultimate layer, see ``models/classifier.py``).
* :func:`classifier_accuracy` scores labelled (e.g. class-conditional) samples.

Only torch and math are imported here.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F

from . import checks

__all__ = [
    "psnr",
    "ssim",
    "gaussian_window",
    "feature_statistics",
    "frechet_distance",
    "classifier_accuracy",
]


def _check_pair(x: torch.Tensor, ref: torch.Tensor) -> None:
    if x.shape != ref.shape:
        raise ValueError(f"x and ref must have the same shape, got {tuple(x.shape)} and {tuple(ref.shape)}")
    if x.dim() < 2:
        raise ValueError(f"expected a batch (N, ...), got shape {tuple(x.shape)}")


def psnr(x: torch.Tensor, ref: torch.Tensor, data_range: float = 2.0) -> torch.Tensor:
    """Per-sample peak signal-to-noise ratio in dB.

    .. math::
        \\mathrm{MSE}_n = \\frac{1}{CHW}\\sum_{c,h,w} (x_{nchw} - \\mathrm{ref}_{nchw})^2, \\qquad
        \\mathrm{PSNR}_n = 10 \\log_{10} \\frac{L^2}{\\mathrm{MSE}_n},

    with ``L = data_range`` (2 for images in [-1, 1]). Computed in float64.

    Identical samples (MSE exactly 0) give ``+inf``, the mathematically correct
    value; no floor is applied. Callers that average over a batch should note
    that one identical pair makes the mean ``inf`` (use the median, or filter
    with ``torch.isfinite``).

    Args:
        x: images, shape (N, ...), e.g. (N, C, H, W).
        ref: reference images, same shape.
        data_range: L, max minus min of the value range.

    Returns:
        (N,) float64 PSNR values in dB.

    Raises:
        ValueError: if ``x`` and ``ref`` differ in shape or are not a batch (N, ...) of at least
            2 dimensions.
    """
    _check_pair(x, ref)
    mse = (x.double() - ref.double()).pow(2).flatten(1).mean(dim=1)  # (N,)
    peak = torch.full_like(mse, float(data_range) ** 2)
    return torch.where(mse > 0, 10.0 * torch.log10(peak / mse), torch.full_like(mse, math.inf))


def gaussian_window(window_size: int, sigma: float, dtype: torch.dtype = torch.float64,
                    device: torch.device | str | None = None) -> torch.Tensor:
    """Normalised 1-D Gaussian, shape (window_size,): ``g_i ∝ exp(-(i - (w-1)/2)^2 / (2 sigma^2))``.

    Raises:
        ValueError: for a ``window_size`` that is not a positive odd integer, or sigma <= 0.
    """
    if window_size < 1 or window_size % 2 == 0:
        raise ValueError(f"window_size must be a positive odd integer, got {window_size}")
    if sigma <= 0:
        raise ValueError(f"sigma must be positive, got {sigma}")
    coords = torch.arange(window_size, dtype=dtype, device=device) - (window_size - 1) / 2
    g = torch.exp(-coords.pow(2) / (2.0 * sigma**2))
    return g / g.sum()


def ssim(
    x: torch.Tensor,
    ref: torch.Tensor,
    data_range: float = 2.0,
    window_size: int = 11,
    sigma: float = 1.5,
    *,
    value_min: float = -1.0,
) -> torch.Tensor:
    """Per-sample structural similarity (Wang, Bovik, Sheikh & Simoncelli, 2004).

    With local statistics taken under a normalised Gaussian window ``w``
    (size ``window_size``, std ``sigma``; separable, ``w = g g^T``)::

        mu_x = w * x,   sigma_x^2 = w * x^2 - mu_x^2,   sigma_xy = w * (x y) - mu_x mu_y

    the SSIM map is

    .. math::
        \\mathrm{SSIM} = \\frac{(2\\mu_x\\mu_y + C_1)(2\\sigma_{xy} + C_2)}
                              {(\\mu_x^2 + \\mu_y^2 + C_1)(\\sigma_x^2 + \\sigma_y^2 + C_2)},
        \\quad C_1 = (K_1 L)^2,\\ C_2 = (K_2 L)^2,\\ K_1 = 0.01,\\ K_2 = 0.03,

    with ``L = data_range``. The map is computed per channel on the *valid*
    region only (no padding: an (H, W) image gives an
    (H - window_size + 1, W - window_size + 1) map, 18 x 18 for MNIST), as in
    the authors' reference MATLAB code, then averaged over positions and
    channels. Population (biased) local variances are used.

    Range: Wang et al. assume non-negative intensities in [0, L]; the
    luminance term is not shift-invariant. Both images are therefore first
    shifted by ``-value_min`` (default -1, so [-1, 1] -> [0, 2]). With the
    defaults the result equals SSIM of the same images rescaled to [0, 1] with
    ``data_range = 1`` (SSIM is invariant to a common scaling of x, ref and L).
    Pass ``value_min=0`` to use the raw values.

    Args:
        x: images, shape (N, C, H, W), with H, W >= window_size.
        ref: reference images, same shape.
        data_range: L, the width of the value range (2 for [-1, 1]).
        window_size: side of the Gaussian window (odd).
        sigma: standard deviation of the Gaussian window, in pixels.
        value_min: lower end of the value range, subtracted before computing.

    Returns:
        (N,) float64 SSIM values, 1 for identical images, in [-1, 1].

    Raises:
        ValueError: if ``x`` and ``ref`` differ in shape or are not (N, C, H, W), if H or W is
            smaller than ``window_size``, or for a bad window (``gaussian_window``: an even or
            non-positive ``window_size``, sigma <= 0).
    """
    _check_pair(x, ref)
    if x.dim() != 4:
        raise ValueError(f"ssim expects (N, C, H, W), got shape {tuple(x.shape)}")
    n, c, h, w = x.shape
    if h < window_size or w < window_size:
        raise ValueError(f"images {h}x{w} are smaller than the {window_size}x{window_size} window")
    x = x.double() - value_min
    y = ref.double() - value_min
    g = gaussian_window(window_size, sigma, dtype=torch.float64, device=x.device)
    gh = g.view(1, 1, window_size, 1).expand(c, 1, window_size, 1)  # (C, 1, k, 1)
    gw = g.view(1, 1, 1, window_size).expand(c, 1, 1, window_size)  # (C, 1, 1, k)

    def blur(z: torch.Tensor) -> torch.Tensor:  # (N, C, H, W) -> (N, C, H-k+1, W-k+1)
        return F.conv2d(F.conv2d(z, gh, groups=c), gw, groups=c)

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov_xy = blur(x * y) - mu_x * mu_y
    c1 = (0.01 * data_range) ** 2
    c2 = (0.03 * data_range) ** 2
    num = (2 * mu_x * mu_y + c1) * (2 * cov_xy + c2)
    den = (mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2)
    return (num / den).flatten(1).mean(dim=1)  # (N,)


def feature_statistics(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and covariance of a feature sample, in float64.

    .. math::
        \\mu = \\frac{1}{N}\\sum_n f_n, \\qquad
        \\Sigma = \\frac{1}{N-1}\\sum_n (f_n - \\mu)(f_n - \\mu)^\\top

    (unbiased, as ``numpy.cov`` and the reference FID code).

    The centred samples span at most N - 1 dimensions, so ``rank(Sigma) <= N - 1``: a full-rank
    covariance needs N > D, and fewer samples are refused. A Frechet distance needs many more: its
    positive bias shrinks like 1/N (measured in ``checkpoints/FASHION_CLASSIFIER_CARD.md``).

    Args:
        features: (N, D) with N > D.

    Returns:
        ``(mu, sigma)`` of shapes (D,) and (D, D), float64, on the input's device.

    Raises:
        ValueError: unless ``features`` is (N, D) with D >= 1 and N > D.
    """
    if features.dim() != 2 or features.shape[1] < 1:
        raise ValueError(f"features must be (N, D) with D >= 1, got shape {tuple(features.shape)}")
    n, d = features.shape
    if n <= d:
        raise ValueError(f"{n} samples of {d}-dimensional features give a rank-deficient covariance: "
                         f"feature statistics need more samples than dimensions (N > D = {d})")
    f = features.double()
    mu = f.mean(dim=0)
    centred = f - mu
    sigma = centred.T @ centred / (f.shape[0] - 1)
    return mu, sigma


def _sym_sqrt(a: torch.Tensor) -> torch.Tensor:
    """Symmetric PSD square root ``V diag(sqrt(max(lambda, 0))) V^T`` of a symmetric matrix."""
    evals, evecs = torch.linalg.eigh(0.5 * (a + a.T))
    return (evecs * evals.clamp_min(0).sqrt()) @ evecs.T


def frechet_distance(mu1: torch.Tensor, sigma1: torch.Tensor, mu2: torch.Tensor, sigma2: torch.Tensor) -> float:
    """Frechet (2-Wasserstein squared) distance between two Gaussians.

    .. math::
        d^2 = \\lVert\\mu_1 - \\mu_2\\rVert^2
              + \\mathrm{Tr}\\big(\\Sigma_1 + \\Sigma_2
              - 2 (\\Sigma_1^{1/2} \\Sigma_2 \\Sigma_1^{1/2})^{1/2}\\big)

    Computed in float64 with symmetric square roots by eigendecomposition
    (``torch.linalg.eigh``); tiny negative eigenvalues from round-off are
    clamped to 0, so singular (rank-deficient) covariances are fine. The
    trace term uses ``Tr(M^{1/2}) = sum_i sqrt(max(lambda_i(M), 0))`` for the
    symmetric ``M = S1^{1/2} S2 S1^{1/2}``, which has the same eigenvalues as
    ``S1 S2``. The result is clamped at 0 (round-off can make it ~ -1e-12).

    Args:
        mu1, mu2: means, shape (D,).
        sigma1, sigma2: symmetric PSD covariances, shape (D, D).

    Returns:
        The distance as a Python float (>= 0).

    Raises:
        ValueError: unless the means are (D,) and the covariances (D, D) for one D.
    """
    mu1, mu2, sigma1, sigma2 = (torch.as_tensor(t).double() for t in (mu1, mu2, sigma1, sigma2))
    d = mu1.numel()
    if mu1.shape != (d,) or mu2.shape != (d,) or sigma1.shape != (d, d) or sigma2.shape != (d, d):
        raise ValueError(f"expected mu (D,), sigma (D, D); got {tuple(mu1.shape)}, {tuple(sigma1.shape)}, "
                         f"{tuple(mu2.shape)}, {tuple(sigma2.shape)}")
    mu2, sigma2 = mu2.to(mu1.device), sigma2.to(mu1.device)
    s1_half = _sym_sqrt(sigma1)
    m = s1_half @ sigma2 @ s1_half
    tr_sqrt = torch.linalg.eigvalsh(0.5 * (m + m.T)).clamp_min(0).sqrt().sum()
    fd = (mu1 - mu2).pow(2).sum() + torch.trace(sigma1) + torch.trace(sigma2) - 2.0 * tr_sqrt
    return max(float(fd), 0.0)


@torch.inference_mode()
def classifier_accuracy(
    classifier: Callable[[torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    labels: torch.Tensor,
    batch_size: int = 500,
) -> float:
    """Fraction of images whose arg-max logit equals the label.

    Args:
        classifier: maps (B, C, H, W) images in [-1, 1] to (B, num_classes)
            logits. An ``nn.Module`` is put in eval mode for the call and its
            previous mode restored afterwards.
        images: (N, C, H, W) in [-1, 1].
        labels: (N,) integer class labels.
        batch_size: images per forward pass.

    Returns:
        Accuracy in [0, 1] as a Python float.

    Raises:
        ValueError: for labels that are not (N,) with N the number of images, no images, or a
            batch size < 1.
        Whatever ``classifier`` raises, unchanged (an ``nn.Module``'s mode is restored first).
    """
    if images.shape[0] != labels.shape[0] or labels.dim() != 1:
        raise ValueError(f"need images (N, ...) and labels (N,), got {tuple(images.shape)} and {tuple(labels.shape)}")
    if images.shape[0] == 0:
        raise ValueError("no images to score")
    checks.int_in("batch_size", batch_size, 1)
    module = classifier if isinstance(classifier, torch.nn.Module) else None
    was_training = module.training if module is not None else False
    device = images.device
    if module is not None:
        module.eval()
        p = next(module.parameters(), None)
        device = p.device if p is not None else device
    try:
        correct = 0
        for i in range(0, images.shape[0], batch_size):
            logits = classifier(images[i : i + batch_size].to(device))
            correct += int((logits.argmax(dim=1).cpu() == labels[i : i + batch_size].cpu()).sum())
    finally:
        if module is not None:
            module.train(was_training)
    return correct / images.shape[0]
