from __future__ import annotations

from pathlib import Path

import pytest

from optimizer.tiny_models import build_tokenizer, perturbed_copy, save_model, tiny_llama

WORDS = "the cat sat on a mat dog ran to park one two three four five plus equals".split()


@pytest.fixture(scope="session")
def tiny_zoo(tmp_path_factory) -> dict[str, Path]:
    """A tiny Llama base and two seeded 'fine-tunes', sharded on disk."""
    root = tmp_path_factory.mktemp("zoo")
    tok = build_tokenizer(WORDS)
    base = tiny_llama(len(tok), seed=0)
    out = {"base": save_model(base, tok, root / "base", max_shard_size="40KB")}
    for i, name in enumerate(("math", "code")):
        out[name] = save_model(perturbed_copy(base, 0.02, seed=10 + i), tok, root / name)
    return out
