"""The joint search space over merge methods, built from the method registry.

The method is a categorical choice; every other parameter is conditional on it
and namespaced by it (``ties.density.m0``), so two methods' distributions never
clash. Per-model values can vary per layer group and per tensor filter, and a
candidate is written back as a plain merge config (filter entries with
``layers``), so ``mergeopt merge`` rebuilds any trial exactly.

Invalid combinations are made impossible rather than rejected: a parameter
the registry declares with a ``Reparam`` (DELLA's epsilon) is searched in its
always-valid form, and each method's ``ranges_check`` refuses ranges that
would allow a forbidden combination (Breadcrumbs' beta + gamma >= 1) before
anything is stored. Nothing here names a method: it all comes from the
registry.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from methods import METHODS, MethodSpec, ParamSpec, get_method
from methods.registry import UnknownMethodError
from optimizer.config.schema import TYPES, Key, describe, read_section
from optimizer.errors import ConfigError, suggest

CATCH_ALL = "*"


@dataclass(frozen=True)
class Override:
    low: float | None = None
    high: float | None = None
    log: bool = False
    fixed: Any = None


def allowed_methods(n_experts: int) -> list[str]:
    """Methods that can merge one base and ``n_experts`` experts."""
    return [spec.name for spec in METHODS.values() if spec.fits(n_experts)]


def reparam_of(spec: MethodSpec, searched: str) -> ParamSpec | None:
    """The parameter searched under the name ``searched`` (its Reparam's), if any."""
    return next((p for p in spec.params if p.reparam and p.reparam.name == searched), None)


OVERRIDE_KEYS = (
    Key("low", ("number",), None, "lower end of the searched range"),
    Key("high", ("number",), None, "upper end of the searched range"),
    Key("log", ("bool",), False, "search on a log scale"),
    Key("value", ("number", "bool"), None, "a fixed value (not searched)"),
)


def parse_override(key: str, value: Any) -> Override:
    """``{low, high, log}`` or ``[low, high]`` (a range), else a fixed value."""
    where = f"search_space.{key}"
    if isinstance(value, Mapping):
        ov = read_section(value, OVERRIDE_KEYS, where, "low, high, log or value")
        if ov["value"] is not None:
            return Override(fixed=ov["value"])
        return Override(ov["low"], ov["high"], ov["log"])
    if isinstance(value, list):
        if len(value) != 2:
            raise ConfigError(f"{where}: a range is [low, high], got {value!r}")
        for v in value:
            if not TYPES["number"][0](v):
                raise ConfigError(f"{where}: a range is [low, high] of numbers, got {describe(v)}")
        return Override(*value)
    return Override(fixed=value)


class SearchSpace:
    def __init__(
        self,
        methods: Sequence[str],
        n_experts: int,
        num_layers: int,
        layer_group_size: int = 0,
        filters: Sequence[str] = (),
        overrides: Mapping[str, Any] | None = None,
    ) -> None:
        allowed = allowed_methods(n_experts)
        for m in methods:
            if m not in METHODS:
                raise ConfigError(f"methods: {UnknownMethodError(m)}")
            if m not in allowed:
                raise ConfigError(
                    f"methods: {m} cannot merge a base and {n_experts} expert(s); "
                    f"possible: {', '.join(allowed)}"
                )
        if not methods:
            raise ConfigError("methods: the list is empty")
        self.methods: list[MethodSpec] = [get_method(m) for m in methods]
        self.n_experts = n_experts
        k = layer_group_size or num_layers
        last = max(0, num_layers - 1)
        self.groups = [(lo, min(lo + k - 1, last)) for lo in range(0, max(num_layers, 1), k)]
        self.classes = [*filters, CATCH_ALL]
        self.raw_overrides = dict(overrides or {})
        self.overrides = self._check_overrides(self.raw_overrides)
        self._check_combinations()

    # -- validation -------------------------------------------------------

    def _check_overrides(self, raw: Mapping[str, Any]) -> dict[str, Override]:
        out: dict[str, Override] = {}
        names = {m.name for m in self.methods}
        for key, value in raw.items():
            method, _, param = str(key).partition(".")
            if method not in names:
                raise ConfigError(
                    f"search_space.{key}: {method!r} is not among the study's methods "
                    f"({', '.join(sorted(names))}); keys are METHOD.PARAMETER"
                )
            spec = get_method(method)
            reparam = reparam_of(spec, param)
            if reparam is not None:
                rp = reparam.reparam
                ov = parse_override(key, value)
                lo = ov.low if ov.low is not None else rp.low
                hi = ov.high if ov.high is not None else rp.high
                if ov.fixed is not None or not (rp.low <= lo <= hi <= rp.high):
                    raise ConfigError(
                        f"search_space.{key}: give a range within [{rp.low}, {rp.high}]: "
                        f"{reparam.name} is searched as {rp.name} "
                        f"(a fraction of the room its {rp.depends_on} leaves)"
                    )
                out[key] = Override(lo, hi)
                continue
            if param not in spec.param_names:
                raise ConfigError(
                    f"search_space.{key}: unknown parameter {param!r} for {method}."
                    f"{suggest(param, spec.param_names)} Its parameters: {', '.join(spec.param_names)}"
                )
            p = spec.param(param)
            ov = parse_override(key, value)
            if ov.fixed is not None:
                why = p.check(ov.fixed)
                if why:
                    raise ConfigError(f"search_space.{key}: {why}")
            else:
                if p.kind is bool:
                    raise ConfigError(
                        f"search_space.{key}: a true/false parameter takes a fixed value"
                    )
                lo, hi = self._default_range(p)
                lo = lo if ov.low is None else ov.low
                hi = hi if ov.high is None else ov.high
                for v in (lo, hi):
                    why = p.check(v)
                    if why:
                        raise ConfigError(f"search_space.{key}: {why}")
                if lo > hi:
                    raise ConfigError(f"search_space.{key}: low {lo} is above high {hi}")
                if ov.log and lo <= 0:
                    raise ConfigError(f"search_space.{key}: a log range needs low > 0")
                ov = Override(lo, hi, ov.log)
            out[key] = ov
        return out

    def _check_combinations(self) -> None:
        """Refuse ranges that would let the sampler propose an invalid combination."""
        for m in self.methods:
            for p in m.params:
                ov = self.overrides.get(f"{m.name}.{p.name}")
                if p.reparam and ov is not None and ov.fixed is None:
                    raise ConfigError(
                        f"search_space.{m.name}.{p.name}: fix it to a value, or give a "
                        f"range for {m.name}.{p.reparam.name} (searched as a fraction of "
                        f"the room its {p.reparam.depends_on} leaves)"
                    )
            if m.ranges_check is None:
                continue
            ranges = {
                p.name: None
                if p.reparam and self.overrides.get(f"{m.name}.{p.name}") is None
                else self._range_or_fixed(m, p.name)
                for p in m.params
                if p.kind is not bool
            }
            why = m.ranges_check(ranges)
            if why:
                raise ConfigError(f"search_space: {m.name}: {why}")

    def _default_range(self, p: ParamSpec) -> tuple[float, float]:
        if p.search is not None:
            return float(p.search[0]), float(p.search[1])
        return float(p.low or 0.0), float(p.high if p.high is not None else 1.0)

    def _range_or_fixed(self, m: MethodSpec, param: str) -> tuple[float, float]:
        ov = self.overrides.get(f"{m.name}.{param}")
        if ov is not None and ov.fixed is not None:
            return float(ov.fixed), float(ov.fixed)
        if ov is not None:
            return float(ov.low), float(ov.high)
        return self._default_range(m.param(param))

    # -- the space ----------------------------------------------------------

    @property
    def sites(self) -> list[tuple[int, str]]:
        return [(g, c) for g in range(len(self.groups)) for c in self.classes]

    def _site_suffix(self, g: int, c: str) -> str:
        parts = []
        if len(self.groups) > 1:
            parts.append(f"g{g}")
        if len(self.classes) > 1:
            parts.append(c if c != CATCH_ALL else "other")
        return "".join(f".{p}" for p in parts)

    def searched(self, m: MethodSpec) -> list[ParamSpec]:
        """Parameters the optimizer proposes for ``m`` (the rest are fixed or default)."""
        out = []
        for p in m.params:
            ov = self.overrides.get(f"{m.name}.{p.name}")
            if ov is not None and ov.fixed is not None:
                continue
            if p.search is None and ov is None:
                continue
            out.append(p)
        return out

    def distributions(self, m: MethodSpec) -> dict[str, tuple]:
        """Every Optuna parameter name for ``m`` with its (low, high, log) or choices."""
        out: dict[str, tuple] = {}
        for p in self.searched(m):
            name = p.reparam.name if p.reparam else p.name
            if p.kind is bool:
                out[f"{m.name}.{name}"] = ("choice", tuple(p.search))
                continue
            if p.reparam:
                ov = self.overrides.get(f"{m.name}.{p.reparam.name}")
                lo, hi = (ov.low, ov.high) if ov else (p.reparam.low, p.reparam.high)
                log = False
            else:
                ov = self.overrides.get(f"{m.name}.{p.name}")
                lo, hi = (ov.low, ov.high) if ov else self._default_range(p)
                log = bool(ov and ov.log)
            models = range(self.n_experts) if p.scope == "model" else [None]
            for i in models:
                for g, c in self.sites:
                    model = f".m{i}" if i is not None else ""
                    out[f"{m.name}.{name}{model}{self._site_suffix(g, c)}"] = (lo, hi, log)
        return out

    def searchable(self, method: str) -> bool:
        """Whether ``method`` has a value to search on a range (Model Stock's
        only choice is a switch: nothing to refine)."""
        return any(d[0] != "choice" for d in self.distributions(get_method(method)).values())

    def fits(self, params: Mapping[str, Any]) -> bool:
        """Whether ``params`` (a trial's) are in this space's names."""
        names = self.distributions(get_method(params["method"]))
        return all(name in params for name in names)

    def _group_of_layer(self, layer: int) -> int:
        return next(g for g, (lo, hi) in enumerate(self.groups) if lo <= layer <= hi)

    def broadcast(self, params: Mapping[str, Any], source: SearchSpace) -> dict[str, Any]:
        """``params`` of ``source`` (coarser groups) in this space's names: each
        of this space's groups takes the value of the source group holding its
        first layer, so the merge is the same."""
        out: dict[str, Any] = {"method": params["method"]}
        for name in self.distributions(get_method(params["method"])):
            parts = name.split(".")
            group = next((i for i, x in enumerate(parts) if x[:1] == "g" and x[1:].isdigit()), None)
            if group is not None:
                lo = self.groups[int(parts[group][1:])][0]
                if len(source.groups) > 1:
                    parts[group] = f"g{source._group_of_layer(lo)}"
                else:
                    del parts[group]
            out[name] = params[".".join(parts)]
        return out

    def suggest(self, trial: Any) -> dict[str, Any]:
        """Ask the trial for a method and its parameters; return the candidate."""
        names = [m.name for m in self.methods]
        method = get_method(trial.suggest_categorical("method", names))
        values: dict[str, Any] = {}
        for name, dist in self.distributions(method).items():
            if dist[0] == "choice":
                values[name] = trial.suggest_categorical(name, list(dist[1]))
            else:
                values[name] = trial.suggest_float(name, dist[0], dist[1], log=dist[2])
        return {"method": method.name, **values}

    # -- candidates as merge configs -------------------------------------------

    def _form(self, by_site: dict[tuple[int, str], Any]) -> Any:
        if len(by_site) == 1:
            return next(iter(by_site.values()))
        entries = []
        for c in self.classes:
            for g, (lo, hi) in enumerate(self.groups):
                entry: dict[str, Any] = {}
                if c != CATCH_ALL:
                    entry["filter"] = c
                if len(self.groups) > 1:
                    entry["layers"] = [lo, hi]
                entry["value"] = by_site[(g, c)]
                entries.append(entry)
        return entries

    def candidate_config(
        self,
        params: Mapping[str, Any],
        base: str,
        experts: Sequence[str],
        compat: str,
        seed: int,
        dtype: str = "float32",
    ) -> dict[str, Any]:
        """The merge config (``mergeopt merge`` YAML) that a trial's parameters describe."""
        m = get_method(params["method"])
        global_params: dict[str, Any] = {}
        model_params: list[dict[str, Any]] = [{} for _ in experts]
        for p in m.params:
            ov = self.overrides.get(f"{m.name}.{p.name}")
            if ov is not None and ov.fixed is not None:
                if p.scope == "model":
                    for mp in model_params:
                        mp[p.name] = ov.fixed
                else:
                    global_params[p.name] = ov.fixed
        for p in self.searched(m):
            if p.kind is bool:
                global_params[p.name] = params[f"{m.name}.{p.name}"]
                continue
            models = range(len(experts)) if p.scope == "model" else [None]
            for i in models:
                by_site = {}
                for g, c in self.sites:
                    model = f".m{i}" if i is not None else ""
                    suffix = f"{model}{self._site_suffix(g, c)}"
                    if p.reparam:
                        searched = params[f"{m.name}.{p.reparam.name}{suffix}"]
                        other = self._value_at(m, p.reparam.depends_on, params, suffix)
                        by_site[(g, c)] = p.reparam.value(searched, other)
                    else:
                        by_site[(g, c)] = params[f"{m.name}.{p.name}{suffix}"]
                form = self._form(by_site)
                if i is None:
                    global_params[p.name] = form
                else:
                    model_params[i][p.name] = form
        cfg: dict[str, Any] = {
            "merge_method": m.name,
            "base_model": base,
            "models": [
                {"model": e, **({"parameters": mp} if mp else {})}
                for e, mp in zip(experts, model_params)
            ],
        }
        if global_params:
            cfg["parameters"] = global_params
        cfg.update({"dtype": dtype, "compat": compat, "seed": seed})
        return cfg

    def _value_at(self, m: MethodSpec, param: str, params: Mapping[str, Any], suffix: str) -> float:
        """``param``'s value at one site of a candidate: fixed, searched or default."""
        ov = self.overrides.get(f"{m.name}.{param}")
        if ov is not None and ov.fixed is not None:
            return float(ov.fixed)
        key = f"{m.name}.{param}{suffix}"
        return float(params[key]) if key in params else float(m.param(param).default)

    # -- start points ------------------------------------------------------------

    def _fill(
        self, m: MethodSpec, point: Mapping[str, Any], per_model: Mapping[str, list] | None = None
    ) -> dict[str, Any]:
        """Optuna parameters putting every site of ``m`` at ``point`` (clipped to range)."""
        out: dict[str, Any] = {"method": m.name}
        dists = self.distributions(m)
        for name, dist in dists.items():
            parts = name.split(".")
            pname = parts[1]
            model = next(
                (int(x[1:]) for x in parts[2:] if x.startswith("m") and x[1:].isdigit()), None
            )
            if dist[0] == "choice":
                v = point.get(pname, m.param(pname).default)
                out[name] = v if v in dist[1] else dist[1][0]
                continue
            reparam = reparam_of(m, pname)
            if reparam is not None:
                rp = reparam.reparam
                v = rp.searched(
                    point.get(reparam.name, reparam.default),
                    point.get(rp.depends_on, m.param(rp.depends_on).default),
                )
            elif per_model and pname in per_model and model is not None:
                v = per_model[pname][model]
            else:
                v = point.get(pname, m.param(pname).default)
                if v is None:
                    v = (dist[0] + dist[1]) / 2
            out[name] = min(max(float(v), dist[0]), dist[1])
        return out

    def start_trials(self) -> list[tuple[str, dict[str, Any]]]:
        """Known-good places to start: the base, each expert alone (the references,
        by the first method that can express them), then each method's start points.

        The references come first, so that even a short run can show the best
        merge beside the base and each expert.
        """
        able = sorted(
            (m for m in self.methods if m.references is not None),
            key=lambda m: m.references.base is None,
        )
        refs = []
        if able and able[0].references.base is not None:
            m = able[0]
            zeros = {"weight": [0.0] * self.n_experts}
            refs.append(("base", self._fill(m, m.references.base, zeros)))
        for i in range(self.n_experts if able else 0):
            m = able[0]
            one_hot = {"weight": [1.0 if j == i else 0.0 for j in range(self.n_experts)]}
            refs.append((f"expert {i} alone", self._fill(m, m.references.alone, one_hot)))
        points = [
            (f"{m.name} start point", self._fill(m, point))
            for m in self.methods
            for point in m.start_points
        ]
        return refs + points

    def describe(self) -> dict[str, Any]:
        """A stable description, stored with the study to refuse mixing spaces."""
        return {
            "groups": self.groups,
            "classes": self.classes,
            "methods": {
                m.name: {k: list(v) for k, v in self.distributions(m).items()} for m in self.methods
            },
            "fixed": {k: v.fixed for k, v in self.overrides.items() if v.fixed is not None},
        }
