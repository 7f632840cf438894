"""What an operator sees when a command cannot do its work: one line on stderr and exit code 1,
never a traceback. Exit code 2 stays typer's, for usage errors."""

import asyncio
from collections.abc import Coroutine
from typing import Any, NoReturn, TypeVar

import typer
from redis.exceptions import AuthenticationError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from taskenv.cli.instance import NoInstance
from taskenv.shared.errors import TaskenvError
from taskenv.shared.settings import Settings

T = TypeVar("T")


class Refused(Exception):
    """The command's own answer that it cannot do this (unknown id, wrong state): its message
    is the whole line the operator reads."""


def fail(message: str) -> NoReturn:
    typer.echo(f"taskenv: {message}", err=True)
    raise typer.Exit(1)


def _redis_where(settings: Settings | None) -> str:
    if settings is None:
        return "Redis"
    if settings.redis_sentinels:
        return f"Redis (sentinels {settings.redis_sentinels})"
    # Only scheme, host and path: the URL may carry a password.
    url = settings.redis_url
    scheme, _, rest = url.partition("://")
    return f"Redis at {scheme}://{rest.rpartition('@')[2]}"


def _docker_unreachable(exc: BaseException) -> bool:
    import aiodocker
    import aiohttp

    return isinstance(exc, aiohttp.ClientConnectionError | FileNotFoundError | PermissionError) or (
        isinstance(exc, aiodocker.DockerError) and exc.status >= 500
    )


def run(work: Coroutine[Any, Any, T], settings: Settings | None = None) -> T:
    """`asyncio.run(work)`, with what commonly goes wrong turned into one line and exit 1."""
    try:
        return asyncio.run(work)
    except Refused as exc:
        fail(str(exc))
    except TaskenvError as exc:
        fail(f"{exc.type.value}: {exc.detail}")
    except AuthenticationError as exc:
        fail(f"{_redis_where(settings)} refused the password ({exc}): check TASKENV_REDIS_URL")
    except (RedisConnectionError, RedisTimeoutError) as exc:
        fail(f"cannot reach {_redis_where(settings)} ({exc}): start `taskenv up`, or set TASKENV_REDIS_URL")
    except ResponseError as exc:
        fail(f"{_redis_where(settings)} answered an error: {exc}")
    except Exception as exc:
        if _docker_unreachable(exc):
            fail(f"cannot reach the Docker engine ({type(exc).__name__}: {exc}): is dockerd running?")
        raise


def settings() -> Settings:
    """The deployment's settings, or one line and exit 1 when the home names no instance."""
    from pydantic import ValidationError

    from taskenv.cli import instance

    try:
        return instance.settings()
    except NoInstance as exc:
        fail(str(exc))
    except ValidationError as exc:
        wrong = "; ".join(f"TASKENV_{'_'.join(map(str, e['loc'])).upper()}: {e['msg']}" for e in exc.errors())
        fail(f"invalid setting: {wrong}")
