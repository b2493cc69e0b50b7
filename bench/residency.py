"""Every residency tier, float32 and bfloat16 checkpoints: memory and seconds per candidate.

The same ~1B model (SmolLM2's architecture widened to 1536/4096, random
weights) and 2 synthetic experts, saved once in float32 and once in bfloat16,
are loaded by the resident engine in each tier (device, host, disk), in a
child process each (its own peak RSS). Per run it prints what the planner
says each tier holds, the child's peak RSS beside the issue's ceiling for the
tier (host: (experts + 1) x the stored model + the scored model + 0.5 GB;
disk: the scored model + 1 GB), and ms per candidate against the tier's floor:
the planner's ``floor_seconds`` from the device, host-link and file-read
bandwidths measured in the same child (on a CPU the host link is a memory
copy; the files are in the page cache after the first read, as on any
machine with the RAM to spare).

    python bench/residency.py [--experts 2] [--methods task_arithmetic,ties]
        [--tiers device,host,disk] [--layouts float32,bfloat16]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from common import CACHE, bfloat16_copy, run_child, table, widened_zoo

CHILD = r"""
import json, sys, torch
from materialize import candidate
from optimizer.engine.resident import ResidentMerger
from optimizer.io.checkpoint import Checkpoint
from optimizer.ui.plan import Bandwidths
base, experts, methods, tier = {base!r}, {experts!r}, {methods!r}, {tier!r}
engine = ResidentMerger(base, experts, "cpu", cache_ranks=False, residency=tier)
fp = engine.footprint
bw = Bandwidths.measure(engine.device, Checkpoint(base))
out = {{"resident": fp.resident, "host": fp.host, "describe": fp.describe(), "ms": {{}},
        "floor": bw.floor(fp), "bw": bw.describe()}}
for m in methods:
    cfg = candidate(m, len(experts))
    engine.materialize(cfg)
    out["ms"][m] = min(engine.materialize(cfg) for _ in range(2)) * 1e3
print("RESULT " + json.dumps(out))
"""

RUNTIME = "import torch, transformers, optimizer.engine.resident, safetensors\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--experts", type=int, default=2)
    ap.add_argument("--methods", default="task_arithmetic,ties")
    ap.add_argument("--tiers", default="device,host,disk")
    ap.add_argument("--layouts", default="float32,bfloat16")
    args = ap.parse_args()
    methods = args.methods.split(",")
    base, experts = widened_zoo(args.experts)
    layouts = {"float32": (base, experts)}
    layouts["bfloat16"] = (bfloat16_copy(base), [bfloat16_copy(e) for e in experts])
    _, runtime, _ = run_child([sys.executable, "-c", RUNTIME])
    bench = str(Path(__file__).resolve().parent)
    memory, speed = [], []
    for label in args.layouts.split(","):
        b, es = layouts[label]
        size = (b / "model.safetensors").stat().st_size
        ceiling = {
            "host": (args.experts + 1) * size + size + 0.5e9,
            "disk": size + 1e9,
        }
        for tier in args.tiers.split(","):
            code = CHILD.format(
                base=str(b), experts=[str(e) for e in es], methods=methods, tier=tier
            )
            wall, rss, output = run_child(
                [sys.executable, "-c", f"import sys; sys.path.insert(0, {bench!r})\n" + code]
            )
            line = [ln for ln in output.splitlines() if ln.startswith("RESULT ")]
            if not line:
                sys.exit(f"the {label} {tier} child failed:\n{output[-3000:]}")
            res = json.loads(line[0].removeprefix("RESULT "))
            limit = ceiling.get(tier)
            memory.append(
                [
                    f"{label} ({size / 1e9:.2f} GB a model)",
                    tier,
                    res["describe"],
                    f"{(res['resident'] + res['host']) / 1e9:.2f}",
                    f"{rss / 1e9:.2f}",
                    f"{(rss - runtime) / 1e9:.2f}",
                    "-" if limit is None else f"{limit / 1e9:.2f}",
                    f"{wall:.0f}",
                ]
            )
            floor = res["floor"] * 1e3
            for m, ms in res["ms"].items():
                speed.append([label, tier, m, f"{ms:.0f}", f"{floor:.0f}", f"{ms / floor:.2f}"])
            speed.append([label, tier, "bandwidths", res["bw"], "", ""])
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; cache: {CACHE}")
    print(f"\n~1B widened model + {args.experts} experts; runtime alone {runtime / 1e9:.2f} GB")
    head = [
        "stored",
        "tier",
        "plan",
        "plan GB",
        "peak RSS GB",
        "RSS - runtime",
        "ceiling GB",
        "child s",
    ]
    print(table(head, memory))
    print("\nms per candidate (best of 2 after one, caches off) against the tier's floor")
    print(table(["stored", "tier", "method", "ms", "floor ms", "x floor"], speed))


if __name__ == "__main__":
    main()
