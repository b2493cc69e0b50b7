from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from tiny_models import build_tokenizer, perturbed_copy, save_model, tiny_llama

WORDS = "the cat sat on a mat dog ran to park one two three four five plus equals".split()


@pytest.fixture(scope="session")
def tiny_zoo(tmp_path_factory) -> dict[str, Path]:
    """A tiny Llama base and two seeded 'fine-tunes', sharded on disk."""
    root = tmp_path_factory.mktemp("zoo")
    tok = build_tokenizer(WORDS)
    base = tiny_llama(len(tok), seed=0)
    out = {"base": save_model(base, tok, root / "base", max_shard_size="40KB")}
    for i, name in enumerate(("math", "code")):
        out[name] = save_model(perturbed_copy(base, 0.02, seed=10 + i), tok, root / name)
    return out


def demo_words() -> list[str]:
    import json

    words = set(WORDS)
    for f in (Path(__file__).resolve().parents[1] / "eval_tasks" / "demo").glob("*.jsonl"):
        for line in f.read_text().splitlines():
            doc = json.loads(line)
            words.update(doc["question"].split())
            words.update(doc["choices"])
    return sorted(words)


@pytest.fixture(scope="session")
def study_zoo(tmp_path_factory) -> dict[str, Path]:
    """A tiny base and two experts whose tokenizer knows the demo tasks' words."""
    root = tmp_path_factory.mktemp("study_zoo")
    tok = build_tokenizer(demo_words())
    base = tiny_llama(len(tok), hidden=32, layers=2, seed=1)
    out = {"base": save_model(base, tok, root / "base")}
    for i, name in enumerate(("e1", "e2")):
        out[name] = save_model(perturbed_copy(base, 0.05, seed=20 + i), tok, root / name)
    return out


@pytest.fixture(scope="session")
def bf16_zoo(tmp_path_factory) -> dict[str, Path]:
    """The study zoo's architecture saved in bfloat16, experts further apart
    than bfloat16's step so their task vectors are not mostly zero."""
    root = tmp_path_factory.mktemp("bf16_zoo")
    tok = build_tokenizer(demo_words())
    base = tiny_llama(len(tok), hidden=32, layers=2, seed=1)
    out = {"base": save_model(base.to(torch.bfloat16), tok, root / "base")}
    for i, name in enumerate(("e1", "e2")):
        expert = perturbed_copy(base.float(), 0.05, seed=20 + i)
        out[name] = save_model(expert.to(torch.bfloat16), tok, root / name)
    return out


def write_study(folder: Path, zoo: dict[str, Path], **overrides) -> Path:
    import yaml

    cfg = {
        "study": "t",
        "base_model": str(zoo["base"]),
        "models": [str(zoo["e1"]), str(zoo["e2"])],
        "methods": ["task_arithmetic", "ties", "della"],
        "objective": {
            "tasks": [
                {"task": "demo_kinds", "metric": "acc", "heldout": "demo_kinds_heldout"},
                {"task": "demo_larger", "metric": "acc", "weight": 2},
            ],
            "limit": 8,
            "batch_size": 8,
        },
        "n_trials": 4,
        "heartbeat_interval": 1,
    }
    for key, value in overrides.items():
        if value is None:
            cfg.pop(key, None)
        else:
            cfg[key] = value
    path = folder / "study.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def with_non_finite(
    src: Path, dst: Path, value: float = float("nan"), count: int = 1
) -> tuple[Path, str]:
    """A copy of model folder ``src`` whose first mlp tensor holds ``count`` × ``value``,
    and that tensor's name."""
    import shutil

    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst)
    (weights,) = dst.glob("*.safetensors")
    state = load_file(weights)
    name = next(n for n in sorted(state) if "mlp" in n)
    state[name].view(-1)[:count] = value
    save_file(state, weights, metadata={"format": "pt"})
    return dst, name


@pytest.fixture
def read_only_dir(tmp_path):
    """A folder no one may write in, root included (immutable attribute when root)."""
    import os
    import subprocess

    folder = tmp_path / "ro"
    folder.mkdir()
    if os.geteuid() == 0:
        if subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode:
            pytest.skip("running as root without chattr +i: cannot make a read-only folder")
        yield folder
        subprocess.run(["chattr", "-i", str(folder)], check=True)
    else:
        folder.chmod(0o500)
        yield folder
        folder.chmod(0o700)


PROBE = "model.layers.0.mlp.down_proj.weight"


@pytest.fixture
def scripted(study_zoo, monkeypatch):
    """Items scored by a scripted rule on the merged weights (``install_scripted``)."""
    return install_scripted(study_zoo, monkeypatch)


def install_scripted(study_zoo, monkeypatch) -> list[int]:
    """Items scored by how close the resident model's probe tensor is to e1's:
    e1 alone passes 85 % of the items, the base 5 %, a merge in between."""
    from safetensors.torch import load_file

    from optimizer.evaluate.base import ItemScore
    from optimizer.evaluate.fast import FastEvaluator

    target = load_file(next(study_zoo["e1"].glob("*.safetensors")))[PROBE]
    base = load_file(next(study_zoo["base"].glob("*.safetensors")))[PROBE]
    span = float((target - base).norm())
    calls: list[int] = []

    def quality(model) -> float:
        w = dict(model.named_parameters())[PROBE].detach().float()
        return min(0.85, max(0.05, 0.85 - 0.8 * float((w - target).norm()) / span))

    def score_items(self, items):
        calls.append(len(items))
        q = quality(self.lm.model)
        values = [float(random.Random(f"{n}/{i}").random() < q) for n, i in items]
        return [ItemScore(v, v) for v in values]

    monkeypatch.setattr(FastEvaluator, "score_items", score_items)
    return calls
