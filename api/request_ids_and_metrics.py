"""Per-request observability: the request id (from `X-Request-Id` if sane, else a new one), set
for every log line of the request and for the jobs it sends, and returned in the response; and
requests counted by route template and status (starlette-exporter)."""

from starlette.middleware import Middleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from starlette_exporter import PrometheusMiddleware

from taskenv.shared.logs import REQUEST_ID, request_id_from

HEADER = "x-request-id"
# Probes and scrapes are not traffic.
_NOT_COUNTED = ["/metrics", "/healthz", "/readyz"]


class RequestId:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        supplied = next((v for k, v in scope["headers"] if k == HEADER.encode()), b"")
        request_id = request_id_from(supplied.decode("latin-1"))
        token = REQUEST_ID.set(request_id)
        header = (HEADER.encode(), request_id.encode())

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), header]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            REQUEST_ID.reset(token)


def middleware() -> list[Middleware]:
    """Outermost first: the request id wraps everything, so even the metrics see it."""
    return [
        Middleware(RequestId),
        Middleware(
            PrometheusMiddleware,
            app_name="taskenv",
            prefix="taskenv",
            group_paths=True,
            filter_unhandled_paths=True,
            skip_paths=_NOT_COUNTED,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 600),
        ),
    ]
