"""What one API process holds for its lifetime: settings, Redis clients, the result listener."""

from dataclasses import dataclass

from arq.connections import ArqRedis
from redis.asyncio import Redis
from starlette.requests import Request

from api.dispatch import Dispatcher
from api.results import ResultListener
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


def app_state(request: Request) -> AppState:
    return request.app.state.taskenv  # type: ignore[no-any-return]
