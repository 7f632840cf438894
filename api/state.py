"""What one API process holds for its lifetime: settings, Redis clients, the result listener."""

import asyncio
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

from arq.connections import ArqRedis
from redis.asyncio import Redis
from starlette.requests import Request

from api.dispatch import Dispatcher
from api.lockout import AuthLockout
from api.results import ResultListener
from api.targets import TargetCache
from shared.settings import Settings
from shared.tasks import TaskRegistry


@dataclass
class AppState:
    settings: Settings
    registry: TaskRegistry
    records: Redis
    arq: ArqRedis
    listener: ResultListener
    dispatcher: Dispatcher
    targets: TargetCache
    lockout: AuthLockout
    background: set["asyncio.Task[Any]"] = field(default_factory=set)

    def after_response(self, work: Coroutine[Any, Any, Any]) -> None:
        """Run bookkeeping without holding the connection: a keep-alive client's next request
        would otherwise wait for it (Starlette's BackgroundTask runs inside the request cycle)."""
        task = asyncio.create_task(work)
        self.background.add(task)
        task.add_done_callback(self.background.discard)


def app_state(request: Request) -> AppState:
    return request.app.state.taskenv  # type: ignore[no-any-return]
