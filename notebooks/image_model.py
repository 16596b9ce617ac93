# %% [markdown]
# # FastFlow on the image model
#
# The first notebook (`fastflow_walkthrough`) builds FastFlow up on a toy flow whose velocity is known exactly.
# This one runs it on the model the project ships: a small class-conditional DiT trained with rectified flow on
# MNIST (`checkpoints/dit_mnist.pt`, 1.3 M parameters, `checkpoints/MODEL_CARD.md`), on the CPU, with fixed
# seeds. Every figure's claim is asserted in the cell that draws it.
#
# **Time convention**: t = 0 is noise, t = 1 is data, x_t = (1 - t) noise + t data; the model predicts the
# velocity v(x, t) (trained on the target data - noise) and a sampler integrates dx/dt = v from 0 to 1 on
# t_k = k / T. Here every run uses the same 20 noise images and the labels 0..9 twice, no guidance
# (`cfg_scale=1`). Images live in [-1, 1]; PSNR is per image with peak-to-peak 2, averaged over the 20 digits.
#
# Built from `notebooks/image_model.py` by `python notebooks/build.py image_model` (about 3 minutes on 2 CPU
# cores); `tests/test_notebooks.py` runs it again and checks that the saved outputs are current.

# %%
import numpy as np
import torch
import matplotlib.pyplot as plt
from torchvision.utils import make_grid
import fastflow as ff
from models.checkpoint import load_model
from models.evaluation import balanced_labels, fidelity, make_noise

torch.set_num_threads(2)
device = torch.device("cpu")
model, config, _ = load_model("checkpoints/dit_mnist.pt", device=device)
velocity = model.forward_with_cfg                 # velocity(x=..., t=..., y=..., cfg_scale=...)

n, shape = 20, (config.in_channels, config.image_size, config.image_size)
x0 = make_noise(n, shape, seed=0).to(device)           # the noise every sampler starts from
labels = balanced_labels(n, config.num_classes).to(device)
calib = make_noise(n, shape, seed=1).to(device)        # other noise: FastFlow calibrates on it, never on x0
extras = dict(y=labels, cfg_scale=1.0)

def run(sampler, noise=x0, **kw):
    """One sampling run from ``noise`` with the labels above: (images clamped to [-1, 1], model calls)."""
    out = sampler.sample(velocity, noise, **extras, **kw)
    return out.x.clamp(-1, 1), out.nfe

def db(images, reference):
    """Mean per-image PSNR in dB (capped at 100 for identical images)."""
    return fidelity(images, reference)[0]

print(f"DiT: {sum(p.numel() for p in model.parameters()):,} parameters, {n} digits of {shape}, "
      f"{torch.get_num_threads()} threads")

# %% [markdown]
# ## 1. Euler-50 and FastFlow from the same noise
#
# The reference is Euler with T = 50 steps, x_{k+1} = x_k + dt v(x_k, t_k), dt = 1/50: 50 model calls.
# FastFlow takes the same 50 Euler steps but, at some of them, does not call the model: it extrapolates the
# velocity linearly from the last two real ones, v_hat_k = v_j + (t_k - t_j) (v_j - v_i) / (t_j - t_i)
# (order 1). Which steps to skip is decided once: the first call of a `FastFlowSampler` is a full Euler run on
# other noise (the **calibration run**), which records what every possible skip would cost; then a dynamic program
# picks the cheapest skip set. By default (`tolerance=1`) it takes the fewest calls whose skips may add at most
# as much error as Euler-50 itself makes; `calls=K` fixes the budget instead. For contrast, plain Euler with the
# same number of calls. Under each grid: the per-pixel distance from Euler-50's images.

# %%
euler50, nfe50 = run(ff.EulerSampler(50))
fast = ff.FastFlowSampler(50)                    # the default: optimal plan, tolerance 1
fast.sample(velocity, calib, **extras)           # calibration run: full Euler-50 on other noise
fast_x, fast_nfe = run(fast)
fast16 = ff.FastFlowSampler(50, calls=16)        # the budget given explicitly instead
fast16.sample(velocity, calib, **extras)
fast16_x, fast16_nfe = run(fast16)
euler_k, euler_k_nfe = run(ff.EulerSampler(fast_nfe))
panels = [("Euler-50", euler50, nfe50), ("FastFlow (default plan)", fast_x, fast_nfe),
          (f"Euler-{fast_nfe}", euler_k, euler_k_nfe)]

fig, axes = plt.subplots(2, len(panels), figsize=(12, 6.4), layout="constrained")
for col, (name, images, calls) in enumerate(panels):
    top, bottom = axes[0, col], axes[1, col]
    top.imshow(make_grid((images + 1) / 2, nrow=5, padding=2, pad_value=1.0).permute(1, 2, 0))
    top.set_title(f"{name}: {calls} model calls", fontsize=10)
    diff = make_grid((images - euler50).abs(), nrow=5, padding=2, pad_value=0.0)[0]
    im = bottom.imshow(diff, cmap="magma", vmin=0, vmax=0.2)
    bottom.set_title(f"|difference| to Euler-50: {db(images, euler50):.1f} dB", fontsize=10)
    for ax in (top, bottom):
        ax.axis("off")
axes[1, 0].clear(); axes[1, 0].axis("off")
axes[1, 0].text(0.5, 0.5, "below each sampler:\n|its image - Euler-50's|\nper pixel", ha="center", va="center")
fig.colorbar(im, ax=axes[1].tolist(), shrink=0.8, label="|pixel difference| (images in [-1, 1])")
for name, images, calls in panels + [("FastFlow, calls=16", fast16_x, fast16_nfe)]:
    print(f"{name:24s} {calls:3d} model calls, PSNR against Euler-50: "
          + ("reference" if name == "Euler-50" else f"{db(images, euler50):.1f} dB"))
print(f"the default plan chose K = {fast.calls_target} calls; calls=16 plays the same skip set: "
      f"{fast16.schedule() == fast.schedule()}")
assert nfe50 == 50 and fast16_nfe == 16
assert db(fast16_x, euler50) > 40
assert db(fast_x, euler50) > db(euler_k, euler50) + 5       # far closer to Euler-50 than Euler at equal calls

# %% [markdown]
# ## 2. Where extrapolation is hard: the ends of the trajectory
#
# The calibration run recorded, at every real step k, the relative error that each possible extrapolation would
# have made, e = ||v_hat - v|| / ||v|| over the batch (`sampler.table`, see `fastflow/errors.py`). For order 1
# the table is indexed table[k, g, i]: newest real step k, older node g steps before it, target i steps after
# it. So table[k, 1, 1] is the error of the straight line through v_{k-1} and v_k, evaluated at step k + 1:
# the one-step-ahead error at t_{k+1}.
#
# A linear extrapolation is off by about (dt^2 / 2) |d^2 v / dt^2|: it is only as good as the velocity along
# the path is straight in t. Rectified-flow paths are nearly straight in the middle, so there the velocity is
# nearly constant and the error tiny. At both ends it bends sharply: near t = 0 the sample is pure noise and
# the model's guess of the final digit (hence of data - noise) changes fast as the first structure appears;
# near t = 1 the model switches from "the direction to the digit" to "the digit is already here" (section 4).
# Red: the steps the default plan skips, at the cost it actually pays for each (its table entry, with the run's
# own nodes and lead).

# %%
T, R = 50, fast.max_run
t_target = np.arange(2, T) / T                                # steps 2..49: t_{k+1} for k = 1..48
one_step = fast.table[1:T - 1, 1, 1].numpy()                   # table[k, 1, 1], k = 1..48
skip = fast.schedule()
real = sorted(set(range(T)) - set(skip))
def skip_cost(j):
    """Table entry a skipped step j uses: newest real step k before j, gap g back to the one before k."""
    k = max(r for r in real if r < j)
    g = k - max(r for r in real if r < k)
    return fast.table[k, g, j - k].item()
runs = ff.policy.runs_after(T, skip)                          # real step k -> number of skips after it

fig, ax = plt.subplots(figsize=(8, 3.8))
ax.semilogy(t_target, one_step, "o-", ms=3, label="one step ahead, table[k, 1, 1] (at t_{k+1})")
ax.semilogy([j / T for j in skip], [skip_cost(j) for j in skip], "rx", ms=6,
            label=f"the {len(skip)} steps the default plan skips, at their cost")
ax.set_xlabel("t (0 noise, 1 data)"); ax.set_ylabel("relative error of the extrapolated velocity")
ax.set_title("order-1 extrapolation error of the DiT's velocity along Euler-50")
ax.legend(fontsize=8, loc="upper center")
middle = (t_target >= 0.2) & (t_target <= 0.8)
print(f"one-step error at the first predictable step (t = {t_target[0]:.2f}): {one_step[0]:.2e}; "
      f"at the last (t = {t_target[-1]:.2f}): {one_step[-1]:.2e}")
print(f"in the middle, t in [0.2, 0.8]: {one_step[middle].min():.1e} to {one_step[middle].max():.1e}, "
      f"median {np.median(one_step[middle]):.1e}: the ends are "
      f"{min(one_step[0], one_step[-1]) / np.median(one_step[middle]):.0f} to "
      f"{max(one_step[0], one_step[-1]) / np.median(one_step[middle]):.0f} times the middle's median")
print("runs of skips (real step: length):", " ".join(f"{k}:{m}" for k, m in sorted(runs.items()) if m))
ends = [m for k, m in runs.items() if k / T < 0.15 or k / T > 0.85]
mid = [m for k, m in runs.items() if 0.15 <= k / T <= 0.85]
print(f"mean run of skips after a real step: near the ends {np.mean(ends):.2f}, in the middle {np.mean(mid):.2f}")
edge = min(one_step[0], one_step[-1])
assert one_step[middle].max() < edge / 5 and np.median(one_step[middle]) < edge / 10  # the middle is far easier
assert np.mean(ends) < np.mean(mid)                                      # the plan skips less where it is hard

# %% [markdown]
# At 16 calls the plan must skip 34 of 50 steps, so it skips everywhere: in shorter runs near the ends, where a
# guess costs 16 to 31 times the middle's median, and in longer runs in the middle, where the error grows with
# the lead (the red crosses above the curve are the second and third steps of a run). Steps 0 and 1 are always
# real: an order-1 guess needs two real velocities. The error is not a smooth bathtub: in the middle it wanders
# between 4e-3 and 1.3e-2 from step to step.
#
# ## 3. Quality against model calls, against two references
#
# PSNR against Euler-50 measures how well a sampler reproduces the Euler-50 run; but Euler-50 is itself a
# first-order approximation, O(1/T) from the exact solution of the ODE the model defines. For that solution we
# use Heun with 200 steps (second order, last step by Euler, see section 4) and check that it has converged by
# comparing it with Heun-100. Then, at K model calls: Euler-K, second-order Adams-Bashforth AB2-K
# (x_{k+1} = x_k + dt (3/2 v_k - 1/2 v_{k-1})), FastFlow's plan for K calls on the Euler base, and on the AB2
# base (`base="ab2"`: the same skips, the velocities fed to AB2's update instead of Euler's). A plan for any K
# comes from one calibration table (`ff.plan_skips`, what `FastFlowSampler(50, calls=K)` plays), so each base
# needs one calibration run, on the other noise.

# %%
converged = ff.HeunSampler(200, correct_last=False).sample(velocity, x0, trace=True, **extras)
exact = converged.x.clamp(-1, 1)                  # the states x_0..x_200 are kept for section 4
heun100, _ = run(ff.HeunSampler(100, correct_last=False))
rel = lambda a, b: ((a - b).norm() / b.norm()).item()
print(f"Heun-100 is {db(heun100, exact):.1f} dB ({rel(heun100, exact):.1e} relative L2) from Heun-200; "
      f"Euler-50 is {db(euler50, exact):.1f} dB from Heun-200")

fast_ab2 = ff.FastFlowSampler(50, calls=16, base="ab2")
fast_ab2.sample(velocity, calib, **extras)                  # calibration: a full AB2-50 run on the other noise
assert ff.plan_skips(fast.table, T, 16, 1, R) == fast.schedule()   # the plan FastFlowSampler(50, calls=16) plays
budgets = [10, 12, 16, 20, 25]
samplers = {
    "Euler-K": lambda K: ff.EulerSampler(K),
    "AB2-K": lambda K: ff.AdamsBashforthSampler(K, order=2),
    "FastFlow plan": lambda K: ff.ExtrapolatedEulerSampler(T, ff.plan_skips(fast.table, T, K, 1, R)),
    "FastFlow plan, AB2 base": lambda K: ff.ExtrapolatedEulerSampler(
        T, ff.plan_skips(fast_ab2.table, T, K, 1, R), base="ab2"),
}
scores = {name: [] for name in samplers}                     # (PSNR vs Euler-50, PSNR vs exact) per K
for K in budgets:
    for name, make in samplers.items():
        images, calls = run(make(K))
        assert calls == K
        scores[name].append((db(images, euler50), db(images, exact)))

def show_scores(budgets, scores, euler50_db, title=None, exact_name="Heun-200"):
    """Both panels (PSNR against Euler-50, against the exact solution) and the table of ``scores``."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for name, vals in scores.items():
        for j, ax in enumerate(axes):
            ax.plot(budgets, [v[j] for v in vals], "o-", label=name)
    axes[1].axhline(euler50_db, color="gray", ls=":", lw=1, label="Euler-50 (50 calls)")
    for ax, what in zip(axes, ("Euler-50", f"the exact solution ({exact_name})")):
        ax.set_xlabel("model calls K"); ax.set_ylabel(f"PSNR against {what}, dB"); ax.legend(fontsize=8)
        if title:
            ax.set_title(title, fontsize=10)
    print(f"{'K':>3s} " + " ".join(f"{name:>24s}" for name in scores) + "   (dB against Euler-50 / against exact)")
    for i, K in enumerate(budgets):
        print(f"{K:3d} " + " ".join(f"{scores[name][i][0]:.1f} / {scores[name][i][1]:.1f}".rjust(24) for name in scores))

show_scores(budgets, scores, db(euler50, exact))
for i, K in enumerate(budgets):
    assert scores["FastFlow plan"][i][0] > scores["Euler-K"][i][0]        # closer to Euler-50 at every K
at16 = {name: vals[budgets.index(16)][1] for name, vals in scores.items()}
assert max(at16, key=at16.get) == "FastFlow plan, AB2 base"                # closest to the exact solution at K = 16
for i, K in enumerate(budgets):
    best = max(scores, key=lambda name: scores[name][i][1])
    assert K < 12 or best == "FastFlow plan, AB2 base"                     # ... and at every K >= 12
assert at16["FastFlow plan, AB2 base"] > db(euler50, exact)                # 16 calls beat Euler-50's 50
assert db(heun100, exact) > max(v[1] for vals in scores.values() for v in vals) + 10

# %% [markdown]
# Against Euler-50 the Euler-base plan wins at every budget, by 5 to 15 dB over Euler-K: it is built to follow
# Euler-50, and from 16 calls on it is closer to Euler-50 than Euler-50 is to the exact solution. Against the
# exact solution that is also its limit: it levels off near Euler-50's own distance (dotted line). AB2 is second
# order, and the plan on the AB2 base inherits that: from 12 calls on it is the closest of the four to the exact
# solution, and at 16 calls closer than Euler-50 with 50. At 10 calls the Euler-base plan is still marginally
# ahead of it (36.3 against 35.8 dB): with 10 calls the AB2 base has to skip where its guesses are poor.
#
# ### The same comparison on a harder dataset: the Fashion-MNIST DiT
#
# The second shipped model (`checkpoints/dit_fashion.pt`, the same architecture trained on the 60,000
# Fashion-MNIST training images, `checkpoints/FASHION_MODEL_CARD.md`) is sampled at its best guidance scale, 2,
# from the first ten of the same noises and labels (one garment of each class). Beside the four samplers above:
# the budget choice `ff.choice.BudgetSampler` (`make_sampler("best", calls=K)`), which replays every K-call
# candidate it can build (uniform and optimised grids for Euler, AB2 and UniPC, skip plans on three bases) on the
# calibration noise, keeps the one closest to the exact flow and tunes its time grid by more replays.

# %%
f_model, f_config, _ = load_model("checkpoints/dit_fashion.pt", device=device)
f_x0, f_calib = x0[:10], calib[:10]                     # one garment of each class, to keep the cell short
f_extras = dict(y=labels[:10], cfg_scale=2.0)
def f_run(sampler, noise=f_x0):
    out = sampler.sample(f_model.forward_with_cfg, noise, **f_extras)
    return out.x.clamp(-1, 1), out.nfe
f_euler50, _ = f_run(ff.EulerSampler(50))
f_exact, _ = f_run(ff.HeunSampler(100, correct_last=False))
f_fast = {base: ff.FastFlowSampler(50, base=base) for base in ("euler", "ab2")}
for s in f_fast.values():
    s.calibrate(f_model.forward_with_cfg, f_calib, **f_extras)       # one calibration run per base, other noise
def f_choice(K):
    s = ff.make_sampler("best", steps=50, calls=K)
    s.calibrate(f_model.forward_with_cfg, f_calib, **f_extras)
    return s
f_samplers = {
    "Euler-K": lambda K: ff.EulerSampler(K),
    "AB2-K": lambda K: ff.AdamsBashforthSampler(K, order=2),
    "FastFlow plan": lambda K: ff.ExtrapolatedEulerSampler(T, ff.plan_skips(f_fast["euler"].table, T, K, 1, R)),
    "FastFlow plan, AB2 base": lambda K: ff.ExtrapolatedEulerSampler(
        T, ff.plan_skips(f_fast["ab2"].table, T, K, 1, R), base="ab2"),
    "best (budget choice)": f_choice,
}
f_budgets = [10, 16]
f_scores = {name: [] for name in f_samplers}
for K in f_budgets:
    for name, make in f_samplers.items():
        images, calls = f_run(make(K))
        assert calls == K
        f_scores[name].append((db(images, f_euler50), db(images, f_exact)))
print(f"Fashion-MNIST DiT, guidance 2: Euler-50 is {db(f_euler50, f_exact):.1f} dB from Heun-100")
show_scores(f_budgets, f_scores, db(f_euler50, f_exact), "Fashion-MNIST DiT, guidance 2", "Heun-100")
for i, K in enumerate(f_budgets):
    assert f_scores["FastFlow plan"][i][0] > f_scores["Euler-K"][i][0]     # closer to Euler-50 at every K
    best_exact = max(vals[i][1] for vals in f_scores.values())
    assert f_scores["best (budget choice)"][i][1] >= best_exact - 0.1        # the choice: closest to the exact flow

# %% [markdown]
# The picture of the MNIST model carries over to the harder dataset: the Euler-base plan reproduces Euler-50 best
# from 16 calls, the AB2 base approaches the exact flow, and the budget choice, which replays all of them and
# more on the calibration noise, lands closest to the exact flow at both budgets. Against data,
# `benchmarks/quality.py` measures the same samplers by FD and accuracy (`docs/results.md`, "Quality against
# data").
#
# ## 4. The model's jump at t = 1, and what it does to Heun and FlowTurbo
#
# Along a path the velocity is data - noise. At t = 1 exactly, the input is the clean digit, from which the noise
# cannot be recovered, so the best prediction of data - noise is x_1 - E[noise] = x_1: a different vector. A
# moment earlier, the little noise left in x_t is still identifiable (the digit is sharp, the noise is not), so the
# model predicts data - noise. In between, within the last few hundredths of t, the learned velocity swings from
# one to the other. Below: the RMS of v(x_t, t) along the converged path for t from 0.8 to 1, and how far v has
# moved from its value at t = 0.8.

# %%
ks = list(range(160, 190, 4)) + list(range(190, 201))        # steps of the Heun-200 path: t = k / 200
ts = np.array(ks) / 200
with torch.no_grad():
    vs = [velocity(x=converged.trace[k], t=torch.full((n,), k / 200), **extras) for k in ks]
rms = lambda a: a.pow(2).mean().sqrt().item()
norm = np.array([rms(v) for v in vs])
moved = np.array([rms(v - vs[0]) for v in vs])
fig, ax = plt.subplots(figsize=(7, 3.6))
ax.plot(ts, norm, "o-", ms=3, label="RMS of v(x_t, t)")
ax.plot(ts, moved, "s-", ms=3, label="RMS of v(x_t, t) - v(x_0.8, 0.8)")
ax.axhline(rms(exact - x0), color="gray", ls=":", lw=1, label="RMS of data - noise (x_1 - x_0)")
ax.axvline(1 - 1 / 25, color="k", ls="--", lw=0.8)
ax.text(1 - 1 / 25 - 0.002, 0.95, "t = 1 - 1/25: the last step\nof a 25-step sampler ", fontsize=8, ha="right")
ax.set_xlabel("t along the converged path"); ax.set_ylabel("RMS per pixel"); ax.legend(fontsize=8, loc="center left")
ax.set_title("the learned velocity in the last fifth of the trajectory")
print("t:      " + " ".join(f"{t:6.3f}" for t in ts))
print("|v|:    " + " ".join(f"{v:6.3f}" for v in norm))
print("moved:  " + " ".join(f"{v:6.3f}" for v in moved))
i97 = ks.index(194)                                          # t = 0.97
drift, jump = moved[i97], rms(vs[-1] - vs[i97])
print(f"v moves {drift:.2f} RMS from t = 0.8 to 0.97, then {jump:.2f} RMS from t = 0.97 to 1; "
      f"|v| falls from {norm[i97]:.2f} to {norm[-1]:.2f}")
assert jump > 2 * drift                                      # most of the change is in the last 0.03 of t
assert norm[-1] < 0.5 * norm[:i97 + 1].min()

# %% [markdown]
# Euler and Adams-Bashforth evaluate the model at t_0 .. t_{T-1} only, never at t = 1. Over the last step,
# from 1 - dt to 1, the exact solution gains dt times the path's velocity plus the integral of the swing, which
# sits in the last 0.03 or so of t whatever dt is. Two ways to take that step:
#
# * Heun's trapezoid, x_T = x_{T-1} + dt/2 (v(x_{T-1}, 1 - dt) + v(x~, 1)), gives the velocity at t = 1 half the
#   weight of the whole step: right when dt is about the width of the swing, far too much when dt is much wider
#   (an error of about dt/2 times the 0.9 RMS gap).
# * An Euler last step (`correct_last=False`, as EDM does; one call fewer) ignores the swing: an error of about its
#   integral, which does not shrink with dt once dt is wider than the swing.
#
# So which is better depends on the step. Below, Heun-T both ways, and FlowTurbo H1P9 (one Heun block, then
# nine pseudo-corrector blocks that reuse the previous block's second velocity; its last block has the same
# choice), against the converged solution (left) and against Euler-50 (right), which never sees the swing either.

# %%
heun_T = [5, 10, 25, 50]
heun = {flag: [run(ff.HeunSampler(T_, correct_last=flag)) for T_ in heun_T] for flag in (True, False)}
turbo = {flag: run(ff.FlowTurboSampler(heun=1, pseudo=9, correct_last=flag)) for flag in (True, False)}
label = {True: "corrector at t = 1", False: "Euler last step"}

fig, axes = plt.subplots(1, 2, figsize=(12, 4))
for ax, ref in zip(axes, (exact, euler50)):
    for flag, style in ((True, "o-"), (False, "s-")):
        ax.plot([c for _, c in heun[flag]], [db(x, ref) for x, _ in heun[flag]], style, label=f"Heun-T, {label[flag]}")
    for flag, style in ((True, "*"), (False, "P")):
        ax.plot([turbo[flag][1]], [db(turbo[flag][0], ref)], style, ms=11, label=f"FlowTurbo H1P9, {label[flag]}")
    j = 1 if ref is exact else 0
    for name, color in (("Euler-K", "gray"), ("AB2-K", "k")):
        ax.plot(budgets, [v[j] for v in scores[name]], ":", color=color, lw=1, label=f"{name} (section 3)")
    ax.set_xscale("log"); ax.set_xticks([10, 20, 50, 100], ["10", "20", "50", "100"])
    ax.set_xlabel("model calls"); ax.legend(fontsize=7)
axes[0].plot([50], [db(euler50, exact)], "kx", ms=8, label="Euler-50")
axes[0].legend(fontsize=7)
axes[0].set_ylabel("PSNR against the exact solution, dB"); axes[1].set_ylabel("PSNR against Euler-50, dB")
for flag in (True, False):
    print(f"Heun-T, {label[flag]:18s}: " + ", ".join(
        f"{c} calls {db(x, exact):.1f} / {db(x, euler50):.1f}" for x, c in heun[flag])
        + "   (dB against exact / against Euler-50)")
for flag in (True, False):
    x, c = turbo[flag]
    print(f"FlowTurbo H1P9, {label[flag]:18s}: {c} calls {db(x, exact):.1f} / {db(x, euler50):.1f}")
print(f"for comparison at 10 calls: Euler-10 {scores['Euler-K'][0][1]:.1f} / {scores['Euler-K'][0][0]:.1f}, "
      f"AB2-10 {scores['AB2-K'][0][1]:.1f} / {scores['AB2-K'][0][0]:.1f}")
gain = [db(off, exact) - db(on, exact) for (on, _), (off, _) in zip(heun[True], heun[False])]
print("Euler last step minus corrector at t = 1, against exact: "
      + ", ".join(f"Heun-{T_} {g:+.1f} dB" for T_, g in zip(heun_T, gain)))
assert min(gain[:2]) > 2 and gain[-1] < -5       # coarse steps: skip t = 1; Heun-50: the corrector resolves the swing
assert db(turbo[False][0], exact) > db(turbo[True][0], exact) + 2
for (on, _), (off, _) in zip(heun[True], heun[False]):
    assert db(off, euler50) > db(on, euler50)       # against Euler-50, which never sees the swing, always

# %% [markdown]
# What the jump does, measured: with coarse steps (up to about 20 calls) the evaluation at t = 1 costs Heun 2.7 to
# 3 dB against the exact solution and FlowTurbo 2.8 dB, so end with an Euler step there (FlowTurbo H1P9 then ties
# AB2-10). At 50 calls the two are level, and at 100 calls (dt = 0.02, about the width of the swing) the corrector
# at t = 1 is 9 dB *closer* to the exact solution: the Euler last step ignores the swing, an error that no longer
# shrinks with dt (Heun with an Euler last step gains only 5 dB from 49 to 99 calls). Against Euler-50 the Euler
# last step always looks better, because Euler-50 ignores the swing the same way; that is the comparison in the
# README's benchmark table. The swing is part of the ODE the model defines, but it is an artefact of training at
# t = 1 (where the target is unidentifiable), worth about 0.9 RMS of velocity over the last 0.03 of t: whether a
# sampler should integrate it is a choice about the model, not about the sampler's accuracy.
#
# A sense of scale for all these decibels: Euler-16 in section 1 is 36 dB from Euler-50, and its digits already
# look the same as Euler-50's; the differences only show in the difference maps. PSNR here measures how faithfully
# a sampler solves the model's ODE, not how good the digits are (the README's benchmark has classifier accuracy and
# a Frechet distance for that, and there the samplers from about 10 calls on are level).

# %% [markdown]
# ## 7. Editing: the same field along other paths
#
# An edit integrates the model's velocity along another path than noise to data (`fastflow.editing`): **SDEdit**
# noises a source to level t0, x_t0 = (1 - t0) z + t0 x_src, and generates from t0 to 1 under the target class;
# **inversion** integrates the source back from t = 1 to 0 under its own class and regenerates from the noise it
# reaches under the target; **FlowEdit** integrates, from the source itself, the difference of the target's and
# the source's velocities at coupled noisings of the source (two calls per step), here from t_start = 0.1 with one
# noise draw shared by all steps (`noise="shared"`; the paper draws fresh noise per step, see below). FastFlow runs on each of these
# paths unchanged: its calibration run is the first edit of that configuration (here on other sources) and its
# plan is made for that path's own error table. Sources are eight of the model's own Euler-50 digits (0..7), so the
# notebook needs no data files; the target class is 8, with guidance 2 on the target.

# %%
from fastflow import editing, grids

src, src_y = euler50[:8], labels[:8]
cal_src, cal_y = euler50[10:18], labels[10:18]        # FastFlow calibrates on other sources
tgt = dict(y=torch.full_like(src_y, 8), cfg_scale=2.0)
z = make_noise(8, shape, seed=5).to(device)

def do_edit(method, make, sources, y, target):
    """One edit of ``sources`` (labels ``y``) into ``target`` with samplers from ``make(grid)``."""
    own = dict(y=y, cfg_scale=1.0)
    if method == "invert":
        back = editing.invert(make(grids.interval(50, 1.0, 0.0)), velocity, sources, **own)
        out = make(grids.interval(50)).sample(velocity, back.x, **target)
        return out.x.clamp(-1, 1), back.nfe + out.nfe
    if method == "sdedit":
        out = editing.sdedit(make(grids.interval(50, 0.3)), velocity, sources, 0.3, z[:len(sources)], **target)
        return out.x.clamp(-1, 1), out.nfe
    noise = "fresh" if method == "flowedit-fresh" else "shared"
    out = editing.flowedit(make(grids.interval(50, 0.1)), velocity, sources, own, target, 0.1, noise=noise)
    return out.x.clamp(-1, 1), out.info["model_calls"]

edits, paths = {}, {}
for method in ("invert", "sdedit", "flowedit", "flowedit-fresh"):
    full, full_calls = do_edit(method, lambda g: ff.EulerSampler(times=g), src, src_y, tgt)
    samplers = []
    def fastflow(g):
        samplers.append(ff.FastFlowSampler(times=g, calls=16))
        return samplers[-1]
    # a FastFlow sampler per pass, calibrated on the other sources' edit, then reused on ours
    cal_target = dict(y=torch.full_like(cal_y, 8), cfg_scale=2.0)
    do_edit(method, fastflow, cal_src, cal_y, cal_target)
    made = iter(samplers)
    fast, fast_calls = do_edit(method, lambda g: next(made), src, src_y, tgt)
    euler16, _ = do_edit(method, lambda g: ff.EulerSampler(times=grids.interval(16, float(g[0]), float(g[-1]))),
                         src, src_y, tgt)
    edits[method] = (full, fast, euler16)
    paths[method] = samplers
    print(f"{method:14s} full {full_calls:3d} calls, FastFlow {fast_calls:2d} calls: {db(fast, full):.1f} dB from the "
          f"full edit (Euler at 16 per pass: {db(euler16, full):.1f} dB); preservation {db(full, src):.1f} dB")
    assert fast_calls * 50 == full_calls * 16              # 16 calls per pass, per model call of the full edit
    assert db(fast, full) > db(euler16, full)              # the plan beats Euler at equal calls on every path
# a fresh draw per step makes FlowEdit's field jump from step to step: no extrapolation follows it
assert db(edits["flowedit"][1], edits["flowedit"][0]) > db(edits["flowedit-fresh"][1], edits["flowedit-fresh"][0]) + 10

back, _ = do_edit("invert", lambda g: ff.EulerSampler(times=g), src, src_y, dict(y=src_y, cfg_scale=1.0))
print(f"inversion, then regeneration as the source's own class: {db(back, src):.1f} dB from the source")
assert db(back, src) > 35

fig, axes = plt.subplots(1, 2, figsize=(13, 4.2), gridspec_kw={"width_ratios": [1.5, 1]})
rows = [src] + [im for m in ("invert", "sdedit", "flowedit") for im in edits[m][:2]]
axes[0].imshow(make_grid(torch.cat(rows), nrow=8, padding=1, pad_value=1.0)[0].cpu() * 0.5 + 0.5, cmap="gray")
axes[0].set_yticks([15 + 29 * i for i in range(7)], ["source", "invert: 100 calls", "invert: FastFlow 32",
                                                        "SDEdit t0=0.3: 50", "SDEdit: FastFlow 16",
                                                        "FlowEdit: 100", "FlowEdit: FastFlow 32"], fontsize=8)
axes[0].set_xticks([])
axes[0].set_title("edits into an 8: full steps and FastFlow at 16 calls per pass")
gen = ff.FastFlowSampler(50, calls=16)
gen.calibrate(velocity, calib, **extras)
for name, s in [("generation", gen), ("inversion (to noise)", paths["invert"][0]),
                ("SDEdit from t0 = 0.3", paths["sdedit"][0]), ("FlowEdit, shared noise", paths["flowedit"][0]),
                ("FlowEdit, fresh noise per step", paths["flowedit-fresh"][0])]:
    e = [float(s.table[k, 1, 1]) for k in range(1, s.steps - 1)]
    axes[1].semilogy(s.times[1:s.steps - 1].numpy(), e, label=name)
axes[1].set(xlabel="t (0 noise, 1 data)", ylabel="one-step extrapolation error", title="where skipping is cheap, per path")
axes[1].legend(fontsize=8)
plt.tight_layout()
plt.show()

# %% [markdown]
# Each path has its own error table: the inversion runs the generation path backwards, so its cheap steps are the
# same ones seen from the other end; SDEdit only sees the part of the generation path after t0. FlowEdit's field is
# a *difference* of two velocities at noised copies of the source: with one noise draw for the whole run it is
# smooth in t and FastFlow follows it; with the paper's fresh draw per step it jumps from step to step, its
# one-step errors are near 1 everywhere, and no skip can predict the next draw. In every case the plan made on the
# edit's own path beats Euler with the same number of calls per pass.

# %% [markdown]
# ## 8. Video: the same sampler on clips
#
# `checkpoints/video_dit.pt` is a video DiT of the project (`checkpoints/VIDEO_MODEL_CARD.md`): clips of 8 frames
# of 32 x 32 with one digit moving at constant speed and bouncing off the walls, the rule its Moving-MNIST-style
# training clips were made by. Its velocity takes clips (N, F, C, H, W), so every sampler of the library runs on it
# unchanged. Below, four clips (digits 0 to 3, guidance 2) from Euler-50 and from FastFlow's plan at 16 calls on
# the same noise, as frame strips; the red line is each frame's centroid track, the motion check of `models/video_eval.py`
# (RMS distance of that track from the best constant-velocity-with-bounces motion).

# %%
from models.video_eval import centroids, digit_room, motion_residual, psnr_per_frame

video, vconfig, _ = load_model("checkpoints/video_dit.pt", device=device, kind="video")
vshape = (vconfig.frames, vconfig.in_channels, vconfig.image_size, vconfig.image_size)
vz, vy = make_noise(4, vshape, seed=0).to(device), torch.arange(4, device=device)
vextras = dict(y=vy, cfg_scale=2.0)
vff = ff.FastFlowSampler(50, calls=16)
vff.calibrate(video.forward_with_cfg, make_noise(8, vshape, seed=1).to(device), y=torch.arange(8) % 10, cfg_scale=2.0)
clips = {}
for name, s in [("Euler-50", ff.EulerSampler(50)), ("FastFlow", vff)]:
    out = s.sample(video.forward_with_cfg, vz, **vextras)
    clips[name] = (out.x.clamp(-1, 1), out.nfe)
(ref, ref_calls), (fast, fast_calls) = clips["Euler-50"], clips["FastFlow"]
room = digit_room(vconfig.image_size)
motion = {name: motion_residual(centroids(c), room) for name, (c, _) in clips.items()}
per_frame = psnr_per_frame(fast, ref).mean(0)
print(f"FastFlow: {fast_calls:g} calls against {ref_calls:g}, {psnr_per_frame(fast, ref).mean():.1f} dB from Euler-50 "
      f"(frame 1: {per_frame[0]:.1f} dB, frame 8: {per_frame[-1]:.1f} dB)")
print("motion residual (px), Euler-50:", [round(float(m), 2) for m in motion["Euler-50"]],
      " FastFlow:", [round(float(m), 2) for m in motion["FastFlow"]])
assert fast_calls == 16 and ref_calls == 50                  # 3.1x fewer calls
assert psnr_per_frame(fast, ref).mean() > 40                 # and the same clips
assert abs(motion["FastFlow"].mean() / motion["Euler-50"].mean() - 1) < 0.1   # that move alike (mean within 10%)

fig, axes = plt.subplots(8, 1, figsize=(10, 11))
for i in range(4):
    for j, name in enumerate(clips):
        ax, c = axes[2 * i + j], clips[name][0][i]
        strip = torch.cat(list(c[:, 0].cpu()), dim=1)           # (H, F W): the frames side by side
        ax.imshow(strip.numpy(), cmap="gray", vmin=-1, vmax=1)
        track = centroids(c[None])[0].cpu()
        W = vconfig.image_size
        ax.plot(track[:, 1] + W * torch.arange(vconfig.frames), track[:, 0], "r.-", lw=1, ms=4)
        ax.set_axis_off()
        ax.set_title(f"digit {i}, {name} ({clips[name][1]:g} calls): motion residual {motion[name][i]:.2f} px",
                     fontsize=8)
plt.tight_layout()
plt.show()

# %% [markdown]
# FastFlow's clips are Euler-50's to the eye, at 16 calls instead of 50; the error grows little along the clip
# (about 2 dB from the first frame to the last), and the tracks move alike: residuals a few hundredths of a pixel
# apart on three clips and 0.3 px apart on digit 2, the clip whose own motion is least regular.
# What neither can hide is the model: a small video DiT trained for 86 minutes on two CPU cores draws digits that
# the project's classifier reads as the requested class in about 29% of frames, and its tracks wobble about 3x as
# much as those of real clips (0.32 px, the rounding of positions to whole pixels). `benchmarks/video.py` measures
# all of this on 32 clips against Euler and AB2 at equal calls (`docs/results.md`).
