"""The demo's skills: small multiple-choice problems with disjoint item pools.

Each skill has a pool of items split three ways — training (fine-tuning the
expert), search (scored during the study) and held-out (scored only for the
best trials) — so no split sees another's items.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

ANIMALS = (
    "tiger lion horse cow sheep goat rabbit wolf fox bear deer mouse rat camel zebra "
    "giraffe elephant monkey gorilla donkey pig dog cat eagle hawk owl parrot pigeon "
    "duck goose swan chicken turkey frog toad snake lizard turtle crocodile shark whale "
    "dolphin salmon trout octopus squid crab lobster spider ant bee wasp beetle butterfly "
    "moth mosquito fly worm snail bat squirrel beaver otter seal walrus penguin ostrich "
    "kangaroo koala panda leopard cheetah hyena buffalo moose raccoon badger hedgehog "
    "mole skunk llama"
).split()
PLANTS = (
    "oak pine maple birch willow cedar palm fern moss rose tulip daisy lily orchid "
    "sunflower lavender cactus bamboo ivy clover grass wheat rice corn barley oat "
    "carrot potato onion garlic lettuce cabbage spinach broccoli celery pumpkin "
    "cucumber tomato pepper bean pea apple pear cherry plum peach grape lemon orange "
    "banana mango pineapple strawberry raspberry blueberry melon watermelon coconut "
    "olive almond walnut hazelnut chestnut basil mint parsley thyme rosemary sage "
    "dandelion poppy violet jasmine magnolia cotton hemp tea coffee cocoa ginger"
).split()


@dataclass(frozen=True)
class Item:
    question: str
    choices: list[str]
    answer: int


def _kind_items(seed: int) -> list[Item]:
    items = [(w, 0) for w in ANIMALS] + [(w, 1) for w in PLANTS]
    random.Random(seed).shuffle(items)
    return [
        Item(f"Question: Is a {w} an animal or a plant?\nAnswer:", ["animal", "plant"], a)
        for w, a in items
    ]


def _larger_items(seed: int) -> list[Item]:
    rng = random.Random(seed)
    seen, out = set(), []
    while len(out) < 240:
        a, b = rng.sample(range(10, 100), 2)
        if (a, b) in seen or (b, a) in seen:
            continue
        seen.add((a, b))
        out.append(
            Item(
                f"Question: Which number is larger, {a} or {b}?\nAnswer:",
                [str(a), str(b)],
                int(b > a),
            )
        )
    return out


SKILLS = {"kinds": _kind_items, "larger": _larger_items}


def splits(skill: str, seed: int = 0) -> dict[str, list[Item]]:
    """train / search / heldout, disjoint: 40% / 25% / 35% of the pool."""
    items = SKILLS[skill](seed)
    n = len(items)
    a, b = int(n * 0.4), int(n * 0.65)
    return {"train": items[:a], "search": items[a:b], "heldout": items[b:]}


TASK_YAML = """\
task: {task}
dataset_path: json
dataset_kwargs:
  data_files:
    {split}: {data}
test_split: {split}
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: answer
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""


def write_task_files(folder) -> list[str]:
    """The demo's lm-eval tasks: search and held-out splits of each skill."""
    import json
    from pathlib import Path

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for skill in SKILLS:
        parts = splits(skill)
        for split in ("search", "heldout"):
            with (folder / f"{skill}_{split}.jsonl").open("w") as f:
                for item in parts[split]:
                    f.write(json.dumps(item.__dict__) + "\n")
            task = f"demo_{skill}" + ("_heldout" if split == "heldout" else "")
            (folder / f"{task}.yaml").write_text(
                TASK_YAML.format(task=task, split=split, data=f"{skill}_{split}.jsonl")
            )
            names.append(task)
    return names
