"""Where an installed mergeopt finds its own data, and where it may cache things.

The built-in tasks (``eval_tasks``) and the example studies (``studies``) ship
as package data, so a wheel installed anywhere finds them through
``importlib.resources``, not through a path relative to the source tree.
Generated things (the demo's zoo, the bench models) go to one cache folder that
does not depend on the current directory.
"""

from __future__ import annotations

import os
from importlib.resources import files
from pathlib import Path

from optimizer.errors import ConfigError

CACHE_VARIABLE = "MERGEOPT_CACHE"


def cache_dir() -> Path:
    """``$MERGEOPT_CACHE``, else ``$XDG_CACHE_HOME/mergeopt``, else ``~/.cache/mergeopt``."""
    if os.environ.get(CACHE_VARIABLE):
        return Path(os.environ[CACHE_VARIABLE]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "mergeopt"


def package_folder(package: str) -> Path:
    """The folder of a data package on disk (lm-eval reads task files by path)."""
    root = files(package)
    if not isinstance(root, Path) or not root.is_dir():
        raise ConfigError(
            f"mergeopt's {package} data is not a folder on disk ({root}); install mergeopt "
            "from a wheel or a source checkout, not from a zip archive"
        )
    return root


def builtin_tasks() -> Path:
    """The lm-eval task YAMLs every study can name (the demo's skills)."""
    return package_folder("eval_tasks")


def demo_study() -> Path:
    return package_folder("studies") / "demo.yaml"
