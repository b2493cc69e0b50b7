"""Open a study's storage: an RDB URL (SQLite, PostgreSQL, MySQL) or a journal file.

Credentials in URLs are masked in every message: driver errors are reported
through ``storage_error``, never as raw exceptions.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import optuna
from optuna.storages import RDBStorage

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


def storage_error(url: str, error: BaseException) -> ConfigError:
    """A clear, masked message for a driver error (unreachable server, bad credentials)."""
    reason = mask_text(f"{type(error).__name__}: {error}", url).splitlines()[0]
    hint = ""
    if isinstance(error, ModuleNotFoundError) and url.startswith("postgresql"):
        hint = " Install the PostgreSQL driver: pip install 'mergeopt[postgres]'."
    return ConfigError(
        f"cannot open storage {mask_url(url)}: {reason}.{hint} Check the URL, that the "
        "database server is running and reachable, and the credentials."
    )


def journal_path(url: str) -> Path:
    return Path(url.split(":", 1)[1].removeprefix("//"))


def check_storage_url(url: str) -> None:
    """Reject a malformed storage before anything connects or creates files."""
    if url.startswith("journal:"):
        path = journal_path(url)
        if not path.parent.is_dir():
            raise ConfigError(f"journal storage folder not found: {path.parent}")
        return
    if "://" not in url:
        raise ConfigError(
            f"storage {mask_url(url)!r} is not a database URL; use e.g. "
            "sqlite:///study.db, postgresql://user:pass@host/db or journal:///path/file.log"
        )


def _write_ahead(storage: RDBStorage) -> None:
    """SQLite in write-ahead-log mode, synced at checkpoints: a pruning trial
    reports every item it scores, and a commit that waits for the disk each
    time (SQLite's default) costs milliseconds per item. A killed process
    still loses nothing it committed (only a power cut can lose the last
    commits, never corrupt the file); several workers on one machine keep
    sharing the file (several machines share PostgreSQL, not SQLite)."""
    from sqlalchemy import event

    def pragmas(connection, _record) -> None:
        cursor = connection.cursor()
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
        except Exception:  # noqa: BLE001 - a read-only file: read it as it is
            pass
        finally:
            cursor.close()

    event.listen(storage.engine, "connect", pragmas)
    storage.engine.dispose()  # connections opened before the listener go


def open_storage(url: str) -> optuna.storages.BaseStorage:
    check_storage_url(url)
    try:
        if url.startswith("journal:"):
            from optuna.storages import JournalStorage
            from optuna.storages.journal import JournalFileBackend

            return JournalStorage(JournalFileBackend(str(journal_path(url))))
        engine_kwargs = {}
        if url.startswith("sqlite"):
            engine_kwargs = {"connect_args": {"timeout": 60}}
        else:
            engine_kwargs = {"pool_pre_ping": True, "connect_args": {"connect_timeout": 10}}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            storage = RDBStorage(url, engine_kwargs=engine_kwargs)
        if url.startswith("sqlite"):
            _write_ahead(storage)
        return storage
    except ConfigError:
        raise
    except Exception as e:  # noqa: BLE001 - any driver error: report it, masked
        raise storage_error(url, e) from None
