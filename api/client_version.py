"""426 Upgrade Required for clients older than the operator's minimum (TASKENV_MIN_CLIENT_VERSIONS).

A pure ASGI middleware, added only when a minimum is set: with none (the default) requests
never pass through it."""

from collections.abc import Mapping

from packaging.version import Version
from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from taskenv.api.metrics import ERRORS
from taskenv.shared.errors import ErrorType, TaskenvError
from taskenv.shared.user_agents import too_old


class MinimumClientVersion:
    def __init__(self, app: ASGIApp, minimums: Mapping[str, str]) -> None:
        self.app = app
        self.minimums = {product: Version(wanted) for product, wanted in minimums.items()}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            reason = too_old(Headers(scope=scope).get("user-agent", ""), self.minimums)
            if reason is not None:
                error = TaskenvError(ErrorType.UPGRADE_REQUIRED, reason)
                ERRORS.labels(str(error.type)).inc()
                await JSONResponse(error.envelope(), status_code=error.status)(scope, receive, send)
                return
        await self.app(scope, receive, send)
