"""Every residency tier merges the same bytes as the device tier.

The host tier keeps the models in host memory and the disk tier rereads them
from their files per candidate; both form each tensor's task vectors in
scratch as the bfloat16 device tier does. On a CPU the copies are plain
memory copies, so the code path (sources, scratch, restore) is the one a GPU
runs, minus the copy stream.
"""

from __future__ import annotations

import pytest
import torch
from test_resident import config as merge_config

from methods import COMPAT_MODES, METHODS
from optimizer.config.merge_config import MergeConfig
from optimizer.engine.resident import ResidentMerger
from optimizer.evaluate import memory

TIERS = ("device", "host", "disk")
ZOOS = ("study_zoo", "bf16_zoo")


@pytest.fixture(scope="module")
def engines(request) -> dict[tuple[str, str], ResidentMerger]:
    out = {}
    for zoo_name in ZOOS:
        zoo = request.getfixturevalue(zoo_name)
        for tier in TIERS:
            out[zoo_name, tier] = ResidentMerger(
                zoo["base"], [zoo["e1"], zoo["e2"]], "cpu", residency=tier
            )
    return out


def config(zoo, method: str, compat: str) -> MergeConfig:
    return MergeConfig.from_dict(merge_config(zoo, method, compat))


def test_each_tier_holds_what_it_says(engines):
    for zoo_name in ZOOS:
        device, host, disk = (engines[zoo_name, t] for t in TIERS)
        assert [e.tier for e in (device, host, disk)] == list(TIERS)
        assert host.base is not None and disk.base is None and disk.experts is None
        assert all(t.device.type == "cpu" for t in host.base.values())
        assert host.footprint.host == host.footprint.held and disk.footprint.host > 0
        # off the device, only the scored model and one tensor's scratch stay resident
        assert host.footprint.resident == disk.footprint.resident < device.footprint.resident
    assert engines["study_zoo", "device"].deltas is not None  # float32: formed once
    assert engines["study_zoo", "host"].deltas is None


@pytest.mark.parametrize("compat", COMPAT_MODES)
@pytest.mark.parametrize("method", sorted(set(METHODS) - {"slerp"}))  # the engines hold 2
@pytest.mark.parametrize("zoo_name", ZOOS)
def test_every_tier_merges_the_device_tiers_bytes(engines, zoo_name, method, compat, request):
    zoo = request.getfixturevalue(zoo_name)
    cfg = config(zoo, method, compat)
    results = {}
    for tier in TIERS:
        engine = engines[zoo_name, tier]
        for _ in range(2):  # the second pass uses the caches the first one filled
            engine.materialize(cfg)
        results[tier] = {n: t.detach().clone() for n, t in engine.targets.items()}
    for tier in ("host", "disk"):
        for name, t in results["device"].items():
            assert torch.equal(results[tier][name], t), (tier, name)
    base = engines[zoo_name, "device"]
    assert any(
        not torch.equal(t, base._base_tensor(n).to(t.dtype)) for n, t in results["device"].items()
    )


def test_restore_base_reads_the_base_back(engines, bf16_zoo):
    for tier in ("host", "disk"):
        engine = engines["bf16_zoo", tier]
        engine.materialize(config(bf16_zoo, "task_arithmetic", "paper"))
        engine.restore_base()
        for name, t in engine.targets.items():
            assert torch.equal(t, engine._base_tensor(name).to(t.dtype)), (tier, name)


def test_auto_takes_the_disk_tier_when_the_models_do_not_fit(bf16_zoo, monkeypatch):
    zoo = bf16_zoo
    probe = ResidentMerger(zoo["base"], [zoo["e1"], zoo["e2"]], "cpu", residency="disk")
    need = probe.footprint.resident + probe.footprint.host
    monkeypatch.setattr(memory, "free_bytes", lambda device: need)
    engine = ResidentMerger(zoo["base"], [zoo["e1"], zoo["e2"]], "cpu")
    assert engine.tier == "disk" and engine.base is None
    assert any("tier disk" in n for n in engine.notes), engine.notes


@pytest.mark.parametrize("tier", ["host", "disk"])
def test_the_staged_pipeline_merges_the_same_bytes(tier, bf16_zoo, study_zoo):
    """The double-buffered staging a GPU runs (two sets, the next tensor staged
    while this one merges), run in order on a CPU: every tensor must come from
    its own set, never from one refilled too early."""
    for zoo in (bf16_zoo, study_zoo):
        experts = [zoo["e1"], zoo["e2"]]
        reference = ResidentMerger(zoo["base"], experts, "cpu", residency="device")
        engine = ResidentMerger(zoo["base"], experts, "cpu", residency=tier)
        assert not engine.formed.staged  # a CPU reads in order
        engine.formed = engine._operands(stage=True)
        assert len(engine.formed.staging) == 2
        for method in ("ties", "della", "model_stock"):
            cfg = config(zoo, method, "paper")
            reference.materialize(cfg)
            engine.materialize(cfg)
            for name, t in reference.targets.items():
                assert torch.equal(engine.targets[name], t), (tier, method, name)
