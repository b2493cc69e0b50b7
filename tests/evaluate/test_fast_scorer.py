"""The ``fast`` backend gives HFLM's numbers: every request's log-likelihood
within 1e-4, the same greedy flags, and the same metrics on every task."""

from __future__ import annotations

import random

import pytest
import torch
from conftest import demo_words
from tiny_models import build_tokenizer, tiny_llama

from optimizer.evaluate.fast import _fast_hflm, pack
from optimizer.evaluate.harness import _quiet_hflm

TOL = 1e-4


@pytest.fixture(scope="module", params=["sdpa", "eager"])
def lms(request):
    tok = build_tokenizer(demo_words())
    model = tiny_llama(len(tok), hidden=32, layers=2, seed=4)
    model.config._attn_implementation = request.param
    kwargs = {"pretrained": model, "tokenizer": tok, "batch_size": 3, "max_length": 40}
    return _quiet_hflm()(**kwargs), _fast_hflm()(**kwargs), len(tok)


def requests(vocab: int, seed: int = 0):
    """Multiple-choice-like groups: shared contexts with 4 continuations of 1-4
    tokens, choices sharing a prefix, single-token choices, one context longer
    than all others and one longer than the model's window (left-truncated)."""
    rng = random.Random(seed)

    def toks(n: int) -> list[int]:
        return [rng.randrange(4, vocab) for _ in range(n)]

    out = []
    for q in range(6):
        ctx = toks(rng.randint(3, 12))
        shared = toks(2)
        for c in range(4):
            if q % 3 == 0:
                cont = toks(1)  # single-token choices
            elif q % 3 == 1:
                cont = shared + toks(c)  # choices sharing a prefix (and one equal to it)
            else:
                cont = toks(rng.randint(1, 4))
            out.append(((f"q{q}", f"c{c}"), ctx, cont))
    out.append((("long", "x"), toks(30), toks(3)))  # longer than every other context
    out.append((("window", "x"), toks(60), toks(2)))  # beyond max_length 40: truncated
    out.append((None, toks(5), toks(1)))  # a rolling-style request without a key
    rng.shuffle(out)
    return out


def test_every_request_matches_hflm(lms):
    hf, fast, vocab = lms
    reqs = requests(vocab)
    want = hf._loglikelihood_tokens(reqs, disable_tqdm=True)
    got = fast._loglikelihood_tokens(reqs)
    assert len(got) == len(want)
    for (key, _, _), (lw, gw), (lg, gg) in zip(reqs, want, got, strict=True):
        assert abs(lw - lg) <= TOL, (key, lw, lg)
        assert gw == gg, key


def test_greedy_flags_are_exercised(lms):
    """The comparison above means something only if both flags occur: a
    continuation made of the model's own argmax tokens is greedy."""
    hf, fast, vocab = lms
    ctx = [5, 6, 7]
    greedy = []
    for _ in range(3):
        logits = hf.model(torch.tensor([ctx + greedy])).logits[0, -1]
        greedy.append(int(logits.argmax()))
    reqs = [(("g", "1"), ctx, greedy), (("g", "2"), ctx, greedy[:1] + [4])]
    if greedy[1] == 4:
        reqs[1] = (("g", "2"), ctx, greedy[:1] + [5])
    assert [g for _, g in fast._loglikelihood_tokens(reqs)] == [True, False]
    assert [g for _, g in hf._loglikelihood_tokens(reqs, disable_tqdm=True)] == [True, False]


def test_a_context_and_shared_continuation_tokens_are_run_once():
    reqs = [((str(i), ""), [5, 6, 7], [8, 9, 10][: 1 + i % 3]) for i in range(4)]
    reqs.append((("fork", ""), [5, 6, 7], [8, 11, 12]))
    reqs.append((("other", ""), [5, 6], [7]))
    rows = pack(reqs, max_length=100)
    assert [len(r.paths) for r in rows] == [5, 1]
    # tails (none) | 8 | 8 9 | (none) | 8 11: the context, then nodes 8, 9 and 11
    assert rows[0].tokens == [8, 9, 11] and rows[0].depths == [1, 2, 2]
    assert rows[0].paths == {0: [], 1: [0], 2: [0, 1], 3: [], 4: [0, 2]}
    assert rows[0].length == 3 + 3


@pytest.mark.parametrize("num_fewshot", [None, 2])
def test_every_task_gives_the_same_metrics(study_zoo, num_fewshot):
    """Every task shipped in eval_tasks/, zero- and few-shot."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from optimizer.evaluate import TaskObjective, make_evaluator
    from optimizer.evaluate.tasks import index_tasks, task_config
    from optimizer.io.resources import builtin_tasks

    index = index_tasks([builtin_tasks()])
    objectives = [TaskObjective(t, task_config(path), "acc") for t, path in sorted(index.items())]
    assert len(objectives) >= 4
    model = AutoModelForCausalLM.from_pretrained(study_zoo["e1"]).eval()
    tok = AutoTokenizer.from_pretrained(study_zoo["e1"])
    scores = {}
    for backend in ("hf", "fast"):
        ev = make_evaluator(backend, objectives, None, num_fewshot).attach(model, tok, 4)
        scores[backend] = ev.score()
        assert ev.score() == scores[backend]  # the next trial sees the same prompts
    assert scores["fast"] == scores["hf"]
    assert set(scores["fast"]) == set(index)


def test_models_that_cannot_take_the_packed_rows_fall_back_to_hflm(lms, monkeypatch):
    """Flash attention takes no custom mask, and a forward without a
    ``logits_to_keep`` cannot skip the projection: HFLM's rows score those."""
    from optimizer.evaluate import fast as fast_module

    hf, fast, vocab = lms
    assert fast_module.packable(fast.model)
    monkeypatch.setattr(fast.model.config, "_attn_implementation", "flash_attention_2")
    assert not fast_module.packable(fast.model)
    monkeypatch.undo()

    class Plain(torch.nn.Module):
        config = fast.model.config

        def forward(self, input_ids):
            return fast.model(input_ids)

    assert not fast_module.packable(Plain())
    monkeypatch.setattr(fast_module, "packable", lambda model: False)
    monkeypatch.setattr(fast, "_score_rows", None)  # the packed path would fail
    reqs = requests(vocab, seed=1)
    assert fast._loglikelihood_tokens(reqs) == hf._loglikelihood_tokens(reqs, disable_tqdm=True)
