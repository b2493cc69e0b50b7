"""Kernel calls, launched one per tensor or stacked: many same-shaped tensors in one call.

A model repeats the same few tensor shapes once per layer (SmolLM2-135M: 272
tensors, 6 shapes). Launching a compiled kernel costs a fixed time of guards
and wrappers, and building its scalars another bit, so one launch per tensor
costs about as much as the memory traffic on a small model (docs/benchmarks.md, design measurements).
When the tensors of consecutive calls lie at a fixed stride in one buffer (the
resident engine stores base, task vectors, rank caches and the model's own
parameters that way, grouped by shape), those calls become one launch over a
strided view with a row of scalars per tensor: the same elementwise math on
the same bytes, with the per-launch cost paid once per shape.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from methods import kernels
from methods.kernels import (
    C_WIDTH,
    G_WIDTH,
    I_WIDTH,
    PAIRED,
    S_WIDTH,
    Combine,
    NotFiniteError,
    Sparsify,
    _call,
    _make,
    ensure_finite,
)


@dataclass
class KernelCall:
    """out = combine(base, [sparsify(τ_t, aux_t, s_t, i_t)], c, g) for one tensor.

    Tensors are already in the kernel's layout (flat, (2, n/2) or, with a
    per-row ``extra``, the tensor's own shape); ``floats``/``ints`` are the
    packed scalars. ``check``: the result needs an explicit finiteness check.
    """

    sparsify: Sparsify
    combine: Combine
    base: torch.Tensor
    out: torch.Tensor
    taus: list[torch.Tensor]
    aux: list[torch.Tensor]  # per expert n_aux tensors, flattened in expert order
    n_aux: int
    floats: list[float]
    ints: list[int]
    extra: torch.Tensor | None = None
    name: str = ""
    check: bool = False
    # what the caller receives once launched: the tensor ``out`` views
    result: torch.Tensor | None = None

    @property
    def key(self) -> tuple:
        return (self.sparsify, self.combine, len(self.taus), self.n_aux)

    def tensors(self) -> list[torch.Tensor]:
        return [self.base, self.out, *self.taus, *self.aux]


def pack_scalars(
    s_rows: Sequence[Sequence[float]],
    i_rows: Sequence[Sequence[int]],
    c_rows: Sequence[Sequence[float]],
    g: Sequence[float],
) -> tuple[list[float], list[int]]:
    """Per-expert rows and globals, zero-padded to the kernel's fixed widths."""
    floats: list[float] = []
    for row in s_rows:
        floats += [*row, *[0.0] * (S_WIDTH - len(row))]
    for row in c_rows:
        floats += [*row, *[0.0] * (C_WIDTH - len(row))]
    floats += [*g, *[0.0] * (G_WIDTH - len(g))]
    ints: list[int] = []
    for row in i_rows:
        ints += [*row, *[0] * (I_WIDTH - len(row))]
    return floats, ints


def _place(t: torch.Tensor) -> tuple:
    return (t.untyped_storage().data_ptr(), t.dtype, t.shape, t.stride())


def _follows(run: list[KernelCall], call: KernelCall) -> bool:
    """Whether every tensor of ``call`` lies one stride after its counterpart in
    the run's last call (the stride set by the run's first two calls). The run
    and ``call`` share kernel and buffers (``launch`` groups by both)."""
    last, first = run[-1], run[0]
    if call.extra is not None or last.extra is not None:  # not in tensors(): never stacked
        return False
    for t0, tp, t in zip(first.tensors(), last.tensors(), call.tensors()):
        step = t.storage_offset() - tp.storage_offset()
        if step < t.numel():  # overlapping, or out of order
            return False
        if len(run) > 1 and step * (len(run) - 1) != tp.storage_offset() - t0.storage_offset():
            return False
    return True


def _stacked(ts: list[torch.Tensor]) -> torch.Tensor:
    t0 = ts[0]
    step = ts[1].storage_offset() - t0.storage_offset() if len(ts) > 1 else t0.numel()
    return t0.as_strided((len(ts), *t0.shape), (step, *t0.stride()), t0.storage_offset())


# eager kernels run a block of about this many elements at a time
EAGER_BLOCK = 1 << 18


def _launch_run(run: list[KernelCall], compile: bool) -> None:
    first = run[0]
    if first.base.numel() == 0:
        return
    columns = list(zip(*(c.tensors() for c in run)))
    base, out, *rest = [_stacked(list(col)) for col in columns]
    dev = first.base.device
    pf = torch.tensor([c.floats for c in run], dtype=torch.float32, device=dev)
    pi = torch.tensor([c.ints for c in run], dtype=torch.int64, device=dev)
    extra = first.extra.unsqueeze(0) if first.extra is not None else pf
    if first.sparsify in PAIRED:  # the halves as outputs of their own (see kernels.PAIRED)
        out = [out[:, 0], out[:, 1]]
    args = (base, out, pf, pi, extra, *rest)
    if kernels.compiles(compile, base.numel(), dev):
        _call(first.key, lambda: _make(*first.key), args, compile, base.numel())
    else:
        _eager_blocks(_make(*first.key), base, out, pf, pi, extra, rest)


def _eager_blocks(fn, base, out, pf, pi, extra, rest) -> None:
    """Run an eager kernel a block of columns at a time.

    Eagerly, every operation of the kernel writes a temporary the size of its
    input; over a whole tensor those temporaries stream through memory, over a
    block of ~256K entries they stay in cache (the counter hash of DARE and
    DELLA has a dozen such operations: docs/benchmarks.md). The entries'
    positions (``kernels.column_block``) and so the bytes are the same.
    """
    width = base.shape[-1]
    step = max(1, EAGER_BLOCK // max(1, base.numel() // width))
    if step >= width:
        fn(base, out, pf, pi, extra, *rest)
        return

    def cut(t, lo: int, hi: int):
        if isinstance(t, list):
            return [cut(x, lo, hi) for x in t]
        return t[..., lo:hi] if t.dim() and t.shape[-1] == width else t

    for lo in range(0, width, step):
        hi = min(width, lo + step)
        block = [cut(t, lo, hi) for t in (base, out, *rest)]
        blocked_extra = extra if extra is pf else cut(extra, lo, hi)
        with kernels.column_block(lo, width):
            fn(block[0], block[1], pf, pi, blocked_extra, *block[2:])


@dataclass
class Written:
    """A plan already carried out (SLERP's eager math): nothing left to launch."""

    result: torch.Tensor
    name: str = ""


# What a method returns for one tensor: a kernel call for the caller to launch
# (alone, or stacked with its same-shaped neighbours), or the written result.
Plan = KernelCall | Written


def launch(plans: Sequence[Plan], compile: bool = False) -> None:
    """Run ``plans``: kernel calls of one kernel whose tensors sit at a fixed
    stride from one call to the next as one stacked launch, the rest one by
    one; then check the results that need it (NotFiniteError names the tensor)."""
    calls = [p for p in plans if isinstance(p, KernelCall)]
    runs: dict[tuple, list[list[KernelCall]]] = {}
    for call in calls:
        # same kernel, same buffers (a down_proj and an up_proj flatten alike)
        group = (call.key, *(_place(t) for t in call.tensors()))
        chains = runs.setdefault(group, [])
        if chains and _follows(chains[-1], call):
            chains[-1].append(call)
        else:
            chains.append([call])
    for chains in runs.values():
        for run in chains:
            _launch_run(run, compile)
    for call in calls:
        if call.check:
            try:
                ensure_finite(call.out)
            except NotFiniteError as e:
                raise NotFiniteError(str(e), call.name) from None


def run_method(spec, base, deltas, params, ctx, out=None) -> torch.Tensor:
    """One tensor merged now: ``spec``'s plan, launched, and its result.

    The engine launches plans itself (stacked, once per candidate); this is
    for everything that merges one tensor at a time: one-shot merges and tests.
    """
    plan = spec.fn(base, deltas, params, ctx, out=out)
    launch([plan], ctx.compile)
    return plan.result
