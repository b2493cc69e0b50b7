"""What the hard benchmarks share: a family of experts, its tasks, its cache.

A family is a base (SmolLM2-135M-Instruct), three or more experts each
fine-tuned on CPU on one body of items, a search and a held-out task per
expert (other phrasings or other items than the expert trained on) and one
retention task the base does well on (the capitals of real countries). Each
family is built once into the bench cache; the studies of ``bench/pruning.py``
and ``bench/quality.py`` and the simple merges they are compared with come
from here, so every benchmark scores the same models on the same tasks.
"""

from __future__ import annotations

import json
import random
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from common import CACHE, smollm_zoo

from optimizer.demo.skills import TASK_YAML, Item

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


@dataclass(frozen=True)
class Expert:
    name: str
    train: list[Item]
    search: list[Item]
    heldout: list[Item]


@dataclass(frozen=True)
class Family:
    """One benchmark family: ``experts()`` gives each expert's items."""

    name: str
    experts: Callable[[], list[Expert]]
    steps: int = 150
    lr: float = 1e-4

    @property
    def root(self) -> Path:
        return CACHE / self.name

    def task(self, expert: str, heldout: bool = False) -> str:
        return f"{self.name}_{expert}" + ("_heldout" if heldout else "")

    @property
    def retention(self) -> str:
        return f"{self.name}_retention"

    @property
    def expert_tasks(self) -> list[str]:
        """Each expert's search task, in the experts' order (retention apart)."""
        return [self.task(e.name) for e in self.experts()]

    def write_tasks(self) -> Path:
        """<family>_<expert>[_heldout] and <family>_retention[_heldout], as lm-eval YAML."""
        folder = self.root / "tasks"
        folder.mkdir(parents=True, exist_ok=True)
        tasks: dict[str, list[Item]] = {}
        for e in self.experts():
            tasks[self.task(e.name)] = e.search
            tasks[self.task(e.name, heldout=True)] = e.heldout
        tasks[self.retention] = capitals(RETENTION[0])
        tasks[f"{self.retention}_heldout"] = capitals(RETENTION[1])
        for task, items in tasks.items():
            rows = "".join(json.dumps(i.__dict__) + "\n" for i in items)
            (folder / f"{task}.jsonl").write_text(rows)
            (folder / f"{task}.yaml").write_text(
                TASK_YAML.format(task=task, split="test", data=f"{task}.jsonl")
            )
        return folder

    def build(self, log=print) -> dict[str, Path]:
        """The base, one expert each and the tasks, each built once."""
        from optimizer.demo.zoo import finetune

        base, _ = smollm_zoo(0)
        self.write_tasks()
        models = {"base": base}
        for e in self.experts():
            models[e.name] = finetune(
                base,
                self.root / f"expert-{e.name}",
                e.train,
                e.name,
                steps=self.steps,
                lr=self.lr,
                train_from_layer=0,
                log=log,
            )
        return models

    def objective(self, **extra) -> dict:
        names = [e.name for e in self.experts()]
        return {
            "include_paths": [str(self.root / "tasks")],
            "tasks": [{"task": self.task(n), "heldout": self.task(n, heldout=True)} for n in names]
            + [{"task": self.retention, "heldout": f"{self.retention}_heldout"}],
            **extra,
        }

    def study_file(self, folder: Path, name: str, extra_objective: dict | None = None, **top):
        """A study over the family's experts: each expert's task and retention."""
        import yaml

        models = self.build(log=lambda line: None)
        cfg = {
            "study": name,
            "base_model": str(models["base"]),
            "models": [str(models[e.name]) for e in self.experts()],
            "objective": self.objective(**(extra_objective or {})),
            "n_trials": 20,
            **top,
        }
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{name}.yaml"
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        return path

    def simple_merges(self, models: dict[str, Path]) -> Iterator[tuple[str, object]]:
        """(label, merge config) of each of ``SIMPLE_MERGES`` over the experts, in
        the form a study stores its candidates."""
        from optimizer.config.merge_config import MergeConfig

        for label, (method, each, common) in SIMPLE_MERGES.items():
            cfg = {
                "merge_method": method,
                "base_model": str(models["base"]),
                "models": [
                    {"model": str(models[e.name]), "parameters": each} for e in self.experts()
                ],
                "parameters": common,
            }
            yield label, MergeConfig.from_dict(cfg)

    def print_scores(self) -> None:
        """Each model's and each simple merge's search / held-out scores."""
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from optimizer.engine.resident import ResidentMerger
        from optimizer.evaluate import TaskObjective, make_evaluator
        from optimizer.evaluate.tasks import index_tasks, task_config

        models = self.build()
        index = index_tasks([self.root / "tasks"])
        names = [*self.expert_tasks, self.retention]
        objectives = [
            TaskObjective(t, task_config(index[t]), "acc", 1.0, task_config(index[f"{t}_heldout"]))
            for t in names
        ]
        evaluator = make_evaluator("fast", objectives)
        print("| model | " + " | ".join(names) + " |  (search / held-out)")
        print("|---" * (len(names) + 1) + "|")

        def row(label: str) -> None:
            search, held = evaluator.score(), evaluator.score(heldout=True)
            cells = [f"{search[n]:.2f} / {held[n]:.2f}" for n in names]
            print(f"| {label} | " + " | ".join(cells) + " |")
            sys.stdout.flush()

        for label, path in models.items():
            model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
            evaluator.attach(model, AutoTokenizer.from_pretrained(path), 16)
            row(label)
        experts = [models[e.name] for e in self.experts()]
        merger = ResidentMerger(models["base"], experts, "cpu")
        evaluator.attach(merger.model, merger.tokenizer, 16)
        for label, cfg in self.simple_merges(models):
            merger.materialize(merger.resolve(cfg))
            row(label)


# the merges a user tries first, at their usual settings: the bar a search must
# clear (method, each expert's parameters, the global ones)
SIMPLE_MERGES = {
    "average": ("linear", {"weight": 1.0}, {}),
    "task arithmetic, lambda 0.5": ("task_arithmetic", {"weight": 1.0}, {"lambda": 0.5}),
    "task arithmetic, lambda 1": ("task_arithmetic", {"weight": 1.0}, {"lambda": 1.0}),
    "TIES, density 0.2, lambda 1": ("ties", {"weight": 1.0, "density": 0.2}, {"lambda": 1.0}),
    "TIES, density 0.5, lambda 1": ("ties", {"weight": 1.0, "density": 0.5}, {"lambda": 1.0}),
}
