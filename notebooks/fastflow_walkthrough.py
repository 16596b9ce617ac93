# %% [markdown]
# # FastFlow, end to end on a toy flow
#
# FastFlow samples a flow-matching model with Euler steps, but at some steps it does not call the model: it
# extrapolates the velocity from the last few real evaluations. This notebook builds the method up from the
# pieces, on a flow whose velocity is known in closed form, so that every claim can be checked, and every
# figure's claim is asserted in the cell that draws it.
#
# **Time convention** (everywhere in the project): t = 0 is noise, t = 1 is data,
# x_t = (1 - t) noise + t data, and a sampler integrates dx/dt = v(x, t) from 0 to 1 on t_k = k / T.
#
# The notebook is built from `notebooks/fastflow_walkthrough.py` by `python notebooks/build.py`, which saves
# the outputs shown here; `tests/test_notebooks.py` runs it again and checks that they have not gone stale.

# %%
import numpy as np
import torch
import matplotlib.pyplot as plt
import fastflow as ff

# The mixture of benchmarks/theorem.py and docs/theory.md: three Gaussians in 2-D.
flow = ff.toy.GaussianMixtureFlow([[2.0, 0.0], [-2.0, 1.0], [0.0, -2.0]], [0.5, 0.4, 0.6])
x0 = torch.randn(256, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
rel = lambda a, b: ((a - b).norm() / b.norm()).item()   # relative L2 distance over the batch

# The exact solution of the ODE from the same noise: a converged Heun run (second order).
exact = ff.HeunSampler(1000, correct_last=False).sample(flow, x0).x
check = ff.HeunSampler(500, correct_last=False).sample(flow, x0).x
print(f"Heun-500 is {rel(check, exact):.1e} from Heun-1000: converged far below every error measured here")
assert rel(check, exact) < 1e-5

paths = torch.stack(ff.HeunSampler(50, correct_last=False).sample(flow, x0[:40], trace=True).trace)  # (T+1, 40, 2)
data = flow.sample_data(256, torch.Generator().manual_seed(1))
fig, ax = plt.subplots(figsize=(5, 5))
ax.scatter(*x0.T, s=4, alpha=0.4, label="noise (t = 0)")
ax.scatter(*data.T, s=4, alpha=0.4, label="data (t = 1)")
for p in paths.transpose(0, 1):
    ax.plot(*p.T, color="k", lw=0.5, alpha=0.6)
ax.set_title("straightish paths from noise to the three modes")
ax.legend(loc="lower left")
ax.set_aspect("equal")

# %% [markdown]
# ## 1. Euler has its own error: O(1/T)
#
# Euler's update x_{k+1} = x_k + dt v(x_k, t_k) makes a local error O(dt^2) per step, so O(T dt^2) = O(1/T) in
# all. FastFlow accelerates Euler: what it can promise is to stay close to **Euler-T**, which is itself some
# distance from the exact flow. Keep both distances in mind.

# %%
Ts = [25, 50, 100, 200, 400]
euler_err = [rel(ff.EulerSampler(T).sample(flow, x0).x, exact) for T in Ts]
slope = np.polyfit(np.log(Ts), np.log(euler_err), 1)[0]
print("Euler-T against the exact solution:", ", ".join(f"T={T}: {e:.4f}" for T, e in zip(Ts, euler_err)))
print(f"fitted slope {slope:.2f} (first order: -1)")
assert abs(slope + 1) < 0.1

fig, ax = plt.subplots(figsize=(5, 3.5))
ax.loglog(Ts, euler_err, "o-", label="Euler-T vs exact")
ax.loglog(Ts, euler_err[0] * (Ts[0] / np.array(Ts)), "k--", lw=0.8, label="slope -1")
ax.set_xlabel("steps T"); ax.set_ylabel("relative L2 error"); ax.legend()

# %% [markdown]
# ## 2. One skip: extrapolate the velocity
#
# At a skipped step k the velocity is not computed; it is the polynomial of degree p through the last p + 1 real
# velocities, evaluated at t_k (Newton's divided differences, `ff.extrapolate.newton_extrapolate`). For a smooth path the
# error of that guess is O(dt^(p+1)): order 1 extrapolates linearly from two velocities, order 2 quadratically
# from three. Below: the relative error e = ||v_hat - v|| / ||v|| of guessing the velocity one step ahead, at
# t = 0.5, as the step shrinks.

# %%
def one_step_error(T, p, t_mid=0.5):
    """Follow Euler-T to the step k nearest t_mid, then guess v at k from the p + 1 steps before it."""
    traj = ff.EulerSampler(T).sample(flow, x0, trace=True).trace   # x_0 .. x_T
    k = round(t_mid * T)
    times = [(k - p - 1 + i) / T for i in range(p + 1)]
    vs = [flow(traj[k - p - 1 + i], torch.full((x0.shape[0],), t)) for i, t in enumerate(times)]
    v_hat = ff.extrapolate.newton_extrapolate(times, vs, k / T)
    return ff.errors.relative_error(v_hat, flow(traj[k], torch.full((x0.shape[0],), k / T))).item()

Ts = [50, 100, 200, 400]
fig, ax = plt.subplots(figsize=(5, 3.5))
for p in (1, 2):
    errs = [one_step_error(T, p) for T in Ts]
    slope = np.polyfit(np.log(Ts), np.log(errs), 1)[0]
    print(f"order {p}: one-step error at t = 0.5, T = 50: {errs[0]:.2e}; slope in T {slope:.2f} "
          f"(expected -(p + 1) = {-(p + 1)})")
    assert abs(slope + p + 1) < 0.2
    ax.loglog(Ts, errs, "o-", label=f"order {p}")
ax.set_xlabel("steps T"); ax.set_ylabel("relative error of v_hat"); ax.legend()

# %% [markdown]
# ## 3. The deviation bound: O(|S| / T^(p+2))
#
# Let x_k be full Euler and x~_k the run that skips the steps in S, from the same noise, and e_k = x~_k - x_k.
#
# **Assumptions.** (A1) v is L-Lipschitz in x on the region the paths visit, uniformly in t. (A2) Along the path,
# t -> v(x(t), t) is p + 1 times differentiable with a bounded derivative, so the extrapolation error at a
# skipped step is |eps_k| <= M dt^(p+1) (previous section). (A3) Runs of skips are bounded in length, so every
# guess uses nodes at most a fixed number of steps back.
#
# **Derivation.** At a real step, e_{k+1} = e_k + dt (v(x~_k) - v(x_k)), so |e_{k+1}| <= (1 + L dt) |e_k|. At a
# skipped step the velocity used is v(x~_k) + eps_k, so |e_{k+1}| <= (1 + L dt)|e_k| + dt |eps_k|. Unrolling
# and using (1 + L dt)^T <= e^L:
#
#     |e_T| <= e^L * sum_{k in S} dt |eps_k| <= e^L |S| M dt^(p+2) = O(|S| / T^(p+2)),
#
# i.e. O(|S| / T^3) for the paper's order p = 1. (The error of the extrapolated velocity feeds the next steps
# through x, which is why the constant carries e^L; strictly the guess is made from x~ and not x, which adds a
# term of the same form.) Below: four skips at t = 0.2, 0.4, 0.6, 0.8 while T grows, and more skips at T = 400.

# %%
def deviation(T, S, p):
    return rel(ff.extrapolated_euler(flow, x0, T, S, order=p).x, ff.EulerSampler(T).sample(flow, x0).x)

Ts, sizes = [50, 100, 200, 400], [1, 2, 4, 8, 16]
fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
for p in (1, 2):
    devs = [deviation(T, [round(f * T) for f in (0.2, 0.4, 0.6, 0.8)], p) for T in Ts]
    slope_T = np.polyfit(np.log(Ts), np.log(devs), 1)[0]
    devs_S = [deviation(400, [160 + 4 * i for i in range(n)], p) for n in sizes]
    slope_S = np.polyfit(np.log(sizes), np.log(devs_S), 1)[0]
    print(f"order {p}: slope in T {slope_T:.2f} (bound {-(p + 2)}), slope in |S| {slope_S:.2f} (bound 1)")
    axes[0].loglog(Ts, devs, "o-", label=f"order {p}")
    axes[1].loglog(sizes, devs_S, "o-", label=f"order {p}")
    if p == 1:  # the bound's regime (for p = 2 the asymptote starts later: docs/theory.md)
        assert abs(slope_T + 3) < 0.1 and abs(slope_S - 1) < 0.1
axes[0].set_xlabel("steps T (|S| = 4)"); axes[1].set_xlabel("skipped steps |S| (T = 400)")
for ax in axes:
    ax.set_ylabel("relative deviation from Euler-T"); ax.legend()

# %% [markdown]
# ## 4. Which steps to skip: the error table and the optimal plan
#
# The first call of a `FastFlowSampler` is a full Euler run (the **calibration run**). At every real step it
# records what every possible skip would have cost: table[k, g, i] is the relative error of extrapolating from
# step k (with its older node g steps back) to step k + i. The cost of a skip set is the sum of the table entries
# it uses, which is the bound's sum dt |eps_k| up to the factor T. For a budget of K model calls a dynamic
# program over (step, gap) finds the skip set of least cost exactly (`ff.plan_skips`). Below: the table for
# gap 1 as a heat map (step against lead), and the plan for K = 16 drawn on it: a run of m skips after real
# step k uses leads 1..m of row k.

# %%
T, K = 50, 16
plan = ff.FastFlowSampler(T, calls=K)
plan.sample(flow, torch.randn(256, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(99)))
table = plan.table[:, 1, :].clone()           # (T, lead) for gap 1 (order 1 has one gap axis)
skip = plan.schedule()
runs = ff.policy.runs_after(T, skip)
print(f"plan for K = {K}: {T - len(skip)} real steps, skipped {skip}")

fig, ax = plt.subplots(figsize=(9, 3.5))
shown = torch.where(torch.isfinite(table) & (table > 0), table, torch.nan).log10().T
im = ax.imshow(shown, aspect="auto", origin="lower", cmap="viridis")
fig.colorbar(im, ax=ax, label="log10 relative error")
for k, m in runs.items():
    ax.plot([k, k], [1, m], "r-", lw=2)
    ax.plot(k, m, "r.", ms=6)
ax.set_xlabel("real step k"); ax.set_ylabel("lead i (steps ahead)")
ax.set_title("error table (gap 1); red: the optimal plan's runs of skips")

static = ff.caching.static_skip_schedule(T)            # every other step: 26 calls
best_26 = ff.plan_skips(plan.table, T, T - len(static), 1, ff.controller.DEFAULT_MAX_RUN)
c_static, c_plan = ff.plan.plan_cost(plan.table, T, static), ff.plan.plan_cost(plan.table, T, best_26)
print(f"at {T - len(static)} calls: static schedule cost {c_static:.3f}, optimal plan cost {c_plan:.3f}")
assert c_plan <= c_static and len(skip) == T - K

# %% [markdown]
# ## 5. The paper's bandit, explained
#
# The paper lets a multi-armed bandit at every real step k choose **arm m = how many of the next steps to skip**,
# m in {0, 1, 2, 3, 4}. After the run it is paid r = mu * m - e, where e is the relative error its extrapolation
# made at the real step that ended its run; mu is the price of one skipped step in units of relative error
# (a skip pays if it costs less than mu). UCB1 pulls
#
#     argmax_m  mean_m + sqrt(c ln N / n_m)        (N pulls in all, n_m of arm m, c = 2),
#
# after trying every arm once. The paper calibrates mu on the first run as max_k e_k / T (e_k the one-step
# errors). Two things follow on this toy:
#
# * with the paper's raw reward (`FastFlowSampler.paper(T)`), rewards are of order 1e-3 while UCB1's bonus is of
#   order 1: the bonus decides, and the bandit pulls every arm about equally whatever it observes;
# * with rewards divided by mu * max(arms) (`policy="paper"`, the default scale), it does learn, and what it
#   learns from the calibrated mu is *not to skip*: mu is below the error of almost every skip.

# %%
def batch(i, n=256):
    return torch.randn(n, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(100 + i))

def arm_shares(s):
    counts = np.array(list(s.policy.arm_counts().values())).sum(0)
    return counts / counts.sum()

raw, scaled = ff.FastFlowSampler.paper(50), ff.FastFlowSampler(50, policy="paper")
calls_raw = [raw.sample(flow, batch(i)).nfe for i in range(60)]
calls_scaled = [scaled.sample(flow, batch(i)).nfe for i in range(60)]
print(f"calibrated mu = {scaled.mu:.2e}")
print(f"raw rewards:    calls in the last 10 batches {calls_raw[-10:]}, arm shares {np.round(arm_shares(raw), 2).tolist()}")
print(f"scaled rewards: calls in the last 10 batches {calls_scaled[-10:]}, arm shares "
      f"{np.round(arm_shares(scaled), 2).tolist()}")
assert arm_shares(raw).min() > 0.1                                  # explores every arm: no learning
assert np.mean(calls_scaled[-10:]) >= 48 and arm_shares(scaled)[0] > 0.9   # learned: do not skip

# %% [markdown]
# So mu is the knob. At mu = 0.02 (a skip is worth 2% relative error) the scaled bandits learn which steps
# tolerate runs: the plot shows, batch by batch, the share of all decisions that went to each arm.

# %%
paper = ff.FastFlowSampler(50, policy="paper", mu=0.02)
shares, calls, prev = [], [], None
for i in range(60):
    calls.append(paper.sample(flow, batch(i)).nfe)
    counts = np.array(list(paper.policy.arm_counts().values())).sum(0)
    if prev is not None:
        shares.append((counts - prev) / max((counts - prev).sum(), 1))
    prev = counts
shares = np.array(shares)
fig, ax = plt.subplots(figsize=(7, 3.5))
ax.stackplot(range(1, 60), shares.T, labels=[f"arm {m}: skip {m}" for m in paper.spec.arms])
ax.set_xlabel("batch"); ax.set_ylabel("share of decisions"); ax.legend(loc="upper right", fontsize=8)
ax.set_title("which arms the per-step UCB1 bandits pull (mu = 0.02)")
late = shares[-20:].mean(0)
print(f"model calls per batch, last 10: {calls[-10:]}")
print("arm shares over the last 20 batches:", np.round(late, 2).tolist())
assert np.mean(calls[-10:]) < 30 and late[0] > late[-1]   # it skips, and prefers short runs to long ones

# %% [markdown]
# The per-step bandit needs many batches and still keeps exploring; the optimal plan of section 4 needs one
# calibration run and no exploration. `docs/theory.md` compares the three policies at equal calls.

# %% [markdown]
# ## 6. Everything at equal calls, against Euler-50 and against the exact solution
#
# The fair comparison gives every sampler the same number of model calls K from the same noise: FastFlow's plan
# (Euler base, which follows Euler-50, and AB2 base, which follows the exact flow better), plain Euler with K
# steps, and second-order Adams-Bashforth (AB2) with K steps; the static every-other-step schedule makes 26 calls.

# %%
euler50 = ff.EulerSampler(50).sample(flow, x0).x
budgets = [12, 14, 16, 20, 26]
rows = {name: [] for name in ("FastFlow plan", "FastFlow plan, AB2 base", "Euler-K", "AB2-K")}
calib = batch(-1)
for K_ in budgets:
    for name, s in (("FastFlow plan", ff.FastFlowSampler(50, calls=K_)),
                    ("FastFlow plan, AB2 base", ff.FastFlowSampler(50, calls=K_, base="ab2"))):
        s.sample(flow, calib)                      # calibration run on other noise
        out = s.sample(flow, x0)
        assert out.nfe == K_
        rows[name].append((rel(out.x, euler50), rel(out.x, exact)))
    for name, s in (("Euler-K", ff.EulerSampler(K_)), ("AB2-K", ff.AdamsBashforthSampler(K_, order=2))):
        out = s.sample(flow, x0).x
        rows[name].append((rel(out, euler50), rel(out, exact)))
static_x = ff.ExtrapolatedEulerSampler(50, ff.caching.static_skip_schedule(50)).sample(flow, x0).x
static_row = (rel(static_x, euler50), rel(static_x, exact))

fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
for name, vals in rows.items():
    for ax, j in zip(axes, (0, 1)):
        ax.semilogy(budgets, [v[j] for v in vals], "o-", label=name)
for ax, j, what in zip(axes, (0, 1), ("Euler-50", "the exact solution")):
    ax.semilogy([26], [static_row[j]], "k*", ms=10, label="static (every other step)")
    ax.set_xlabel("model calls K"); ax.set_ylabel(f"relative L2 distance to {what}"); ax.legend(fontsize=8)
axes[1].axhline(euler_err[1], color="gray", ls=":", lw=1)   # Euler-50's own error
print(f"{'K':>3s} " + " ".join(f"{n:>24s}" for n in rows) + "   (distance to Euler-50 / to exact)")
for i, K_ in enumerate(budgets):
    print(f"{K_:3d} " + " ".join(f"{rows[n][i][0]:.4f} / {rows[n][i][1]:.4f}".rjust(24) for n in rows))
print(f"static schedule, 26 calls: {static_row[0]:.4f} / {static_row[1]:.4f}; Euler-50 to exact: {euler_err[1]:.4f}")
for i in range(len(budgets)):   # the claims of the plot
    assert rows["FastFlow plan"][i][0] < rows["Euler-K"][i][0]           # closer to Euler-50 than Euler-K
    assert rows["FastFlow plan, AB2 base"][i][1] < rows["Euler-K"][i][1]  # and, on AB2, closer to the flow
assert static_row[0] < rows["Euler-K"][budgets.index(26)][0]

# %% [markdown]
# Read the right panel with the dotted line in mind: Euler-50 is itself that far from the exact flow, so the
# Euler-base plan, which converges to Euler-50, levels off there; skipping on the AB2 base keeps going down.
# `docs/theory.md` (section 5) has the bound for the AB2 base and the same comparison on two more models.
#
# ## 7. Keep what was learned
#
# A sampler's state (the calibration table, the policy, what it learned) is plain JSON, written atomically;
# `freeze()` turns the current plan into a fixed schedule with no decisions at run time.

# %%
import os, tempfile
s = ff.FastFlowSampler(50, calls=16)
s.sample(flow, calib)
path = os.path.join(tempfile.mkdtemp(), "state.json")
s.save_state(path)
again = ff.FastFlowSampler(50, calls=16)
again.load_state(path)
frozen = again.freeze()
assert again.state_dict() == s.state_dict()
assert torch.equal(frozen.sample(flow, x0).x, s.sample(flow, x0).x)
print(f"state round trip exact; frozen schedule skips {len(frozen.skip)} steps and gives the same samples")
