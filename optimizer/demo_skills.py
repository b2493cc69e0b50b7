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
ANTONYMS = [
    ("hot", "cold"),
    ("big", "small"),
    ("tall", "short"),
    ("fast", "slow"),
    ("happy", "sad"),
    ("light", "dark"),
    ("open", "closed"),
    ("early", "late"),
    ("full", "empty"),
    ("rich", "poor"),
    ("strong", "weak"),
    ("hard", "soft"),
    ("high", "low"),
    ("old", "young"),
    ("wet", "dry"),
    ("clean", "dirty"),
    ("loud", "quiet"),
    ("thick", "thin"),
    ("heavy", "light"),
    ("up", "down"),
    ("left", "right"),
    ("begin", "end"),
    ("win", "lose"),
    ("buy", "sell"),
    ("push", "pull"),
    ("give", "take"),
    ("love", "hate"),
    ("true", "false"),
    ("alive", "dead"),
    ("inside", "outside"),
    ("above", "below"),
    ("before", "after"),
    ("day", "night"),
    ("black", "white"),
    ("north", "south"),
    ("east", "west"),
    ("first", "last"),
    ("near", "far"),
    ("deep", "shallow"),
    ("wide", "narrow"),
    ("sharp", "dull"),
    ("sweet", "sour"),
    ("cheap", "expensive"),
    ("safe", "dangerous"),
    ("easy", "difficult"),
    ("friend", "enemy"),
    ("question", "answer"),
    ("arrive", "leave"),
    ("accept", "refuse"),
    ("remember", "forget"),
    ("increase", "decrease"),
    ("rise", "fall"),
    ("laugh", "cry"),
    ("start", "finish"),
    ("brave", "cowardly"),
    ("polite", "rude"),
    ("smooth", "rough"),
    ("tight", "loose"),
    ("noisy", "silent"),
    ("awake", "asleep"),
    ("healthy", "sick"),
    ("gentle", "harsh"),
    ("major", "minor"),
    ("maximum", "minimum"),
    ("visible", "invisible"),
    ("possible", "impossible"),
    ("legal", "illegal"),
    ("positive", "negative"),
    ("victory", "defeat"),
    ("ancient", "modern"),
    ("entrance", "exit"),
    ("import", "export"),
    ("attack", "defend"),
    ("borrow", "lend"),
    ("float", "sink"),
    ("freeze", "melt"),
    ("guilty", "innocent"),
    ("generous", "selfish"),
    ("wild", "tame"),
    ("crooked", "straight"),
]


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


def _antonym_items(seed: int) -> list[Item]:
    rng = random.Random(seed)
    pairs = list(ANTONYMS)
    rng.shuffle(pairs)
    words = sorted({w for p in ANTONYMS for w in p})
    out = []
    for a, b in pairs:
        distractors = rng.sample([w for w in words if w not in (a, b)], 3)
        choices = [b, *distractors]
        rng.shuffle(choices)
        out.append(
            Item(
                f"Question: What is the opposite of {a}?\nAnswer:",
                list(choices),
                choices.index(b),
            )
        )
    return out


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


def _alphabet_items(seed: int) -> list[Item]:
    rng = random.Random(seed)
    words = sorted(set(ANIMALS) | set(PLANTS))
    seen, out = set(), []
    while len(out) < 240:
        a, b = rng.sample(words, 2)
        if a[0] == b[0] or frozenset((a, b)) in seen:
            continue
        seen.add(frozenset((a, b)))
        out.append(
            Item(
                f"Question: Which word comes first in alphabetical order, {a} or {b}?\nAnswer:",
                [a, b],
                int(b < a),
            )
        )
    return out


SKILLS = {
    "kinds": _kind_items,
    "antonyms": _antonym_items,
    "larger": _larger_items,
    "alphabet": _alphabet_items,
}


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
    {split}: {skill}_{split}.jsonl
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
                TASK_YAML.format(task=task, split=split, skill=skill)
            )
            names.append(task)
    return names
