"""Whole-tensor magnitude windows: what TIES and mergekit-mode Breadcrumbs keep.

Those methods keep the entries whose stable magnitude rank (|δ| ascending,
ties by position) lies in a window [first, last] of the whole tensor. A window
is two thresholds, the magnitudes at its ends, plus a positional tie rule in
the rare case a run of equal magnitudes straddles an end. Finding a threshold
is a selection over the whole tensor (docs/benchmarks.md), and the
window moves every trial with the density; so the optimizer keeps each task
vector's stable magnitude order, once per study (``MagnitudeOrder``: the
entries' positions, int32), and a trial's window becomes four lookups: the
entry at each end gives both its threshold and its tie-breaking position,
where counting equal magnitudes would otherwise read the whole tensor again.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import torch

from methods.kernels import count_equal


class MagnitudeOrder:
    """The positions of one tensor's entries by ascending |δ|, ties by position.

    The stable order is the int32 tail of a sort of 64-bit keys (|δ|'s float32
    bits, which order like the values for non-negative floats, then the
    position): NumPy's SIMD sort, 4 bytes per entry kept. Magnitudes are read
    back from the tensor itself, so the cache holds no values.
    """

    def __init__(self, delta: torch.Tensor) -> None:
        bits = delta.detach().reshape(-1).abs().to("cpu", torch.float32).view(torch.int32)
        n = bits.numel()
        keys = (bits.numpy().astype(np.int64) << 32) | np.arange(n, dtype=np.int64)
        keys.sort()
        self.order = (keys & 0x7FFFFFFF).astype(np.int32)
        self.n = n

    @property
    def nbytes(self) -> int:
        return self.order.nbytes

    def window(self, delta: torch.Tensor, first: int, last: int) -> Window:
        """The window keeping stable ranks first..last of ``delta`` (the tensor
        this order was built from), 0 <= first <= last < n. An end's position
        is set only where its run of equal magnitudes straddles it, as the
        uncached path does, so both give the same window."""
        ends = []  # (field, value field, rank, neighbour rank outside the window)
        if first > 0:
            ends.append(("lo_pos", "lo", first, first - 1))
        if last < self.n - 1:
            ends.append(("hi_pos", "hi", last, last + 1))
        ranks = [r for _, _, rank, out in ends for r in (rank, out)]
        positions = self.order[ranks]
        mags = _magnitudes_at(delta, positions)
        w = KEEP_ALL
        for k, (pos_field, value_field, _, _) in enumerate(ends):
            value, outside = mags[2 * k], mags[2 * k + 1]
            w = replace(w, **{value_field: value})
            if outside == value:  # a run of equal magnitudes straddles this end
                w = replace(w, **{pos_field: int(positions[2 * k])})
        return w


def _magnitudes_at(delta: torch.Tensor, positions: np.ndarray) -> list[float]:
    """|δ| at the given flat positions (NumPy on the CPU, one gather elsewhere)."""
    flat = delta.detach().reshape(-1)
    if flat.device.type == "cpu":
        return np.abs(flat.numpy()[positions]).tolist()
    index = torch.from_numpy(positions.astype(np.int64)).to(flat.device)
    return flat[index].abs().tolist()


def _selector(mag: torch.Tensor) -> Callable[[int], tuple[float, int, int]]:
    """The p-th smallest magnitude and the ranks of its first and last copy,
    without a cache: a selection and two counts over ``mag``, a fresh |δ| the
    selection may reorder.

    On the CPU the selection is NumPy's in-place partition of the float32 bit
    patterns (no copy; torch's kthvalue copies the tensor and an index and is
    much slower: docs/benchmarks.md, design measurements); the counts do not depend on the order.
    """
    if mag.device.type == "cpu" and mag.dtype == torch.float32:
        bits = mag.view(torch.int32).numpy()

        def select(p: int) -> float:
            bits.partition(p)
            return float(bits[p : p + 1].view(np.float32)[0])
    else:

        def select(p: int) -> float:
            return float(mag.kthvalue(p + 1).values)

    def at(p: int) -> tuple[float, int, int]:
        v = select(p)
        # count_nonzero: a bool .sum() first widens the mask to int64 (8 B/entry)
        first = int(torch.count_nonzero(mag < v))
        last = int(torch.count_nonzero(mag <= v)) - 1
        return v, first, last

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
    |δ| == value, in position order, for the uncached path. One fused counting
    pass per tensor (all requests on same-shaped tensors share one kernel call),
    then one row searched."""
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


def _thresholds(
    delta: torch.Tensor, first: int, last: int
) -> tuple[Window, list[tuple[str, float, int]]]:
    """The uncached window's thresholds, and for each end cutting a run of
    equal magnitudes (field, value, j): its position is the j-th entry equal
    to value. A function of its own so the |δ| copy is freed on return,
    before the next tensor's."""
    at = _selector(delta.reshape(-1).abs())
    w, needs = KEEP_ALL, []
    if first > 0:
        lo, lo_first, _ = at(first)
        w = replace(w, lo=lo)
        if lo_first < first:  # entries equal to lo ranked below ``first`` are dropped
            needs.append(("lo_pos", lo, first - lo_first))
    if last < delta.numel() - 1:
        hi, hi_first, hi_last = at(last)
        w = replace(w, hi=hi)
        if hi_last > last:  # entries equal to hi ranked above ``last`` are dropped
            needs.append(("hi_pos", hi, last - hi_first))
    return w, needs


def keep_ranks(
    deltas: list[torch.Tensor],
    bands: list[tuple[int, int]],
    orders: list[MagnitudeOrder | None],
    compile: bool = False,
) -> list[Window]:
    """For each same-shaped δ, the window keeping its stable ranks first..last
    (0-based, inclusive) of |δ|."""
    windows: list[Window] = []
    requests: list[tuple[torch.Tensor, float, int]] = []
    slots: list[tuple[int, str]] = []  # (window, "lo_pos" or "hi_pos") per request
    for k, (delta, (first, last), order) in enumerate(zip(deltas, bands, orders)):
        n = delta.numel()
        first, last = max(0, first), min(n - 1, last)
        if first > last or (first == 0 and last == n - 1):
            windows.append(KEEP_NONE if first > last else KEEP_ALL)
            continue
        if order is not None:
            windows.append(order.window(delta, first, last))
            continue
        w, needs = _thresholds(delta, first, last)
        windows.append(w)
        for field, value, j in needs:
            requests.append((delta, value, j))
            slots.append((k, field))
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
