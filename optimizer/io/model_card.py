"""The README.md of a merged model: what was merged, how, with which parameters."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from optimizer import __version__


def write_model_card(
    folder: Path,
    method: str,
    summary: str,
    compat: str,
    base: str | None,
    models: list[tuple[str, Mapping[str, Any]]],
    parameters: Mapping[str, Any],
    config: Mapping[str, Any],
    extra: str = "",
) -> None:
    lines = [
        "---",
        "library_name: transformers",
        "tags: [merge, mergeopt]",
        "---",
        "",
        f"# Merged model ({method})",
        "",
        f"Made with mergeopt {__version__} using **{method}** ({summary}), "
        f"numerics as in the {'mergekit implementation' if compat == 'mergekit' else 'paper'} "
        f"(`compat: {compat}`).",
        "",
    ]
    if base:
        lines += [f"Base model: `{base}`", ""]
    lines += ["## Models", ""]
    for label, params in models:
        shown = ", ".join(f"{k}={v}" for k, v in params.items()) or "defaults"
        lines.append(f"- `{label}`: {shown}")
    lines += ["", "## Parameters", ""]
    if parameters:
        lines += [f"- {k}: {v}" for k, v in parameters.items()]
    else:
        lines.append("- defaults")
    if extra:
        lines += ["", extra]
    lines += [
        "",
        "## Configuration",
        "",
        "Reproduce with `mergeopt merge mergeopt_config.yaml --out DIR`:",
        "",
        "```yaml",
        yaml.safe_dump(dict(config), sort_keys=False).rstrip(),
        "```",
        "",
    ]
    (folder / "README.md").write_text("\n".join(lines))
    (folder / "mergeopt_config.yaml").write_text(yaml.safe_dump(dict(config), sort_keys=False))
