"""Lazy, validated access to a Hugging Face model folder.

Headers are read and checked up front (names, shapes, dtypes, file sizes), so a
corrupt or truncated file, a missing shard or an architecture mismatch is
reported before any tensor math; tensor data is read one tensor at a time.
Pickle checkpoints (``.bin``) are refused unless the user opts in.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from optimizer.errors import ModelError

SAFETENSORS_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
DTYPE_CODES = {v: k for k, v in SAFETENSORS_DTYPES.items()}


@dataclass(frozen=True)
class TensorInfo:
    file: Path
    dtype: torch.dtype
    shape: tuple[int, ...]
    offset: int = 0  # absolute byte offset of the data in ``file`` (safetensors)


def read_safetensors_header(path: Path) -> dict[str, TensorInfo]:
    """Parse and check one safetensors file's header without reading its data."""
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            raw = f.read(8)
            if len(raw) < 8:
                raise ValueError("the file is shorter than a safetensors header")
            (n,) = struct.unpack("<Q", raw)
            if n > size - 8 or n > 100_000_000:
                raise ValueError(f"header length {n} does not fit in a {size}-byte file")
            header = json.loads(f.read(n))
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise ModelError(
            f"corrupt safetensors file {path}: {e}. Re-download or re-save the model."
        ) from None
    infos: dict[str, TensorInfo] = {}
    end = 0
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype = SAFETENSORS_DTYPES[meta["dtype"]]
            shape = tuple(int(s) for s in meta["shape"])
            start, stop = (int(x) for x in meta["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise ModelError(
                f"corrupt safetensors file {path}: bad header entry for tensor {name!r} "
                f"({meta!r}). Re-download or re-save the model."
            ) from None
        numel = 1
        for s in shape:
            numel *= s
        if stop - start != numel * dtype.itemsize:
            raise ModelError(
                f"corrupt safetensors file {path}: tensor {name!r} claims {stop - start} "
                f"bytes for shape {list(shape)} of {meta['dtype']}. Re-download the model."
            )
        end = max(end, stop)
        infos[name] = TensorInfo(path, dtype, shape, 8 + n + start)
    if 8 + n + end > size:
        raise ModelError(
            f"truncated safetensors file {path}: the header promises {8 + n + end} bytes "
            f"but the file has {size}. Re-download or re-save the model."
        )
    return infos


class Checkpoint:
    """A model folder: its config.json and a lazily read map of its tensors."""

    def __init__(self, path: str | Path, allow_pickle: bool = False) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise ModelError(
                f"model folder not found: {self.path}. Check the path in the config "
                "(relative paths are taken from the current directory, then from the "
                "config file's folder)."
            )
        if not self.path.is_dir():
            raise ModelError(f"{self.path} is a file; give the model's folder instead")
        cfg = self.path / "config.json"
        if not cfg.is_file():
            raise ModelError(
                f"{self.path} has no config.json, so it is not a Hugging Face model "
                "folder; save the model with save_pretrained()"
            )
        try:
            self.config: dict[str, Any] = json.loads(cfg.read_text())
        except ValueError as e:
            raise ModelError(f"{cfg} is not valid JSON: {e}") from None
        self._pickled: dict[str, torch.Tensor] | None = None
        self.tensors: dict[str, TensorInfo] = self._index(allow_pickle)

    def _index(self, allow_pickle: bool) -> dict[str, TensorInfo]:
        index = self.path / "model.safetensors.index.json"
        single = self.path / "model.safetensors"
        if index.is_file():
            try:
                weight_map: dict[str, str] = json.loads(index.read_text())["weight_map"]
            except (ValueError, KeyError) as e:
                raise ModelError(f"{index} is not a valid shard index ({e})") from None
            files = sorted(set(weight_map.values()))
            missing = [f for f in files if not (self.path / f).is_file()]
            if missing:
                raise ModelError(
                    f"{index} lists shard(s) that are missing: {', '.join(missing)}. "
                    "Copy the complete model folder."
                )
            infos: dict[str, TensorInfo] = {}
            for f in files:
                infos.update(read_safetensors_header(self.path / f))
            absent = sorted(set(weight_map) - set(infos))
            if absent:
                raise ModelError(
                    f"{index} maps tensor(s) {absent[:5]} to shards that do not hold "
                    "them; the folder is inconsistent, re-save the model"
                )
            return infos
        if single.is_file():
            return read_safetensors_header(single)
        others = sorted(self.path.glob("*.safetensors"))
        if others:
            infos = {}
            for f in others:
                infos.update(read_safetensors_header(f))
            return infos
        pickles = sorted(self.path.glob("*.bin")) + sorted(self.path.glob("*.pt"))
        if pickles:
            if not allow_pickle:
                raise ModelError(
                    f"{self.path} holds only pickle checkpoints ({pickles[0].name}). "
                    "Unpickling can run arbitrary code, so mergeopt refuses it; convert "
                    "the model to safetensors (save_pretrained(safe_serialization=True)) "
                    "or, if you trust the file, pass --allow-pickle (mergeopt merge) or set "
                    "allow_pickle: true (study file)."
                )
            return self._index_pickles(pickles)
        raise ModelError(
            f"no weights in {self.path}: expected model.safetensors or "
            "model.safetensors.index.json with its shards"
        )

    def _index_pickles(self, files: list[Path]) -> dict[str, TensorInfo]:
        self._pickled = {}
        infos = {}
        for f in files:
            state = torch.load(f, map_location="cpu", weights_only=True, mmap=True)
            for name, t in state.items():
                self._pickled[name] = t
                infos[name] = TensorInfo(f, t.dtype, tuple(t.shape))
        return infos

    @property
    def architecture(self) -> tuple[str, tuple[str, ...]]:
        return (
            str(self.config.get("model_type")),
            tuple(self.config.get("architectures") or ()),
        )

    @property
    def num_layers(self) -> int:
        for key in ("num_hidden_layers", "n_layer", "num_layers"):
            if key in self.config:
                return int(self.config[key])
        text = self.config.get("text_config") or {}
        return int(text.get("num_hidden_layers", 1))

    def get(self, name: str) -> torch.Tensor:
        """Read one tensor: a fresh CPU tensor in its stored dtype.

        The bytes are read straight into the tensor at the offset the checked
        header gave. A memory mapping would keep every page read so far
        resident, and a merge reads them all (peak memory measured in
        docs/benchmarks.md, design measurements).
        """
        if self._pickled is not None:
            out = self._pickled[name].clone()
            self._check_finite(name, out)
            return out
        info = self.tensors[name]
        out = torch.empty(info.shape, dtype=info.dtype)
        self._read(name, out.view(-1).view(torch.uint8))
        self._check_finite(name, out)
        return out

    def read_into(self, name: str, buffer: torch.Tensor) -> torch.Tensor:
        """Read one tensor into the front of ``buffer`` (flat uint8, large enough):
        a view of it in the stored dtype and shape. Unchecked: for rereading a
        tensor that ``get`` has already read and checked."""
        info = self.tensors[name]
        if self._pickled is not None:
            t = self._pickled[name]
            out = buffer[: t.nbytes].view(t.dtype).view(t.shape)
            return out.copy_(t)
        nbytes = math.prod(info.shape) * info.dtype.itemsize
        self._read(name, buffer[:nbytes])
        return buffer[:nbytes].view(info.dtype).view(info.shape)

    def _read(self, name: str, out: torch.Tensor) -> None:
        """The stored bytes of ``name`` into the uint8 tensor ``out``."""
        info = self.tensors[name]
        if out.numel():
            buf = out.numpy()
            with info.file.open("rb") as f:
                f.seek(info.offset)
                if f.readinto(buf) != buf.nbytes:
                    raise ModelError(f"truncated safetensors file {info.file} (tensor {name})")

    def _check_finite(self, name: str, t: torch.Tensor) -> None:
        """NaN or inf in an input is refused where it is read, naming where it is.

        Every method would either spread it (sums) or silently drop it (TIES
        and the other magnitude trims rank NaN as small). The smallest and
        largest entries (one vectorized pass, no temporary) are finite exactly
        when every entry is: both reductions propagate NaN.
        """
        if not t.is_floating_point() or not t.numel():
            return
        lo, hi = torch.aminmax(t)
        if math.isfinite(float(lo)) and math.isfinite(float(hi)):
            return
        bad = t.numel() - int(torch.isfinite(t).sum())
        raise ModelError(
            f"{self.path}: tensor {name} holds {bad} non-finite value(s) (NaN or inf) out of "
            f"{t.numel()}; merges would spread or silently drop them. Repair or re-save "
            "this model, or leave it out."
        )

    def weights_digest(self, sample: bool = False) -> str:
        """A digest of every tensor's name, dtype, shape and bytes.

        ``sample`` reads only a few small spans of each tensor: equal sampled
        digests mean "maybe identical" (then compare in full), different ones
        prove the weights differ, at almost no cost.
        """
        h = hashlib.blake2b(digest_size=16)
        for name in sorted(self.tensors):
            info = self.tensors[name]
            h.update(f"{name}|{info.dtype}|{list(info.shape)}|".encode())
            if self._pickled is not None:
                h.update(self._pickled[name].contiguous().view(-1).view(torch.uint8).numpy())
                continue
            size = math.prod(info.shape) * info.dtype.itemsize
            spans = _sample_spans(size) if sample else [(0, size)]
            with info.file.open("rb") as f:
                for start, length in spans:
                    f.seek(info.offset + start)
                    while length > 0:
                        chunk = f.read(min(length, 1 << 24))
                        if not chunk:
                            raise ModelError(
                                f"truncated safetensors file {info.file} (tensor {name})"
                            )
                        h.update(chunk)
                        length -= len(chunk)
        return h.hexdigest()


def _sample_spans(size: int, spans: int = 8, length: int = 512) -> list[tuple[int, int]]:
    """Evenly spread (start, length) spans covering a tensor of ``size`` bytes."""
    if size <= spans * length:
        return [(0, size)]
    step = (size - length) // (spans - 1)
    return [(i * step, length) for i in range(spans)]


def identical_weights(checkpoints: Sequence[Checkpoint]) -> list[tuple[int, int]]:
    """Index pairs ``(i, j)``, ``i < j``, of checkpoints whose weights are byte-identical.

    Sampled digests first; only checkpoints whose samples all agree are read in
    full, so distinct fine-tunes cost a few kilobytes each.
    """
    groups: dict[str, list[int]] = {}
    for i, c in enumerate(checkpoints):
        groups.setdefault(c.weights_digest(sample=True), []).append(i)
    pairs = []
    for members in groups.values():
        if len(members) < 2:
            continue
        full: dict[str, list[int]] = {}
        for i in members:
            full.setdefault(checkpoints[i].weights_digest(), []).append(i)
        for same in full.values():
            pairs += [(a, b) for k, a in enumerate(same) for b in same[k + 1 :]]
    return sorted(pairs)


def check_compatible(base: Checkpoint, others: list[Checkpoint]) -> None:
    """Report every architecture, tensor-name and shape mismatch at once."""
    problems: list[str] = []
    for other in others:
        if other.architecture != base.architecture:
            problems.append(
                f"{other.path}: architecture {other.architecture[0]} "
                f"{list(other.architecture[1])} differs from {base.path}'s "
                f"{base.architecture[0]} {list(base.architecture[1])}"
            )
        missing = sorted(set(base.tensors) - set(other.tensors))
        extra = sorted(set(other.tensors) - set(base.tensors))
        if missing:
            problems.append(
                f"{other.path} lacks {len(missing)} tensor(s) of {base.path}: "
                + ", ".join(missing[:8])
                + (" ..." if len(missing) > 8 else "")
            )
        if extra:
            problems.append(
                f"{other.path} has {len(extra)} tensor(s) {base.path} lacks: "
                + ", ".join(extra[:8])
                + (" ..." if len(extra) > 8 else "")
            )
        for name in sorted(set(base.tensors) & set(other.tensors)):
            a, b = base.tensors[name].shape, other.tensors[name].shape
            if a != b:
                problems.append(
                    f"tensor {name}: shape {list(b)} in {other.path} but {list(a)} in {base.path}"
                )
    if problems:
        raise ModelError(
            "the models cannot be merged: they must share the base's architecture, "
            "tensor names and shapes.\n  - " + "\n  - ".join(problems)
        )
