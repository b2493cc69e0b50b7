"""A hard benchmark of our own: three experts, each taught facts the base cannot know.

SmolLM2-135M-Instruct is the base; each expert is fine-tuned on one body of
made-up facts (the colour of a made-up country's flag, a made-up person's
job, what a made-up creature eats), 4 possible answers each. Experts learn
their facts from three phrasings; the search scores a fourth and the held-out
split a fifth, so a merge is rewarded for the knowledge, not the wording. A
retention task the base does well on (the capitals of real countries, 0.95
search / 1.00 held-out for the base) rides along. Merging three experts dilutes each one's task vector, so simple merges
fall well short of each expert on its own facts: there is room to win.

Built once into the bench cache (about 10 minutes on 2 cores); later calls
reuse it. ``python bench/knowledge.py`` builds it and prints each model's
scores.
"""

from __future__ import annotations

import json
import random
import sys
from dataclasses import dataclass
from pathlib import Path

from common import CACHE, smollm_zoo

from optimizer.demo.skills import TASK_YAML, Item

ROOT = CACHE / "knowledge"
N_FACTS = 64
SYLLABLES = "ka lo mi ne ru ta vo zi pe sa do lu ri fe ga mo ti be na ko".split()


@dataclass(frozen=True)
class Domain:
    name: str
    answers: tuple[str, ...]
    train: tuple[str, ...]  # prompts the expert learns from
    search: str  # the phrasing the study scores
    heldout: str  # the phrasing scored only for the best trials
    names: int  # syllable groups per subject name (people get two names)


DOMAINS = (
    Domain(
        "flags",
        ("red", "blue", "green", "yellow"),
        (
            "The flag of {s} is",
            "Question: What color is the flag of {s}?\nAnswer:",
            "{s} has a flag that is",
        ),
        "Question: Which color does the flag of {s} have?\nAnswer:",
        "People in {s} wave a flag that is",
        1,
    ),
    Domain(
        "jobs",
        ("baker", "pilot", "doctor", "farmer"),
        (
            "{s} works as a",
            "Question: What is the job of {s}?\nAnswer:",
            "By profession, {s} is a",
        ),
        "Question: What does {s} do for a living?\nAnswer:",
        "Every morning {s} goes to work as a",
        2,
    ),
    Domain(
        "foods",
        ("fish", "grass", "fruit", "seeds"),
        (
            "The {s} eats",
            "Question: What does the {s} eat?\nAnswer:",
            "The diet of the {s} is",
        ),
        "Question: What is the food of the {s}?\nAnswer:",
        "In the wild, a hungry {s} looks for",
        1,
    ),
)


def facts(seed: int = 0) -> dict[str, list[tuple[str, int]]]:
    """Each domain's (made-up subject, answer index), subjects unique overall."""
    rng = random.Random(seed)
    seen: set[str] = set()
    out = {}
    for d in DOMAINS:
        rows = []
        while len(rows) < N_FACTS:
            parts = [
                "".join(rng.sample(SYLLABLES, rng.randint(2, 3))).capitalize()
                for _ in range(d.names)
            ]
            s = " ".join(parts)
            if s in seen:
                continue
            seen.add(s)
            rows.append((s, len(rows) % len(d.answers)))  # balanced answers
        rng.shuffle(rows)
        out[d.name] = rows
    return out


CAPITALS = {
    "France": "Paris", "Germany": "Berlin", "Italy": "Rome", "Spain": "Madrid",
    "Japan": "Tokyo", "China": "Beijing", "Russia": "Moscow", "Egypt": "Cairo",
    "England": "London", "Greece": "Athens", "Portugal": "Lisbon", "Austria": "Vienna",
    "Ireland": "Dublin", "Norway": "Oslo", "Sweden": "Stockholm", "Finland": "Helsinki",
    "Denmark": "Copenhagen", "Poland": "Warsaw", "Hungary": "Budapest", "Turkey": "Ankara",
    "India": "New Delhi", "Canada": "Ottawa", "Mexico": "Mexico City",
    "Argentina": "Buenos Aires", "Peru": "Lima", "Chile": "Santiago", "Kenya": "Nairobi",
    "Thailand": "Bangkok", "Cuba": "Havana", "Iran": "Tehran", "Iraq": "Baghdad",
    "Belgium": "Brussels", "Netherlands": "Amsterdam", "Switzerland": "Bern",
    "Australia": "Canberra", "Brazil": "Brasilia", "Colombia": "Bogota",
    "Vietnam": "Hanoi", "Philippines": "Manila", "Indonesia": "Jakarta",
    "South Korea": "Seoul",
}  # fmt: skip
RETENTION = (
    "Question: What is the capital of {s}?\nAnswer:",  # search
    "The capital city of {s} is",  # held-out
)


def capitals(template: str, seed: int = 0) -> list[Item]:
    """Each real country's capital among 4 real capitals (3 drawn, seeded)."""
    rng = random.Random(seed)
    every = list(CAPITALS.values())
    out = []
    for country, capital in CAPITALS.items():
        choices = rng.sample([c for c in every if c != capital], 3) + [capital]
        rng.shuffle(choices)
        out.append(Item(template.format(s=country), choices, choices.index(capital)))
    return out


def _items(template: str, rows, answers) -> list[Item]:
    return [Item(template.format(s=s), list(answers), a) for s, a in rows]


def write_tasks(folder: Path) -> None:
    """knowledge_<domain> (search), knowledge_<domain>_heldout, knowledge_retention[_heldout]."""
    folder.mkdir(parents=True, exist_ok=True)
    body = facts()
    tasks: dict[str, list[Item]] = {}
    for d in DOMAINS:
        tasks[f"knowledge_{d.name}"] = _items(d.search, body[d.name], d.answers)
        tasks[f"knowledge_{d.name}_heldout"] = _items(d.heldout, body[d.name], d.answers)
    tasks["knowledge_retention"] = capitals(RETENTION[0])
    tasks["knowledge_retention_heldout"] = capitals(RETENTION[1])
    for task, items in tasks.items():
        (folder / f"{task}.jsonl").write_text("".join(json.dumps(i.__dict__) + "\n" for i in items))
        (folder / f"{task}.yaml").write_text(
            TASK_YAML.format(task=task, split="test", data=f"{task}.jsonl")
        )


def build(log=print) -> dict[str, Path]:
    """The base, one expert per domain and the tasks, each built once."""
    from optimizer.demo.zoo import finetune

    base, _ = smollm_zoo(0)
    write_tasks(ROOT / "tasks")
    models = {"base": base}
    body = facts()
    for d in DOMAINS:
        train = [it for t in d.train for it in _items(t, body[d.name], d.answers)]
        models[d.name] = finetune(
            base,
            ROOT / f"expert-{d.name}",
            train,
            d.name,
            steps=150,
            lr=1e-4,
            train_from_layer=0,
            log=log,
        )
    return models


def study_file(folder: Path, name: str, extra_objective: dict | None = None, **top) -> Path:
    """A study over the three experts: the three fact tasks and retention."""
    import yaml

    models = build(log=lambda line: None)
    objective = {
        "include_paths": [str(ROOT / "tasks")],
        "tasks": [
            {"task": f"knowledge_{d.name}", "heldout": f"knowledge_{d.name}_heldout"}
            for d in DOMAINS
        ]
        + [{"task": "knowledge_retention", "heldout": "knowledge_retention_heldout"}],
        **(extra_objective or {}),
    }
    cfg = {
        "study": name,
        "base_model": str(models["base"]),
        "models": [str(models[d.name]) for d in DOMAINS],
        "objective": objective,
        "n_trials": 20,
        **top,
    }
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def main() -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from optimizer.evaluate import TaskObjective, make_evaluator
    from optimizer.evaluate.tasks import index_tasks, task_config

    models = build()
    index = index_tasks([ROOT / "tasks"])
    objectives = [
        TaskObjective(t, task_config(index[t]), "acc", 1.0, task_config(index[f"{t}_heldout"]))
        for t in [f"knowledge_{d.name}" for d in DOMAINS] + ["knowledge_retention"]
    ]
    evaluator = make_evaluator("fast", objectives)
    print("| model | " + " | ".join(o.name for o in objectives) + " |  (search / held-out)")
    print("|---" * (len(objectives) + 1) + "|")
    for label, path in models.items():
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        tok = AutoTokenizer.from_pretrained(path)
        evaluator.attach(model, tok, 16)
        search, held = evaluator.score(), evaluator.score(heldout=True)
        cells = [f"{search[o.name]:.2f} / {held[o.name]:.2f}" for o in objectives]
        print(f"| {label} | " + " | ".join(cells) + " |")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
