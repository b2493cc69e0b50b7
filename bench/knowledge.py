"""A hard benchmark of our own: three experts, each taught facts the base cannot know.

SmolLM2-135M-Instruct is the base; each expert is fine-tuned on one body of
96 made-up facts: the colour of a made-up country's flag, of a made-up
person's car, of a made-up bird's feathers. All three answer with the same
four colours and their subjects are made of the same syllables, so the
experts' task vectors pull the same answer words in different directions:
merging them costs each expert part of what it knows, as merging fine-tunes
of overlapping skills does. Experts learn their facts from three phrasings;
the search scores a fourth and the held-out split a fifth, so a merge is
rewarded for the knowledge, not the wording. A retention task the base does
well on (the capitals of real countries, 0.95 search / 1.00 held-out for the
base) rides along.

Built once into the bench cache (about 20 minutes on 2 cores); later calls
reuse it. ``python bench/knowledge.py`` builds it and prints the scores of
each model and of the simple merges (``family.SIMPLE_MERGES``).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from family import Expert, Family

from optimizer.demo.skills import Item

N_FACTS = 96
SYLLABLES = "ka lo mi ne ru ta vo zi pe sa do lu ri fe ga mo ti be na ko".split()


@dataclass(frozen=True)
class Domain:
    name: str
    answers: tuple[str, ...]
    train: tuple[str, ...]  # prompts the expert learns from
    search: str  # the phrasing the study scores
    heldout: str  # the phrasing scored only for the best trials
    names: int  # syllable groups per subject name (people get two names)


COLOURS = ("red", "blue", "green", "yellow")
DOMAINS = (
    Domain(
        "flags",
        COLOURS,
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
        "cars",
        COLOURS,
        (
            "{s} drives a car that is",
            "Question: What color is the car of {s}?\nAnswer:",
            "The car that {s} owns is painted",
        ),
        "Question: Which color is the car {s} drives?\nAnswer:",
        "Every morning {s} gets into a car that is",
        2,
    ),
    Domain(
        "birds",
        COLOURS,
        (
            "The feathers of the {s} are",
            "Question: What color are the feathers of the {s}?\nAnswer:",
            "The {s} is a bird whose feathers are",
        ),
        "Question: Which color are the {s}'s feathers?\nAnswer:",
        "In the forest, a {s} shows off feathers that are",
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


def experts() -> list[Expert]:
    """Each domain's facts in the training phrasings, the search one and the held-out one."""
    body = facts()
    out = []
    for d in DOMAINS:
        rows = body[d.name]
        out.append(
            Expert(
                d.name,
                [it for t in d.train for it in _items(t, rows, d.answers)],
                _items(d.search, rows, d.answers),
                _items(d.heldout, rows, d.answers),
            )
        )
    return out


def _items(template: str, rows, answers) -> list[Item]:
    return [Item(template.format(s=s), list(answers), a) for s, a in rows]


FAMILY = Family("knowledge", experts, steps=150, lr=1e-4)

if __name__ == "__main__":
    FAMILY.print_scores()
