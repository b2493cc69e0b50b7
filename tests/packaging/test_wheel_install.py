"""A non-editable install works outside the source tree.

The wheel must carry the built-in tasks and the demo study as package data
(a study in any folder finds ``demo_kinds``), and must not carry the test
fixtures. The wheel is built from a copy of the sources, installed into a
fresh venv, and run from a folder that is not the checkout. The fresh venv
borrows the already installed dependencies (torch, lm-eval, ...) through a
plain path entry, which does not run the checkout's editable-install hook, so
``import optimizer`` can only find the wheel's copy.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ("pyproject.toml", "README.md", "methods", "optimizer", "eval_tasks", "studies")


def run(cmd: list, **kwargs) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    assert proc.returncode == 0, f"{cmd}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def build_wheel(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.db", ".zoo", "*-best", "*.egg-info")
    for name in SHIPPED:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=ignore)
        else:
            shutil.copy2(path, src / name)
    dist = tmp_path / "dist"
    run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
        + ["-w", str(dist), str(src)]
    )
    (wheel,) = dist.glob("mergeopt-*.whl")
    return wheel


def fresh_venv(tmp_path: Path, wheel: Path) -> Path:
    venv = tmp_path / "fresh"
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    python = venv / "bin" / "python"
    run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps"]
        + [str(wheel)]
    )
    purelib = run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"])
    # the dependencies installed beside this test run, as a plain path entry
    Path(purelib.stdout.strip(), "borrowed_dependencies.pth").write_text(
        sysconfig.get_paths()["purelib"] + "\n"
    )
    return venv


def test_the_wheel_installed_outside_the_source_tree_merges_and_runs_a_study(
    tiny_zoo, study_zoo, tmp_path
):
    wheel = build_wheel(tmp_path)
    names = zipfile.ZipFile(wheel).namelist()
    for data in ("eval_tasks/demo/demo_kinds.yaml", "eval_tasks/demo/kinds_search.jsonl"):
        assert data in names
    assert "studies/demo.yaml" in names
    assert not [n for n in names if "tiny_models" in n or n.startswith("tests/")]

    venv = fresh_venv(tmp_path, wheel)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    where = run(
        [
            str(venv / "bin" / "python"),
            "-c",
            "import importlib.util, json, optimizer, eval_tasks, studies;"
            "print(json.dumps([m.__file__ for m in (optimizer, eval_tasks, studies)]"
            " + [importlib.util.find_spec('optimizer.tiny_models') is None]))",
        ],
        cwd=elsewhere,
        env=env,
    )
    *files, no_fixture = json.loads(where.stdout)
    assert all(f.startswith(str(venv)) for f in files), files  # the wheel's copy, not the checkout
    assert no_fixture

    mergeopt = str(venv / "bin" / "mergeopt")
    merge = elsewhere / "merge.yaml"
    merge.write_text(
        yaml.safe_dump(
            {
                "merge_method": "ties",
                "base_model": str(tiny_zoo["base"]),
                "models": [{"model": str(tiny_zoo["math"])}, {"model": str(tiny_zoo["code"])}],
                "parameters": {"density": 0.5},
            }
        )
    )
    out = run([mergeopt, "merge", "merge.yaml", "--out", "merged"], cwd=elsewhere, env=env)
    assert "merged" in out.stdout and (elsewhere / "merged" / "model.safetensors").is_file()

    study = elsewhere / "study.yaml"
    study.write_text(
        yaml.safe_dump(
            {
                "study": "wheel",
                "base_model": str(study_zoo["base"]),
                "models": [str(study_zoo["e1"]), str(study_zoo["e2"])],
                "methods": ["task_arithmetic"],
                "objective": {"tasks": [{"task": "demo_kinds"}], "limit": 8, "batch_size": 8},
                "n_trials": 2,
            }
        )
    )
    out = run([mergeopt, "run", "study.yaml"], cwd=elsewhere, env=env)
    assert "2/2 done" in out.stdout, out.stdout
    assert (elsewhere / "wheel-best" / "mergeopt_trial.json").is_file()
