"""The threshold path (kthvalue + tie rule) and the rank-cache path agree exactly."""

from __future__ import annotations

import pytest
import torch

from methods import TensorContext, get_method
from methods.masks import band_mask, derive_seed, floor_count, stable_ranks


@pytest.mark.parametrize("per_row", [True, False])
@pytest.mark.parametrize("low,high", [(0, 0), (3, 0), (0, 4), (5, 2), (9, 1)])
def test_band_mask_threshold_path_equals_rank_path_with_many_ties(per_row, low, high):
    gen = torch.Generator().manual_seed(0)
    # small integers: lots of ties, both signs
    d = torch.randint(-3, 4, (7, 12), generator=gen).float()
    ranks = stable_ranks(d, per_row)
    a = band_mask(d, low, high, per_row)
    b = band_mask(d, low, high, per_row, ranks=ranks)
    assert torch.equal(a, b)
    rows = d.shape[0] if per_row else 1
    assert int((~a).sum()) == rows * (min(low, d.numel() // rows) + high) or low + high > 12


def test_stable_ranks_break_ties_by_position():
    d = torch.tensor([[2.0, -1.0, 1.0, 2.0, 0.5]])
    assert stable_ranks(d, True).tolist() == [[3, 1, 2, 4, 0]]


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


@pytest.mark.parametrize("method", ["ties", "breadcrumbs", "breadcrumbs_ties", "della"])
@pytest.mark.parametrize("compat", ["paper", "mergekit"])
def test_methods_give_same_bytes_with_a_rank_cache(method, compat):
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
    cache = {}

    def ranks(i, per_row):
        key = (i, per_row)
        if key not in cache:
            cache[key] = stable_ranks(deltas[i], per_row)
        return cache[key]

    a = spec.fn(base, deltas, params, TensorContext("w", compat, 3))
    b = spec.fn(base, deltas, params, TensorContext("w", compat, 3, ranks=ranks))
    assert torch.equal(a, b)
    assert cache, "the rank cache was not used"
