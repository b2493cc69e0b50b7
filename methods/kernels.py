"""The elementwise last step of every task-vector method, as one fused pass.

Every method ends alike: each task vector is sparsified by a mask that depends
on its entry alone (given per-tensor thresholds, cached ranks or counter-based
random draws) and the survivors are summed into the base or TIES-merged. Eager
torch runs that as two dozen full-tensor passes with temporaries; the same code
handed to ``torch.compile`` becomes one loop that reads each input once and
writes the result once, which is what brings a candidate near the
memory-bandwidth floor. So the math is written once, as plain elementwise
torch, and runs eagerly on small tensors, on accelerators and wherever
compiling is off or unavailable, and compiled on large CPU tensors. The kernels
use only ops whose rounding the compiled loop reproduces exactly
(``a + b * c``, never ``add(alpha=)``, which eager torch computes with a fused
multiply-add) and only dtypes it vectorizes (ranks travel packed two per int32,
not int16): both paths give the same bytes, which the tests check.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import types
from collections.abc import Callable, Sequence

import torch

log = logging.getLogger(__name__)

# ---------------------------------------------------------------- random draws

# lowbias32 (C. Wellons' hash-prospector): a 32-bit integer hash whose output
# bits are close to independent. Two rounds keyed by the (seed, tensor, model)
# key turn an element's index into its draw: a counter-based generator, so the
# draws need no state, fuse into the kernel, and are the same bits on any device.
_M1 = 0x7FEB352D
_M2 = 0x846CA68B - (1 << 32)  # as a signed int32 constant


def _mix(x: torch.Tensor) -> torch.Tensor:
    """lowbias32 on int32 (multiplication wraps; shifts masked to be logical).

    Updates ``x`` in place (callers pass a fresh tensor): eagerly, each op that
    builds a new tensor costs an allocation, and the hash is a dozen ops
    (docs/benchmarks.md, design measurements); compiled, it is the same loop.
    """
    t = x >> 16
    t &= 0xFFFF
    x ^= t
    x *= _M1
    t = x >> 15
    t &= 0x1FFFF
    x ^= t
    x *= _M2
    t = x >> 16
    t &= 0xFFFF
    x ^= t
    return x


def _hashed_uniform(idx: torch.Tensor, k0: torch.Tensor, k1: torch.Tensor) -> torch.Tensor:
    """Entry index ``idx`` (int32) -> top 24 bits of mix(mix(idx ^ k0) ^ k1) / 2^24."""
    h = _mix(idx ^ k0.int())
    h ^= k1.int()
    h = _mix(h)
    h >>= 8
    h &= 0xFFFFFF
    return h.to(torch.float32) * (1.0 / 16777216)


def uniform_draws(n: int, key: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """n uniform [0, 1) float32 draws for a key of two int32 values (any int
    dtype): element i gets the top 24 bits of mix(mix(i ^ key[0]) ^ key[1]) / 2^24."""
    k = key.int()
    return _hashed_uniform(torch.arange(n, dtype=torch.int32, device=device), k[0], k[1])


# (first column, full width) of the block of columns an eager kernel runs on
# (methods.launch runs eager kernels a block at a time); (0, 0): the whole width
NO_WINDOW = (0, 0)
_blocks = threading.local()


@contextlib.contextmanager
def column_block(start: int, full: int):
    """Within it, eager kernels in this thread see columns [start, start + m) of
    tensors ``full`` columns wide, so an entry's counter (its flat position)
    and so its random draw are those of the whole tensor."""
    _blocks.window = (start, full)
    try:
        yield
    finally:
        _blocks.window = NO_WINDOW


def _column_window() -> tuple[int, int]:
    if torch.compiler.is_compiling():  # compiled kernels always see whole tensors
        return NO_WINDOW
    return getattr(_blocks, "window", NO_WINDOW)


def _flat_index(d: torch.Tensor, half: int) -> torch.Tensor:
    """Each entry's flat position within its own tensor, for a stack ``d`` (slots,
    m) of same-shaped tensors or of one half of each (``half`` 1: the second),
    or a block of its columns (``column_block``)."""
    start, full = _column_window()
    m = d.shape[1]
    full = full or m
    pos = torch.arange(start, start + m, dtype=torch.int32, device=d.device)
    return pos.view(1, m) + half * full


def _unpack_ranks(words: torch.Tensor, half: int) -> torch.Tensor:
    """Row ranks of one half of each task vector from methods.masks.PackedRanks
    words (slots, n/2): the low 16 bits rank the first half, the high the second."""
    return (words >> (16 * half)) & 0xFFFF


# ----------------------------------------------------------------- sparsifiers
# sparsify(d, aux, s, i, half): d a stack of task vectors, one per slot (a
# tensor of the model each), (slots, n), or with packed ranks one half of each
# (slots, n/2), ``half`` saying which; aux their per-element inputs; s and i
# per slot the expert's float32 and int64 scalars, s[:, k] the k-th as a
# column (tensors, so new parameter values never recompile).


def _kept(mask: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """x where ``mask`` is set, else +0.

    Compiled, a select (``torch.where``). Eagerly, arithmetic: x · mask + 0, as a
    ``where`` is many times slower than a multiply in eager torch (the one-shot
    path) and, compiled, the arithmetic is the slower one (docs/benchmarks.md,
    design measurements). Inputs are finite, so no 0 · inf arises; the + 0
    turns the -0 of a dropped negative entry into the +0 a where gives (a kept
    -0, from an expert's -0 over a base's +0, becomes +0: the same number).
    Here and below, eager results are updated in place where the kernel owns
    them: eagerly, every new tensor costs an allocation.
    """
    if torch.compiler.is_compiling():
        return torch.where(mask, x, 0.0)
    kept = x * mask
    kept += 0.0
    return kept


def _below(u: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """u < q: compiled, the comparison; eagerly, 1.0 or 0.0 from relu(sign(q - u)),
    exact for finite floats (q - u is 0 only where they are equal) and several
    times faster than a comparison's bool tensor times a float one."""
    if torch.compiler.is_compiling():
        return u < q
    m = q - u
    m.sign_().relu_()
    return m


def keep_all(d: torch.Tensor, aux, s: torch.Tensor, i: torch.Tensor, half: int = 0) -> torch.Tensor:
    return d


def keep_where(
    d: torch.Tensor, aux, s: torch.Tensor, i: torch.Tensor, half: int = 0
) -> torch.Tensor:
    """Keep where the boolean mask aux[0] is set: a mask made eagerly (Breadcrumbs'
    row bands without the rank cache), 1 byte per entry where a masked copy of
    the task vector would take 4."""
    return _kept(aux[0], d)


def magnitude_window(
    d: torch.Tensor, aux, s: torch.Tensor, i: torch.Tensor, half: int = 0
) -> torch.Tensor:
    """Keep s[0] <= |d| <= s[1], where of the entries equal to s[0] only those at
    flat positions >= i[0] count, and of those equal to s[1] only positions <= i[1]
    (the stable tie rule, methods.magnitudes.Window)."""
    mag = d.abs()
    pos = _flat_index(d, half)
    above = (mag > s[:, 0]) | ((mag == s[:, 0]) & (pos >= i[:, 0].int()))
    below = (mag < s[:, 1]) | ((mag == s[:, 1]) & (pos <= i[:, 1].int()))
    return _kept(above & below, d)


def rank_window(
    d: torch.Tensor, aux, s: torch.Tensor, i: torch.Tensor, half: int = 0
) -> torch.Tensor:
    """Keep entries whose row rank (packed words aux[0]) lies in [i[0], i[1])."""
    r = _unpack_ranks(aux[0], half)
    return _kept((r >= i[:, 0].int()) & (r < i[:, 1].int()), d)


def random_keep(
    d: torch.Tensor, aux, s: torch.Tensor, i: torch.Tensor, half: int = 0
) -> torch.Tensor:
    """DARE: keep where the draw (key i[0], i[1]) < q = s[0]; survivors divided by s[1]."""
    u = _hashed_uniform(_flat_index(d, half), i[:, 0], i[:, 1])
    kept = _kept(_below(u, s[:, 0]), d)
    kept /= s[:, 1]
    return kept


def _ranked_draws(d: torch.Tensor, aux, s: torch.Tensor, i: torch.Tensor, half: int):
    """(u, q): the draws (key i[0], i[1]) and keep probabilities q = s[0] + s[1] ·
    row rank (packed words aux[0])."""
    u = _hashed_uniform(_flat_index(d, half), i[:, 0], i[:, 1])
    q = _unpack_ranks(aux[0], half).float()
    q *= s[:, 1]
    q += s[:, 0]
    return u, q


def ranked_random_keep(
    d: torch.Tensor, aux, s: torch.Tensor, i: torch.Tensor, half: int = 0
) -> torch.Tensor:
    """DELLA without rescaling: keep where the draw u < q (see _ranked_draws)."""
    u, q = _ranked_draws(d, aux, s, i, half)
    return _kept(_below(u, q), d)


def ranked_random_keep_rescaled(
    d: torch.Tensor, aux, s: torch.Tensor, i: torch.Tensor, half: int = 0
) -> torch.Tensor:
    """DELLA: keep where u < q, survivors divided by q. A kernel of its own, not a
    0/1 scalar choosing the divisor: that choice slowed this compute-bound loop
    measurably (docs/benchmarks.md, design measurements), the same bytes either way."""
    u, q = _ranked_draws(d, aux, s, i, half)
    kept = _kept(_below(u, q), d)
    kept /= q
    return kept


# -------------------------------------------------------------------- combines


def weighted_sum(
    base: torch.Tensor, taus: Sequence[torch.Tensor], c: torch.Tensor, g: torch.Tensor
) -> torch.Tensor:
    """g[0] · base + Σ c[t, 0] τ_t, accumulated left to right (columns per slot)."""
    acc = base * g[:, 0]
    for t, tau in enumerate(taus):
        acc += tau * c[:, t, 0]
    return acc


def consensus(
    base: torch.Tensor, taus: Sequence[torch.Tensor], c: torch.Tensor, g: torch.Tensor
) -> torch.Tensor:
    """TIES elect + disjoint merge: base + λ m.

    c[t] = (vote weight, merge weight, agreement sign), g = (λ, normalize).
    The elected sign is that of Σ c[t, 0] τ_t (0 counts as +); τ_t agrees when
    c[t, 2] · τ_t has the elected sign (so τ_t = 0, or c[t, 2] = 0, never does);
    m = Σ_agree c[t, 1] τ_t, divided by Σ_agree c[t, 1] when normalizing (0
    where nobody agrees).
    """
    if torch.compiler.is_compiling():
        return _consensus_selects(base, taus, c, g)
    return _consensus_arithmetic(base, taus, c, g)


def _consensus_selects(
    base: torch.Tensor, taus: Sequence[torch.Tensor], c: torch.Tensor, g: torch.Tensor
) -> torch.Tensor:
    """consensus with comparisons and selects: the faster form compiled."""
    votes = taus[0] * c[:, 0, 0]
    for t in range(1, len(taus)):
        votes = votes + taus[t] * c[:, t, 0]
    positive = votes >= 0
    num = torch.zeros_like(base)
    den = torch.zeros_like(base)
    for t, tau in enumerate(taus):
        side = tau * c[:, t, 2]
        agree = torch.where(positive, side > 0, side < 0)
        num = num + torch.where(agree, tau * c[:, t, 1], 0.0)
        den = den + torch.where(agree, c[:, t, 1], 0.0)
    merged = torch.where(g[:, 1] > 0, num / torch.where(den == 0, 1.0, den), num)
    return base + merged * g[:, 0]


def _consensus_arithmetic(
    base: torch.Tensor, taus: Sequence[torch.Tensor], c: torch.Tensor, g: torch.Tensor
) -> torch.Tensor:
    """consensus in float arithmetic, in place: the faster form in eager torch,
    where comparisons and bool tensors are slow; the same bytes."""
    votes = taus[0] * c[:, 0, 0]
    for t in range(1, len(taus)):
        votes += taus[t] * c[:, t, 0]
    votes += 0.0  # a -0 vote counts as + (-0 + 0 is +0)
    elected = torch.ones_like(votes).copysign_(votes)  # +1 or -1
    num = torch.zeros_like(base)
    den = torch.zeros_like(base)
    for t, tau in enumerate(taus):
        # 1 where τ_t has the elected sign, else 0 (τ_t = 0 never does), in
        # float arithmetic: comparisons and bool tensors are slow in eager torch
        agree = tau * c[:, t, 2]
        agree *= elected
        agree.sign_().relu_()
        term = tau * c[:, t, 1]
        term *= agree
        num += term
        agree *= c[:, t, 1]
        den += agree
    # divide by Σ agreeing weights (0 -> 1) when normalizing, else by 1
    normalize = (g[:, 1] > 0).float()
    nobody = den.sign()  # 1 - |sign(den)|: 1 where den is 0, else 0
    nobody.abs_().neg_().add_(1.0)
    den += nobody
    den *= normalize
    den += 1.0 - normalize
    num /= den
    num *= g[:, 0]
    num += base
    return num


def mean_scaled(
    base: torch.Tensor, taus: Sequence[torch.Tensor], c: torch.Tensor, g: torch.Tensor
) -> torch.Tensor:
    """Model Stock: base + (Σ τ_t / T) · c, with c broadcast (per tensor or row)."""
    acc = taus[0]
    for tau in taus[1:]:
        acc = acc + tau
    return base + (acc / len(taus)) * c


Sparsify = Callable[..., torch.Tensor]
Combine = Callable[..., torch.Tensor]
# sparsifiers that draw from the counter hash (eagerly: a full-size temporary per op)
HASHED_DRAWS = (random_keep, ranked_random_keep, ranked_random_keep_rescaled)


class NotFiniteError(ValueError):
    """A merged tensor holds NaN or inf (``tensor``: its name, where known)."""

    def __init__(self, message: str, tensor: str = "") -> None:
        super().__init__(message)
        self.tensor = tensor


# Scalars travel packed in two tensors, a row per slot: per expert 3 floats
# (s) and 3 more (c), then 2 globals (g); per expert 2 ints (i). Few, flat
# arguments keep each compiled call's guard checks short.
S_WIDTH, C_WIDTH, G_WIDTH, I_WIDTH = 3, 3, 2, 2


def _columns(x: torch.Tensor, groups: int, width: int, like: torch.Tensor) -> torch.Tensor:
    """(slots, groups·width) -> (slots, groups, width, 1, ...) broadcasting against ``like``."""
    x = x.unflatten(1, (groups, width)) if groups else x
    return x.reshape(*x.shape, *[1] * (like.dim() - 1))


# Sparsifiers reading methods.masks.PackedRanks: their tensors come as (slots,
# 2, n/2) and the kernel handles the two halves as two (slots, n/2) streams
# in one loop, each with its half of the words. (A (slots, 2, n/2) loop with
# the words broadcast over the middle dimension leaves inductor two loops of
# different shapes it cannot fuse: a full extra pass.)
PAIRED = (rank_window, ranked_random_keep, ranked_random_keep_rescaled)


def _make(sparsify: Sparsify, combine: Combine, n_experts: int, n_aux: int):
    e = n_experts
    halves = (0, 1) if sparsify in PAIRED else (None,)

    def kernel(base, out, pf, pi, extra, *tensors):
        for h in halves:
            b = base if h is None else base[:, h]
            s = _columns(pf[:, : S_WIDTH * e], e, S_WIDTH, b)
            c = _columns(pf[:, S_WIDTH * e : (S_WIDTH + C_WIDTH) * e], e, C_WIDTH, b)
            g = _columns(pf[:, (S_WIDTH + C_WIDTH) * e :], 0, G_WIDTH, b)
            i = _columns(pi, e, I_WIDTH, b)
            deltas = tensors[:e] if h is None else [d[:, h] for d in tensors[:e]]
            aux = tensors[e:] if h is None else [a[:, 0] for a in tensors[e:]]
            taus = [
                sparsify(d, aux[t * n_aux : (t + 1) * n_aux], s[:, t], i[:, t], h or 0)
                for t, d in enumerate(deltas)
            ]
            merged = combine(b, taus, extra if combine is mean_scaled else c, g)
            (out if h is None else out[h]).copy_(merged)
        return out

    # a code object of its own per variant: dynamo keeps one cache per code object
    name = f"{sparsify.__name__}__{combine.__name__}__{n_experts}x{n_aux}"
    code = kernel.__code__.replace(co_name=name, co_qualname=name)
    return types.FunctionType(code, kernel.__globals__, name, None, kernel.__closure__)


# ------------------------------------------------------------------- dispatch

# Tensors below this many elements run eagerly: compiling would cost more than it saves.
COMPILE_MIN_ELEMENTS = 1 << 16

# Inductor stores an intermediate with several readers or a long expression
# (a sparsified task vector: the hash, the rank unpacking) to a full-size
# buffer and reads it back in a second loop. Here each one lives for a single
# element of a single loop: recomputing nothing, keeping it in registers is
# strictly better (docs/benchmarks.md, design measurements).
_ONE_LOOP = {"realize_reads_threshold": 100, "realize_cpu_opcount_threshold": 1000}

_lock = threading.Lock()
_compiled: dict[tuple[Sparsify, Combine], Callable] = {}
_compile_failed = False


def _compiled_kernel(key: tuple, make: Callable[[], Callable]) -> Callable | None:
    if _compile_failed:
        return None
    with _lock:
        fn = _compiled.get(key)
        if fn is None:
            import torch._dynamo

            cfg = torch._dynamo.config
            for limit in ("recompile_limit", "cache_size_limit"):
                if hasattr(cfg, limit):
                    setattr(cfg, limit, max(getattr(cfg, limit), 64))
            fn = _compiled[key] = torch.compile(
                make(), dynamic=True, fullgraph=True, options=_ONE_LOOP
            )
        return fn


def _toolchain_errors() -> tuple[type[BaseException], ...]:
    """What a machine without a working C++ toolchain raises from a first compile."""
    import torch._dynamo.exc
    import torch._inductor.exc

    names = ("InductorError", "CppCompileError", "InvalidCxxCompiler", "BackendCompilerFailed")
    found = [getattr(m, n, None) for m in (torch._inductor.exc, torch._dynamo.exc) for n in names]
    return (*{e for e in found if isinstance(e, type)}, OSError)


def compiles(compile: bool, n: int, device: torch.device) -> bool:
    """Whether a kernel call with these settings goes through torch.compile."""
    return compile and n >= COMPILE_MIN_ELEMENTS and device.type == "cpu" and not _compile_failed


@torch.no_grad()
def _call(key: tuple, make: Callable[[], Callable], args: tuple, compile: bool, n: int):
    """``make()(*args)``, through torch.compile when asked and worth it."""
    global _compile_failed
    first = args[0][0] if isinstance(args[0], list) else args[0]
    if compiles(compile, n, first.device):
        fn = _compiled_kernel(key, make)
        if fn is not None:
            try:
                return fn(*args)
            except _toolchain_errors() as e:  # the compiler, not the math: fall back once
                _compile_failed = True
                log.warning("torch.compile unavailable (%s); merging with eager torch", e)
    return make()(*args)


def _count_equal(mats: list[torch.Tensor], values: torch.Tensor) -> torch.Tensor:
    return torch.stack([(m.abs() == values[k]).sum(1) for k, m in enumerate(mats)])


def count_equal(
    mats: Sequence[torch.Tensor], values: Sequence[float], compile: bool = False
) -> torch.Tensor:
    """(k, r): how many entries of row r of mats[k] have |x| == values[k]; the
    matrices share a shape. One fused read of each, in one call."""
    v = torch.tensor(list(values), dtype=mats[0].dtype, device=mats[0].device)
    key = ("count_equal",)
    return _call(key, lambda: _count_equal, (list(mats), v), compile, mats[0].numel())


def ensure_finite(t: torch.Tensor) -> torch.Tensor:
    """``t``, or NotFiniteError: for methods that do not run through a kernel."""
    if t.numel():
        lo, hi = torch.aminmax(t)
        if not (math.isfinite(float(lo)) and math.isfinite(float(hi))):
            raise NotFiniteError("the merge produced NaN or inf values")
    return t
