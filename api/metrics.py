"""Prometheus metrics, served at /metrics."""

from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest
from starlette.requests import Request
from starlette.responses import Response

EXECUTE_SECONDS = Histogram(
    "taskenv_execute_seconds",
    "Time to answer a successful execute, from request to response",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 600),
)
ERRORS = Counter("taskenv_errors_total", "Error responses by type", ["type"])


async def metrics(request: Request) -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
