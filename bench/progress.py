"""Progress of the run's phases: a rich bar for people, nothing for tests."""

from collections.abc import Callable
from typing import Protocol

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


class Tracker(Protocol):
    def phase(self, name: str, total: int) -> Callable[[], None]:
        """Announce a phase of `total` steps; call the result once per step done."""
        ...


class NullTracker:
    def phase(self, name: str, total: int) -> Callable[[], None]:
        return lambda: None


class RichTracker:
    def __init__(self, progress: Progress) -> None:
        self.progress = progress

    def phase(self, name: str, total: int) -> Callable[[], None]:
        task = self.progress.add_task(name, total=total)
        return lambda: self.progress.advance(task)


def rich_progress() -> Progress:
    return Progress(
        TextColumn("{task.description:<26}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=False,
    )
