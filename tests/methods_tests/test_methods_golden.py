"""Golden values for every method and mode on small, hand-checkable tensors."""

from __future__ import annotations

import math

import pytest
import torch

from methods import METHODS, TensorContext, get_method, run_method

B = torch.tensor([1.0, 1.0, 1.0, 1.0, 1.0])
D1 = torch.tensor([0.5, -0.2, 0.1, -0.4, 0.3])
D2 = torch.tensor([-0.3, 0.6, 0.05, -0.1, 0.35])


def run(method: str, params: dict, base=B, deltas=(D1, D2), compat="paper", name="t", seed=0):
    spec = get_method(method)
    full = {}
    for p in spec.params:
        default = p.default_for(compat)
        full[p.name] = [default] * len(deltas) if p.scope == "model" else default
    full.update(params)
    return run_method(
        spec, base.clone(), [d.clone() for d in deltas], full, TensorContext(name, compat, seed)
    )


def close(a, b):
    torch.testing.assert_close(a, torch.tensor(b, dtype=torch.float32), rtol=0, atol=1e-6)


def test_registry_has_every_method():
    assert set(METHODS) == {
        "linear",
        "task_arithmetic",
        "ties",
        "dare_linear",
        "dare_ties",
        "breadcrumbs",
        "breadcrumbs_ties",
        "della",
        "della_linear",
        "model_stock",
        "slerp",
    }


def test_linear_weighted_normalized():
    # b + (1·δ1 + 3·δ2) / 4
    close(run("linear", {"weight": [1.0, 3.0]}), [0.9, 1.4, 1.0625, 0.825, 1.3375])


def test_linear_with_base_as_input_and_unnormalized():
    # base weight 4: b + (δ1 + 3 δ2) / 8
    close(
        run("linear", {"weight": [1.0, 3.0], "base_weight": 4.0}),
        [0.95, 1.2, 1.03125, 0.9125, 1.16875],
    )
    # not normalized: Σ w x = 4 b + δ1 + 3 δ2
    close(run("linear", {"weight": [1.0, 3.0], "normalize": False}), [3.6, 5.6, 4.25, 3.3, 5.35])


def test_linear_zero_weights_is_an_error():
    with pytest.raises(ValueError, match="sum to zero"):
        run("linear", {"weight": [0.0, 0.0]})


def test_task_arithmetic():
    close(
        run("task_arithmetic", {"weight": [1.0, 3.0], "lambda": 0.5}),
        [0.8, 1.8, 1.125, 0.65, 1.675],
    )


# TIES with density 0.6 (k = 3 of 5): τ1 = [.5, 0, 0, -.4, .3], τ2 = [-.3, .6, 0, 0, .35]
def test_ties_paper_unweighted_vote_with_disagreeing_signs():
    # vote Σ τ = [.2, .6, 0, -.4, .65] -> signs [+, +, +(zero), -, +]
    out = run("ties", {"weight": [1.0, 3.0], "density": [0.6, 0.6], "lambda": 1.0})
    close(out, [1.5, 1.6, 1.0, 0.6, 1.3375])  # last: (0.3 + 3·0.35) / 4


def test_ties_mergekit_weighted_vote_flips_entry_zero():
    # vote Σ w τ = [-.4, 1.8, 0, -.4, 1.35]: entry 0 now follows model 2 (-0.3)
    out = run("ties", {"weight": [1.0, 3.0], "density": [0.6, 0.6]}, compat="mergekit")
    close(out, [0.7, 1.6, 1.0, 0.6, 1.3375])


def test_ties_unnormalized_and_lambda():
    out = run(
        "ties", {"weight": [1.0, 3.0], "density": [0.6, 0.6], "normalize": False, "lambda": 2.0}
    )
    close(out, [2.0, 4.6, 1.0, 0.2, 3.7])


def test_ties_density_keeps_at_least_one():
    out = run("ties", {"density": [0.01, 0.01]})  # ⌊0.05⌋ = 0 -> 1 kept
    close(out, [1.5, 1.6, 1.0, 1.0, 1.0])


R1 = torch.tensor([[0.5, -0.2, 0.1, -0.4, 0.3], [0.01, 0.02, -0.9, 0.03, 0.04]])
R0 = torch.zeros(2, 5)


def test_breadcrumbs_paper_is_per_row():
    out = run("breadcrumbs", {"beta": [0.2], "gamma": [0.2]}, base=R0, deltas=(R1,))
    close(out, [[0.0, -0.2, 0.0, -0.4, 0.3], [0.0, 0.02, 0.0, 0.03, 0.04]])


def test_breadcrumbs_density_form_equals_beta_form():
    a = run("breadcrumbs", {"beta": [0.2], "gamma": [0.2]}, base=R0, deltas=(R1,))
    b = run("breadcrumbs", {"density": [0.6], "gamma": [0.2]}, base=R0, deltas=(R1,))
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_breadcrumbs_mergekit_is_per_tensor():
    # n = 10: keep int(0.6·10) = 6, drop int(0.2·10) = 2 at the top, 2 at the bottom
    out = run(
        "breadcrumbs", {"density": [0.6], "gamma": [0.2]}, base=R0, deltas=(R1,), compat="mergekit"
    )
    close(out, [[0.0, -0.2, 0.1, -0.4, 0.3], [0.0, 0.0, 0.0, 0.03, 0.04]])


def test_breadcrumbs_gamma_below_one_entry_drops_no_outlier():
    # ⌊0.1·5⌋ = 0: the largest stays (mergekit <= 0.1.4 zeroed the whole tensor here)
    out = run("breadcrumbs", {"beta": [0.2], "gamma": [0.1]}, base=R0, deltas=(R1,))
    close(out, [[0.5, -0.2, 0.0, -0.4, 0.3], [0.0, 0.02, -0.9, 0.03, 0.04]])
    out = run(
        "breadcrumbs", {"density": [0.8], "gamma": [0.01]}, base=R0, deltas=(R1,), compat="mergekit"
    )
    close(out, [[0.5, -0.2, 0.1, -0.4, 0.3], [0.0, 0.0, -0.9, 0.03, 0.04]])


def test_breadcrumbs_blog_example_done_right():
    base = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5])
    experts = [
        torch.tensor([0.15, 0.3, 0.28, 0.45, 0.7]),
        torch.tensor([0.08, 0.35, 0.31, 0.38, 0.45]),
        torch.tensor([0.12, 0.25, 0.35, 0.42, 0.6]),
    ]
    deltas = tuple(x - base for x in experts)
    masked = [
        run_method(
            get_method("breadcrumbs"),
            torch.zeros(5),
            [d],
            {
                "weight": [1.0],
                "beta": [0.2],
                "gamma": [0.2],
                "density": [None],
                "lambda": 1.0,
                "normalize": False,
            },
            TensorContext("t"),
        )
        for d in deltas
    ]
    torch.testing.assert_close(masked[0], torch.tensor([0.05, 0.1, 0, 0.05, 0]), atol=1e-6, rtol=0)
    torch.testing.assert_close(
        masked[1], torch.tensor([-0.02, 0, 0, -0.02, -0.05]), atol=1e-6, rtol=0
    )
    out = run(
        "breadcrumbs",
        {"weight": [1.0] * 3, "beta": [0.2] * 3, "gamma": [0.2] * 3, "lambda": 0.5},
        base=base,
        deltas=deltas,
    )
    # task 3 has two entries of magnitude 0.02 (in exact arithmetic): either may be dropped
    candidates = [
        torch.tensor([0.115, 0.275, 0.325, 0.425, 0.475]),
        torch.tensor([0.125, 0.275, 0.325, 0.415, 0.475]),
    ]
    assert any(torch.allclose(out, c, atol=1e-6) for c in candidates), out
    assert not torch.allclose(out, torch.tensor([0.1, 0.35, 0.32, 0.425, 0.5]), atol=1e-3)


def test_breadcrumbs_ties_uses_consensus():
    # masks (β = γ = 0.2, n = 5): δ1 -> [0, -.2, 0, -.4, .3], δ2 -> [-.3, 0, 0, -.1, .35]
    out = run("breadcrumbs_ties", {"beta": [0.2, 0.2], "gamma": [0.2, 0.2]})
    # vote [-.3, -.2, 0, -.5, .65] -> m = [-.3, -.2, 0, -.25, .325]
    close(out, [0.7, 0.8, 1.0, 0.75, 1.325])


def test_breadcrumbs_ties_break_by_position():
    d = torch.tensor([0.1, 0.1, 0.1, 0.1])
    # drop 1 smallest (earliest tie) and 1 largest (latest tie)
    out = run("breadcrumbs", {"beta": [0.25], "gamma": [0.25]}, base=torch.zeros(4), deltas=(d,))
    close(out, [0.0, 0.1, 0.1, 0.0])


def test_model_stock_positive_cosine():
    b = torch.zeros(2)
    d1, d2 = torch.tensor([1.0, 0.0]), torch.tensor([1.0, 1.0])
    cos = 1 / math.sqrt(2)
    t = 2 * cos / (1 + cos)
    close(run("model_stock", {}, base=b, deltas=(d1, d2)), [t * 1.0, t * 0.5])


def test_model_stock_three_experts_formula():
    b = torch.ones(3)
    ds = (torch.tensor([1.0, 0, 0]), torch.tensor([1.0, 1, 0]), torch.tensor([1.0, 0, 1]))
    c12, c13, c23 = 1 / math.sqrt(2), 1 / math.sqrt(2), 0.5
    cos = (c12 + c13 + c23) / 3
    t = 3 * cos / (1 + 2 * cos)
    close(run("model_stock", {}, base=b, deltas=ds), [1 + t, 1 + t / 3, 1 + t / 3])


def test_model_stock_negative_cosine_paper_clamps_mergekit_does_not():
    b = torch.tensor([2.0, 2.0])
    d1, d2 = torch.tensor([1.0, 0.0]), torch.tensor([-1.0, 0.5])
    close(run("model_stock", {}, base=b, deltas=(d1, d2)), [2.0, 2.0])
    cos = -1 / math.sqrt(1.25)
    t = 2 * cos / (1 + cos)
    close(run("model_stock", {}, base=b, deltas=(d1, d2), compat="mergekit"), [2.0, 2.0 + t * 0.25])


def test_model_stock_filter_wise():
    b = torch.zeros(2, 2)
    d1 = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    d2 = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    # row 0 cos 1 -> t = 1; row 1 cos 0 -> t = 0
    close(
        run("model_stock", {"filter_wise": True}, base=b, deltas=(d1, d2)), [[1.0, 0.0], [0.0, 0.0]]
    )


def test_slerp_orthogonal_and_near_parallel():
    v0 = torch.tensor([2.0, 0.0])
    v1 = torch.tensor([0.0, 1.0])
    s = math.sin(math.pi / 4)
    close(run("slerp", {"t": 0.5}, base=v0, deltas=(v1 - v0,)), [2 * s, s])
    close(run("slerp", {"t": 0.0}, base=v0, deltas=(v1 - v0,)), [2.0, 0.0])
    close(run("slerp", {"t": 1.0}, base=v0, deltas=(v1 - v0,)), [0.0, 1.0])
    w1 = torch.tensor([1.0, 0.001])
    v0 = torch.tensor([1.0, 0.0])
    # |cos| > 0.9995: linear interpolation
    close(run("slerp", {"t": 0.25}, base=v0, deltas=(w1 - v0,)), [1.0, 0.00025])


def test_della_probabilities_and_unbiased_rescale_paper():
    # 20000 rows, each a permutation of magnitudes 1..5: keep prob. by rank 0.3..0.7
    gen = torch.Generator().manual_seed(0)
    rows = torch.stack([torch.randperm(5, generator=gen) for _ in range(20000)]).float() + 1
    out = run(
        "della_linear",
        {"density": [0.5], "epsilon": [0.2], "lambda": 1.0},
        base=torch.zeros_like(rows),
        deltas=(rows,),
    )
    kept = out != 0
    for rank, q in enumerate([0.3, 0.4, 0.5, 0.6, 0.7]):
        freq = kept[rows == rank + 1].float().mean().item()
        assert abs(freq - q) < 0.015, (rank, freq, q)
        # survivors divided by their own q
        vals = out[(rows == rank + 1) & kept]
        torch.testing.assert_close(vals, torch.full_like(vals, (rank + 1) / q))
        # expectation preserved
        assert abs(out[rows == rank + 1].mean().item() - (rank + 1)) < 0.1 * (rank + 1)


def test_della_mergekit_rescale_matches_l1():
    d = torch.randn(50, 40, generator=torch.Generator().manual_seed(1))
    out = run(
        "della_linear",
        {"density": [0.5], "epsilon": [0.1]},
        base=torch.zeros_like(d),
        deltas=(d,),
        compat="mergekit",
    )
    torch.testing.assert_close(out.abs().sum(), d.abs().sum())
    assert 0.4 < (out != 0).float().mean().item() < 0.6


def test_della_ties_elects():
    d1 = torch.full((1000,), 1.0)
    d2 = torch.full((1000,), -3.0)
    out = run(
        "della",
        {"density": [0.7, 0.7], "epsilon": [0.0, 0.0], "rescale": False},
        base=torch.zeros(1000),
        deltas=(d1, d2),
    )
    # where both survive, the vote (1 - 3 < 0) keeps only model 2's -3
    assert set(out.unique().tolist()) <= {1.0, -3.0, 0.0}
    both = out == -3.0
    assert both.any() and (out == 1.0).any()


def test_dare_rescale_preserves_expectation_paper():
    d = torch.full((200_000,), 0.5)
    out = run("dare_linear", {"density": [0.3]}, base=torch.zeros_like(d), deltas=(d,))
    assert abs((out != 0).float().mean().item() - 0.3) < 0.005
    values = out.unique()
    assert len(values) == 2 and values[0] == 0.0
    assert values[1].item() == pytest.approx(0.5 / 0.3)
    assert abs(out.mean().item() - 0.5) < 0.01


def test_dare_mergekit_rescale_matches_l1_norm():
    d = torch.randn(10_000, generator=torch.Generator().manual_seed(2))
    out = run(
        "dare_linear", {"density": [0.4]}, base=torch.zeros_like(d), deltas=(d,), compat="mergekit"
    )
    torch.testing.assert_close(out.abs().sum(), d.abs().sum())


def test_dare_ties_consensus_after_drop():
    d1 = torch.full((4000,), 1.0)
    d2 = torch.full((4000,), -1.0)
    out = run(
        "dare_ties",
        {"density": [0.5, 0.5], "rescale": False},
        base=torch.zeros(4000),
        deltas=(d1, d2),
    )
    # both kept: vote 0 -> + -> 1.0; only one kept: that one; none: 0
    assert set(out.unique().tolist()) == {-1.0, 0.0, 1.0}


@pytest.mark.parametrize("method", ["dare_linear", "dare_ties", "della", "della_linear"])
def test_random_methods_reproducible_and_seed_dependent(method):
    d = torch.randn(64, 32, generator=torch.Generator().manual_seed(3))
    e = torch.randn(64, 32, generator=torch.Generator().manual_seed(4))
    kw = {"base": torch.zeros(64, 32), "deltas": (d, e)}
    a = run(method, {}, seed=7, **kw)
    b = run(method, {}, seed=7, **kw)
    c = run(method, {}, seed=8, **kw)
    other_tensor = run(method, {}, seed=7, name="u", **kw)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert not torch.equal(a, other_tensor)


def test_zero_dim_tensors_pass_through_unmasked():
    out = run(
        "ties",
        {"density": [0.1, 0.1]},
        base=torch.tensor(1.0),
        deltas=(torch.tensor(0.5), torch.tensor(0.25)),
    )
    close(out, 1.375)


def test_every_registered_method_has_a_golden_test():
    """A method added to the registry fails here until it has hand-checked numbers:
    some golden test must name it (in ``run``, ``get_method``, a parametrization)."""
    import inspect
    import re
    import sys

    module = sys.modules[__name__]
    named = set()
    for name, fn in vars(module).items():
        if name.startswith("test_") and name not in (
            "test_every_registered_method_has_a_golden_test",
            "test_registry_has_every_method",
        ):
            source = inspect.getsource(fn)
            marks = getattr(fn, "pytestmark", [])
            source += " ".join(repr(m.args) for m in marks)
            named |= set(re.findall(r"[\"']([a-z_]+)[\"']", source)) & set(METHODS)
    named.discard("")
    missing = sorted(set(METHODS) - named)
    assert not missing, f"no golden test names {missing}"
