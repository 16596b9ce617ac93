"""Optimised time grids: the dynamic program is exact against brute force, a grid with every step
of the reference reproduces it exactly, and Euler on the optimised grid beats the uniform one."""
import itertools

import pytest
import torch

import fastflow as ff
from fastflow.optgrid import euler_step_errors, optimal_grid, optimal_times, step_errors, trajectory_velocities
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
    x = torch.stack(run.trace)
    v = torch.cat([(x[1:] - x[:-1]) * T, torch.zeros_like(x[:1])])  # Euler's own velocities, given
    assert torch.allclose(step_errors(ff.grids.uniform(T), run.trace, "euler", velocities=v), e, atol=1e-12)
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
    with pytest.raises(ValueError, match="square"):
        optimal_grid(torch.zeros(5, 5, 4), 2)
    with pytest.raises(ValueError, match="unknown grid base 'heun'"):
        step_errors([0.0, 0.5, 1.0], [torch.zeros(2)] * 3, "heun")
    with pytest.raises(ValueError, match="as many states as times"):
        euler_step_errors([0.0, 0.5, 1.0], [torch.zeros(2)] * 2)


def test_the_pair_dynamic_program_of_two_step_bases_is_exact_against_brute_force():
    g = torch.Generator().manual_seed(1)
    T = 8
    for K in (1, 2, 3, 5, 8):
        for _ in range(4):
            e = torch.rand(T + 1, T + 1, T + 1, generator=g, dtype=torch.float64)

            def cost(p):  # the first step at (0, 0, p1), then (h, i, j) along the path
                return float(e[0, 0, p[1]] + sum(e[a, b, c] for a, b, c in zip(p, p[1:], p[2:])))
            best = min(((0, *mid, T) for mid in itertools.combinations(range(1, T), K - 1)), key=cost)
            path = optimal_grid(e, K)
            assert path[0] == 0 and path[-1] == T and len(path) == K + 1 and sorted(set(path)) == list(path)
            assert cost(path) == pytest.approx(cost(best), rel=1e-12)


def test_two_step_tables_vanish_where_the_base_is_exact():
    """AB2 integrates a velocity linear in t exactly on any grid (its first step, Euler, does not);
    UniPC-2 is exact on straight paths to a fixed point (a constant data prediction)."""
    t = torch.tensor([0.0, 0.05, 0.2, 0.3, 0.55, 0.7, 0.9, 1.0], dtype=torch.float64)
    a, b, c = torch.randn(3, 40, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    x = [a + b * s + c * s * s for s in t]
    v = torch.stack([b + 2 * c * s for s in t])
    e = step_errors(t, x, "ab2", velocities=v)
    n = len(t)
    inner = [(h, i, j) for h in range(n) for i in range(h + 1, n) for j in range(i + 1, n)]
    assert max(float(e[h, i, j]) for h, i, j in inner) < 1e-12
    first = e[0, 0, 1:]
    assert (first > 1e-6).all()  # Euler's c dt^2
    noise_, data = torch.randn(2, 40, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    straight = [(1 - s) * noise_ + s * data for s in t]
    e = step_errors(t, straight, "unipc")  # forward differences are exact on straight paths
    finite = e[torch.isfinite(e)]
    assert len(finite) == len(inner) + n - 1 and finite.max() < 1e-12
    assert torch.isinf(e[1, 1, 2]) and torch.isinf(e[2, 1, 3])  # off h < i < j and off the first step


def test_trajectory_velocities_are_exact_on_quadratics_on_any_grid():
    t = torch.tensor([0.0, 0.1, 0.15, 0.4, 0.8, 1.0], dtype=torch.float64)
    x = [torch.stack([3 * s * s - s + 2, -s * s]) for s in t]
    v = trajectory_velocities(t, x)
    assert torch.allclose(v, torch.stack([torch.stack([6 * s - 1, -2 * s]) for s in t]), atol=1e-12)


def test_grids_cut_for_ab2_and_unipc_beat_their_uniform_grids_on_the_checkerboard_model():
    """On the shipped checkerboard model (another codebase's training, ``benchmarks/peer_model.py``),
    AB2 and UniPC on their own optimised grids, cut along AB2-100 (every other state, second-order
    velocities), land closer to the exact flow than on the uniform grid at 6 and 8 calls (measured
    0.70 and 0.66 of the uniform error for AB2, 0.47 and 0.66 for UniPC). It is not a law: on the
    sharp toy mixture summed local errors mislead UniPC, which is why ``BudgetSampler`` replays."""
    from benchmarks.peer_model import load_peer
    model = load_peer()
    flow = lambda x, t: model(x, t)  # noqa: E731
    with torch.no_grad():
        x_ref = torch.randn(256, 2, generator=torch.Generator().manual_seed(1000))
        x = torch.randn(1000, 2, generator=torch.Generator().manual_seed(0))
        fine = ff.AdamsBashforthSampler(100)
        run = fine.sample(flow, x_ref, trace=True)
        times = fine.times.tolist()
        v = trajectory_velocities(times, run.trace)[::2]
        exact = ff.HeunSampler(1000).sample(flow, x).x
        for base, make in (("ab2", ff.AdamsBashforthSampler), ("unipc", ff.UniPCSampler)):
            for K in (6, 8):
                grid = optimal_times(times[::2], run.trace[::2], K, base=base, velocities=v)
                tuned = make(times=grid).sample(flow, x).x
                plain = make(K).sample(flow, x).x
                assert (tuned - exact).norm() < 0.8 * (plain - exact).norm(), (base, K)
