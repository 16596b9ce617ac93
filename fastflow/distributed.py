"""One FastFlow policy shared by many processes (``torchrun``), or by many batches of one round.

Learning happens in rounds. In a round every rank samples one batch with the same policy state,
so every rank makes the same skip decisions at the same batch position; what each run learned
(its observations and model calls, ``FastFlowSampler.deferred_updates``) is then gathered from
all ranks and applied on every rank in rank order. All ranks end each round with identical
states, identical to the state one process reaches by ``sample_round`` over the same batches:
exactly, not up to summation order, because every rank applies the same updates in the same
order. (Gathering the runs' observations, rather than summing bandit statistics, is what makes
this exact for the parts of a policy that are not sums: the paper policy's Lagrange update of
mu and the planning policy's re-plan with hysteresis.)

The calibration run is not shared this way: run it on one rank and send its state to the others
with ``broadcast_state``.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch

from .result import SampleResult

__all__ = ["sample_round", "share_updates", "broadcast_state", "learns"]


def learns(sampler) -> bool:
    """Whether ``sampler`` (a sampler, or a ``SkipWrapper``) carries a skip engine whose state the
    ranks must share: anything with ``deferred_updates`` and ``apply_updates``.

    Raises:
        Nothing of its own.
    """
    return hasattr(sampler, "deferred_updates") and hasattr(sampler, "apply_updates")


def sample_round(sampler, velocity: Callable, batches: Sequence[torch.Tensor], **extras) -> list[SampleResult]:
    """Sample ``batches`` as one round: every batch from the state the round began with (the
    policy's, and its random generator's), then every batch's update, in batch order. What ``len(batches)`` ranks do together, in one process.
    Extras are passed to ``sample`` (the same for every batch; use ``sample`` per batch for more).

    Returns:
        One ``SampleResult`` per batch, in batch order.

    Raises:
        ValueError: for an uncalibrated FastFlow sampler (see ``deferred_updates``), or any of
            ``sample``'s errors (a bad batch, a velocity of the wrong shape or not finite); the
            round's updates are then dropped and the policy is left as the round found it.
        Whatever ``velocity`` raises, unchanged (the round's updates are dropped likewise).
    """
    if not learns(sampler):
        return [sampler.sample(velocity, x, **extras) for x in batches]
    gen = getattr(sampler, "generator", None)
    start = gen.get_state() if gen is not None else None
    results = []
    with sampler.deferred_updates() as queued:
        for x in batches:
            if gen is not None:  # every rank's generator is in the same state when a round begins
                gen.set_state(start)
            results.append(sampler.sample(velocity, x, **extras))
    sampler.apply_updates(queued)
    return results


def share_updates(sampler, update: Optional[dict], group=None) -> list[Optional[dict]]:
    """Gather this rank's update (None if it sampled nothing, or learns nothing) from every rank
    of ``group`` and apply them all, in rank order, on this rank. A collective: every rank of the
    group must call it once per round. Returns the gathered updates.

    Raises:
        ValueError: for an uncalibrated FastFlow sampler or a malformed update (on every rank;
            see ``FastFlowSampler.apply_updates``), or from ``torch.distributed`` when no process
            group is initialised.
        RuntimeError: from ``torch.distributed`` when the collective fails.
    """
    import torch.distributed as dist
    gathered: list = [None] * dist.get_world_size(group)
    dist.all_gather_object(gathered, update, group=group)
    if learns(sampler):
        sampler.apply_updates(gathered)
    return gathered


def broadcast_state(sampler, src: int = 0, group=None) -> None:
    """Send ``src``'s FastFlow state (calibration table, policy, statistics, and the state of its
    random generator, if it has one) to every rank of ``group``; a collective. ``src`` is a
    global rank. Other samplers learn nothing and are left alone.

    Raises:
        ValueError: if the received state does not fit this rank's sampler (other settings; see
            ``FastFlowSampler.load_state_dict``), or from ``torch.distributed`` when no process
            group is initialised (FastFlow samplers only).
        RuntimeError: from ``torch.distributed`` when the collective fails.
    """
    import torch.distributed as dist
    if not learns(sampler):
        return
    gen = getattr(sampler, "generator", None)
    mine = (sampler.state_dict(), gen.get_state() if gen is not None else None)
    box = [mine if dist.get_rank(group) == src else None]
    dist.broadcast_object_list(box, src=src, group=group)
    if dist.get_rank(group) != src:
        state, gen_state = box[0]
        sampler.load_state_dict(state)
        if gen is not None and gen_state is not None:  # randomised bandits then draw alike on every rank
            gen.set_state(gen_state)
