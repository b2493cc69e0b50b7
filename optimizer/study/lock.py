"""One lock per study, shared by every worker on every machine.

Optuna's storages make single writes atomic but not "read, decide, write"
sequences. Creating the schema, stamping the study's fingerprint, enqueueing
the seed trials once, and "count the trials, then start one if the budget
allows" are such sequences, so workers take this lock around them (for
milliseconds, never during a trial). Every lock is released by the operating
system or the database server when its holder dies, so a SIGKILLed worker
never leaves the study locked.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import threading
from collections.abc import Iterator
from pathlib import Path

from optimizer.errors import ConfigError
from optimizer.study.storage import check_storage_url, journal_path, storage_error


class StudyLock:
    """Base class: a re-entrant, process-exclusive lock; subclasses add the cross-process part."""

    def __init__(self) -> None:
        self._local = threading.RLock()
        self._depth = 0

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        with self._local:
            if self._depth == 0:
                self._acquire()
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
                if self._depth == 0:
                    self._release()

    def _acquire(self) -> None:
        """Nothing to share with other processes (in-memory storage)."""

    def _release(self) -> None:
        pass


class FileLock(StudyLock):
    """``lockf`` on a file beside the SQLite database or journal (works over NFS with lockd)."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path
        self._fd: int | None = None

    def _acquire(self) -> None:
        import os

        try:
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as e:
            raise ConfigError(f"cannot create the study lock file {self.path}: {e}") from None
        fcntl.lockf(self._fd, fcntl.LOCK_EX)

    def _release(self) -> None:
        import os

        if self._fd is not None:
            fcntl.lockf(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


class DatabaseLock(StudyLock):
    """A server-side named lock (PostgreSQL advisory lock, MySQL GET_LOCK) on its own connection."""

    def __init__(self, url: str, key: str) -> None:
        super().__init__()
        self.url = url
        self.key = key
        self._engine = None
        self._conn = None

    def _statements(self) -> tuple[str, str, dict]:
        digest = hashlib.blake2b(self.key.encode(), digest_size=8).digest()
        number = int.from_bytes(digest, "big", signed=True)
        if self.url.startswith("mysql"):
            name = hashlib.blake2b(self.key.encode(), digest_size=16).hexdigest()
            return "SELECT GET_LOCK(:k, -1)", "SELECT RELEASE_LOCK(:k)", {"k": name}
        return "SELECT pg_advisory_lock(:k)", "SELECT pg_advisory_unlock(:k)", {"k": number}

    def _acquire(self) -> None:
        import sqlalchemy
        from sqlalchemy.pool import NullPool

        lock, _, args = self._statements()
        try:
            if self._engine is None:
                self._engine = sqlalchemy.create_engine(
                    self.url, poolclass=NullPool, connect_args={"connect_timeout": 10}
                )
            self._conn = self._engine.connect()
            self._conn.execute(sqlalchemy.text(lock), args)
        except Exception as e:  # noqa: BLE001 - driver errors, reported masked
            self._close()
            raise storage_error(self.url, e) from None

    def _release(self) -> None:
        import sqlalchemy

        _, unlock, args = self._statements()
        try:
            self._conn.execute(sqlalchemy.text(unlock), args)
        finally:
            self._close()

    def _close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()
            self._conn = None


_FILE_LOCKS: dict[Path, FileLock] = {}


def _file_lock(path: Path) -> FileLock:
    # POSIX locks belong to the process and closing any descriptor of the file
    # drops them, so each process keeps exactly one FileLock per file.
    path = path.resolve()
    if path not in _FILE_LOCKS:
        _FILE_LOCKS[path] = FileLock(path)
    return _FILE_LOCKS[path]


def study_lock(url: str, scope: str) -> StudyLock:
    """The lock for ``scope`` (a study name, or "schema" for table creation) in ``url``.

    File-backed storages have one lock file per database or journal, whatever
    the scope: SQLite serializes writers anyway.
    """
    check_storage_url(url)
    if url.startswith("journal:"):
        path = journal_path(url)
        return _file_lock(path.with_name(path.name + ".mergeopt-lock"))
    if url.startswith("sqlite"):
        from sqlalchemy.engine import make_url

        database = make_url(url).database
        if not database or database == ":memory:":
            return StudyLock()
        path = Path(database)
        return _file_lock(path.with_name(path.name + ".mergeopt-lock"))
    return DatabaseLock(url, f"mergeopt:{scope}")
