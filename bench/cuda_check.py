"""The resident engine on a CUDA device against the CPU, and each tier against its floor.

Run by bench/gpu_check.sh on a GPU machine. Two tables:

  parity  every method and compat mode on SmolLM2-135M + 2 synthetic experts
          (float32 checkpoints and a bfloat16 copy), merged on the CPU and on
          CUDA: how many tensors come out bit-identical, and the largest
          difference where they do not
  tiers   ms per candidate on the ~1B widened bfloat16 model + 2 experts in
          each tier, against the tier's floor: the device tier's bytes over a
          device-to-device copy's bandwidth, the host tier's held bytes over
          the pinned host-to-device copy bandwidth (both measured in this
          run), the disk tier's over the files' read bandwidth; and the peak
          device memory of each tier beside what the planner said

    python bench/cuda_check.py [--sections parity,tiers] [--methods ...]
"""

from __future__ import annotations

import argparse
import sys

import torch
from common import bfloat16_copy, smollm_zoo, table, widened_zoo
from materialize import candidate

from methods import COMPAT_MODES, METHODS
from optimizer.engine.bandwidth import (
    device_bandwidth,
    file_read_bandwidth,
    host_to_device_bandwidth,
)
from optimizer.engine.footprint import size_text
from optimizer.engine.resident import ResidentMerger


def parity(methods: list[str]) -> None:
    base, experts = smollm_zoo(2)
    rows = []
    for label, b, es in (
        ("float32", base, experts),
        ("bfloat16", bfloat16_copy(base), [bfloat16_copy(e) for e in experts]),
    ):
        cpu = ResidentMerger(b, es, "cpu")
        gpu = ResidentMerger(b, es, "cuda")
        for method in methods:
            for compat in COMPAT_MODES:
                cfg = candidate(method, len(es), compat)
                cpu.materialize(cfg)
                gpu.materialize(cfg)
                same, worst, where = 0, 0.0, ""
                for name, t in cpu.targets.items():
                    g = gpu.targets[name].detach().cpu()
                    if torch.equal(g, t):
                        same += 1
                        continue
                    diff = float((g.float() - t.float()).abs().max())
                    if diff > worst:
                        worst, where = diff, name
                n = len(cpu.targets)
                verdict = "bit-identical" if same == n else f"max |diff| {worst:.3g} ({where})"
                rows.append([label, method, compat, f"{same}/{n}", verdict])
        del cpu, gpu
        torch.cuda.empty_cache()
    print("\nCPU against CUDA, every tensor of the merged model")
    print(table(["stored", "method", "compat", "identical tensors", "otherwise"], rows))


def tiers(methods: list[str]) -> None:
    device = torch.device("cuda")
    base, experts = widened_zoo(2)
    base, experts = bfloat16_copy(base), [bfloat16_copy(e) for e in experts]
    d2d, h2d = device_bandwidth(device), host_to_device_bandwidth(device)
    read = file_read_bandwidth(base / "model.safetensors")
    print(
        f"\nbandwidths: device copy {d2d / 1e9:.0f} GB/s, pinned host to device "
        f"{h2d / 1e9:.1f} GB/s, files {read / 1e9:.1f} GB/s (page cache included)"
    )
    rows = []
    for tier in ("device", "host", "disk"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        engine = ResidentMerger(base, experts, "cuda", cache_ranks=False, residency=tier)
        fp = engine.footprint
        moved = fp.entries * ((fp.experts + 1) * fp.stored.itemsize + fp.scored.itemsize)
        floor = {"device": moved / d2d, "host": fp.held / h2d, "disk": fp.held / read}[tier]
        basis = {"device": "device copy", "host": "host-to-device copy", "disk": "file read"}
        for m in methods:
            cfg = candidate(m, fp.experts)
            engine.materialize(cfg)
            ms = min(engine.materialize(cfg) for _ in range(3)) * 1e3
            rows.append(
                [
                    tier,
                    m,
                    f"{ms:.1f}",
                    f"{floor * 1e3:.1f} ({basis[tier]})",
                    f"{ms / floor / 1e3:.2f}",
                ]
            )
        peak = torch.cuda.max_memory_allocated(device)
        rows.append(
            [tier, "peak device memory", size_text(peak), f"plan {size_text(fp.resident)}", ""]
        )
        del engine
    print("\nms per candidate, ~1B widened bfloat16 model + 2 experts, caches off (best of 3)")
    print(table(["tier", "method", "ms", "floor ms", "x floor"], rows))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sections", default="parity,tiers")
    ap.add_argument("--methods", default=",".join(sorted(set(METHODS) - {"slerp"})))
    ap.add_argument("--tier-methods", default="task_arithmetic,ties,della")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench/cuda_check.py needs a CUDA device")
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}")
    sections = args.sections.split(",")
    if "parity" in sections:
        parity(args.methods.split(","))
    if "tiers" in sections:
        tiers(args.tier_methods.split(","))


if __name__ == "__main__":
    main()
