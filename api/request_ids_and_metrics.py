"""Per-request observability, in one pure ASGI middleware: the request id (from `X-Request-Id`
if sane, else a new one), set for every log line of the request and for the jobs it sends, and
returned in the response; and requests counted by route template, method and status, with their
latency and the number in progress.

The metrics are starlette-exporter's (names, labels, buckets, and which requests count: those a
route matched, fully or but for the method, except probes and scrapes), kept here because its
middleware cost ~95 µs per request (a `Request` and two URLs built, the routes matched a second
time, four label lookups), a tenth of the API's CPU for an execute. A route's template is found
from the endpoint that served it, known once for all at start; an endpoint served by routes of
different templates is matched again, as starlette-exporter does."""

import time
from collections.abc import Sequence
from typing import Any

from prometheus_client import Counter, Gauge, Histogram
from starlette.requests import Request
from starlette.routing import BaseRoute, Mount, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from starlette_exporter.middleware import get_matching_route_path

from taskenv.shared.logs import REQUEST_ID, request_id_from

HEADER = b"x-request-id"
APP_NAME = "taskenv"
# Probes and scrapes are not traffic.
NOT_COUNTED = frozenset({"/metrics", "/healthz", "/readyz"})
_LABELS = ("method", "path", "status_code", "app_name")
REQUESTS = Counter("taskenv_requests_total", "Total HTTP requests", _LABELS)
REQUEST_SECONDS = Histogram(
    "taskenv_request_duration_seconds",
    "HTTP request duration, in seconds",
    _LABELS,
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 600),
)
IN_PROGRESS = Gauge(
    "taskenv_requests_in_progress",
    "Total HTTP requests currently in progress",
    ("method", "app_name"),
    multiprocess_mode="livesum",
)
# Labelled series kept at hand, up to this many (past it they are looked up each time).
_SERIES_KEPT = 1000


class RequestObservability:
    def __init__(self, app: ASGIApp, routes: Sequence[BaseRoute]) -> None:
        self.app = app
        self.templates = templates_by_endpoint(routes)
        self._series: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        supplied = next((v for k, v in scope["headers"] if k == HEADER), b"")
        request_id = request_id_from(supplied.decode("latin-1"))
        token = REQUEST_ID.set(request_id)
        try:
            if scope["path"] in NOT_COUNTED:
                await self.app(scope, receive, _with_id(send, request_id))
            else:
                await self._counted(scope, receive, _with_id(send, request_id))
        finally:
            REQUEST_ID.reset(token)

    async def _counted(self, scope: Scope, receive: Receive, send: Send) -> None:
        method = scope["method"]
        original: dict[str, Any] = dict(scope)  # routing adds to the scope; a second match starts from this
        status = 0
        ended = 0.0

        async def measured_send(message: Message) -> None:
            nonlocal status, ended
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body":
                ended = time.perf_counter()
            await send(message)

        in_progress = IN_PROGRESS.labels(method, APP_NAME)
        in_progress.inc()
        began = time.perf_counter()
        try:
            await self.app(scope, receive, measured_send)
        except Exception:
            self._count(self._template(scope, original), method, 500, (ended or time.perf_counter()) - began)
            raise
        finally:
            in_progress.dec()
        if not status:
            status = 499 if await Request(scope, receive).is_disconnected() else 500
        self._count(self._template(scope, original), method, status, (ended or time.perf_counter()) - began)

    def _count(self, template: str | None, method: str, status: int, seconds: float) -> None:
        if template is None:
            return  # no route matched: not counted
        key = (method, template, status)
        series = self._series.get(key)
        if series is None:
            labels = (method, template, status, APP_NAME)
            series = REQUESTS.labels(*labels), REQUEST_SECONDS.labels(*labels)
            if len(self._series) < _SERIES_KEPT:
                self._series[key] = series
        series[0].inc()
        series[1].observe(seconds)

    def _template(self, scope: Scope, original: dict[str, Any]) -> str | None:
        endpoint, router = scope.get("endpoint"), scope.get("router")
        if endpoint is None or router is None:
            return None
        template = self.templates.get(endpoint)
        if template is not None:
            return template
        try:
            return get_matching_route_path(original, router.routes)
        except Exception:
            return None


def _with_id(send: Send, request_id: str) -> Send:
    header = (HEADER, request_id.encode())

    async def send_with_id(message: Message) -> None:
        if message["type"] == "http.response.start":
            message["headers"] = [*message.get("headers", []), header]
        await send(message)

    return send_with_id


def templates_by_endpoint(routes: Sequence[BaseRoute], prefix: str = "") -> dict[Any, str]:
    """Each endpoint's route template, for the endpoints all of whose routes share one."""
    found: dict[Any, set[str]] = {}
    for endpoint, template in _endpoint_templates(routes, prefix):
        found.setdefault(endpoint, set()).add(template)
    return {endpoint: next(iter(paths)) for endpoint, paths in found.items() if len(paths) == 1}


def _endpoint_templates(routes: Sequence[BaseRoute], prefix: str) -> list[tuple[Any, str]]:
    pairs: list[tuple[Any, str]] = []
    for route in routes:
        if isinstance(route, Mount):
            pairs += _endpoint_templates(route.routes, prefix + route.path)
        elif isinstance(route, Route):
            pairs.append((route.endpoint, prefix + route.path))
    return pairs
