"""Masks: thresholds, caches, rank planes and draws agree with stable ranks exactly."""

from __future__ import annotations

import pytest
import torch

from methods import TensorContext, get_method, run_method
from methods.kernels import uniform_draws
from methods.magnitudes import MagnitudeOrder, Window, keep_ranks, window_mask
from methods.masks import (
    PackedRanks,
    band_mask,
    derive_seed,
    draw_key,
    floor_count,
    stable_ranks,
)


@pytest.mark.parametrize("chunk", [1 << 22, 13, 24])  # one block; a row; blocks of 2 of 7 rows
@pytest.mark.parametrize("per_row", [True, False])
@pytest.mark.parametrize("low,high", [(0, 0), (3, 0), (0, 4), (5, 2), (9, 1)])
def test_band_mask_threshold_path_equals_rank_path_with_many_ties(per_row, low, high, chunk):
    gen = torch.Generator().manual_seed(0)
    # small integers: lots of ties, both signs
    d = torch.randint(-3, 4, (7, 12), generator=gen).float()
    ranks = stable_ranks(d, per_row)
    a = band_mask(d, low, high, per_row, chunk_elements=chunk)
    b = band_mask(d, low, high, per_row, ranks=ranks)
    assert torch.equal(a, b)
    rows = d.shape[0] if per_row else 1
    assert int((~a).sum()) == rows * (min(low, d.numel() // rows) + high) or low + high > 12


def test_stable_ranks_break_ties_by_position():
    d = torch.tensor([[2.0, -1.0, 1.0, 2.0, 0.5]])
    assert stable_ranks(d, True).tolist() == [[3, 1, 2, 4, 0]]


@pytest.mark.parametrize(
    "shape,per_row", [((1100, 1000), True), ((3, 7), True), ((300, 20), False)]
)
def test_stable_ranks_equal_a_stable_argsort_on_both_cpu_paths(shape, per_row):
    """The CPU path sorts (bits, column) keys with NumPy, over threads above
    2^20 entries (the first shape): the ranks of torch's stable argsort."""
    gen = torch.Generator().manual_seed(0)
    d = torch.randint(-40, 41, shape, generator=gen).float() / 8  # many ties, ±0
    d.view(-1)[::7] = -0.0
    rows = d.reshape(-1, shape[-1]) if per_row else d.reshape(1, -1)
    order = torch.argsort(rows.abs(), dim=-1, stable=True)
    want = torch.empty_like(order).scatter_(
        -1, order, torch.arange(rows.shape[-1]).expand_as(order)
    )
    assert torch.equal(stable_ranks(d, per_row), want.reshape(shape))


def test_floor_count_is_robust_to_binary_rounding():
    beta = 1 - 0.9 - 0.01  # 0.0899999... in binary
    assert floor_count(beta, 100) == 9
    assert floor_count(0.2, 5) == 1
    assert floor_count(0.19, 5) == 0


def test_derived_seeds_differ_by_tensor_and_model():
    s = {
        derive_seed(0, "a", 0),
        derive_seed(0, "a", 1),
        derive_seed(0, "b", 0),
        derive_seed(1, "a", 0),
    }
    assert len(s) == 4
    assert derive_seed(5, "x", 2) == derive_seed(5, "x", 2)


CACHE_USE = {  # which per-study cache each method reads, by compat
    ("ties", "paper"): "magnitudes",
    ("ties", "mergekit"): "magnitudes",
    ("breadcrumbs", "paper"): "ranks",
    ("breadcrumbs", "mergekit"): "magnitudes",
    ("breadcrumbs_ties", "paper"): "ranks",
    ("breadcrumbs_ties", "mergekit"): "magnitudes",
    ("della", "paper"): "ranks",
    ("della", "mergekit"): "ranks",
}


@pytest.mark.parametrize("method", ["ties", "breadcrumbs", "breadcrumbs_ties", "della"])
@pytest.mark.parametrize("compat", ["paper", "mergekit"])
def test_methods_give_same_bytes_with_the_study_caches(method, compat):
    """Tie-heavy task vectors: cached ranks / magnitude orders give the uncached bytes."""
    gen = torch.Generator().manual_seed(1)
    deltas = [torch.randint(-4, 5, (16, 24), generator=gen).float() * 0.01 for _ in range(2)]
    base = torch.randn(16, 24, generator=gen)
    spec = get_method(method)
    params = {}
    for p in spec.params:
        default = p.default_for(compat)
        params[p.name] = [default] * 2 if p.scope == "model" else default
    params["density"] = (
        [0.4, 0.6] if method != "breadcrumbs" and method != "breadcrumbs_ties" else [None, None]
    )
    if "gamma" in params:
        params["gamma"] = [0.1, 0.05]
        params["beta"] = [0.3, 0.2]
    used = set()

    def ranks(i, per_row):
        used.add("ranks")
        return PackedRanks.of(stable_ranks(deltas[i], per_row)) if per_row else None

    def magnitudes(i):
        used.add("magnitudes")
        return MagnitudeOrder(deltas[i])

    a = run_method(spec, base, deltas, params, TensorContext("w", compat, 3))
    ctx = TensorContext("w", compat, 3, ranks=ranks, magnitudes=magnitudes)
    b = run_method(spec, base, deltas, params, ctx)
    assert torch.equal(a, b)
    assert CACHE_USE[(method, compat)] in used, f"{method} did not read its cache"


@pytest.mark.parametrize("values", ["distinct", "ties"])
@pytest.mark.parametrize("first,last", [(0, 99), (0, 49), (50, 99), (13, 87), (40, 40), (60, 20)])
def test_magnitude_windows_keep_exactly_the_stable_rank_band(values, first, last):
    """Windows from MagnitudeOrder or kthvalue keep ranks first..last, ties by position,
    and are the same window."""
    gen = torch.Generator().manual_seed(2)
    d = torch.randn(10, 10, generator=gen)
    if values == "ties":
        d = torch.randint(-3, 4, (10, 10), generator=gen).float() * 0.5  # 7 values, -0.0 too
    ranks = stable_ranks(d, per_row=False)
    expected = (ranks >= first) & (ranks <= last)
    windows = [
        keep_ranks([d], [(first, last)], [cached])[0] for cached in (None, MagnitudeOrder(d))
    ]
    assert windows[0] == windows[1]
    w = windows[0]
    assert torch.equal(window_mask(d, w), expected)
    cut = w.lo_pos > 0 or w.hi_pos < d.numel()  # a run of ties is cut by position
    assert cut == (values == "ties" and first <= last and (first, last) != (0, 99))


def test_magnitude_order_is_the_stable_argsort_and_gives_exact_windows():
    d = torch.tensor([0.5, -0.25, 0.25, 3.0, 0.0, -0.5, 1e-30, 0.25])
    order = MagnitudeOrder(d)
    # |d| ascending, equal magnitudes by position: 0.0, 1e-30, 0.25 x3, 0.5 x2, 3.0
    assert order.order.tolist() == [4, 6, 1, 2, 7, 0, 5, 3]
    # ranks 3..5 = (0.25 @2, 0.25 @7, 0.5 @0): both ends cut a run of equals
    assert order.window(d, 3, 5) == Window(0.25, 0.5, lo_pos=2, hi_pos=0)
    # ranks 2..6: 0.25 run whole at the low end, 0.5 run whole at the high end
    assert order.window(d, 2, 6) == Window(0.25, 0.5)
    assert order.window(d, 0, 6) == Window(-1.0, 0.5)  # nothing below rank 0
    big = torch.randn(100_000, generator=torch.Generator().manual_seed(3)) * 0.01
    big[::7] = 0.0  # exact zeros, as in untouched weights
    big_order = MagnitudeOrder(big)
    assert big_order.nbytes == 4 * big.numel()  # int32 positions, no values
    assert torch.equal(
        torch.from_numpy(big_order.order).long(), torch.sort(big.abs(), stable=True).indices
    )


def test_packed_ranks_round_trip():
    r = torch.tensor([[0, 1, 255, 256], [32768, 1000, 65535, 300]])
    packed = PackedRanks.of(r)
    assert packed.words.dtype == torch.int32 and packed.words.numel() == 4
    assert packed.nbytes == 2 * r.numel()  # int16's memory
    assert torch.equal(packed.ranks(), r.int())
    with pytest.raises(ValueError, match="65536"):
        PackedRanks.of(torch.tensor([65536, 0]))
    with pytest.raises(ValueError, match="even"):
        PackedRanks.of(torch.tensor([1, 2, 3]))


def test_uniform_draws_are_counter_based_uniform_and_keyed():
    key = torch.tensor(draw_key(7, "model.layers.0.mlp.up_proj.weight", 1))
    u = uniform_draws(1 << 20, key, "cpu")
    assert u.dtype == torch.float32 and 0 <= float(u.min()) and float(u.max()) < 1
    assert abs(float(u.mean()) - 0.5) < 2e-3 and abs(float(u.std()) - 12**-0.5) < 2e-3
    # a prefix is the same draws: entry i depends only on i and the key
    assert torch.equal(uniform_draws(1000, key, "cpu"), u[:1000])
    # each bit of the 24 kept is balanced, consecutive draws are uncorrelated
    bits = (u * 16777216).long()
    for b in (0, 11, 23):
        assert abs(float(((bits >> b) & 1).float().mean()) - 0.5) < 3e-3
    assert abs(float(torch.corrcoef(torch.stack([u[:-1], u[1:]]))[0, 1])) < 5e-3
    other_key = torch.tensor(draw_key(7, "model.layers.0.mlp.up_proj.weight", 2))
    other = uniform_draws(1000, other_key, "cpu")
    assert float((other == u[:1000]).float().mean()) < 0.01
    # the same bits as lowbias32 written with Python's unbounded integers
    k0, k1 = (int(k) & 0xFFFFFFFF for k in key)
    for i in (0, 1, 12345, (1 << 20) - 1):
        h = _lowbias32(_lowbias32(i ^ k0) ^ k1)
        assert float(u[i]) == (h >> 8) / 16777216


def _lowbias32(x: int) -> int:
    x ^= x >> 16
    x = (x * 0x7FEB352D) & 0xFFFFFFFF
    x ^= x >> 15
    x = (x * 0x846CA68B) & 0xFFFFFFFF
    return x ^ (x >> 16)
