"""The hard benchmarks by name, built with one command.

    python bench/families.py [knowledge] [skills]

builds each named family (default: all) into the bench cache, once, and
prints each model's and each simple merge's scores (search / held-out).
"""

from __future__ import annotations

import argparse

from family import Family
from knowledge import FAMILY as KNOWLEDGE
from skills import FAMILY as SKILLS

FAMILIES: dict[str, Family] = {f.name: f for f in (KNOWLEDGE, SKILLS)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="*", default=list(FAMILIES), choices=list(FAMILIES))
    args = ap.parse_args()
    for name in args.names:
        print(f"\n{name}:")
        FAMILIES[name].print_scores()


if __name__ == "__main__":
    main()
