#!/usr/bin/env python3
"""Run (or print) a command block of README.md, found by the heading above it.

CI runs the README's quick-start commands through this script, taken from the
README itself, so the README and CI cannot drift apart: a README edit that
breaks a command turns CI red.

    python3 .ci/readme_command.py "Install and run the demo"
    python3 .ci/readme_command.py --print "Run the tests"

The block is the first fenced ``bash`` (or ``sh``/``shell``/``console``) block
after the first heading whose text starts with the given words, before the
next heading. It runs in one ``bash -e -o pipefail`` in the README's folder,
each line (joined over trailing backslashes) checked on its own, so the first
failing line stops it, a failing ``a && b`` chain included (which ``-e`` alone
lets through). Exit status: the failing line's, 0 when all pass, or 2 when the
heading or the block is missing.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
FENCE = re.compile(r"^(```+|~~~+)\s*([\w+-]*)")
SHELLS = {"bash", "sh", "shell", "console"}


class NotFound(Exception):
    pass


def command_block(readme: str, heading: str) -> str:
    """The shell block under the heading that starts with ``heading``."""
    lines = readme.splitlines()
    start = None
    fence = None
    for i, line in enumerate(lines):
        m = FENCE.match(line)
        if m:  # headings inside code blocks do not count
            fence = None if fence and line.startswith(fence) else (fence or m.group(1))
            continue
        h = HEADING.match(line) if fence is None else None
        if h and h.group(2).lower().startswith(heading.lower()):
            start = i + 1
            break
    if start is None:
        raise NotFound(f"no heading starting with {heading!r} in the README")
    i = start
    while i < len(lines):
        line = lines[i]
        if HEADING.match(line):
            break
        m = FENCE.match(line)
        if m:
            body = []
            i += 1
            while i < len(lines) and not lines[i].startswith(m.group(1)):
                body.append(lines[i])
                i += 1
            if m.group(2).lower() in SHELLS:
                text = "\n".join(body).strip()
                if text:
                    return text + "\n"
        i += 1
    raise NotFound(f"no fenced bash block under the heading {heading!r}")


def checked_script(block: str) -> str:
    """The block with an exit after any line whose status is not 0."""
    out = []
    for line in block.replace("\\\n", " ").splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        out.append(f"{line}\n__status=$?; if [ $__status -ne 0 ]; then exit $__status; fi")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("heading", help="the heading's first words, e.g. 'Run the tests'")
    parser.add_argument("--readme", default=str(Path(__file__).resolve().parents[1] / "README.md"))
    parser.add_argument("--print", action="store_true", help="print the block, do not run it")
    args = parser.parse_args(argv)
    readme = Path(args.readme)
    try:
        block = command_block(readme.read_text(), args.heading)
    except (NotFound, OSError) as e:
        print(f"readme_command: {readme}: {e}", file=sys.stderr)
        return 2
    if args.print:
        print(block, end="")
        return 0
    print(f"readme_command: running the README's '{args.heading}' block:\n{block}", flush=True)
    status = subprocess.run(
        ["bash", "-e", "-o", "pipefail", "-c", checked_script(block)],
        cwd=readme.resolve().parent,
    ).returncode
    if status:
        print(f"readme_command: the '{args.heading}' block failed (exit {status})", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
