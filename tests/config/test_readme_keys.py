"""The README's tables of config keys are the declared schemas, not a copy that drifts."""

from __future__ import annotations

import re
from pathlib import Path

from optimizer.config.reference_tables import tables

README = Path(__file__).resolve().parents[2] / "README.md"


def test_the_readme_lists_every_key_as_declared():
    text = README.read_text()
    block = re.search(r"<!-- config-keys: begin -->\n(.*?)\n<!-- config-keys: end -->", text, re.S)
    assert block, "README.md lacks the config-keys block"
    assert block.group(1).strip() == tables().strip(), (
        "README.md's config keys differ from the schema; paste the output of "
        "`python -m optimizer.config.reference_tables` between the markers"
    )


def test_the_readmes_method_list_names_every_registered_method():
    from methods import METHODS

    intro = README.read_text().split("## Quick start")[0]
    missing = [m for m in METHODS if m not in re.findall(r"[a-z_]+", intro)]
    assert not missing, f"README.md's method list lacks {missing}"
