"""No traceback for a user's mistake, in any command.

Every command is driven with bad arguments and paths: a file where a folder
is expected, an unwritable folder, a missing study, a wrong storage URL, an
absent trial. Each must end with exit status 2 and a one-line message naming
the culprit, never a Python traceback.
"""

from __future__ import annotations

import pytest
import yaml
from conftest import write_study

from optimizer.cli import main


def cli(capsys, *args: str) -> tuple[int, str]:
    """Exit status and everything printed (argparse's usage errors exit too)."""
    try:
        code = main(list(args))
    except SystemExit as e:
        code = e.code
    captured = capsys.readouterr()
    return code, captured.out + captured.err


@pytest.fixture(scope="module")
def finished_study(study_zoo, tmp_path_factory):
    """A study with one completed trial, for the commands that read one."""
    folder = tmp_path_factory.mktemp("finished")
    path = write_study(folder, study_zoo, n_trials=1, methods=["task_arithmetic"])
    assert main(["run", str(path), "--no-export"]) == 0
    return path


@pytest.fixture
def places(tmp_path, read_only_dir, tiny_zoo):
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder\n")
    merge = tmp_path / "merge.yaml"
    merge.write_text(
        yaml.safe_dump(
            {
                "merge_method": "task_arithmetic",
                "base_model": str(tiny_zoo["base"]),
                "models": [{"model": str(tiny_zoo["math"])}],
            }
        )
    )
    return {
        "file": str(a_file),
        "ro": str(read_only_dir / "out"),
        "ro_db": f"sqlite:///{read_only_dir}/x.db",
        "missing": str(tmp_path / "missing.yaml"),
        "folder": str(tmp_path),
        "merge": str(merge),
        "out": str(tmp_path / "out"),
    }


CASES = [
    (["merge", "{missing}", "--out", "{out}"], "config file not found"),
    (["merge", "{folder}", "--out", "{out}"], "is a folder, not a YAML file"),
    (["merge", "{file}", "--out", "{out}"], "expected a mapping"),
    (["merge", "{merge}", "--out", "{file}"], "is a file; choose a folder path"),
    (["merge", "{merge}", "--out", "{ro}"], "is not writable"),
    (["merge", "{merge}", "--out", "{out}", "--shard-size", "lots"], "not a size: 'lots'"),
    (["merge", "{merge}"], "the following arguments are required: --out"),
    (["run", "{missing}"], "study file not found"),
    (["run", "{folder}"], "is a folder, not a YAML file"),
    (["run", "{study}", "--storage", "not-a-url"], "is not a database URL"),
    (["run", "{study}", "--storage", "journal:///no/such/folder/s.log"], "folder not found"),
    (["run", "{study}", "--storage", "postgresql://u:pw@127.0.0.1:1/db"], "cannot open storage"),
    (["run", "{study}", "--storage", "{ro_db}"], "cannot create the study lock file"),
    (["run", "{study}", "--n-trials", "0"], "--n-trials must be positive"),
    (["run", "{study}", "--n-trials", "many"], "invalid int value: 'many'"),
    (["run", "{study}", "--timeout", "soon"], "invalid float value: 'soon'"),
    (["status", "{missing}"], "study file not found"),
    (["status", "{study}", "--storage", "mysql://u:pw@127.0.0.1:1/db"], "cannot open storage"),
    (["export", "{study}", "--out", "{file}"], "is a file; choose a folder path"),
    (["export", "{study}", "--out", "{ro}"], "is not writable"),
    (["export", "{study}", "--trial", "99", "--out", "{out}"], "has no trial 99"),
    (["export", "{missing}", "--out", "{out}"], "study file not found"),
    (["report", "{study}", "--out", "{file}"], "is a file; choose a folder path"),
    (["report", "{study}", "--out", "{ro}"], "is not writable"),
    (["report", "{missing}", "--out", "{out}"], "study file not found"),
    (["demo", "--workdir", "{file}"], "is a file; give a folder"),
    (["demo", "--n-trials", "0", "--workdir", "{out}"], "--n-trials must be positive"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
]


@pytest.mark.parametrize(
    "args,needle", CASES, ids=[f"{a[0]}-{i}" for i, (a, _) in enumerate(CASES)]
)
def test_a_users_mistake_gets_a_message_not_a_traceback(
    capsys, places, finished_study, args, needle
):
    code, printed = cli(capsys, *(a.format(study=finished_study, **places) for a in args))
    assert "Traceback" not in printed, printed
    assert code == 2, printed
    assert needle in printed, printed
    assert "pw@" not in printed  # passwords stay masked


def test_exporting_a_study_that_never_ran_says_so(capsys, study_zoo, tmp_path):
    path = write_study(tmp_path, study_zoo)
    code, printed = cli(capsys, "export", str(path), "--out", str(tmp_path / "o"))
    assert code == 2 and "Traceback" not in printed
    assert "has no completed trial yet; run it first" in printed
