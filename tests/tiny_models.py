"""Small real Hugging Face models built locally, for the tests.

Nothing can be downloaded at run time, so tests need models that this project
can make itself: a word-level tokenizer and a tiny Llama, saved with
``save_pretrained`` exactly as a hub model would be.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>"]


def build_tokenizer(words: Iterable[str]) -> PreTrainedTokenizerFast:
    vocab = {t: i for i, t in enumerate(SPECIAL_TOKENS)}
    for w in sorted(set(words)):
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
    )


def tiny_llama(
    vocab_size: int,
    hidden: int = 32,
    layers: int = 2,
    heads: int = 4,
    seed: int = 0,
    tie_word_embeddings: bool = False,
) -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=128,
        tie_word_embeddings=tie_word_embeddings,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=3,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).eval()


def perturbed_copy(model: LlamaForCausalLM, scale: float, seed: int) -> LlamaForCausalLM:
    """The model plus seeded Gaussian noise: a stand-in fine-tune."""
    gen = torch.Generator().manual_seed(seed)
    clone = type(model)(model.config).eval()
    clone.load_state_dict(model.state_dict())
    with torch.no_grad():
        for p in clone.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * scale)
    return clone


def save_model(
    model: LlamaForCausalLM,
    tokenizer: PreTrainedTokenizerFast | None,
    folder: Path,
    max_shard_size: str | None = None,
) -> Path:
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(folder, **kwargs)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    return folder
