"""User-facing errors: each names the file, key or tensor at fault and the fix."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class MergeoptError(Exception):
    """An error caused by the user's input; the CLI prints it without a traceback."""


class ConfigError(MergeoptError):
    pass


class ModelError(MergeoptError):
    pass


class OutputError(MergeoptError):
    pass


def suggest(name: str, known: Iterable[str]) -> str:
    """' Did you mean X?' for the closest known name, or ''."""
    close = difflib.get_close_matches(name, list(known), n=1)
    return f" Did you mean {close[0]!r}?" if close else ""
