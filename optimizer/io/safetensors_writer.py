"""Stream tensors into sharded safetensors files whose layout is planned first.

Every output tensor's name, dtype and shape is known before merging (they are
the base's), so each shard's header is written up front and tensors are
appended as they are computed: the writer never holds more than one tensor.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import torch

from optimizer.io.checkpoint import DTYPE_CODES


@dataclass
class Shard:
    filename: str
    names: list[str] = field(default_factory=list)
    nbytes: int = 0


def _nbytes(shape: tuple[int, ...], dtype: torch.dtype) -> int:
    n = dtype.itemsize
    for s in shape:
        n *= s
    return n


def plan_shards(
    specs: dict[str, tuple[tuple[int, ...], torch.dtype]], max_shard_bytes: int
) -> list[Shard]:
    """Group tensors, in order, into shards of at most ``max_shard_bytes``."""
    shards: list[Shard] = [Shard("")]
    for name, (shape, dtype) in specs.items():
        size = _nbytes(shape, dtype)
        if shards[-1].names and shards[-1].nbytes + size > max_shard_bytes:
            shards.append(Shard(""))
        shards[-1].names.append(name)
        shards[-1].nbytes += size
    if len(shards) == 1:
        shards[0].filename = "model.safetensors"
    else:
        total = len(shards)
        for i, s in enumerate(shards, 1):
            s.filename = f"model-{i:05d}-of-{total:05d}.safetensors"
    return shards


class ShardedWriter:
    """Writes planned shards; ``write`` must be called in plan order."""

    def __init__(
        self,
        folder: Path,
        specs: dict[str, tuple[tuple[int, ...], torch.dtype]],
        max_shard_bytes: int,
    ) -> None:
        self.folder = folder
        self.specs = specs
        self.shards = plan_shards(specs, max_shard_bytes)
        self.order = [n for s in self.shards for n in s.names]
        self._shard_of = {n: i for i, s in enumerate(self.shards) for n in s.names}
        self._next = 0
        self._shard_index = -1
        self._file: BinaryIO | None = None

    def _open_shard(self, i: int) -> None:
        if self._file:
            self._file.close()
        shard = self.shards[i]
        header: dict[str, object] = {"__metadata__": {"format": "pt"}}
        offset = 0
        for name in shard.names:
            shape, dtype = self.specs[name]
            size = _nbytes(shape, dtype)
            header[name] = {
                "dtype": DTYPE_CODES[dtype],
                "shape": list(shape),
                "data_offsets": [offset, offset + size],
            }
            offset += size
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)
        self._file = (self.folder / shard.filename).open("wb")
        self._file.write(len(raw).to_bytes(8, "little"))
        self._file.write(raw)
        self._shard_index = i

    def write(self, name: str, tensor: torch.Tensor) -> None:
        expected = self.order[self._next]
        if name != expected:
            raise RuntimeError(f"tensor {name!r} written out of order (expected {expected!r})")
        shape, dtype = self.specs[name]
        if tuple(tensor.shape) != shape or tensor.dtype != dtype:
            raise RuntimeError(
                f"tensor {name!r} is {tensor.dtype} {list(tensor.shape)}, planned "
                f"{dtype} {list(shape)}"
            )
        shard_i = self._shard_of[name]
        if shard_i != self._shard_index:
            self._open_shard(shard_i)
        data = tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8)
        self._file.write(memoryview(data.numpy()))
        self._next += 1

    def close(self) -> None:
        if self._file:
            self._file.close()
            self._file = None
        if self._next != len(self.order):
            raise RuntimeError(
                f"only {self._next} of {len(self.order)} planned tensors were written"
            )
        if len(self.shards) > 1:
            index = {
                "metadata": {"total_size": sum(s.nbytes for s in self.shards)},
                "weight_map": {n: s.filename for s in self.shards for n in s.names},
            }
            (self.folder / "model.safetensors.index.json").write_text(
                json.dumps(index, indent=2) + "\n"
            )
