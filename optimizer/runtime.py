"""Process-wide settings mergeopt needs, applied by an explicit call, never on import.

Nothing is fetched from a model or dataset hub at run time, and third-party
progress bars (tqdm in lm-eval, datasets, transformers' GGUF reader) would
bury the CLI's own lines. tqdm reads ``TQDM_DISABLE`` once, when it is first
imported (``import torch`` already does), so the CLI calls ``setup_process``
before importing anything heavy; the study and the task builder call it too,
for library use (there the hub switches still take effect: ``datasets`` reads
them on its own import).
"""

from __future__ import annotations

import os

SETTINGS = {
    "HF_DATASETS_OFFLINE": "1",
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
    "TQDM_DISABLE": "1",
}


def setup_process() -> None:
    """Set each variable unless the user set it already (they may want a bar back)."""
    for key, value in SETTINGS.items():
        os.environ.setdefault(key, value)
