"""The one-shot merge config: mergekit's YAML plus ``compat`` and ``seed``.

Everything a merge needs is checked here, before a tensor is read: keys,
method, parameter names, scopes, forms and ranges, and, per tensor, the
combinations one method forbids (``beta + gamma < 1``, DELLA's window).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from methods import COMPAT_MODES, MethodSpec, get_method
from methods.registry import UnknownMethodError
from optimizer.config.param_forms import TensorSite, check_form, resolve
from optimizer.config.schema import REQUIRED, Key, one_of, read_section
from optimizer.errors import ConfigError, suggest
from optimizer.io.output_folder import DTYPE_NAMES

MERGE_KEYS = (
    Key("merge_method", ("str",), REQUIRED, "the merge method (mergeopt merge --help lists them)"),
    Key("base_model", ("str",), None, "the model the experts were fine-tuned from"),
    Key("models", ("list",), REQUIRED, "the input models: {model: PATH, parameters: {...}}"),
    Key("parameters", ("mapping",), None, "parameters for every model and global ones"),
    Key("dtype", ("str",), None, "output dtype", one_of(tuple(DTYPE_NAMES))),
    Key("out_dtype", ("str",), None, "output dtype (overrides dtype)", one_of(tuple(DTYPE_NAMES))),
    Key("tokenizer_source", ("str",), None, "model whose tokenizer is copied (default: base)"),
    Key("compat", ("str",), "paper", "paper | mergekit numerics", one_of(COMPAT_MODES)),
    Key("seed", ("int",), 0, "seed of random masks"),
)
MODEL_KEYS = (
    Key("model", ("str",), REQUIRED, "model folder"),
    Key("parameters", ("mapping",), None, "this model's parameters"),
)
UNSUPPORTED_KEYS = {
    "slices": "layer slicing (passthrough/frankenmerges) is not supported; list whole models under 'models'",
    "tokenizer": "tokenizer surgery is not supported; use tokenizer_source",
    "chat_template": "set the chat template in the tokenizer_source model",
    "modules": "per-module configs are not supported; use filter lists in parameters",
}
_MISSING = object()


@dataclass(frozen=True)
class ModelRef:
    """One model named in the config: its folder, as written, and its parameters."""

    path: Path
    label: str
    parameters: Mapping[str, Any] = field(default_factory=dict)


def read_yaml(path: Path, what: str) -> Any:
    """A YAML file's content, or a ConfigError naming the file."""
    if path.is_dir():
        raise ConfigError(f"{what} {path} is a folder, not a YAML file")
    if not path.is_file():
        raise ConfigError(f"{what} not found: {path}")
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML: {e}") from None


def resolve_model_path(text: str, config_dir: Path | None) -> Path:
    """As given (relative to the current directory), else beside the config file."""
    p = Path(text).expanduser()
    if p.is_absolute() or p.exists() or config_dir is None:
        return p
    alt = config_dir / p
    return alt if alt.exists() else p


def parse_dtype(value: str | None) -> torch.dtype | None:
    """A dtype name the schema has checked (``one_of(DTYPE_NAMES)``) as a torch dtype."""
    return None if value is None else DTYPE_NAMES[value]


@dataclass
class MergeConfig:
    method: MethodSpec
    reference: ModelRef
    experts: list[ModelRef]
    parameters: Mapping[str, Any]
    base: ModelRef | None
    reference_is_input: bool
    dtype: torch.dtype | None
    out_dtype: torch.dtype | None
    tokenizer_source: Path | None
    compat: str
    seed: int
    raw: dict[str, Any]
    source: Path | None = None

    @property
    def output_dtype(self) -> torch.dtype | None:
        return self.out_dtype or self.dtype

    def tensor_params(self, site: TensorSite) -> dict[str, Any]:
        """Every parameter of the method resolved for one tensor.

        Per-model parameters become lists in expert order (a model's own value,
        else the top-level one, else the default).
        """
        out: dict[str, Any] = {}
        for spec in self.method.params:
            default = spec.default_for(self.compat)
            top = self.parameters.get(spec.name, _MISSING)
            if spec.scope == "global":
                out[spec.name] = default if top is _MISSING else resolve(top, site, default)
                continue
            values = []
            for m in self.experts:
                form = m.parameters.get(spec.name, top)
                values.append(default if form is _MISSING else resolve(form, site, default))
            out[spec.name] = values
        if self.method.inputs == "average":  # the reference's own weight in the average
            form = self.reference.parameters.get("weight", self.parameters.get("weight", 1.0))
            out["base_weight"] = resolve(form, site, 1.0) if self.reference_is_input else 0.0
        return out

    def check_tensor_params(self, tensor_name: str, params: Mapping[str, Any]) -> None:
        if self.method.check is None:
            return
        for i, m in enumerate(self.experts):
            values = {
                s.name: (params[s.name][i] if s.scope == "model" else params[s.name])
                for s in self.method.params
            }
            why = self.method.check(values)
            if why:
                raise ConfigError(
                    f"{self.method.name}: parameters of model {m.label!r} for tensor "
                    f"{tensor_name}: {why}"
                )

    @classmethod
    def from_yaml(cls, path: str | Path) -> MergeConfig:
        path = Path(path)
        return cls.from_dict(read_yaml(path, "config file"), path)

    @classmethod
    def from_dict(cls, raw: Any, source: Path | None = None) -> MergeConfig:
        where = str(source) if source else "merge config"
        if isinstance(raw, Mapping):
            for key in raw:
                if key in UNSUPPORTED_KEYS:
                    raise ConfigError(f"{where}: '{key}': {UNSUPPORTED_KEYS[key]}")
        top = read_section(raw, MERGE_KEYS, where, "with merge_method, models, ...")
        try:
            method = get_method(top["merge_method"])
        except UnknownMethodError as e:
            raise ConfigError(f"{where}: merge_method: {e}") from None
        compat, seed = top["compat"], top["seed"]
        config_dir = source.parent if source else None

        params = top["parameters"] or {}
        check_params(method, params, f"{where}: parameters", allow_global=True)

        if not top["models"]:
            raise ConfigError(f"{where}: 'models' must be a non-empty list of {{model: PATH}}")
        models: list[ModelRef] = []
        for i, entry in enumerate(top["models"]):
            entry = read_section(
                {"model": entry} if isinstance(entry, str) else entry,
                MODEL_KEYS,
                f"{where}: models[{i}]",
                "{model: PATH, parameters: {...}}",
            )
            mparams = entry["parameters"] or {}
            check_params(method, mparams, f"{where}: models[{i}].parameters", allow_global=False)
            label = entry["model"]
            models.append(ModelRef(resolve_model_path(label, config_dir), label, dict(mparams)))

        base = None
        if top["base_model"] is not None:
            label = top["base_model"]
            base = ModelRef(resolve_model_path(label, config_dir), label, {})
        given = _all_keys(params, models)
        for a, b in method.exclusive:
            if a in given and b in given:
                raise ConfigError(
                    f"{where}: give either {a} ({method.param(a).help}) or {b} "
                    f"({method.param(b).help}) for {method.name}, not both"
                )

        reference, experts, ref_is_input = _arrange(method, base, models, where)
        tok = top["tokenizer_source"]
        tokenizer_source = None
        if tok is not None and tok != "base":
            tokenizer_source = resolve_model_path(tok, config_dir)
        return cls(
            method=method,
            reference=reference,
            experts=experts,
            parameters=dict(params),
            base=base,
            reference_is_input=ref_is_input,
            dtype=parse_dtype(top["dtype"]),
            out_dtype=parse_dtype(top["out_dtype"]),
            tokenizer_source=tokenizer_source,
            compat=compat,
            seed=seed,
            raw=dict(raw),
            source=source,
        )


def _all_keys(params: Mapping[str, Any], models: list[ModelRef]) -> set[str]:
    keys = set(params)
    for m in models:
        keys |= set(m.parameters)
    return keys


def check_params(
    method: MethodSpec, params: Mapping[str, Any], where: str, allow_global: bool
) -> None:
    known = method.param_names
    for name, value in params.items():
        if name not in known:
            raise ConfigError(
                f"{where}: unknown parameter {name!r} for {method.name}."
                f"{suggest(str(name), known)} Its parameters: {', '.join(known) or 'none'}"
            )
        spec = method.param(name)
        if spec.scope == "global" and not allow_global:
            raise ConfigError(
                f"{where}: {name!r} applies to the whole merge; move it to the "
                "top-level 'parameters'"
            )
        check_form(value, spec, f"{where}.{name}")


def _same(a: ModelRef, b: ModelRef) -> bool:
    try:
        return a.path.resolve() == b.path.resolve()
    except OSError:
        return a.path == b.path


def _arrange(
    method: MethodSpec, base: ModelRef | None, models: list[ModelRef], where: str
) -> tuple[ModelRef, list[ModelRef], bool]:
    """Pick the reference model (task vectors start there) and the experts, by
    what the method merges (``MethodSpec.inputs``)."""
    if method.inputs == "average":
        if base is not None:
            listed = [m for m in models if _same(m, base)]
            others = [m for m in models if not _same(m, base)]
            reference = listed[0] if listed else base
            ref_is_input = bool(listed)
        else:
            reference, others, ref_is_input = models[0], models[1:], True
        if len(others) + int(ref_is_input) < 2:
            raise ConfigError(
                f"{where}: {method.name} averages at least two models; got {len(models)}"
            )
        return reference, others, ref_is_input
    if method.inputs == "pair":
        inputs = list(models)
        if base is not None and not any(_same(m, base) for m in inputs):
            inputs.insert(0, base)
        if len(inputs) != 2:
            raise ConfigError(
                f"{where}: {method.name} interpolates exactly two models (base_model as v0 "
                f"and one expert, or two models); got {len(inputs)}: "
                + ", ".join(m.label for m in inputs)
            )
        if base is not None:
            v0 = next(m for m in inputs if _same(m, base))
            v1 = next(m for m in inputs if not _same(m, base))
        else:
            v0, v1 = inputs
        return v0, [v1], False
    if base is None:
        raise ConfigError(
            f"{where}: {method.name} needs base_model: the model the experts were "
            "fine-tuned from (task vectors are expert minus base)"
        )
    experts = [m for m in models if not _same(m, base)]
    if len(experts) < method.min_experts:
        raise ConfigError(
            f"{where}: {method.name} needs at least {method.min_experts} expert "
            f"model(s) besides the base; got {len(experts)}"
        )
    if method.max_experts is not None and len(experts) > method.max_experts:
        raise ConfigError(
            f"{where}: {method.name} takes at most {method.max_experts} expert(s); "
            f"got {len(experts)}"
        )
    return base, experts, False
