"""The README's tables of config keys, generated from the declared schemas.

``python -m optimizer.config.reference_tables`` prints them; a test keeps the
README's copy equal to this output, so the documented keys, types and
defaults are the ones the code reads.
"""

from __future__ import annotations

from optimizer.config.merge_config import MERGE_KEYS, MODEL_KEYS
from optimizer.config.schema import markdown_table
from optimizer.config.study_config import (
    GRANULARITY_KEYS,
    OBJECTIVE_KEYS,
    PRUNER_KEYS,
    SAMPLER_KEYS,
    SEARCH_KEYS,
    STUDY_KEYS,
    TASK_KEYS,
)

SECTIONS = {
    "study file": STUDY_KEYS,
    "study file: objective": OBJECTIVE_KEYS,
    "study file: objective.tasks[]": TASK_KEYS,
    "study file: objective.pruner (a mapping)": PRUNER_KEYS,
    "study file: granularity": GRANULARITY_KEYS,
    "study file: sampler (a mapping)": SAMPLER_KEYS,
    "study file: search (a mapping)": SEARCH_KEYS,
    "merge config": MERGE_KEYS,
    "merge config: models[]": MODEL_KEYS,
}


def tables() -> str:
    return "\n\n".join(f"**{title}**\n\n{markdown_table(keys)}" for title, keys in SECTIONS.items())


if __name__ == "__main__":
    print(tables())
