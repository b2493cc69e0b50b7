"""What an engine needs from the fused-kernel machinery, in one place.

Engines (the resident model, one-shot merges) ask a method for a plan per
tensor and launch the plans; the per-study caches they may keep are the
methods' own formats. This module is their whole surface onto ``kernels``,
``fuse``, ``launch``, ``masks`` and ``magnitudes``: those can change inside
without an engine noticing.
"""

from __future__ import annotations

from methods.kernels import HASHED_DRAWS, NotFiniteError
from methods.launch import KernelCall, Plan, Written, launch
from methods.magnitudes import MagnitudeOrder
from methods.masks import PackedRanks, packable, row_ranks_packed

__all__ = [
    "HASHED_DRAWS",
    "KernelCall",
    "MagnitudeOrder",
    "NotFiniteError",
    "PackedRanks",
    "Plan",
    "Written",
    "launch",
    "packable",
    "row_ranks_packed",
]
