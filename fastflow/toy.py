"""Toy flows with closed-form velocity fields, for testing samplers.

Rectified-flow path with standard normal noise z and data x1:
x_t = (1 - t) z + t x1, t = 0 noise, t = 1 data. The marginal (ODE) velocity is
v(x, t) = E[x1 - z | x_t = x]. Each flow is a plain callable ``flow(x=x, t=t)`` with
x of shape (batch, dim) and t of shape (batch,), usable as a sampler's ``velocity``.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch

__all__ = ["GaussianFlow", "GaussianMixtureFlow"]


def _as_column(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Time as (batch, 1) for broadcasting against x of shape (batch, dim)."""
    t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
    return t.reshape(-1, 1) if t.dim() else t.expand(x.shape[0]).reshape(-1, 1)


class GaussianFlow:
    """Data N(m, s^2 I) in ``dim`` dimensions.

    x_t is Gaussian with mean t m and standard deviation sigma_t, sigma_t^2 = (1 - t)^2 + t^2 s^2.
    Velocity: v(x, t) = m + (sigma_t' / sigma_t) (x - t m), sigma_t' / sigma_t = (t s^2 - (1 - t)) / sigma_t^2.
    Exact ODE solution from x_0: x(t) = t m + sigma_t x_0, so x(1) = m + s x_0.
    Time convention: t = 0 noise, t = 1 data.

    Args:
        mean: m, shape (dim,).
        std: s > 0.

    Raises:
        ValueError: for std <= 0.
    """

    def __init__(self, mean: Sequence[float] | torch.Tensor, std: float):
        if std <= 0:
            raise ValueError(f"std must be > 0, got {std}")
        self.mean = torch.as_tensor(mean, dtype=torch.float64)
        self.std = float(std)

    @property
    def dim(self) -> int:
        """The dimension D of the data."""
        return self.mean.numel()

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        """sigma_t = sqrt((1 - t)^2 + t^2 s^2), the standard deviation of x_t, elementwise in t."""
        return torch.sqrt((1 - t) ** 2 + t ** 2 * self.std ** 2)

    def __call__(self, x: torch.Tensor, t: torch.Tensor, **_) -> torch.Tensor:
        """v(x, t) for x (batch, dim) and t (batch,) or a scalar; returns (batch, dim), x's dtype."""
        t = _as_column(t, x)
        m = self.mean.to(x)
        rate = (t * self.std ** 2 - (1 - t)) / ((1 - t) ** 2 + t ** 2 * self.std ** 2)
        return m + rate * (x - t * m)

    def solution(self, x0: torch.Tensor, t: float = 1.0) -> torch.Tensor:
        """Exact state at time t of the ODE started from x0 at t = 0."""
        tt = torch.tensor(t, dtype=x0.dtype, device=x0.device)
        return t * self.mean.to(x0) + self.sigma(tt) * x0

    def sample_data(self, n: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """n draws from the data distribution N(m, s^2 I), shape (n, dim), float64."""
        z = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        return self.mean + self.std * z


class GaussianMixtureFlow:
    """Data sum_j w_j N(m_j, s_j^2 I).

    Given component j, x_t ~ N(t m_j, sigma_{j,t}^2 I) and the conditional velocity is the
    Gaussian one, v_j(x, t) = m_j + (t s_j^2 - (1 - t)) / sigma_{j,t}^2 (x - t m_j). The marginal
    velocity is the posterior-weighted mix v(x, t) = sum_j P(j | x_t = x) v_j(x, t), with
    P(j | x) proportional to w_j N(x; t m_j, sigma_{j,t}^2 I) (computed in log space).
    Time convention: t = 0 noise, t = 1 data.

    Args:
        means: m_j, shape (J, dim).
        stds: s_j > 0, J of them.
        weights: w_j > 0, J of them (normalised here); default equal.

    Raises:
        ValueError: for ``means`` not of shape (J, dim), a number of stds other than J, stds <= 0,
            or weights that are not J positive numbers.
    """

    def __init__(self, means: Sequence[Sequence[float]] | torch.Tensor, stds: Sequence[float],
                 weights: Optional[Sequence[float]] = None):
        self.means = torch.as_tensor(means, dtype=torch.float64)            # (J, D)
        if self.means.dim() != 2:
            raise ValueError(f"means must have shape (components, dim), got {tuple(self.means.shape)}")
        J = self.means.shape[0]
        self.stds = torch.as_tensor(stds, dtype=torch.float64).reshape(-1)  # (J,)
        if self.stds.shape != (J,):
            raise ValueError(f"need one std per component ({J}), got {self.stds.numel()}")
        if (self.stds <= 0).any():
            raise ValueError("component stds must be > 0")
        w = torch.ones(J, dtype=torch.float64) if weights is None else torch.as_tensor(weights, dtype=torch.float64)
        if w.shape != (J,) or (w <= 0).any():
            raise ValueError(f"weights must be {J} positive numbers")
        self.weights = w / w.sum()

    @property
    def dim(self) -> int:
        """The dimension D of the data."""
        return self.means.shape[1]

    def __call__(self, x: torch.Tensor, t: torch.Tensor, **_) -> torch.Tensor:
        """v(x, t) for x (batch, dim) and t (batch,) or a scalar; returns (batch, dim), x's dtype."""
        t = _as_column(t, x)                                                 # (B, 1)
        m = self.means.to(x)                                                 # (J, D)
        s2 = self.stds.to(x) ** 2                                            # (J,)
        var = (1 - t) ** 2 + t ** 2 * s2                                     # (B, J)
        diff = x[:, None, :] - t[:, :, None] * m                            # (B, J, D)
        logp = (torch.log(self.weights.to(x)) - 0.5 * diff.square().sum(-1) / var
                - 0.5 * self.dim * torch.log(2 * math.pi * var))             # (B, J)
        post = torch.softmax(logp, dim=1)                                    # (B, J)
        rate = (t * s2 - (1 - t)) / var                                      # (B, J)
        v_j = m + rate[:, :, None] * diff                                    # (B, J, D)
        return (post[:, :, None] * v_j).sum(1)                               # (B, D)

    def sample_data(self, n: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """n draws from the mixture (component j with probability w_j), shape (n, dim), float64."""
        j = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        return self.means[j] + self.stds[j, None] * z
