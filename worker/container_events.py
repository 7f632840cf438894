"""Wake-ups when this deployment's containers start, die or change health, from the engine's
event stream.

A provision waits for its services to be started, healthy or done (worker/pod.py). Reading their
state on a short timer costs an inspect per service per tick and up to a tick of delay; the
engine says itself when a container starts, dies, or turns healthy. One stream per worker
process (`GET /events`, filtered to this deployment's containers and those four events) wakes
whoever watches a container by name. The event is only a hint: the waiter then reads the state
itself, and still reads it on a slow timer, for an event lost while the stream reconnects.
"""

import asyncio
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any

import aiodocker
from aiodocker.events import DockerEvents

from taskenv.worker.containers import LABEL_DEPLOYMENT

log = logging.getLogger("taskenv.worker")

WATCHED = ("start", "die", "oom", "health_status")
RECONNECT_SEC = 1.0


def of_deployment(deployment: str) -> str:
    """The label filter for one deployment's containers."""
    return f"{LABEL_DEPLOYMENT}={deployment}"


class ContainerEvents:
    def __init__(self, docker: aiodocker.Docker, label: str) -> None:
        """Events of the containers carrying `label` (`key=value`)."""
        self._docker = docker
        self._filters = json.dumps({"type": ["container"], "label": [label], "event": list(WATCHED)})
        self._watchers: dict[str, set[asyncio.Event]] = {}
        self._stream: DockerEvents | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def live(self) -> bool:
        """The stream is open: a change now will wake its watchers."""
        return self._stream is not None and self._stream.json_stream is not None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._follow())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    @contextmanager
    def watching(self, container: str) -> Iterator[asyncio.Event]:
        """An event set at each change of `container` (clear it before reading the state)."""
        changed = asyncio.Event()
        self._watchers.setdefault(container, set()).add(changed)
        try:
            yield changed
        finally:
            watchers = self._watchers.get(container, set())
            watchers.discard(changed)
            if not watchers:
                self._watchers.pop(container, None)

    async def _follow(self) -> None:
        while True:
            stream = DockerEvents(self._docker)  # type: ignore[no-untyped-call]
            self._stream = stream
            subscriber = stream.subscribe(filters=self._filters)  # type: ignore[no-untyped-call]
            try:
                while (event := await subscriber.get()) is not None:
                    self._wake(event)
            finally:
                self._stream = None
                await _stopped(stream)
            await asyncio.sleep(RECONNECT_SEC)

    def _wake(self, event: dict[str, Any]) -> None:
        name = ((event.get("Actor") or {}).get("Attributes") or {}).get("name")
        for changed in self._watchers.get(str(name), ()):
            changed.set()


async def _stopped(stream: DockerEvents) -> None:
    """The stream's reader ended (the engine restarting, a broken connection, a reply it could
    not parse): said, not raised, so the follower reconnects rather than end for good."""
    try:
        await stream.stop()  # type: ignore[no-untyped-call]
    except Exception as exc:
        log.info("the engine's event stream ended (%s: %s): reconnecting", type(exc).__name__, exc)
