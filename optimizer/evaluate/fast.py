"""The ``fast`` evaluator backend: lm-eval's tasks, requests and metrics, with a
log-likelihood scorer that runs each distinct context once.

lm-eval's ``HFLM`` runs every (context, continuation) pair as its own row
(it reuses a context only when every continuation is one token) and computes
the vocabulary projection and log-softmax at every position of every row. A
multiple-choice question with four multi-token answers thus costs four
contexts, and at 135M parameters the 49k-word projection is a large part of
each. Here the requests that share a context become one packed row: the
context once, then the continuations after it as a trie (a token several
continuations begin with, once), each token attending to the context and to
its own continuation's earlier tokens only, at the position it would have
alone. Logits are computed only where a token is scored (``logits_to_keep``),
and rows are batched by length (``batch_size: auto``: as many as free
memory holds, ``memory``). The numbers are HFLM's up to float rounding (the tests
compare every request); rolling log-likelihoods go through the same scorer,
generation is HFLM's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from optimizer.evaluate.harness import HarnessEvaluator, _quiet_hflm
from optimizer.evaluate.memory import free_bytes, rows_that_fit

# attention implementations that take a custom 4D additive mask
MASKABLE = ("eager", "sdpa")

Request = tuple[tuple[str, str] | None, list[int], list[int]]


@dataclass
class PackedRow:
    """A shared prefix and the continuations scored after it, as one row.

    The continuations form a trie of tokens after the prefix, so tokens that
    several continuations begin with ("It is" in "It is a plant." and "It is
    an animal.") are run once too: a node attends to the prefix and to its own
    ancestors, at the position it would have in its continuation alone.
    """

    prefix: tuple[int, ...]
    tokens: list[int] = field(default_factory=list)  # the trie's nodes, in order
    parents: list[int] = field(default_factory=list)  # -1: a child of the prefix
    depths: list[int] = field(default_factory=list)  # 1 for a child of the prefix
    paths: dict[int, list[int]] = field(default_factory=dict)  # request -> its nodes
    _children: dict[tuple[int, int], int] = field(default_factory=dict)

    def add(self, request: int, tail: Sequence[int]) -> None:
        """Add a continuation without its last token (nothing is read after it)."""
        path, parent = [], -1
        for token in tail:
            node = self._children.get((parent, token))
            if node is None:
                node = len(self.tokens)
                self._children[(parent, token)] = node
                self.tokens.append(token)
                self.parents.append(parent)
                self.depths.append(1 + (self.depths[parent] if parent >= 0 else 0))
            path.append(node)
            parent = node
        self.paths[request] = path

    @property
    def length(self) -> int:
        return len(self.prefix) + len(self.tokens)


def prefix_of(context: list[int], continuation: list[int], max_length: int) -> tuple[int, ...]:
    """The model input of HFLM's row for this request is ``prefix +
    continuation[:-1]`` (left-truncated as HFLM does), so the prefix's last
    position predicts the continuation's first token."""
    whole = (context + continuation)[-(max_length + 1) :]
    return tuple(whole[: len(whole) - len(continuation)])


def pack(requests: Sequence[Request], max_length: int) -> list[PackedRow]:
    """Requests grouped by prefix, longest rows first (little padding per batch)."""
    rows: dict[tuple[int, ...], PackedRow] = {}
    for i, (_, context, continuation) in enumerate(requests):
        prefix = prefix_of(context, continuation, max_length)
        rows.setdefault(prefix, PackedRow(prefix)).add(i, continuation[:-1])
    return sorted(rows.values(), key=lambda r: -r.length)


def _batch_inputs(rows: Sequence[PackedRow], dtype: torch.dtype, device: torch.device):
    """input ids, positions, the 4D additive mask and the scored positions of a
    batch of packed rows, right-padded; plus, per request, the flat indices of
    its scored positions among the kept logits."""
    width = max(r.length for r in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    pos = torch.zeros(len(rows), width, dtype=torch.long)
    keep = torch.zeros(len(rows), width, dtype=torch.bool)
    causal = torch.ones(width, width, dtype=torch.bool).tril_()
    allowed = causal.repeat(len(rows), 1, 1)  # (row, query, key); padding: causal
    cells: dict[int, list[tuple[int, int]]] = {}  # request -> (row, column) scored
    for b, row in enumerate(rows):
        n, m = len(row.prefix), len(row.tokens)
        ids[b, :n] = torch.tensor(row.prefix)
        ids[b, n : n + m] = torch.tensor(row.tokens, dtype=torch.long)
        pos[b, :n] = torch.arange(n)
        pos[b, n : n + m] = n - 1 + torch.tensor(row.depths, dtype=torch.long)
        keep[b, n - 1] = True
        keep[b, n : n + m] = True
        nodes = allowed[b, n : n + m, n : n + m]
        nodes.zero_()
        for q in range(m):  # a node sees itself and its ancestors
            a = q
            while a >= 0:
                nodes[q, a] = True
                a = row.parents[a]
        for request, path in row.paths.items():
            cells[request] = [(b, n - 1)] + [(b, n + node) for node in path]
    mask = torch.zeros(allowed.shape, dtype=dtype)
    mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    flat = keep.flatten().cumsum(0) - 1  # (row, column) -> index among kept logits
    index = {r: [int(flat[b * width + c]) for b, c in at] for r, at in cells.items()}
    return ids.to(device), pos.to(device), mask.unsqueeze(1).to(device), keep.to(device), index


def packable(model) -> bool:
    """Whether the model takes a custom 4D mask and a boolean ``logits_to_keep``:
    else (flash attention, a forward of its own) HFLM's rows score it."""
    import inspect

    impl = getattr(model.config, "_attn_implementation", None)
    try:
        takes = "logits_to_keep" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        takes = False
    return impl in MASKABLE and takes


def _fast_hflm() -> type:
    base = _quiet_hflm()

    class FastHFLM(base):
        """HFLM whose log-likelihood requests are packed by shared prefix."""

        def _loglikelihood_tokens(
            self,
            requests: list[Request],
            disable_tqdm: bool = False,
            override_bs: int | None = None,
        ) -> list[tuple[float, bool]]:
            if not packable(self.model) or self.backend != "causal":
                return super()._loglikelihood_tokens(requests, disable_tqdm, override_bs)
            results: list[tuple[float, bool] | None] = [None] * len(requests)
            rows = pack(requests, self.max_length)
            if override_bs or isinstance(self.batch_size, int):
                size = override_bs or self.batch_size
                for start in range(0, len(rows), size):
                    self._score_rows(requests, rows[start : start + size], results)
            else:  # "auto": as many rows as free memory holds, batch by batch
                self._score_auto(requests, rows, results)
            for (key, _, _), answer in zip(requests, results, strict=True):
                if key is not None:
                    self.cache_hook.add_partial("loglikelihood", key, answer)
            return results  # type: ignore[return-value]

        def _score_auto(self, requests, rows, results) -> None:
            """Batches sized from free memory (half of it, as the estimate is
            rough); on out-of-memory the budget halves and the batch is retried."""
            budget = free_bytes(self.device) // 2
            start = 0
            while start < len(rows):
                n = rows_that_fit(self.model.config, rows[start:], budget)
                try:
                    self._score_rows(requests, rows[start : start + n], results)
                except torch.OutOfMemoryError:
                    if n == 1:
                        raise
                    budget //= 2
                    if self.device.type == "cuda":
                        torch.cuda.empty_cache()
                    continue
                start += n

        @torch.no_grad()
        def _score_rows(self, requests, rows, results) -> None:
            dtype = next(self.model.parameters()).dtype
            ids, pos, mask, keep, index = _batch_inputs(rows, dtype, self.device)
            with torch.autocast(
                device_type=self.device.type,
                dtype=self.mixed_precision_dtype,
                enabled=self.mixed_precision_dtype is not None,
            ):
                logits = self.model(
                    input_ids=ids,
                    attention_mask=mask,
                    position_ids=pos,
                    logits_to_keep=keep,
                    use_cache=False,
                ).logits
            logprobs = F.log_softmax(logits.reshape(-1, logits.shape[-1]), -1, self.softmax_dtype)
            for member, flat in index.items():
                cont = torch.tensor(requests[member][2], device=logprobs.device)
                rows_lp = logprobs[torch.tensor(flat, device=logprobs.device)]
                total = float(rows_lp.gather(1, cont.unsqueeze(1)).sum())
                greedy = bool((rows_lp.argmax(-1) == cont).all())
                results[member] = (total, greedy)

    return FastHFLM


class FastEvaluator(HarnessEvaluator):
    """The ``hf`` backend's tasks and metrics, scored by the packed scorer."""

    def attach(self, model, tokenizer, batch_size: int | str = 16) -> FastEvaluator:
        self.lm = _fast_hflm()(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
        return self
