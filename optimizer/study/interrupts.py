"""Ctrl-C and SIGTERM for a worker: stop soon, but never in the middle of a write.

A KeyboardInterrupt that lands inside a storage write can leave the storage
inconsistent (a trial claimed but never stamped with its worker) or, with
SQLite, leave a write transaction open that blocks the clean-up itself. So
while a worker runs, a signal only marks a stop as pending; it is raised at
once inside the long steps that write nothing (loading models, materializing,
scoring, waiting), and otherwise at the next ``check()`` or the next such step.
Storage writes are short, so a stop still comes within moments.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopRequested(KeyboardInterrupt):
    """The KeyboardInterrupt a worker's signal raises.

    A subclass, not KeyboardInterrupt itself: CPython 3.11 marks a plain
    KeyboardInterrupt that leaves any ``exec``/``eval`` of a string (a
    dataclass or a template being made while the signal lands) as unhandled
    even when it is caught later, and ``python -m`` then ends the process with
    SIGINT instead of the worker's exit status 130. The mark is set for that
    exact class only.
    """


class Interrupts:
    """While active (``with Interrupts():``), SIGINT and SIGTERM stop the worker.

    SIGINT is set explicitly because a process started in the background
    inherits it ignored. Inactive, ``interruptible()`` and ``check()`` do nothing.
    """

    def __init__(self) -> None:
        self._open = 0
        self._pending = False
        self._previous: dict[int, object] = {}

    def __enter__(self) -> Interrupts:
        self._previous = {s: signal.getsignal(s) for s in SIGNALS}
        for s in SIGNALS:
            signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}
        self._pending = False  # a second Ctrl-C during the clean-up: already stopping

    def _handle(self, signum: int, frame: object) -> None:
        # Pending even when raised: the handler runs wherever the main thread
        # is, and a KeyboardInterrupt raised inside a finalizer or a weakref
        # callback (SQLAlchemy's, during a garbage collection) is printed and
        # ignored, so the next check() must still stop the worker.
        self._pending = True
        if self._open:
            raise StopRequested

    def check(self) -> None:
        """Raise the KeyboardInterrupt of a signal that came during a write."""
        if self._pending:
            self._pending = False
            raise StopRequested

    @contextlib.contextmanager
    def interruptible(self) -> Iterator[None]:
        """A step that writes nothing shared, so a signal may cut it anywhere."""
        self.check()
        self._open += 1
        try:
            self.check()  # a signal between the first check and the opening
            yield
        finally:
            self._open -= 1
