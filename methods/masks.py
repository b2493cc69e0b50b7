"""Sparsification building blocks shared by TIES, DARE, Breadcrumbs and DELLA.

Magnitude masks are defined by *stable* ranks: entries are ordered by |delta|
ascending and ties break by position, so a mask never depends on the sort
algorithm. Without a rank cache they are computed from ``kthvalue`` thresholds
plus an exact tie rule, which avoids a full sort per tensor; with a cache (the
optimizer precomputes ranks once per study) they are plain comparisons.
Both paths give identical masks.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

# floor(frac * n) in exact arithmetic: 1 - 0.9 - 0.01 is 0.0899999... in binary,
# and floor(0.0899999 * 100) would drop 8 entries instead of 9.
_FLOOR_TOLERANCE = 1e-9


def floor_count(frac: float, n: int) -> int:
    """⌊frac · n⌋, robust to binary rounding of ``frac``."""
    return int(math.floor(frac * n + _FLOOR_TOLERANCE * max(1, n)))


def count(frac: float, n: int, compat: str) -> int:
    """How many of ``n`` entries a fraction selects: mergekit truncates the
    float product (``int(frac * n)``); the paper's ⌊frac · n⌋ is exact."""
    if compat == "mergekit":
        return int(frac * n)
    return floor_count(frac, n)


def as_rows(t: torch.Tensor, per_row: bool) -> torch.Tensor:
    """View ``t`` as (rows, n): per row (last dimension) or one flattened row."""
    if per_row and t.dim() >= 1:
        return t.reshape(-1, t.shape[-1])
    return t.reshape(1, -1)


def stable_ranks(delta: torch.Tensor, per_row: bool) -> torch.Tensor:
    """Rank of each entry's |value| in its row (or the whole tensor), 0-based.

    Ties break by position: the earlier entry gets the lower rank.
    """
    mag = as_rows(delta, per_row).abs()
    if mag.device.type == "cpu" and mag.dtype == torch.float32:
        order = _row_order_cpu(mag)
    else:
        if mag.dtype == torch.float32:
            # Non-negative float32 values order exactly as their int32 bit
            # patterns, and integer sorts are markedly faster.
            mag = mag.view(torch.int32)
        order = torch.argsort(mag, dim=-1, stable=True)
    ranks = torch.empty_like(order)
    n = mag.shape[-1]
    ranks.scatter_(-1, order, torch.arange(n, device=mag.device).expand_as(order))
    return ranks.reshape(delta.shape)


_sort_pool: ThreadPoolExecutor | None = None


def _row_order_cpu(mag: torch.Tensor) -> torch.Tensor:
    """Each row's stable ascending order of the non-negative float32 ``mag``.

    Sorts 64-bit keys (the value's bit pattern above the column): all distinct,
    so any sort gives the stable order, and NumPy's SIMD sort of them, over the
    rows split between threads, takes about half the time of torch's stable
    argsort (docs/benchmarks.md, design measurements).
    """
    rows, n = mag.shape
    keys = np.empty((rows, n), dtype=np.int64)
    words = keys.view(np.int32).reshape(rows, n, 2)  # little-endian: (low, high)
    words[..., 1] = mag.view(torch.int32).numpy()
    words[..., 0] = np.arange(n, dtype=np.int32)
    threads = min(rows, torch.get_num_threads())
    if threads > 1 and keys.size >= 1 << 20:
        global _sort_pool
        if _sort_pool is None:
            _sort_pool = ThreadPoolExecutor(torch.get_num_threads(), "mergeopt-sort")
        parts = np.array_split(keys, threads)
        list(_sort_pool.map(lambda part: part.sort(axis=-1), parts))
    else:
        keys.sort(axis=-1)
    return torch.from_numpy(words[..., 0]).long()


def _row_counts(mask: torch.Tensor) -> torch.Tensor:
    """True entries per row, keepdim: count_nonzero, since a bool .sum() first
    widens the whole mask to int64 (8 bytes per entry)."""
    return torch.count_nonzero(mask, dim=-1).unsqueeze(-1)


def _row_order_statistics(mag: torch.Tensor, ks: list[int]) -> list[torch.Tensor]:
    """The k-th smallest (0-based) of each row of ``mag``, keepdim, for each k.

    On the CPU both ends come from one NumPy partition of a copy of the float32
    bit patterns (SmolLM2's embedding: half the time and a third of the memory
    of two torch kthvalue calls, which copy the rows and an int64 index each).
    """
    if not ks:
        return []
    if mag.device.type == "cpu" and mag.dtype == torch.float32:
        parted = np.partition(mag.view(torch.int32).numpy(), ks, axis=-1)
        cols = [torch.from_numpy(parted[:, k : k + 1].copy()).view(torch.float32) for k in ks]
        del parted
        return cols
    return [mag.kthvalue(k + 1, dim=-1, keepdim=True).values for k in ks]


def band_mask(
    delta: torch.Tensor,
    drop_low: int,
    drop_high: int,
    per_row: bool,
    ranks: torch.Tensor | None = None,
    chunk_elements: int = 1 << 22,
) -> torch.Tensor:
    """Boolean mask keeping the band of magnitudes between the two tails.

    Drops the ``drop_low`` smallest and ``drop_high`` largest entries of each
    row (or of the whole tensor), ties broken by stable rank. Per row, a
    block of rows at a time: the magnitudes, their partitioned copy and the
    tie masks then take a few MB, not 4-5 bytes per entry of the tensor
    (a ~1B model's 75M-entry embedding: 0.9 GB).
    """
    rows = as_rows(delta, per_row)
    n = rows.shape[-1]
    drop_low = max(0, min(drop_low, n))
    drop_high = max(0, min(drop_high, n - drop_low))
    if ranks is not None:
        r = as_rows(ranks, per_row)
        keep = (r >= drop_low) & (r < n - drop_high)
        return keep.reshape(delta.shape)
    keep = torch.empty(rows.shape, dtype=torch.bool, device=rows.device)
    step = max(1, chunk_elements // max(1, n))
    for start in range(0, rows.shape[0], step):
        keep[start : start + step] = _band(rows[start : start + step], drop_low, drop_high)
    return keep.reshape(delta.shape)


def _band(rows: torch.Tensor, drop_low: int, drop_high: int) -> torch.Tensor:
    """band_mask of a block of rows (tails already clamped to the row length)."""
    n = rows.shape[-1]
    mag = rows.abs()
    keep = torch.ones_like(mag, dtype=torch.bool)
    wanted = [k for k, drop in ((drop_low - 1, drop_low), (n - drop_high, drop_high)) if drop > 0]
    order_stats = dict(zip(wanted, _row_order_statistics(mag, wanted)))
    if drop_low > 0:
        lo = order_stats[drop_low - 1]
        # among entries equal to the threshold, the earliest ranks lowest
        keep &= ~_tail(mag < lo, mag == lo, drop_low, lambda at: at.cumsum(-1))
    if drop_high > 0:
        hi = order_stats[n - drop_high]
        # among entries equal to the threshold, the latest ranks highest
        keep &= ~_tail(mag > hi, mag == hi, drop_high, lambda at: at.flip(-1).cumsum(-1).flip(-1))
    return keep


def _tail(
    beyond: torch.Tensor,
    at: torch.Tensor,
    drop: int,
    order_among_equal: Callable[[torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    """The ``drop`` entries of each row to drop at one end: all ``beyond`` the
    threshold, then of those ``at`` it the first ``room`` by stable rank
    (``order_among_equal`` counts them, 1-based, in rank order).

    Most rows hold fewer copies of their threshold than there is room for,
    so all of them go; only the rows where a run of equal magnitudes
    straddles the end are counted (an int64 count of the whole tensor is 8
    bytes per entry).
    """
    room = drop - _row_counts(beyond)
    dropped = beyond | at
    cut = torch.nonzero(_row_counts(at).squeeze(-1) > room.squeeze(-1)).squeeze(-1)
    if cut.numel():
        a = at[cut]
        dropped[cut] = beyond[cut] | (a & (order_among_equal(a) <= room[cut]))
    return dropped


def derive_seed(seed: int, tensor_name: str, model_index: int) -> int:
    """A 63-bit seed from (seed, tensor, model), independent of execution order."""
    digest = hashlib.blake2b(
        f"{seed}\x00{tensor_name}\x00{model_index}".encode(), digest_size=8
    ).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def draw_key(seed: int, tensor_name: str, model_index: int) -> tuple[int, int]:
    """The key (two int32 values) of the counter-based draws for this tensor and model."""
    s = derive_seed(seed, tensor_name, model_index)
    words = [(s >> shift) & 0xFFFFFFFF for shift in (0, 32)]
    return tuple(w - (1 << 32) if w >= 1 << 31 else w for w in words)


def uniform_like(
    delta: torch.Tensor, seed: int, tensor_name: str, model_index: int
) -> torch.Tensor:
    """Uniform [0, 1) float32 draws shaped like ``delta``, keyed by (seed, tensor, model).

    Counter-based (methods.kernels.uniform_draws): entry i's draw depends only
    on i and the key, so the same bits come out on any device, eagerly or
    inside a compiled kernel, whatever the order tensors are merged in.
    """
    from methods.kernels import uniform_draws

    key = torch.tensor(draw_key(seed, tensor_name, model_index), device=delta.device)
    return uniform_draws(delta.numel(), key, delta.device).reshape(delta.shape)


@dataclass(frozen=True)
class PackedRanks:
    """Row ranks below 65536 of an even-sized tensor, two per int32 word.

    Word k holds the rank of flat entry k in its low half and of entry
    k + n/2 in its high half: the memory of int16, and a kernel that views the
    tensor as (2, n/2) unpacks them with one shift per row. torch.compile
    vectorizes that; int16 makes it fall back to a scalar loop and uint8 to
    partial loads, both slower (docs/benchmarks.md, design measurements).
    """

    words: torch.Tensor  # int32, shape (1, n/2)
    shape: torch.Size

    @classmethod
    def of(cls, ranks: torch.Tensor) -> PackedRanks:
        n = ranks.numel()
        if n % 2:
            raise ValueError("packed ranks need an even number of entries")
        if n and int(ranks.max()) >= MAX_RANK:
            raise ValueError(f"packed ranks hold ranks below {MAX_RANK}")
        words = torch.zeros(n // 2, dtype=torch.int32, device=ranks.device)
        _pack_into(words, 0, ranks.reshape(-1).to(torch.int32))
        return cls(words.reshape(1, n // 2), ranks.shape)

    def ranks(self) -> torch.Tensor:
        """The ranks as int32, shaped like the task vector."""
        w = self.words.reshape(-1)
        return torch.cat([w & 0xFFFF, (w >> 16) & 0xFFFF]).reshape(self.shape)

    @property
    def nbytes(self) -> int:
        return self.words.numel() * 4


MAX_RANK = 1 << 16


def _pack_into(words: torch.Tensor, start: int, ranks: torch.Tensor) -> None:
    """OR the int32 ranks of flat entries start.. into zeroed ``words`` (n/2,):
    entries of the first half into the low 16 bits of their word, those of the
    second half into the high 16 bits (wrapping into the sign bit: the kernels
    unpack with masks)."""
    half, end = words.numel(), start + ranks.numel()
    if start < half:
        words[start : min(end, half)] |= ranks[: min(end, half) - start]
    if end > half:
        first = max(start, half)
        words[first - half : end - half] |= ranks[first - start :] << 16


def packable(delta: torch.Tensor) -> bool:
    """Whether ``delta``'s row ranks fit PackedRanks (even size, rows below 65537)."""
    return delta.dim() >= 1 and delta.numel() % 2 == 0 and delta.shape[-1] <= MAX_RANK


def row_ranks_packed(
    delta: torch.Tensor, chunk_elements: int = 1 << 22, out: torch.Tensor | None = None
) -> PackedRanks | None:
    """Per-row stable ranks, packed two per int32, computed a block of rows at a time.

    A whole-tensor argsort would hold int64 orders and ranks (4x the float
    tensor each) at once; blocks bound that transient to a few MB, and each
    block's ranks go straight into their words (``out``, (1, n/2) int32, when
    given: the engine's shared rank buffer), so no whole-tensor rank array
    exists. None for tensors whose ranks cannot be packed (odd size, rows over
    65536).
    """
    if not packable(delta):
        return None
    rows = delta.reshape(-1, delta.shape[-1])
    half = delta.numel() // 2
    words = torch.empty(1, half, dtype=torch.int32, device=delta.device) if out is None else out
    words.zero_()
    step = max(1, chunk_elements // rows.shape[-1])
    for start in range(0, rows.shape[0], step):
        r = stable_ranks(rows[start : start + step], True).reshape(-1).to(torch.int32)
        _pack_into(words.view(-1), start * rows.shape[-1], r)
    return PackedRanks(words, delta.shape)


def l1_rescaled(delta: torch.Tensor, masked: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Scale ``masked`` so its L1 norm equals ``delta``'s (mergekit's rescale)."""
    before = delta.abs().sum()
    after = masked.abs().sum()
    if before < eps or after < eps:
        return masked
    return masked * (before / after)
