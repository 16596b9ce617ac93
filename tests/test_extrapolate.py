import pytest
import torch

from fastflow.extrapolate import History, newton_extrapolate


def poly(coeffs, t):
    """sum_i c_i t^i with tensor coefficients c_i."""
    return sum(c * t ** i for i, c in enumerate(coeffs))


@pytest.mark.parametrize("order", [1, 2, 3])
def test_exact_on_polynomials_of_degree_up_to_order(order):
    g = torch.Generator().manual_seed(order)
    times = sorted(torch.rand(order + 1, generator=g, dtype=torch.float64).tolist())  # uneven spacing
    for degree in range(order + 1):
        coeffs = [torch.randn(4, 3, generator=g, dtype=torch.float64) for _ in range(degree + 1)]
        values = [poly(coeffs, s) for s in times]
        for t in (times[-1] + 0.05, times[-1] + 0.3, 1.0):
            assert torch.allclose(newton_extrapolate(times, values, t), poly(coeffs, t), atol=1e-9, rtol=1e-9)


@pytest.mark.parametrize("order", [1, 2])
def test_not_exact_one_degree_higher(order):
    times = [0.1 * i for i in range(order + 1)]
    values = [torch.tensor([s ** (order + 1)], dtype=torch.float64) for s in times]
    t = 0.5
    assert abs(newton_extrapolate(times, values, t).item() - t ** (order + 1)) > 1e-3


def test_order_one_matches_the_two_point_formula():
    v_p, v_k = torch.tensor([1.0, -2.0]), torch.tensor([3.0, 0.5])
    t_p, t_k, t = 0.2, 0.3, 0.45
    expected = v_k + (t - t_k) * (v_k - v_p) / (t_k - t_p)
    assert torch.allclose(newton_extrapolate([t_p, t_k], [v_p, v_k], t), expected)


def test_history_is_bounded_and_can_replay_older_predictions():
    h = History(4)
    for i in range(6):
        h.append(i / 10, torch.tensor([float(i) ** 2]))
    assert len(h) == 4 and list(h.times) == [0.2, 0.3, 0.4, 0.5]
    # order 1 through (0.3, 9) and (0.4, 16), ignoring the newest point, evaluated at 0.5
    assert h.extrapolate(0.5, order=1, drop_last=1).item() == pytest.approx(23.0)
    with pytest.raises(ValueError, match="needs 4 real evaluations"):
        h.extrapolate(0.6, order=3, drop_last=1)


def test_bad_input():
    with pytest.raises(ValueError, match="distinct"):
        newton_extrapolate([0.1, 0.1], [torch.zeros(1), torch.ones(1)], 0.2)
    with pytest.raises(ValueError):
        newton_extrapolate([0.1], [], 0.2)
