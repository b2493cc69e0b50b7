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

from optimizer.merge import run_merge
from optimizer.merge_config import MergeConfig

MERGEKIT = shutil.which("mergekit-yaml", path=str(Path(sys.executable).parent)) or shutil.which(
    "mergekit-yaml"
)
pytestmark = pytest.mark.skipif(
    MERGEKIT is None,
    reason="mergekit is not installed (pip install 'mergeopt[mergekit]' to run the parity tests)",
)

CASES = {
    "linear": {"weights": [0.3, 0.7], "parameters": {}},
    "task_arithmetic": {"weights": [0.6, 0.9], "parameters": {"lambda": 0.8}},
    "ties": {"weights": [1.0, 0.5], "parameters": {"density": 0.4, "lambda": 1.2}},
    "breadcrumbs": {"weights": [1.0, 1.0], "parameters": {"density": 0.8, "gamma": 0.05}},
    "breadcrumbs_ties": {"weights": [0.7, 1.0], "parameters": {"density": 0.7, "gamma": 0.1}},
    "model_stock": {"weights": None, "parameters": {}},
    "slerp": {"weights": None, "parameters": {"t": 0.3}},
}


def state(folder: Path) -> dict[str, torch.Tensor]:
    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update(load_file(f))
    return out


@pytest.mark.parametrize("method", sorted(CASES))
def test_parity_with_mergekit(method, tiny_zoo, tmp_path):
    case = CASES[method]
    experts = [tiny_zoo["math"]] if method == "slerp" else [tiny_zoo["math"], tiny_zoo["code"]]
    models = []
    for i, e in enumerate(experts):
        entry = {"model": str(e)}
        if case["weights"]:
            entry["parameters"] = {"weight": case["weights"][i]}
        models.append(entry)
    cfg = {"merge_method": method, "models": models, "dtype": "float32"}
    if method != "linear":
        cfg["base_model"] = str(tiny_zoo["base"])
    if method == "slerp":
        cfg["models"] = [{"model": str(tiny_zoo["base"])}, *models]
    if case["parameters"]:
        cfg["parameters"] = case["parameters"]
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
