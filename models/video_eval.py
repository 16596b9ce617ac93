"""What a video benchmark measures on Moving-MNIST-style clips: where the digit is in every frame,
whether it moves as the data do (constant velocity, bouncing off the walls), whether every frame
still shows the digit of its label, and per-frame PSNR between two runs.

Clips are (N, F, C, H, W) in [-1, 1] with background -1, as ``models.data.MovingMNIST`` makes
them and ``models.video_dit.VideoDiT`` samples them (t = 0 noise, t = 1 data). Positions are
(row, col) in pixels, pixel (i, j) at (i, j). One digit per clip (the 32 px CPU configuration);
the centroid of two digits is neither of them.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from fastflow.metrics import classifier_accuracy, psnr

__all__ = ["centroids", "motion_residual", "frame_crops", "per_frame_accuracy", "psnr_per_frame", "check_clips",
           "digit_room"]

SEARCH = 32          # a SEARCH x SEARCH grid of (start, speed) per axis, a safety net under the patterns
MAX_FRAMES = 16      # F frames have about 2 x 1.6^F fold patterns: 66 for 8 frames, 3192 for 16
CHUNK = 1 << 22      # tracks x patterns x frames held at once by the fit
INK_THRESHOLD = -0.2  # per_frame_accuracy binarises its crops here


def check_clips(clips: torch.Tensor, name: str = "clips") -> None:
    """Refuse anything but a batch of clips (N, F, C, H, W), e.g. a batch of images (N, C, H, W)."""
    if not isinstance(clips, torch.Tensor):
        raise ValueError(f"{name} must be a tensor of video clips (N, F, C, H, W), got {type(clips).__name__}")
    if clips.dim() != 5:
        hint = " (a batch of images: this measure is for video)" if clips.dim() == 4 else ""
        raise ValueError(f"{name} must be video clips (N, F, C, H, W), got shape {tuple(clips.shape)}{hint}")


def digit_room(image_size: int) -> float | None:
    """The walls' distance L of ``models.data.build_moving_mnist``'s clips of ``image_size`` px:
    size - digit size (digits of size // 2 px: 16 on 32 px); None above 32 px, where its clips
    hold two digits and a frame's centroid is neither's."""
    return None if image_size > 32 else float(image_size - image_size // 2)


def centroids(clips: torch.Tensor) -> torch.Tensor:
    """Intensity-weighted centroid of every frame.

    With ink w = (clamp(x, -1, 1) + 1) / 2 summed over channels (0 on the background),
        row_nf = sum_ij i w_nfij / sum_ij w_nfij,   col_nf = sum_ij j w_nfij / sum_ij w_nfij.
    A frame without ink has the canvas centre ((H - 1) / 2, (W - 1) / 2).

    Args:
        clips: (N, F, C, H, W) in [-1, 1].
    Returns:
        (N, F, 2) float64 (row, col) in pixels.
    """
    check_clips(clips)
    w = ((clips.detach().double().clamp(-1, 1) + 1) / 2).sum(2)         # (N, F, H, W)
    H, W = w.shape[-2:]
    mass = w.sum((-2, -1))                                                # (N, F)
    rows = torch.arange(H, dtype=torch.float64, device=w.device)
    cols = torch.arange(W, dtype=torch.float64, device=w.device)
    row = (w.sum(-1) * rows).sum(-1)                                      # (N, F)
    col = (w.sum(-2) * cols).sum(-1)
    empty = mass <= 0
    safe = torch.where(empty, torch.ones_like(mass), mass)
    row = torch.where(empty, torch.full_like(row, (H - 1) / 2), row / safe)
    col = torch.where(empty, torch.full_like(col, (W - 1) / 2), col / safe)
    return torch.stack([row, col], -1)


def _fold(u: torch.Tensor, room: float) -> torch.Tensor:
    """The free path u reflected into [0, room]: R(u) = u mod 2 room if that is <= room, else
    2 room - (u mod 2 room)."""
    r = torch.remainder(u, 2 * room)
    return torch.where(r <= room, r, 2 * room - r)


def _sse(x: torch.Tensor, path: torch.Tensor) -> torch.Tensor:
    """Sum of squares of x - path - c at the best offset c = mean_f (x_f - path_f)."""
    e = x - path
    return (e - e.mean(-1, keepdim=True)).square().sum(-1)


@functools.lru_cache(maxsize=8)
def _patterns(frames: int) -> torch.Tensor:
    """Every fold pattern of a path that bounces at least once, as q (P, F): the copy of the room
    that u_f lies in, q_f = floor(u_f / room). q_0 is 0 or 1 (s in [0, 2 room)), q_f = q_0 + the
    bounces in the gaps before frame f, and two bounces are two gaps apart or more (speed <= room / 2)."""
    sets, stack = [], [((), 0)]
    while stack:  # gap subsets of 0..F-2 whose members differ by 2 or more
        chosen, nxt = stack.pop()
        if chosen:
            sets.append(chosen)
        stack.extend((chosen + (g,), g + 2) for g in range(nxt, frames - 1))
    f = torch.arange(frames)
    bounces = torch.stack([(torch.tensor(b)[:, None] < f).sum(0) for b in sets])  # (P', F)
    return torch.cat([bounces, bounces + 1])                                       # q_0 = 0, 1


def _fit_axis(x: torch.Tensor, room: float, max_speed: float) -> torch.Tensor:
    """(M,) least sum of squares of x (M, F) against c + R(s + v f) with |v| <= max_speed (see
    ``motion_residual``), each candidate scored by the real model."""
    M, Fr = x.shape
    f = torch.arange(Fr, dtype=torch.float64, device=x.device)
    # No bounce: a straight line, if it fits between the walls at an allowed speed.
    slope = ((f - f.mean()) * (x - x.mean(-1, keepdim=True))).sum(-1) / (f - f.mean()).square().sum()
    line = _sse(x, slope[:, None] * f)
    best = torch.where((slope.abs() <= max_speed) & (slope.abs() * (Fr - 1) <= room), line, torch.inf)
    # Every bounce pattern q: within it R(s + v f) = sigma_f (s + v f) + k_f, linear in (c, s, v).
    q = _patterns(Fr).to(x.device, torch.float64)                                  # (P, F)
    sigma = 1 - 2 * torch.remainder(q, 2)
    k = -sigma * q * room + room * torch.remainder(q, 2)
    A = torch.stack([torch.ones_like(sigma), sigma, sigma * f], -1)                # (P, F, 3)
    gram = A.transpose(1, 2) @ A                                                   # (P, 3, 3), full rank
    coef = torch.linalg.solve(gram[None], (A.transpose(1, 2)[None] @ (x[:, None] - k)[..., None]))[..., 0]
    s, v = coef[..., 1], coef[..., 2]                                              # (M, P)
    v_ok = v.abs().clamp(max=max_speed) * v.sign()
    fits = _sse(x[:, None], _fold(s[..., None] + v_ok[..., None] * f, room))       # the real model there
    best = torch.minimum(best, fits.min(-1).values)
    # A grid of (s, v), c at its best.
    s = torch.linspace(0, 2 * room, SEARCH + 1, dtype=torch.float64, device=x.device)[:-1]
    v = torch.linspace(0, max_speed, SEARCH, dtype=torch.float64, device=x.device)
    s, v = (g.reshape(-1) for g in torch.meshgrid(s, v, indexing="ij"))
    grid = _sse(x[:, None], _fold(s[:, None] + v[:, None] * f, room)[None])        # (M, G)
    return torch.minimum(best, grid.min(-1).values)


def motion_residual(track: torch.Tensor, room: float, max_speed: float | None = None) -> torch.Tensor:
    """RMS distance in pixels between a track and the best constant-velocity-with-bounces motion.

    The model, on each axis separately (the data's motion, ``models.data.bouncing_track``):
        x_f = c + R(s + v f),   R(u) = u mod 2L if that is <= L, else 2L - (u mod 2L),
    a start s and a velocity v (|v| <= max_speed) of the unfolded path, reflected at the walls 0
    and L = ``room``, plus a free offset c: a top-left track has c = 0, a centroid track c = the
    digit's ink centroid within its box (unknown for a sample; about half the digit size). The
    residual is
        sqrt(mean_f [(row_f - row_fit_f)^2 + (col_f - col_fit_f)^2]).
    Fit (c always in closed form, the mean of x_f - R(s + v f)): the best straight line (no
    bounce) that fits between the walls; for every fold pattern of a path that bounces (which
    copy of the room each u_f = s + v f lies in: about 2 x 1.6^F patterns), where R is linear,
    the closed-form least squares in (c, s, v); a 32 x 32 grid of (s, v). Every candidate is
    scored by the real model, so the result is the residual of an actual fit, and it is the
    least one whenever the best fit lies inside a fold pattern (not on the boundary of two), as
    it does for exact tracks (residual ~1e-13 px). With 3 parameters per axis, noise of std e
    per axis leaves about e sqrt(2 (F - 3) / F). Real clips leave the rounding of the digit's
    position to whole pixels: 0.32 px on average. A clip without a digit (noise everywhere) has
    its centroid near the canvas centre in every frame, so a small residual too: read it with
    ``per_frame_accuracy``.

    Args:
        track: (..., F, 2) positions (row, col), 3 <= F <= 16; a top-left track or ``centroids``.
        room: L, the distance between the walls (canvas size - digit size: 16 for 32 px clips of
            16 px digits).
        max_speed: the fastest motion fitted, pixels per frame, at most L / 2 (the default; the
            data move at 1.5 to 3).
    Returns:
        (...) float64 residuals in pixels.
    """
    track = torch.as_tensor(track, dtype=torch.float64)
    if track.dim() < 2 or track.shape[-1] != 2 or not 3 <= track.shape[-2] <= MAX_FRAMES:
        raise ValueError(f"track must be (..., F, 2) positions with 3 <= F <= {MAX_FRAMES} frames, got "
                         f"{tuple(track.shape)}")
    if not room > 0:
        raise ValueError(f"room must be > 0, got {room}")
    max_speed = room / 2 if max_speed is None else float(max_speed)
    if not 0 < max_speed <= room / 2:
        raise ValueError(f"max_speed must be in (0, room / 2 = {room / 2}], got {max_speed}")
    lead, Fr = track.shape[:-2], track.shape[-2]
    axes = track.reshape(-1, Fr, 2).transpose(1, 2).reshape(-1, Fr)        # (M * 2, F): row, col, row, ...
    if axes.shape[0] == 0:
        return torch.zeros(lead, dtype=torch.float64)
    per = max(2, CHUNK // (len(_patterns(Fr)) * Fr)) // 2 * 2
    sse = torch.cat([_fit_axis(axes[i:i + per], float(room), max_speed) for i in range(0, len(axes), per)])
    return (sse.reshape(-1, 2).sum(-1) / Fr).sqrt().reshape(lead)


def frame_crops(clips: torch.Tensor, centres: torch.Tensor, window: float = 16.0, size: int = 28) -> torch.Tensor:
    """A window x window square around each frame's centre, resampled (bilinearly) to size x size.

    Output pixel (a, b) of frame (n, f) samples the frame at
        (row_nf + (a + 1/2) window / size - window / 2, col_nf + (b + 1/2) window / size - window / 2),
    outside the frame the background -1. With the centroid as centre and the digit's size as the
    window (16 px on the 32 px canvas), the crop frames the digit as MNIST does (centred by its
    centre of mass in 28 x 28), ready for the project's digit classifier.

    Args:
        clips: (N, F, C, H, W) in [-1, 1].
        centres: (N, F, 2) (row, col), e.g. ``centroids(clips)``.
    Returns:
        (N * F, C, size, size) crops in [-1, 1], clip-major (frame f of clip n at n F + f).
    """
    check_clips(clips)
    N, Fr, C, H, W = clips.shape
    if tuple(centres.shape) != (N, Fr, 2):
        raise ValueError(f"centres must be (N, F, 2) = {(N, Fr, 2)} for these clips, got {tuple(centres.shape)}")
    if not (window > 0 and size >= 1):
        raise ValueError(f"window must be > 0 and size >= 1, got {window} and {size}")
    frames = clips.reshape(N * Fr, C, H, W).float()
    c = centres.reshape(N * Fr, 2).to(frames.device, torch.float64)
    offsets = (torch.arange(size, dtype=torch.float64, device=frames.device) + 0.5) * window / size - window / 2
    rows, cols = c[:, :1] + offsets, c[:, 1:] + offsets                  # (B, size) pixel coordinates
    gy = (rows + 0.5) / H * 2 - 1                                         # grid_sample, align_corners=False
    gx = (cols + 0.5) / W * 2 - 1
    grid = torch.stack([gx[:, None, :].expand(-1, size, -1), gy[:, :, None].expand(-1, -1, size)], -1)
    crops = F.grid_sample(frames + 1, grid.float(), mode="bilinear", padding_mode="zeros", align_corners=False)
    return crops - 1                                                      # zero padding = background -1


def per_frame_accuracy(classifier, clips: torch.Tensor, labels: torch.Tensor, window: float = 16.0,
                       threshold: float | None = INK_THRESHOLD) -> float:
    """Fraction of all N F frames whose crop around the centroid (``frame_crops``), binarised at
    ``threshold`` (+1 above, -1 elsewhere; None: as cropped), the classifier reads as the clip's
    label: (1 / N F) sum_nf [argmax classifier(crop_nf) = y_n].

    Why binarised: the project's classifier, trained on sharp 28 px digits, reads the frames of
    real Moving-MNIST clips (digits drawn at 16 px, cropped back to 28) at 54% as they are and
    at 97.7% binarised at -0.2 (4096 frames of 512 test-split clips; 92% at -0.6, 96% at 0).

    Args:
        classifier: (B, C, 28, 28) in [-1, 1] -> (B, classes) logits (``models.classifier``).
        clips: (N, F, C, H, W) in [-1, 1]; labels: (N,) the digit of each clip.
        window: the crop's side in the clip's pixels (the digit's size).
    """
    check_clips(clips)
    labels = torch.as_tensor(labels)
    if labels.shape != (clips.shape[0],):
        raise ValueError(f"labels must be (N,) = ({clips.shape[0]},) for these clips, got {tuple(labels.shape)}")
    crops = frame_crops(clips, centroids(clips), window)
    if threshold is not None:
        crops = torch.where(crops > threshold, 1.0, -1.0)
    return classifier_accuracy(classifier, crops, labels.repeat_interleave(clips.shape[1]))


def psnr_per_frame(a: torch.Tensor, b: torch.Tensor, data_range: float = 2.0) -> torch.Tensor:
    """PSNR of every frame: MSE_nf = mean_chw (a_nfchw - b_nfchw)^2, PSNR_nf = 10 log10(L^2 / MSE_nf),
    L = ``data_range`` (2 for [-1, 1]); +inf for identical frames (``fastflow.metrics.psnr``).

    Args:
        a, b: (N, F, C, H, W) clips of one shape.
    Returns:
        (N, F) float64 PSNR in dB.
    """
    check_clips(a, "a")
    check_clips(b, "b")
    if a.shape != b.shape:
        raise ValueError(f"a and b must have one shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    return psnr(a.flatten(0, 1), b.flatten(0, 1), data_range).reshape(a.shape[:2])
