"""The Starlette application: routes, the error envelope for every failure, and lifespan."""

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from typing import Any

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import OutOfMemoryError, ReadOnlyError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route

from taskenv.api import environments as env
from taskenv.api import (
    identity,
    oci_routes,
    openapi,
    request_ids_and_metrics,
    secret_routes,
    task_routes,
    verify_routes,
)
from taskenv.api.allowed_methods import allowed_methods
from taskenv.api.client_version import MinimumClientVersion
from taskenv.api.dispatch import Dispatcher
from taskenv.api.exec_targets import TargetCache
from taskenv.api.health import healthz, readyz, sweep_forever
from taskenv.api.lockout import AuthLockout
from taskenv.api.metrics import ERRORS, metrics
from taskenv.api.results import ResultListener
from taskenv.api.state import AppState
from taskenv.api.trailing_slash import TrailingSlash, without_slash_redirects
from taskenv.shared.errors import ErrorType, TaskenvError, for_status
from taskenv.shared.redis import arq_client, records_client
from taskenv.shared.settings import Settings, get_settings
from taskenv.shared.tasks import load_registry

log = logging.getLogger("taskenv.api")


def error_response(error: TaskenvError) -> Response:
    ERRORS.labels(str(error.type)).inc()
    return JSONResponse(error.envelope(), status_code=error.status, headers=error.headers)


async def _taskenv_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, TaskenvError)
    return error_response(exc)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    detail = {404: "Not found", 405: f"Method {request.method} not allowed"}.get(exc.status_code, exc.detail)
    error = for_status(exc.status_code, detail)
    if exc.status_code == 405:
        # Routing may have entered a Mount: match again from the application's root.
        scope = {**request.scope, "root_path": request.scope.get("app_root_path", "")}
        error.headers["Allow"] = ", ".join(sorted(allowed_methods(request.app.routes, scope)))
    return error_response(error)


async def _redis_unavailable(request: Request, exc: Exception) -> Response:
    # Redis is restarting or unreachable (each command was retried for ~2 s first): the
    # request may be retried, and the connections come back by themselves.
    log.warning("Redis unavailable on %s %s: %s", request.method, request.url.path, exc)
    error = TaskenvError(ErrorType.UNAVAILABLE, "The service's store (Redis) is unavailable; retry shortly")
    error.headers["Retry-After"] = "1"
    return error_response(error)


# Redis answering but refusing writes: out of memory (`maxmemory` reached with `noeviction`), a
# read-only replica, or failing to persist (`stop-writes-on-bgsave-error`). redis-py raises the
# first two as their own classes, from plain commands and Lua scripts alike; the last is a bare
# ResponseError whose message keeps Redis's prefix.
_REFUSING_WRITES = (OutOfMemoryError, ReadOnlyError)
_REFUSING_WRITES_PREFIXES = ("OOM ", "READONLY ", "MISCONF ")
REFUSING_WRITES_RETRY_AFTER_SEC = 5


def refuses_writes(exc: BaseException) -> bool:
    return isinstance(exc, _REFUSING_WRITES) or (
        isinstance(exc, ResponseError) and str(exc).startswith(_REFUSING_WRITES_PREFIXES)
    )


async def _redis_error(request: Request, exc: Exception) -> Response:
    """Any other error reply from Redis is a bug: 500, answered like an unexpected error but
    without closing the client's connection."""
    if not refuses_writes(exc):
        return await _unexpected_error(request, exc)
    # Redis refuses a command that adds data before running it, and a script at its first such
    # command (by then it may only have pruned expired entries): the request may be retried
    # once the operator has made room or restored the primary.
    log.warning("Redis refuses writes on %s %s: %s", request.method, request.url.path, exc)
    error = TaskenvError(
        ErrorType.UNAVAILABLE,
        "The service's store (Redis) refuses writes (out of memory, read-only or failing to"
        " persist); retry later",
    )
    error.headers["Retry-After"] = str(REFUSING_WRITES_RETRY_AFTER_SEC)
    return error_response(error)


async def _client_gone(request: Request, exc: Exception) -> Response:
    """The client disconnected, or its body did not arrive in time (api/http.py answered 408
    and closed): nobody reads this answer."""
    log.info("client gone during %s %s", request.method, request.url.path)
    return Response(status_code=400)


async def _unexpected_error(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(TaskenvError(ErrorType.APP, "Internal server error"))


# Every failure, mapped to its envelope in this one place. A handled exception keeps the
# client's keep-alive connection; only `Exception` (a bug) goes through Starlette's last-resort
# handler, which closes it.
EXCEPTION_HANDLERS: dict[Any, Callable[[Request, Exception], Awaitable[Response]]] = {
    TaskenvError: _taskenv_error,
    HTTPException: _http_error,
    RedisConnectionError: _redis_unavailable,
    RedisTimeoutError: _redis_unavailable,
    ResponseError: _redis_error,
    ClientDisconnect: _client_gone,
    Exception: _unexpected_error,
}


async def health(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


WORKSPACE_PREFIX = "/api/v1/org/{org}/ws/{workspace}"


def _routes() -> list[Route | Mount]:
    one = "/environments/{env_id}"
    workspace_routes = [
        Route("/environments", env.create_environment, methods=["POST"]),
        Route("/environments", env.list_environments, methods=["GET"]),
        Route(one, env.get_environment, methods=["GET"]),
        Route(one, env.delete_environment, methods=["DELETE"]),
        Route(one + "/status", env.get_status, methods=["GET"]),
        Route(one + "/logs", env.get_logs, methods=["GET"]),
        Route(one + "/execute", env.execute, methods=["POST"]),
        Route(one + "/verify", verify_routes.verify_environment, methods=["POST"]),
    ]
    return [
        # The hot route first: the router, and the metrics' lookup of its template, walk the
        # routes in order, each through a dozen patterns before it. The Mount's copy below
        # documents it and answers its 405.
        Route(WORKSPACE_PREFIX + one + "/execute", env.execute, methods=["POST"], include_in_schema=False),
        Route("/api/v1/health", health, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        # For load balancers and orchestrators, not clients: outside the OpenAPI document.
        Route("/healthz", healthz, methods=["GET"], include_in_schema=False),
        Route("/readyz", readyz, methods=["GET"], include_in_schema=False),
        Route("/api/v1/user", identity.get_user, methods=["GET"]),
        Route("/api/v1/org/{org}", identity.get_organization, methods=["GET"]),
        Route("/api/v1/org/{org}/ws", identity.list_workspaces, methods=["GET"]),
        Route("/api/v1/org/{org}/ws/{workspace}", identity.get_workspace, methods=["GET"]),
        Mount(WORKSPACE_PREFIX, routes=workspace_routes),
        *openapi.routes(),
        *task_routes.routes(),
        *oci_routes.routes(),
        *secret_routes.routes(),
    ]


def create_app(settings: Settings | None = None) -> Starlette:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        arq = arq_client(settings)
        records = records_client(settings)
        listener = ResultListener(arq)
        task = asyncio.create_task(listener.run(), name="taskenv-results")
        sweeper = asyncio.create_task(sweep_forever(records, settings), name="taskenv-sweep")
        app.state.taskenv = AppState(
            settings=settings,
            registry=load_registry(settings.tasks_path),
            records=records,
            arq=arq,
            listener=listener,
            dispatcher=Dispatcher(
                arq,
                listener,
                max_queue_depth=settings.max_queue_depth,
                retry_after_sec=settings.busy_retry_after_sec,
            ),
            targets=TargetCache(records),
            lockout=AuthLockout(records, settings.auth_fail_limit, settings.auth_fail_window_sec),
        )
        async with asyncio.timeout(30):
            await listener.wait_subscribed()
        try:
            yield
        finally:
            if app.state.taskenv.background:
                await asyncio.wait(app.state.taskenv.background, timeout=10)
            for running in (task, sweeper):
                running.cancel()
                with suppress(asyncio.CancelledError):
                    await running
            await records.aclose()
            await arq.aclose()

    routes = _routes()
    # Starlette answers a path with an extra (or a missing) trailing slash with a redirect to the
    # URL rebuilt from the client's own Host header: never here (TrailingSlash serves it instead).
    without_slash_redirects(routes)
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        middleware=[
            Middleware(TrailingSlash),
            Middleware(request_ids_and_metrics.RequestObservability, routes=routes),
            *(
                [Middleware(MinimumClientVersion, minimums=settings.min_client_versions)]
                if settings.min_client_versions
                else []
            ),
        ],
        exception_handlers=EXCEPTION_HANDLERS,
    )
    app.router.redirect_slashes = False
    return app
