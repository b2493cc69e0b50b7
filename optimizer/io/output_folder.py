"""Write a model folder atomically: build it beside the target, rename at the end.

A failed or interrupted merge leaves no half-written folder under the target
name, and a replaced folder (``--force``) survives until the new one is whole.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from optimizer.errors import OutputError

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
)

DTYPE_NAMES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float64": torch.float64,
}


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def check_output(out: Path, force: bool) -> None:
    """Fail before any work if ``out`` cannot be (re)placed."""
    if out.exists():
        if not out.is_dir():
            raise OutputError(f"output path {out} is a file; choose a folder path")
        if not force:
            raise OutputError(
                f"output folder {out} already exists; pass --force to replace it "
                "or choose another --out"
            )
    parent = out.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"cannot create the output's parent folder {parent}: {e}") from None
    try:  # a real write: os.access says yes to root even on read-only or immutable folders
        with tempfile.TemporaryFile(dir=parent):
            pass
    except OSError as e:
        raise OutputError(
            f"output parent folder {parent} is not writable ({e.strerror}); fix its "
            "permissions or choose another output folder"
        ) from None


def check_free_space(out: Path, need_bytes: int) -> None:
    """Refuse before any work when the output cannot fit on its filesystem."""
    free = shutil.disk_usage(out.parent).free
    if free < need_bytes:
        raise OutputError(
            f"not enough free space for {out}: it needs about {need_bytes / 1e9:.2f} GB and "
            f"{out.parent} has {free / 1e9:.2f} GB free; free some space or choose another "
            "output folder"
        )


@contextlib.contextmanager
def staged_folder(out: Path, force: bool) -> Iterator[Path]:
    check_output(out, force)
    staging = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        yield staging
    except OSError as e:  # disk full, file too large, permissions changed mid-way
        shutil.rmtree(staging, ignore_errors=True)
        raise OutputError(
            f"writing {out} failed: {e.strerror or e}; nothing was left behind. Free some "
            "space or choose another output folder, then run the same command again"
        ) from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if out.exists():
        old = out.parent / f".{out.name}.replaced-{os.getpid()}"
        out.rename(old)
        staging.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        staging.rename(out)


def copy_support_files(tokenizer_source: Path, base: Path, folder: Path) -> list[str]:
    """Tokenizer files from ``tokenizer_source``, generation config from the base."""
    copied = []
    for name in TOKENIZER_FILES:
        src = tokenizer_source / name
        if src.is_file():
            shutil.copy2(src, folder / name)
            copied.append(name)
    gen = base / "generation_config.json"
    if gen.is_file():
        shutil.copy2(gen, folder / gen.name)
        copied.append(gen.name)
    return copied


def write_config(base_config: dict[str, Any], out_dtype: torch.dtype, folder: Path) -> None:
    config = dict(base_config)
    config["dtype"] = dtype_name(out_dtype)
    if "torch_dtype" in config:
        config["torch_dtype"] = dtype_name(out_dtype)
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
