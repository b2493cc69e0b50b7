"""Process-wide settings mergeopt needs, applied by an explicit call, never on import.

Nothing is fetched from a model or dataset hub at run time, and third-party
progress bars (tqdm in lm-eval, datasets, transformers' GGUF reader) would
bury the CLI's own lines. tqdm reads ``TQDM_DISABLE`` once, when it is first
imported (``import torch`` already does), so the CLI calls ``setup_process``
before importing anything heavy; the study and the task builder call it too,
for library use (there the hub switches still take effect: ``datasets`` reads
them on its own import).

The CLI also keeps freed memory of mid-sized temporaries for reuse
(``keep_freed_memory``): eager torch ops allocate a fresh tensor each, and
glibc's defaults hand those pages back and fault them in again, a million page
faults in a one-shot merge of SmolLM2 (docs/benchmarks.md, design
measurements).
"""

from __future__ import annotations

import ctypes
import os
import sys

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


# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 16 << 20  # blocks up to this come from the heap, reused
TRIM_THRESHOLD = 64 << 20  # free heap kept for reuse before it goes back


def keep_freed_memory() -> bool:
    """Tune glibc's malloc so freed temporaries are reused, not returned; True
    when applied. Larger buffers (whole tensors) are still mapped and returned
    on free, so peak memory is unchanged. Left as is off glibc or when the
    user tunes malloc through the environment."""
    if not sys.platform.startswith("linux"):
        return False
    if "GLIBC_TUNABLES" in os.environ or any(k.startswith("MALLOC_") for k in os.environ):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    return bool(
        mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )
