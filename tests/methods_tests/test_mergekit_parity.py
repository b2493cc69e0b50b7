"""`compat: mergekit` reproduces mergekit-yaml's numbers for the deterministic methods.

Needs the optional extra (`pip install 'mergeopt[mergekit]'`); skipped without it.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from methods import METHODS
from optimizer.config.examples import example_config
from optimizer.config.merge_config import MergeConfig
from optimizer.engine.merge import run_merge

MERGEKIT = shutil.which("mergekit-yaml", path=str(Path(sys.executable).parent)) or shutil.which(
    "mergekit-yaml"
)
pytestmark = pytest.mark.skipif(
    MERGEKIT is None,
    reason="mergekit is not installed (pip install 'mergeopt[mergekit]' to run the parity tests)",
)

# every deterministic method that mergekit has, at the registry's example point
# (random masks come from each tool's own generator: no bitwise parity exists)
CASES = sorted(m for m, spec in METHODS.items() if spec.mergekit and not spec.random)


def state(folder: Path) -> dict[str, torch.Tensor]:
    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update(load_file(f))
    return out


def test_every_deterministic_mergekit_method_has_a_parity_case():
    deterministic = {m for m, s in METHODS.items() if not s.random and s.mergekit is not None}
    assert set(CASES) == deterministic and len(CASES) >= 7


@pytest.mark.parametrize("method", CASES)
def test_parity_with_mergekit(method, tiny_zoo, tmp_path):
    spec = METHODS[method]
    experts = [str(tiny_zoo["math"]), str(tiny_zoo["code"])]
    cfg = {**example_config(spec, str(tiny_zoo["base"]), experts), "dtype": "float32"}
    path = tmp_path / "mk.yaml"
    path.write_text(yaml.safe_dump(cfg))
    done = subprocess.run(
        [MERGEKIT, str(path), str(tmp_path / "mk")], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]
    run_merge(MergeConfig.from_dict({**cfg, "compat": "mergekit"}), tmp_path / "ours")
    theirs, ours = state(tmp_path / "mk"), state(tmp_path / "ours")
    assert set(theirs) == set(ours)
    for name in ours:
        torch.testing.assert_close(ours[name], theirs[name], rtol=1e-5, atol=1e-6, msg=name)
