"""Open a study's storage: an RDB URL (SQLite, PostgreSQL, MySQL) or a journal file.

Heartbeats let any worker fail trials whose worker vanished (another machine,
pre-emption) and re-enqueue their parameters. Credentials in URLs are masked
in every message.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import optuna
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

from optimizer.errors import ConfigError

_PASSWORD = re.compile(r"(://[^:/@]+:)([^@]*)(@)")


def mask_url(url: str) -> str:
    """The URL with any password replaced by ***."""
    return _PASSWORD.sub(r"\1***\3", url)


def mask_text(text: str, url: str) -> str:
    """``text`` with the URL's password (wherever it appears) replaced by ***."""
    m = _PASSWORD.search(url)
    if m and m.group(2):
        text = text.replace(m.group(2), "***")
    return mask_url(text)


def open_storage(url: str, heartbeat_interval: int = 10) -> optuna.storages.BaseStorage:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        retry = RetryHeartbeatStaleTrialCallback(max_retry=3)
    try:
        if url.startswith("journal:"):
            from optuna.storages import JournalStorage
            from optuna.storages.journal import JournalFileBackend

            path = Path(url.split(":", 1)[1].removeprefix("//"))
            if not path.parent.is_dir():
                raise ConfigError(f"journal storage folder not found: {path.parent}")
            return JournalStorage(JournalFileBackend(str(path)))
        if "://" not in url:
            raise ConfigError(
                f"storage {mask_url(url)!r} is not a database URL; use e.g. "
                "sqlite:///study.db, postgresql://user:pass@host/db or journal:///path/file.log"
            )
        engine_kwargs = {}
        if url.startswith("sqlite"):
            engine_kwargs = {"connect_args": {"timeout": 60}}
        else:
            engine_kwargs = {"pool_pre_ping": True, "connect_args": {"connect_timeout": 10}}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return RDBStorage(
                url,
                engine_kwargs=engine_kwargs,
                heartbeat_interval=heartbeat_interval,
                grace_period=heartbeat_interval * 3,
                heartbeat_stale_trial_callback=retry,
            )
    except ConfigError:
        raise
    except Exception as e:  # noqa: BLE001 - any driver error: report it, masked
        reason = mask_text(f"{type(e).__name__}: {e}", url).splitlines()[0]
        raise ConfigError(
            f"cannot open storage {mask_url(url)}: {reason}. Check the URL, that the "
            "database server is running and reachable, and the credentials."
        ) from None
