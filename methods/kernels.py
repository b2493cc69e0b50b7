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
    """lowbias32 on int32 (multiplication wraps; shifts masked to be logical)."""
    x = x ^ ((x >> 16) & 0xFFFF)
    x = x * _M1
    x = x ^ ((x >> 15) & 0x1FFFF)
    x = x * _M2
    return x ^ ((x >> 16) & 0xFFFF)


def uniform_draws(n: int, key: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """n uniform [0, 1) float32 draws for a key of two int32 values (any int
    dtype): element i gets the top 24 bits of mix(mix(i ^ key[0]) ^ key[1]) / 2^24."""
    idx = torch.arange(n, dtype=torch.int32, device=device)
    k = key.int()
    h = _mix(_mix(idx ^ k[0]) ^ k[1])
    return ((h >> 8) & 0xFFFFFF).to(torch.float32) * (1.0 / 16777216)


def _unpack_ranks(words: torch.Tensor) -> torch.Tensor:
    """Row ranks from methods.masks.PackedRanks words, for a task vector viewed as
    (2, n/2): row 0 holds the low halves of the words, row 1 the high halves."""
    shift = torch.arange(2, dtype=torch.int32, device=words.device).view(2, 1) * 16
    return (words >> shift) & 0xFFFF


# ----------------------------------------------------------------- sparsifiers
# sparsify(d, aux, s, i): d a task vector (flat, or (2, n/2) with packed ranks),
# aux its per-element inputs, s and i its rows of per-expert float32 and int64
# scalars (tensors, so new parameter values never recompile).


def keep_all(d: torch.Tensor, aux, s: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
    return d


def magnitude_window(d: torch.Tensor, aux, s: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
    """Keep s[0] <= |d| <= s[1], where of the entries equal to s[0] only those at
    flat positions >= i[0] count, and of those equal to s[1] only positions <= i[1]
    (the stable tie rule, methods.magnitudes.Window)."""
    mag = d.abs()
    pos = torch.arange(d.numel(), dtype=torch.int32, device=d.device).view(d.shape)
    above = (mag > s[0]) | ((mag == s[0]) & (pos >= i[0].int()))
    below = (mag < s[1]) | ((mag == s[1]) & (pos <= i[1].int()))
    return torch.where(above & below, d, 0.0)


def rank_window(d: torch.Tensor, aux, s: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
    """Keep entries whose row rank (packed words aux[0]) lies in [i[0], i[1])."""
    r = _unpack_ranks(aux[0])
    return torch.where((r >= i[0].int()) & (r < i[1].int()), d, 0.0)


def random_keep(d: torch.Tensor, aux, s: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
    """DARE: keep where the draw (key i[0], i[1]) < q = s[0]; survivors divided by s[1]."""
    u = uniform_draws(d.numel(), i, d.device).view(d.shape)
    return torch.where(u < s[0], d, 0.0) / s[1]


def ranked_random_keep(d: torch.Tensor, aux, s: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
    """DELLA: q = s[0] + s[1] · row rank (packed words aux[0]); keep where the draw
    (key i[0], i[1]) < q; survivors divided by q when s[2] is 1, by 1 when it is 0."""
    u = uniform_draws(d.numel(), i, d.device).view(d.shape)
    q = s[0] + _unpack_ranks(aux[0]).float() * s[1]
    scale = q * s[2] + (1.0 - s[2])
    return torch.where(u < q, d, 0.0) / scale


# -------------------------------------------------------------------- combines


def weighted_sum(
    base: torch.Tensor, taus: Sequence[torch.Tensor], c: torch.Tensor, g: torch.Tensor
) -> torch.Tensor:
    """g[0] · base + Σ c[t, 0] τ_t, accumulated left to right."""
    acc = base * g[0]
    for t, tau in enumerate(taus):
        acc = acc + tau * c[t, 0]
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
    votes = taus[0] * c[0, 0]
    for t in range(1, len(taus)):
        votes = votes + taus[t] * c[t, 0]
    positive = votes >= 0
    num = torch.zeros_like(base)
    den = torch.zeros_like(base)
    for t, tau in enumerate(taus):
        side = tau * c[t, 2]
        agree = torch.where(positive, side > 0, side < 0)
        num = num + torch.where(agree, tau * c[t, 1], 0.0)
        den = den + torch.where(agree, c[t, 1], 0.0)
    merged = torch.where(g[1] > 0, num / torch.where(den == 0, 1.0, den), num)
    return base + merged * g[0]


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


class NotFiniteError(ValueError):
    """A merged tensor holds NaN or inf."""


# Scalars travel packed in two tensors: per expert 3 floats (s) and 3 more
# (c), then 2 globals (g); per expert 2 ints (i). Few, flat arguments keep
# each compiled call's guard checks short.
S_WIDTH, C_WIDTH, G_WIDTH, I_WIDTH = 3, 3, 2, 2


def _make(sparsify: Sparsify, combine: Combine, n_experts: int, n_aux: int):
    e = n_experts

    def kernel(base, out, pf, pi, extra, *tensors):
        s = pf[: S_WIDTH * e].view(e, S_WIDTH)
        c = pf[S_WIDTH * e : (S_WIDTH + C_WIDTH) * e].view(e, C_WIDTH)
        g = pf[(S_WIDTH + C_WIDTH) * e :]
        i = pi.view(e, I_WIDTH)
        deltas, aux = tensors[:e], tensors[e:]
        taus = [
            sparsify(d, aux[t * n_aux : (t + 1) * n_aux], s[t], i[t]) for t, d in enumerate(deltas)
        ]
        out.copy_(combine(base, taus, extra if combine is mean_scaled else c, g))
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
# strictly better (DELLA-TIES: 315 -> 125 ms on one 28M-entry tensor).
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


@torch.no_grad()
def _call(key: tuple, make: Callable[[], Callable], args: tuple, compile: bool, n: int):
    """``make()(*args)``, through torch.compile when asked and worth it."""
    global _compile_failed
    first = args[0][0] if isinstance(args[0], list) else args[0]
    if compile and n >= COMPILE_MIN_ELEMENTS and first.device.type == "cpu":
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


def run_kernel(
    sparsify: Sparsify,
    combine: Combine,
    base: torch.Tensor,
    deltas: Sequence[torch.Tensor],
    aux: Sequence[Sequence[torch.Tensor]],
    s_rows: Sequence[Sequence[float]],
    i_rows: Sequence[Sequence[int]],
    c: Sequence[Sequence[float]] | torch.Tensor,
    g: Sequence[float],
    out: torch.Tensor,
    compile: bool = False,
) -> None:
    """out = combine(base, [sparsify(δ_t, aux_t, s_t, i_t)], c, g).

    ``c`` is per-expert rows, or for ``mean_scaled`` a tensor broadcasting
    against ``base``. ``compile`` asks for the fused kernel on large CPU
    tensors; where torch.compile cannot build (no C++ compiler) the first
    failure switches to eager torch for the rest of the process, with a
    warning: same bytes, slower.
    """
    if base.numel() == 0:
        return
    e, n_aux = len(deltas), len(aux[0])
    floats: list[float] = []
    for row in s_rows:
        floats += [*row, *[0.0] * (S_WIDTH - len(row))]
    c_rows = [[]] * e if isinstance(c, torch.Tensor) else c
    for row in c_rows:
        floats += [*row, *[0.0] * (C_WIDTH - len(row))]
    floats += [*g, *[0.0] * (G_WIDTH - len(g))]
    ints: list[int] = []
    for row in i_rows:
        ints += [*row, *[0] * (I_WIDTH - len(row))]
    pf = torch.tensor(floats, dtype=torch.float32, device=base.device)
    pi = torch.tensor(ints, dtype=torch.int64, device=base.device)
    extra = c if isinstance(c, torch.Tensor) else pf
    args = (base, out, pf, pi, extra, *deltas, *(a for row in aux for a in row))
    key = (sparsify, combine, e, n_aux)
    _call(key, lambda: _make(*key), args, compile, base.numel())


def ensure_finite(t: torch.Tensor) -> torch.Tensor:
    """``t``, or NotFiniteError: for methods that do not run through a kernel."""
    if t.numel():
        lo, hi = torch.aminmax(t)
        if not (math.isfinite(float(lo)) and math.isfinite(float(hi))):
            raise NotFiniteError("the merge produced NaN or inf values")
    return t
