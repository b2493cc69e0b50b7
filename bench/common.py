"""Shared bench helpers: the SmolLM2 zoo with synthetic fine-tunes, child timing."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from optimizer.demo.smollm import export_smollm2  # noqa: E402
from optimizer.io.resources import cache_dir  # noqa: E402

CACHE = Path(os.environ.get("MERGEOPT_BENCH_CACHE") or cache_dir() / "bench")


def synthetic_finetune(base: Path, out: Path, seed: int, scale: float = 0.01) -> Path:
    """The base plus seeded Gaussian noise of ``scale`` × each tensor's std."""
    if (out / "model.safetensors").is_file():
        return out
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(base, tmp)
    gen = torch.Generator().manual_seed(seed)
    tensors = load_file(base / "model.safetensors")
    noisy = {}
    for name in sorted(tensors):
        t = tensors[name]
        std = float(t.float().std()) if t.numel() > 1 else 1.0
        noisy[name] = (t + torch.randn(t.shape, generator=gen) * (scale * std)).contiguous()
    save_file(noisy, tmp / "model.safetensors", metadata={"format": "pt"})
    tmp.rename(out)
    return out


def smollm_zoo(n_experts: int) -> tuple[Path, list[Path]]:
    CACHE.mkdir(parents=True, exist_ok=True)
    base = export_smollm2(CACHE / "smollm2-135m")
    experts = [
        synthetic_finetune(base, CACHE / f"smollm2-ft{i}", seed=100 + i) for i in range(n_experts)
    ]
    return base, experts


def bfloat16_copy(folder: Path) -> Path:
    """``folder`` with its floating-point tensors stored in bfloat16 (cached)."""
    out = folder.with_name(folder.name + "-bf16")
    if (out / "model.safetensors").is_file():
        return out
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(folder, tmp, ignore=shutil.ignore_patterns("*.safetensors"))
    with safe_open(folder / "model.safetensors", "pt") as f:
        tensors = {n: f.get_tensor(n) for n in f.keys()}  # noqa: SIM118 - safe_open has no iter
    for name, t in tensors.items():
        if t.is_floating_point():
            tensors[name] = t.to(torch.bfloat16)
    save_file(tensors, tmp / "model.safetensors", metadata={"format": "pt"})
    config = json.loads((tmp / "config.json").read_text())
    config["torch_dtype"] = config["dtype"] = "bfloat16"
    (tmp / "config.json").write_text(json.dumps(config, indent=2))
    tmp.rename(out)
    return out


def random_model(hidden: int, inter: int, layers: int, vocab: int, seed: int) -> dict:
    gen = torch.Generator().manual_seed(seed)
    heads_kv = hidden // 64 // 3
    shapes = {"model.embed_tokens.weight": (vocab, hidden), "model.norm.weight": (hidden,)}
    for i in range(layers):
        p = f"model.layers.{i}."
        shapes.update(
            {
                p + "self_attn.q_proj.weight": (hidden, hidden),
                p + "self_attn.k_proj.weight": (heads_kv * 64, hidden),
                p + "self_attn.v_proj.weight": (heads_kv * 64, hidden),
                p + "self_attn.o_proj.weight": (hidden, hidden),
                p + "mlp.gate_proj.weight": (inter, hidden),
                p + "mlp.up_proj.weight": (inter, hidden),
                p + "mlp.down_proj.weight": (hidden, inter),
                p + "input_layernorm.weight": (hidden,),
                p + "post_attention_layernorm.weight": (hidden,),
            }
        )
    return stacked(shapes, lambda shape: torch.randn(shape, generator=gen) * 0.02)


def stacked(shapes: dict[str, tuple[int, ...]], make) -> dict[str, torch.Tensor]:
    """Tensors as views of one ``make((count, *shape))`` buffer per shape.

    A buffer is freed (and given back to the OS) with its last view; as many
    separate tensors, freed while the engine copies them into its own
    buffers, they would stay in the allocator's heap and the ~1B case would
    hold its models twice.
    """
    groups: dict[tuple[int, ...], list[str]] = {}
    for name, shape in shapes.items():
        groups.setdefault(tuple(shape), []).append(name)
    out = {}
    for shape, names in groups.items():
        buf = make((len(names), *shape))
        out.update({n: buf[k] for k, n in enumerate(names)})
    return out


def widened_zoo(n_experts: int, hidden: int = 1536, inter: int = 4096) -> tuple[Path, list[Path]]:
    """SmolLM2's architecture widened (~1B at 1536/4096) with random weights, as
    checkpoint folders a study loads: the base and ``n_experts`` noisy copies."""
    CACHE.mkdir(parents=True, exist_ok=True)
    smollm = export_smollm2(CACHE / "smollm2-135m")
    base = CACHE / f"wide-{hidden}x{inter}"
    if not (base / "model.safetensors").is_file():
        tmp = base.with_name(base.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(smollm, tmp, ignore=shutil.ignore_patterns("*.safetensors"))
        config = json.loads((tmp / "config.json").read_text())
        heads = hidden // 64
        config.update(
            hidden_size=hidden,
            intermediate_size=inter,
            num_attention_heads=heads,
            num_key_value_heads=heads // 3,
            head_dim=64,
        )
        (tmp / "config.json").write_text(json.dumps(config, indent=2))
        layers = config["num_hidden_layers"]
        weights = random_model(hidden, inter, layers, config["vocab_size"], 0)
        for name in weights:  # separate storages: safetensors refuses shared ones
            weights[name] = weights[name].clone()
        save_file(weights, tmp / "model.safetensors", metadata={"format": "pt"})
        del weights
        tmp.rename(base)
    experts = [
        synthetic_finetune(base, CACHE / f"wide-{hidden}x{inter}-ft{i}", seed=100 + i)
        for i in range(n_experts)
    ]
    return base, experts


def _peak_rss(pid: int, peak: list[int], done: threading.Event) -> None:
    """Poll the child's own high-water mark (VmHWM) until it exits."""
    while not done.is_set():
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak[0] = max(peak[0], int(line.split()[1]) * 1024)
        except OSError:
            return
        done.wait(0.05)


def run_child(cmd: list[str], env: dict | None = None) -> tuple[float, int, str]:
    """Wall seconds, peak RSS in bytes and combined output of one child process.

    The peak is the child's own VmHWM, polled: getrusage's ru_maxrss would also
    count the parent's resident set at fork (Linux carries it over exec).
    """
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    peak, done = [0], threading.Event()
    watcher = threading.Thread(target=_peak_rss, args=(proc.pid, peak, done), daemon=True)
    watcher.start()
    out = proc.stdout.read().decode(errors="replace")
    proc.wait()
    done.set()
    watcher.join()
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{out[-3000:]}")
    return wall, peak[0], out


def table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    line = lambda r: "| " + " | ".join(str(x).ljust(w) for x, w in zip(r, widths)) + " |"  # noqa: E731
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(header), sep, *map(line, rows)])


def dump_json(path: Path, data) -> None:
    path.write_text(json.dumps(data, indent=2))
