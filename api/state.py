"""What one API process holds for its lifetime: settings, Redis clients, the result listener."""

import asyncio
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

from arq.connections import ArqRedis
from redis.asyncio import Redis
from starlette.requests import Request

from taskenv.api.dispatch import Dispatcher
from taskenv.api.exec_targets import TargetCache
from taskenv.api.lockout import AuthLockout
from taskenv.api.results import ResultListener
from taskenv.shared.settings import Settings
from taskenv.shared.tasks import TaskRegistry


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
