"""The report of a real study, looked at in headless Chromium: every plot drew,
no error on the page, and a screenshot (docs/report.png).

    .venv/bin/python bench/report_page.py STUDY.yaml --png docs/report.png

Needs Debian's ``chromium-headless-shell`` (or ``chromium``); the same check
runs in CI on the tests' study (tests/ui/test_report.py).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from browser import check_page, chromium, screenshot  # noqa: E402

from optimizer.config.study_config import StudyConfig  # noqa: E402
from optimizer.study.study import Study  # noqa: E402
from optimizer.ui.report import write_report  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("study", type=Path, help="the study's YAML file")
    ap.add_argument("--storage", help="its storage URL (default: the file's)")
    ap.add_argument("--png", type=Path, default=ROOT / "docs" / "report.png")
    ap.add_argument("--size", default="1280,3600", help="window width,height of the screenshot")
    args = ap.parse_args()
    browser = chromium()
    if browser is None:
        sys.exit("no Chromium found: apt-get install chromium-headless-shell")
    study = Study(StudyConfig.from_yaml(args.study, args.storage))
    with tempfile.TemporaryDirectory() as tmp:
        page = write_report(study, Path(tmp) / "report")
        seen = check_page(page, browser)
        print(f"{len(seen['plots'])} plots, errors: {seen['errors'] or 'none'}")
        for plot in seen["plots"]:
            print(
                f"  {plot['id']}: {plot['width']:.0f}x{plot['height']:.0f} px, {plot['marks']} marks"
            )
        screenshot(page, args.png, browser, args.size)
    print(f"wrote {args.png}")
    drawn = all(p["width"] > 0 and p["marks"] > 0 for p in seen["plots"])
    return 0 if drawn and not seen["errors"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
