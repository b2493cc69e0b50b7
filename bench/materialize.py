"""Candidate materialization against the memory-bandwidth floor, in one run.

Inside a study a candidate is tensor math on resident tensors: base and task
vectors are read, the merged model is written. The floor is those bytes over
the bandwidth of a large tensor operation measured in this same run (an
in-place add on the CPU, a device-to-device copy on CUDA), so the ratios hold
on a busy or a different machine. Sections:

  methods   ms per candidate for every method on SmolLM2-135M + 3 synthetic
            experts (after a warm-up that fills the per-study caches), the floor,
            the random-draw time (DARE/DELLA), the ratio and the issue's target
  mergekit  the same merges run by `mergekit-yaml` (reread + rewrite everything)
  scaling   ms per candidate against model size (135M, ~1B random widened) and
            number of experts (2, 4, 8), with ms per GB moved
  memory    peak RSS of a study process against (experts + 2.5) x model size:
            SmolLM2-135M + 3 experts with and without the per-study caches,
            the ~1B widened architecture + 2 experts without them
  overhead  per-trial time outside materialization and forward passes, demo study

    python bench/materialize.py [--sections methods,mergekit,...] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from common import random_model, smollm_zoo, stacked, table

from methods import METHODS
from optimizer.config.merge_config import MergeConfig
from optimizer.engine.resident import ResidentMerger

# every method with a kernel path, at its registry start point (the last of several)
METHOD_PARAMS = {n: dict(s.start_points[-1]) for n, s in METHODS.items() if s.inputs != "pair"}
# the targets: multiples of the floor (+ the random draws for random masks)
TARGET = {
    "linear": 2,
    "task_arithmetic": 2,
    "ties": 4,
    "breadcrumbs": 4,
    "breadcrumbs_ties": 4,
    "model_stock": 4,
    "dare_linear": 2,
    "dare_ties": 2,
    "della": 2,
    "della_linear": 2,
}
missing = sorted(set(METHOD_PARAMS) - set(TARGET))
if missing:
    sys.exit(f"bench/materialize.py: give {missing} a target (multiple of the floor) in TARGET")
RANDOM = {n for n, s in METHODS.items() if s.random}


def candidate(method: str, n_experts: int, compat: str = "paper") -> MergeConfig:
    models = [
        {"model": f"e{i}", "parameters": {"weight": 1.0 / n_experts}} for i in range(n_experts)
    ]
    if "weight" not in METHODS[method].param_names:
        models = [{"model": f"e{i}"} for i in range(n_experts)]
    cfg = {
        "merge_method": method,
        "base_model": "base",
        "models": models,
        "parameters": dict(METHOD_PARAMS[method]),
        "compat": compat,
        "seed": 1,
    }
    return MergeConfig.from_dict(cfg)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def best_time(fn, repeat: int, device: torch.device) -> float:
    times = []
    for _ in range(repeat):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return min(times)


def bandwidth(device: torch.device, elements: int = 1 << 26) -> tuple[float, str]:
    """Bytes per second of a large tensor op: in-place add (CPU) or copy (CUDA)."""
    a = torch.rand(elements, device=device)
    b = torch.rand(elements, device=device)
    if device.type == "cuda":
        t = best_time(lambda: a.copy_(b), 10, device)
        return 2 * 4 * elements / t, "device-to-device copy"
    t = best_time(lambda: a.add_(b), 7, device)
    return 3 * 4 * elements / t, "in-place add"


def draw_time(engine: ResidentMerger, n_experts: int) -> float:
    """Seconds to draw one uniform per task-vector entry with the engine's own
    counter-based generator (a compiled kernel writing them, eager on CUDA)."""
    from methods.kernels import uniform_draws
    from methods.masks import draw_key

    def fill(key: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        return out.copy_(uniform_draws(out.numel(), key, out.device))

    fill_fast = torch.compile(fill, dynamic=True) if engine.device.type == "cpu" else fill
    outs = {name: torch.empty_like(engine.base[name]).reshape(-1) for name in engine.names}
    keys = {
        (n, i): torch.tensor(draw_key(1, n, i), device=engine.device)
        for n in engine.names
        for i in range(n_experts)
    }

    def draw():
        for name in engine.names:
            for i in range(n_experts):
                fill_fast(keys[name, i], outs[name])

    draw()  # compile, first touch
    return best_time(draw, 3, engine.device)


def moved_bytes(engine: ResidentMerger) -> int:
    n = sum(t.numel() for t in engine.base.values())
    return (len(engine.deltas) + 2) * 4 * n


def time_method(engine: ResidentMerger, method: str, repeat: int) -> tuple[float, float]:
    """(first candidate's seconds: per-study caches, kernel compile; then the best of ``repeat``)."""
    cfg = candidate(method, len(engine.deltas))
    first = engine.materialize(cfg)
    return first, min(engine.materialize(cfg) for _ in range(repeat))


def section_methods(engine, device, repeat, methods) -> dict[str, float]:
    """Each method against the floor and the draws measured right before it.

    A shared machine's bandwidth drifts by tens of percent within minutes, so
    every ratio uses references taken next to it, all as the best of several runs.
    """
    moved = moved_bytes(engine)
    params = sum(t.numel() for t in engine.base.values())
    print(
        f"\n{moved / 1e9:.2f} GB moved per candidate; draws: {len(engine.deltas)} x "
        f"{params / 1e6:.0f}M uniforms"
    )
    rows, times = [], {}
    for method in methods:
        bw, floor_kind = bandwidth(device)
        floor = moved / bw
        draws = draw_time(engine, len(engine.deltas)) if method in RANDOM else 0.0
        first, t = time_method(engine, method, repeat)
        times[method] = t
        allowed = TARGET[method] * floor + draws
        rows.append(
            [
                method,
                f"{t * 1e3:.0f}",
                f"{floor * 1e3:.0f} ({bw / 1e9:.0f} GB/s)",
                f"{draws * 1e3:.0f}" if draws else "",
                f"{t / floor:.2f}",
                f"{TARGET[method]}x floor" + (" + draws" if method in RANDOM else ""),
                f"{t / allowed:.2f}",
                "yes" if t <= allowed else "NO",
                f"{first:.1f}",
            ]
        )
    header = ["method", "ms", "floor ms", "draws ms", "x floor", "target", "x target", "met"]
    print(table([*header, "first s"], rows))
    print(f"floor: {floor_kind}; x target = ms / target ms; first s = first candidate")
    print(
        f"per-study caches after all methods: {engine.cache_bytes() / 1e9:.2f} GB "
        f"({engine.cache_bytes() / (moved / (len(engine.deltas) + 2)):.2f} x model)"
    )
    return times


def _noisy(buffers: dict[tuple[int, ...], torch.Tensor], seed: int):
    """make((count, *shape)): the base buffer of that shape plus seeded noise."""
    gen = torch.Generator().manual_seed(seed)
    return lambda shape: buffers[shape[1:]] + torch.randn(shape, generator=gen) * 1e-3


def random_engine(hidden, inter, layers, n_experts, device, vocab=49152) -> ResidentMerger:
    base = random_model(hidden, inter, layers, vocab, 0)
    shapes = {n: tuple(t.shape) for n, t in base.items()}
    buffers = {tuple(t.shape): t._base for t in base.values()}  # the views' buffers
    experts = [stacked(shapes, _noisy(buffers, 100 + i)) for i in range(n_experts)]
    buffers.clear()  # the base buffers go with the engine's copy of their last view
    return ResidentMerger.in_memory(base, experts, layers, str(device))


def section_scaling(device, repeat, methods, large_methods) -> list[list[str]]:
    """ms per candidate against bytes moved: SmolLM2-135M's shape (576/1536/30) with
    2, 4 and 8 experts, and the same architecture widened to ~1B (1536/4096/30)
    with 2 experts, where every method is checked against its target too."""
    shapes = {"135M": (576, 1536, 30), "1B": (1536, 4096, 30)}
    cases = [("135M", 2, methods), ("135M", 4, methods), ("135M", 8, methods)]
    cases.append(("1B", 2, large_methods))
    rows = []
    for size, n_experts, names in cases:
        engine = random_engine(*shapes[size], n_experts, device)
        params = sum(t.numel() for t in engine.base.values())
        moved = moved_bytes(engine)
        for method in names:
            bw, _ = bandwidth(device)
            floor = moved / bw
            draws = draw_time(engine, n_experts) if method in RANDOM else 0.0
            _, t = time_method(engine, method, repeat)
            engine.drop_caches()  # one method's caches at a time: the 1B case fits in 24 GiB
            allowed = TARGET[method] * floor + draws
            rows.append(
                [
                    f"{size} ({params / 1e6:.0f}M)",
                    str(n_experts),
                    method,
                    f"{moved / 1e9:.2f}",
                    f"{t * 1e3:.0f}",
                    f"{t / moved * 1e12:.0f}",
                    f"{t / floor:.2f}",
                    f"{draws * 1e3:.0f}" if draws else "",
                    f"{t / allowed:.2f}",
                ]
            )
        del engine
    header = ["model", "experts", "method", "GB moved", "ms", "ms/GB", "x floor", "draws ms"]
    print(table([*header, "x target"], rows))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sections", default="methods,mergekit,scaling,memory,overhead")
    ap.add_argument("--methods", default=",".join(METHOD_PARAMS))
    ap.add_argument("--scaling-methods", default="task_arithmetic,ties,dare_ties")
    ap.add_argument("--large-methods", default=",".join(METHOD_PARAMS))
    ap.add_argument(
        "--mergekit-methods", default="linear,task_arithmetic,ties,breadcrumbs,della,model_stock"
    )
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--experts", type=int, default=3)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    sections = args.sections.split(",")
    device = torch.device(args.device)
    torch.manual_seed(0)
    print(
        f"device: {torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'}, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}"
    )
    methods = args.methods.split(",")
    times: dict[str, float] = {}
    if "methods" in sections:
        base, experts = smollm_zoo(args.experts)
        engine = ResidentMerger(base, experts, str(device))
        times = section_methods(engine, device, args.repeat, methods)
        del engine
    if "mergekit" in sections and times:
        from sections import mergekit_speedup

        mergekit_speedup(args.experts, times, args.mergekit_methods.split(","))
    if "memory" in sections:
        from sections import study_memory

        study_memory(args.experts)
    if "overhead" in sections:
        from sections import trial_overhead

        trial_overhead()
    # last: the ~1B engine leaves this process tens of GB that children would add to
    if "scaling" in sections:
        section_scaling(
            device, args.repeat, args.scaling_methods.split(","), args.large_methods.split(",")
        )


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main()
