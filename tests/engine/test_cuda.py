"""The engine on a CUDA device: the CPU's merges, and the same bytes in every tier.

Skipped without a GPU; `bench/gpu_check.sh` runs them on one. Elementwise
kernels run eagerly on CUDA, one op per kernel, so their rounding is the
CPU's; per-tensor reductions (Model Stock's norms, SLERP's angle, DELLA's and
Breadcrumbs' ranks among equal magnitudes) may sum in another order, so CPU
and CUDA are compared within float32 rounding here and bench/cuda_parity.py
prints which methods come out bit-identical. Between the tiers on one device
nothing may differ: only where the inputs come from changes.
"""

from __future__ import annotations

import pytest
import torch
from test_tiers import config

from methods import COMPAT_MODES, METHODS
from optimizer.engine.resident import ResidentMerger

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
METHOD_NAMES = sorted(set(METHODS) - {"slerp"})


@pytest.fixture(scope="module")
def engines(bf16_zoo, study_zoo) -> dict[tuple[str, str], ResidentMerger]:
    out = {}
    for label, zoo in (("bf16", bf16_zoo), ("f32", study_zoo)):
        experts = [zoo["e1"], zoo["e2"]]
        out[label, "cpu"] = ResidentMerger(zoo["base"], experts, "cpu")
        for tier in ("device", "host", "disk"):
            out[label, tier] = ResidentMerger(zoo["base"], experts, "cuda", residency=tier)
    return out


@pytest.mark.parametrize("compat", COMPAT_MODES)
@pytest.mark.parametrize("method", METHOD_NAMES)
@pytest.mark.parametrize("label", ["bf16", "f32"])
def test_cuda_tiers_merge_the_same_bytes_and_the_cpus_numbers(
    engines, label, method, compat, bf16_zoo, study_zoo
):
    zoo = bf16_zoo if label == "bf16" else study_zoo
    cfg = config(zoo, method, compat)
    merged = {}
    for where in ("cpu", "device", "host", "disk"):
        engine = engines[label, where]
        assert where == "cpu" or engine.tier == where
        for _ in range(2):  # the second pass uses the caches the first one filled
            engine.materialize(cfg)
        merged[where] = {n: t.detach().cpu().clone() for n, t in engine.targets.items()}
    for tier in ("host", "disk"):
        for name, t in merged["device"].items():
            assert torch.equal(merged[tier][name], t), (tier, name)
    for name, t in merged["device"].items():
        cpu = merged["cpu"][name]
        if label == "bf16":  # one bfloat16 step apart at most, where a float32 sum rounds
            assert torch.allclose(t.float(), cpu.float(), rtol=1e-2, atol=1e-2), name
        else:
            assert torch.allclose(t, cpu, rtol=1e-5, atol=1e-6), name


def test_a_host_tier_study_streams_with_little_on_the_device(engines):
    host, device = engines["bf16", "host"], engines["bf16", "device"]
    assert host.footprint.resident < device.footprint.resident
    assert all(t.device.type == "cpu" and t.is_pinned() for t in host.base.values())
