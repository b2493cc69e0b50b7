"""Merge methods as pure tensor functions, registered by name.

Importing the package registers every method family; ``METHODS`` maps a name
to its :class:`~methods.registry.MethodSpec`.
"""

from methods import breadcrumbs, dare, della, linear, model_stock, slerp, ties  # noqa: F401
from methods.registry import (
    COMPAT_MODES,
    METHODS,
    MethodSpec,
    ParamSpec,
    TensorContext,
    UnknownMethodError,
    UnknownParameterError,
    get_method,
)

__all__ = [
    "COMPAT_MODES",
    "METHODS",
    "MethodSpec",
    "ParamSpec",
    "TensorContext",
    "UnknownMethodError",
    "UnknownParameterError",
    "get_method",
]
