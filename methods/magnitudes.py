"""Whole-tensor magnitude windows: what TIES and mergekit-mode Breadcrumbs keep.

Those methods keep the entries whose stable magnitude rank (|δ| ascending,
ties by position) lies in a window [first, last] of the whole tensor. A window
is two thresholds, the magnitudes at its ends, plus a positional tie rule in
the rare case a run of equal magnitudes straddles an end. Finding a threshold
is a selection over the tensor (a kthvalue of 10M values takes 0.2 s), and the
window moves every trial with the density; so the optimizer keeps each task
vector's magnitudes sorted, once per study, in half the memory of float32
(``SortedMagnitudes``), and a trial's thresholds become two array lookups.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import torch

from methods.kernels import count_equal


def _float(bits: int) -> float:
    return float(np.array([bits], dtype=np.int32).view(np.float32)[0])


class SortedMagnitudes:
    """|δ| of one tensor in ascending order, as float32 bit patterns split in two.

    Non-negative float32 values order like their int32 bit patterns. The high
    16 bits of the sorted patterns form runs, so they are kept once per run
    (value and start: kilobytes); the low 16 bits are kept per entry, offset
    to int16 so each run stays sorted: 2 bytes per entry.
    """

    def __init__(self, delta: torch.Tensor) -> None:
        bits = delta.detach().reshape(-1).abs().to("cpu", torch.float32).view(torch.int32)
        ordered = np.sort(bits.numpy())  # NumPy's SIMD sort: ~3x torch.sort here
        self.n = int(ordered.size)
        high = ordered >> 16
        edges = np.flatnonzero(high[1:] != high[:-1]) + 1
        self.starts = np.concatenate([[0], edges, [self.n]]) if self.n else np.zeros(1, np.int64)
        self.keys = high[self.starts[:-1]].astype(np.int32)
        self.low = ((ordered & 0xFFFF) - 32768).astype(np.int16)

    @property
    def nbytes(self) -> int:
        return self.low.nbytes + self.starts.nbytes + self.keys.nbytes

    def at(self, p: int) -> tuple[float, int, int]:
        """The p-th smallest magnitude and the sorted positions of its first and last copy."""
        # ndarray.searchsorted: np.searchsorted's dispatch costs more than the search
        run = int(self.starts.searchsorted(p, "right")) - 1
        lo, hi = int(self.starts[run]), int(self.starts[run + 1])
        seg = self.low[lo:hi]
        x = self.low[p]
        first = lo + int(seg.searchsorted(x, "left"))
        last = lo + int(seg.searchsorted(x, "right")) - 1
        bits = (int(self.keys[run]) << 16) | (int(x) + 32768)
        return _float(bits), first, last


def _selector(mag: torch.Tensor) -> Callable[[int], tuple[float, int, int]]:
    """``SortedMagnitudes.at`` without the cache: a kthvalue and two counts."""

    def at(p: int) -> tuple[float, int, int]:
        v = mag.kthvalue(p + 1).values
        first = int((mag < v).sum())
        last = int((mag <= v).sum()) - 1
        return float(v), first, last

    return at


# positions are int32 inside the kernels (tensors hold fewer than 2^31 entries)
MAX_POSITION = (1 << 31) - 1


@dataclass(frozen=True)
class Window:
    """Keep lo <= |δ| <= hi, where of the entries equal to ``lo`` only those at
    flat positions >= ``lo_pos`` count and of those equal to ``hi`` only those
    at positions <= ``hi_pos``: a run of equal magnitudes straddling an end of
    the rank window is cut by position, as stable ranks order it."""

    lo: float
    hi: float
    lo_pos: int = 0
    hi_pos: int = MAX_POSITION


KEEP_ALL = Window(-1.0, float("inf"))
KEEP_NONE = Window(float("inf"), -1.0)


def _positions(requests: list[tuple[torch.Tensor, float, int]], compile: bool) -> list[int]:
    """For each (δ, value, j): the flat position of the j-th (0-based) entry with
    |δ| == value, in position order. One fused counting pass per tensor (all
    requests on same-shaped tensors share one kernel call), then one row searched."""
    if not requests:
        return []

    def rows(d: torch.Tensor) -> torch.Tensor:
        return d.reshape(-1, d.shape[-1]) if d.dim() >= 2 else d.reshape(1, -1)

    mats = [rows(d) for d, _, _ in requests]
    counts = count_equal(mats, [v for _, v, _ in requests], compile)
    cums = counts.cumsum(1).cpu().numpy()
    out = []
    for (_, value, j), m, cum in zip(requests, mats, cums):
        r = int(np.searchsorted(cum, j, side="right"))
        before = int(cum[r - 1]) if r else 0
        cols = (m[r].abs() == value).nonzero().reshape(-1)
        out.append(r * m.shape[1] + int(cols[j - before]))
    return out


def keep_ranks(
    deltas: list[torch.Tensor],
    bands: list[tuple[int, int]],
    sorted_mags: list[SortedMagnitudes | None],
    compile: bool = False,
) -> list[Window]:
    """For each same-shaped δ, the window keeping its stable ranks first..last
    (0-based, inclusive) of |δ|."""
    windows: list[Window] = []
    requests: list[tuple[torch.Tensor, float, int]] = []
    slots: list[tuple[int, str]] = []  # (window, "lo_pos" or "hi_pos") per request
    for k, (delta, (first, last), cached) in enumerate(zip(deltas, bands, sorted_mags)):
        n = delta.numel()
        first, last = max(0, first), min(n - 1, last)
        if first > last or (first == 0 and last == n - 1):
            windows.append(KEEP_NONE if first > last else KEEP_ALL)
            continue
        at = cached.at if cached is not None else _selector(delta.reshape(-1).abs())
        w = KEEP_ALL
        if first > 0:
            lo, lo_first, _ = at(first)
            w = replace(w, lo=lo)
            if lo_first < first:  # entries equal to lo ranked below ``first`` are dropped
                requests.append((delta, lo, first - lo_first))
                slots.append((k, "lo_pos"))
        if last < n - 1:
            hi, hi_first, hi_last = at(last)
            w = replace(w, hi=hi)
            if hi_last > last:  # entries equal to hi ranked above ``last`` are dropped
                requests.append((delta, hi, last - hi_first))
                slots.append((k, "hi_pos"))
        windows.append(w)
    for (k, field), pos in zip(slots, _positions(requests, compile)):
        windows[k] = replace(windows[k], **{field: pos})
    return windows


def window_mask(delta: torch.Tensor, w: Window) -> torch.Tensor:
    """Boolean mask of the entries ``w`` keeps, eagerly (the kernel's rule)."""
    mag = delta.abs()
    pos = torch.arange(delta.numel(), device=delta.device).view(delta.shape)
    above = (mag > w.lo) | ((mag == w.lo) & (pos >= w.lo_pos))
    below = (mag < w.hi) | ((mag == w.hi) & (pos <= w.hi_pos))
    return above & below
