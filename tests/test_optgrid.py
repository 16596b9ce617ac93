"""Optimised time grids: the dynamic program is exact against brute force, a grid with every step
of the reference reproduces it exactly, and Euler on the optimised grid beats the uniform one."""
import itertools

import pytest
import torch

import fastflow as ff
from fastflow.optgrid import euler_step_errors, optimal_grid, optimal_times
from problems import noise, sharp_mixture


def test_the_dynamic_program_is_exact_against_brute_force():
    g = torch.Generator().manual_seed(0)
    T = 9
    for K in (1, 2, 3, 4, 9):
        for _ in range(5):
            e = torch.rand(T + 1, T + 1, generator=g, dtype=torch.float64).triu(1)
            e[torch.tril(torch.ones(T + 1, T + 1, dtype=torch.bool))] = float("inf")
            best = min(itertools.combinations(range(1, T), K - 1),
                       key=lambda mid: sum(e[a, b] for a, b in zip((0, *mid), (*mid, T))))
            path = optimal_grid(e, K)
            cost = lambda p: float(sum(e[a, b] for a, b in zip(p, p[1:])))  # noqa: E731
            assert path[0] == 0 and path[-1] == T and len(path) == K + 1
            assert cost(path) == pytest.approx(cost((0, *best, T)), rel=1e-12)


def test_every_step_of_an_euler_reference_costs_nothing_and_longer_steps_cost_more():
    flow, T = sharp_mixture(), 40
    run = ff.EulerSampler(T).sample(flow, noise(64, 2), trace=True)
    e = euler_step_errors(ff.grids.uniform(T), run.trace)
    assert torch.allclose(e.diagonal(1), torch.zeros(T, dtype=torch.float64), atol=1e-12)  # exact: same steps
    assert optimal_grid(e, T) == list(range(T + 1))
    below = torch.tril(torch.ones(T + 1, T + 1, dtype=torch.bool))
    assert (e[0, 2:] > 0).all() and torch.isinf(e[below]).all()


def test_euler_on_the_optimised_grid_beats_the_uniform_grid_at_equal_calls():
    flow, x_ref = sharp_mixture(), noise(512, 2, seed=1)
    T = 200
    reference = ff.EulerSampler(T).sample(flow, x_ref, trace=True)
    x = noise(512, 2, seed=2)  # other noise than the grid was made on
    exact = ff.HeunSampler(400).sample(flow, x).x
    for K in (6, 8, 12):
        times = optimal_times(ff.grids.uniform(T), reference.trace, K)
        assert len(times) == K + 1 and times[0] == 0 and times[-1] == 1
        tuned = ff.EulerSampler(times=times).sample(flow, x).x
        plain = ff.EulerSampler(K).sample(flow, x).x
        assert (tuned - exact).norm() < 0.96 * (plain - exact).norm()  # measured 0.89 to 0.95


def test_bad_arguments_fail_in_one_line():
    with pytest.raises(ValueError, match=r"calls must be an int in \[1, 4\]"):
        optimal_grid(torch.zeros(5, 5), 5)
    with pytest.raises(ValueError, match="square"):
        optimal_grid(torch.zeros(5, 4), 2)
    with pytest.raises(ValueError, match="as many states as times"):
        euler_step_errors([0.0, 0.5, 1.0], [torch.zeros(2)] * 2)
