"""``batch_size: auto``: batches sized from free memory, the same numbers as a
fixed size, smaller batches when memory is short, and a halved budget (never
a failed trial) when a batch runs out of memory anyway."""

from __future__ import annotations

import pytest
import torch
from test_fast_scorer import requests

from optimizer.evaluate import fast as fast_module
from optimizer.evaluate import memory


@pytest.fixture
def auto_lm():
    from conftest import demo_words
    from tiny_models import build_tokenizer, tiny_llama

    tok = build_tokenizer(demo_words())
    model = tiny_llama(len(tok), hidden=32, layers=2, seed=4)
    kwargs = {"pretrained": model, "tokenizer": tok, "max_length": 40}
    fixed = fast_module._fast_hflm()(batch_size=3, **kwargs)
    auto = fast_module._fast_hflm()(batch_size="auto", **kwargs)
    return fixed, auto, len(tok)


def same(got, want) -> bool:
    """Log-likelihoods within 1e-5 (batch composition changes float rounding)
    and identical greedy flags."""
    return len(got) == len(want) and all(
        abs(a - c) <= 1e-5 and b == d for (a, b), (c, d) in zip(got, want)
    )


def batch_sizes(lm, monkeypatch) -> list[int]:
    sizes = []
    real = lm._score_rows

    def spy(reqs, rows, results):
        sizes.append(len(rows))
        return real(reqs, rows, results)

    monkeypatch.setattr(lm, "_score_rows", spy)
    return sizes


def test_auto_gives_the_fixed_sizes_numbers(auto_lm, monkeypatch):
    fixed, auto, vocab = auto_lm
    reqs = requests(vocab)
    sizes = batch_sizes(auto, monkeypatch)
    assert same(auto._loglikelihood_tokens(reqs), fixed._loglikelihood_tokens(reqs))
    assert len(sizes) == 1  # a tiny model: every row fits in one batch


def test_less_free_memory_gives_smaller_batches(auto_lm, monkeypatch):
    _, auto, vocab = auto_lm
    reqs = requests(vocab)
    rows = fast_module.pack(reqs, auto.max_length)
    per_row = memory.row_bytes(auto.model.config, rows[0].length)
    # half of the free memory is the budget: room for 3 rows of the widest
    monkeypatch.setattr(fast_module, "free_bytes", lambda device: 2 * 3 * per_row)
    sizes = batch_sizes(auto, monkeypatch)
    auto._loglikelihood_tokens(reqs)
    assert sizes[0] == 3 and sum(sizes) == len(rows)
    # later batches hold shorter rows, so at least as many of them
    assert all(a <= b for a, b in zip(sizes, sizes[1:-1]))


def test_out_of_memory_halves_the_budget_and_retries(auto_lm, monkeypatch):
    fixed, auto, vocab = auto_lm
    reqs = requests(vocab)
    rows = fast_module.pack(reqs, auto.max_length)
    per_row = memory.row_bytes(auto.model.config, rows[0].length)
    # a fixed free memory (the real one moves with whatever else runs): the
    # budget holds every row at first
    monkeypatch.setattr(fast_module, "free_bytes", lambda device: 2 * len(rows) * per_row)
    real = auto._score_rows
    tried = []

    def tight(reqs_, rows, results):
        tried.append(len(rows))
        if len(rows) > 4:
            raise torch.OutOfMemoryError("out of memory (test)")
        return real(reqs_, rows, results)

    monkeypatch.setattr(auto, "_score_rows", tight)
    assert same(auto._loglikelihood_tokens(reqs), fixed._loglikelihood_tokens(reqs))
    # the first batch ran out of memory; the budget halved until batches fit,
    # and the batches that ran cover every row once (later, shorter rows may
    # fit more of them in the same budget: only the sizes that ran are summed)
    assert tried[0] == len(rows) > 4
    assert sum(n for n in tried if n <= 4) == len(rows)


def test_row_bytes_grow_with_width_and_vocabulary():
    small = type("C", (), {"hidden_size": 64, "vocab_size": 100})()
    big = type("C", (), {"hidden_size": 64, "vocab_size": 100000})()
    assert memory.row_bytes(small, 20) < memory.row_bytes(small, 40)
    assert memory.row_bytes(small, 20) < memory.row_bytes(big, 20)
    assert memory.free_bytes(torch.device("cpu")) > 0
