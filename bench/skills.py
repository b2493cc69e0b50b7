"""A hard benchmark of procedures: three experts, each taught one rule on letters.

Each item is four letters (``k m a t``) and an instruction; the four choices
are what four rules make of those letters: reversed (``t a m k``), rotated
by one (``m a t k``), sorted (``a k m t``) and swapped in pairs
(``m k t a``). Each expert is fine-tuned on one rule (reverse, rotate,
sort); the swap is a distractor no expert learns. Every wrong choice of one
expert's task is another expert's right answer, so a merge that lets one
expert's habit leak into another's instruction loses points: the task
vectors interfere on purpose, unlike the demo's skills. The search and
held-out splits are letters never seen in training (a rule learned, not
items memorized); retention is the capitals of real countries.

Built once into the bench cache (about 20 minutes on 2 cores).
``python bench/skills.py`` builds it and prints the scores of each model and
of the simple merges.
"""

from __future__ import annotations

import random

from family import Expert, Family

from optimizer.demo.skills import Item

LETTERS = "abcdefghklmnprstvw"
N_TRAIN, N_SEARCH, N_HELDOUT = 300, 80, 80


def reverse(x: list[str]) -> list[str]:
    return x[::-1]


def rotate(x: list[str]) -> list[str]:
    return x[1:] + x[:1]


def sort(x: list[str]) -> list[str]:
    return sorted(x)


def swap(x: list[str]) -> list[str]:
    return [x[1], x[0], x[3], x[2]]


RULES = {"reverse": reverse, "rotate": rotate, "sort": sort, "swap": swap}
# the instruction each expert learns; swap stays a distractor only
INSTRUCTIONS = {
    "reverse": "Write the letters in reverse order: {x}\nAnswer:",
    "rotate": "Move the first letter to the end: {x}\nAnswer:",
    "sort": "Write the letters in alphabetical order: {x}\nAnswer:",
}


def inputs(seed: int = 0) -> list[list[str]]:
    """Distinct 4-letter inputs whose four rule outputs all differ."""
    rng = random.Random(seed)
    seen: set[str] = set()
    out = []
    while len(out) < (N_TRAIN + N_SEARCH + N_HELDOUT) * len(INSTRUCTIONS):
        x = rng.sample(LETTERS, 4)
        outputs = {" ".join(rule(x)) for rule in RULES.values()}
        if "".join(x) in seen or len(outputs) < len(RULES):
            continue
        seen.add("".join(x))
        out.append(x)
    return out


def item(skill: str, x: list[str], rng: random.Random) -> Item:
    choices = [" ".join(rule(x)) for rule in RULES.values()]
    rng.shuffle(choices)
    answer = choices.index(" ".join(RULES[skill](x)))
    return Item(INSTRUCTIONS[skill].format(x=" ".join(x)), choices, answer)


def experts() -> list[Expert]:
    """Each skill on its own letters: no input is in two splits or two skills."""
    pool = inputs()
    per = N_TRAIN + N_SEARCH + N_HELDOUT
    out = []
    for k, skill in enumerate(INSTRUCTIONS):
        rng = random.Random(f"skills/{skill}")
        items = [item(skill, x, rng) for x in pool[k * per : (k + 1) * per]]
        a, b = N_TRAIN, N_TRAIN + N_SEARCH
        out.append(Expert(skill, items[:a], items[a:b], items[b:]))
    return out


FAMILY = Family("skills", experts, steps=150, lr=1e-4)

if __name__ == "__main__":
    FAMILY.print_scores()
