"""The dimensionless extrapolation error, and the error table of a full run.

Error of an estimate ``v_hat`` of a real velocity ``v`` (both (batch, ...)), one number per
batch:

    e = ||v_hat - v|| / ||v||          (norms over every element of the batch)

It is the relative RMS error: unlike an MSE it does not change when the model's output is
rescaled, so one tolerance means the same on a 2-D toy flow and on an image model.

**The error table** of a full Euler run (every step real) on the grid t_0 < ... < t_{T-1}
records what every possible skip would have cost. For extrapolation order p and runs of at
most R skips, its shape is ``(T,) + (R + 2,) * p + (R + 2,)`` and

    table[k, g_1, ..., g_p, i] = e(v_hat_{k+i}, v_{k+i})

where v_hat_{k+i} is the order-p polynomial through the real steps k, k - g_1,
k - g_1 - g_2, ..., k - g_1 - ... - g_p, evaluated at t_{k+i}. So k is the newest real step,
g_1..g_p are the gaps (in steps) back to the older nodes and i is the lead (steps ahead of
k). Index 0 of a gap axis is unused, lead 0 has error 0 (no extrapolation); leads 1..R are
the steps a run of skips can cover and lead R + 1 is the real step that ends the longest
run. Entries whose nodes fall before step 0 or whose target falls after step T - 1 are
+inf. Time convention: t = 0 is noise, t = 1 is data.

On an uneven grid the recorder is given weights w_j = T (t_{j+1} - t_j): every error whose
target is step j, and Euler's eta_j, is multiplied by w_j, so that a sum of table entries is
(T times) the deviation bound's sum_j dt_j |v_hat_j - v_j| / |v_j|. On the uniform grid w = 1.
"""
from __future__ import annotations

import itertools
from typing import Optional, Sequence

import torch

__all__ = ["relative_error", "lagrange_weights", "table_shape", "TableRecorder", "error_table"]


def relative_error(v_hat: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """||v_hat - v|| / ||v|| over the whole batch, as a 0-d tensor on v's device (no host sync).

    Raises:
        ValueError: if the shapes differ.
    """
    if v_hat.shape != v.shape:
        raise ValueError(f"shapes differ: {tuple(v_hat.shape)} and {tuple(v.shape)}")
    return (v_hat - v).norm() / v.norm().clamp_min(torch.finfo(v.dtype).tiny)


def lagrange_weights(nodes: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Weights c_r with sum_r c_r f(nodes_r) = the interpolating polynomial of f at t.

    c_r = prod_{s != r} (t - nodes_s) / (nodes_r - nodes_s). Vectorised over a leading axis:
    ``nodes`` (E, p + 1) distinct times per row, ``t`` (E,); returns (E, p + 1), float64.
    Equal to ``newton_extrapolate`` up to rounding (same polynomial).

    Raises:
        Nothing of its own (repeated nodes in a row give non-finite weights, not an error).
    """
    nodes, t = nodes.to(torch.float64), t.to(torch.float64)
    diff = nodes[:, :, None] - nodes[:, None, :]                      # (E, p+1, p+1): n_r - n_s
    eye = torch.eye(nodes.shape[1], dtype=torch.bool)
    num = torch.where(eye, 1.0, t[:, None, None] - nodes[:, None, :])  # (t - n_s), 1 on the diagonal
    den = torch.where(eye, 1.0, diff)
    return (num / den).prod(dim=2)


def table_shape(steps: int, order: int, max_run: int) -> tuple[int, ...]:
    """Shape of the error table: (T, R + 2, ..., R + 2), with p gap axes and one lead axis.

    Raises:
        Nothing of its own.
    """
    return (steps,) + (max_run + 2,) * order + (max_run + 2,)


class TableRecorder:
    """Builds the error table of one full run, one real step at a time, in memory that scales with
    the batch, not with the table.

    ``add(j, v_j)`` is called for j = 0, 1, ..., T - 1 in order. Each velocity is copied into a
    sliding buffer that keeps only the last W = p (R + 1) + R + 2 real velocities (the oldest
    node any entry can use) plus ``slack`` rows; the errors of the entries targeting step j are
    computed from it in chunks of at most ``chunk`` entries of one lead, each a matrix product
    over the band of steps its nodes use, so the peak extra memory is about W + slack + chunk
    batch-sized tensors whatever the order and the number of entries (the whole residual of
    every entry, (entries x batch), is never held). The numbers stay on the device until
    ``read()`` reads them all at once.

    Args:
        times: the grid t_0..t_{T-1} of the steps (1-D, strictly monotone), or None to give each
            step's time to ``add`` (a loop whose length is not known in advance).
        order: p.
        max_run: R.
        weights: optional (T,) per-target weights w_j (see the module docstring); default 1.
        base: whose local error ``euler_errors`` estimates: ``"euler"`` or ``"ab2"``.
        chunk: table entries computed per matrix product (a few batch-sized buffers).

    Raises:
        ValueError: for ``weights`` of another length than ``times``.
    """

    def __init__(self, times: Optional[Sequence[float] | torch.Tensor], order: int, max_run: int,
                 weights: Optional[Sequence[float]] = None, base: str = "euler", chunk: int = 4, slack: int = 4):
        self.times = None if times is None else torch.as_tensor(times, dtype=torch.float64).tolist()
        self.order, self.max_run, self.base = order, max_run, base
        if weights is not None and self.times is not None and len(weights) != len(self.times):
            raise ValueError(f"need one weight per step, got {len(weights)} for {len(self.times)} steps")
        self.weights = None if weights is None or all(w == 1.0 for w in weights) else [float(w) for w in weights]
        self.span = order * (max_run + 1) + max_run + 1         # how far back a node can lie from a target
        self.rows = self.span + 1 if self.times is None else min(self.span + 1, len(self.times))
        self.chunk, self.slack = chunk, slack
        self.gaps = list(itertools.product(range(1, max_run + 2), repeat=order))
        self.seen: list[float] = []                             # times of the steps recorded so far
        self.buffer: Optional[torch.Tensor] = None              # (rows + slack, N): the last velocities
        self.start = 0                                          # step held by buffer row 0
        self.results: list = []                                 # per target: (index tensor, errors)
        self.euler_eta: list[torch.Tensor] = []

    @property
    def steps(self) -> int:
        """T: the steps of the grid, or the steps recorded so far when no grid was given."""
        return len(self.times) if self.times is not None else len(self.seen)

    def _row(self, j: int) -> torch.Tensor:
        return self.buffer[j - self.start]

    def _store(self, j: int, flat: torch.Tensor) -> None:
        if self.buffer is None:
            self.buffer = flat.new_empty((self.rows + self.slack, flat.numel()))
        if j - self.start == len(self.buffer):  # full: slide the newest rows - 1 to the front
            keep = self.rows - 1
            first = j - keep
            for i in range(keep):  # ascending, reading ahead of what it writes: safe in place
                self.buffer[i].copy_(self.buffer[first - self.start + i])
            self.start = first
        self.buffer[j - self.start].copy_(flat)

    def _entries(self, j: int):
        """(index (E, p + 2), weights (E, j - lo + 1), lo) of the entries targeting step j."""
        index, nodes = [], []
        for lead in range(1, self.max_run + 2):
            k = j - lead
            for g in self.gaps:
                n = [k - sum(g[:r]) for r in range(self.order + 1)]
                if n[-1] < 0:
                    continue
                index.append((k, *g, lead))
                nodes.append(n)
        if not index:
            return None
        nodes = torch.tensor(nodes)                                     # (E, p+1) step indices
        t = torch.tensor(self.seen, dtype=torch.float64)
        c = lagrange_weights(t[nodes], t[j].expand(len(nodes)))
        lo = max(j - self.span, 0)
        w = torch.zeros(len(nodes), j - lo + 1, dtype=torch.float64)    # over steps lo..j
        w.scatter_add_(1, nodes - lo, c)
        w[:, -1] -= 1.0                                                 # minus the real v_j
        return torch.tensor(index), w, lo

    def add(self, j: int, v: torch.Tensor, t: Optional[float] = None) -> None:
        """Record the real velocity v_j (batch, ...) at step j (steps must come in order 0, 1, ...);
        ``t`` is its time when the recorder was built without a grid.

        Raises:
            ValueError: for a step out of order (naming the expected one), a missing ``t``, or a
                step beyond the grid.
        """
        if j != len(self.seen):
            raise ValueError(f"steps must be recorded in order: expected step {len(self.seen)}, got {j}")
        if self.times is None:
            if t is None:
                raise ValueError("this recorder has no grid: give each step's time to add()")
            self.seen.append(float(t))
        else:
            if j >= len(self.times):
                raise ValueError(f"step {j} is beyond the grid's {len(self.times)} steps")
            self.seen.append(self.times[j])
        flat = v.reshape(-1)
        self._store(j, flat)
        flat = self._row(j)
        if j > 0:  # Euler's local error needs consecutive velocities (see euler_errors)
            if self.base == "ab2" and j >= 2:  # AB2's local error (5/12) dt^3 |v''|, in units of dt |v|
                eta = 5 * (flat - 2 * self._row(j - 1) + self._row(j - 2)).norm() / (12 * flat.norm().clamp_min(1e-30))
            else:  # Euler's (also AB2's first step)
                eta = (flat - self._row(j - 1)).norm() / (2 * flat.norm().clamp_min(1e-30))
            self.euler_eta.append(eta)
        entries = self._entries(j)
        if entries is None:
            return
        index, w, lo = entries
        w[:, -1] += 1.0                                                 # the target is subtracted below
        scale = flat.norm().clamp_min(torch.finfo(flat.dtype).tiny)
        leads = index[:, -1].tolist()
        errs, i = [], 0
        while i < len(w):  # chunks of one lead: their nodes lie in a narrow band of steps
            end = min(i + self.chunk, leads.index(leads[i]) + leads.count(leads[i]))
            used = w[i:end, :-1].ne(0).any(dim=0).nonzero().reshape(-1)
            a, b = int(used[0]), int(used[-1]) + 1
            band = self.buffer[lo + a - self.start:lo + b - self.start]  # (band, N), a view
            resid = w[i:end, a:b].to(band) @ band                          # (chunk, N)
            errs.append(resid.sub_(flat).norm(dim=1))
            i = end
        self.results.append((index, torch.cat(errs) / scale))

    def _weights(self, weights: Optional[Sequence[float]]) -> Optional[torch.Tensor]:
        weights = self.weights if weights is None else weights
        if weights is None or all(w == 1.0 for w in weights):
            return None
        if len(weights) != self.steps:
            raise ValueError(f"need one weight per step, got {len(weights)} for {self.steps} steps")
        return torch.tensor([float(w) for w in weights], dtype=torch.float64)

    def read(self, weights: Optional[Sequence[float]] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(table, euler_errors) with one device-to-host read for both; ``weights`` (T,) replace the
        constructor's (a loop that learns its steps' lengths only at its end).

        Raises:
            ValueError: if fewer than T steps were recorded, or for weights of another length.
        """
        if self.times is not None and len(self.seen) != len(self.times):
            raise ValueError(f"the run recorded {len(self.seen)} of {len(self.times)} steps")
        w = self._weights(weights)
        T = self.steps
        parts = [e for _, e in self.results] + ([torch.stack(self.euler_eta)] if self.euler_eta else [])
        # the one device-to-host transfer; what follows works on host memory (a plain tensor)
        flat = torch.cat([p.reshape(-1) for p in parts]).to(torch.float64).cpu().as_subclass(torch.Tensor) \
            if parts else torch.zeros(0, dtype=torch.float64)
        n = sum(len(i) for i, _ in self.results)
        err, eta = flat[:n], flat[n:]
        out = torch.full(table_shape(T, self.order, self.max_run), float("inf"), dtype=torch.float64)
        out[(slice(None),) * (self.order + 1) + (0,)] = 0.0
        if n:
            index = torch.cat([i for i, _ in self.results])
            if w is not None:
                err = err * w[index[:, 0] + index[:, -1]]
            out[tuple(index.T)] = err
        if w is not None and len(eta):
            eta = eta * w[:len(eta)]
        return out, eta

    def table(self) -> torch.Tensor:
        """The error table (float64, on the CPU), shape ``table_shape(T, p, R)``; +inf where
        undefined, 0 at lead 0. One host read.

        Raises:
            ValueError: if fewer than T steps were recorded.
        """
        return self.read()[0]

    def euler_errors(self) -> torch.Tensor:
        """(T - 1,) estimates of Euler's local error at steps 0..T-2, in the units of the table.

        Euler's local error at step k is about dt^2 / 2 * |dv/dt|, and dt * |dv/dt| is about
        |v_{k+1} - v_k|; dividing by dt |v_k| (the table's errors multiply dt |v| too) gives
        eta_k = |v_{k+1} - v_k| / (2 |v_k|). Computed with the norm of the later step, which
        is the same to first order.
        """
        return self.read()[1]


def error_table(times: Sequence[float] | torch.Tensor, velocities: Sequence[torch.Tensor], order: int = 1,
                max_run: int = 4) -> torch.Tensor:
    """Error table (see the module docstring) of a run whose real velocities are all given.

    Args:
        times: (T,) grid times t_0..t_{T-1}.
        velocities: T tensors (batch, ...), the real velocities at those times.
        order, max_run: p and R.

    Returns:
        The table, float64 on the CPU, of shape ``table_shape(T, order, max_run)``.

    Raises:
        ValueError: if the lengths differ.
    """
    if len(times) != len(velocities):
        raise ValueError(f"need one velocity per time, got {len(velocities)} for {len(times)} times")
    rec = TableRecorder(times, order, max_run)
    for j, v in enumerate(velocities):
        rec.add(j, v)
    return rec.table()
