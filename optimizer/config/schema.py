"""Config files as data: each key declared once with its type, default, check and help.

A YAML file is read by people, so a wrong type must be named, never coerced:
``seed: abc`` is not turned into a traceback, and ``cache_ranks: "no"`` is not
read as true because a non-empty string is truthy. One table per section gives
the known keys (and the suggestion for a misspelt one), the defaults and every
type error's wording.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from optimizer.errors import ConfigError, suggest

# type name -> (test, how an error message says it)
TYPES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "bool": (lambda v: isinstance(v, bool), "true or false"),
    "int": (lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer"),
    "number": (
        lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v),
        "a number",
    ),
    "str": (lambda v: isinstance(v, str), "a string"),
    "strings": (
        lambda v: isinstance(v, list) and all(isinstance(x, str) and x for x in v),
        "a list of strings",
    ),
    "list": (lambda v: isinstance(v, list), "a list"),
    "mapping": (lambda v: isinstance(v, Mapping), "a mapping"),
}

REQUIRED = object()


@dataclass(frozen=True)
class Key:
    """One key of a config section.

    ``types`` are names from TYPES, any of which is accepted; ``check`` returns
    why an accepted value is still wrong (a range, a choice), or None. A key
    given as ``null`` takes its default, as if it were left out.
    """

    name: str
    types: tuple[str, ...]
    default: Any = None
    help: str = ""
    check: Callable[[Any], str | None] | None = None

    @property
    def required(self) -> bool:
        return self.default is REQUIRED


def at_least(minimum: float) -> Callable[[Any], str | None]:
    return lambda v: None if v >= minimum else f"must be >= {minimum}, got {v!r}"


def positive(v: Any) -> str | None:
    return None if v > 0 else f"must be positive, got {v!r}"


def one_of(choices: Sequence[str]) -> Callable[[Any], str | None]:
    def check(v: Any) -> str | None:
        if v in choices:
            return None
        return f"must be one of {', '.join(choices)}, got {v!r}.{suggest(str(v), choices)}"

    return check


def describe(value: Any) -> str:
    """A value as a message shows it, with its YAML type when that is the surprise."""
    if isinstance(value, bool):
        return f"{str(value).lower()} (a boolean)"
    if isinstance(value, str):
        return f"{value!r} (a string)"
    if isinstance(value, (int, float)):
        return f"{value!r} (a number)"
    if isinstance(value, list):
        return f"{value!r} (a list)"
    if isinstance(value, Mapping):
        return f"{dict(value)!r} (a mapping)"
    return repr(value)


def check_value(key: Key, value: Any, where: str) -> Any:
    """``value`` if it has one of the key's types and passes its check."""
    if not any(TYPES[t][0](value) for t in key.types):
        wanted = " or ".join(TYPES[t][1] for t in key.types)
        hint = ""
        if "bool" in key.types and isinstance(value, str):
            hint = " (write true or false without quotes)"
        raise ConfigError(f"{where}: {key.name} must be {wanted}, got {describe(value)}{hint}")
    if key.check is not None:
        why = key.check(value)
        if why:
            raise ConfigError(f"{where}: {key.name} {why}")
    return value


def check_known(raw: Mapping[str, Any], known: Sequence[str], where: str) -> None:
    for name in raw:
        if name not in known:
            raise ConfigError(
                f"{where}: unknown key {name!r}.{suggest(str(name), known)} "
                f"Known keys: {', '.join(known)}"
            )


def read_section(raw: Any, keys: Sequence[Key], where: str, what: str = "") -> dict[str, Any]:
    """Every declared key of one mapping: checked value, or its default.

    Unknown keys are refused with the closest known one suggested; a required
    key left out or null is named.
    """
    if not isinstance(raw, Mapping):
        expected = f" ({what})" if what else ""
        raise ConfigError(f"{where}: expected a mapping{expected}, got {describe(raw)}")
    check_known(raw, [k.name for k in keys], where)
    out: dict[str, Any] = {}
    for key in keys:
        value = raw.get(key.name)
        if value is None:
            if key.required:
                raise ConfigError(f"{where}: '{key.name}' is required")
            out[key.name] = key.default
            continue
        out[key.name] = check_value(key, value, where)
    return out


def markdown_table(keys: Sequence[Key]) -> str:
    """The keys as the README documents them: one row each, from the declarations."""

    def default(key: Key) -> str:
        if key.required:
            return "required"
        if key.default is None:
            return "-"
        if isinstance(key.default, bool):
            return str(key.default).lower()
        return f"`{key.default}`"

    rows = ["| key | type | default | what it is |", "|---|---|---|---|"]
    for key in keys:
        kinds = " or ".join(TYPES[t][1] for t in key.types)
        text = key.help.replace("|", "\\|")
        rows.append(f"| `{key.name}` | {kinds} | {default(key)} | {text} |")
    return "\n".join(rows)
