"""Every registered method's kernel path equals its plain-torch reference form.

The reference forms (``MethodSpec.reference``) spell each method out as
readable math: masks from stable magnitude ranks and the seeded per-tensor
draws, rescaling, then a weighted sum or TIES' election. The kernels fuse all
of it into one pass; here they must agree, for every method in the registry
(derived, so a new method is covered the day it is registered), both compat
modes, each start point and a point in the middle of the search ranges, on
tensors with ties in magnitude (quantized task vectors) and odd sizes.
"""

from __future__ import annotations

import pytest
import torch

from methods import METHODS, TensorContext, run_method

SHAPES = [(12, 10), (7, 9), (33,)]


def points(spec) -> list[dict]:
    middle = {
        p.name: (p.search[0] + p.search[1]) / 2
        for p in spec.params
        if p.search is not None and p.kind is float and p.reparam is None
    }
    return [*spec.start_points, middle]


def full_params(spec, point: dict, compat: str, n: int) -> dict:
    out = {}
    for p in spec.params:
        value = point.get(p.name, p.default_for(compat))
        out[p.name] = [value] * n if p.scope == "model" else value
    if "weight" in out:
        out["weight"] = [0.7, -0.4, 1.1][:n]
    return out


def tensors(shape, n: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    base = torch.randn(shape, generator=gen)
    deltas = []
    for i in range(n):
        d = torch.randn(shape, generator=gen) * 0.1
        if i == n - 1 or len(shape) == 2 and shape[0] % 2:  # quantized: ties in magnitude,
            d = torch.round(d * 20) / 20  # and votes that cancel exactly
        deltas.append(d)
    return base, deltas


@pytest.mark.parametrize("compat", ["paper", "mergekit"])
@pytest.mark.parametrize("method", list(METHODS))
def test_the_kernel_path_equals_the_reference_form(method, compat):
    spec = METHODS[method]
    assert spec.reference is not None, f"{method} declares no reference form"
    n = 1 if spec.max_experts == 1 else 3
    for k, point in enumerate(points(spec)):
        params = full_params(spec, point, compat, n)
        for shape in SHAPES:
            base, deltas = tensors(shape, n, seed=k)
            ctx = TensorContext(f"layers.{k}.w", compat, seed=5)
            fused = run_method(spec, base.clone(), [d.clone() for d in deltas], params, ctx)
            ref = spec.reference(base.clone(), [d.clone() for d in deltas], params, ctx)
            torch.testing.assert_close(
                fused, ref, rtol=1e-5, atol=1e-6, msg=f"{method} {compat} {point} {shape}"
            )
