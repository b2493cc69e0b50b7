"""What a study will hold, where, and how fast a candidate can be: before loading.

``mergeopt run`` prints one line of it; ``mergeopt plan`` prints every tier
side by side, so a user of a 7B-70B model sees before any download finishes
loading which tier the machine allows and what each costs. The numbers are the
planner's own (``optimizer.engine.footprint``), the bandwidths measured now.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from rich.table import Table

from optimizer.engine.bandwidth import (
    device_bandwidth,
    file_read_bandwidth,
    host_to_device_bandwidth,
)
from optimizer.engine.footprint import TIERS, Footprint, floor_seconds, size_text
from optimizer.errors import ModelError
from optimizer.io.checkpoint import Checkpoint


@dataclass(frozen=True)
class Bandwidths:
    device: float  # within the compute device's memory
    link: float  # host to device (a host copy on a CPU)
    read: float  # the base's largest file into memory
    cuda: bool = False

    @classmethod
    def measure(cls, device: torch.device, base: Checkpoint) -> Bandwidths:
        largest = max({info.file for info in base.tensors.values()}, key=lambda f: f.stat().st_size)
        within = device_bandwidth(device)
        link = host_to_device_bandwidth(device) if device.type == "cuda" else within
        return cls(within, link, file_read_bandwidth(largest), device.type == "cuda")

    def floor(self, fp: Footprint) -> float:
        return floor_seconds(fp, self.device, self.link, self.read)

    def describe(self) -> str:
        link = f"host link {self.link / 1e9:.1f} GB/s, " if self.cuda else ""
        return f"memory {self.device / 1e9:.1f} GB/s, {link}files {self.read / 1e9:.1f} GB/s, measured now"


def plan_line(fp: Footprint, device: torch.device, free: int, bw: Bandwidths) -> str:
    """The plan as ``mergeopt run`` prints it before loading."""
    return (
        f"{fp.describe()} on {device}, {size_text(free)} free; "
        f"a candidate takes at least {bw.floor(fp):.2f} s ({bw.describe()})"
    )


def tier_table(
    wanted: Footprint, device: torch.device, free_device: int, free_host: int, bw: Bandwidths
) -> Table:
    """Every tier for this study on this machine: bytes where, whether it fits, the floor."""
    from optimizer.engine.footprint import plan_residency

    cuda = device.type == "cuda"
    title = f"residency tiers on {device}" + ("" if cuda else " (host memory is the device's)")
    table = Table(title=title)
    for col in ("tier", f"on {device}", "in host memory", "caches", "fits", "s per candidate ≥"):
        table.add_column(col)
    for tier in TIERS:
        if tier == "host" and not cuda:
            continue  # one memory on a CPU: the host tier only adds a copy
        fp = replace(wanted, tier=tier, cuda=cuda)
        try:
            planned, _ = plan_residency(fp, tier, device, free_device, free_host)
            fits, caches = "yes", size_text(planned.cache_bytes) if planned.caches else "left out"
        except ModelError:
            planned, fits, caches = fp, "no", "-"
        table.add_row(
            tier,
            size_text(planned.resident),
            size_text(planned.host) if cuda or planned.host else "-",
            caches if wanted.caches else "none used",
            fits,
            f"{bw.floor(planned):.2f}",
        )
    return table
