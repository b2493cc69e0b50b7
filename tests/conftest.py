from __future__ import annotations

from pathlib import Path

import pytest
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
