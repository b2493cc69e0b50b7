"""How many packed rows fit in free memory: ``batch_size: auto`` of the fast scorer.

lm-eval's HFLM finds its automatic batch size by trying forward passes from
64 rows down until one does not run out of memory; on a CPU nothing runs out,
the machine swaps instead, and on any device the longest row decides for
every batch. Here each batch gets as many rows as its own width allows, from
an estimate of a forward pass's peak memory per row, so batches of short
rows are long and batches of long ones short.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

# rows per batch at most: beyond this, no device tried ran faster per row
MAX_AUTO_ROWS = 128
FLOAT_BYTES = 4  # attention scores and logits are float32 whatever the weights


def free_bytes(device: torch.device) -> int:
    """Memory a batch may use: free GPU memory, or the system's available memory."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import os

    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 4 << 30  # unknown: a modest 4 GiB


def row_bytes(config: Any, width: int) -> int:
    """Peak memory of one row of ``width`` tokens in a no-grad forward pass:
    its 4D mask and attention scores (width² per head), one layer's
    activations (hidden and MLP widths) and the log-probabilities of its kept
    positions (at most ``width``) over the vocabulary."""
    hidden = getattr(config, "hidden_size", 1024)
    inter = getattr(config, "intermediate_size", 4 * hidden)
    heads = getattr(config, "num_attention_heads", 16)
    vocab = getattr(config, "vocab_size", 32000)
    attention = width * width * (1 + 2 * heads)
    activations = width * (6 * hidden + 3 * inter)
    logits = 2 * width * vocab
    return FLOAT_BYTES * (attention + activations + logits)


def rows_that_fit(config: Any, rows: Sequence[Any], budget: int) -> int:
    """How many of ``rows`` (longest first, each with a ``length``) go in the
    next batch: the batch is as wide as its first row."""
    per_row = row_bytes(config, rows[0].length)
    return max(1, min(len(rows), MAX_AUTO_ROWS, budget // per_row))
