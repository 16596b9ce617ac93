"""Metrics against analytic answers: PSNR, SSIM, Frechet distance, accuracy."""

import math

import pytest
import torch

from fastflow.metrics import classifier_accuracy, feature_statistics, frechet_distance, psnr, ssim

C1 = (0.01 * 2.0) ** 2  # SSIM constants for data_range = 2
C2 = (0.03 * 2.0) ** 2


def _images(n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 28, 28, generator=g) * 2 - 1  # (n, 1, 28, 28) in [-1, 1]


# --------------------------------------------------------------------- PSNR
def test_psnr_constant_offset_known_value():
    x = _images()
    out = psnr(x + 0.1, x)  # MSE = 0.01 exactly (up to float32 rounding of x + 0.1)
    expected = 10 * math.log10(4.0 / 0.01)  # = 26.0206 dB
    assert out.shape == (4,) and out.dtype == torch.float64
    torch.testing.assert_close(out, torch.full((4,), expected, dtype=torch.float64), atol=1e-4, rtol=0)


def test_psnr_per_sample_and_data_range():
    ref = torch.zeros(2, 1, 8, 8)
    x = torch.stack([torch.full((1, 8, 8), 0.5), torch.full((1, 8, 8), 0.25)])
    out = psnr(x, ref, data_range=1.0)
    torch.testing.assert_close(out, torch.tensor([10 * math.log10(1 / 0.25), 10 * math.log10(1 / 0.0625)], dtype=torch.float64))


def test_psnr_identical_is_inf():
    x = _images(3)
    out = psnr(x, x.clone())
    assert torch.isinf(out).all() and (out > 0).all()


def test_psnr_shape_mismatch_raises():
    with pytest.raises(ValueError, match="same shape"):
        psnr(torch.zeros(2, 1, 28, 28), torch.zeros(3, 1, 28, 28))


# --------------------------------------------------------------------- SSIM
def test_ssim_identical_is_one():
    x = _images()
    torch.testing.assert_close(ssim(x, x.clone()), torch.ones(4, dtype=torch.float64))


def test_ssim_symmetric():
    x, y = _images(seed=0), _images(seed=1)
    torch.testing.assert_close(ssim(x, y), ssim(y, x))


def test_ssim_decreases_with_noise():
    g = torch.Generator().manual_seed(2)
    x = torch.zeros(1, 1, 28, 28) - 1
    x[:, :, 6:22, 12:16] = 1.0  # a bar, like a "1"
    noise = torch.randn(1, 1, 28, 28, generator=g)
    vals = [ssim((x + s * noise).clamp(-1, 1), x).item() for s in (0.0, 0.05, 0.1, 0.2, 0.4, 0.8)]
    assert vals[0] == pytest.approx(1.0)
    assert all(a > b for a, b in zip(vals, vals[1:])), vals
    assert vals[-1] < 0.5


@pytest.mark.parametrize("a,b", [(0.3, -0.5), (-1.0, 1.0), (0.0, 0.0), (0.9, 0.8)])
def test_ssim_constant_images_analytic(a, b):
    # Constant images: all local variances and the covariance are 0, so the
    # contrast-structure factor is C2 / C2 = 1 and SSIM = luminance term, on the
    # values shifted by -value_min = +1 (as documented).
    x = torch.full((1, 1, 28, 28), a, dtype=torch.float64)
    y = torch.full((1, 1, 28, 28), b, dtype=torch.float64)
    ap, bp = a + 1, b + 1
    expected = (2 * ap * bp + C1) / (ap**2 + bp**2 + C1)
    assert ssim(x, y).item() == pytest.approx(expected, abs=1e-10)
    # raw-value convention (no shift): the textbook formula in a, b directly
    raw = (2 * a * b + C1) / (a**2 + b**2 + C1)
    assert ssim(x, y, value_min=0.0).item() == pytest.approx(raw, abs=1e-10)


def test_ssim_affine_contrast_analytic():
    # y = alpha * x (raw values, value_min=0): locally mu_y = alpha mu_x,
    # sigma_y^2 = alpha^2 sigma_x^2, sigma_xy = alpha sigma_x^2. For a checkerboard
    # x = (-1)^(i+j) the windowed mean is +-(sum_a g_a (-1)^a)^2 at every position
    # (only its sign alternates), so mu_x^2 and sigma_x^2 are constant and the SSIM
    # map is constant; compare it with the formula on one window's exact moments.
    x = torch.ones(1, 1, 28, 28, dtype=torch.float64)
    x[..., ::2, :] *= -1
    x[..., :, ::2] *= -1
    alpha = 0.5
    y = alpha * x
    from fastflow.metrics import gaussian_window
    g = gaussian_window(11, 1.5)
    w = g[:, None] * g[None, :]  # (11, 11)
    patch = x[0, 0, :11, :11]
    mu = (w * patch).sum()
    var = (w * patch**2).sum() - mu**2
    expected = ((2 * alpha * mu**2 + C1) * (2 * alpha * var + C2)) / ((mu**2 + alpha**2 * mu**2 + C1) * (var + alpha**2 * var + C2))
    assert ssim(y, x, value_min=0.0).item() == pytest.approx(expected.item(), rel=1e-9)


def test_ssim_output_shape_and_multichannel():
    x = torch.rand(3, 2, 16, 20) * 2 - 1
    y = x.clone()
    y[:, 1] = -y[:, 1]  # destroy channel 1 only
    out = ssim(x, y)
    assert out.shape == (3,)
    # the average over channels: channel 0 contributes exactly 1
    out1 = ssim(x[:, 1:], y[:, 1:])
    torch.testing.assert_close(out, (1 + out1) / 2)


def test_ssim_rejects_small_images():
    with pytest.raises(ValueError, match="smaller than"):
        ssim(torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 8, 8))


# --------------------------------------------------------------------- Frechet distance
def _random_orthogonal(d, g):
    q, r = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r))


def test_frechet_diagonal_known_value():
    g = torch.Generator().manual_seed(0)
    d = 16
    m1, m2 = torch.randn(d, generator=g, dtype=torch.float64), torch.randn(d, generator=g, dtype=torch.float64)
    s1, s2 = torch.rand(d, generator=g, dtype=torch.float64) + 0.1, torch.rand(d, generator=g, dtype=torch.float64) + 0.1
    expected = ((m1 - m2) ** 2).sum() + ((s1.sqrt() - s2.sqrt()) ** 2).sum()
    assert frechet_distance(m1, torch.diag(s1), m2, torch.diag(s2)) == pytest.approx(expected.item(), rel=1e-10)


def test_frechet_commuting_covariances_known_value():
    g = torch.Generator().manual_seed(1)
    d = 24
    q = _random_orthogonal(d, g)
    l1 = torch.rand(d, generator=g, dtype=torch.float64) * 3
    l2 = torch.rand(d, generator=g, dtype=torch.float64) * 3
    l1[:3] = 0.0  # singular covariance is allowed
    s1, s2 = q @ torch.diag(l1) @ q.T, q @ torch.diag(l2) @ q.T
    m1, m2 = torch.randn(d, generator=g, dtype=torch.float64), torch.randn(d, generator=g, dtype=torch.float64)
    expected = ((m1 - m2) ** 2).sum() + ((l1.sqrt() - l2.sqrt()) ** 2).sum()
    assert frechet_distance(m1, s1, m2, s2) == pytest.approx(expected.item(), rel=1e-8)


def test_frechet_self_zero_and_symmetric():
    g = torch.Generator().manual_seed(2)
    d = 32
    a = torch.randn(d, d, generator=g, dtype=torch.float64)
    b = torch.randn(d, 2 * d, generator=g, dtype=torch.float64)
    s1, s2 = a @ a.T / d, b @ b.T / (2 * d)  # general, non-commuting
    m1, m2 = torch.randn(d, generator=g, dtype=torch.float64), torch.randn(d, generator=g, dtype=torch.float64)
    assert frechet_distance(m1, s1, m1, s1) == pytest.approx(0.0, abs=1e-9)
    fd12, fd21 = frechet_distance(m1, s1, m2, s2), frechet_distance(m2, s2, m1, s1)
    assert fd12 > 0
    assert fd12 == pytest.approx(fd21, rel=1e-9)


def test_frechet_general_matches_trace_of_sqrt_of_product():
    # independent check of the trace term: Tr((S1 S2)^{1/2}) = sum sqrt(eig(S1 S2))
    g = torch.Generator().manual_seed(3)
    d = 10
    a = torch.randn(d, d, generator=g, dtype=torch.float64)
    b = torch.randn(d, d, generator=g, dtype=torch.float64)
    s1, s2 = a @ a.T + 0.1 * torch.eye(d, dtype=torch.float64), b @ b.T + 0.1 * torch.eye(d, dtype=torch.float64)
    ev = torch.linalg.eigvals(s1 @ s2).real.clamp_min(0).sqrt().sum()
    zero = torch.zeros(d, dtype=torch.float64)
    expected = torch.trace(s1) + torch.trace(s2) - 2 * ev
    assert frechet_distance(zero, s1, zero, s2) == pytest.approx(expected.item(), rel=1e-8)


def test_frechet_from_samples_is_small():
    g = torch.Generator().manual_seed(4)
    d, n = 8, 20_000
    a = torch.randn(d, d, generator=g, dtype=torch.float64)
    cov = a @ a.T / d + 0.1 * torch.eye(d, dtype=torch.float64)
    mean = torch.randn(d, generator=g, dtype=torch.float64)
    samples = mean + torch.randn(n, d, generator=g, dtype=torch.float64) @ torch.linalg.cholesky(cov).T
    mu, sigma = feature_statistics(samples)
    assert mu.dtype == sigma.dtype == torch.float64 and mu.shape == (d,) and sigma.shape == (d, d)
    fd = frechet_distance(mu, sigma, mean, cov)
    # sampling error ~ O(d * tr(C) / n); a shifted mean by 0.3 per dim gives FD ~ 0.72
    assert fd < 0.01
    assert frechet_distance(mu, sigma, mean + 0.3, cov) > 0.5


def test_feature_statistics_matches_definition():
    g = torch.Generator().manual_seed(5)
    f = torch.randn(50, 6, generator=g)
    mu, sigma = feature_statistics(f)
    f64 = f.double()
    torch.testing.assert_close(mu, f64.mean(0))
    torch.testing.assert_close(sigma, torch.cov(f64.T))  # unbiased, N - 1


def test_frechet_and_stats_shape_errors():
    with pytest.raises(ValueError):
        feature_statistics(torch.zeros(1, 4))
    with pytest.raises(ValueError):
        frechet_distance(torch.zeros(3), torch.eye(3), torch.zeros(4), torch.eye(4))


# --------------------------------------------------------------------- accuracy
def test_classifier_accuracy_counts_and_restores_mode():
    class Fixed(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def forward(self, x):  # logits = one-hot of round(pixel[0,0]) mod 10
            assert not self.training
            k = x[:, 0, 0, 0].round().long() % 10
            return torch.nn.functional.one_hot(k, 10).float()

    images = torch.zeros(7, 1, 28, 28)
    images[:, 0, 0, 0] = torch.arange(7).float()
    labels = torch.tensor([0, 1, 2, 3, 4, 0, 0])  # predictions are 0..6: 5 correct
    model = Fixed().train()
    assert classifier_accuracy(model, images, labels, batch_size=3) == pytest.approx(5 / 7)
    assert model.training
    # plain callables work too: all-zero logits predict class 0, right for 3 of 7
    assert classifier_accuracy(lambda x: torch.zeros(len(x), 10), images, labels) == pytest.approx(3 / 7)


@pytest.mark.parametrize("batch_size", [0, -1, 2.5])
def test_classifier_accuracy_needs_a_positive_batch(batch_size):
    with pytest.raises(ValueError, match="batch_size must be an int >= 1"):
        classifier_accuracy(lambda x: x.flatten(1), torch.zeros(3, 4), torch.zeros(3, dtype=torch.long),
                                       batch_size=batch_size)
