"""Progress display with rich, silent when not asked for (tests, pipes)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn


@contextlib.contextmanager
def tensor_progress(total: int, show: bool, label: str) -> Iterator[Callable[[], None]]:
    if not show:
        yield lambda: None
        return
    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        transient=True,
    ) as progress:
        task = progress.add_task(label, total=total)
        yield lambda: progress.advance(task)
