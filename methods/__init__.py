"""Merge methods as pure tensor functions, registered by name.

Importing the package registers every method family; ``METHODS`` maps a name
to its :class:`~methods.registry.MethodSpec`.
"""

# isort: off
# registration order is the order methods are listed and searched in
from methods import linear, ties, breadcrumbs, dare, della, model_stock, slerp  # noqa: F401

# isort: on
from methods.launch import Plan, run_method
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
    "Plan",
    "run_method",
    "METHODS",
    "MethodSpec",
    "ParamSpec",
    "TensorContext",
    "UnknownMethodError",
    "UnknownParameterError",
    "get_method",
]
