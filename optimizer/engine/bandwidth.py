"""Measured bandwidths, for the seconds a candidate is expected to take in each tier.

A candidate in the resident engine is bound by how fast its bytes move:
device memory for the device tier, the host-to-device link for the host tier,
the files for the disk tier. Each is measured here in about a second, on this
machine as it is now, so the plan ``mergeopt run`` prints says what this run
will see rather than a datasheet's figure.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import torch

SAMPLE = 1 << 26  # bytes moved per timing: 64 MiB, large enough to reach the plateau


def _best(fn: Callable[[], object], device: torch.device, repeats: int = 5) -> float:
    fn()  # warm-up: first-touch page faults, lazy CUDA init
    best = float("inf")
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - start)
    return best


def device_bandwidth(device: torch.device) -> float:
    """Bytes per second a copy within ``device``'s memory moves (read plus write)."""
    a = torch.empty(SAMPLE // 4, device=device)
    b = torch.ones(SAMPLE // 4, device=device)
    return 2 * SAMPLE / _best(lambda: a.copy_(b), device)


def host_to_device_bandwidth(device: torch.device) -> float:
    """Bytes per second from pinned host memory to ``device`` (a host copy on a CPU)."""
    if device.type != "cuda":
        return device_bandwidth(device)
    src = torch.ones(SAMPLE // 4).pin_memory()
    dst = torch.empty(SAMPLE // 4, device=device)
    return SAMPLE / _best(lambda: dst.copy_(src, non_blocking=True), device)


def file_read_bandwidth(path: Path) -> float:
    """Bytes per second read from ``path`` into memory, as the disk tier reads
    (page cache included: a file read a moment ago reads at memory speed)."""
    size = min(path.stat().st_size, SAMPLE)
    buf = bytearray(size)
    view = memoryview(buf)
    best = float("inf")
    for _ in range(3):
        fd = os.open(path, os.O_RDONLY)
        try:
            start = time.perf_counter()
            done = 0
            while done < size:
                n = os.preadv(fd, [view[done:]], done)
                if n <= 0:
                    break
                done += n
            best = min(best, time.perf_counter() - start)
        finally:
            os.close(fd)
    return size / best
