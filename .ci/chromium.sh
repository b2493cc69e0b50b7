#!/usr/bin/env bash
# Install Debian's headless Chromium (for the test that renders the study
# report in a browser) when none is there, then print its path.
set -euo pipefail

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

for name in chromium-headless-shell chromium; do
    if command -v "$name" >/dev/null; then command -v "$name"; exit 0; fi
done
as_root apt-get update -q >&2
as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium-headless-shell >&2
command -v chromium-headless-shell
